"""One remote host: its persistent SSH connection and the supervisor session on it.

The connection is opened on first use, shared by every launch (one authentication, one key
exchange) and kept open. Concurrent first launches wait for the same connect. A lost connection
is noticed by the supervisor's end of input and by asyncssh's keepalive; the next launch
reconnects. Jump hosts are other ``HostSession`` objects, so a bastion's connection is shared too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import structlog

from relay.errors import RelayError
from relay.settings import HostConfig
from relay.ssh.errors import translate_connect_error
from relay.ssh.supervisor import Supervisor

__all__ = ["Connected", "HostSession"]

JumpGetter = Callable[[str], Awaitable[asyncssh.SSHClientConnection]]


@dataclass(frozen=True, slots=True)
class Connected:
    connection: asyncssh.SSHClientConnection
    supervisor: Supervisor
    since: float


class HostSession:
    def __init__(
        self,
        key: str,
        config: HostConfig,
        *,
        jump: JumpGetter | None = None,
        configured: list[str] | None = None,
        config_source: str = "relay.toml",
    ) -> None:
        self.key = key
        self.config = config
        self._jump = jump
        self._configured = configured or []
        self._config_source = config_source
        self._conn: asyncssh.SSHClientConnection | None = None
        self._since = 0.0
        self._connecting: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._current: Connected | None = None
        self._supervisor_lock = asyncio.Lock()
        self._closing = False
        self._log = structlog.get_logger("relay.host").bind(host=key)

    @property
    def state(self) -> str:
        if self._conn is not None and not self._conn.is_closed():
            return "connected"
        return "connecting" if self._connecting is not None else "disconnected"

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The live connection, connecting (once, shared by concurrent callers) if needed."""
        if self._closing:
            raise RelayError(f"{self.key}: shutting down")
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(
                self._connect(), name=f"connect:{self.key}"
            )
            self._connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(self._connecting)

    def _connect_done(self, task: asyncio.Task[asyncssh.SSHClientConnection]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._conn = task.result()
            self._since = time.time()

    async def ready(self) -> Connected:
        """The live connection and its supervisor session (started once per connection)."""
        current = self._current
        if (
            current is not None
            and not current.supervisor.closed.done()
            and not current.connection.is_closed()
        ):
            return current
        async with self._supervisor_lock:
            conn = await self.connection()
            current = self._current
            if (
                current is None
                or current.connection is not conn
                or current.supervisor.closed.done()
            ):
                if current is not None:
                    current.supervisor.close()
                supervisor = await Supervisor.start(conn, self.key, self.config.connect_timeout_s)
                current = self._current = Connected(conn, supervisor, self._since)
            return current

    def _options(self) -> dict[str, Any]:
        cfg = self.config
        options: dict[str, Any] = {
            "keepalive_interval": cfg.keepalive_interval_s,
            "keepalive_count_max": cfg.keepalive_count_max,
            "connect_timeout": cfg.connect_timeout_s,
            "password_auth": False,  # a daemon cannot ask a person; keys and agent only
            "kbdint_auth": False,
            "agent_forwarding": False,
            "x11_forwarding": False,
            "compression_algs": ("zlib@openssh.com", "zlib") if cfg.compression else None,
            "known_hosts": str(self.known_hosts),
        }
        if cfg.port is not None:
            options["port"] = cfg.port
        if cfg.user is not None:
            options["username"] = cfg.user
        if cfg.identity_files is not None:
            options["client_keys"] = [str(Path(p).expanduser()) for p in cfg.identity_files]
        return options

    @property
    def known_hosts(self) -> Path:
        return Path(self.config.known_hosts or "~/.ssh/known_hosts").expanduser()

    async def _connect(self) -> asyncssh.SSHClientConnection:
        cfg = self.config
        started = time.monotonic()
        options = self._options()
        try:
            if cfg.jump:
                assert self._jump is not None
                options["tunnel"] = await self._jump(cfg.jump)  # shared, kept open
            async with asyncio.timeout(cfg.connect_timeout_s):
                conn = await asyncssh.connect(cfg.hostname, **options)
        except RelayError:
            raise
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            err = translate_connect_error(
                exc,
                alias=self.key,
                host=cfg.hostname,
                port=cfg.port or 22,
                user=cfg.user,
                known_hosts=self.known_hosts,
                configured=self._configured,
                config_source=self._config_source,
                timeout_s=cfg.connect_timeout_s,
            )
            self._log.warning("connect failed", error=err.message)
            raise err from None
        self._log.info("connected", connect_ms=round((time.monotonic() - started) * 1000, 1))
        return conn

    async def aclose(self) -> None:
        """Close the supervisor (its kernels are terminated remotely) and the connection."""
        self._closing = True
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        current, self._current = self._current, None
        if current is not None:
            current.supervisor.close()
            await current.supervisor.wait_closed()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()
