"""One loopback TCP socket, asked of the kernel by its two ends: ``NETLINK_SOCK_DIAG``.

``relay.peerowner`` judges a connection by its socket's owner, state and inode.
``/proc/net/tcp`` lists every TCP socket on the machine, so reading it costs time in proportion
to the whole table, on the event loop, once or twice per link connection: a busy login node
has tens of thousands of rows, and another local user can add more (TIME_WAIT sockets cost
nothing to make; 100k rows took 68 ms to parse). An inet_diag request for one exact pair of
ends costs the same at any table size: the kernel looks the socket up in its hash as it would
for an arriving packet (sock_diag(7), ``linux/inet_diag.h``). Unprivileged, as ``ss`` is.

What the kernel answers (``net/ipv4/inet_diag.c``, ``inet_diag_find_one_icsk``):
- the socket whose local end is ``local`` and remote end ``remote``, in any state, TIME_WAIT
  and request sockets included. An AF_INET request finds IPv6 sockets connected to
  IPv4-mapped addresses too (they are hashed by their IPv4 ends);
- with no such socket, the listener that would take a packet to ``local`` (``inet_lookup``):
  so ``127.0.0.1:PORT -> 127.0.0.1:0`` asks who listens on PORT;
- uid and inode as ``/proc/net/tcp`` prints them (``sock_i_uid``, ``sock_i_ino``), but for a
  request socket (SYN_RECV: a connection its listener has not had the final ACK of), which
  reads uid 0 where ``/proc`` prints its listener's (``inet_req_diag_fill``);
- ``ENOENT`` when there is neither, and also when this kernel has no TCP handler for
  inet_diag (built without it, or its module not loadable: ``modules_disabled``). So the
  kernel is first asked, once per process, for a socket that exists (``answers``): if it
  cannot find that, its "no such socket" means nothing, and ``lookup`` is ``Unavailable``;
- sockets bound to the loopback device (``SO_BINDTODEVICE``, unprivileged since Linux 5.7)
  only when the request names that device, as an arriving packet would: so it does.

``request`` and ``parse`` are pure; ``lookup`` is the I/O. Anything else (no netlink, no
inet_diag in this kernel, a sandbox that forbids it, a reply not understood) raises
``Unavailable``: the caller reads ``/proc`` instead, which gives the same answers, slower.
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["LOOPBACK", "Found", "Unavailable", "answers", "lookup", "loopback", "parse", "request"]

NETLINK_SOCK_DIAG: Final = 4  # linux/netlink.h
SOCK_DIAG_BY_FAMILY: Final = 20  # linux/sock_diag.h
NLMSG_ERROR: Final = 2
NLM_F_REQUEST: Final = 1
LISTEN: Final = 10  # include/net/tcp_states.h
NO_COOKIE: Final = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: the socket is asked for by its ends alone
LOOPBACK: Final = socket.inet_aton("127.0.0.1")

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
# inet_diag_req_v2: family, protocol, extensions, pad, states; then inet_diag_sockid: ports
# and addresses in network order, interface and cookie in the machine's
_REQUEST = struct.Struct("=BBBBI")
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
# inet_diag_msg: family, state, timer, retransmits, sockid, expires, rqueue, wqueue, uid, inode
_MSG = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")
_ERROR = struct.Struct("=i")
_REPLY_MAX = 8192


class Unavailable(Exception):
    """This machine did not answer the question (read ``/proc/net/tcp`` instead)."""


@dataclass(frozen=True, slots=True)
class Found:
    """One socket as the kernel reported it. ``local`` and ``remote`` are (address, port):
    the address as 4 bytes (AF_INET) or 16 (AF_INET6, IPv4-mapped for a loopback link)."""

    family: int
    state: int  # include/net/tcp_states.h: 1 ESTABLISHED, 3 SYN_RECV, 10 LISTEN, ...
    local: tuple[bytes, int]
    remote: tuple[bytes, int]
    uid: int
    inode: int


def request(local_port: int, remote_port: int, seq: int, interface: int = 0) -> bytes:
    """The request for the socket ``127.0.0.1:local_port -> 127.0.0.1:remote_port``, as
    a packet arriving on ``interface`` (an index: ``loopback()``) would find it."""
    sockid = _SOCKID.pack(
        local_port, remote_port, LOOPBACK.ljust(16, b"\0"), LOOPBACK.ljust(16, b"\0")
    ) + _SOCKID_TAIL.pack(interface, NO_COOKIE, NO_COOKIE)
    body = _REQUEST.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body


def parse(reply: bytes, seq: int) -> Found | None:
    """The socket in the kernel's reply to ``request(..., seq)``; None if there is none."""
    if len(reply) < _HEADER.size:
        raise Unavailable("a short reply")
    length, kind, _, got_seq, _ = _HEADER.unpack_from(reply)
    if got_seq != seq or length > len(reply):
        raise Unavailable("a reply to another request")
    at = _HEADER.size
    if kind == NLMSG_ERROR and length >= at + _ERROR.size:
        (code,) = _ERROR.unpack_from(reply, at)
        if -code == errno.ENOENT:
            return None
        raise Unavailable(errno.errorcode.get(-code, str(code)))
    if kind != SOCK_DIAG_BY_FAMILY or length < at + _MSG.size + _SOCKID.size + 12 + _MSG_TAIL.size:
        raise Unavailable(f"a reply of type {kind}")
    family, state, _, _ = _MSG.unpack_from(reply, at)
    sport, dport, src, dst = _SOCKID.unpack_from(reply, at + _MSG.size)
    _, _, _, uid, inode = _MSG_TAIL.unpack_from(reply, at + _MSG.size + _SOCKID.size + 12)
    width = 4 if family == socket.AF_INET else 16
    return Found(family, state, (src[:width], sport), (dst[:width], dport), uid, inode)


def lookup(local_port: int, remote_port: int) -> Found | None:
    """The kernel's answer for ``127.0.0.1:local_port -> 127.0.0.1:remote_port``, where it
    ``answers``."""
    if not answers():
        raise Unavailable("this kernel does not find a socket it has by sock_diag")
    return _ask(local_port, remote_port, loopback())


def _ask(local_port: int, remote_port: int, interface: int) -> Found | None:
    """One request. Its answer is queued before ``send`` returns (the request is handled in
    the sender's call), so it is read without waiting."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
            sock.send(request(local_port, remote_port, 1, interface))
            reply = sock.recv(_REPLY_MAX, socket.MSG_DONTWAIT)
    except (OSError, AttributeError) as exc:  # AttributeError: no AF_NETLINK (not Linux)
        raise Unavailable(str(exc)) from None
    return parse(reply, 1)


@functools.cache
def loopback() -> int:
    """The loopback device's index (1 on Linux; asked, not assumed), or 0 (any device)."""
    try:
        return socket.if_nametoindex("lo")
    except OSError:
        return 0


@functools.cache
def answers() -> bool:
    """Whether this kernel finds, by sock_diag, a listener this process has just opened:
    asked once. Where it does not, every answer would be "no such socket"."""
    try:
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port = probe.getsockname()[1]
            found = _ask(port, 0, loopback())
    except (OSError, Unavailable):
        return False
    return found is not None and found.state == LISTEN and found.local[1] == port
