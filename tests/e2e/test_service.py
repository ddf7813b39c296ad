"""relay as a user service: unit files checked by systemd's own tools, socket activation,
sd_notify, and the scripted shutdown."""

from __future__ import annotations

import asyncio
import os
import plistlib
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from relay import service
from relay.lite.paths import default_socket_path
from tests.conftest import RELAY, SIM_KERNEL, RelayHome, fill, run_shim
from tests.e2e.helpers import controller, wait_gone
from tests.e2e.test_full_disk import small_tmpfs

ROOT = Path(__file__).parents[2]
REAL_PYTHON = sys.executable
needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
    reason="Debian's systemd package is not installed",
)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RELAY, *args], capture_output=True, text=True, env=env, timeout=60)


@needs_systemd
def test_installed_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"))
    done = cli("service", "install", "--no-start", env=env)
    assert done.returncode == 0, done.stderr
    unit_dir = tmp_path / "config" / "systemd" / "user"
    assert f"wrote {unit_dir / 'relay.service'}" in done.stdout
    assert "not started (--no-start)" in done.stdout
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    verify = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--user",
            str(unit_dir / "relay.socket"),
            str(unit_dir / "relay.service"),
        ],
        capture_output=True,
        text=True,
        env=dict(env, XDG_RUNTIME_DIR=str(runtime)),
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == ""
    text = (unit_dir / "relay.service").read_text()
    exec_start = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    # relay's own script, never `python -m relay`: the service starts in $HOME, where -m
    # would import a relay checkout lying there ahead of the installed one
    script, *rest = exec_start.removeprefix("ExecStart=").split()
    assert rest == ["serve"] and os.access(script, os.X_OK) and script.endswith("/relay")
    assert "Type=notify" in text
    gone = cli("service", "uninstall", env=env)
    assert gone.returncode == 0
    assert f"removed {unit_dir / 'relay.service'}" in gone.stdout
    assert not (unit_dir / "relay.socket").exists()
    again = cli("service", "uninstall", env=env)
    assert "nothing to remove" in again.stdout


def test_without_its_script_the_service_runs_relay_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interpreter with no ``relay`` beside it (relay on PYTHONPATH, say): the unit runs it
    as the shim's autostart does, isolated from the directory and the environment it starts
    in; a ``relay`` package planted in that directory is not imported."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python3"))
    command = service.default_command()
    assert command[:3] == [str(tmp_path / "bin" / "python3"), "-I", "-c"]
    planted = tmp_path / "cwd" / "relay"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text(f"open({str(tmp_path / 'planted')!r}, 'w')\n")
    done = subprocess.run(
        [REAL_PYTHON, *command[1:], "--version"],
        cwd=planted.parent,
        env=dict(os.environ, PYTHONPATH=str(planted.parent)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "planted").exists()


def test_install_print_writes_nothing(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path))
    done = cli("service", "install", "--print", env=env)
    assert done.returncode == 0
    assert "# " + str(tmp_path / "systemd" / "user" / "relay.socket") in done.stdout
    assert "ListenStream=%t/relay/relay.sock" in done.stdout
    assert not (tmp_path / "systemd").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd's units")
def test_a_full_disk_is_one_line_and_leaves_the_units_as_they_were(tmp_path: Path) -> None:
    """``relay service install`` where the config directory's file system is full: a
    traceback, and an empty relay.socket left, which systemd reads as masked. Now one line,
    and no file of it there; a second install of the same units, on the same full disk,
    has nothing to write."""
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"))
    with small_tmpfs(tmp_path / "config") as config:
        unit_dir = config / "systemd" / "user"
        unit_dir.mkdir(parents=True)
        fill(config)
        done = cli("service", "install", "--no-start", env=env)
        left = sorted(p.name for p in unit_dir.iterdir())
        (config / "filler").unlink()
        first = cli("service", "install", "--no-start", env=env)
        fill(config)
        again = cli("service", "install", "--no-start", env=env)
    assert (done.returncode, done.stdout, left) == (1, "", []), (done, left)
    assert done.stderr.splitlines() == [
        f"relay: cannot write {unit_dir / 'relay.socket'}: no space left on its file system; "
        "free some space there; the service's files were left as they were"
    ], done.stderr
    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert f"kept {unit_dir / 'relay.service'} (as it should be)" in again.stdout


@needs_systemd
@pytest.mark.parametrize("how", ["RELAY_SOCKET", "[daemon] socket"])
def test_the_service_listens_where_the_shims_look(tmp_path: Path, how: str) -> None:
    """A socket moved from the default (RELAY_SOCKET, or relay.toml's [daemon] socket): the
    unit listened at the default all the same, without a word, and each shim would have
    started a daemon of its own beside the service's."""
    moved = tmp_path / "my sockets" / "relay.sock"
    config = tmp_path / "relay.toml"
    config.write_text(f"[daemon]\nsocket = '{moved}'\n" if how != "RELAY_SOCKET" else "")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"), RELAY_CONFIG=str(config))
    env.pop("RELAY_SOCKET", None)
    if how == "RELAY_SOCKET":
        env["RELAY_SOCKET"] = str(moved)
    done = cli("service", "install", "--no-start", env=env)
    assert done.returncode == 0, done.stderr
    assert f"the socket is {moved} (RELAY_SOCKET, or [daemon] socket" in done.stdout
    unit = tmp_path / "config" / "systemd" / "user" / "relay.socket"
    assert f"ListenStream={moved}\n" in unit.read_text()
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--user", str(unit), str(unit.with_suffix(".service"))],
        capture_output=True, text=True, env=dict(env, XDG_RUNTIME_DIR=str(runtime)),
    )  # fmt: skip
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr


def test_deploy_files_are_what_relay_renders() -> None:
    for name, data in service.deploy_examples().items():
        assert (ROOT / "deploy" / name).read_bytes() == data, f"run `make deploy` ({name})"


def test_launchd_plist_parses_and_names_the_default_socket(tmp_path: Path) -> None:
    plist = plistlib.loads((ROOT / "deploy" / "relay.daemon.plist").read_bytes())
    listeners = plist["Sockets"]["Listeners"]
    assert listeners["SockPathName"] == str(
        default_socket_path({"HOME": "/Users/USERNAME"}, "darwin")
    )
    assert listeners["SockPathMode"] == 0o600
    assert plist["ProgramArguments"][-1] == "serve"
    status, lines = service.install(print_only=True, platform="darwin", env={"HOME": str(tmp_path)})
    assert status == 0
    printed = "\n".join(lines[1:]).encode()
    mine = plistlib.loads(printed)
    assert mine["Sockets"]["Listeners"]["SockPathName"] == str(
        default_socket_path({"HOME": str(tmp_path)}, "darwin")
    )


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.seen: list[str] = []

    async def expect(self, word: str, timeout_s: float = 30) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            while not any(word in m for m in self.seen):
                self.seen.append((await loop.sock_recv(self.sock, 4096)).decode())

    def close(self) -> None:
        self.sock.close()


@asynccontextmanager
async def daemon_process(
    home: RelayHome, *prefix: str, env: dict[str, str] | None = None, stderr: int | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    home.write()
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        RELAY,
        "serve",
        env=env or home.env,
        stderr=asyncio.subprocess.DEVNULL if stderr is None else stderr,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def notified_daemon(
    home: RelayHome, stderr: int | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, NotifySocket]]:
    """``relay serve`` as a Type=notify service: started, and READY=1 received."""
    notify = NotifySocket(home.dir / "notify.sock")
    try:
        env = dict(home.env, NOTIFY_SOCKET=str(notify.path))
        async with daemon_process(home, env=env, stderr=stderr) as daemon:
            await notify.expect("READY=1")
            yield daemon, notify
    finally:
        notify.close()


@needs_systemd
async def test_socket_activation_under_systemd_socket_activate(home: RelayHome) -> None:
    home.socket.parent.mkdir(mode=0o700)
    notify = NotifySocket(home.dir / "notify.sock")
    env = dict(home.env, NOTIFY_SOCKET=str(notify.path))
    env.pop("RELAY_SOCKET")  # the daemon must learn the path from the socket it is given
    home.write()
    activator = await asyncio.create_subprocess_exec(
        "systemd-socket-activate",
        "-l",
        str(home.socket),
        "-E",
        "RELAY_CONFIG",
        "-E",
        "NOTIFY_SOCKET",
        sys.executable,
        "-m",
        "relay",
        "serve",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert activator.stderr is not None
        line = await asyncio.wait_for(activator.stderr.readline(), 30)
        assert b"Listening on" in line
        assert not notify.seen
        async with controller(home) as fe:  # the first connection starts the daemon
            kl = await fe.link.accept(60)
            await notify.expect("READY=1")
            assert any(f"STATUS=serving {home.socket}" in m for m in notify.seen)
            await kl.quit(0)
            assert (await fe.result())[0] == 0
            await kl.aclose()
        activator.send_signal(signal.SIGTERM)
        await notify.expect("STOPPING=1")
        await asyncio.wait_for(activator.communicate(), 30)  # its stderr read to the end
        assert activator.returncode == 0
    finally:
        if activator.returncode is None:
            activator.kill()
            await activator.wait()
        notify.close()


async def test_sigterm_shutdown_is_scripted(home: RelayHome) -> None:
    async with notified_daemon(home) as (daemon, notify):
        async with controller(home) as fe:
            kl = await fe.link.accept(60)
            pid = int(kl.hello["pid"])
            assert fe.proc.stdout is not None
            await asyncio.wait_for(fe.proc.stdout.readline(), 60)  # launch answered
            daemon.send_signal(signal.SIGTERM)
            await notify.expect("STOPPING=1")
            status, _, err = await fe.result()
            assert status == 128 + signal.SIGTERM, err  # the kernel was terminated
            assert await asyncio.wait_for(daemon.wait(), 30) == 0
            await wait_gone(pid)
            await kl.aclose()
        assert not home.socket.exists()


async def test_shutdown_refuses_new_launches_and_a_second_signal_forces_exit(
    home: RelayHome,
) -> None:
    stubborn = home.dir / "stubborn"
    stubborn.write_text(f"#!/bin/sh\ntrap '' TERM\nexec {SIM_KERNEL} \"$@\"\n")
    stubborn.chmod(0o755)
    home.add_host("local", terminate_grace_s=60)
    async with (
        notified_daemon(home, stderr=asyncio.subprocess.PIPE) as (daemon, notify),
        controller(home, kernel=str(stubborn)) as fe,
    ):
        assert daemon.stderr is not None
        said = asyncio.ensure_future(daemon.stderr.read())  # its log, a pipe (journald's is
        # a socket): the line before the forced exit is in it (it waited in the log's queue)
        kl = await fe.link.accept(60)
        pid = int(kl.hello["pid"])
        assert fe.proc.stdout is not None
        await asyncio.wait_for(fe.proc.stdout.readline(), 60)  # launch answered
        daemon.send_signal(signal.SIGTERM)
        await notify.expect("STOPPING=1")  # now stuck waiting out the grace
        refused = await run_shim(
            home, "--no-autostart", "local", SIM_KERNEL, "1@127.0.0.1,2@127.0.0.1"
        )
        assert refused.status == 1
        assert "shutting down and takes no new launches" in refused.stderr
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 128 + signal.SIGTERM
        assert b'"second signal: exiting now"' in await asyncio.wait_for(said, 30)
        await fe.result()
        await kl.closed()  # its connection died with the daemon...
        await wait_gone(pid)  # ...and the supervisor's SIGKILL follow-up ended it
        await kl.aclose()


async def test_a_launch_in_flight_at_shutdown_is_told_why(home: RelayHome) -> None:
    from tests.conftest import start_daemon
    from tests.e2e.test_faults import fifo_kernel, read_fifo

    hung, fifo = fifo_kernel(home, "hung")
    async with start_daemon(home) as running:
        from relay.sim import frontend

        link = await frontend.ListeningLink.create()
        shim = asyncio.ensure_future(run_shim(home, "local", hung, str(link.name)))
        pid, _ = await read_fifo(fifo)
        running.stop.set_result(None)  # the daemon is told to stop mid-launch
        result = await shim
        link.close()
    assert result.status == 1
    assert "relay shut down during this launch; launch again" in result.stderr
    await wait_gone(pid)
