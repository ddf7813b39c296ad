"""The shim (relay.lite.shim) at its edges, each answered with one line and its exit status,
never a traceback: a daemon that resets the connection before taking it up, a request too
large to send, a --timeout that is no number of seconds, a relay.toml whose [daemon] is not
a table; and after a request, signals handled as before (``relay trust`` asks y/N then)."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from relay.lite import framing, paths, shim
from tests.conftest import RELAY

BOUND_S = 30.0


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    return directory / "relay.sock"


def shim_env(sock_path: Path) -> dict[str, str]:
    """A front end's environment, its daemon's socket at ``sock_path`` and no relay.toml."""
    return dict(os.environ, RELAY_SOCKET=str(sock_path), RELAY_CONFIG="/nonexistent")


def launch(sock_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RELAY, "launch", "--no-autostart", *args],
        env=shim_env(sock_path),
        capture_output=True,
        text=True,
        timeout=BOUND_S,
        stdin=subprocess.DEVNULL,
    )


def start_launch(sock_path: Path, stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """A controller's ``relay launch``, running (its output piped) while the test plays the
    daemon."""
    return subprocess.Popen(
        [RELAY, "launch", "--no-autostart", "local", "/k", "1@a,2@a"],
        env=shim_env(sock_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def listening(sock_path: Path) -> socket.socket:
    """A stand-in daemon's listener on ``sock_path`` (its accept bounded)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    listener.settimeout(BOUND_S)
    return listener


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.splitlines()
    return line


def daemon_gone(sock_path: Path, answer: dict[str, object] | None) -> str:
    """A controller's launch whose stand-in daemon goes after the request came: unread
    (``answer`` None: the shim's next read is reset), or once it answered ``answer``. The
    shim's one line, with its exit status checked."""
    listener = listening(sock_path)
    proc = start_launch(sock_path)
    try:
        conn, _ = listener.accept()
        ready, _, _ = select.select([conn], [], [], BOUND_S)  # the request came
        assert ready
        if answer is not None:
            conn.recv(framing.MAX_MESSAGE_BYTES)
            conn.sendall(framing.encode(answer))
        conn.close()
        listener.close()
        out, err = proc.communicate(timeout=BOUND_S)
    finally:
        proc.kill()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert result.returncode == shim.EXIT_DAEMON, result
    return one_line(result)


def test_a_daemon_that_resets_the_connection_is_one_line(sock_path: Path) -> None:
    """The daemon went (a stop, a crash) with the shim's request unread: the connection is
    reset (as for a connection it had not yet taken up when its listener closed)."""
    line = daemon_gone(sock_path, None)
    assert "lost the relay daemon: Connection reset by peer" in line
    assert f"see {sock_path.parent / 'relay.log'}, or `journalctl --user -u relay`" in line


def test_a_daemon_gone_while_its_kernel_runs_says_where_it_said_why(sock_path: Path) -> None:
    """The daemon closed a running kernel's connection (SIGKILLed, crashed): one line with
    where its log is and what becomes of a kernel that outlives outages (it said "see its
    log", and nothing of the kernel: a new-user pass's finding)."""
    line = daemon_gone(sock_path, {"event": "launched", "linkname": "1@127.0.0.1,2@127.0.0.1"})
    assert "the relay daemon closed the connection unexpectedly: it stopped or crashed" in line
    assert f"see {sock_path.parent / 'relay.log'}" in line, line
    assert "runs on until the next relay daemon reaches its host" in line, line


def test_a_request_too_large_to_send_is_one_line(sock_path: Path) -> None:
    with answering(sock_path, {"event": "error", "message": "not reached"}):
        result = launch(sock_path, "local", "/k", "1@a," + "2" * framing.MAX_MESSAGE_BYTES)
    assert result.returncode == shim.EXIT_USAGE, result
    assert "too large" in one_line(result)


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1", "1e300", "soon"])
def test_a_timeout_that_is_no_number_of_seconds_is_a_usage_error(
    sock_path: Path, value: str
) -> None:
    result = launch(sock_path, "--timeout", value, "local", "/k", "1@a,2@a")
    assert result.returncode == shim.EXIT_USAGE, result
    assert "--timeout" in result.stderr and "Traceback" not in result.stderr
    assert "--timeout: expected a positive number of seconds" in result.stderr


def test_a_daemon_key_that_is_not_a_table_leaves_the_default_socket(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    for text in (
        'daemon = "x"\nsocket = 1\n',
        "daemon = [1, 2]\n# socket\n",
        # what TOML cannot be (the daemon says so): too deep, a number too long to read
        "# socket\na = " + "[" * 5000,
        "# socket\na = " + "1" * 5000,
    ):
        config.write_text(text)
        env = {"RELAY_CONFIG": str(config), "XDG_RUNTIME_DIR": str(tmp_path)}
        assert paths.socket_path(env) == paths.default_socket_path(env)


class answering:
    """A stand-in daemon on ``path``: reads one request line, answers ``answer``."""

    def __init__(self, path: Path, answer: dict[str, object]) -> None:
        self.listener = listening(path)
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(BOUND_S)
            buf = b""
            while b"\n" not in buf:
                data = conn.recv(1 << 16)
                if not data:
                    return
                buf += data
            conn.sendall(framing.encode(self.answer))

    def __enter__(self) -> answering:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.listener.close()
        self.thread.join(BOUND_S)


@pytest.fixture
def handlers() -> Iterator[None]:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in before.items():
        signal.signal(s, h)


def test_after_a_request_signals_are_handled_as_before(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch, handlers: None
) -> None:
    """``relay trust`` asks y/N after its request: Ctrl-C and SIGTERM must still end it (the
    request's record-only handlers stayed, and the prompt swallowed both)."""
    monkeypatch.setenv("RELAY_SOCKET", str(sock_path))

    def mine(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGTERM, mine)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with answering(sock_path, {"event": "pong"}):
        assert shim.request({"op": "ping"}, BOUND_S, autostart=False)["event"] == "pong"
    assert {s: signal.getsignal(s) for s in before} == before
    assert signal.set_wakeup_fd(-1) == -1  # none left behind


def launched(
    listener: socket.socket, then: Callable[[socket.socket, BinaryIO], None]
) -> threading.Thread:
    """A stand-in daemon on ``listener`` (started): it answers one launch request with
    "launched", then hands ``then`` its connection and the lines the shim sends next."""

    def daemon() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as lines:
            conn.settimeout(BOUND_S)
            assert framing.decode(lines.readline())["op"] == "launch"
            conn.sendall(framing.encode({"event": "launched", "linkname": "1@a,2@a"}))
            then(conn, lines)

    thread = threading.Thread(target=daemon, daemon=True)
    thread.start()
    return thread


def test_a_signalled_controller_waits_for_its_kernels_end(sock_path: Path) -> None:
    """SIGTERM to a controller's shim: it asks the daemon to end the kernel and waits (at
    most TERMINATE_WAIT_S) for the answer that it has ended. It asked and left at once:
    the wait returned at the signal it was waiting after."""
    listener = listening(sock_path)
    left_early: list[bool] = []

    def then(conn: socket.socket, lines: BinaryIO) -> None:
        assert framing.decode(lines.readline())["op"] == "terminate"
        # a second to see whether the shim goes before the kernel's end is said
        ready, _, _ = select.select([conn], [], [], 1.0)
        left_early.append(bool(ready) and conn.recv(1) == b"")
        if not left_early[0]:
            conn.sendall(framing.encode({"event": "exited", "status": 143}))

    thread = launched(listener, then)
    with start_launch(sock_path, stderr=subprocess.DEVNULL) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "1@a,2@a"
            proc.send_signal(signal.SIGTERM)
            thread.join(BOUND_S)
            assert proc.wait(BOUND_S) == 128 + signal.SIGTERM
        finally:
            proc.kill()
            listener.close()
    assert left_early == [False]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _waiting_on_a_lock(pid: int) -> bool:
    """Whether ``pid`` is blocked on a file lock (/proc/locks: ``->`` marks a waiter)."""
    return any(
        "->" in line and line.split("->", 1)[1].split()[3] == str(pid)
        for line in Path("/proc/locks").read_text().splitlines()
    )


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="Linux only")
def test_a_launch_commands_shell_killed_while_the_daemon_starts_ends_the_shim(
    sock_path: Path,
) -> None:
    """The shim asked for SIGTERM at its parent's death only once the daemon answered; a
    first launch that starts the daemon waits for it (here on the start lock, which another
    start holds), and a parent that died meanwhile left the shim under init, going on to
    launch a kernel nobody would end (a review found it)."""
    from relay.lite import locks

    with locks.StartLock(str(sock_path)) as held:  # another shim is starting the daemon
        front_end = subprocess.Popen(
            ["sh", "-c", f'"{RELAY}" launch local /k 1@127.0.0.1,2@127.0.0.1; echo'],
            env=shim_env(sock_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = BOUND_S
            shim_pid = None
            while shim_pid is None or not _waiting_on_a_lock(shim_pid):
                assert deadline > 0, "the shim never waited on the start lock"
                kids = _children(front_end.pid)
                shim_pid = kids[0] if kids else None
                select.select([], [], [], 0.05)
                deadline -= 0.05
            pidfd = os.pidfd_open(shim_pid)
            front_end.kill()  # the front end ends its Launch command's shell
            front_end.wait()
            try:
                ready, _, _ = select.select([pidfd], [], [], BOUND_S)
            finally:
                os.close(pidfd)
            assert ready, "the shim ran on after its parent died"
        finally:
            held.release()
            if front_end.poll() is None:
                front_end.kill()
                front_end.wait()
    assert not sock_path.exists()  # it started no daemon


@pytest.mark.parametrize("mode", ["controller", "compute"])
def test_an_output_closed_before_the_link_name_is_one_line(sock_path: Path, mode: str) -> None:
    """The front end closed the launch command's output: writing the link name raised
    BrokenPipeError, a traceback (a review found it). One line now; a controller's kernel
    ends with the shim's conversation, which the stand-in daemon sees close."""
    listener = listening(sock_path)
    closed: list[bool] = []
    thread = launched(listener, lambda conn, _: closed.append(conn.recv(1) == b""))
    reading, writing = os.pipe()
    os.close(reading)  # nobody reads the shim's output
    try:
        result = subprocess.run(
            [RELAY, "launch", "--no-autostart"]
            + (["--compute"] if mode == "compute" else [])
            + ["local", "/k", "1@a,2@a"],
            env=shim_env(sock_path),
            stdin=subprocess.DEVNULL,
            stdout=writing,
            stderr=subprocess.PIPE,
            text=True,
            timeout=BOUND_S,
        )
    finally:
        os.close(writing)
        thread.join(BOUND_S)
        listener.close()
    line = one_line(result)
    assert result.returncode == shim.EXIT_FAILED, result
    assert line.startswith("relay: cannot write the link name to this launch command's output (")
    assert ("its kernel was ended" in line) == (mode == "controller"), line
    assert closed == [True]


def test_the_daemon_it_starts_is_its_own_relay_not_the_interpreters(tmp_path: Path) -> None:
    """A relay found on PYTHONPATH (or installed with --user) starts a daemon of that relay,
    not whichever relay the interpreter's site-packages has: ``-I`` drops PYTHONPATH, and
    the shim gives its own directory back. It gave the package's directory instead (the shim
    had moved a level down), so a user who upgraded one copy got a daemon of the other (a
    review's finding)."""
    import shutil

    import relay

    other = tmp_path / "other"
    shutil.copytree(
        Path(relay.__file__).parent, other / "relay", ignore=shutil.ignore_patterns("__pycache__")
    )
    init = other / "relay" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]*"', '__version__ = "9.9.9"', init.read_text()))
    probe = (
        "import subprocess, sys; from relay.lite import shim; "
        "sys.exit(subprocess.call([*shim.isolated_command(), '--version']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(other)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "relay 9.9.9", done
