"""A forward's two-channel core: data and message, one connection each, connected when both are.

Both kinds of forward (``relay.ssh.forwards``: callback, ``relay.ssh.exposed``: expose) carry a
link as two single-use listeners, one per channel. This is what they share: each channel's one
connection (its ``Pipe``), the ``connected`` future that is set once both channels are and fails
once, with the first reason, and the wait for both peers to have closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Generic, TypeVar

from relay.ssh.pipe import Pipe
from relay.tasks import retrieved

__all__ = ["CLOSE_WAIT_S", "LinkChannel", "LinkPair"]

# how long a forward's release waits for its connections to be gone; and for what the remote
# peer wrote before it ended, until nothing has moved for so long
CLOSE_WAIT_S = 2.0


class LinkChannel:
    """One channel of a link: ``taken`` once its listener let a connection through (single
    use), ``pipe`` and ``connected_at`` once that connection reached the other side."""

    def __init__(self, role: str) -> None:
        self.role = role  # "data" or "message"
        self.taken = False
        self.pipe: Pipe | None = None
        self.connected_at: float | None = None


C = TypeVar("C", bound=LinkChannel)


class LinkPair(Generic[C]):
    """The data and message channels of one link and whether both are connected."""

    def __init__(self, data: C, message: C) -> None:
        self.channels: tuple[C, C] = (data, message)
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connected.add_done_callback(retrieved)

    def joined(self, ch: C, pipe: Pipe) -> bool:
        """``ch``'s connection reached the other side; True if that made both channels
        connected (once: each channel connects once)."""
        ch.pipe, ch.connected_at = pipe, time.monotonic()
        both = all(c.connected_at is not None for c in self.channels)
        if both and not self.connected.done():
            self.connected.set_result(None)
        return both

    def fail(self, exc: BaseException) -> None:
        """The link cannot be connected: ``connected`` fails with the first reason only."""
        if not self.connected.done():
            self.connected.set_exception(exc)

    async def peers_closed(self) -> None:
        """Return once the channels that were connected have both closed."""
        for ch in self.channels:
            if ch.pipe is not None:
                await ch.pipe.closed

    async def drained(self) -> None:
        """Return once what the remote peers wrote on the connected channels is here (each
        channel's end of file from the host), for as long as it still comes: a kernel that
        wrote a result and quit at once (``Print[big]; Quit[]``) has megabytes on their way
        after its exit is told, and a fixed bound cut them off on a slow path."""
        for ch in self.channels:
            if ch.pipe is not None:
                await ch.pipe.drained(CLOSE_WAIT_S)

    def close_pipes(self) -> None:
        """Close the connected channels."""
        for ch in self.channels:
            if ch.pipe is not None:
                ch.pipe.close()

    async def wait_closed(self) -> None:
        """Return once the closed channels' connections are gone, or after
        ``CLOSE_WAIT_S``: a peer that stopped reading, or a channel on a connection that is
        dead but not yet declared lost, lets go with its connection, not before."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                for ch in self.channels:
                    if ch.pipe is not None:
                        await ch.pipe.wait_closed()

    def abandon(self) -> None:
        """A link not connected by now never will be: ``connected`` is cancelled."""
        if not self.connected.done():
            self.connected.cancel()
