"""Large writes to an SSH channel, handed to asyncssh one packet at a time.

asyncssh keeps what is written to a channel as one ``bytearray`` per write, and sends it a
packet at a time: each packet is sliced off the front (a copy) and the rest moved down
(``del buf[:pktsize]``, a memmove of everything left). A 256 KiB write into sshd's 32 KiB
packets (OpenSSH's ``CHAN_TCP_PACKET_DEFAULT``, what sshd offers for forwarded and
streamlocal channels) moves about 1 MiB to send 256 KiB. Written a packet's worth at a time,
each piece is copied once and sent whole: the same packets on the wire. A frame's header and
its large payload come as two pieces (``relay.agent.mux.pieces``): the header rides in the
first packet, and the payload is never copied behind it.
"""

from __future__ import annotations

from typing import Any, cast

__all__ = ["PACKET", "write_packets"]

PACKET = 32 << 10


def write_packets(chan: Any, *pieces: bytes) -> None:
    """``chan.write`` of the pieces joined, in writes of at most ``PACKET`` bytes: a piece
    shorter than that (a frame's header) goes out with the start of the next one, and only
    what such a joint holds is copied here."""
    carry = b""
    for piece in pieces:
        if carry:
            take = PACKET - len(carry)
            if len(piece) < take:  # still not a packet's worth: carried on
                carry += piece
                continue
            chan.write(carry + piece[:take])
            piece, carry = cast(bytes, memoryview(piece)[take:]), b""
        if len(piece) < PACKET:
            carry = bytes(piece)
            continue
        view = memoryview(piece)
        end = len(piece) - len(piece) % PACKET
        for at in range(0, end, PACKET):
            chan.write(cast(bytes, view[at : at + PACKET]))
        carry = bytes(view[end:])
    if carry:
        chan.write(carry)
