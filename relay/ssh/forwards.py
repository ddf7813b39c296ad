"""A link's two remote forwards: single-use listeners on the remote host's 127.0.0.1.

For each link relay asks the SSH server for two listeners on ``127.0.0.1`` port 0, so the
server picks free ports (never the front end's numbers, never a collision with another user or
with an old session that still holds a port). Each listener accepts exactly one connection,
which is carried to the front end's matching endpoint; any further connection is refused. As
soon as both channels are connected the listeners are cancelled, so nothing else on the remote
host can connect to them later.

The data path is asyncssh's own protocol-level forwarder (``forward_connection``): bytes are
never parsed or copied into Python-level buffers beyond what asyncssh does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncssh

from relay.errors import ForwardRefused, FrontEndUnreachable
from relay.linkname import Endpoint, LinkName

__all__ = ["LinkForward", "forwarding_refused"]

LISTEN_HOST = "127.0.0.1"


def forwarding_refused(host: str) -> ForwardRefused:
    return ForwardRefused(
        f"the SSH server on {host} refused remote port forwarding (its sshd_config probably "
        f"has AllowTcpForwarding no or local); relay needs remote forwards for the kernel to "
        f"connect back"
    )


class _Channel:
    """One endpoint of a link: its remote listener and the one connection it carries."""

    def __init__(self, role: str, target: Endpoint) -> None:
        self.role = role
        self.target = target
        self.listener: asyncssh.SSHListener | None = None
        self.taken = False
        self.forwarder: Any = None
        self.connected_at: float | None = None


class LinkForward:
    """Remote listeners R1, R2 leading back to the front end's data and message ports."""

    def __init__(self, conn: asyncssh.SSHClientConnection, target: LinkName) -> None:
        self._conn = conn
        self.target = target
        self._channels = (_Channel("data", target.data), _Channel("message", target.message))
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connected.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.opened_at = time.monotonic()
        self.remote_name: LinkName | None = None
        # set once the server confirmed both listeners cancelled (after both channels connect)
        self.listeners_gone = asyncio.Event()
        self._cancelling: asyncio.Future[None] | None = None

    @classmethod
    async def open(
        cls, conn: asyncssh.SSHClientConnection, target: LinkName, host: str
    ) -> LinkForward:
        self = cls(conn, target)
        results = await asyncio.gather(
            *(conn.create_server(self._factory(ch), LISTEN_HOST, 0) for ch in self._channels),
            return_exceptions=True,
        )
        for ch, result in zip(self._channels, results, strict=True):
            if isinstance(result, asyncssh.SSHListener):
                ch.listener = result
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.aclose()
            if all(isinstance(f, asyncssh.ChannelListenError) for f in failures):
                raise forwarding_refused(host)
            raise failures[0]
        data, message = (ch.listener.get_port() for ch in self._channels if ch.listener)
        self.remote_name = target.rewritten(data, message)
        return self

    def _factory(self, ch: _Channel) -> Any:
        def session_factory(_orig_host: str, _orig_port: int) -> Any:
            if ch.taken:
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                    "relay: this link endpoint is already connected",
                )
            ch.taken = True
            return self._connect(ch)

        return session_factory

    async def _connect(self, ch: _Channel) -> Any:
        try:
            forwarder = await self._conn.forward_connection(ch.target.host, ch.target.port)
        except asyncssh.ChannelOpenError as exc:
            if not self.connected.done():
                self.connected.set_exception(
                    FrontEndUnreachable(
                        f"the front end is not listening on {ch.target.host}:{ch.target.port} "
                        f"({ch.role} channel of {self.target}): {exc.reason}; was the launch "
                        f"cancelled in the front end?"
                    )
                )
            raise
        ch.forwarder = forwarder
        ch.connected_at = time.monotonic()
        if all(c.connected_at is not None for c in self._channels):
            self._cancelling = asyncio.ensure_future(self.listeners_closed())
            if not self.connected.done():
                self.connected.set_result(None)
        return forwarder

    def close_listeners(self) -> None:
        """Cancel both remote listeners; connected channels stay up."""
        for ch in self._channels:
            if ch.listener is not None:
                ch.listener.close()

    async def listeners_closed(self) -> None:
        """Return once the server has confirmed both listeners are cancelled."""
        self.close_listeners()
        for ch in self._channels:
            if ch.listener is not None:
                await ch.listener.wait_closed()
        self.listeners_gone.set()

    def snapshot(self) -> list[dict[str, Any]]:
        remote = self.remote_name
        out = []
        for ch, ep in zip(
            self._channels, (remote.data, remote.message) if remote else (None, None), strict=True
        ):
            if ch.forwarder is not None:
                state = "connected"
            elif ch.connected_at is not None:
                state = "closed"
            else:
                state = "listening" if ch.listener is not None else "closed"
            out.append(
                {
                    "role": ch.role,
                    "remote": str(ep) if ep else None,
                    "target": f"{ch.target.host}:{ch.target.port}",
                    "state": state,
                }
            )
        return out

    async def aclose(self) -> None:
        """Release everything: listeners and connected channels."""
        self.close_listeners()
        if self._cancelling is not None:
            await asyncio.gather(self._cancelling, return_exceptions=True)
        for ch in self._channels:
            if ch.forwarder is not None:
                ch.forwarder.close()
                ch.forwarder = None
        for ch in self._channels:
            if ch.listener is not None:
                await ch.listener.wait_closed()
                ch.listener = None
        if not self.connected.done():
            self.connected.cancel()
