"""A link the kernel listens on, reached from the front end's machine through the host's
agent: the expose forward (``relay.ssh.exposed``), resumable.

- ``AgentExpose.mirrored``: Dynamic's old method (``listen-pair`` in ``relay.lite.hook``): the
  kernel listens on ``L1@127.0.0.1,L2@127.0.0.1`` on the host and the front end connects to
  that very name on its own machine.
- ``AgentExpose.to``: a requested forward (the control socket's ``forward`` request,
  direction ``expose``) to a given link name on the host's loopback.

Two listeners on the front end's 127.0.0.1 (ports chosen by the OS, the
kernel then told the same numbers) each admit one connection of the user's own (the
daemon's ``PeerGuard``: no byte is read before), and the agent connects to the kernel's
listener on the host (only one of the user's own: ``connect`` in docs/agent.md). The bytes
then go as any link's do through the agent: numbered, kept until acknowledged, replayed
after an outage.
"""

from __future__ import annotations

import asyncio
from typing import Any

from relay.agent.forward import FrontEnd, release
from relay.agent.session import AgentSession, Stream
from relay.errors import ConnectFailed
from relay.lite.linkname import LOOPBACK, Endpoint, LinkName
from relay.ssh.guard import PeerGuard
from relay.tasks import TaskSet, retrieved

__all__ = ["AgentExpose"]


class _Admitting(FrontEnd):
    """A connection to one of the listeners: not read until the guard has admitted it."""

    def __init__(self, listener: _Listener) -> None:
        super().__init__(None)
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener.owner.tasks.spawn(
            self._listener.admit(self), name=f"agent-expose-admit:{self._listener.role}"
        )


class _Listener:
    """One of the two listeners on the front end's machine, and the connection it took."""

    def __init__(self, owner: AgentExpose, role: str) -> None:
        self.owner = owner
        self.role = role
        self.server: asyncio.Server | None = None
        self.frontend: FrontEnd | None = None
        self.stream: Stream | None = None
        self.port = 0  # the listener's, kept once it is closed
        self.dest = 0  # the port on the host's 127.0.0.1 it leads to

    def protocol(self) -> FrontEnd:
        return _Admitting(self)

    async def admit(self, frontend: FrontEnd) -> None:
        transport = frontend.transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        client_host, client_port = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        link = f"{self.role} of {self.owner.name}"
        admitted = self.frontend is None and await self.owner.guard.admit(
            client_host, client_port, self.port, link
        )
        if not admitted or self.frontend is not None:  # a stranger, or the real one was first
            transport.abort()
            return
        self.frontend = frontend
        if self.server is not None:
            self.server.close()  # single use: nothing else may connect through it
        try:
            self.stream = self.owner.agent.connect(self.dest)
        except ConnectFailed as exc:  # the agent ended meanwhile (its window, a stop)
            transport.abort()
            self.owner.failed(exc)
            return
        frontend.join(self.stream)  # what the front end wrote already waits in the agent
        try:
            await self.stream.opened
        except Exception as exc:  # the agent said why it could not connect
            self.owner.failed(exc)
            return
        self.owner.opened()


class AgentExpose:
    def __init__(self, agent: AgentSession, guard: PeerGuard) -> None:
        self.agent = agent
        self.guard = guard
        self.tasks = TaskSet()
        self._listeners = (_Listener(self, "data"), _Listener(self, "message"))
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connected.add_done_callback(retrieved)
        self._name: LinkName | None = None

    @classmethod
    async def mirrored(cls, agent: AgentSession, guard: PeerGuard) -> AgentExpose:
        """Listeners here whose port numbers the kernel is to listen on there."""
        self = await cls(agent, guard)._listen()
        for lst in self._listeners:
            lst.dest = lst.port
        return self

    @classmethod
    async def to(cls, agent: AgentSession, remote: LinkName, guard: PeerGuard) -> AgentExpose:
        """Listeners here leading to ``remote`` (both ends on the host's loopback)."""
        self = await cls(agent, guard)._listen()
        self._listeners[0].dest, self._listeners[1].dest = remote.data.port, remote.message.port
        return self

    async def _listen(self) -> AgentExpose:
        self.guard.require()
        loop = asyncio.get_running_loop()
        try:
            for lst in self._listeners:
                lst.server = await loop.create_server(lst.protocol, LOOPBACK, 0)
                lst.port = int(lst.server.sockets[0].getsockname()[1])
        except BaseException:
            await self.aclose()
            raise
        data, message = (lst.port for lst in self._listeners)
        self._name = LinkName.loopback(data, message)
        return self

    @property
    def name(self) -> LinkName:
        """What the front end connects to on its machine, and the kernel listens on there."""
        assert self._name is not None, "not listening yet"
        return self._name

    def opened(self) -> None:
        if (
            all(
                lst.stream is not None
                and lst.stream.opened.done()
                and not lst.stream.opened.cancelled()
                for lst in self._listeners
            )
            and not self.connected.done()
        ):
            self.connected.set_result(None)

    def failed(self, exc: BaseException) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc)

    def close_listeners(self) -> None:
        for lst in self._listeners:
            if lst.server is not None:
                lst.server.close()

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for lst in self._listeners:
            if lst.frontend is None:
                state = "listening"
            elif lst.frontend.closed.done():
                state = "closed"
            else:
                state = "connected" if self.agent.attached else "resuming"
            out.append(
                {
                    "role": lst.role,
                    "local": str(Endpoint(lst.port, LOOPBACK)) if lst.server else f"-@{LOOPBACK}",
                    "remote": f"{lst.dest}@127.0.0.1",
                    "state": state,
                    "unacked": lst.stream.out.unacked if lst.stream is not None else 0,
                }
            )
        return out

    async def peers_closed(self) -> None:
        """Return once the connections that were made have both closed (at either end)."""
        for lst in self._listeners:
            if lst.frontend is not None:
                await lst.frontend.closed

    async def aclose(self) -> None:
        """Release both (``relay.agent.forward.release``)."""
        self.close_listeners()
        await self.tasks.aclose()
        for lst in self._listeners:
            if lst.server is not None:
                await lst.server.wait_closed()
        await release(
            self.agent,
            [(lst.stream, lst.frontend) for lst in self._listeners if lst.stream is not None],
        )
        if not self.connected.done():
            self.connected.cancel()
