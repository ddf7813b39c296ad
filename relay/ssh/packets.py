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
    """``chan.write`` of the pieces joined, in writes of at most ``PACKET`` bytes: pieces
    shorter than that (a frame's header, small messages replayed after an outage) are held
    and go out together with the start of the next, joined once per packet; only what such a
    joint holds is copied here."""
    held: list[bytes] = []  # less than a packet's worth, waiting for more
    size = 0
    for piece in pieces:
        if held:
            take = PACKET - size
            if len(piece) < take:  # still not a packet's worth: held on
                held.append(piece)
                size += len(piece)
                continue
            view = memoryview(piece)
            held.append(cast(bytes, view[:take]))
            chan.write(b"".join(held))
            piece, held, size = cast(bytes, view[take:]), [], 0
        end = len(piece) - len(piece) % PACKET
        if end:
            view = memoryview(piece)
            for at in range(0, end, PACKET):
                chan.write(cast(bytes, view[at : at + PACKET]))
            piece = cast(bytes, view[end:])
        if piece:  # bytes of its own (a bytes piece is not copied)
            held, size = [bytes(piece)], len(piece)
    if held:
        chan.write(held[0] if len(held) == 1 else b"".join(held))
