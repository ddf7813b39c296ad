"""sock_diag's request and reply, as bytes, without a kernel to ask."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.sockdiag import SOCK_DIAG_BY_FAMILY, Found, Unavailable, parse, request

LOOPBACK = socket.inet_aton("127.0.0.1")


def reply(seq: int, kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def diag_msg(family: int, state: int, sport: int, dport: int, uid: int, inode: int) -> bytes:
    addr = LOOPBACK.ljust(16, b"\0")
    return (
        struct.pack("=BBBB", family, state, 0, 0)
        + struct.pack("!HH16s16s", sport, dport, addr, addr)
        + struct.pack("=III", 0, 1, 2)  # interface, cookie
        + struct.pack("=IIIII", 0, 0, 0, uid, inode)
    )


def error(seq: int, code: int) -> bytes:
    return reply(seq, 2, struct.pack("=i", -code) + b"\0" * 16)  # the request's header after


def test_the_request_names_both_ends_in_network_order() -> None:
    """linux/inet_diag.h: nlmsghdr, then inet_diag_req_v2 for AF_INET/TCP, every state, and
    the socket id with ports and addresses in network order and no cookie to match."""
    raw = request(0xC738, 0x9C40, 7)
    assert len(raw) == 16 + 8 + 48
    assert struct.unpack_from("=IHHII", raw) == (72, SOCK_DIAG_BY_FAMILY, 1, 7, 0)
    assert struct.unpack_from("=BBBBI", raw, 16) == (socket.AF_INET, 6, 0, 0, 0xFFFFFFFF)
    assert raw[24:28] == b"\xc7\x38\x9c\x40"
    assert raw[28:32] == LOOPBACK and raw[44:48] == LOOPBACK
    assert raw[-8:] == b"\xff" * 8


def test_a_socket_in_the_reply_is_found() -> None:
    found = parse(reply(7, SOCK_DIAG_BY_FAMILY, diag_msg(2, 1, 0xC738, 0x9C40, 1001, 77)), 7)
    assert found == Found(2, 1, (LOOPBACK, 0xC738), (LOOPBACK, 0x9C40), 1001, 77)


def test_no_such_socket_is_none_and_any_other_error_is_unavailable() -> None:
    assert parse(error(7, errno.ENOENT), 7) is None
    for code in (errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP):
        with pytest.raises(Unavailable):
            parse(error(7, code), 7)


def test_a_reply_to_another_request_or_of_another_kind_is_not_taken() -> None:
    msg = diag_msg(2, 1, 1, 2, 3, 4)
    for raw in (reply(8, SOCK_DIAG_BY_FAMILY, msg), reply(7, 3, msg), reply(7, 20, msg[:40])):
        with pytest.raises(Unavailable):
            parse(raw, 7)


@given(st.binary(max_size=200))
def test_garbage_is_unavailable_or_a_socket_never_another_error(raw: bytes) -> None:
    with contextlib.suppress(Unavailable):
        assert parse(raw, 1) is None or raw[4:6] == b"\x14\x00"  # only its own kind is read
