"""A kernel's main link through the host's agent: the callback forward, resumable.

The agent listens on the host's 127.0.0.1 for each channel (data, message), admits the
user's own kernel (checked there, via /proc) and says OPEN; the daemon then connects to the
front end's matching port and the stream carries the bytes both ways (``relay.agent.session``:
numbered, kept until acknowledged, replayed after an outage). It offers what
``relay.kernels`` uses of ``relay.ssh.forwards.CallbackForward``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from relay.agent.session import AgentSession, Stream
from relay.errors import FrontEndUnreachable
from relay.lite.linkname import Endpoint, LinkName
from relay.ssh.guard import PeerGuard, unreachable
from relay.tasks import Flag, retrieved, while_moving

__all__ = ["AgentForward", "FrontEnd", "release"]

# A release waits for what the kernel wrote before it ended for as long as it still comes:
# until nothing has moved for this long (on a 1 MB/s path a kernel's last 8 MiB took 8 s, and
# a fixed 2 s cut them off)
CLOSE_WAIT_S = 2.0


class FrontEnd(asyncio.Protocol):
    """The front end's TCP connection for one stream: bytes to the agent, and back. Made
    with its stream (a callback: we connect), or given it by ``join`` (an expose forward: the
    front end connected, and its reading waits until it is admitted)."""

    def __init__(
        self,
        stream: Stream | None,
        refusal: Callable[[asyncio.Transport], FrontEndUnreachable | None] | None = None,
    ) -> None:
        self._stream = stream
        # relay connected: why the listener it reached may not be given the stream (None: it
        # may), asked before a byte goes either way (``PeerGuard.refusal``)
        self._refusal = refusal
        self.refused: FrontEndUnreachable | None = None
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but offer what it does
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # small MathLink messages must not wait
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._refusal is not None and (refused := self._refusal(transport)) is not None:
            self.refused, self._stream = refused, None
            transport.abort()  # nothing was given to it, nor taken from it
        elif self._stream is not None:
            self._stream.attach(transport)
        else:
            transport.pause_reading()  # not a byte until it is admitted and has a stream

    def join(self, stream: Stream) -> None:
        """Carry this connection on ``stream`` from now on (it was admitted)."""
        assert self.transport is not None
        self._stream = stream
        if self.transport.is_closing():
            stream.send_close()
            return
        stream.attach(self.transport)
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._stream is not None:  # always: reading waits for the stream
            self._stream.send(data)

    def eof_received(self) -> bool:
        if self._stream is not None:
            self._stream.send_eof()
        return True  # the other direction may still carry bytes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stream is not None:
            self._stream.send_close()
        if not self.closed.done():
            self.closed.set_result(None)

    def resume_writing(self) -> None:
        if self._stream is not None:  # the front end reads again: ACK
            self._stream._session._ack_soon(self._stream)


class _Channel:
    def __init__(self, role: str, target: Endpoint, stream: Stream, port: int) -> None:
        self.role = role
        self.target = target
        self.stream = stream
        self.port = port
        self.frontend: FrontEnd | None = None
        self.connected_at: float | None = None
        self.joining: asyncio.Task[None] | None = None  # until joined (a done task is dropped)

    def joined(self, task: asyncio.Task[None]) -> None:
        if self.joining is task:
            self.joining = None


class AgentForward:
    """The agent's two listeners leading back to the front end's data and message ports."""

    def __init__(
        self,
        agent: AgentSession,
        target: LinkName,
        opened: list[tuple[Stream, int]],
        front_end_guard: PeerGuard,
    ) -> None:
        self.target = target
        self._agent = agent
        self._front_end_guard = front_end_guard  # whose listener relay's connection reaches
        (data, dport), (message, mport) = opened
        self._channels = (
            _Channel("data", target.data, data, dport),
            _Channel("message", target.message, message, mport),
        )
        self.name = LinkName.loopback(dport, mport)  # what the kernel uses
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = loop.create_future()
        self.connected.add_done_callback(retrieved)
        self.listeners_gone = Flag()  # the agent closes a listener once it admits
        for ch in self._channels:
            ch.joining = loop.create_task(self._join(ch))
            ch.joining.add_done_callback(ch.joined)

    @classmethod
    async def open(
        cls, agent: AgentSession, target: LinkName, front_end_guard: PeerGuard
    ) -> AgentForward:
        return cls(agent, target, await agent.listen(2), front_end_guard)

    async def _join(self, ch: _Channel) -> None:
        await ch.stream.opened
        link = f"{ch.role} channel of {self.target}"
        frontend = FrontEnd(ch.stream, lambda t: self._front_end_guard.refusal(t, link))
        try:
            # the front end may write the instant it accepts: the stream sends it at once
            await asyncio.get_running_loop().create_connection(
                lambda: frontend, ch.target.host, ch.target.port
            )
        except OSError as exc:
            ch.stream.send_close()
            if not self.connected.done():
                self.connected.set_exception(unreachable(ch.target.host, ch.target.port, link, exc))
            return
        if frontend.refused is not None:
            ch.stream.send_close()
            if not self.connected.done():
                self.connected.set_exception(frontend.refused)
            return
        ch.frontend, ch.connected_at = frontend, time.monotonic()
        if all(c.connected_at is not None for c in self._channels):
            self.listeners_gone.set()
            if not self.connected.done():
                self.connected.set_result(None)

    @property
    def closed_unchecked(self) -> bool:
        """A connection to one of the listeners closed before it could be checked, and was
        refused (``relay.peerowner``: a closing socket is nobody's)."""
        return any(ch.stream.closed_unchecked for ch in self._channels)

    @property
    def ended_because(self) -> str | None:
        """Why the host's agent is gone for us (its window ran out, it could not be
        reached again), if it is."""
        return self._agent.end_reason

    @property
    def ended_unasked(self) -> str | None:
        """``ended_because``, where relay did not tell the agent to end its kernels."""
        return None if self._agent.said_bye else self._agent.end_reason

    async def settled(self) -> None:
        """Return once no admitted connection is still being joined to the front end."""
        for ch in self._channels:
            if ch.stream.opened.done() and ch.joining is not None:
                await asyncio.gather(ch.joining, return_exceptions=True)

    async def listeners_closed(self) -> None:
        """The agent closed each listener as it admitted its kernel."""

    def close_listeners(self) -> None:
        pass

    async def peers_closed(self) -> None:
        """Return once the channels that were connected have both closed (at either end)."""
        for ch in self._channels:
            if ch.frontend is not None:
                await ch.frontend.closed

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for ch in self._channels:
            if ch.frontend is not None and not ch.frontend.closed.done():
                state = "connected" if self._agent.attached else "resuming"
            elif ch.connected_at is not None:
                state = "closed"
            else:
                state = "listening"
            out.append(
                {
                    "role": ch.role,
                    "remote": f"{ch.port}@127.0.0.1",
                    "target": f"{ch.target.host}:{ch.target.port}",
                    "state": state,
                    "unacked": ch.stream.out.unacked,
                }
            )
        return out

    async def aclose(self) -> None:
        """Release both streams: the agent closes the kernel's side, we the front end's. What
        the kernel wrote before it ended is delivered first: the agent's end of input for
        each connected stream is awaited (bounded by CLOSE_WAIT_S: a kernel that is still
        running, or an agent out of reach, cannot hold a release)."""
        joining = [ch.joining for ch in self._channels if ch.joining is not None]
        for task in joining:
            task.cancel()
        await asyncio.gather(*joining, return_exceptions=True)
        await release(self._agent, [(ch.stream, ch.frontend) for ch in self._channels])
        if not self.connected.done():
            self.connected.cancel()


async def release(agent: AgentSession, links: list[tuple[Stream, FrontEnd | None]]) -> None:
    """Release a link's streams, each with its front end's connection if it was made: what
    the kernel wrote before it ended is delivered first (the agent's end of input for each
    connected stream, awaited while its bytes still come in or go on to the front end, until
    they stand still for CLOSE_WAIT_S: a kernel still running, an agent out of reach or a
    front end that reads no more cannot hold a release), then the agent closes its side and
    we the front end's (waited for CLOSE_WAIT_S at most)."""
    for stream, frontend in links:
        if frontend is not None:
            await while_moving(stream.drained, stream.motion, CLOSE_WAIT_S)
    for stream, _ in links:
        agent.drop(stream)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_WAIT_S):
            for _, frontend in links:
                if frontend is not None:
                    await frontend.closed
