"""Large writes to an SSH channel, handed to asyncssh one packet at a time.

asyncssh keeps what is written to a channel as one ``bytearray`` per write, and sends it a
packet at a time: each packet is sliced off the front (a copy) and the rest moved down
(``del buf[:pktsize]``, a memmove of everything left). A 256 KiB write into sshd's 32 KiB
packets (OpenSSH's ``CHAN_TCP_PACKET_DEFAULT``, what sshd offers for forwarded and
streamlocal channels) moves about 1 MiB to send 256 KiB. Written a packet's worth at a time,
each piece is copied once and sent whole: the same packets on the wire.
"""

from __future__ import annotations

from typing import Any, cast

__all__ = ["PACKET", "write_packets"]

PACKET = 32 << 10


def write_packets(chan: Any, data: bytes) -> None:
    """``chan.write(data)``, in pieces of at most ``PACKET`` bytes."""
    if len(data) <= PACKET:
        chan.write(data)
        return
    view = memoryview(data)
    for at in range(0, len(data), PACKET):
        chan.write(cast(bytes, view[at : at + PACKET]))
