"""Writes to an SSH channel cut into packets (relay.ssh.packets): the same bytes, in order,
no write over a packet, and no more writes than whole packets need."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.agent import mux
from relay.ssh.packets import PACKET, write_packets


class _Channel:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


@given(
    sizes=st.lists(
        st.sampled_from([0, 1, 9, 100, PACKET - 9, PACKET, PACKET + 1, 3 * PACKET + 7, 256 << 10]),
        max_size=8,
    )
)
def test_pieces_go_out_whole_in_packets(sizes: list[int]) -> None:
    pieces = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    chan = _Channel()
    write_packets(chan, *pieces)
    joined = b"".join(pieces)
    assert b"".join(chan.writes) == joined
    assert all(0 < len(w) <= PACKET for w in chan.writes)
    assert len(chan.writes) == -(-len(joined) // PACKET)  # as few as whole packets need


def test_a_large_frames_header_rides_in_its_first_packet() -> None:
    """A 256 KiB DATA frame: its header and payload as two pieces, the header not sent in a
    packet of its own."""
    payload = bytes(range(256)) * 1024
    wire = mux.pieces(mux.DATA, 7, payload)
    assert len(wire) == 2 and wire[1] is payload
    chan = _Channel()
    write_packets(chan, *wire)
    assert chan.writes[0][:9] == mux.encode(mux.DATA, 7)[:5] + len(payload).to_bytes(4, "big")
    assert len(chan.writes[0]) == PACKET
    assert b"".join(chan.writes) == mux.encode(mux.DATA, 7, payload)
