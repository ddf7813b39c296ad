"""Waits on events, not on the clock: ``relay stop`` waits on the daemon's lock (free once
it has shut down, its socket removed), a shim racing a daemon that is starting waits on the
start lock, and one that finds a daemon on its way out waits on that daemon's lock. None of
them sleeps in a loop: each test makes ``time.sleep`` fail."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay import cli
from relay.cli import serve as cli_serve
from relay.control import DaemonLock
from relay.lite import client, framing, locks, shim
from tests.conftest import RELAY, RelayHome, start_daemon
from tests.streams.test_control_socket import left_running, stop_autostarted


def no_sleeping(*_: object) -> None:
    raise AssertionError("time.sleep: a wait polled instead of waiting on an event")


@pytest.fixture
def relay_env(home: RelayHome, monkeypatch: pytest.MonkeyPatch) -> RelayHome:
    """The test process runs relay's commands as a front end's shell would (home.env)."""
    home.config.write_text("[daemon]\nallow_adhoc_hosts = false\n")
    for name, value in home.env.items():
        monkeypatch.setenv(name, value)
    return home


def blocked_on(path: Path) -> bool:
    """Whether some process waits for a flock on ``path`` (Linux's /proc/locks marks a
    blocked request with ``->``)."""
    inode = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: -> FLOCK  ADVISORY  WRITE 4242 fe:00:2147425 0 EOF": pid, then device:inode
        if len(fields) > 6 and fields[1] == "->" and fields[6].rsplit(":", 1)[-1] == str(inode):
            return True
    return False


def until_blocked_on(path: Path, timeout_s: float = 30.0) -> None:
    """Bounded: until someone is blocked on ``path``'s lock (time.sleep may be patched)."""
    deadline = time.monotonic() + timeout_s
    tick = threading.Event()
    while not blocked_on(path):
        assert time.monotonic() < deadline, f"nobody waited on {path}"
        tick.wait(0.01)


@contextlib.contextmanager
def relay_serve(home: RelayHome, *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [RELAY, "serve", *args],
        env=home.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)
        assert proc.stderr is not None
        proc.stderr.close()


def ready_daemon(home: RelayHome) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``relay serve`` in the background, as an autostarting shim starts it; entered once
    it has said ``ready``."""
    read_fd, write_fd = os.pipe()

    @contextlib.contextmanager
    def run() -> Iterator[subprocess.Popen[bytes]]:
        try:
            proc = subprocess.Popen(
                [RELAY, "serve", "--ready-fd", str(write_fd)],
                env=home.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)
        try:
            with os.fdopen(read_fd) as ready:
                assert ready.readline() == "ready\n"
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(30)

    return run()


def test_relay_stop_returns_once_the_daemon_has_shut_down(
    relay_env: RelayHome, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """And not before: once it returns, the daemon's socket is gone and its lock free."""
    home = relay_env
    lock = home.socket.with_name("relay.sock.lock")
    with ready_daemon(home) as proc:
        with monkeypatch.context() as patch:  # (Popen.wait itself polls)
            patch.setattr(time, "sleep", no_sleeping)
            assert cli.main(["stop"]) == 0
        assert not home.socket.exists()
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        assert proc.wait(30) == 0
    assert f"stopping the daemon (pid {proc.pid})" in capsys.readouterr().err


def test_relay_stop_gives_up_on_a_daemon_that_does_not_stop(
    relay_env: RelayHome, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon that says it stops and keeps its lock: relay stop says so, in bounded time."""
    home = relay_env
    home.socket.parent.mkdir(mode=0o700)
    held = DaemonLock(home.socket.with_name("relay.sock.lock"))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(home.socket))
    listener.listen()

    def answer_once() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(framing.encode({"event": "stopping", "pid": os.getpid()}))

    answering = threading.Thread(target=answer_once)
    answering.start()
    monkeypatch.setattr(time, "sleep", no_sleeping)
    monkeypatch.setattr(cli_serve, "STOP_WAIT_S", 0.5)
    started = time.monotonic()
    try:
        assert cli.main(["stop"]) == 1
    finally:
        answering.join(30)
        listener.close()
        held.release()
    took = time.monotonic() - started
    assert 0.5 <= took < 10
    assert "did not stop within 0.5 s" in capsys.readouterr().err


async def test_a_shim_racing_a_starting_daemon_connects_once_it_is_up(
    relay_env: RelayHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon being started holds the start lock until it listens: a shim that found no
    daemon waits on that lock, then connects to it (and starts none of its own)."""
    home = relay_env
    tried = threading.Event()
    attempts: list[str] = []
    real_connect = client.connect  # what the shim calls (it imports it from client)

    def connect(path: str) -> object:
        attempts.append(path)
        tried.set()
        return real_connect(path)

    monkeypatch.setattr(shim, "connect", connect)
    monkeypatch.setattr(time, "sleep", no_sleeping)
    starting = locks.StartLock(str(home.socket))
    starting.acquire()
    try:
        connecting = asyncio.ensure_future(
            asyncio.to_thread(shim.daemon_socket, str(home.socket), True)
        )
        await asyncio.wait_for(asyncio.to_thread(tried.wait), 30)
        async with start_daemon(home, write=False):
            starting.release()  # it listens
            sock = await asyncio.wait_for(connecting, 30)
            try:
                sock.sendall(framing.encode({"op": "ping"}))
                reply = framing.decode(await asyncio.to_thread(sock.recv, 4096))
            finally:
                sock.close()
    finally:
        starting.release()
    assert reply["event"] == "pong" and reply["pid"] == os.getpid()  # this daemon: ours
    assert len(attempts) == 2, attempts  # before the lock, and once under it
    assert not (home.socket.parent / "relay.log").exists()  # the shim started no daemon


def test_relay_serve_waits_for_a_start_in_progress(relay_env: RelayHome) -> None:
    """``relay serve`` started by hand while a shim is starting a daemon waits for that one,
    then finds it serving and says so: never two daemons racing for the socket."""
    home = relay_env
    starting = locks.StartLock(str(home.socket))
    starting.acquire()
    try:
        with relay_serve(home) as proc:
            assert proc.stderr is not None
            said, _, _ = select.select([proc.stderr], [], [], 30)
            line = proc.stderr.readline() if said else "(nothing within 30 s)"
            assert "is being started" in line and "waiting" in line, line
            with ready_daemon(home) as autostarted:  # the shim's daemon, under its start lock
                starting.release()
                assert proc.wait(30) == 0
                assert "already serving" in proc.stderr.read()
                assert autostarted.poll() is None
    finally:
        starting.release()


@left_running
def test_a_shim_finding_a_daemon_on_its_way_out_waits_for_it_then_starts_one(
    relay_env: RelayHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon that shuts down (relay stop, a signal) holds its lock but no longer listens:
    the daemon a shim starts says "busy". The shim waits for the old one to let go of its
    lock, then starts its own, and connects to it."""
    home = relay_env
    home.socket.parent.mkdir(mode=0o700)
    lock_path = home.socket.with_name("relay.sock.lock")
    leaving = DaemonLock(lock_path)  # the daemon on its way out
    said: list[str] = []
    busy = threading.Event()
    real_start = shim._start_daemon

    def start_daemon_process(path: str) -> str:
        said.append(real_start(path))
        if said[-1] == "busy":
            busy.set()
        return said[-1]

    def old_daemon_exits() -> None:
        if busy.wait(30):
            with contextlib.suppress(AssertionError):  # the test fails on its own then
                until_blocked_on(lock_path)  # the shim waits on it
        leaving.release()

    monkeypatch.setattr(shim, "_start_daemon", start_daemon_process)
    monkeypatch.setattr(time, "sleep", no_sleeping)
    exiting = threading.Thread(target=old_daemon_exits)
    exiting.start()
    try:
        sock = shim.daemon_socket(str(home.socket), autostart=True)
        try:
            sock.sendall(framing.encode({"op": "ping"}))
            reply = framing.decode(sock.recv(4096))
        finally:
            sock.close()
    finally:
        exiting.join(70)  # it lets go of the lock whatever happened
        if locks.holder(str(lock_path)) != os.getpid():
            stop_autostarted(home)  # the daemon this shim started
    assert said == ["busy", "ready"]
    assert reply["event"] == "pong" and reply["pid"] != os.getpid()


@left_running  # the shim's daemon said "busy" and is on its way out
def test_a_shim_gives_up_on_a_daemon_that_does_not_go(
    relay_env: RelayHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = relay_env
    home.socket.parent.mkdir(mode=0o700)
    held = DaemonLock(home.socket.with_name("relay.sock.lock"))
    monkeypatch.setattr(shim, "SHUTDOWN_WAIT_S", 0.5)
    monkeypatch.setattr(time, "sleep", no_sleeping)
    try:
        with pytest.raises(shim.ShimError) as caught:
            shim.daemon_socket(str(home.socket), autostart=True)
    finally:
        held.release()
    message = str(caught.value)
    assert f"pid {os.getpid()}" in message and "shutting down" in message, message


def test_wait_free_returns_once_the_lock_is_free_and_not_before(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = subprocess.Popen(
        ["flock", str(path), "sh", "-c", "echo held; exec cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    with holder:
        assert holder.stdout.readline() == "held\n"
        started = time.monotonic()
        assert not locks.wait_free(str(path), 0.3)  # held: bounded, and says so
        assert time.monotonic() - started >= 0.3

        def let_go() -> None:
            until_blocked_on(path)
            holder.stdin.close()  # type: ignore[union-attr]

        releasing = threading.Thread(target=let_go)
        releasing.start()
        assert locks.wait_free(str(path), 30)
        releasing.join(30)
        assert holder.wait(30) == 0
    assert locks.wait_free(str(tmp_path / "no such lock"), 0.1)
