"""A controller kernel's control channel to the daemon (the protocol is ``relay.hook``).

A remote listener on the kernel's 127.0.0.1 (server-chosen port), served inside the daemon:
each connection carries one request, authenticated by the single-use token chain. A refused
token is logged and answered ``ERR -``; another local user on the remote host can reach the
port but not the token, which lives only in the kernel's environment (``/proc/PID/environ``
is readable by its owner alone).

The links a kernel opens here belong to it and are released when it exits. A kernel may only
ask for callbacks to loopback addresses or to its own front end's host, so it cannot make the
daemon connect anywhere else on the front end's network.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any, Protocol

import asyncssh
import structlog

from relay import hook
from relay.errors import RelayError
from relay.linkname import LinkName, LinkNameError
from relay.ssh.exposed import LocalLinkForward
from relay.ssh.forwards import LinkForward, forwarding_refused
from relay.tasks import TaskSet

__all__ = ["HookServer", "hold_until_connected"]

REQUEST_TIMEOUT_S = 10.0


class _Forward(Protocol):
    connected: asyncio.Future[None]

    def close_listeners(self) -> None: ...

    async def aclose(self) -> None: ...


async def hold_until_connected(fwd: _Forward, timeout_s: float) -> None:
    """Keep a forward's listeners until both channels connect, at most ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(fwd.connected)
    except (TimeoutError, ConnectionError, RelayError, asyncio.CancelledError):
        await fwd.aclose()  # nobody came, or it failed: release everything
        return
    fwd.close_listeners()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


class HookServer:
    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        *,
        host: str,
        kernel_id: str,
        frontend_hosts: set[str],
        timeout_s: float,
    ) -> None:
        self._conn = conn
        self._host = host
        self._frontend_hosts = frontend_hosts
        self._timeout_s = timeout_s
        self._chain = hook.TokenChain()
        self.first_token = self._chain.current
        self._listener: asyncssh.SSHListener | None = None
        self._forwards: list[LinkForward] = []
        self._exposed: dict[str, LocalLinkForward] = {}
        self._tasks = TaskSet()
        self.refused = 0
        self.port = 0
        self._log = structlog.get_logger("relay.hook").bind(host=host, kernel=kernel_id)

    @classmethod
    async def open(cls, conn: asyncssh.SSHClientConnection, **kwargs: Any) -> HookServer:
        self = cls(conn, **kwargs)
        try:
            self._listener = await conn.start_server(self._handler, "127.0.0.1", 0)
        except asyncssh.ChannelListenError:
            raise forwarding_refused(self._host) from None
        self.port = self._listener.get_port()
        return self

    def _handler(self, _orig_host: str, _orig_port: int) -> Any:
        return self._serve

    async def _serve(
        self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                raw = await reader.readline()
            reply = await self._answer(raw.decode("utf-8", "replace"))
            writer.write(reply.encode())
            await writer.drain()
        except (TimeoutError, asyncssh.Error, OSError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: str) -> str:
        try:
            req = hook.parse_request(line)
        except hook.HookError as exc:
            self.refused += 1
            self._log.warning("hook request refused", reason=str(exc))
            return hook.format_reply(False, None, str(exc))
        nxt = self._chain.spend(req.token)
        if nxt is None:
            self.refused += 1
            self._log.warning("hook token refused (wrong, reused or missing)", op=req.op)
            return hook.format_reply(False, None, "token refused")
        try:
            result = await self._dispatch(req)
        except (RelayError, LinkNameError, ValueError, asyncssh.Error, OSError) as exc:
            self._log.warning("hook request failed", op=req.op, error=str(exc))
            return hook.format_reply(False, nxt, str(exc))
        self._log.info("hook request", op=req.op, argument=req.argument, result=result)
        return hook.format_reply(True, nxt, result)

    async def _dispatch(self, req: hook.Request) -> str:
        if req.op == "callback":
            target = LinkName.parse(req.argument)
            for ep in (target.data, target.message):
                if not (_is_loopback(ep.host) or ep.host in self._frontend_hosts):
                    raise ValueError(
                        f"callback to {ep.host} refused: only loopback or the "
                        f"front end's own address"
                    )
            fwd = await LinkForward.open(self._conn, target, self._host)
            self._forwards.append(fwd)
            self._tasks.spawn(hold_until_connected(fwd, self._timeout_s), name="hook-callback")
            assert fwd.remote_name is not None
            return str(fwd.remote_name)
        if req.op == "listen-pair":
            local = await LocalLinkForward.same_ports(self._conn)
            assert local.local_name is not None
            self._exposed[str(local.local_name)] = local
            self._tasks.spawn(hold_until_connected(local, self._timeout_s), name="hook-listen")
            return str(local.local_name)
        released = self._exposed.pop(req.argument, None)
        if released is None:
            raise ValueError(f"no pair {req.argument} to release")
        await released.aclose()
        return "released"

    @property
    def callbacks(self) -> list[LinkForward]:
        return list(self._forwards)

    def snapshot(self) -> list[dict[str, Any]]:
        links: list[dict[str, Any]] = [
            {"kind": "callback", "channels": f.snapshot()} for f in self._forwards
        ]
        links += [{"kind": "listen-pair", "channels": e.snapshot()} for e in self._exposed.values()]
        return links

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        await self._tasks.aclose()
        for fwd in self._forwards:
            await fwd.aclose()
        for exposed in self._exposed.values():
            await exposed.aclose()
        self._forwards.clear()
        self._exposed.clear()
