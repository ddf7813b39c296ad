"""A throwaway OpenSSH ``sshd`` on a loopback port, with generated host and client keys.

Used by ``make demo`` and by the test suite: relay's proofs run against a real OpenSSH server,
never only against asyncssh's. sshd cannot bind port 0 (its config parser refuses it), so a
free port is picked by the kernel, released, and handed to sshd; if another process takes it in
between, sshd says so and another port is tried (bounded). Readiness is sshd's own
``Server listening on`` log line, not a sleep.

The "remote host" is this machine and the login this user, so the sessions get a HOME of
their own (``dir/home``, sshd's ``SetEnv``, which OpenSSH applies after its own HOME): what
relay writes in the remote home (the kernel hook under ``~/.cache/relay``) stays in the
throwaway directory, never in the user's real home.
"""

from __future__ import annotations

import collections
import contextlib
import getpass
import os
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

__all__ = ["SSHD_PATH", "ThrowawaySSHD", "find_sshd", "toml_value"]

SSHD_PATH = "/usr/sbin/sshd"
START_TIMEOUT_S = 20.0
# the variable each server's sessions get, naming the server (``ThrowawaySSHD.mark``): what
# they start (relay's agent) tells a test run which of its servers it came through
MARK = "RELAY_TEST_SSHD"


def find_sshd() -> str | None:
    for candidate in (SSHD_PATH, shutil.which("sshd")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawaySSHD:
    """``with ThrowawaySSHD(dir) as sshd:``; ``sshd.port``, ``sshd.client_key``, ..."""

    # every port a server of this process has listened on: a login's SSH_CONNECTION names
    # one, so a test can tell what its own servers' sessions started from what another test
    # run on the machine did (tests/agents.py)
    ports_started: ClassVar[set[int]] = set()
    # and every server's ``mark``: a port alone does not tell, as every run's network-namespace
    # server listens on 2222 in its own namespace, and another run may listen on a port one of
    # this run's servers has let go
    marks_started: ClassVar[set[str]] = set()

    def __init__(
        self,
        directory: Path,
        *,
        options: dict[str, str] | None = None,
        netns: bool = False,
        hide_proc: bool = False,
        proc_pids_only: bool = False,
        hide: Sequence[Path] = (),
        sftp: bool = True,
        program: str | None = None,
        login_shell: str | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.options = options or {}
        # In its own network namespace (root only), the server's 127.0.0.1 is another
        # machine's loopback: kernels cannot reach the front end's ports except through relay,
        # and ports relay holds locally do not collide with the kernel's. relay reaches it
        # through ``proxy_command`` (relay.sim.nsbridge).
        self.netns = netns
        # a host like a Mac or a BSD: no /proc, so nobody can tell who owns a socket there
        self.hide_proc = hide_proc
        # /proc mounted with subset=pid (hardened hosts, containers): its processes, no net/
        self.proc_pids_only = proc_pids_only
        # directories its sessions see empty (another machine's /tmp: not this one's files)
        self.hide = [Path(p) for p in hide]
        # without it, like many hardened or embedded sshd configurations: no SFTP subsystem
        self.sftp = sftp
        # sshd under another name (a symlink): sshd names its PAM service after argv[0], so a
        # test can give it a PAM stack of its own (/etc/pam.d/<name>)
        self.program = program
        # the account's login shell, which runs every session's command (``$SHELL -c``): its
        # passwd entry as the server sees it (a copy bound over /etc/passwd in its own mount
        # namespace; root only), so a test can log in as a tcsh or fish user
        self.login_shell = login_shell
        self.user = getpass.getuser()
        self.own_user = self.user  # whose real home the sessions must not touch
        self.home = self.dir / "home"  # the sessions' HOME when they log in as own_user
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = self.dir / "id_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.authorized_keys = self.dir / "authorized_keys"
        self.port = 0
        # what this server's sessions have in their environment as ``MARK``: theirs alone
        self.mark = secrets.token_hex(8)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=500)  # the latest lines
        # every successful authentication since start: the log above forgets old lines
        self.authentications = 0
        self._drain: threading.Thread | None = None

    def __enter__(self) -> ThrowawaySSHD:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def prepare(self) -> None:
        """Generate the host and client keys (start() does it too): a test can then write a
        relay.toml for a server that is not up yet."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(mode=0o700, exist_ok=True)
        if not self.host_key.exists():
            _keygen(self.host_key, "relay-test-host")
        if not self.client_key.exists():
            _keygen(self.client_key, "relay-test-client")
            self.authorized_keys.write_text((self.client_key.with_suffix(".pub")).read_text())
            self.authorized_keys.chmod(0o600)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir

    def write_config(self, port: int) -> Path:
        options = {
            "ListenAddress": f"127.0.0.1:{port}",
            "HostKey": str(self.host_key),
            "PidFile": "none",
            "AuthorizedKeysFile": str(self.authorized_keys),
            "StrictModes": "no",
            "UsePAM": "no",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "PubkeyAuthentication": "yes",
            "PermitRootLogin": "prohibit-password",
            "MaxSessions": "10",
            "AllowTcpForwarding": "yes",
            "LogLevel": "VERBOSE",
            **({"Subsystem": "sftp internal-sftp"} if self.sftp else {}),
            **self.options,
        }
        # sshd keeps only the first SetEnv line, and the first value of a name in it: one
        # line, a test's own values (its own HOME too) before this one. Every session is
        # told which server it came through (``MARK``)
        setenv = [self.options.get("SetEnv", ""), f'"{MARK}={self.mark}"']
        if self.user == self.own_user:
            setenv.append(f'"HOME={self.home}"')
            # the test run's own PYTHONPATH, if it has one: a clone that shares another
            # checkout's virtualenv runs its own relay, and the simulated kernels its sessions
            # start must import that relay too, not the one the virtualenv installed (relay's
            # agent runs python3 -I, which ignores it)
            if os.environ.get("PYTHONPATH"):
                setenv.append(f'"PYTHONPATH={os.environ["PYTHONPATH"]}"')
        # else an account a test made (``user`` set): it has a throwaway home of its own
        options["SetEnv"] = " ".join(word for word in setenv if word)
        path = self.dir / "sshd_config"
        path.write_text("".join(f"{k} {v}\n" for k, v in options.items()))
        return path

    def start(self, port: int | None = None) -> None:
        """Start sshd (on ``port`` if given, e.g. to restart on the same port)."""
        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError("OpenSSH sshd is not installed: apt-get install openssh-server")
        self.prepare()
        for _attempt in range(10):
            chosen = port or self.port or (2222 if self.netns else _free_port())
            config = self.write_config(chosen)
            argv = [self.program or sshd, "-D", "-e", "-f", str(config)]
            if self.netns:
                argv = [
                    "unshare",
                    "--net",
                    "sh",
                    "-c",
                    'ip link set lo up && exec "$@"',
                    "sh",
                    *argv,
                ]
            mounts = "mount -t tmpfs none /proc && " if self.hide_proc else ""
            if self.proc_pids_only:
                mounts += "mount -t proc -o subset=pid proc /proc && "
            mounts += "".join(
                f"mount -t tmpfs -o mode=0700 none {shlex.quote(str(p))} && " for p in self.hide
            )
            if self.login_shell is not None:
                mounts += f"mount --bind {shlex.quote(str(self._passwd()))} /etc/passwd && "
            if mounts:
                argv = [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    mounts + 'exec "$@"',
                    "sh",
                    *argv,
                ]
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_listening(proc, chosen):
                self.proc, self.port = proc, chosen
                self.ports_started.add(chosen)
                self.marks_started.add(self.mark)
                self._write_known_hosts()
                self._drain = threading.Thread(
                    target=self._drain_log, args=(proc,), daemon=True, name="sshd-log"
                )
                self._drain.start()
                return
            proc.kill()
            proc.wait()
            if port:
                break
        raise RuntimeError("sshd did not start: " + " | ".join(list(self.log)[-5:]))

    def _passwd(self) -> Path:
        """/etc/passwd with the login's shell replaced by ``login_shell``."""
        assert self.login_shell is not None
        lines = []
        for line in Path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == self.user and len(fields) == 7:
                fields[6] = self.login_shell
            lines.append(":".join(fields))
        copy = self.dir / "passwd"
        copy.write_text("\n".join(lines) + "\n")
        copy.chmod(0o644)
        return copy

    def _wait_listening(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        deadline = time.monotonic() + START_TIMEOUT_S
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                return False
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                self.log.append(line)
                if f"Server listening on 127.0.0.1 port {port}" in line:
                    return True
                if "Address already in use" in line or "Cannot bind any address" in line:
                    return False
        return False

    def _drain_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            words = line.split(" ", 3)
            if len(words) == 4 and words[0] == "Accepted" and words[2] == "for":  # a login
                self.authentications += 1

    def _write_known_hosts(self) -> None:
        self.known_hosts.write_text("")
        self.trust_port(self.port)

    def trust_port(self, port: int) -> None:
        """Record this server's host key for 127.0.0.1:PORT (e.g. a proxy in front of it)."""
        pub = self.host_key.with_suffix(".pub").read_text().split()
        with self.known_hosts.open("a") as fh:
            fh.write(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (descendants of the listener)."""
        if self.proc is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found: list[int] = []
        todo = [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                try:
                    comm = Path(f"/proc/{child}/comm").read_text().strip()
                except OSError:
                    continue
                if comm.startswith("sshd"):
                    found.append(child)
                    todo.append(child)
        return found

    def kill_all(self) -> None:
        """SIGKILL the server and every session process, as a crash or reboot would."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *self.session_pids()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        if self._drain is not None:
            self._drain.join(timeout=10)
            self._drain = None
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            sessions = self.session_pids()  # they share sshd's stderr (-e): find them first
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self._drain is not None:
                self._drain.join(timeout=5)
                if self._drain.is_alive():  # sessions still open: end them, then the log ends
                    for pid in sessions:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    self._drain.join(timeout=10)
                self._drain = None
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            self.proc = None

    def nsenter(self, *argv: str) -> list[str]:
        """``argv`` run inside this server's network namespace."""
        assert self.proc is not None
        return ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", *argv]

    def host_toml(self, name: str, **extra: object) -> str:
        """A ``[hosts.NAME]`` table for relay.toml that reaches this sshd."""
        values: dict[str, object] = {
            "hostname": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "identity_files": [str(self.client_key)],
            "known_hosts": str(self.known_hosts),
            **extra,
        }
        if self.netns:
            assert self.proc is not None
            values.setdefault(
                "proxy_command",
                [sys.executable, "-m", "relay.sim.nsbridge", str(self.proc.pid), str(self.port)],
            )
        # a None says "not set" (proxy_command = None: reached some other way, a FaultProxy)
        return f"[hosts.{name}]\n" + "".join(
            f"{k} = {toml_value(v)}\n" for k, v in values.items() if v is not None
        )


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. a host's slurm = {partition = "debug"}
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
