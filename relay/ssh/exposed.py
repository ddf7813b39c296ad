"""A link exposed on the front end's side: local listeners tunnelling to the remote host.

The other direction from ``relay.ssh.forwards``. Two listeners on the front end's 127.0.0.1,
ports chosen by the OS; each accepts exactly one connection and carries it through a
``direct-tcpip`` channel to an endpoint on the remote host's 127.0.0.1, then stops listening.

- ``LocalLinkForward.same_ports(...)``: each listener leads to the *same* port number on the
  remote host (the old Dynamic method, ``listen-pair`` in ``relay.hook``): the kernel listens on
  ``L1@127.0.0.1,L2@127.0.0.1`` and the front end connects to that very name on its machine.
- ``LocalLinkForward.to(...)``: the listeners lead to a given remote link name (``expose``).

The bridge between a local TCP connection and an SSH channel is written against asyncssh's
public ``create_connection``: data is handed from one side to the other as it arrives, with
flow control (a full side pauses reading on the other).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncssh

from relay.linkname import Endpoint, LinkName

__all__ = ["LocalLinkForward"]

LISTEN_HOST = "127.0.0.1"


class _ChannelSide(asyncssh.SSHTCPSession[bytes]):
    """The SSH channel's end of a bridge: what arrives goes to the local transport."""

    def __init__(self, local: asyncio.Transport) -> None:
        self._local = local

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._local.write(data)

    def eof_received(self) -> bool:
        if self._local.can_write_eof():
            self._local.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._local.close()

    def pause_writing(self) -> None:
        self._local.pause_reading()

    def resume_writing(self) -> None:
        self._local.resume_reading()


class _LocalSide(asyncio.Protocol):
    """The local TCP connection's end: opens the channel, then relays in both directions."""

    def __init__(self, owner: _Listener) -> None:
        self._owner = owner
        self._transport: asyncio.Transport | None = None
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._pending: list[bytes] = []
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._owner.take(self):
            transport.close()  # single use: a second connection is refused
            return
        transport.pause_reading()
        self._owner.tasks.add(asyncio.ensure_future(self._open()))

    async def _open(self) -> None:
        assert self._transport is not None
        transport = self._transport
        try:
            chan, _ = await self._owner.conn.create_connection(
                lambda: _ChannelSide(transport), "127.0.0.1", self._owner.dest.port
            )
        except (asyncssh.Error, OSError) as exc:
            self._owner.failed(exc)
            transport.close()
            return
        self._chan = chan
        self._owner.connected()
        transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._chan is not None:
            self._chan.write(data)

    def eof_received(self) -> bool:
        if self._chan is not None:
            self._chan.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._chan is not None:
            self._chan.close()

    def pause_writing(self) -> None:
        if self._chan is not None:
            self._chan.pause_reading()

    def resume_writing(self) -> None:
        if self._chan is not None:
            self._chan.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _Listener:
    def __init__(self, owner: LocalLinkForward, role: str) -> None:
        self.owner = owner
        self.role = role
        self.conn = owner.conn
        self.server: asyncio.Server | None = None
        self.dest = Endpoint(1, "127.0.0.1")
        self.side: _LocalSide | None = None
        self.connected_at: float | None = None
        self.tasks: set[asyncio.Future[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def protocol(self) -> _LocalSide:
        return _LocalSide(self)

    def take(self, side: _LocalSide) -> bool:
        if self.side is not None:
            return False
        self.side = side
        return True

    def connected(self) -> None:
        self.connected_at = time.monotonic()
        if self.server is not None:
            self.server.close()  # nothing else may connect through this listener
        self.owner.check_connected()

    def failed(self, exc: BaseException) -> None:
        self.owner.fail(
            f"the {self.role} channel could not reach port {self.dest.port} on the "
            f"remote host: {exc}"
        )


class LocalLinkForward:
    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn
        self._listeners = (_Listener(self, "data"), _Listener(self, "message"))
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connected.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.local_name: LinkName | None = None

    @classmethod
    async def same_ports(cls, conn: asyncssh.SSHClientConnection) -> LocalLinkForward:
        self = cls(conn)
        await self._listen()
        for listener in self._listeners:
            listener.dest = Endpoint(listener.port, "127.0.0.1")
        return self

    @classmethod
    async def to(cls, conn: asyncssh.SSHClientConnection, remote: LinkName) -> LocalLinkForward:
        self = cls(conn)
        await self._listen()
        self._listeners[0].dest, self._listeners[1].dest = remote.data, remote.message
        return self

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            listener.server = await loop.create_server(listener.protocol, LISTEN_HOST, 0)
        data, message = (lst.port for lst in self._listeners)
        self.local_name = LinkName(Endpoint(data, LISTEN_HOST), Endpoint(message, LISTEN_HOST))

    def check_connected(self) -> None:
        done = all(lst.connected_at is not None for lst in self._listeners)
        if done and not self.connected.done():
            self.connected.set_result(None)

    def fail(self, message: str) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(message))

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "role": lst.role,
                "local": f"{lst.port if lst.server else '-'}@127.0.0.1",
                "remote": str(lst.dest),
                "state": "connected" if lst.connected_at else "listening",
            }
            for lst in self._listeners
        ]

    def close_listeners(self) -> None:
        for lst in self._listeners:
            if lst.server is not None:
                lst.server.close()

    async def aclose(self) -> None:
        self.close_listeners()
        for lst in self._listeners:
            if lst.side is not None:
                lst.side.close()
            for task in lst.tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*lst.tasks, return_exceptions=True)
        if not self.connected.done():
            self.connected.cancel()
