"""supervisor.sh, run locally under each POSIX shell it may meet, over plain pipes."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.ssh.supervisor import Event, parse_line
from relay.ssh.supervisor_script import one_line, remote_command

SHELLS = [s for s in ("dash", "bash", "busybox") if shutil.which(s)]


class Sup:
    def __init__(self, shell: str) -> None:
        argv = [shell, "sh", "-c", one_line()] if shell == "busybox" else [shell, "-c", one_line()]
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


def test_hello_then_kernel_life(sup: Sup) -> None:
    hello = sup.event()
    assert hello.kind == "hello" and hello.id == "1"
    workdir = Path(hello.value.split(" ")[1])
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
    command = remote_command()
    assert "\n" not in command and command.startswith("exec /bin/sh -c '")
    assert command.count("'") == 2


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
