"""relay.ssh.guard without SSH: who is admitted, and how refusals are logged."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import socket
import struct
from pathlib import Path

import pytest

from relay import peerowner, sockdiag
from relay.errors import ConnectFailed, PeerCheckUnavailable
from relay.peerowner import CLOSING, GONE, NO_FILES, UNKNOWN, has_proc_net, linux_owner
from relay.ssh import guard as guard_module
from relay.ssh.guard import UNCHECKED, WHY, PeerGuard
from tests.orphans import live_connection, orphaned_client
from tests.strangers import NOBODY, needs_second_uid, shut_at_once, stranger


@pytest.fixture(params=["sock_diag", "proc"])
def tables(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """This machine's look-ups both ways it makes them: the kernel's answer for one socket
    (and then ``/proc`` is never read), and ``/proc/net/tcp`` where the kernel gives none."""
    if not has_proc_net():
        pytest.skip("no /proc/net/tcp on this machine")
    if request.param == "proc":

        def unavailable(local_port: int, remote_port: int) -> None:
            raise sockdiag.Unavailable("as a kernel without inet_diag")

        monkeypatch.setattr(sockdiag, "lookup", unavailable)
    else:

        def unread() -> str:
            raise AssertionError("/proc/net/tcp read where the kernel answers")

        monkeypatch.setattr(peerowner, "_proc_net", unread)
    return str(request.param)


def guard(answer: int | Exception, *, can_tell: bool = True, enabled: bool = True) -> PeerGuard:
    async def lookup(client_port: int, listen_port: int) -> int:
        if isinstance(answer, Exception):
            raise answer
        return answer

    return PeerGuard.remote("h", 1000, lookup, can_tell=can_tell, enabled=enabled)


@pytest.mark.parametrize(
    ("answer", "admitted"),
    [(1000, True), (1001, False), (0, False), (GONE, False), (UNKNOWN, False),
     (CLOSING, False), (ConnectFailed("h: SSH connection lost"), False)],
)  # fmt: skip
async def test_only_the_logins_own_uid_gets_through(
    answer: int | Exception, admitted: bool
) -> None:
    assert await guard(answer).admit("127.0.0.1", 40000, 50000, "data of 1@a,2@a") is admitted


@pytest.mark.parametrize("host", ["127.0.0.2", "10.0.0.5", "::1", ""])
async def test_only_the_listeners_loopback_address_is_admitted(host: str) -> None:
    """The user's own uid from another local address is refused without a look-up."""
    assert await guard(ConnectFailed("never asked")).admit(host, 40000, 50000, "x") is False
    assert await guard(1000).admit("::ffff:127.0.0.1", 40000, 50000, "x") is True


@pytest.mark.parametrize("answer", [1001, 0, GONE, UNKNOWN, CLOSING])
async def test_only_a_closing_socket_is_said_to_have_closed(answer: int) -> None:
    """``closing`` tells the launch its kernel's connection closed as it was checked (the
    kernel exited as it connected): said of another user's connection, or of one gone or
    not readable, the launch's error would blame the user's kernel for a stranger."""
    said: list[bool] = []
    admitted = await guard(answer).admit("127.0.0.1", 1, 2, "x", closing=lambda: said.append(True))
    assert not admitted and said == ([True] if answer == CLOSING else [])


async def test_a_guard_that_does_not_know_the_logins_uid_cannot_tell() -> None:
    """No uid for the login (the supervisor never said it): nothing can be the user's, so
    launches fail at once saying so, as where the host has no tables, rather than each
    connection being refused as a stranger's; ``relay status`` shows it as that."""

    async def lookup(client_port: int, listen_port: int) -> int:
        return 1000

    blind = PeerGuard.remote("h", None, lookup, can_tell=True, enabled=True)
    with pytest.raises(PeerCheckUnavailable):
        blind.require()
    assert blind.state == "unavailable"
    assert (guard(1000).state, guard(1000, can_tell=False).state) == ("uid", "unavailable")
    assert guard(1000, enabled=False).state == "off"


class _Transport:
    """relay's own connection to the front end's port, as ``refusal`` reads it."""

    def __init__(self, peer: str, peer_port: int = 40000) -> None:
        self.ends = {"sockname": ("127.0.0.1", 51000), "peername": (peer, peer_port)}

    def get_extra_info(self, name: str) -> object:
        return self.ends.get(name)


@pytest.mark.parametrize(
    ("listening", "refused"), [(1000, False), (GONE, False), (1001, True), (NO_FILES, True)]
)
async def test_a_taker_closed_at_once_is_judged_by_who_listens_now(
    monkeypatch: pytest.MonkeyPatch, listening: int, refused: bool
) -> None:
    """The end that took relay's connection closed before it was looked at (an orphan,
    nobody's): another user's listener on the port is refused; the user's own, or none any
    more (a front end that wrote, closed its connection and its listener at once), is not."""
    monkeypatch.setattr(guard_module, "has_proc_net", lambda: True)
    monkeypatch.setattr(guard_module, "linux_taker", lambda listen, client: CLOSING)
    monkeypatch.setattr(guard_module, "linux_listening", lambda port, uid: listening)
    local = guard(1000)
    assert (local.refusal(_Transport("127.0.0.1"), "data of 1@a,2@a") is not None) is refused


async def test_relays_connection_to_a_front_end_on_another_address_is_not_looked_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A link name with the front end's own LAN address: no loopback row to look up (a
    look-up by port would find nothing, and the launch fail as taken by another)."""

    def never(*ports: int) -> int:
        raise AssertionError("looked up")

    monkeypatch.setattr(guard_module, "has_proc_net", lambda: True)
    monkeypatch.setattr(guard_module, "linux_taker", never)
    assert guard(1000).refusal(_Transport("192.168.1.5"), "data of 1@a,2@a") is None


async def test_off_admits_without_asking() -> None:
    assert (
        await guard(ConnectFailed("never asked"), enabled=False).admit("127.0.0.1", 1, 2, "x")
        is True
    )


async def test_a_host_that_cannot_tell_refuses_and_fails_launches_at_once() -> None:
    blind = guard(1000, can_tell=False)
    assert await blind.admit("127.0.0.1", 1, 2, "x") is False
    with pytest.raises(PeerCheckUnavailable, match=re.escape('peer_check = "off" in [hosts.h]')):
        blind.require()
    guard(1000, can_tell=False, enabled=False).require()  # off: nothing to require


async def test_refusals_are_logged_once_per_uid_per_window_with_a_count(
    daemon_log: io.StringIO,
) -> None:
    stranger = guard(1001)
    for _ in range(50):
        assert not await stranger.admit("127.0.0.1", 40000, 50000, "data of 1@a,2@a")
    lines = [json.loads(line) for line in daemon_log.getvalue().splitlines()]
    refused = [e for e in lines if e["event"].startswith("refused a connection")]
    assert len(refused) == 1 and refused[0]["foreign_uid"] == 1001
    assert stranger.refusals.total == 50


async def test_a_connection_that_could_not_be_checked_is_not_said_as_another_users(
    daemon_log: io.StringIO,
) -> None:
    """A closing socket, one gone, one that cannot be read: refused (relay carries nothing it
    cannot check), but the user's own kernel as often as not (one that exits as it connects),
    so the log's headline does not send its reader after a stranger."""
    for uid in (CLOSING, GONE, UNKNOWN, ConnectFailed("h: SSH connection lost")):
        assert not await guard(uid).admit("127.0.0.1", 40000, 50000, "data of 1@a,2@a")
    lines = [json.loads(line) for line in daemon_log.getvalue().splitlines()]
    refused = [e for e in lines if e["event"].startswith("refused a connection")]
    assert {e["event"] for e in refused} == {UNCHECKED}, refused
    assert UNCHECKED == "refused a connection relay could not check the owner of"
    # a look-up cut by the connection's loss found nothing out: not a client gone
    assert [e["reason"] for e in refused] == [WHY[CLOSING], WHY[GONE], WHY[UNKNOWN], WHY[UNKNOWN]]
    assert all("foreign_uid" not in e for e in refused), refused
    both = guard(UNKNOWN)
    assert not await both.admit("127.0.0.1", 40000, 50000, "data of 1@a,2@a")
    assert (both.refusals.total, both.unchecked.total, both.refused) == (0, 1, 1)


async def test_refusals_from_other_local_addresses_are_one_key_of_the_log(
    daemon_log: io.StringIO,
) -> None:
    """Any local user can connect from any of 127.0.0.0/8's millions of addresses: keyed by
    address, each was a log line of its own, and an entry kept for good."""
    stranger = guard(ConnectFailed("never asked"))
    for i in range(50):
        assert not await stranger.admit(f"127.0.{i}.2", 40000, 50000, "data of 1@a,2@a")
    lines = [json.loads(line) for line in daemon_log.getvalue().splitlines()]
    refused = [e for e in lines if e["event"].startswith("refused a connection")]
    assert [e["foreign_uid"] for e in refused] == ["from 127.0.0.2, not 127.0.0.1"], refused
    assert stranger.refusals.total == 50


@pytest.mark.usefixtures("tables")
def test_this_machines_look_up_finds_a_closing_socket_nobodys() -> None:
    """The front end's machine's own look-up, on a real socket the client closed at once
    (FIN_WAIT2, orphaned: uid 0, inode 0 in /proc/net/tcp): nobody's, whoever the daemon
    runs as; a live socket is its owner's."""
    with live_connection() as (client_port, listen_port):
        assert linux_owner(client_port, listen_port) == os.getuid()
    with orphaned_client(b"x") as (client_port, listen_port):
        assert linux_owner(client_port, listen_port) == CLOSING


@needs_second_uid
@pytest.mark.usefixtures("tables")
def test_this_machines_look_up_names_a_stranger_that_shut_its_side_at_once() -> None:
    """A second uid's connection that wrote, shut its side and holds its socket (FIN_WAIT2,
    its uid and inode in the row): refused as that uid's, not as not checked."""
    with shut_at_once() as (client_port, port):
        assert linux_owner(client_port, port) == NOBODY


SQUAT = (
    "import socket,sys,time\n"
    "s=socket.socket();s.bind(('127.0.0.1',0));s.listen(1)\n"
    "print(s.getsockname()[1]);sys.stdout.flush();time.sleep(60)\n"
)


@needs_second_uid
async def test_relays_connection_to_a_listener_another_user_took_is_not_carried(
    daemon_log: io.StringIO, tables: str
) -> None:
    """relay connects to the front end's port when the kernel calls back; the front end may
    have closed its listener (a launch given up) and another user's taken the port. The end
    that took relay's connection is looked at first: the user's own listener passes, another
    user's is refused and said (its socket's row carries its uid before it even accepts)."""
    local = PeerGuard.local("h", enabled=True)
    with stranger(SQUAT) as squat:
        assert squat.stdout is not None
        theirs = int(squat.stdout.readline())
        with socket.create_server(("127.0.0.1", 0)) as ours:
            for port, taken_by_us in ((ours.getsockname()[1], True), (theirs, False)):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    assert local.reached(writer.transport, "data of 1@a,2@a") is taken_by_us
                finally:
                    writer.close()
        lines = [json.loads(line) for line in daemon_log.getvalue().splitlines()]
        refused = [e for e in lines if e["event"].startswith("refused a connection")]
        assert [(e["foreign_uid"], e["listener"]) for e in refused] == [(NOBODY, theirs)]
        assert PeerGuard.local("h", enabled=False).reached(writer.transport, "x")  # off


# another user's listener that takes one connection, writes to it and closes it at once,
# listening on: its port, then "closed" once it has
WRITE_AND_CLOSE = (
    "import socket,sys,time\n"
    "s=socket.socket();s.bind(('127.0.0.1',0));s.listen(1)\n"
    "print(s.getsockname()[1]);sys.stdout.flush()\n"
    "c,_=s.accept();c.sendall(b'Print[1]');c.close()\n"
    "print('closed');sys.stdout.flush();time.sleep(60)\n"
)


@needs_second_uid
async def test_a_connection_another_users_listener_wrote_to_and_closed_is_not_carried(
    daemon_log: io.StringIO, tables: str
) -> None:
    """The taking end closed before relay looks (an orphan: uid 0, nobody's), as a front
    end that closes at once may: then whoever listens on the port says, and another user's
    listener, which may have written what the kernel would read, is refused. The user's
    own listener that did the same is carried (found by the random link schedules)."""
    local = PeerGuard.local("h", enabled=True)
    with stranger(WRITE_AND_CLOSE) as squat:
        assert squat.stdout is not None
        theirs = int(squat.stdout.readline())
        _, writer = await asyncio.open_connection("127.0.0.1", theirs)
        assert squat.stdout.readline().strip() == "closed"
        assert local.reached(writer.transport, "data of 1@a,2@a") is False
        writer.close()
    with socket.create_server(("127.0.0.1", 0)) as ours:
        _, writer = await asyncio.open_connection("127.0.0.1", ours.getsockname()[1])
        accepted, _ = ours.accept()
        accepted.sendall(b"written first")
        accepted.close()  # orphaned: uid 0, inode 0
        assert local.reached(writer.transport, "data of 1@a,2@a") is True
        writer.close()


async def test_a_front_end_that_reset_relays_connection_at_once_is_not_called_another_user(
    daemon_log: io.StringIO, tables: str
) -> None:
    """The front end's listener accepts relay's connection and resets it at once (a launch
    cancelled as the kernel called back): the connection is gone before it is looked at, so
    nothing says whose it was, and it is not carried. The launch's line said the port "was
    taken by another user's listener" (a review's ruder front end); it says what happened."""
    local = PeerGuard.local("h", enabled=True)
    with socket.create_server(("127.0.0.1", 0)) as ours:
        port = ours.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        accepted, _ = ours.accept()
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.close()  # a reset: both ends' rows are gone
        refused = local.refusal(writer.transport, "data channel of 1@a,2@a")
        writer.close()
    assert refused is not None
    assert "another user" not in refused.message, refused.message
    assert f"port {port} (data channel of 1@a,2@a) closed relay's connection" in refused.message


LSOF = shutil.which("lsof")


def lsof_as(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> Path:
    """This machine as relay's look-ups see a Mac (no /proc), ``body`` (sh) its lsof."""
    lsof = tmp_path / "lsof"
    lsof.write_text("#!/bin/sh\n" + body)
    lsof.chmod(0o755)
    monkeypatch.setattr(peerowner, "has_proc_net", lambda: False)
    monkeypatch.setattr(peerowner, "lsof_path", lambda: str(lsof))
    return lsof


@pytest.mark.skipif(LSOF is None, reason="lsof is not on this machine")
async def test_where_lsof_is_the_way_a_flood_runs_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where there is no /proc (macOS), each look-up is asked of lsof, a process: a flood of
    connections to relay's listeners (another user's) must not start one per connection.
    One run answers every look-up waiting when it starts, each rightly (the real lsof)."""
    runs = tmp_path / "runs"
    lsof_as(
        monkeypatch, tmp_path, f'echo + >> {runs}\n{LSOF} "$@"\nrc=$?\necho - >> {runs}\nexit $rc\n'
    )
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        port = server.getsockname()[1]
        clients = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(30)
        ]
        for _ in clients:
            stack.enter_context(server.accept()[0])
        asked = [(c.getsockname()[1], port) for c in clients] + [(1, port)]
        uids = await asyncio.gather(*(peerowner.local_owner(*ends) for ends in asked))
    assert uids == [os.getuid()] * len(clients) + [GONE]
    marks = runs.read_text().split()
    depth = [marks[: i + 1].count("+") - marks[: i + 1].count("-") for i in range(len(marks))]
    assert max(depth) == 1, marks  # one lsof at a time
    assert marks.count("+") <= 2, marks  # and not one per connection


async def test_lsof_runs_stopped_with_the_daemon_answer_every_look_up_and_leave_no_lsof(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The daemon stops while an lsof runs (its task cancelled): that lsof is killed, and
    the look-ups waiting on it, and those queued behind it, are answered (cannot tell), not
    left waiting for a run that will not come."""
    started = tmp_path / "started"
    slow = lsof_as(
        monkeypatch,
        tmp_path,
        f"echo $$ > {started}.new && mv {started}.new {started}\nexec sleep 30\n",
    )
    first = asyncio.ensure_future(peerowner.local_owner(50000, 40000))
    for _ in range(2000):  # bounded: until the lsof has started (10 s at most)
        if started.exists():
            break
        await asyncio.sleep(0.005)
    queued = asyncio.ensure_future(peerowner.local_owner(50001, 40000))
    await asyncio.sleep(0)  # queued behind the run under way
    runs = peerowner._lsof_runs(str(slow))
    assert runs._runner is not None
    runs._runner.cancel()
    assert list(await asyncio.wait_for(asyncio.gather(first, queued), 10)) == [UNKNOWN] * 2
    pid = int(started.read_text())
    for _ in range(2000):
        try:  # gone, or a zombie (its parent reaps it)
            if " Z " in Path(f"/proc/{pid}/stat").read_text():
                break
        except (FileNotFoundError, ProcessLookupError):  # gone before the look, or reaped
            break  # between its open and its read (ESRCH: a CI run's failure)
        await asyncio.sleep(0.005)
    else:
        raise AssertionError(f"lsof {pid} still runs")
