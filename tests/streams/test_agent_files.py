"""The agent's own files and look-ups, in this process (relay/agent/remote.py imported):
what its ``keep`` does when making them again goes wrong or is not its to do, and its
sock_diag look-up on a kernel that finds nothing. The agent run as sshd runs it is
tests/streams/test_agent_local.py."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from relay import peerowner
from relay.agent import remote as _remote
from tests.orphans import live_connection

remote: Any = _remote  # untyped: one Python 3.6 file


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An agent as ``start`` makes one (its run directory checked, its socket bound), not
    run: its methods are called here."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    path, dir_fd, refusal = remote.run_dir()
    assert refusal is None and path is not None
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(os.path.join(path, "ab.sock"))
    server.listen(1)
    ino = os.stat("ab.sock", dir_fd=dir_fd).st_ino
    remote.write_pid("ab.pid", False, dir_fd)
    made = remote.Agent(dir_fd, "ab", "s" * 64, server, 900.0, ino)
    yield made
    made.server.close()
    os.close(made.dir_fd)
    made.sel.close()
    os.close(made.wake_r)
    os.close(made.wake_w)


def reachable() -> bool:
    """Whether something listens at the agent's socket's name."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(
                os.path.join(os.environ["TMPDIR"], f"relay-agent-{os.getuid()}", "ab.sock")
            )
        except OSError:
            return False
    return True


def test_a_socket_made_again_but_not_finished_is_not_left_to_pass_for_a_successors(
    agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket's name went; binding it again worked but the next step failed (its mode
    could not be set). The name is taken back, so the next look binds it again: left, it
    would read as a successor's socket and be left alone for good, the agent unreachable."""
    os.unlink("ab.sock", dir_fd=agent.dir_fd)
    chmod = os.chmod
    failures = [OSError(28, "No space left on device")]

    def failing(*args: object, **kwargs: object) -> None:
        if failures:
            raise failures.pop()
        chmod(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(remote.os, "chmod", failing)
    agent.keep()
    assert not reachable()
    agent.keep()
    assert reachable()
    assert os.stat("ab.sock", dir_fd=agent.dir_fd).st_ino == agent.sock_ino


def test_a_directory_an_agent_of_the_same_tag_made_since_is_left_to_it(
    agent: Any, tmp_path: Path
) -> None:
    """Its directory removed, and made again by the next agent of its tag (a new daemon's),
    which runs there: this agent does not bind the name when that one's socket goes, or
    write its pid file there. It looks no more."""
    path = tmp_path / f"relay-agent-{os.getuid()}"
    for name in ("ab.sock", "ab.pid"):
        os.unlink(name, dir_fd=agent.dir_fd)
    path.rmdir()
    path.mkdir(mode=0o700)
    successor = subprocess.Popen(
        [sys.executable, "-c", "import time; print(flush=True); time.sleep(60)", "ab"],
        stdout=subprocess.PIPE,
    )
    try:
        # up and running: just after Popen returns, its exec may not have set its command
        # line yet (/proc/PID/cmdline reads empty on a loaded machine), and the agent, which
        # knows a successor by its tag there, would not know it
        assert successor.stdout is not None and successor.stdout.readline() == b"\n"
        started = remote.start_time(successor.pid)
        (path / "ab.pid").write_text(f"{successor.pid} {started}\n")
        agent.keep()
        assert agent.sock_ino is None
        assert sorted(p.name for p in path.iterdir()) == ["ab.pid"]
        agent.keep()
        assert sorted(p.name for p in path.iterdir()) == ["ab.pid"]
        assert (path / "ab.pid").read_text().split()[0] == str(successor.pid)
    finally:
        successor.kill()
        successor.communicate()


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    """tmp_path opened as the agent opens its run directory (its files are made by fd)."""
    fd = os.open(tmp_path, os.O_RDONLY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("exclusive", [True, False])
def test_a_pid_file_being_written_is_never_read_half_made(
    exclusive: bool, tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start reads the pid file while the agent makes it again (``Agent.keep``): were it
    read empty, the start would see no agent and leave this one beside its own (the CI
    read one empty). While the agent writes, the name holds the old file whole, or none;
    after, the new one whole and nothing else. Made only where none is, it leaves one that
    is there as it was."""
    pid_file = tmp_path / "ab.pid"
    old = None if exclusive else "1 2 3\n"
    if old is not None:
        pid_file.write_text(old)
    seen: list[str | None] = []
    write = os.write

    def spy(fd: int, data: bytes) -> int:
        seen.append(pid_file.read_text() if pid_file.exists() else None)
        return write(fd, data)

    monkeypatch.setattr(remote.os, "write", spy)
    remote.write_pid("ab.pid", exclusive, dir_fd, 7)
    monkeypatch.undo()
    assert seen == [old]
    assert pid_file.read_text() == f"{os.getpid()} {remote.start_time(os.getpid())} 7\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ab.pid"]
    if exclusive:
        with pytest.raises(FileExistsError):
            remote.write_pid("ab.pid", exclusive, dir_fd, 8)
        assert pid_file.read_text().split()[2] == "7"
        assert [p.name for p in tmp_path.iterdir()] == ["ab.pid"]


def test_a_pid_file_being_put_in_place_survives_another_starts_sweep(
    tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two starts of a tag not locked apart (a TMPDIR without flock: NFS without lockd,
    Lustre's noflock; or each in a directory of its own beside a usual one not ours): one
    start's sweep runs while the other's agent is between writing TAG.pid.PID.new and
    renaming it (a review's reproduction). The sweep takes only a dead writer's."""
    rename = os.rename
    dead, zombie = subprocess.Popen(["true"]), subprocess.Popen(["true"])
    dead.wait()
    deadline = time.monotonic() + 60
    while remote.stat_fields(zombie.pid)[0] != "Z":
        assert time.monotonic() < deadline, "true never exited"
        time.sleep(0.01)
    (tmp_path / f"ab.pid.{dead.pid}.new").write_text("a killed agent's\n")
    (tmp_path / f"ab.pid.{zombie.pid}.new").write_text("a killed agent's, not reaped yet\n")

    def other_start_sweeps_first(*args: Any, **kwargs: Any) -> None:
        assert remote.sweep_logs(dir_fd, "ab", "ab.pid")  # no agent recorded yet: it sweeps
        rename(*args, **kwargs)

    monkeypatch.setattr(remote.os, "rename", other_start_sweeps_first)
    try:
        remote.write_pid("ab.pid", False, dir_fd, 7)  # the start's "pidfile" refusal if raised
        assert (tmp_path / "ab.pid").read_text().split()[0] == str(os.getpid())
        assert [p.name for p in tmp_path.iterdir()] == ["ab.pid"]
    finally:
        zombie.wait()


@pytest.mark.parametrize("refusal", [OSError(errno.EPERM, "no links"), NotImplementedError()])
def test_a_pid_file_is_made_where_hard_links_are_refused(
    refusal: BaseException, tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TMPDIR whose file system has no hard links (some FUSE and network file systems):
    the pid file made again is made in place, only where none is, as before the link."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise refusal

    monkeypatch.setattr(remote.os, "link", refuse)
    remote.write_pid("ab.pid", True, dir_fd, 7)
    assert (tmp_path / "ab.pid").read_text().split()[::2] == [str(os.getpid()), "7"]
    with pytest.raises(FileExistsError):
        remote.write_pid("ab.pid", True, dir_fd, 8)
    assert [p.name for p in tmp_path.iterdir()] == ["ab.pid"]


def test_a_pid_file_that_is_there_is_left_without_a_file_made_beside_it(
    agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``keep`` looks at the pid file every 2 s: where it is there, nothing is written (a
    file made and removed at each look showed up in what a tmp cleaner, or a person's ls,
    finds); where it went, it is made again."""
    path = Path(os.environ["TMPDIR"], f"relay-agent-{os.getuid()}")
    made: list[str] = []
    write_pid = remote.write_pid

    def spy(name: str, *rest: Any) -> None:
        made.append(name)
        write_pid(name, *rest)

    monkeypatch.setattr(remote, "write_pid", spy)
    agent.keep_pid_file()
    assert made == []
    (path / "ab.pid").unlink()
    agent.keep_pid_file()
    assert made == ["ab.pid"]
    assert (path / "ab.pid").read_text().split()[0] == str(os.getpid())


def test_a_kernel_that_finds_nothing_by_sock_diag_is_not_believed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel without inet_diag's TCP handler answers "no such socket" (ENOENT) to every
    request: believed, the agent would refuse the user's own kernel. It asks once for a
    listener of its own, finds nothing, and reads /proc from then on."""
    monkeypatch.setattr(remote, "ask_diag", lambda lport, rport, dev, probing=False: [])
    monkeypatch.setattr(remote, "DIAG", [])
    with live_connection() as (cport, lport):
        assert remote.owner(cport, lport) == str(os.getuid())
        assert remote.DIAG == [None]
        monkeypatch.setattr(remote, "DIAG", [1])  # believed: the harm
        assert remote.owner(cport, lport) == "-"


@pytest.mark.parametrize(
    ("diag", "proc_net", "said"),
    [([3], False, "proc"), ([None], True, "proc"), ([None], False, "none"), ([3], True, "proc")],
)
def test_the_owner_check_is_sock_diags_or_proc_nets(
    monkeypatch: pytest.MonkeyPatch, diag: list[int | None], proc_net: bool, said: str
) -> None:
    """CHECK on the start line, which relay check asks the agent's own file for (a /proc
    mounted subset=pid has no net/, but sock_diag answers there)."""
    access = os.access
    monkeypatch.setattr(remote, "DIAG", diag)
    monkeypatch.setattr(
        remote.os,
        "access",
        lambda path, mode: proc_net if path == "/proc/net/tcp" else access(path, mode),
    )
    assert remote.owner_check() == said


@pytest.mark.parametrize(("errno_", "said"), [(errno.ENOENT, "-"), (errno.EMFILE, "?")])
def test_a_proc_net_that_cannot_be_read_is_unknown_only_for_want_of_files(
    monkeypatch: pytest.MonkeyPatch, errno_: int, said: str
) -> None:
    """Neither sock_diag's answer nor /proc/net/tcp: for want of files the check cannot tell
    ("?", never another user's); where /proc has no net/ (subset=pid) and sock_diag gives no
    answer, there is no such socket to find ("-"), not a lack of files (a review's reading:
    the user was told "out of files" on such a host)."""

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(remote, "DIAG", [None])  # the kernel gives no answer
    monkeypatch.setattr(remote, "open", unreadable, raising=False)
    agent = remote.Agent.__new__(remote.Agent)  # its owner checks alone
    agent.spare = None
    assert agent.checked(remote.owner, 40000, 40001) == said


@pytest.mark.parametrize(
    "payload",
    [b"[" * 100_000, b'{"n": ' + b"7" * 31 + b"}", b'{"n": 1.' + b"5" * 40 + b"}",
     b'{"n": NaN}', b'{"n": -Infinity}', b"[1]", b"\xff", b"{"],
)  # fmt: skip
def test_a_peers_json_is_bounded_in_what_parsing_it_costs(payload: bytes) -> None:
    """Before the secret is proved: no recursion past Python's limit, no number whose
    parsing costs seconds (3.6 has no limit on digits), nothing but an object; each a
    ValueError, which ends that connection alone."""
    with pytest.raises(ValueError, match=r"."):  # a reason, whatever it is
        remote.peer_json(payload)


def test_a_peers_json_object_is_taken() -> None:
    assert remote.peer_json(b'{"n": 12, "f": 1.5, "s": "x"}') == {"n": 12, "f": 1.5, "s": "x"}


@pytest.mark.parametrize(
    ("text", "most", "value"),
    [("12", 65535, 12), ("0", 9, 0), ("65535", 65535, 65535), ("65536", 65535, None),
     ("²", 9, None), ("", 9, None), ("-1", 9, None), (" 1", 9, None),
     ("1" * 20, 10**30, None), ("٣", 9, None)],
)  # fmt: skip
def test_a_number_a_peer_wrote_is_ascii_digits_in_range(
    text: str, most: int, value: int | None
) -> None:
    assert remote.decimal(text, most) == value


def test_lines_are_taken_out_and_the_rest_kept() -> None:
    buf = bytearray(b"a b\n\nc\npart")
    assert remote.lines(buf) == [b"a b", b"", b"c"]
    assert buf == bytearray(b"part")
    assert remote.lines(buf) == [] and buf == bytearray(b"part")
    lone = bytearray(b"\npart")  # an empty first line is taken out too, not found again
    assert remote.lines(lone) == [b""] and lone == bytearray(b"part")
    many = bytearray(b"x\n" * 100_000)
    assert len(remote.lines(many)) == 100_000 and many == bytearray()


def test_a_usual_directory_made_and_removed_again_as_the_agent_looks_is_gone_around(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user of the host makes the usual name and removes it, over and over: the
    agent's mkdir meets it there, and its look finds it gone. That was a refusal (``mkdir``,
    "cannot create"), and the host lost resuming (a second uid racing did it 10 times in
    40 starts); now it is tried again, then gone around like another user's directory. The
    racer is modelled here: each mkdir of the usual name finds it there, each look nothing."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    usual, real_mkdir, met = remote.usual_dir(), os.mkdir, []

    def raced(path: str, mode: int = 0o777) -> None:
        if path == usual:
            met.append(path)
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        real_mkdir(path, mode)

    monkeypatch.setattr(remote.os, "mkdir", raced)
    path, dir_fd, refusal = remote.run_dir()
    monkeypatch.undo()
    assert refusal is None, refusal
    os.close(dir_fd)
    assert Path(path).parent == tmp_path and Path(path).name.startswith(
        f"relay-agent-{os.getuid()}."
    )
    assert len(met) == 3  # tried again before going around
    assert remote.own_dir(path)[2] is None  # and a directory that stays is taken at once


_CPORT, _LPORT = 0xC738, 0x9C40
_ME = os.getuid()
_ADDRS = ["0100007F", "0000000000000000FFFF00000100007F", "0200007F", "00000000"]
_ROWS = st.lists(
    st.tuples(
        st.sampled_from(_ADDRS),
        st.sampled_from([_CPORT, _LPORT, 1]),
        st.sampled_from(_ADDRS),
        st.sampled_from([_CPORT, _LPORT, 0]),
        st.sampled_from(["01", "03", "05", "06", "0A"]),
        st.sampled_from([0, _ME, _ME + 1]),
        st.sampled_from([0, 77]),
    ),
    max_size=4,
)


@given(_ROWS)
@example(
    [
        ("0100007F", _LPORT, "00000000", 0, "0A", _ME, 77),  # ours, then a stranger's
        ("0100007F", _LPORT, "00000000", 0, "0A", _ME + 1, 77),
    ]
)
@example([("0100007F", _LPORT, "0100007F", _CPORT, "03", _ME + 1, 0)])  # a request socket
@example([("0100007F", _CPORT, "0100007F", _LPORT, "01", _ME, 0)])  # ESTABLISHED, unheld
@example([("0100007F", _CPORT, "0100007F", _LPORT, "03", _ME + 1, 77)])  # a stranger's, held
@example([("0100007F", _CPORT, "00000000", _LPORT, "01", _ME, 77)])  # not to the loopback
def test_the_agents_judgments_are_the_daemons(rows: list[tuple[Any, ...]]) -> None:
    """The agent judges the rows of a socket's look-up by its own copy of relay.peerowner's
    rules (it runs on Python 3.6, alone): on any rows, the same answer. An ESTABLISHED row
    that no process holds is nobody's; a stranger's listener on the port wins over ours."""
    cols = [
        ["0:", f"{la}:{lp:04X}", f"{ra}:{rp:04X}", st_, "0:0", "0:0", "0", str(uid), "0", str(ino)]
        for la, lp, ra, rp, st_, uid, ino in rows
    ]
    table = [peerowner.Row(c[1], c[2], c[3], c[7], c[9]) for c in cols]
    said = {peerowner.CLOSING: "c", peerowner.GONE: "-"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(remote, "rows", lambda lport, rport: [list(c) for c in cols])
        owner = remote.owner(_CPORT, _LPORT)
        taker = remote.accepting_owner(_LPORT, _CPORT)
        listener = remote.listener_owner(_LPORT)
    daemons = peerowner.owner_in_rows(table, _CPORT, _LPORT, _ME)  # as relay asks: the user's
    assert owner == said.get(daemons, str(daemons))
    daemons = peerowner.taker_in_rows(table, _LPORT, _CPORT)  # the agent: closing is none
    assert taker == ("-" if daemons in said else str(daemons))
    daemons = peerowner.listening_in_rows(table, _LPORT, _ME)
    assert listener == said.get(daemons, str(daemons))
