"""The kernel's answer for one socket (``relay.sockdiag``) against ``/proc/net/tcp``'s rows,
on real loopback sockets in the states relay meets: both must judge alike, for the user's own
sockets and a second uid's."""

from __future__ import annotations

import os
import socket

import pytest

from relay import peerowner, sockdiag
from relay.peerowner import CLOSING, GONE, linux_listening, linux_owner, linux_taker
from tests.strangers import NOBODY, needs_second_uid, stranger

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


# a second uid's listener that accepts only once data comes, and its own connection to it
DEFERRED = (
    "import socket,sys,time\n"
    "s=socket.socket();s.setsockopt(socket.IPPROTO_TCP,socket.TCP_DEFER_ACCEPT,60)\n"
    "s.bind(('127.0.0.1',0));s.listen(4)\n"
    "c=socket.create_connection(s.getsockname())\n"
    "print(s.getsockname()[1],c.getsockname()[1]);sys.stdout.flush();time.sleep(60)\n"
)
