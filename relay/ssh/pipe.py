"""A link channel's byte pipe: one TCP connection joined to one SSH channel.

Every forward relay makes, in either direction, carries its bytes through a ``Pipe``:

- remote listeners (``relay.ssh.forwards``): the kernel connects on the remote host, sshd opens
  a channel to the daemon, the daemon connects to the front end's port;
- local listeners (``relay.ssh.exposed``): the front end connects on its own machine, the
  daemon opens a ``direct-tcpip`` channel to the remote host.

Why relay has its own instead of asyncssh's ``SSHForwarder``: neither side of a MathLink link
is documented to speak first, and a front end may write the instant it accepts a connection
(docs/topology.md §1). asyncssh's forwarder attaches its TCP side only after
``create_connection`` returns and drops whatever arrived before, and writes to a channel that
is not open yet vanish too. A ``Pipe`` keeps what arrives before the other side exists and
writes it, in order, the moment that side attaches.

Rules, for both directions alike:
- bytes arrive exactly once, in order; nothing is parsed or reframed;
- what waits for the other side is bounded: above ``HIGH_WATER`` the early side stops
  reading (TCP and the SSH window push back on the sender) until the bytes are written;
- a full side pauses reading on the other (``pause_writing`` -> ``pause_reading``);
- end of file passes through as a half-close, so each direction ends on its own;
- when one side closes, the other is closed after what it was already given is flushed
  (``transport.close()`` and ``SSHChannel.close()`` both flush before closing).

The ends are duck-typed on purpose: an ``asyncio.Transport`` (stdlib or uvloop, which are
different classes) and an ``SSHTCPChannel`` share ``write``, ``write_eof``, ``pause_reading``,
``resume_reading``, ``close`` and ``get_write_buffer_size``; nothing here checks their types.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Protocol

import asyncssh

from relay.tasks import while_moving

__all__ = ["HIGH_WATER", "Pipe"]

HIGH_WATER = 1 << 20  # bytes kept for a side that is not there yet before reading pauses


class _Writable(Protocol):
    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def get_write_buffer_size(self) -> int: ...


class _End:
    """One side of the pipe as the other side sees it: where to write, what waits."""

    __slots__ = ("closed", "eof", "name", "pending", "pending_bytes", "taken", "transport")

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: _Writable | None = None
        self.pending: list[bytes] = []  # written before this side attached
        self.pending_bytes = 0
        self.eof = False  # the other side ended its output: write_eof once attached
        self.closed = False  # this side is gone (or must close once flushed)
        self.taken = 0  # bytes that came from this side


class Pipe:
    """Joins a TCP transport and an SSH channel; either may attach first."""

    def __init__(self, on_close: Any = None) -> None:
        self.tcp = _End("tcp")
        self.channel = _End("channel")
        self._eofs = 0
        self._reading_paused_for: set[str] = set()
        self._on_close = on_close
        # both ends closed (by either side, or by ``close``): the link channel is over
        self.closed = asyncio.get_running_loop().create_future()
        # the channel's side will send no more (its end of file, or it closed): what the
        # remote peer wrote is all here (``drained``)
        self.channel_done = asyncio.get_running_loop().create_future()
        self._transports = 0  # made and not yet lost
        self._released = asyncio.Event()  # no transport left
        self._released.set()

    # -- the two protocol objects --------------------------------------------------------
    def tcp_protocol(self) -> _TCPSide:
        """For ``loop.create_connection`` or a server's protocol factory."""
        return _TCPSide(self)

    def channel_session(self) -> _ChannelSide:
        """For asyncssh's session factories (``create_connection``, remote listeners)."""
        return _ChannelSide(self)

    def _other(self, end: _End) -> _End:
        return self.channel if end is self.tcp else self.tcp

    # -- events from either side -----------------------------------------------------------
    def attach(self, end: _End, transport: _Writable) -> None:
        if end.closed:  # closed before it attached: nothing will come from it
            transport.close()
            return
        end.transport = transport
        pending, end.pending, end.pending_bytes = end.pending, [], 0
        for data in pending:
            transport.write(data)
        if end.eof:
            self._write_eof(end)
        source = self._other(end)
        if end.name in self._reading_paused_for:
            self._reading_paused_for.discard(end.name)
            if source.transport is not None and not source.closed:
                source.transport.resume_reading()
        if source.closed:  # the other side already went away: flush, then close
            self._close_end(end)

    def received(self, source: _End, data: bytes) -> None:
        source.taken += len(data)
        dest = self._other(source)
        if dest.transport is not None:
            dest.transport.write(data)
            return
        if dest.closed:
            return  # the other side is gone for good: like a socket, later bytes are lost
        dest.pending.append(data)
        dest.pending_bytes += len(data)
        if dest.pending_bytes > HIGH_WATER and dest.name not in self._reading_paused_for:
            self._reading_paused_for.add(dest.name)
            if source.transport is not None:
                source.transport.pause_reading()

    def eof_received(self, source: _End) -> None:
        self._ended(source)
        dest = self._other(source)
        dest.eof = True
        self._eofs += 1
        if dest.transport is not None:
            self._write_eof(dest)
        if self._eofs == 2:  # both directions ended: nothing more can flow
            self.close()

    def lost(self, end: _End) -> None:
        """One side closed or failed: close the other once it has what it was given."""
        self._ended(end)
        end.closed = True
        end.transport = None
        other = self._other(end)
        if other.transport is not None:
            self._close_end(other)
        elif other.closed:
            self._finish()
        # else: the other side has not attached yet; ``attach`` flushes and closes it

    def pause(self, full: _End) -> None:
        source = self._other(full)
        if source.transport is not None:
            source.transport.pause_reading()

    def resume(self, full: _End) -> None:
        source = self._other(full)
        if source.transport is not None and full.name not in self._reading_paused_for:
            source.transport.resume_reading()

    # -- closing -------------------------------------------------------------------------
    def _write_eof(self, end: _End) -> None:
        assert end.transport is not None
        with contextlib.suppress(OSError, RuntimeError, asyncssh.Error):
            end.transport.write_eof()

    def _close_end(self, end: _End) -> None:
        transport, end.transport = end.transport, None
        end.closed = True
        if transport is not None:
            transport.close()
        if self.tcp.closed and self.channel.closed:
            self._finish()

    def _finish(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
            if self._on_close is not None:
                self._on_close()

    def _ended(self, source: _End) -> None:
        if source is self.channel and not self.channel_done.done():
            self.channel_done.set_result(None)

    def motion(self) -> tuple[int, int]:
        """What came from the channel's side, and what of it still waits to be written to the
        TCP side: a reading that changes while the remote peer's bytes move on."""
        waiting = self.tcp.pending_bytes
        if self.tcp.transport is not None:
            with contextlib.suppress(Exception):
                waiting += self.tcp.transport.get_write_buffer_size()
        return self.channel.taken, waiting

    async def drained(self, still_s: float) -> None:
        """Return once the channel's side has ended (what the remote peer wrote is all here
        and on its way), or once nothing has moved for ``still_s``: a peer still running, or
        a TCP side that reads no more, cannot hold it."""
        await while_moving(self.channel_done, self.motion, still_s)

    def close(self) -> None:
        """Close both sides (each flushes what it was already given)."""
        for end in (self.tcp, self.channel):
            if end.transport is not None:
                self._close_end(end)
            end.closed = True
        self._ended(self.channel)
        self._finish()

    async def wait_closed(self) -> None:
        """Return once the pipe is closed and both transports are gone (the TCP connection
        flushed and closed, the SSH channel's close confirmed)."""
        await self.closed
        await self._released.wait()

    def _made(self) -> None:
        self._transports += 1
        self._released.clear()

    def _gone(self) -> None:
        self._transports -= 1
        if not self._transports:
            self._released.set()


class _Side:
    """What both sides do alike: end of file, loss and back-pressure go to the pipe."""

    _pipe: Pipe
    _end: _End

    def eof_received(self) -> bool:
        self._pipe.eof_received(self._end)
        return True  # keep the connection open: the other direction may still carry bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self._pipe.lost(self._end)
        self._pipe._gone()

    def pause_writing(self) -> None:
        self._pipe.pause(self._end)

    def resume_writing(self) -> None:
        self._pipe.resume(self._end)


class _TCPSide(_Side, asyncio.Protocol):
    """The TCP connection's protocol: feeds the pipe, and takes bytes from the channel."""

    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe
        self._end = pipe.tcp

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # small MathLink messages must not wait
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pipe._made()
        self._pipe.attach(self._end, transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._pipe.received(self._end, data)


class _ChannelSide(_Side, asyncssh.SSHTCPSession[bytes]):
    """The SSH channel's session: feeds the pipe, and takes bytes from the TCP side."""

    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe
        self._end = pipe.channel

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._pipe._made()
        self._pipe.attach(self._end, chan)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._pipe.received(self._end, data)
