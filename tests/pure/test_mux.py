"""The agent's wire format, the daemon's half (relay.agent.mux): frames cut anywhere, and
what a sender keeps until acknowledged, replayed from wherever the receiver got to."""

from __future__ import annotations

import errno
import os
from typing import Any, Protocol

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.agent import mux, remote
from relay.agent.mux import Frame, FrameReader, Inbox, Outbox


def _agent(cls: Any) -> Any:
    """One of the agent's own (untyped: it runs on Python 3.6, alone) classes, made."""
    return cls()


def _merged(frames: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Consecutive DATA pieces of one stream joined: the frames as their sender wrote them."""
    out: list[tuple[int, int, bytes]] = []
    for ftype, stream, payload in frames:
        if out and ftype == mux.DATA and out[-1][:2] == (mux.DATA, stream):
            out[-1] = (ftype, stream, out[-1][2] + bytes(payload))
        else:
            out.append((ftype, stream, bytes(payload)))
    return out


_CUT_WIRE = (
    mux.encode(mux.DATA, 3, b"hello")
    + mux.encode(mux.EOF, 3)
    + mux.ack(7, 123456789012)
    + mux.encode(mux.WELCOME, 0, b'{"recv": {}}')
    + mux.encode(mux.DATA, 1, b"x" * 70000)
)
_CUT_FRAMES = [
    (mux.DATA, 3, b"hello"),
    (mux.EOF, 3, b""),
    (mux.ACK, 7, (123456789012).to_bytes(8, "big")),
    (mux.WELCOME, 0, b'{"recv": {}}'),
    (mux.DATA, 1, b"x" * 70000),
]


@pytest.mark.parametrize("cut", [1, 5, 9, 10, 20, 4096, 70000, len(_CUT_WIRE)])
def test_frames_cut_anywhere_come_out_the_same(cut: int) -> None:
    """Both readers, the daemon's and the agent's twin: DATA as it comes, in pieces that join
    to the payload sent; every other frame whole."""
    agent_reader: Any = _agent(remote.Reader)
    for reader in (FrameReader(), agent_reader):
        frames = []
        for i in range(0, len(_CUT_WIRE), cut):
            for frame in reader.feed(_CUT_WIRE[i : i + cut]):
                ftype, stream, payload = (
                    (frame.type, frame.stream, frame.payload) if isinstance(frame, Frame) else frame
                )
                assert ftype == mux.DATA or (ftype, stream, payload) in _CUT_FRAMES
                frames.append((ftype, stream, payload))
        assert _merged(frames) == _CUT_FRAMES


def test_a_data_frames_middle_is_passed_on_not_copied() -> None:
    """What the channel delivers inside a large DATA frame is the piece itself: bulk is
    neither gathered nor copied on its way to the front end's socket."""
    wire = mux.encode(mux.DATA, 1, b"y" * 300_000)
    agent_reader: Any = _agent(remote.Reader)
    for reader in (FrameReader(), agent_reader):
        reader.feed(wire[:100])
        middle = wire[100:200_000]
        (piece,) = reader.feed(middle)
        payload = piece.payload if isinstance(piece, Frame) else piece[2]
        assert payload is middle


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"\x00" + b"\x00" * 8, "unknown frame type 0"),
        (b"\x63" + b"\x00" * 8, "unknown frame type 99"),
        (bytes([mux.CHALLENGE + 1]) + b"\x00" * 8, f"unknown frame type {mux.CHALLENGE + 1}"),
        (
            bytes([mux.DATA]) + b"\x00\x00\x00\x01" + (mux.MAX_PAYLOAD + 1).to_bytes(4, "big"),
            "exceeds",
        ),
    ],
)
def test_garbage_is_refused(wire: bytes, why: str) -> None:
    """By both readers, the daemon's and the agent's twin (which says no more than that)."""
    with pytest.raises(mux.FrameError, match=why):
        FrameReader().feed(wire)
    agent_reader: Any = _agent(remote.Reader)
    with pytest.raises(remote.FrameError, match="not a frame"):
        agent_reader.feed(wire)


def test_an_ack_past_what_was_sent_is_refused() -> None:
    out = Outbox()
    out.push(Frame(mux.DATA, 1, b"abc"))
    with pytest.raises(mux.FrameError, match="beyond"):
        out.acked(4)


def test_large_data_is_cut_into_chunks_and_counted() -> None:
    out = Outbox()
    wires = out.push(Frame(mux.DATA, 1, b"y" * (mux.CHUNK * 2 + 5)))
    frames = FrameReader().feed(b"".join(wires))  # fed whole: a frame each
    assert [len(f.payload) for f in frames] == [mux.CHUNK, mux.CHUNK, 5]
    assert out.unacked == out.end == mux.CHUNK * 2 + 5


def test_nothing_follows_a_close_and_done_needs_its_ack() -> None:
    out = Outbox()
    out.push(Frame(mux.DATA, 1, b"ab"))
    out.push(Frame(mux.CLOSE, 1))
    with pytest.raises(ValueError, match="CLOSE"):
        out.push(Frame(mux.DATA, 1, b"c"))
    assert not out.done
    out.acked(2)
    assert not out.done
    out.acked(3)
    assert out.done


def _deliver(wires: list[bytes], reader: FrameReader, inbox: Inbox, got: list[Frame]) -> None:
    for wire in wires:
        for frame in reader.feed(wire):
            inbox.take(frame)
            got.append(frame)


class _Sender(Protocol):
    @property
    def unacked(self) -> int: ...

    def push(self, frame: Frame) -> list[bytes]: ...
    def replay(self, position: int) -> list[bytes]: ...
    def acked(self, position: int) -> None: ...


class _AgentSender:
    """The agent's own sender half (its Python 3.6 copy in relay/agent/remote.py, untyped)."""

    def __init__(self) -> None:
        agent_outbox: Any = remote.Outbox
        self.out: Any = agent_outbox()

    @property
    def unacked(self) -> int:
        return int(self.out.unacked)

    def push(self, frame: Frame) -> list[bytes]:
        return list(self.out.push(frame.type, frame.stream, frame.payload))

    def replay(self, position: int) -> list[bytes]:
        return list(self.out.replay(STREAM, position))

    def acked(self, position: int) -> None:
        self.out.acked(position)


STREAM = 5


def _through_outages(
    out: _Sender, chunks: list[bytes], outages: list[tuple[int, int]], ack_every: int
) -> tuple[list[Frame], Inbox]:
    """``chunks``, an EOF and a CLOSE pushed by ``out``; at the given points the channel dies,
    losing the last few frames in flight, and the receiver resumes from its position. What
    the receiver took in, and its count."""
    inbox, reader, got = Inbox(), FrameReader(), list[Frame]()
    in_flight: list[bytes] = []  # sent, not yet delivered: lost when the channel dies
    cuts = dict(outages)
    items = [Frame(mux.DATA, STREAM, c) for c in chunks]
    items += [Frame(mux.EOF, STREAM), Frame(mux.CLOSE, STREAM)]
    for i, item in enumerate(items):
        in_flight += out.push(item)
        lost = cuts.get(i)
        if lost is not None:  # the channel dies: the last ``lost`` frames never arrive
            _deliver(in_flight[: max(0, len(in_flight) - lost)], reader, inbox, got)
            reader = FrameReader()
            in_flight = out.replay(inbox.position)  # the receiver says where it got to
        if i % ack_every == 0:
            _deliver(in_flight, reader, inbox, got)
            in_flight = []
            out.acked(inbox.position)
            assert out.unacked == 0  # the sender keeps no more than is unacknowledged
    _deliver(in_flight, reader, inbox, got)
    out.acked(inbox.position)
    return got, inbox


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=40),
    outages=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 10)), max_size=6),
    ack_every=st.integers(1, 8),
)
def test_every_byte_arrives_exactly_once_in_order_across_outages(
    chunks: list[bytes], outages: list[tuple[int, int]], ack_every: int
) -> None:
    """A sender pushes chunks, an EOF and a CLOSE through outages at random points: what the
    receiver takes in is the stream exactly once, in order."""
    out = Outbox()
    got, inbox = _through_outages(out, chunks, outages, ack_every)
    assert b"".join(f.payload for f in got if f.type == mux.DATA) == b"".join(chunks)
    assert [f.type for f in got if f.type != mux.DATA] == [mux.EOF, mux.CLOSE]
    assert got[-1].type == mux.CLOSE and inbox.closed
    assert out.done and out.unacked == 0


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300_000), min_size=1, max_size=12),
    outages=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 6)), max_size=4),
    ack_every=st.integers(1, 5),
)
def test_the_agents_own_outbox_speaks_the_same_wire_exactly_once(
    chunks: list[bytes], outages: list[tuple[int, int]], ack_every: int
) -> None:
    """The agent keeps its own copy of the sender's half (it runs on Python 3.6, alone).
    What it sends through outages at random points is read by the daemon's FrameReader and
    Inbox as the same stream, exactly once, in order; frames over CHUNK are cut as the
    daemon cuts them."""
    sender = _AgentSender()
    got, _ = _through_outages(sender, chunks, outages, ack_every)
    assert b"".join(f.payload for f in got if f.type == mux.DATA) == b"".join(chunks)
    assert all(len(f.payload) <= mux.CHUNK for f in got)
    assert [f.type for f in got if f.type != mux.DATA] == [mux.EOF, mux.CLOSE]
    assert sender.out.done and sender.unacked == 0


class _Trickle:
    """A socket that takes at most ``k`` bytes per call, as a full one does."""

    def __init__(self, k: int) -> None:
        self.k, self.got = k, bytearray()

    def send(self, data: bytes) -> int:
        self.got += bytes(data[: self.k])
        return min(self.k, len(data))

    def sendmsg(self, pieces: list[bytes]) -> int:
        if len(pieces) > remote.IOV_MAX:  # as the system refuses more than its IOV_MAX
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        return self.send(b"".join(bytes(p) for p in pieces))


@given(
    pieces=st.lists(st.binary(min_size=0, max_size=300), max_size=100),
    k=st.integers(1, 500),
)
@example(pieces=[b"x"] * (3 * remote.IOV_MAX), k=500)  # random lists seldom pass IOV_MAX
def test_the_agents_buffers_send_every_byte_once_in_order(pieces: list[bytes], k: int) -> None:
    """What the agent queues for a socket (its channel, a link) goes out whole, in order,
    however little each send takes, including when more pieces wait than one sendmsg takes."""
    buffers: Any = _agent(remote.Buffers)
    sock = _Trickle(k)
    for piece in pieces:
        buffers.add(piece)
    assert len(buffers) == sum(map(len, pieces))
    for _ in range(sum(map(len, pieces)) + 1):
        if not buffers:
            break
        buffers.send(sock)
    assert not buffers and bytes(sock.got) == b"".join(pieces)


def _bytes_each(make: Any, use: Any, n: int = 2000) -> float:
    """Traced bytes each of ``n`` objects holds once ``use`` is done with it."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [use(make()) for _ in range(n)]
        return (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()


def test_an_idle_streams_outboxes_and_buffers_cost_little() -> None:
    """Every link has an outbox each way on both sides and a buffer towards its socket in the
    agent; once all is acknowledged (or sent), none of them keeps a deque (600 bytes each:
    most of an idle link's bookkeeping, with 100 kernels' 400 links)."""

    def acked(out: Outbox) -> Outbox:
        out.push(Frame(mux.DATA, 1, b"abc"))
        out.acked(out.end)
        return out

    def agent_acked(out: Any) -> Any:
        out.push(mux.DATA, 1, b"abc")
        out.acked(out.end)
        return out

    def sent(buffers: Any) -> Any:
        buffers.add(b"abc")
        buffers.send(_Trickle(10))
        return buffers

    assert _bytes_each(Outbox, acked) < 300
    assert _bytes_each(lambda: _agent(remote.Outbox), agent_acked) < 300
    assert _bytes_each(lambda: _agent(remote.Buffers), sent) < 300


@pytest.mark.parametrize("agents", [False, True])
def test_small_writes_are_kept_as_few_items(agents: bool) -> None:
    """A writer of tiny messages while nothing is acknowledged (an outage): LIMIT counts
    bytes, so each kept as an item of its own would cost a hundred times its size in
    objects. They are joined up to MERGE bytes an item, and replayed as they were sent."""
    sender: _Sender = _AgentSender() if agents else Outbox()
    for i in range(10_000):
        sender.push(Frame(mux.DATA, STREAM, bytes([i % 256])))
    items = sender.out.items if agents else sender._items  # type: ignore[attr-defined]
    assert len(items) <= 10_000 // mux.MERGE + 1
    # and no more than MERGE: each join copies the item, so one grown without bound would
    # cost a copy of all kept so far per write
    sizes = [len(item[1]) if agents else len(item.payload) for item in items]
    assert max(sizes) <= mux.MERGE
    replayed = FrameReader().feed(b"".join(sender.replay(0)))
    assert b"".join(f.payload for f in replayed) == bytes(i % 256 for i in range(10_000))
    assert remote.MERGE == mux.MERGE
