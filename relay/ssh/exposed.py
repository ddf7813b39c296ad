"""Expose forwards: a link that listens on the host, reached from the front end's machine.

The other kind of forward from ``relay.ssh.forwards`` (which says how the two are named).
Two listeners on the front end's 127.0.0.1, ports chosen by the OS; each carries exactly one
connection through a ``direct-tcpip`` channel to an endpoint on the remote host's 127.0.0.1,
then stops listening.

- ``ExposeForward.mirrored(...)``: each listener leads to the *same* port number on the
  remote host (the old Dynamic method, ``listen-pair`` in ``relay.lite.hook``): the kernel
  listens on ``L1@127.0.0.1,L2@127.0.0.1`` and the front end connects to that very name on its
  machine.
- ``ExposeForward.to(...)``: the listeners lead to a given remote link name.

A connection is carried only if the process that made it runs as the daemon's user
(``relay.ssh.guard``); any other is closed unread and the listener waits on. Bytes go through
a ``relay.ssh.pipe.Pipe``: what the front end writes before the SSH channel is open waits there.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh

from relay.lite.linkname import LOOPBACK, Endpoint, LinkName
from relay.ssh.guard import PeerGuard
from relay.ssh.linkpair import LinkChannel, LinkPair
from relay.ssh.pipe import Pipe
from relay.tasks import TaskSet

__all__ = ["ExposeForward"]


class _Accepted(asyncio.Protocol):
    """A connection to one of the listeners: held in a pipe until it is admitted and the
    SSH channel is open, or closed unread if it is not the user's."""

    def __init__(self, listener: _Listener) -> None:
        self._listener = listener
        self._pipe = Pipe()
        self._tcp = self._pipe.tcp_protocol()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp.connection_made(transport)
        peer = transport.get_extra_info("peername")
        client_host, client_port = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        self._listener.tasks.spawn(
            self._listener.admit(self._pipe, client_host, client_port),
            name=f"expose-admit:{client_port}",
        )

    def data_received(self, data: bytes) -> None:
        self._tcp.data_received(data)

    def eof_received(self) -> bool:
        return self._tcp.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._tcp.connection_lost(exc)

    def pause_writing(self) -> None:
        self._tcp.pause_writing()

    def resume_writing(self) -> None:
        self._tcp.resume_writing()


class _Listener(LinkChannel):
    def __init__(self, owner: ExposeForward, role: str) -> None:
        super().__init__(role)
        self.owner = owner
        self.server: asyncio.Server | None = None
        self.dest = Endpoint(1, LOOPBACK)
        self.tasks = owner.tasks

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def protocol(self) -> _Accepted:
        return _Accepted(self)

    async def admit(self, pipe: Pipe, client_host: str, client_port: int) -> None:
        link = f"{self.role} of {self.owner.name}"
        guard = self.owner.guard
        if self.taken or not await guard.admit(client_host, client_port, self.port, link):
            pipe.close()  # single use, and only the user's own processes
            return
        if self.taken:  # the real one won the race while this one was checked
            pipe.close()
            return
        self.taken = True
        if self.server is not None:
            self.server.close()  # nothing else may connect through this listener
        try:
            await self.owner.conn.create_connection(pipe.channel_session, LOOPBACK, self.dest.port)
        except (asyncssh.Error, OSError) as exc:
            pipe.close()
            self.owner.pair.fail(
                ConnectionError(
                    f"the {self.role} channel could not reach port {self.dest.port} on the "
                    f"remote host: {exc}"
                )
            )
            return
        self.owner.pair.joined(self, pipe)


class ExposeForward:
    def __init__(self, conn: asyncssh.SSHClientConnection, guard: PeerGuard) -> None:
        self.conn = conn
        self.guard = guard
        self.tasks = TaskSet()
        self.pair = LinkPair(_Listener(self, "data"), _Listener(self, "message"))
        self._listeners = self.pair.channels
        self.connected = self.pair.connected
        self._name: LinkName | None = None

    @classmethod
    async def mirrored(cls, conn: asyncssh.SSHClientConnection, guard: PeerGuard) -> ExposeForward:
        self = cls(conn, guard)
        await self._listen()
        for listener in self._listeners:
            listener.dest = Endpoint(listener.port, LOOPBACK)
        return self

    @classmethod
    async def to(
        cls, conn: asyncssh.SSHClientConnection, remote: LinkName, guard: PeerGuard
    ) -> ExposeForward:
        self = cls(conn, guard)
        await self._listen()
        self._listeners[0].dest, self._listeners[1].dest = remote.data, remote.message
        return self

    async def _listen(self) -> None:
        self.guard.require()
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            listener.server = await loop.create_server(listener.protocol, LOOPBACK, 0)
        data, message = (lst.port for lst in self._listeners)
        self._name = LinkName.loopback(data, message)

    @property
    def name(self) -> LinkName:
        """What the front end connects to, on its own machine."""
        assert self._name is not None, "not listening yet"
        return self._name

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "role": lst.role,
                "local": str(Endpoint(lst.port, LOOPBACK)) if lst.server else f"-@{LOOPBACK}",
                "remote": str(lst.dest),
                "state": "connected" if lst.connected_at else "listening",
            }
            for lst in self._listeners
        ]

    def close_listeners(self) -> None:
        for lst in self._listeners:
            if lst.server is not None:
                lst.server.close()

    async def peers_closed(self) -> None:
        """Return once the channels that were connected have both closed (at either end)."""
        await self.pair.peers_closed()

    async def aclose(self) -> None:
        self.close_listeners()
        await self.tasks.aclose()
        await self.pair.drained()
        self.pair.close_pipes()
        for lst in self._listeners:
            if lst.server is not None:
                await lst.server.wait_closed()
        await self.pair.wait_closed()
        self.pair.abandon()
