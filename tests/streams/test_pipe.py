"""relay.ssh.pipe in memory: bytes before either side attaches, EOF, close, back-pressure."""

from __future__ import annotations

import asyncio

import pytest

from relay.ssh.pipe import HIGH_WATER, Pipe
from relay.tasks import while_moving


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.eof = False
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof, "write after end"
        self.written.append(data)

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def test_bytes_written_before_the_channel_opens_arrive_in_order() -> None:
    pipe = Pipe()
    tcp, chan = FakeTransport(), FakeTransport()
    side = pipe.tcp_protocol()
    side.connection_made(tcp)  # type: ignore[arg-type]
    side.data_received(b"first ")  # the front end wrote the instant it accepted
    side.data_received(b"second")
    assert chan.written == []
    pipe.channel_session().connection_made(chan)  # type: ignore[arg-type]
    side.data_received(b" third")
    assert b"".join(chan.written) == b"first second third"


async def test_eof_and_close_before_attach_are_kept_until_then() -> None:
    pipe = Pipe()
    tcp, chan = FakeTransport(), FakeTransport()
    pipe.attach(pipe.tcp, tcp)
    pipe.received(pipe.tcp, b"last words")
    pipe.eof_received(pipe.tcp)
    pipe.lost(pipe.tcp)
    assert not pipe.closed.done()
    pipe.attach(pipe.channel, chan)
    assert chan.written == [b"last words"] and chan.eof and chan.closed
    assert pipe.closed.done()


async def test_half_close_keeps_the_other_direction_open() -> None:
    pipe = Pipe()
    tcp, chan = FakeTransport(), FakeTransport()
    pipe.attach(pipe.tcp, tcp)
    pipe.attach(pipe.channel, chan)
    pipe.eof_received(pipe.tcp)
    assert chan.eof and not chan.closed and not tcp.closed
    pipe.received(pipe.channel, b"answer")
    assert tcp.written == [b"answer"]
    pipe.eof_received(pipe.channel)  # both directions ended
    assert tcp.eof and tcp.closed and chan.closed and pipe.closed.done()


async def test_an_early_flood_pauses_the_sender_until_the_other_side_is_there() -> None:
    pipe = Pipe()
    tcp, chan = FakeTransport(), FakeTransport()
    pipe.attach(pipe.tcp, tcp)
    block = bytes(64 * 1024)
    for _ in range(HIGH_WATER // len(block) + 1):
        pipe.received(pipe.tcp, block)
    assert tcp.paused
    pipe.attach(pipe.channel, chan)
    assert not tcp.paused
    assert sum(map(len, chan.written)) == (HIGH_WATER // len(block) + 1) * len(block)


@pytest.mark.parametrize("full", ["tcp", "channel"])
async def test_a_full_side_pauses_reading_on_the_other(full: str) -> None:
    pipe = Pipe()
    tcp, chan = FakeTransport(), FakeTransport()
    pipe.attach(pipe.tcp, tcp)
    pipe.attach(pipe.channel, chan)
    end, other = (pipe.tcp, chan) if full == "tcp" else (pipe.channel, tcp)
    pipe.pause(end)
    assert other.paused
    pipe.resume(end)
    assert not other.paused


async def test_close_closes_both_sides() -> None:
    pipe = Pipe()
    tcp, chan = FakeTransport(), FakeTransport()
    pipe.attach(pipe.tcp, tcp)
    pipe.attach(pipe.channel, chan)
    pipe.close()
    assert tcp.closed and chan.closed and pipe.closed.done()
    late = FakeTransport()
    pipe.attach(pipe.channel, late)  # a side attaching after the close is closed at once
    assert late.closed


async def test_wait_closed_returns_once_both_transports_are_gone() -> None:
    pipe = Pipe()
    tcp, chan = FakeTransport(), FakeTransport()
    tcp_side, chan_side = pipe.tcp_protocol(), pipe.channel_session()
    tcp_side.connection_made(tcp)  # type: ignore[arg-type]
    chan_side.connection_made(chan)  # type: ignore[arg-type]
    pipe.close()
    assert tcp.closed and chan.closed and pipe.closed.done()
    waiting = asyncio.ensure_future(pipe.wait_closed())
    await asyncio.sleep(0)
    tcp_side.connection_lost(None)  # the TCP connection flushed and closed
    await asyncio.sleep(0)
    assert not waiting.done(), "the channel's close is not confirmed yet"
    chan_side.connection_lost(None)
    await asyncio.wait_for(waiting, 5)


async def test_a_release_waits_for_the_remote_peers_end_while_its_bytes_come() -> None:
    """A kernel wrote a result and quit: its exit is told before its last bytes are here
    (they come on the channel), and the release waited 2 s at most: on a slow path it cut
    them off (a review's finding). ``drained`` returns once the channel's end of file is
    here, however long that takes while bytes still come."""
    pipe = Pipe()
    tcp, chan = FakeTransport(), FakeTransport()
    pipe.tcp_protocol().connection_made(tcp)  # type: ignore[arg-type]
    side = pipe.channel_session()
    side.connection_made(chan)  # type: ignore[arg-type]
    drained = asyncio.ensure_future(pipe.drained(still_s=30))
    for _ in range(3):
        side.data_received(b"x" * 1000, None)
        await asyncio.sleep(0)
        assert not drained.done()
    side.eof_received()
    await asyncio.wait_for(drained, 5)
    assert b"".join(tcp.written) == b"x" * 3000 and tcp.eof


async def test_a_release_does_not_wait_for_a_peer_whose_bytes_stand_still() -> None:
    """A kernel's child still holds its socket, and nothing comes: the release goes on."""
    pipe = Pipe()
    pipe.tcp_protocol().connection_made(FakeTransport())  # type: ignore[arg-type]
    pipe.channel_session().connection_made(FakeTransport())  # type: ignore[arg-type]
    await asyncio.wait_for(pipe.drained(still_s=0.05), 5)
    assert not pipe.channel_done.done()


async def test_while_moving_waits_as_long_as_the_reading_changes() -> None:
    readings = iter([0, 1, 2, 3, 3])
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    assert not await while_moving(done, lambda: next(readings), 0.01)
    assert next(readings, None) is None  # read until it stood still: five readings
    done.set_result(None)
    assert await while_moving(done, lambda: 0, 30)
