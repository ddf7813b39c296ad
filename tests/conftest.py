"""Shared fixtures: a real OpenSSH sshd (session), a relay home, an in-process daemon."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay import log, settings
from relay.daemon import Daemon, serve
from relay.sim.slurm import slurm_missing
from relay.sim.sshd import ThrowawaySSHD, find_sshd, toml_value

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
            text += self.sshd.host_toml(name, **{"kernel": SIM_KERNEL, **extra})
        self.config.write_text(text)

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, RELAY_CONFIG=str(self.config), RELAY_SOCKET=str(self.socket))


@pytest.fixture
def home(request: pytest.FixtureRequest) -> Iterator[RelayHome]:
    # Unix socket paths are limited to 108 bytes: keep the directory short.
    directory = Path(tempfile.mkdtemp(prefix="relay-", dir="/tmp"))
    server = request.getfixturevalue("sshd") if "sshd" in request.keywords else None
    h = RelayHome(directory, server)
    h.daemon_options["ssh_config"] = [str(h.ssh_config)]
    if server is not None:
        h.add_host("local")
    yield h
    shutil.rmtree(directory, ignore_errors=True)


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
    done, _ = await asyncio.wait({ready, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
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


async def run_shim(home: RelayHome, *args: str, timeout_s: float = 60) -> ShimResult:
    proc = await asyncio.create_subprocess_exec(
        RELAY,
        "launch",
        *args,
        env=home.env,
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
