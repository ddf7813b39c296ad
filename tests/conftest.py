"""Shared fixtures: a real OpenSSH sshd and ssh-agent (session), a relay home, an in-process
daemon.

The agent: most people run relay from a shell with an ssh-agent, and every request that may
connect then carries its SSH_AUTH_SOCK, so every relay command and shim a test runs through
``RelayHome.env`` has the session's agent unless the test says otherwise (``home.agent =
None``, or the ``agent_or_not`` fixture, which runs a test both ways). The pytest process's own
SSH_AUTH_SOCK (a developer's, or none on CI) is removed for the whole session, so the suite
tests the same thing wherever it runs, and never talks to a developer's agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relay import log, settings
from relay.daemon import Daemon, serve
from relay.sim.slurm import slurm_missing
from relay.sim.sshd import ThrowawaySSHD, find_sshd, toml_value
from tests import agents

BIN = Path(sys.executable).parent
RELAY = str(BIN / "relay")
SIM_KERNEL = str(BIN / "relay-sim-kernel")

log.configure("debug", json=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if find_sshd() is None:
        if os.environ.get("CI"):
            raise pytest.UsageError("OpenSSH sshd is not installed; .ci/run must install it")
        skip = pytest.mark.skip(
            reason="OpenSSH sshd not installed (apt-get install openssh-server)"
        )
        for item in items:
            if "sshd" in item.keywords:
                item.add_marker(skip)
    missing = slurm_missing()
    if missing is not None and any("slurm" in item.keywords for item in items):
        if os.environ.get("CI") and os.geteuid() == 0:
            raise pytest.UsageError(f"{missing}; .ci/run must install Slurm (make system-packages)")
        skip = pytest.mark.skip(reason=f"Slurm tests skipped: {missing}")
        for item in items:
            if "slurm" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _no_outer_agent() -> Iterator[None]:
    """The pytest process's SSH_AUTH_SOCK is not the tests' (see the module docstring): an
    in-process daemon reads os.environ, and RelayHome.env starts from it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SSH_AUTH_SOCK", raising=False)
        yield


@pytest.fixture(scope="session", autouse=True)
def _state_of_our_own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The daemons' state directory (relay.daemontag: this machine's id) is the session's, not
    the user's ~/.local/state."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


def installed(program: str, required: Collection[str]) -> str:
    """``program``'s path; a test without it is skipped, or fails where ``required`` names
    it (what .ci/run installs: a developer's machine may lack it)."""
    found = shutil.which(program)
    if found is None:
        if program in required:
            pytest.fail(f"{program} is not installed (.ci/run installs it)")
        pytest.skip(f"{program} is not installed")
    return found


AGENT_START_S = 10.0


@pytest.fixture(scope="session")
def ssh_agent() -> Iterator[str | None]:
    """A real ssh-agent for the session: its socket, or None where ssh-agent is not installed.

    It holds no key. Every host table names the sshd's client key in identity_files, and
    relay (as ssh, without IdentitiesOnly) offers an agent's keys besides: an agent holding a
    key the sshd takes would let hosts meant to refuse authentication (no key the server
    takes) be reached, changing what those tests test. What the agent brings is what a user's
    shell brings: SSH_AUTH_SOCK in the environment, ssh_auth_sock in every request, and an
    agent that answers when asked for keys (the test of an encrypted key through the agent
    starts one of its own, holding that key).

    Bounded: it runs as ssh-agent's "command" form, around a ``cat`` of a pipe only this
    process writes to. However pytest ends (even SIGKILL) the pipe closes, ``cat`` ends, and
    the agent exits by itself within its 10 s check of its parent; at the session's end it is
    sent SIGTERM at once. (PR_SET_PDEATHSIG would not do: ssh-agent is setgid, and exec of a
    setgid program clears it.)
    """
    program = shutil.which("ssh-agent")
    if program is None:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="relay-agent-", dir="/tmp"))  # 108-byte limit
    sock = directory / "agent.sock"
    # the agent listens before it runs the command, which says the agent's pid
    proc = subprocess.Popen(
        [program, "-a", str(sock), "sh", "-c", 'echo "$SSH_AGENT_PID"; exec cat >/dev/null'],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    agent_pid = 0
    try:
        ready, _, _ = select.select([proc.stdout], [], [], AGENT_START_S)
        assert ready, f"ssh-agent did not start within {AGENT_START_S:g} s"
        agent_pid = int(proc.stdout.readline())
        yield str(sock)
    finally:
        if agent_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent_pid, signal.SIGTERM)
        proc.stdin.close()  # cat ends
        try:
            proc.wait(AGENT_START_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawaySSHD]:
    with ThrowawaySSHD(tmp_path_factory.mktemp("sshd")) as server:
        yield server


class KernelGate:
    """A Unix socket the simulated kernels wait at after their start-up (``-simgate``)
    until the test opens it: "a kernel connects" then comes after an event of the test's
    own, whatever this machine's speed, not after a start-up the test bets on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened = False
        self.waiting: list[asyncio.StreamWriter] = []
        self.arrived = asyncio.Event()  # a kernel has reached the gate
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> KernelGate:
        self.server = await asyncio.start_unix_server(self._arrived, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.open()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _arrived(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.arrived.set()
        if self.opened:
            writer.close()
        else:
            self.waiting.append(writer)

    def open(self) -> None:
        self.opened = True
        for writer in self.waiting:
            writer.close()


@dataclass
class RelayHome:
    """A relay.toml, a socket path and the environment a front end would run shims with."""

    dir: Path
    sshd: ThrowawaySSHD | None
    hosts: dict[str, dict[str, object]] = field(default_factory=dict)
    daemon_options: dict[str, object] = field(default_factory=dict)
    defaults: dict[str, object] = field(default_factory=dict)  # relay.toml's [defaults]
    host_defaults: dict[str, object] = field(default_factory=dict)  # under each host's own
    # SSH_AUTH_SOCK of the commands run with ``env``: the session's agent (``home`` sets it),
    # None for a shell without one
    agent: str | None = None

    @property
    def config(self) -> Path:
        return self.dir / "relay.toml"

    @property
    def socket(self) -> Path:
        return self.dir / "run" / "relay.sock"

    @property
    def ssh_config(self) -> Path:
        """The only ssh_config the daemon reads (none of the machine's, unless a test
        writes one here): tests must not depend on ~/.ssh/config or /etc/ssh/ssh_config."""
        return self.dir / "ssh_config"

    def add_host(self, name: str, **extra: object) -> None:
        self.hosts[name] = extra

    def write(self) -> None:
        text = ""
        if self.daemon_options:
            text += "[daemon]\n" + "".join(
                f"{k} = {toml_value(v)}\n" for k, v in self.daemon_options.items()
            )
        if self.defaults:
            text += "[defaults]\n" + "".join(
                f"{k} = {toml_value(v)}\n" for k, v in self.defaults.items()
            )
        for name, extra in self.hosts.items():
            assert self.sshd is not None
            text += self.sshd.host_toml(
                name, **{"kernel": SIM_KERNEL, **self.host_defaults, **extra}
            )
        self.config.write_text(text)

    @property
    def env(self) -> dict[str, str]:
        """What a front end's shell has: relay's paths and, unless ``agent`` is None, an agent.
        An SSH_AUTH_SOCK the test set itself (monkeypatch) wins: the outer one is gone."""
        env = dict(os.environ, RELAY_CONFIG=str(self.config), RELAY_SOCKET=str(self.socket))
        if self.agent is not None:
            env.setdefault("SSH_AUTH_SOCK", self.agent)
        return env


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory of its own with a short path, for a test that counts a socket path's bytes
    (108 at most): tmp_path's length depends on the test's name and on pytest-xdist's
    worker (``popen-gw5``)."""
    directory = Path(tempfile.mkdtemp(prefix="relay-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def home(request: pytest.FixtureRequest) -> Iterator[RelayHome]:
    # Unix socket paths are limited to 108 bytes: keep the directory short.
    directory = Path(tempfile.mkdtemp(prefix="relay-", dir="/tmp"))
    server = request.getfixturevalue("sshd") if "sshd" in request.keywords else None
    h = RelayHome(directory, server, agent=request.getfixturevalue("ssh_agent"))
    h.daemon_options["ssh_config"] = [str(h.ssh_config)]
    if "today_path" in request.keywords:  # a test of the path without relay's agent
        h.host_defaults["resume_window_s"] = 0  # (docs/agent.md)
    if server is not None:
        h.add_host("local")
    before = agents.running()
    yield h
    shutil.rmtree(directory, ignore_errors=True)
    agents.assert_no_kernels_left(before)


@pytest.fixture(params=["agent", "no-agent"])
def agent_or_not(request: pytest.FixtureRequest, home: RelayHome) -> str | None:
    """Run the test from a shell with the session's ssh-agent, and from one without."""
    if request.param == "no-agent":
        home.agent = None
    elif home.agent is None:
        pytest.skip("ssh-agent is not installed")
    return home.agent


@dataclass
class RunningDaemon:
    daemon: Daemon
    home: RelayHome
    stop: asyncio.Future[None]
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def start_daemon(home: RelayHome, *, write: bool = True) -> AsyncIterator[RunningDaemon]:
    """Write the home's config (unless ``write`` is false: a test wrote its own) and serve it
    in this event loop until the block ends."""
    if write:
        home.write()
    config, source = settings.load(home.config)
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    ready: asyncio.Future[Daemon] = loop.create_future()
    task = loop.create_task(
        serve(
            config,
            home.socket,
            config_source=str(source),
            shutdown_trigger=stop,
            on_ready=ready.set_result,
        )
    )
    started: set[asyncio.Future[Any]] = {ready, task}
    done, _ = await asyncio.wait(started, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    running = RunningDaemon(ready.result(), home, stop, task)
    try:
        yield running
    finally:
        if not stop.done():
            stop.set_result(None)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)


@pytest.fixture
async def daemon(home: RelayHome) -> AsyncIterator[RunningDaemon]:
    async with start_daemon(home) as running:
        yield running


@dataclass
class ShimResult:
    status: int
    stdout: str
    stderr: str


async def run_shim(
    home: RelayHome,
    *args: str,
    timeout_s: float = 60,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> ShimResult:
    """``relay launch ARGS`` as a front end runs it (from ``cwd``: wherever it was started)."""
    proc = await asyncio.create_subprocess_exec(
        RELAY,
        "launch",
        *args,
        cwd=cwd,
        env=env or home.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return ShimResult(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def daemon_log() -> Iterator[io.StringIO]:
    """Everything the daemon logs during the test, as JSON lines."""
    buf = io.StringIO()
    log.configure("debug", stream=buf, json=True)
    try:
        yield buf
    finally:
        log.configure("debug", json=True)


def pid_alive(pid: int) -> bool:
    """Whether a process exists, as ``ps`` sees it (zombies count as gone)."""
    import subprocess

    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    state = out.stdout.strip()
    return bool(state) and not state.startswith("Z")


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its file system has no room left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler
