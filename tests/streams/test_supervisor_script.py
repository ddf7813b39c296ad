"""supervisor.sh, run locally under each POSIX shell it may meet, over plain pipes."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.ssh.supervisor import Event, parse_line
from relay.ssh.supervisor_script import one_line, remote_command
from tests.conftest import pid_alive

SHELLS = [s for s in ("dash", "bash", "busybox") if shutil.which(s)]


TAG = "0123abcd"


class Sup:
    def __init__(self, shell: str, tag: str = TAG) -> None:
        script = [shell, "sh", "-c"] if shell == "busybox" else [shell, "-c"]
        argv = [*script, one_line(), "relay", tag]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def event(self) -> Event:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        event = parse_line(line)
        assert event is not None, line
        return event


@pytest.fixture(params=SHELLS)
def sup(request: pytest.FixtureRequest) -> Iterator[Sup]:
    s = Sup(request.param)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
    s.proc.wait()
    for pipe in (s.proc.stdin, s.proc.stdout):
        if pipe is not None:
            pipe.close()


def stale_ended(hello: Event) -> int:
    """How many stale sessions a supervisor's hello says it ended."""
    return int(hello.value.split(" ")[2])


def test_owner_of_a_connection_to_a_listener(sup: Sup) -> None:
    """``owner`` finds the connecting socket in /proc/net/tcp and reports its uid (that the
    listener's accepted end is never taken for it: tests/pure/test_peerowner.py)."""
    sup.event()
    with socket.create_server(("127.0.0.1", 0)) as server:
        listen_port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", listen_port)) as client:
            accepted, _ = server.accept()
            with accepted:
                client_port = client.getsockname()[1]
                sup.send(f"owner o1 {client_port:04X} {listen_port:04X}")
                assert sup.event() == Event("owner", "o1", str(os.getuid()))
    sup.send("owner o3 0001 0002")  # nobody connected from port 1
    assert sup.event() == Event("owner", "o3", "-")
    sup.send("owner o4 12;rm 0002")  # not hex: refused, nothing run
    assert sup.event() == Event("owner", "o4", "?")
    sup.send("ping p")
    assert sup.event() == Event("pong", "p", "")


def test_hello_then_kernel_life(sup: Sup) -> None:
    hello = sup.event()
    assert hello.kind == "hello" and hello.id == "2"
    _pid, directory, _stale, uid, check = hello.value.split(" ")
    assert (int(uid), check) == (os.getuid(), "proc")
    workdir = Path(directory)
    assert workdir.is_dir() and (workdir.stat().st_mode & 0o077) == 0
    sup.send("start k1 set -- /bin/sh -c 'echo out1; echo err1 >&2; exit 3'")
    assert sup.event().kind == "pid"
    assert [sup.event() for _ in range(3)] == [
        Event("out", "k1", "out1"),
        Event("out", "k1", "err1"),
        Event("exit", "k1", "3"),
    ]


def test_missing_kernel(sup: Sup) -> None:
    sup.event()
    sup.send("start k2 set -- /nonexistent/WolframKernel -wstp")
    assert sup.event() == Event("nokernel", "k2", "")
    sup.send("start k3 set -- no-such-kernel-on-path")
    assert sup.event() == Event("nokernel", "k3", "")


def test_environment_goes_through_stdin_not_argv(sup: Sup) -> None:
    sup.event()
    sup.send("start k4 set -- /bin/sh -c 'echo \"$RELAY_X\"'; RELAY_X='a b'\\''c'; export RELAY_X")
    assert sup.event().kind == "pid"
    assert sup.event() == Event("out", "k4", "a b'c")


def test_kill_and_end_of_input_reap_everything(sup: Sup) -> None:
    sup.event()
    sup.send("start a set -- sleep 300")
    pid_a = int(sup.event().value)
    sup.send("start b set -- sleep 300")
    pid_b = int(sup.event().value)
    sup.send("kill a TERM")
    assert sup.event() == Event("exit", "a", "143")
    sup.send("ping p1")
    assert sup.event() == Event("pong", "p1", "")
    assert sup.proc.stdin is not None
    sup.proc.stdin.close()  # the SSH session ended
    assert sup.event() == Event("exit", "b", "143")
    assert sup.proc.wait(timeout=30) == 0
    for pid in (pid_a, pid_b):
        assert subprocess.run(["ps", "-p", str(pid)], capture_output=True).returncode != 0


def test_script_is_one_line_without_single_quotes() -> None:
    command = remote_command("00ff")
    assert "\n" not in command and command.startswith("exec /bin/sh -c '")
    assert command.count("'") == 2
    assert command.endswith("' relay 00ff end")
    with pytest.raises(ValueError, match="hex"):
        remote_command("x; rm -rf ~")


@pytest.mark.parametrize(
    ("line", "event"),
    [
        ("hello 1 42 /tmp/x\n", Event("hello", "1", "42 /tmp/x")),
        ("pid k1 123\n", Event("pid", "k1", "123")),
        ("exit k1 0\n", Event("exit", "k1", "0")),
        ("out k1 some text here\n", Event("out", "k1", "some text here")),
        ("Welcome to the cluster!\n", None),
        ("pid k1 notanumber\n", None),
        ("exit k1\n", None),
        ("\n", None),
    ],
)
def test_parse_line(line: str, event: Event | None) -> None:
    assert parse_line(line) == event


def wait_gone(pid: int, timeout_s: float = 30) -> None:
    """Block until a process has exited (pidfd: an event, not a poll)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        assert ready, f"process {pid} still running after {timeout_s} s"
    finally:
        os.close(fd)


@pytest.fixture
def shell(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("shell", SHELLS, indirect=True)
def test_a_new_supervisor_ends_the_stale_ones_of_the_same_daemon(shell: str) -> None:
    tag = f"{os.getpid():x}{len(shell)}"
    old = Sup(shell, tag)
    other_daemon = Sup(shell, tag + "f")
    try:
        assert stale_ended(old.event()) == 0
        other_daemon.event()
        old.send("start k set -- sleep 300")
        kernel = int(old.event().value)
        other_daemon.send("start k set -- sleep 300")
        foreign = int(other_daemon.event().value)
        new = Sup(shell, tag)  # the daemon reconnected: the old session is stale
        hello = new.event()
        assert hello.kind == "hello" and stale_ended(hello) == 1
        assert old.event() == Event("exit", "k", "143")
        assert old.proc.wait(timeout=30) == 0
        wait_gone(kernel)
        assert pid_alive(foreign), "another daemon's kernel was touched"
        # a supervisor that died hard leaves kernels behind: the next one kills them
        new.send("start k2 set -- sleep 300")
        left = int(new.event().value)
        new.proc.kill()
        new.proc.wait()
        newest = Sup(shell, tag)
        assert stale_ended(newest.event()) == 0
        wait_gone(left)
        for s in (newest, other_daemon):
            assert s.proc.stdin is not None
            s.proc.stdin.close()
            s.proc.wait(timeout=30)
        for s in (old, other_daemon, new, newest):
            for pipe in (s.proc.stdin, s.proc.stdout):
                if pipe is not None:
                    pipe.close()
    finally:
        for s in (old, other_daemon):
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
