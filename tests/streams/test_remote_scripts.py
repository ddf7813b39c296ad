"""supervisor.sh, run locally under each POSIX shell it may meet, over plain pipes."""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.ssh.remote_scripts import BOOTSTRAP, CUT_CHATTER, one_line, remote_command
from relay.ssh.supervisor import Event, hello_words, parse_line
from tests.conftest import pid_alive
from tests.orphans import live_connection, orphaned_client
from tests.proclimit import as_user, full, spare_uid
from tests.strangers import NOBODY, needs_second_uid, shut_at_once
from tests.tmpcleaner import NO_TMPFILES, TMPFILES, age, tmp_cleaner

SHELLS = [s for s in ("dash", "bash", "busybox") if shutil.which(s)]


# this process's own (hex, as the daemon's): a supervisor started with STALE_S 0 ends every
# earlier session of its tag, and make test runs several pytest processes at once
TAG = f"{os.getpid():08x}"


class Sup:
    """supervisor.sh as relay runs it: ``relay TAG end|keep STALE_S``. With STALE_S 0 every
    earlier session of the tag counts as stale (its daemon is gone)."""

    def __init__(
        self,
        shell: str,
        tag: str = TAG,
        stale_s: int = 0,
        env: dict[str, str] | None = None,
        under: list[str] | None = None,
        text: str | None = None,
    ) -> None:
        script = [shell, "sh", "-c"] if shell == "busybox" else [shell, "-c"]
        line = one_line() if text is None else text
        argv = [*(under or []), *script, line, "relay", tag, "end", str(stale_s)]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=env,
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
            with contextlib.suppress(BrokenPipeError):  # what was written and not read
                pipe.close()


def stale_ended(hello: Event) -> int:
    """How many stale sessions a supervisor's hello says it ended."""
    return int(hello.value.split(" ")[2])


def test_owner_of_a_connection_to_a_listener(sup: Sup) -> None:
    """``owner`` finds the connecting socket in /proc/net/tcp and reports its uid (that the
    listener's accepted end is never taken for it: tests/pure/test_peerowner.py)."""
    sup.event()
    with live_connection() as (client_port, listen_port):
        sup.send(f"owner o1 {client_port:04X} {listen_port:04X}")
        assert sup.event() == Event("owner", "o1", str(os.getuid()))
    # issue 23: a client that closed at once leaves an orphaned socket (FIN_WAIT2: uid 0,
    # inode 0) while sshd (here: the server) still holds its end: nobody's, never root's
    with orphaned_client(b"x") as (client_port, listen_port):
        sup.send(f"owner o2 {client_port:04X} {listen_port:04X}")
        assert sup.event() == Event("owner", "o2", "c")
    sup.send("owner o3 0001 0002")  # nobody connected from port 1
    assert sup.event() == Event("owner", "o3", "-")
    sup.send("owner o4 12;rm 0002")  # not hex: refused, nothing run
    assert sup.event() == Event("owner", "o4", "?")
    sup.send("ping p")
    assert sup.event() == Event("pong", "p", "")


@needs_second_uid
def test_owner_names_a_stranger_that_shut_its_side_at_once(sup: Sup) -> None:
    """A second uid's connection that wrote, shut its side and holds its socket (FIN_WAIT2,
    its uid and inode in /proc/net/tcp): that uid's, so the daemon says a stranger was
    refused, not a connection it could not check ("c": the user's own kernel, as often)."""
    sup.event()
    with shut_at_once() as (client_port, port):
        sup.send(f"owner o1 {client_port:04X} {port:04X}")
        assert sup.event() == Event("owner", "o1", str(NOBODY))


def test_hello_then_kernel_life(sup: Sup) -> None:
    hello = sup.event()
    assert hello.kind == "hello" and hello.id == "4"
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


def test_which_looks_for_a_kernel_as_start_would_and_starts_nothing(
    sup: Sup, tmp_path: Path
) -> None:
    sup.event()
    marker = tmp_path / "ran"
    kernel = tmp_path / "kernel"
    kernel.write_text(f"#!/bin/sh\ntouch {marker}\n")
    kernel.chmod(0o755)
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    sup.send(f"which w1 set -- '{kernel}'")
    assert sup.event() == Event("found", "w1", "")
    sup.send("which w2 set -- sh")  # a bare name: looked for on PATH
    assert sup.event() == Event("found", "w2", "")
    sup.send("which w3 set -- /nonexistent/WolframKernel")
    assert sup.event() == Event("nokernel", "w3", "")
    sup.send(f"which w4 set -- '{plain}'")
    assert sup.event() == Event("nokernel", "w4", "")
    sup.send(f"which w5 set -- '{tmp_path}'")  # a directory is not a kernel
    assert sup.event() == Event("nokernel", "w5", "")
    sup.send("ping p")  # the next line answered: nothing else was said, nothing started
    assert sup.event() == Event("pong", "p", "")
    assert not marker.exists()


def test_a_look_for_a_kernel_holds_up_no_other_request(sup: Sup, tmp_path: Path) -> None:
    """The look (``which``) ran in the supervisor's own loop, so a kernel on a shared file
    system that hangs held every request behind it up: the owner checks that admit a
    kernel's links, pings (the connection's liveness), starts. It runs beside them now, and
    is answered as it ends."""
    sup.event()
    fifo = tmp_path / "slow"
    os.mkfifo(fifo)
    sup.send(f"which w1 read x <{fifo}; set -- /bin/true")  # as a stat() on a hung NFS
    sup.send("ping p")
    assert sup.proc.stdout is not None
    ready, _, _ = select.select([sup.proc.stdout], [], [], 30)
    assert ready, "the ping waited for the look for a kernel"
    assert sup.event() == Event("pong", "p", "")
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: the look's shell is gone
    os.write(writer, b"\n")
    os.close(writer)
    assert sup.event() == Event("found", "w1", "")


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


def test_the_command_is_the_bootstrap_and_the_script_one_line_on_stdin() -> None:
    remote = remote_command("00ff")
    assert remote.command == f"{BOOTSTRAP} 00ff end 60"
    assert remote.preamble == (CUT_CHATTER + one_line() + "\n").encode()
    assert remote.preamble.count(b"\n") == 1
    assert remote_command("00ff", end_stale=False, stale_after_s=35).command.endswith(" keep 35")
    with pytest.raises(ValueError, match="hex"):
        remote_command("x; rm -rf ~")


@pytest.mark.parametrize(
    ("line", "event"),
    [
        ("hello 1 42 /tmp/x\n", Event("hello", "1", "42 /tmp/x")),
        ("pid k1 123\n", Event("pid", "k1", "123")),
        ("exit k1 0\n", Event("exit", "k1", "0")),
        ("exit k1 137 1733315462.5\n", Event("exit", "k1", "137 1733315462.5")),
        ("exit k1 137 1733315462.5 9\n", Event("exit", "k1", "137 1733315462.5 9")),  # the agent's
        ("out k1 some text here\n", Event("out", "k1", "some text here")),
        ("Welcome to the cluster!\n", None),
        ("pid k1 notanumber\n", None),
        ("exit k1\n", None),
        ("exit k1 killed 1733315462.5\n", None),
        ("\n", None),
    ],
)
def test_parse_line(line: str, event: Event | None) -> None:
    assert parse_line(line) == event


@pytest.mark.parametrize("shell", SHELLS)
def test_a_hello_from_a_tmpdir_with_spaces_and_backslashes(shell: str, tmp_path: Path) -> None:
    """Its DIR is in TMPDIR, whose name may have spaces (counted from the start, a space there
    made UID the count of stale sessions and CHECK the uid: every launch on the host was
    refused as on one that cannot tell who connects) and backslashes (dash's echo made a
    newline of "\\n", and the hello's line was cut in two; a review's findings)."""
    tmpdir = tmp_path / "a b\\n 'q' Jü"
    tmpdir.mkdir()
    s = Sup(shell, env={**os.environ, "TMPDIR": str(tmpdir)})
    try:
        hello = s.event()
        assert hello.kind == "hello", hello
        pid, ended, uid, check = hello_words(hello.value)
        assert (int(pid), ended, uid) == (s.proc.pid, "0", str(os.getuid())), hello
        assert check == ("proc" if os.access("/proc/net/tcp", os.R_OK) else "none"), hello
        assert f" {tmpdir}/relay-{TAG}." in hello.value, hello
    finally:
        s.proc.kill()
        s.proc.communicate(timeout=30)


def test_hello_words_from_both_ends() -> None:
    assert hello_words("42 /tmp/a b/relay-ab.XXXXXX 3 1000 proc") == ("42", "3", "1000", "proc")
    assert hello_words("42 /tmp/x 0 1000 none") == ("42", "0", "1000", "none")
    assert hello_words("42 /tmp/x") == ("42", "", "", "")


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


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> dict[str, str]:
    """A TMPDIR of the test's own, so planted directories stay out of /tmp."""
    return dict(os.environ, TMPDIR=str(tmp_path))


@pytest.mark.parametrize("shell", SHELLS)
def test_a_live_session_of_the_same_tag_is_left_alone(
    shell: str, tmpdir_env: dict[str, str]
) -> None:
    """Two front ends whose tags collide (same machine name, uid and socket path): the one
    pinged recently is alive, so a new supervisor must not end it or its kernels."""
    first = Sup(shell, stale_s=3600, env=tmpdir_env)
    try:
        first.event()
        first.send("start k set -- sleep 300")
        kernel = int(first.event().value)
        first.send("ping p")
        assert first.event() == Event("pong", "p", "")
        second = Sup(shell, stale_s=3600, env=tmpdir_env)
        try:
            assert stale_ended(second.event()) == 0
            assert pid_alive(kernel) and first.proc.poll() is None
        finally:
            stop(second)
    finally:
        stop(first)
    wait_gone(kernel)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_ping_never_leaves_the_alive_record_empty_for_a_new_supervisor_to_read(
    shell: str, tmpdir_env: dict[str, str]
) -> None:
    """A new supervisor of the same tag reads each session's ``alive`` to tell a live one
    from a stale one, where it finds its ``supervisor`` record; an empty read counts as
    never pinged, and it ends that session and its kernels. ``alive`` was rewritten in place
    at each ping (emptied, then written), and made after the record at the start: a look
    between the two ended a live session (a review's reproduction, the write widened). Now
    it is made first, and each time written aside and renamed over, so a look sees the old
    time or the new one. Looked at here as the new supervisor looks, from before the
    session starts and across 200 pings."""
    sessions = Path(tmpdir_env["TMPDIR"])
    seen: list[str] = []
    stop_looking = threading.Event()

    def look() -> None:
        while not stop_looking.is_set() and len(seen) < 2_000_000:
            for o in sessions.glob(f"relay-{TAG}.*"):
                if (o / "supervisor").exists():
                    try:
                        seen.append((o / "alive").read_text().strip())
                    except FileNotFoundError:
                        seen.append("")

    looker = threading.Thread(target=look)
    looker.start()
    first = None
    try:
        first = Sup(shell, stale_s=3600, env=tmpdir_env)
        first.event()
        for n in range(200):
            first.send(f"ping p{n}")
            assert first.event() == Event("pong", f"p{n}", "")
    finally:
        stop_looking.set()  # before the session ends: its directory's removal is no record
        looker.join()
        if first is not None:
            stop(first)
    assert seen and all(s.isdigit() for s in seen), sorted(set(seen))[:5]


def stop(s: Sup) -> None:
    assert s.proc.stdin is not None and s.proc.stdout is not None
    s.proc.stdin.close()
    s.proc.wait(timeout=30)
    s.proc.stdout.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="planting as another user needs root")
@pytest.mark.parametrize("shell", SHELLS)
def test_planted_directories_symlinks_and_recycled_pids_are_left_alone(
    shell: str, tmpdir_env: dict[str, str], tmp_path: Path
) -> None:
    """Stale records pointing at processes that are not ours: a symlink planted under the
    tag's name, a directory of another user, and our own stale record whose pids have been
    recycled by unrelated processes (same pid, another start time). None is signalled; our
    own stale directory is removed."""
    victim = subprocess.Popen(["sleep", "300"])
    try:
        v = victim.pid
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "supervisor").write_text(f"{v} x - -\n")
        (elsewhere / "k.pid").write_text(f"{v} x\n")
        (tmp_path / f"relay-{TAG}.symlnk").symlink_to(elsewhere)
        foreign = tmp_path / f"relay-{TAG}.foreign"
        foreign.mkdir()
        (foreign / "supervisor").write_text(f"{v} x - -\n")
        os.chown(foreign, 65534, 65534)
        ours = tmp_path / f"relay-{TAG}.recycl"
        ours.mkdir()
        (ours / "supervisor").write_text(f"{v} SatJan0100:00:001999 - -\n")
        (ours / "k.pid").write_text(f"{v} SatJan0100:00:001999\n")
        s = Sup(shell, env=tmpdir_env)
        try:
            assert stale_ended(s.event()) == 0
            assert victim.poll() is None, "a process that was not ours was signalled"
            assert not ours.exists(), "our own stale record was left behind"
            assert foreign.exists() and elsewhere.exists()
        finally:
            stop(s)
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_kernels_log_that_cannot_be_made_is_said_not_left_unanswered(
    shell: str, tmp_path: Path
) -> None:
    """The session's directory is gone (a /tmp cleaner took it) when a kernel starts, so its
    log cannot be made. That start was said (``norecord``) until the log was made first with
    `:`, a special built-in: its failed redirection ends a POSIX sh's subshell (dash,
    busybox), and the start said nothing, the launch waiting out launch_timeout_s (a
    review's reproduction)."""
    s = Sup(shell, env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        hello = s.event()
        shutil.rmtree(hello.value.split(" ")[1])
        s.send("start k set -- /bin/true")
        assert s.proc.stdout is not None
        said = select.select([s.proc.stdout], [], [], 20)[0]
        assert said, "nothing said of the start within 20 s"
        event = s.event()
        assert event == Event("norecord", "k", ""), event
    finally:
        stop(s)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
@pytest.mark.parametrize("shell", SHELLS)
def test_a_full_tmpdir_leaves_no_kernel_behind(shell: str, tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        s = Sup(shell, env=dict(os.environ, TMPDIR=str(full)))
        try:
            s.event()
            filler = full / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
            duration = f"{3000 + os.getpid() % 1000}.{secrets.randbelow(10**6)}"  # this run's own
            s.send(f"start k set -- sleep {duration}")
            event = s.event()
            assert event == Event("norecord", "k", ""), event
            gone = subprocess.run(
                ["pgrep", "-f", f"^sleep {duration}$"], capture_output=True, text=True
            )
            assert not gone.stdout.strip(), "the kernel whose pid could not be recorded lives on"
        finally:
            stop(s)
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)


@pytest.mark.parametrize("shell", SHELLS)
def test_end_of_input_ends_kernels_known_only_in_memory(shell: str, tmp_path: Path) -> None:
    """A kernel whose pid file vanished (a full or cleaned TMPDIR) is still ended at end
    of input, and kill requests still reach it: the supervisor keeps its kernels in memory."""
    s = Sup(shell, env=dict(os.environ, TMPDIR=str(tmp_path)))
    s.event()
    s.send("start k set -- sleep 300")
    kernel = int(s.event().value)
    s.send("start k2 set -- sleep 300")
    kernel2 = int(s.event().value)
    for pidfile in tmp_path.glob(f"relay-{TAG}.*/*.pid"):
        pidfile.unlink()
    s.send("kill k2 KILL")
    assert s.event() == Event("exit", "k2", "137")
    stop(s)
    wait_gone(kernel)
    assert not pid_alive(kernel2)


@pytest.mark.skipif(TMPFILES is None, reason=NO_TMPFILES)
@pytest.mark.parametrize("shell", SHELLS)
def test_a_tmp_cleaner_leaves_a_long_sessions_records_to_the_next_supervisor(
    shell: str, tmp_path: Path
) -> None:
    """Weeks into a computation a session's records are old to a cleaner of /tmp: its
    "supervisor" and its kernels' pid files are written once. Taken, a session whose
    connection died silently would be invisible to the next supervisor, its kernels left
    running. The daemon's ping sets their times to now, so the cleaner leaves them and the
    next supervisor ends the stale session and its kernel."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    first = Sup(shell, env=env)
    try:
        directory = Path(first.event().value.split(" ")[1])
        first.send("start k set -- sleep 300")
        kernel = int(first.event().value)
        # the kernel's log is opened by its own command's redirection, in its process, which
        # may not have got that far when its pid is said (bounded: no event to wait on)
        _exists(directory / "k.log", "the kernel's log was not made")
        records = sorted(p.name for p in directory.iterdir())
        assert records == ["alive", "k.log", "k.pid", "supervisor"], records
        age(directory)
        first.send("ping p")
        assert first.event() == Event("pong", "p", "")
        said = tmp_cleaner(tmpdir, tmp_path)
        assert "Removing" not in said, said
        assert sorted(p.name for p in directory.iterdir()) == records
        second = Sup(shell, env=env)  # STALE_S 0: the first session counts as stale
        try:
            assert stale_ended(second.event()) == 1
            wait_gone(kernel)
        finally:
            stop(second)
    finally:
        stop(first)


def _spawning(sup: Sup, tmp_path: Path, kid: str, child: str) -> tuple[int, int]:
    """Kernel ``kid``: a shell that starts ``child`` (sh words) in the background and waits;
    its pid and the child's."""
    record = tmp_path / f"{kid}.child"
    sup.send(f"start {kid} set -- /bin/sh -c '{child} & echo $! >{record}; wait'")
    kernel = int(sup.event().value)
    _written(record, "the kernel's child did not start")
    return kernel, int(record.read_text())


def _exists(path: Path, why: str) -> None:
    """Until ``path`` exists (bounded: the process that makes it has no event to wait on)."""
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, why
        time.sleep(0.02)


def _written(path: Path, why: str) -> None:
    """Until a process of the test's writes ``path`` (bounded: it has no event to wait on)."""
    deadline = time.monotonic() + 30
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, why
        time.sleep(0.02)


def test_a_kernels_children_end_with_it(sup: Sup, tmp_path: Path) -> None:
    """What a kernel starts (subkernels, StartProcess) ends with it: each kernel runs in a
    process group of its own, and relay's TERM goes to the group; at the end of input, a
    child that ignores SIGTERM goes with the SIGKILL that follows its kernel's exit."""
    sup.event()
    kernel, child = _spawning(sup, tmp_path, "a", "sleep 300")
    assert os.getpgid(kernel) == kernel and os.getpgid(child) == kernel
    sup.send("kill a TERM")
    assert sup.event() == Event("exit", "a", "143")
    wait_gone(child)
    ready = tmp_path / "ready"  # the child's trap is set: before it, SIGTERM would end it
    kernel, stubborn = _spawning(
        sup, tmp_path, "c", f'sh -c "trap \\"\\" TERM; echo set >{ready}; sleep 300"'
    )
    _written(ready, "the child did not set its trap")
    assert sup.proc.stdin is not None
    sup.proc.stdin.close()  # the SSH session ended
    assert sup.event() == Event("exit", "c", "143")
    assert sup.proc.wait(timeout=30) == 0
    wait_gone(stubborn)


@pytest.mark.skipif(not shutil.which("setsid"), reason="no setsid: kernels are not grouped")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("shell", SHELLS)
def test_a_kill_before_the_kernels_group_is_made_still_ends_it(shell: str, tmp_path: Path) -> None:
    """Between the fork and setsid's own setsid() the kernel's group is not there yet; a
    kill sent then (the front end quits at once, on a loaded host) reaches its pid. A setsid
    that waits a second before the real one stands for that moment."""
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "setsid").write_text(f'#!/bin/sh\nsleep 1\nexec {shutil.which("setsid")} "$@"\n')
    (slow / "setsid").chmod(0o755)
    s = Sup(shell, env=dict(os.environ, PATH=f"{slow}:{os.environ['PATH']}", TMPDIR=str(tmp_path)))
    s.event()
    s.send("start k set -- sleep 300")
    assert s.event().kind == "pid"
    s.send("kill k KILL")
    assert s.event() == Event("exit", "k", "137")
    stop(s)


def _take_pid(pid: int) -> subprocess.Popen[bytes] | None:
    """A process of ours with ``pid`` (free): the next pid the kernel gives is set to it
    (``ns_last_pid``, root only). Another process may fork in between: tried a few times."""
    for _ in range(50):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


# a host where no process's start time can be read: /proc hidden (ps reads it too)
NO_START_TIMES = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs none /proc && exec "$@"', "-"]


@pytest.mark.skipif(os.geteuid() != 0, reason="choosing the next pid needs root")
@pytest.mark.alone  # beside other tests' forks, the pid was taken first (a skip)
@pytest.mark.parametrize("start_times", [True, False], ids=["start-times", "no-start-times"])
@pytest.mark.parametrize("shell", SHELLS)
def test_a_process_given_an_ended_kernels_watcher_pid_is_not_signalled(
    shell: str, start_times: bool
) -> None:
    """The supervisor signalled every watcher it ever started when its session ended (TERM,
    then USR1, whose default ends a process), and a kernel's on a kill line, by pid alone:
    once it has reaped a watcher, its pid is free, and on a busy login node another process
    of the user's gets it. A review ended an unrelated `sleep` that way with `relay stop`.
    Where the start time can be read, a pid without it is not the watcher; where it cannot,
    a ping forgets the watchers that are gone, so that only a pid taken between a watcher's
    end and the next ping could be met (a review of the first fix found it, and that the
    list of watchers grew with every kernel the session ever started)."""
    s = Sup(shell, under=None if start_times else NO_START_TIMES)
    s.event()
    # the kernel says its parent, the watcher (setsid does not fork for a background job)
    s.send("start a set -- sh -c 'echo $PPID'")
    events = [s.event() for _ in range(3)]
    assert [e.kind for e in events] == ["pid", "out", "exit"], events
    watcher = int(events[1].value)
    wait_gone(watcher)  # exited; the shell reaps it as it runs a ping's commands
    for n in range(100):
        s.send(f"ping r{n}")
        assert s.event() == Event("pong", f"r{n}", "")
        if not Path(f"/proc/{watcher}").exists():
            break
    else:
        raise AssertionError(f"the supervisor never reaped its watcher {watcher}")
    s.send("ping forgotten")  # reaped by the last ping at the latest: forgotten by this one
    assert s.event() == Event("pong", "forgotten", "")
    other = _take_pid(watcher)
    if other is None:
        stop(s)
        pytest.skip("the machine kept taking the pid first")
    try:
        s.send("kill a KILL")  # a kill line for the ended kernel: to its watcher, as USR1
        s.send("kill a TERM")
        s.send("ping p2")
        assert s.event() == Event("pong", "p2", "")
        stop(s)  # end of input: every watcher still running is signalled
        assert other.poll() is None, f"the process given pid {watcher} was signalled"
    finally:
        other.kill()
        other.wait()


DEFAULT_SIGNALS = (
    subprocess.run(["env", "--default-signal=INT", "true"], capture_output=True).returncode == 0
)


@pytest.mark.skipif(
    not DEFAULT_SIGNALS, reason="this env cannot set signals back (coreutils < 8.31)"
)
def test_kernels_take_interrupts_as_any_process_does(sup: Sup) -> None:
    """A background job of a shell without job control starts with SIGINT and SIGQUIT
    ignored, and the kernel kept that across exec: neither it nor what it ran could be
    interrupted (a review found SigIgn 0x6 under the supervisor, 0 under the agent)."""
    sup.event()
    sup.send("start a set -- sh -c 'grep SigIgn /proc/$$/status'")
    events = [sup.event() for _ in range(3)]
    assert [e.kind for e in events] == ["pid", "out", "exit"], events
    ignored = int(events[1].value.split()[1], 16)
    assert not ignored & (1 << (2 - 1) | 1 << (3 - 1)), hex(ignored)  # SIGINT 2, SIGQUIT 3


@pytest.mark.skipif(not shutil.which("bash"), reason="bash is the shell that reaps at once")
def test_a_watcher_gone_before_its_start_time_is_read_is_recorded_as_nothing() -> None:
    """bash reaps a child as it ends: the watcher of a start that found no kernel had often
    gone before the supervisor read its start time, and with none recorded it was signalled
    by pid alone at the session's end, whoever had the pid by then (a review of the first
    fix found it in 3 starts of 10). Where the host shows start times (it shows the
    supervisor's), a watcher it shows none for is gone, and nothing is recorded for it: the
    shell's trace (-x) of each assignment to w_ID never has a pid without a start time."""
    recorded = []
    for trial in range(20):
        done = subprocess.run(
            ["bash", "-x", "-c", one_line(), "relay", f"{TAG}{trial:04x}", "keep", "0"],
            input="start a set -- /nonexistent/kernel\nping p\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "nokernel a" in done.stdout, done.stdout
        last = [line for line in done.stderr.splitlines() if line.lstrip("+ ").startswith("w_a=")]
        recorded.append(last[-1].split("w_a=", 1)[1].strip("'") if last else "")
    pid_only = [r for r in recorded if r and len(r.split()) != 2]
    assert not pid_only, recorded


@pytest.mark.skipif(
    not DEFAULT_SIGNALS, reason="this env cannot set signals back (coreutils < 8.31)"
)
def test_a_kill_line_for_an_interrupt_reaches_the_kernel(sup: Sup, tmp_path: Path) -> None:
    """``kill ID INT``: a background subshell of dash or busybox cannot trap SIGINT (it is
    ignored there for good), so the watcher passed nothing on; it takes SIGUSR2 for it."""
    ready = tmp_path / "ready"
    sup.event()
    sup.send(
        f"start a set -- sh -c 'trap \"echo got INT; exit 7\" INT; : >{ready}; sleep 30 & wait'"
    )
    assert sup.event().kind == "pid"
    deadline = time.monotonic() + 30  # its trap set: an INT before it would end it otherwise
    while not ready.exists():
        assert time.monotonic() < deadline, "the kernel never started"
        time.sleep(0.01)
    sup.send("kill a INT")
    assert sup.event() == Event("out", "a", "got INT")
    assert sup.event() == Event("exit", "a", "7")


def test_a_kernel_whose_path_has_an_equals_sign_starts(sup: Sup, tmp_path: Path) -> None:
    """env takes a first word with "=" for a variable: the kernel is started without it."""
    kernel = tmp_path / "k=1" / "kernel"
    kernel.parent.mkdir()
    kernel.write_text('#!/bin/sh\necho "ran $1"\n')
    kernel.chmod(0o755)
    sup.event()
    sup.send(f"start a set -- '{kernel}' -mathlink")
    assert sup.event().kind == "pid"
    assert sup.event() == Event("out", "a", "ran -mathlink")
    assert sup.event() == Event("exit", "a", "0")


def altered(shell: str, script: str) -> subprocess.Popen[str]:
    """supervisor.sh altered by a test (``script``: a signal or a pause put somewhere), run
    under ``shell`` as relay runs it, keeping earlier sessions."""
    argv = [shell, "sh", "-c"] if shell == "busybox" else [shell, "-c"]
    return subprocess.Popen(
        [*argv, script, "relay", "0123abce", "keep", "60"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )


@pytest.mark.parametrize("shell", SHELLS)
def test_a_signal_in_the_middle_of_a_start_still_ends_that_kernel(shell: str) -> None:
    """sshd's SIGHUP (the connection dropped) between a watcher's fork and its listing ran
    the clean-up without it: the kernel was never signalled and the clean-up's wait hung on
    it until it ended by itself (a review found it by putting a signal there, as here). The
    signal now waits for the start to finish listing its kernel."""
    script = one_line().replace(") & w=", ") & kill -HUP $$; w=", 1)
    assert "kill -HUP $$" in script
    proc = altered(shell, script)
    try:
        out, _ = proc.communicate("start k1 set -- sleep 300\n", timeout=30)
        hung = False
    except subprocess.TimeoutExpired:  # the clean-up waits on a kernel it never signalled
        proc.kill()
        out, _ = proc.communicate()
        hung = True
    events = [parse_line(line) for line in out.splitlines()]
    pid = next((int(e.value) for e in events if e is not None and e.kind == "pid"), None)
    if hung and pid is not None:
        os.kill(pid, signal.SIGKILL)
    assert not hung, "the clean-up hung on the kernel the signal came in the start of"
    # SIGTERM'd by the clean-up; or not started, the clean-up's SIGTERM having reached its
    # watcher before the fork (one that comes to a kernel forked but not yet run, which has
    # its watcher's traps until it lets go of them, is marked: not left to the SIGKILL)
    assert Event("exit", "k1", "143") in events, out
    assert pid is not None or Event("exit", "k1", "143") in events, out
    assert pid is None or not pid_alive(pid)


@pytest.mark.parametrize("shell", SHELLS)
def test_the_end_of_input_just_after_a_start_waits_for_its_watchers_traps(shell: str) -> None:
    """The clean-up (here the end of input, as when sshd closes the session) sent its TERM
    to a watcher that had not set its traps yet: the watcher died of it, and the start was
    never answered (or, later in the watcher, its kernel was left running unwatched). It
    now waits until the watcher's pid file says its traps are set. The watcher is held up
    here by a second, as a loaded host holds a new process up."""
    script = one_line().replace("start) b=1; (", "start) b=1; ( sleep 1;", 1)
    assert "( sleep 1;" in script
    proc = altered(shell, script)
    out, _ = proc.communicate("start k1 set -- sleep 300\n", timeout=30)
    events = [parse_line(line) for line in out.splitlines()]
    pid = next((int(e.value) for e in events if e is not None and e.kind == "pid"), None)
    assert pid is not None, out
    assert Event("exit", "k1", "143") in events, out
    assert not pid_alive(pid)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_kill_before_the_kernels_exec_ends_it(shell: str) -> None:
    """A kernel's process is its watcher's subshell until its exec: a TERM then (a launch
    given up at once) ends it there, with the status a TERM gives, and nothing else is
    said (bash runs an EXIT trap in a subshell a signal ends: not the watcher's nofork).
    Its exec is held up here by a second, as a loaded host or a slow file system holds it."""
    script = one_line().replace('umask "$m"; exec', 'umask "$m"; sleep 1; exec')
    assert script.count("sleep 1; exec") == 2
    proc = altered(shell, script)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        # hello read before the start is sent: read with it, the pid line would wait in the
        # reader's buffer, where select cannot see it (under load, a few runs in a hundred)
        hello = parse_line(proc.stdout.readline())
        assert hello is not None and hello.kind == "hello", hello
        said: list[Event] = [hello]
        proc.stdin.write("start k1 set -- sleep 300\n")
        proc.stdin.flush()
        while said[-1].kind != "pid":
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, said
            event = parse_line(proc.stdout.readline())
            assert event is not None, said
            said.append(event)
        pid = int(said[-1].value)
        proc.stdin.write("kill k1 TERM\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 3)  # within the held-up second
        assert ready, "the kernel was not ended by its TERM"
        assert parse_line(proc.stdout.readline()) == Event("exit", "k1", "143")
        assert not pid_alive(pid)
    finally:
        out, _ = proc.communicate(timeout=30)  # the end of input: the clean-up
    assert "nofork" not in out, out


@pytest.mark.parametrize("setsid", [True, False], ids=["setsid", "no-setsid"])
@pytest.mark.parametrize("shell", SHELLS)
def test_a_kill_the_kernels_process_takes_with_its_watchers_traps_still_ends_it(
    shell: str, setsid: bool, tmp_path: Path
) -> None:
    """A kernel's process is forked with its watcher's traps and lets go of them in its
    shell's own code, before it runs anything of the script; a TERM that reaches it before
    then is caught and dropped. On a loaded host a fork's child may not run for tens of ms:
    the watcher said the pid, got the kill line's TERM and passed it on, all before its
    kernel had run at all, and the kernel ran on (a review's finding: under load, a few
    kills in a thousand, dash and busybox alike; seen with perf's signal tracepoints). That
    window is held open here, in the script: the kernel's process catches the TERM with a
    trap that does nothing, as the inherited one does, and only then goes on to its exec.
    Where setsid is missing (macOS) no group says the kernel has let go of the traps."""
    hold = tmp_path / "held"
    os.mkfifo(hold)
    # the trap ends the wait (a signal then) or what it waits for (one before the wait)
    caught = f"sleep 300 & trap 'kill $!' TERM HUP; echo >{hold}; wait $!; trap - TERM HUP;"
    script = one_line()
    assert script.count("then ( ") == 1 and script.count("else ( ") == 1
    script = script.replace("then ( ", "then ( " + caught, 1).replace(
        "else ( ", "else ( " + caught, 1
    )
    if not setsid:
        assert script.count("then g=-;") == 1
        script = script.replace("then g=-;", "then g=;", 1)
    fifo = os.open(hold, os.O_RDONLY | os.O_NONBLOCK)
    proc = altered(shell, script)
    assert proc.stdin is not None and proc.stdout is not None
    pid = None
    try:
        hello = parse_line(proc.stdout.readline())
        assert hello is not None and hello.kind == "hello", hello
        proc.stdin.write("start k1 set -- sleep 300\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the start was not answered"
        said = parse_line(proc.stdout.readline())
        assert said is not None and said.kind == "pid", said
        pid = int(said.value)
        held, _, _ = select.select([fifo], [], [], 30)  # its trap is set: the window is open
        assert held and os.read(fifo, 1) == b"\n"
        proc.stdin.write("kill k1 TERM\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the TERM the kernel's process took with its watcher's traps was lost"
        assert parse_line(proc.stdout.readline()) == Event("exit", "k1", "143")
        assert not pid_alive(pid)
    finally:
        os.close(fifo)
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    assert "nofork" not in out, out


@pytest.mark.parametrize("shell", SHELLS)
def test_a_kill_that_comes_as_its_kernel_is_reaped_leaves_no_mark(
    shell: str, tmp_path: Path
) -> None:
    """A kill line for a kernel that has just ended (it quit as the user closed it) reaches
    its watcher after it removed the kernel's files: passed on to a kernel (and group)
    that is gone, the TERM was marked ($d/ID.TERM) and the mark left in the session's
    directory until the session ended. The watcher is held just after its removal here."""
    held, go = tmp_path / "held", tmp_path / "go"
    os.mkfifo(held)
    os.mkfifo(go)
    removal = 'rm -f "$d/$id.pid" "$d/$id.TERM" "$d/$id.HUP";'
    script = one_line()
    assert script.count(removal) == 1
    script = script.replace(removal, f"{removal} echo >{held}; head -n 1 {go} >/dev/null;", 1)
    fifo = os.open(held, os.O_RDONLY | os.O_NONBLOCK)
    proc = altered(shell, script)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        hello = parse_line(proc.stdout.readline())
        assert hello is not None and hello.kind == "hello", hello
        directory = Path(hello.value.split(" ")[1])
        proc.stdin.write("start k1 set -- true\n")
        proc.stdin.flush()
        said = parse_line(proc.stdout.readline())
        assert said is not None and said.kind == "pid", said
        ready, _, _ = select.select([fifo], [], [], 30)  # the kernel reaped, its files gone
        assert ready and os.read(fifo, 1) == b"\n"
        proc.stdin.write("kill k1 TERM\nping p1\n")
        proc.stdin.flush()
        assert parse_line(proc.stdout.readline()) == Event("pong", "p1", "")  # TERM sent
        with open(go, "w") as release:
            release.write("\n")
        assert parse_line(proc.stdout.readline()) == Event("exit", "k1", "0")
        assert sorted(p.name for p in directory.glob("k1*")) == []
    finally:
        os.close(fifo)
        proc.communicate(timeout=30)


# bash retries a fork that fails for about 15 s (1 + 2 + 4 + 8) before it gives up
NOFORK_S = 40.0
NPROC = 24  # the limited user's processes: the supervisor's start needs a few at a time


def said_within(s: Sup, timeout_s: float) -> Event:
    """The next line, read within ``timeout_s``. Read by a thread, not after a select() on
    the pipe: two lines that came in one read leave the second in the reader's buffer,
    where select() does not see it, and the wait ran out with the line there (a flake hunt's
    finding, under load). A thread left reading after a timeout ends with the script."""
    said: queue.Queue[Event | BaseException] = queue.Queue()

    def read() -> None:
        try:
            said.put(s.event())
        except BaseException as exc:  # handed to the test's thread
            said.put(exc)

    threading.Thread(target=read, daemon=True, name="said-within").start()
    try:
        got = said.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"nothing said within {timeout_s:g} s") from None
    if isinstance(got, BaseException):
        raise got
    return got


@contextlib.contextmanager
def limited_sup(shell: str) -> Iterator[tuple[Sup, int]]:
    """supervisor.sh as a user of its own (``tests.proclimit``) under ``NPROC`` processes,
    its TMPDIR that user's: the supervisor and that uid."""
    uid = spare_uid()
    tmpdir = Path(tempfile.mkdtemp(prefix="relay-nproc-", dir="/tmp"))
    os.chown(tmpdir, uid, uid)
    s = Sup(shell, env=dict(os.environ, TMPDIR=str(tmpdir)), under=as_user(uid, uid, NPROC))
    try:
        assert s.event().kind == "hello"
        yield s, uid
    finally:
        if s.proc.poll() is None:
            stop(s)
        else:
            s.proc.wait()
            assert s.proc.stdout is not None and s.proc.stdin is not None
            s.proc.stdout.close()
            with contextlib.suppress(BrokenPipeError):
                s.proc.stdin.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="running as a user of its own needs root")
@pytest.mark.parametrize("shell", SHELLS)
def test_a_start_the_user_has_no_process_for_is_said_at_once(shell: str) -> None:
    """The user's process limit (ulimit -u) reached, the supervisor cannot fork a kernel's
    watcher: the shell (dash, busybox, bash alike) exits with "Cannot fork" on stderr. It
    said nothing, its running kernel's watcher held its output open, and the launch waited
    out launch_timeout_s. Now the start is answered ``nofork`` on its way out."""
    with limited_sup(shell) as (s, uid):
        s.send("start k0 set -- sleep 300")  # a kernel that runs throughout
        first = s.event()
        assert first.kind == "pid", first
        try:
            with full(uid, uid, NPROC):
                s.send("start k1 set -- /bin/true")
                assert said_within(s, NOFORK_S) == Event("nofork", "k1", "")
        finally:
            os.kill(int(first.value), signal.SIGKILL)
        assert said_within(s, NOFORK_S) == Event("exit", "k0", "137")  # its watcher's
        s.proc.wait(NOFORK_S)  # the shell has ended (bash waits for its watcher first)


@pytest.mark.skipif(os.geteuid() != 0, reason="running as a user of its own needs root")
@pytest.mark.parametrize("shell", SHELLS)
def test_a_which_the_user_has_no_process_for_is_not_a_kernel_missing(shell: str) -> None:
    with limited_sup(shell) as (s, uid), full(uid, uid, NPROC):
        s.send("which w1 set -- /bin/true")
        assert said_within(s, NOFORK_S) == Event("nofork", "w1", "")


@pytest.mark.skipif(os.geteuid() != 0, reason="running as a user of its own needs root")
@pytest.mark.parametrize("shell", SHELLS)
def test_a_kernel_its_watcher_has_no_process_for_is_said_at_once(shell: str) -> None:
    """One process left to the user: the watcher takes it, and the kernel's own fork fails
    (the supervisor's look at the watcher's start time too, which ends it: the watcher
    answers for the start). The watcher ended with "Cannot fork" on stderr and nothing
    said; now it says ``nofork``."""
    with limited_sup(shell) as (s, uid), full(uid, uid, NPROC, free=1):
        s.send("start k1 set -- /bin/true")
        assert said_within(s, NOFORK_S) == Event("nofork", "k1", "")


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("shell", SHELLS)
def test_a_kill_as_the_kernel_is_forked_ends_it_and_is_answered(
    shell: str, where: str, tmp_path: Path
) -> None:
    """A kill line (or the session's end) that reached a watcher before it had set its traps,
    as its kernel was forked, ended the watcher: a kernel forked already ran on with nobody
    to end it, a start not yet forked went unanswered, and bash's EXIT trap answered
    ``nofork``, a process limit that was not there (a review's finding: 300 starts, each
    killed at once, left a few kernels running in every shell). The watcher is signalled
    there, as here: a kernel forked is ended once its pid is said, one not yet forked is
    not started, and each start is answered."""
    at = {"before": "case $1 in *=*) ds= ;; esac;", "after": "2>&1 & fi;"}[where]
    script = one_line()
    assert script.count(at) == 1
    script = script.replace(at, at + " sh -c 'kill -TERM $PPID';")  # its parent: the watcher
    mark = tmp_path / "kernel"
    s = Sup(shell, text=script)
    events: list[Event] = []
    try:
        assert s.event().kind == "hello"
        s.send(f"start k1 set -- /bin/sh -c 'echo $$ >{mark}; exec sleep 300'")
        events.append(said_within(s, 10))
        if events[0].kind == "pid":
            # sent again as the pid is said, the SIGTERM may reach a kernel forked but not
            # yet run (it has the watcher's traps until it lets go of them): marked, it is
            # not lost (it was, and only the clean-up's SIGKILL ended the kernel)
            events.append(said_within(s, 10))
    finally:
        stop(s)
        if mark.exists() and (left := mark.read_text().strip()).isdigit() and pid_alive(int(left)):
            os.kill(int(left), signal.SIGKILL)  # what the watcher left running
    if where == "before":
        assert events == [Event("exit", "k1", "143")], events  # never started
        assert not mark.exists()
    else:
        assert [e.kind for e in events] == ["pid", "exit"], events
        assert events[1] == Event("exit", "k1", "143"), events
        assert not pid_alive(int(events[0].value))
