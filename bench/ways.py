"""Three ways to launch a remote kernel, as users would run them.

``TunnelWay``         Tunnel's way, fixed: a fresh ``ssh -R 127.0.0.1:0:.. -R 127.0.0.1:0:..
                      host kernel`` per kernel (a full handshake each time), the allocated
                      ports read from ssh's "Allocated port" lines and handed to the remote
                      command on stdin.
``ControlMasterWay``  one OpenSSH master; per kernel ``ssh -O forward -R 127.0.0.1:0:..``
                      twice (each prints its port), then an exec of the kernel through it.

For the Parallel package's pattern each way also has ``run(link)``, which returns when a
``Run[$RemoteCommand]`` would: relay's once ``relay launch --compute`` exits; Tunnel's once
both forwards are allocated (what ``ssh -f`` with ExitOnForwardFailure waits for before it
goes to the background); ControlMaster's once the forwards are made and the exec is started.
``RelayWay``          ``relay launch`` against a warm daemon.
``PlainAsyncsshWay``  asyncssh's own remote forwarding in a process per kernel (uvloop,
                      AES-GCM): the stack relay stands on without relay, for the data path.

Each ``launch(link)`` starts the kernel so that it connects back to the simulator front end's
listening ``link``; the caller times until both channels arrive.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from relay.lite.linkname import LinkName
from relay.sim.sshd import ThrowawaySSHD

KERNEL_ARGS = ["-wstp", "-LinkMode", "Connect", "-LinkProtocol", "TCPIP"]
# The simulator kernel takes 1 s to start, as a real one does; the tables that time relay's
# own work run it with no start-up (the Parallel-pattern table keeps it).
NO_STARTUP = ["-simstartup", "0"]
# Both OpenSSH ways name the remote listener's address, as relay does. Without one, sshd binds
# "localhost": [::1] first with a port of its choosing, then 127.0.0.1 with the same number,
# and reports success when only the first worked. The kernel, given that port, connects to
# 127.0.0.1 and reaches whoever holds it there. Here the front end's own listeners share the
# machine, so that happened to about one Tunnel pool of 16 in five; on a real remote host it
# is rarer, and a stranger's listener instead of the front end's.
LISTEN = "127.0.0.1"


@dataclass
class Launched:
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    cleanup: list[list[str]] = field(default_factory=list)
    # the last lines the launch's ssh and the kernel behind it wrote to stderr: a failed
    # launch's reason says them (the kernel's side, which the front end never sees)
    said: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=8))
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    def keep_stderr(self, proc: asyncio.subprocess.Process) -> None:
        """Read ``proc``'s stderr to its end, keeping the last lines (a pipe nobody reads
        fills up, and what its writer says after that stalls or is lost)."""
        assert proc.stderr is not None
        self.readers.append(asyncio.ensure_future(_keep_lines(proc.stderr, self.said)))

    def explain(self) -> str:
        return " | ".join(self.said) if self.said else "nothing on stderr"


async def _keep_lines(stream: asyncio.StreamReader, said: collections.deque[str]) -> None:
    while line := await stream.readline():
        said.append(line.decode(errors="replace").strip()[:200])


def _ssh_base(sshd: ThrowawaySSHD, port: int, extra: list[str] | None = None) -> list[str]:
    return [
        "ssh",
        "-p",
        str(port),
        "-i",
        str(sshd.client_key),
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={sshd.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "LogLevel=INFO",
        *(extra or []),
        f"{sshd.user}@127.0.0.1",
    ]


async def _finish(launched: Launched) -> None:
    for argv in launched.cleanup:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await proc.wait()
    for proc in launched.procs:
        if proc.returncode is None:
            # os.kill, not proc.kill(): asyncio's kill() polls first (Popen.send_signal,
            # bpo-38630), and that poll reaps a process that has just exited behind the
            # child watcher's back, which then logs "Unknown child process pid N, will report
            # returncode 255". Tunnel's ssh exits as its kernel does, so here it often has.
            # Until the watcher collects it, its pid cannot be another process's.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    await asyncio.gather(*launched.readers)  # they end as the killed processes' pipes do
    for proc in launched.procs:
        await proc.communicate()


class TunnelWay:
    name = "Tunnel (fresh ssh -R per kernel)"
    key = "tunnel"

    def __init__(
        self,
        sshd: ThrowawaySSHD,
        port: int,
        kernel: str,
        ssh_options: list[str] | None = None,
        kernel_args: list[str] | None = None,
    ) -> None:
        self.sshd, self.port, self.kernel = sshd, port, kernel
        self.options = ssh_options or []
        self.kernel_args = NO_STARTUP if kernel_args is None else kernel_args

    async def launch(self, link: LinkName, compute: bool = True) -> Launched:
        remote = (
            "read a b; exec "
            + shlex.join([self.kernel, *KERNEL_ARGS, *self.kernel_args])
            + ' -LinkName "$a@127.0.0.1,$b@127.0.0.1"'
            + (" -subkernel -noinit" if compute else "")
        )
        argv = _ssh_base(
            self.sshd,
            self.port,
            [
                *self.options,
                "-R",
                f"{LISTEN}:0:127.0.0.1:{link.data.port}",
                "-R",
                f"{LISTEN}:0:127.0.0.1:{link.message.port}",
            ],
        ) + [remote]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        assert proc.stderr is not None and proc.stdin is not None
        allocated: dict[int, int] = {}
        pattern = re.compile(rb"Allocated port (\d+) for remote forward to [^:]+:(\d+)")
        while len(allocated) < 2:
            line = await proc.stderr.readline()
            if not line:
                raise RuntimeError("ssh exited before allocating both forwards")
            match = pattern.search(line)
            if match:
                allocated[int(match.group(2))] = int(match.group(1))
        launched = Launched([proc])
        launched.keep_stderr(proc)  # ssh's, and the kernel's through the session
        proc.stdin.write(f"{allocated[link.data.port]} {allocated[link.message.port]}\n".encode())
        await proc.stdin.drain()
        return launched

    async def run(self, link: LinkName) -> Launched:
        return await self.launch(link, compute=True)

    finish = staticmethod(_finish)


class ControlMasterWay:
    name = "OpenSSH ControlMaster (-O forward + exec)"
    key = "controlmaster"

    def __init__(
        self,
        sshd: ThrowawaySSHD,
        port: int,
        kernel: str,
        control: Path,
        kernel_args: list[str] | None = None,
    ) -> None:
        self.sshd, self.port, self.kernel, self.control = sshd, port, kernel, control
        self.kernel_args = NO_STARTUP if kernel_args is None else kernel_args

    def with_kernel_args(self, kernel_args: list[str]) -> ControlMasterWay:
        """The same master, starting kernels with other arguments."""
        return ControlMasterWay(self.sshd, self.port, self.kernel, self.control, kernel_args)

    def _ssh(self, *extra: str) -> list[str]:
        return _ssh_base(self.sshd, self.port, ["-S", str(self.control), *extra])

    async def start(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self._ssh("-M", "-o", "ControlPersist=yes", "-N", "-f"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        if await proc.wait() != 0:
            raise RuntimeError("ssh ControlMaster did not start")

    async def stop(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self._ssh("-O", "exit"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()

    async def _forward(self, port: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            *self._ssh("-O", "forward", "-R", f"{LISTEN}:0:127.0.0.1:{port}"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"ssh -O forward failed: {err.decode().strip()}")
        return int(out.split()[0])

    async def launch(self, link: LinkName, compute: bool = True) -> Launched:
        data = await self._forward(link.data.port)
        message = await self._forward(link.message.port)
        remote = shlex.join(
            [
                self.kernel,
                *KERNEL_ARGS,
                "-LinkName",
                f"{data}@127.0.0.1,{message}@127.0.0.1",
                *(["-subkernel", "-noinit"] if compute else []),
                *self.kernel_args,
            ]
        )
        proc = await asyncio.create_subprocess_exec(
            *self._ssh(),
            "exec " + remote,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        cancel = [
            self._ssh("-O", "cancel", "-R", f"{LISTEN}:{p}:127.0.0.1:{t}")
            for p, t in ((data, link.data.port), (message, link.message.port))
        ]
        launched = Launched([proc], cancel)
        launched.keep_stderr(proc)
        return launched

    async def run(self, link: LinkName) -> Launched:
        return await self.launch(link, compute=True)

    finish = staticmethod(_finish)


class RelayWay:
    name = "relay launch"
    key = "relay"

    def __init__(self, relay: str, host: str, kernel: str, env: dict[str, str]) -> None:
        self.relay, self.host, self.kernel, self.env = relay, host, kernel, env

    async def launch(self, link: LinkName, compute: bool = True) -> Launched:
        argv = [
            self.relay,
            "launch",
            *(["--compute"] if compute else []),
            self.host,
            self.kernel,
            str(link),
        ]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return Launched([proc])

    async def run(self, link: LinkName) -> Launched:
        """``Run[$RemoteCommand]``: returns once the shim has exited (status 0)."""
        launched = await self.launch(link, compute=True)
        (proc,) = launched.procs
        assert proc.stderr is not None
        err = await proc.stderr.read()
        if await proc.wait() != 0:
            raise RuntimeError(f"relay launch failed: {err.decode(errors='replace').strip()}")
        return launched

    finish = staticmethod(_finish)


class PlainAsyncsshWay:
    name = "plain asyncssh forwarding"
    key = "asyncssh"

    def __init__(self, sshd: ThrowawaySSHD, port: int, kernel: str) -> None:
        self.sshd, self.port, self.kernel = sshd, port, kernel

    async def launch(self, link: LinkName, compute: bool = True) -> Launched:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.plainssh",
            str(self.port),
            str(self.sshd.client_key),
            str(self.sshd.known_hosts),
            self.sshd.user,
            str(link.data.port),
            str(link.message.port),
            self.kernel,
            *KERNEL_ARGS,
            *NO_STARTUP,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return Launched([proc])

    finish = staticmethod(_finish)


def environ(**extra: str) -> dict[str, str]:
    return dict(os.environ, **extra)
