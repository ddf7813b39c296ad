from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from relay.lite import client
from relay.lite.linkname import LinkName
from relay.sim import frontend
from tests.conftest import RELAY, SIM_KERNEL, RelayHome

SHIM_END_S = 30.0  # a controller's shim ended by a signal waits up to 20 s for its kernel


async def relay_cli(
    home: RelayHome, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``relay ARGS`` as a user runs it, without a terminal (prompts read ``stdin``), in a
    process of its own so the daemon under test is not blocked: status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        RELAY,
        *args,
        env=env or home.env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = await communicate(proc, stdin, 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def communicate(
    proc: asyncio.subprocess.Process, data: bytes, timeout_s: float
) -> tuple[bytes, bytes]:
    """``proc.communicate(data)``, bounded, where a child that exits before reading its input
    (``relay status`` reads none) is no error. Stdlib asyncio ignores the broken pipe then;
    uvloop, which these tests run on, may already have closed the pipe's transport, and
    raises RuntimeError on the write (seen on a loaded machine)."""
    assert proc.stdin is not None
    async with asyncio.timeout(timeout_s):
        if data:
            with contextlib.suppress(RuntimeError, BrokenPipeError, ConnectionResetError):
                proc.stdin.write(data)
                await proc.stdin.drain()
        proc.stdin.close()
        return await proc.communicate()


def launch_template(host: str = "local", kernel: str = SIM_KERNEL, *, exec_: bool = False) -> str:
    """The front end's Launch command, as the README tells users to write it (``exec_``: with
    the shell replaced by the shim, so a signal to the process reaches the shim itself)."""
    return f'{"exec " if exec_ else ""}{RELAY} launch "{host}" "{kernel}" "`linkname`"'


def remote_command(kernel: str = SIM_KERNEL) -> str:
    """``$RemoteCommand`` as the README gives it."""
    return f'{RELAY} launch --compute "`1`" "{kernel}" "`2`"'


async def close_launches(launches: list[frontend.RemoteLaunch]) -> None:
    """A pool's end: each connected kernel told to quit, every link closed."""
    for launch in launches:
        if launch.kernel is not None:
            with contextlib.suppress(OSError, ConnectionError):
                await launch.kernel.quit(0)
            await launch.kernel.aclose()
        launch.link.close()


@dataclass
class Controller:
    link: frontend.ListeningLink
    proc: asyncio.subprocess.Process

    async def result(self, timeout_s: float = 60) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout_s)
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def controller(
    home: RelayHome,
    host: str = "local",
    kernel: str = SIM_KERNEL,
    link_host: str = "127.0.0.1",
    exec_: bool = False,
) -> AsyncIterator[Controller]:
    """A front end that created its main link and ran the Launch command."""
    link = await frontend.ListeningLink.create(link_host)
    command = frontend.launch_command(launch_template(host, kernel, exec_=exec_), link.name)
    proc = await frontend.run_controller(command, env=home.env)
    try:
        yield Controller(link, proc)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        # the shim (the shell's child, given its pipes) ends after the shell, on its
        # PR_SET_PDEATHSIG: its pipes drained to their end, or the loop closes with them open
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.communicate(), SHIM_END_S)
        link.close()
        if link.handed_out is not None:  # a test that failed half-way leaves it to us
            await link.handed_out.aclose()


async def launch_and_quit(home: RelayHome, host: str) -> None:
    """A controller launched on ``host``, connected, told to quit, its shim exiting 0."""
    async with controller(home, host=host, kernel=SIM_KERNEL) as fe:
        kl = await fe.link.accept(60)
        await kl.quit(0)
        status, _, err = await fe.result()
        assert status == 0, err
        await kl.aclose()


async def request(home: RelayHome, message: dict[str, str]) -> dict[str, object]:
    """One control-socket request, as a local client sends it."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, client.request, home.socket, message)


async def expose_listening_kernel(
    home: RelayHome, host: str, prefix: list[str] | None = None
) -> tuple[asyncio.subprocess.Process, LinkName]:
    """A simulator kernel listening on the remote host (run through ``prefix``, e.g. an
    ``nsenter`` into its network namespace) and the local name relay exposes it under
    (``forward`` with direction ``expose``)."""
    listener = await asyncio.create_subprocess_exec(
        *(prefix or []),
        SIM_KERNEL,
        "-wstp",
        "-LinkMode",
        "Listen",
        "-LinkHost",
        "127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
    )
    assert listener.stdout is not None
    line = (await asyncio.wait_for(listener.stdout.readline(), 30)).decode()
    remote_name = line.removeprefix("Link created on: ").strip()
    answer = await request(
        home, {"op": "forward", "host": host, "linkname": remote_name, "direction": "expose"}
    )
    return listener, LinkName.parse(str(answer["linkname"]))


async def wait_gone(pid: int, timeout_s: float = 30) -> None:
    """Wait (bounded) for a process to be reaped, via pidfd: an event, not a poll."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await until_readable(fd, timeout_s)
    finally:
        os.close(fd)


async def until_readable(fd: int | socket.socket, timeout_s: float) -> None:
    """Wait (bounded) until ``fd`` is readable, reading nothing: an event, not a poll."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(ready, timeout_s)
    finally:
        loop.remove_reader(fd)
