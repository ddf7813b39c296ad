"""The daemon's control socket and the shim, with no SSH involved."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog

import relay
from relay import control as control_mod
from relay.control import DaemonRunning
from relay.daemon import serve
from relay.lite import framing, shim
from relay.settings import RelayConfig
from tests.conftest import RELAY, RelayHome, RunningDaemon, run_shim, start_daemon


async def request(path: str, data: bytes) -> list[dict[str, object]]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    await writer.drain()
    replies = [framing.decode(line) for line in (await reader.read()).splitlines(keepends=True)]
    writer.close()
    await writer.wait_closed()
    return replies


async def ping(path: str) -> None:
    (reply,) = await request(path, framing.encode({"op": "ping"}))
    assert reply["event"] == "pong" and reply["pid"] == os.getpid()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "not UTF-8 JSON"),
        (b"\x00\xff\xfe garbage\n", "not UTF-8 JSON"),
        (b'{"v":7,"op":"ping"}\n', "version 7"),
        (b'{"v":1,"op":"launch"}\n', "bad request"),
        (b'{"v":1,"op":"terminate"}\n', "terminate outside a launch"),
        (b"x" * (framing.MAX_MESSAGE_BYTES + 10) + b"\n", "exceeds"),
        (b'{"v":1,"op":"ping","op":"status"}\n', "the key 'op' twice"),
        (b'{"v":1,"op":"connect","host":"h","kernel":{"a":1,"a":2}}\n', "the key 'a' twice"),
    ],
)
async def test_garbage_gets_an_error_and_the_daemon_serves_on(
    daemon: RunningDaemon, data: bytes, says: str
) -> None:
    path = str(daemon.home.socket)
    (reply,) = await request(path, data)
    assert reply["event"] == "error" and says in str(reply["message"])
    await ping(path)


@pytest.mark.parametrize(
    "data", [b'{"v":1,"op":"ping","op":"stop"}\n', b'{"v":1,"op":"stop","op":"ping"}\n']
)
async def test_a_message_with_a_key_twice_is_refused_whichever_comes_last(
    daemon: RunningDaemon, data: bytes
) -> None:
    """Not the last value, not the first: neither the stop nor the ping is done."""
    path = str(daemon.home.socket)
    (reply,) = await request(path, data)
    assert reply["event"] == "error" and reply["code"] == "bad_request", reply
    assert "the key 'op' twice" in str(reply["message"])
    assert not daemon.daemon.stopping and not daemon.task.done()
    await ping(path)


async def test_half_written_message_then_close(daemon: RunningDaemon) -> None:
    path = str(daemon.home.socket)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b'{"v":1,"op":"pi')
    writer.write_eof()
    (reply,) = [framing.decode(line) for line in (await reader.read()).splitlines(True)]
    assert "half-written" in str(reply["message"])
    writer.close()
    await writer.wait_closed()
    await ping(path)


async def test_silent_client_is_dropped_and_others_are_served(
    daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control_mod, "REQUEST_TIMEOUT_S", 0.2)
    path = str(daemon.home.socket)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b'{"v":1,')
    await ping(path)  # served while the other client dawdles
    reply = framing.decode(await asyncio.wait_for(reader.readline(), 30))
    assert "no complete request" in str(reply["message"])
    writer.close()
    await writer.wait_closed()


async def test_socket_is_private(daemon: RunningDaemon) -> None:
    sock, directory = daemon.home.socket, daemon.home.socket.parent
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(sock.stat().st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
async def test_another_user_cannot_connect(daemon: RunningDaemon) -> None:
    code = (
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n sys.exit(13)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "python3", "-c", code, str(daemon.home.socket), user="nobody", cwd="/"
    )
    assert await proc.wait() == 13


async def test_a_second_daemon_on_the_same_socket_refuses(daemon: RunningDaemon) -> None:
    stop = asyncio.get_running_loop().create_future()
    with pytest.raises(DaemonRunning):
        await serve(RelayConfig(), daemon.home.socket, shutdown_trigger=stop)
    await ping(str(daemon.home.socket))


async def test_socket_directory_open_to_others_is_refused(home: RelayHome) -> None:
    home.socket.parent.mkdir(mode=0o755)
    home.socket.parent.chmod(0o755)
    stop = asyncio.get_running_loop().create_future()
    with pytest.raises(Exception, match="chmod 700"):
        await serve(RelayConfig(), home.socket, shutdown_trigger=stop)


async def test_a_socket_path_too_long_is_said_with_the_limit(tmp_path: Path) -> None:
    """It was "OSError: AF_UNIX path too long", naming no limit."""
    too_long = tmp_path / ("d" * (200 - len(str(tmp_path)))) / "relay.sock"
    stop = asyncio.get_running_loop().create_future()
    with pytest.raises(Exception, match=r"is 2\d\d bytes, and a Unix socket's may be at most 1"):
        await serve(RelayConfig(), too_long, shutdown_trigger=stop)


async def test_a_shared_socket_directory_is_said_with_one_of_its_own_to_use(
    home: RelayHome, tmp_path: Path
) -> None:
    """A socket in /tmp itself (sticky, everyone's): relay said `chmod 700 /tmp`. It names a
    directory of the socket's own below it, by its absolute path though RELAY_SOCKET is
    relative, and suggests no chmod of a directory everyone shares."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    env = dict(home.env, RELAY_SOCKET="relay.sock")
    result = await run_shim(home, "--no-autostart", "local", "/k", "1@a,2@a", cwd=shared, env=env)
    assert result.status != 0, result
    (line,) = result.stderr.splitlines()
    assert f"refusing {shared}: it is open to other users" in line, line
    assert f"RELAY_SOCKET={shared}/relay/relay.sock" in line and "chmod" not in line, line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["local", "/k", "5000@127.0.0.1"], "deprecated TCP protocol"),
        (["local", "/k", "notalink"], "expected DATAPORT@HOST,MESSAGEPORT@HOST"),
        (["alice:hunter2@host", "/k", "1@a,2@a"], "password in a host spec is refused"),
        (["[::1", "/k", "1@a,2@a"], "without ']'"),
        (["nosuchalias", "/k", "1@a,2@a"], "unknown host alias 'nosuchalias'"),
        (["local", "", "1@a,2@a"], "no kernel given"),
        # a template's word the front end left empty: said in the command's own words
        (["", "/k", "1@a,2@a"], "HOST is empty: give a [hosts] name"),
        (["local", "/k", ""], "LINKNAME is empty: the front end fills it in"),
    ],
)
async def test_bad_input_is_one_actionable_line(
    home: RelayHome, daemon_log: io.StringIO, args: list[str], says: str
) -> None:
    home.config.write_text(
        "[daemon]\nallow_adhoc_hosts = false\n[hosts.local]\nhostname = '127.0.0.1'\n"
    )
    async with start_daemon(home, write=False):
        result = await run_shim(home, *args)
    assert '"serving"' in daemon_log.getvalue()  # the capture works
    assert "hunter2" not in daemon_log.getvalue()
    assert result.status == 1, result
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("relay: ") and says in line
    assert "hunter2" not in result.stderr


async def test_a_mistyped_host_with_no_kernel_is_told_its_name_is_not_known(
    home: RelayHome, daemon_log: io.StringIO
) -> None:
    """An empty KERNEL and a host that is not a [hosts] entry (ad-hoc hosts allowed): the
    likely mistake is the name, said first; it was told to set 'kernel' in [hosts.locl]."""
    home.config.write_text("[hosts.local]\nhostname = '127.0.0.1'\n")
    async with start_daemon(home, write=False):
        result = await run_shim(home, "locl", "", "1@a,2@a")
    assert result.status == 1, result
    (line,) = result.stderr.splitlines()
    assert "'locl' is not a [hosts] entry" in line and "(configured: local)" in line, line
    assert "[hosts.locl]" not in line, line


async def test_daemon_unreachable_without_autostart(home: RelayHome) -> None:
    result = await run_shim(home, "--no-autostart", "local", "/k", "1@a,2@a")
    assert result.status == 3
    assert "no relay daemon is listening" in result.stderr and "relay serve" in result.stderr


async def test_shim_autostarts_a_daemon_that_stays(home: RelayHome) -> None:
    home.config.write_text("[daemon]\nallow_adhoc_hosts = false\n")
    first = await run_shim(home, "nosuchalias", "/k", "1@a,2@a")
    assert first.status == 1 and "unknown host alias" in first.stderr
    lock = home.socket.with_name("relay.sock.lock")
    pid = int(lock.read_text())
    try:
        second = await run_shim(home, "--no-autostart", "nosuchalias", "/k", "1@a,2@a")
        assert second.status == 1 and "unknown host alias" in second.stderr
        assert int(lock.read_text()) == pid  # the same daemon answered
    finally:
        os.kill(pid, signal.SIGTERM)
    # the daemon removes its socket on SIGTERM; wait on its exit via the lock
    probe = subprocess.run(["flock", "-w", "30", str(lock), "true"], check=False)
    assert probe.returncode == 0
    assert not home.socket.exists()


async def test_autostart_reports_a_broken_config(home: RelayHome) -> None:
    home.config.write_text("[hosts.a]\nport = 'x'\n")
    result = await run_shim(home, "a", "/k", "1@a,2@a")
    assert result.status == 3
    assert "could not start" in result.stderr and "hosts.a" in result.stderr


def stop_autostarted(home: RelayHome) -> None:
    """End a daemon a test's shim started (SIGTERM), and wait until it has let go of its
    lock: the daemon is no child of the test's, so its pid is read from the lock file."""
    lock = home.socket.with_name("relay.sock.lock")
    if not lock.exists():
        return
    text = lock.read_text().strip()
    if text:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(text), signal.SIGTERM)
    probe = subprocess.run(["flock", "-w", "30", str(lock), "true"], check=False)
    assert probe.returncode == 0


def plant(directory: Path, marker: Path, *names: str) -> None:
    """Modules someone left in a shared directory, each leaving ``marker`` when imported."""
    code = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for name in names:
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)


@pytest.mark.parametrize(
    "planted",
    [
        ("relay.py", "asyncssh.py", "structlog.py", "pydantic.py"),  # a planted module
        ("relay/__init__.py", "relay/__main__.py"),  # a checkout of relay, without __version__
    ],
)
async def test_autostart_imports_nothing_from_the_current_directory(
    home: RelayHome, tmp_path: Path, planted: tuple[str, ...]
) -> None:
    """The front end starts the shim in whatever directory it is in (a download folder, a
    shared /tmp): what lies there must not run in, nor break, the daemon it starts."""
    shared, marker = tmp_path / "shared", tmp_path / "imported"
    plant(shared, marker, *planted)
    home.config.write_text("[daemon]\nallow_adhoc_hosts = false\n")
    try:
        result = await run_shim(home, "nosuchalias", "/k", "1@a,2@a", cwd=shared)
    finally:
        stop_autostarted(home)
    assert not marker.exists(), marker.read_text()
    assert result.status == 1 and "unknown host alias" in result.stderr, result  # it answered


# The shim leaves the daemon it started running and never waits for it; in a test's own process
# subprocess says so when it drops the handle.
left_running = pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")


@left_running
@pytest.mark.parametrize(
    "variable",
    ["PYTHONPATH", "PYTHONHOME"],
)
def test_autostart_ignores_python_variables_of_the_environment(
    home: RelayHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """The front end's environment is handed on to the daemon, but the daemon runs the relay
    the shim runs: a planted ``relay`` or dependency on PYTHONPATH does not win, and
    PYTHONHOME (the standard library's place) is not followed. In process: a shim run with
    PYTHONPATH would import the planted relay itself, before any autostart."""
    planted, marker = tmp_path / "planted", tmp_path / "imported"
    plant(planted, marker, "relay/__init__.py", "asyncssh.py", "structlog.py", "pydantic.py")
    home.config.write_text("[daemon]\nallow_adhoc_hosts = false\n")
    for name, value in home.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(variable, str(planted))
    try:
        sock = shim.daemon_socket(str(home.socket), autostart=True)  # a bare _socket.socket
        try:
            sock.sendall(framing.encode({"op": "ping"}))
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = sock.recv(4096)
                assert chunk, answer
                answer += chunk
        finally:
            sock.close()
        reply = framing.decode(answer)
    finally:
        stop_autostarted(home)
    assert not marker.exists(), marker.read_text()
    assert reply["event"] == "pong" and reply["version"] == relay.__version__


async def test_autostart_names_why_the_daemon_died(home: RelayHome) -> None:
    """A daemon that cannot start (here: a socket path longer than AF_UNIX allows, so it
    cannot listen) is reported at once, with why, not as 15 s that never passed (a daemon
    that dies saying nothing of its own: the fake pythons below)."""
    home.config.write_text("")
    long = home.dir / "run" / ("x" * 120 + ".sock")
    env = dict(home.env, RELAY_SOCKET=str(long))
    started = time.monotonic()
    result = await run_shim(home, "a", "/k", "1@a,2@a", cwd=home.dir, env=env)
    took = time.monotonic() - started
    assert result.status == 3, result
    (line,) = result.stderr.splitlines()
    assert "within" not in line and "could not start" in line, line  # said at once
    assert "bytes, and a Unix socket's may be at most" in line, line  # its cause, in words
    assert took < 10


def _fake_python(tmp_path: Path, script: str) -> Path:
    exe = tmp_path / "python"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    return exe


@pytest.mark.parametrize(
    ("script", "says"),
    [
        (
            "echo 'Traceback (most recent call last):' >&2\n"
            "printf 'RuntimeError: the \\033[31mreal\\033[0m cause\\n\\n' >&2\nexit 7\n",
            "exited with status 7: RuntimeError: the ?[31mreal?[0m cause",
        ),
        (
            "echo 'ValueError: bad passphrase hunter2 for key' >&2\nexit 1\n",
            "exited with status 1: ValueError: bad passphrase",
        ),
        ("kill -9 $$\n", "was killed by SIGKILL"),
        ("exit 0\n", "exited with status 0 and said nothing"),
    ],
)
def test_autostart_quotes_the_last_line_of_a_daemon_that_exits(
    home: RelayHome,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: str,
    says: str,
) -> None:
    """Its status and the last line it left in the log, one line, no control characters,
    and nothing after a word that announces a secret."""
    monkeypatch.setattr(sys, "executable", str(_fake_python(tmp_path, script)))
    home.socket.parent.mkdir(mode=0o700)
    (home.socket.parent / "relay.log").write_text("an older daemon's last words\n")
    with pytest.raises(shim.ShimError) as caught:
        shim.daemon_socket(str(home.socket), autostart=True)
    message = str(caught.value)
    assert caught.value.status == shim.EXIT_DAEMON
    assert says in message and "\n" not in message and "\033" not in message, message
    assert "hunter2" not in message and "older" not in message


@left_running
def test_autostart_gives_up_only_once_its_wait_has_passed(
    home: RelayHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pid"
    said = f"echo $$ > {pid_file}.new\nmv {pid_file}.new {pid_file}\n"  # whole, or not there
    exe = _fake_python(tmp_path, said + "exec sleep 60\n")
    monkeypatch.setattr(sys, "executable", str(exe))
    monkeypatch.setattr(shim, "AUTOSTART_WAIT_S", 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(shim.ShimError, match=r"did not start within 0.5 s"):
            shim.daemon_socket(str(home.socket), autostart=True)
    finally:
        deadline = time.monotonic() + 30  # its shell may not have run yet on a loaded machine
        while not pid_file.exists():
            assert time.monotonic() < deadline, "the fake daemon never ran"
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert time.monotonic() - started >= 0.5


def test_peer_uid_is_read_from_the_socket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert control_mod.peer_uid(a) == os.getuid()


async def test_a_machine_id_that_cannot_be_kept_is_said_and_the_daemon_serves(
    home: RelayHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """relay.daemontag: with nowhere to keep this machine's id (a read-only home, say) the
    daemon serves on the old tag and says what a user risks, and where."""
    blocker = home.dir / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker / "state"))
    with structlog.testing.capture_logs() as logs:
        async with start_daemon(home) as running:
            await ping(str(running.home.socket))
    said = [e for e in logs if e["event"].startswith("machine id not kept")]
    assert len(said) == 1, logs
    assert said[0]["log_level"] == "warning" and str(blocker) in said[0]["error"], said
    assert "XDG_STATE_HOME" in said[0]["event"]


@pytest.mark.parametrize("through", ["daemon", "standalone"])
@pytest.mark.parametrize("as_json", [False, True])
async def test_relay_check_names_a_spec_with_a_password_without_it(
    home: RelayHome, daemon_log: io.StringIO, through: str, as_json: bool
) -> None:
    """Step 1 refuses a password in a host spec, and never repeats it; the report's header
    and its JSON named the spec as given (a review found it there), through a daemon and
    without one."""
    home.config.write_text("[hosts.local]\nhostname = '127.0.0.1'\n")
    argv = [RELAY, "check", *(["--json"] if as_json else []), "alice:hunter2@host"]

    async def check() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=home.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    if through == "daemon":
        async with start_daemon(home, write=False):
            status, out = await check()
        assert "hunter2" not in daemon_log.getvalue()
    else:
        status, out = await check()
    assert status == 1, out
    assert "password in a host spec is refused" in out, out
    assert "alice:***@host" in out, out
    assert "hunter2" not in out, out


async def test_a_request_right_after_an_in_place_save_waits_for_the_whole_file(
    daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editor that saves relay.toml in place empties it, then writes it: a request in
    between read an empty file, valid TOML with no [hosts], and a launch ran without its
    host's entry. The request waits while the file is that new (Daemon.config_settle_s),
    and reads what the editor wrote meanwhile."""
    running = daemon.daemon
    text = daemon.home.config.read_text()
    asked = asyncio.Event()
    settle = running.config_settle_s

    def spy(now: float | None = None) -> float:
        asked.set()  # as if asked the moment it was emptied: a loaded machine is no faster
        return settle(daemon.home.config.stat().st_mtime_ns / 1e9)

    monkeypatch.setattr(running, "config_settle_s", spy)
    with daemon.home.config.open("w") as saving:  # emptied: the write comes after the request
        status = asyncio.ensure_future(
            request(str(daemon.home.socket), framing.encode({"op": "status"}))
        )
        await asyncio.wait_for(asked.wait(), 30)
        saving.write(text + "\n[hosts.added]\nhostname = 'added.example'\n")
    await asyncio.wait_for(status, 30)
    assert "added" in running.config.hosts


async def test_a_request_that_fails_unexpectedly_is_answered_and_the_daemon_serves_on(
    daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review saved relay.toml in Latin-1: the UnicodeDecodeError escaped the request's
    handler, which answered nothing (the shim waited for its answer), and ``relay status``
    said nothing of the file. The file is now a configuration error like any other; and
    whatever else a request raises that relay did not foresee, its client is told in one
    line, and the daemon serves on."""
    path = str(daemon.home.socket)
    text = daemon.home.config.read_bytes()
    daemon.home.config.write_bytes(text + b"# caf\xe9\n")
    (reply,) = await request(path, framing.encode({"op": "ping"}))
    assert reply["event"] == "pong"
    (status,) = await request(path, framing.encode({"op": "status"}))
    assert "not UTF-8" in str(status["daemon"]["config_error"]), status  # type: ignore[index]

    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(daemon.daemon, "status", broken)
    (reply,) = await request(path, framing.encode({"op": "status"}))
    assert reply["event"] == "error" and "relay failed unexpectedly" in str(reply["message"])
    assert "\n" not in str(reply["message"])
    await ping(path)
