"""The kernel's answer for one socket (``relay.sockdiag``) against ``/proc/net/tcp``'s rows,
on real loopback sockets in the states relay meets: both must judge alike, for the user's own
sockets and a second uid's."""

from __future__ import annotations

import os
import socket

import pytest

from relay import peerowner, sockdiag
from relay.peerowner import CLOSING, GONE, linux_listening, linux_owner, linux_taker
from tests.orphans import live_connection
from tests.strangers import CLOSES_WHEN_TOLD, DEFERRED, NOBODY, needs_second_uid, stranger

pytestmark = pytest.mark.skipif(
    not peerowner.has_proc_net(), reason="Linux's tables: no /proc/net/tcp here"
)


def both(ask: object, *args: int) -> tuple[int, int]:
    """``ask`` answered by the kernel, then by /proc alone."""
    assert callable(ask)
    by_kernel = ask(*args)
    real = sockdiag.lookup

    def unavailable(local_port: int, remote_port: int) -> None:
        raise sockdiag.Unavailable("asked of /proc")

    sockdiag.lookup = unavailable
    try:
        by_proc = ask(*args)
    finally:
        sockdiag.lookup = real
    return by_kernel, by_proc


def test_this_kernel_answers() -> None:
    """relay's request is one this kernel takes: a socket it asks for is found (else every
    look-up would read /proc, as before, and the tests below would compare /proc with
    itself)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        found = sockdiag.lookup(port, 0)
        assert found is not None and found.state == 10 and found.local[1] == port
        assert found.uid == os.getuid() and found.inode != 0


def test_the_users_sockets_in_every_state_judged_alike() -> None:
    uid = os.getuid()
    with socket.create_server(("127.0.0.1", 0)) as server:
        lport = server.getsockname()[1]
        assert both(linux_listening, lport, uid) == (uid, uid)
        client = socket.create_connection(("127.0.0.1", lport))
        cport = client.getsockname()[1]
        accepted, _ = server.accept()
        assert both(linux_owner, cport, lport) == (uid, uid)
        assert both(linux_taker, lport, cport) == (uid, uid)
        # an IPv6 socket connected to the IPv4-mapped address is hashed by its IPv4 ends
        with socket.create_connection(("::ffff:127.0.0.1", lport)) as v6:
            taken, _ = server.accept()
            assert both(linux_owner, v6.getsockname()[1], lport) == (uid, uid)
            taken.close()
        client.close()  # FIN_WAIT2, orphaned: nobody's
        assert both(linux_owner, cport, lport) == (CLOSING, CLOSING)
        accepted.close()  # TIME_WAIT on the client's side
        assert both(linux_owner, cport, lport) == (CLOSING, CLOSING)
    assert both(linux_listening, lport, uid) == (GONE, GONE)
    assert both(linux_owner, 1, 2) == (GONE, GONE)


@needs_second_uid
def test_a_second_users_sockets_judged_alike_a_request_socket_too() -> None:
    """A second uid's listener holds each connection made to it as a request socket
    (``TCP_DEFER_ACCEPT``: SYN_RECV until data comes), which the kernel reads as uid 0 where
    /proc writes the listener's: relay's taker look-up must name the stranger both ways."""
    with stranger(DEFERRED) as proc:
        assert proc.stdout is not None
        lport, sport = map(int, proc.stdout.readline().split())
        with socket.create_connection(("127.0.0.1", lport)) as ours:
            cport = ours.getsockname()[1]
            assert both(linux_listening, lport, os.getuid()) == (NOBODY, NOBODY)
            assert sockdiag.lookup(lport, cport) is not None
            assert sockdiag.lookup(lport, cport).state == 3  # type: ignore[union-attr]
            assert both(linux_taker, lport, cport) == (NOBODY, NOBODY)
            assert both(linux_owner, sport, lport) == (NOBODY, NOBODY)


def test_a_kernel_that_finds_nothing_by_sock_diag_is_not_believed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel without inet_diag's TCP handler (built without it, or its module not
    loadable) says "no such socket" to everything: the user's own connections would all be
    refused. Asked once for a listener of ours, it is found out, and /proc is read instead.
    (The stand-in: the same request for a protocol with no inet_diag handler, SCTP.)"""
    real = sockdiag.request

    def no_tcp_handler(local_port: int, remote_port: int, seq: int, interface: int = 0) -> bytes:
        raw = bytearray(real(local_port, remote_port, seq, interface))
        raw[17] = 132  # inet_diag_req_v2's protocol: IPPROTO_SCTP
        return bytes(raw)

    monkeypatch.setattr(sockdiag, "request", no_tcp_handler)
    sockdiag.answers.cache_clear()
    try:
        assert sockdiag.answers() is False
        with live_connection() as (cport, lport):
            assert linux_owner(cport, lport) == os.getuid()
            assert linux_taker(lport, cport) == os.getuid()
    finally:
        sockdiag.answers.cache_clear()


@pytest.mark.skipif(not hasattr(socket, "SO_BINDTODEVICE"), reason="no SO_BINDTODEVICE")
def test_sockets_bound_to_the_loopback_device_are_found() -> None:
    """SO_BINDTODEVICE "lo" (unprivileged since Linux 5.7): such sockets are found only by a
    request that names the device, as a packet arriving on it does."""
    uid = os.getuid()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        server.bind(("127.0.0.1", 0))
        server.listen()
        lport = server.getsockname()[1]
        assert both(linux_listening, lport, uid) == (uid, uid)
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
            client.connect(("127.0.0.1", lport))
            accepted, _ = server.accept()
            with accepted:
                cport = client.getsockname()[1]
                assert both(linux_owner, cport, lport) == (uid, uid)
                assert both(linux_taker, lport, cport) == (uid, uid)


@needs_second_uid
def test_a_request_socket_whose_listener_closed_is_still_the_strangers() -> None:
    """relay's connection sits in a second uid's listener's queue (SYN_RECV), and that
    listener closes: the kernel can no longer name who listened, /proc still can. Such a
    connection must never read as nobody's (which would let it through as the user's
    own when nobody listens on the port)."""
    with stranger(CLOSES_WHEN_TOLD, stdin=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        lport = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", lport)) as ours:
            cport = ours.getsockname()[1]
            assert both(linux_taker, lport, cport) == (NOBODY, NOBODY)
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "closed"
            found = sockdiag.lookup(lport, cport)
            assert found is not None and found.state == 3 and found.uid == 0
            assert both(linux_taker, lport, cport) == (NOBODY, NOBODY)
