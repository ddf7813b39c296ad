"""Who connected: /proc/net/tcp, the kernel's sock_diag answers and lsof output, parsed and
judged without a system to ask."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import peerowner, sockdiag
from relay.peerowner import (
    CLOSING,
    GONE,
    Row,
    diag_row,
    listening_in_rows,
    owner_in_lsof,
    owner_in_rows,
    proc_net_rows,
    taker_in_rows,
)
from relay.sockdiag import Found


def owner_in_proc_net(text: str, client_port: int, listen_port: int) -> int:
    return owner_in_rows(proc_net_rows(text), client_port, listen_port)


def taker_in_proc_net(text: str, listen_port: int, client_port: int) -> int:
    return taker_in_rows(proc_net_rows(text), listen_port, client_port)


def listening_in_proc_net(text: str, port: int, uid: int) -> int:
    return listening_in_rows(proc_net_rows(text), port, uid)


HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)


def row(sl: int, local: str, remote: str, uid: int, state: str = "01", inode: int = 1234) -> str:
    return (
        f"  {sl:>2}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 "
        f"{uid:>5}        0 {inode} 1 0000000000000000 20 4 30 10 -1\n"
    )


# sshd (as the login user, 1000) accepted on listener 127.0.0.1:40000 (0x9C40) the connection
# that a stranger (uid 1001) made from port 51000 (0xC738); the kernel (1000) is elsewhere.
TABLE = (
    HEADER
    + row(0, "0100007F:9C40", "00000000:0000", 1000)  # the listener
    + row(1, "0100007F:9C40", "0100007F:C738", 1000)  # sshd's accepted end
    + row(2, "0100007F:C738", "0100007F:9C40", 1001)  # the stranger's socket
    + row(3, "0100007F:C739", "0100007F:9C41", 1000)
)


def test_the_connecting_socket_is_found_not_the_accepted_end() -> None:
    assert owner_in_proc_net(TABLE, 0xC738, 0x9C40) == 1001
    assert owner_in_proc_net(TABLE, 0xC739, 0x9C41) == 1000


def test_a_socket_that_is_gone_or_elsewhere_is_not_found() -> None:
    assert owner_in_proc_net(TABLE, 0xC737, 0x9C40) == GONE
    # right ports, but connected to another address than the loopback listener
    other = HEADER + row(0, "0A000001:C738", "0A000002:9C40", 1000)
    assert owner_in_proc_net(other, 0xC738, 0x9C40) == GONE


def test_a_closing_socket_is_nobodys_not_roots() -> None:
    """Issue 23: a stranger's socket that wrote and closed at once sits in FIN_WAIT2 or
    TIME_WAIT, orphaned, its uid column 0 and its inode 0. That is never root's."""
    for state, uid, inode in [("05", 0, 0), ("06", 0, 0), ("04", 1001, 5678), ("08", 0, 9)]:
        table = HEADER + row(0, "0100007F:C738", "0100007F:9C40", uid, state, inode)
        assert owner_in_proc_net(table, 0xC738, 0x9C40) == CLOSING, state
    orphan = HEADER + row(0, "0100007F:C738", "0100007F:9C40", 0, "01", 0)
    assert owner_in_proc_net(orphan, 0xC738, 0x9C40) == CLOSING
    # a live socket of root's is root's; one that reuses a TIME_WAIT pair's ends is found
    live = row(1, "0100007F:C738", "0100007F:9C40", 0)
    assert owner_in_proc_net(HEADER + live, 0xC738, 0x9C40) == 0
    old = row(0, "0100007F:C738", "0100007F:9C40", 0, "06", 0)
    assert owner_in_proc_net(HEADER + old + live, 0xC738, 0x9C40) == 0


def test_a_socket_another_uid_holds_is_that_uids_even_closing() -> None:
    """A stranger that shuts its side at once and holds its socket is looked at in FIN_WAIT
    with its uid and a live inode: that uid's, so refused and said as a stranger's, not
    "could not check" (the user's own kernel, exiting as it connected). The user's own
    closing socket and an orphan stay nobody's, never admitted."""
    for state in ("04", "05", "08"):
        held = HEADER + row(0, "0100007F:C738", "0100007F:9C40", 1001, state, 5678)
        assert owner_in_rows(proc_net_rows(held), 0xC738, 0x9C40, 1000) == 1001, state
        root = HEADER + row(0, "0100007F:C738", "0100007F:9C40", 0, state, 5678)
        assert owner_in_rows(proc_net_rows(root), 0xC738, 0x9C40, 1000) == 0, state
        ours = HEADER + row(0, "0100007F:C738", "0100007F:9C40", 1000, state, 5678)
        assert owner_in_rows(proc_net_rows(ours), 0xC738, 0x9C40, 1000) == CLOSING, state
        orphan = HEADER + row(0, "0100007F:C738", "0100007F:9C40", 0, state, 0)
        assert owner_in_rows(proc_net_rows(orphan), 0xC738, 0x9C40, 1000) == CLOSING, state
        assert owner_in_rows(proc_net_rows(orphan), 0xC738, 0x9C40, 0) == CLOSING, state


def test_only_the_loopback_address_is_looked_up() -> None:
    """A client bound to 127.0.0.2 (or the host's LAN address) that happens to use the same
    port as one of the user's sockets is not that socket."""
    table = HEADER + row(0, "0200007F:C738", "0100007F:9C40", 1000)
    assert owner_in_proc_net(table, 0xC738, 0x9C40) == GONE


def test_ipv4_mapped_sockets_in_tcp6() -> None:
    v6 = HEADER + row(
        0, "0000000000000000FFFF00000100007F:C738", "0000000000000000FFFF00000100007F:9C40", 77
    )
    assert owner_in_proc_net(v6, 0xC738, 0x9C40) == 77


def test_lsof_output() -> None:
    out = (
        "p501\nu501\nf7\nn127.0.0.1:40000->127.0.0.1:51000\n"  # a listener's accepted end
        "p502\nu502\nf3\nn127.0.0.1:51000->127.0.0.1:40000\n"
    )
    assert owner_in_lsof(out, 51000, 40000) == 502
    assert owner_in_lsof(out, 51001, 40000) == GONE
    # an IPv4-mapped socket of a dual-stack client is the same connection
    mapped = "p503\nu503\nf4\nn[::ffff:127.0.0.1]:51002->[::ffff:127.0.0.1]:40000\n"
    assert owner_in_lsof(out + mapped, 51002, 40000) == 503
    # a process listed with no user is nobody's, not the one's listed before it
    assert (
        owner_in_lsof(out + "p504\nf5\nn127.0.0.1:51003->127.0.0.1:40000\n", 51003, 40000) == GONE
    )


@given(st.text(max_size=500), st.integers(0, 65535), st.integers(0, 65535))
def test_garbage_never_raises(text: str, a: int, b: int) -> None:
    assert owner_in_proc_net(text, a, b) >= GONE
    assert owner_in_lsof(text, a, b) >= GONE


def test_the_listener_that_took_relays_connection_is_its_accepting_ends_owner() -> None:
    """relay connected from 51000 (0xC738) to the front end's 40000 (0x9C40): the accepting
    end's row is the listener's, not yet accepted (inode 0), or still a request socket
    (SYN_RECV, before the final ACK: found under load), or shut by a live front end; an
    orphan (its process gone: uid 0) is nobody's; relay's own end never answers."""
    mine = row(2, "0100007F:C738", "0100007F:9C40", 1000)  # relay's end: never the answer
    for state, inode in (("01", 0), ("01", 77), ("03", 0), ("05", 77)):
        table = HEADER + mine + row(1, "0100007F:9C40", "0100007F:C738", 1001, state, inode)
        assert taker_in_proc_net(table, 0x9C40, 0xC738) == 1001, (state, inode)
    orphan = HEADER + mine + row(1, "0100007F:9C40", "0100007F:C738", 0, "05", 0)
    assert taker_in_proc_net(orphan, 0x9C40, 0xC738) == CLOSING
    assert taker_in_proc_net(HEADER + mine, 0x9C40, 0xC738) == GONE


def test_who_listens_on_a_port_another_users_listener_first() -> None:
    """Where relay's connection was taken and closed at once (an orphan, nobody's), whoever
    listens on the port says: another user's listener wins over the user's own (on the
    loopback or every address), and nobody listening is GONE."""
    ours = row(0, "0100007F:9C40", "00000000:0000", 1000, "0A")
    theirs = row(1, "00000000:9C40", "00000000:0000", 1001, "0A")
    elsewhere = row(2, "0100007F:9C41", "00000000:0000", 1001, "0A")
    assert listening_in_proc_net(HEADER + ours + elsewhere, 0x9C40, 1000) == 1000
    assert listening_in_proc_net(HEADER + ours + theirs, 0x9C40, 1000) == 1001
    assert listening_in_proc_net(HEADER + elsewhere, 0x9C40, 1000) == GONE


LOOPBACK = socket.inet_aton("127.0.0.1")
MAPPED = b"\0" * 10 + b"\xff\xff" + LOOPBACK


@pytest.mark.skipif(struct.pack("=I", 1) != b"\1\0\0\0", reason="/proc's words, little-endian")
def test_the_kernels_answer_reads_as_proc_writes_it() -> None:
    """sock_diag's addresses are bytes in network order; /proc/net/tcp writes them as 32-bit
    words in the machine's order: the same socket must make the same row, IPv4-mapped too."""
    v4 = Found(socket.AF_INET, 1, (LOOPBACK, 0xC738), (LOOPBACK, 0x9C40), 1001, 77)
    assert diag_row(v4) == Row("0100007F:C738", "0100007F:9C40", "01", "1001", "77")
    v6 = Found(socket.AF_INET6, 10, (MAPPED, 0x9C40), (b"\0" * 16, 0), 5, 9)
    assert diag_row(v6) == Row(
        "0000000000000000FFFF00000100007F:9C40", "0" * 32 + ":0000", "0A", "5", "9"
    )
    assert owner_in_rows([diag_row(v4)], 0xC738, 0x9C40) == 1001


def test_a_request_socket_from_the_kernel_carries_its_listeners_uid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sock_diag reads a request socket (SYN_RECV) as uid 0, where /proc writes its
    listener's uid: the listener the kernel names is asked, so a connection a stranger's
    listener has not yet fully accepted is the stranger's, and not root's; if that listener
    has closed since, /proc, which still names it, is read."""
    answers = {
        (0x9C40, 0xC738): Found(2, 3, (LOOPBACK, 0x9C40), (LOOPBACK, 0xC738), 0, 0),
        (0x9C40, 0): Found(2, 10, (LOOPBACK, 0x9C40), (b"\0" * 4, 0), 1001, 55),
    }
    monkeypatch.setattr(sockdiag, "lookup", lambda a, b: answers.get((a, b)))
    assert peerowner.linux_taker(0x9C40, 0xC738) == 1001
    del answers[(0x9C40, 0)]  # the listener gone meanwhile
    syn_recv = HEADER + row(0, "0100007F:9C40", "0100007F:C738", 1001, "03", 0)
    monkeypatch.setattr(peerowner, "_proc_net", lambda: syn_recv)
    assert peerowner.linux_taker(0x9C40, 0xC738) == 1001
    assert peerowner.linux_owner(0xC739, 0x9C40) == GONE  # ENOENT: no such socket


def test_where_the_kernel_does_not_answer_proc_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(local_port: int, remote_port: int) -> Found | None:
        raise sockdiag.Unavailable("no inet_diag here")

    monkeypatch.setattr(sockdiag, "lookup", unavailable)
    monkeypatch.setattr(peerowner, "_proc_net", lambda: TABLE)
    assert peerowner.linux_owner(0xC738, 0x9C40) == 1001
    assert peerowner.linux_taker(0x9C40, 0xC738) == 1000
