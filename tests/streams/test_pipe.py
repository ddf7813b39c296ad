"""relay.ssh.pipe in memory: bytes before either side attaches, EOF, close, back-pressure."""

from __future__ import annotations

import asyncio

import pytest

from relay.ssh.pipe import HIGH_WATER, Pipe


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
