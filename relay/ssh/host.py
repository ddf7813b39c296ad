"""One remote host: its persistent SSH connection and the supervisor session on it.

Connection life:
- Opened on first use, shared by every launch (one authentication, one key exchange) and kept
  open. Concurrent first launches wait for the same connect (single flight).
- Keepalive is on (asyncssh ships with it off): a dead connection is closed after
  ``keepalive_interval_s * keepalive_count_max``. The loss is logged with its reason; the
  supervisor session ends with it, which fails every waiting launch and controller at once.
- The next request reconnects. Network failures are retried with exponential backoff and jitter,
  ``ATTEMPTS_PER_REQUEST`` per request and at most ``reconnect_attempts`` per
  ``reconnect_window_s``. Authentication failures, unknown or changed host keys and a server
  that asks for a password or a one-time code are never retried: a person must act.
- With ``idle_timeout_s`` > 0, a connection with no kernels for that long is closed and
  reopened on demand.
- Forwards always ask for port 0, so a reconnect never collides with ports an old, silently
  dead session may still hold on the server.
- The supervisor's ``ping`` measures the round-trip time every keepalive interval.

Jump hosts are other ``HostSession`` objects, so a bastion's connection is shared too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import structlog

from relay.errors import (
    AuthenticationFailed,
    ConnectFailed,
    RelayError,
    ShuttingDown,
)
from relay.settings import HostConfig
from relay.ssh import hookfile
from relay.ssh.errors import translate_connect_error
from relay.ssh.forwards import SparePool
from relay.ssh.guard import PeerGuard
from relay.ssh.supervisor import Supervisor
from relay.tasks import TaskSet

__all__ = ["Hold", "HostSession", "Live"]

JumpGetter = Callable[[str], Awaitable[asyncssh.SSHClientConnection]]
ATTEMPTS_PER_REQUEST = 3
FAILURES_KEPT = 10
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter in its upper half: attempt 0 -> 0.25-0.5 s."""
    ceiling: float = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
    return ceiling * (0.5 + rng.random() / 2)


class _Client(asyncssh.SSHClient):
    """Records why a connection ended and whether the server wanted a person to answer."""

    def __init__(self) -> None:
        self.lost: Exception | None = None
        self.person_needed: list[str] = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc

    def password_auth_requested(self) -> None:
        self.person_needed.append("a password")  # declined: a daemon never asks a person

    def kbdint_auth_requested(self) -> None:
        self.person_needed.append("keyboard-interactive (2FA) answers")


class Hold:
    """A user of a host's connection (a kernel, a launch under way, a requested forward):
    while any hold is out, the connection is not closed as idle. ``release`` is idempotent."""

    def __init__(self, host: HostSession) -> None:
        self._host: HostSession | None = host

    def release(self) -> None:
        host, self._host = self._host, None
        if host is not None:
            host._unhold()


@dataclass(frozen=True, slots=True)
class Live:
    """A host's live connection and what runs on it: the supervisor session, the spare
    listeners and the peer guard. One per connection; replaced when it is reopened."""

    connection: asyncssh.SSHClientConnection
    supervisor: Supervisor
    pool: SparePool
    guard: PeerGuard  # who may connect to this connection's remote listeners
    # kernel paths this connection's supervisor has started (a pid came back): a compute
    # launch of one of them is answered without waiting for the pid (relay.kernels)
    kernels_started: set[str] = field(default_factory=set)


class HostSession:
    def __init__(
        self,
        key: str,
        config: HostConfig,
        *,
        tag: str,
        jump: JumpGetter | None = None,
        configured: list[str] | None = None,
        config_source: str = "relay.toml",
    ) -> None:
        self.key = key
        self.config = config
        # Who this host session is to the remote host: the daemon and the host entry, so two
        # names for one account (two [hosts] entries, two aliases) never take each other's
        # supervisor for a stale one of their own.
        self.tag = hashlib.sha256(f"{tag}:{key}".encode()).hexdigest()[:16]
        self._jump = jump
        self._configured = configured or []
        self._config_source = config_source
        self._conn: asyncssh.SSHClientConnection | None = None
        self._client: _Client | None = None
        self._connecting: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._current: Live | None = None
        self._supervisor_lock = asyncio.Lock()
        self._closing = False
        self._attempts: collections.deque[float] = collections.deque()
        self._rng = random.Random()  # noqa: S311 (jitter, not secrets)
        self._tasks = TaskSet()
        self._holds = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self.state = "disconnected"
        self.since = time.time()
        self.last_error: str | None = None
        # compute kernels that failed after their shim had its answer, newest last
        self.failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=FAILURES_KEPT)
        self.rtt_ms: float | None = None
        self.rtt_at: float | None = None
        self.connects = 0
        self._pings = 0
        self._idle_closing = False
        self._init_file: tuple[asyncssh.SSHClientConnection, asyncio.Future[str]] | None = None
        self._hook = hookfile.HookFile.packaged()
        self._log = structlog.get_logger("relay.host").bind(host=key)
        # who may connect to the listeners relay opens on this machine for the host's links
        self.local_guard = PeerGuard.local(key, enabled=config.peer_check == "uid")

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()

    # -- the connection ----------------------------------------------------------------------
    async def connection(self) -> asyncssh.SSHClientConnection:
        """The live connection, connecting (once, shared by concurrent callers) if needed."""
        if self._closing:
            raise ShuttingDown(f"{self.key}: relay is shutting down")
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(
                self._connect_with_retry(), name=f"connect:{self.key}"
            )
            self._connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(self._connecting)

    def _connect_done(self, task: asyncio.Task[asyncssh.SSHClientConnection]) -> None:
        self._connecting = None
        if task.cancelled():
            self._set_state("disconnected")
        elif task.exception() is not None:
            self._set_state("failed")

    def _admit(self) -> None:
        """At most ``reconnect_attempts`` connect attempts per ``reconnect_window_s``."""
        now = time.monotonic()
        window = self.config.reconnect_window_s
        while self._attempts and now - self._attempts[0] > window:
            self._attempts.popleft()
        if len(self._attempts) >= self.config.reconnect_attempts:
            wait = window - (now - self._attempts[0])
            raise ConnectFailed(
                f"not connecting to {self.key} again yet: {len(self._attempts)} attempts in the "
                f"last {window:g} s failed (last: {self.last_error}); next attempt allowed in "
                f"{wait:.0f} s"
            )
        self._attempts.append(now)

    async def _connect_with_retry(self) -> asyncssh.SSHClientConnection:
        for attempt in range(ATTEMPTS_PER_REQUEST):
            self._admit()
            self._set_state("connecting")
            try:
                conn = await self._connect_once()
            except RelayError as exc:
                self.last_error = exc.message
                if not exc.retryable or attempt == ATTEMPTS_PER_REQUEST - 1:
                    raise
                delay = backoff_s(attempt, self._rng)
                self._set_state("backing-off")
                self._log.warning(
                    "connect failed; retrying",
                    error=exc.message,
                    attempt=attempt + 1,
                    delay_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
            else:
                self._attempts.clear()
                return conn
        raise AssertionError("unreachable")  # pragma: no cover

    def _options(self) -> dict[str, Any]:
        cfg = self.config
        options: dict[str, Any] = {
            "keepalive_interval": cfg.keepalive_interval_s,
            "keepalive_count_max": cfg.keepalive_count_max,
            "connect_timeout": cfg.connect_timeout_s,
            # Offered so that a server demanding them is recognised; _Client declines both.
            "password_auth": True,
            "kbdint_auth": True,
            "agent_forwarding": False,
            "x11_forwarding": False,
            "compression_algs": ("zlib@openssh.com", "zlib") if cfg.compression else None,
            "known_hosts": str(self.known_hosts),
            "encryption_algs": cfg.ciphers,
        }
        if cfg.port is not None:
            options["port"] = cfg.port
        if cfg.user is not None:
            options["username"] = cfg.user
        if cfg.proxy_command is not None:
            options["proxy_command"] = cfg.proxy_command
        if cfg.identity_files is not None:
            options["client_keys"] = [str(Path(p).expanduser()) for p in cfg.identity_files]
        return options

    @property
    def known_hosts(self) -> Path:
        return Path(self.config.known_hosts or "~/.ssh/known_hosts").expanduser()

    async def _connect_once(self) -> asyncssh.SSHClientConnection:
        cfg = self.config
        started = time.monotonic()
        options = self._options()
        client = _Client()
        try:
            if cfg.jump:
                assert self._jump is not None
                options["tunnel"] = await self._jump(cfg.jump)  # shared, kept open
            async with asyncio.timeout(cfg.connect_timeout_s):
                conn = await asyncssh.connect(
                    cfg.hostname, client_factory=lambda: client, **options
                )
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
            if isinstance(err, AuthenticationFailed) and client.person_needed:
                err = AuthenticationFailed(
                    f"{self.key} asks for {' and '.join(client.person_needed)} after the keys "
                    f"relay offered, and relay never answers those silently: give relay a key "
                    f"the server accepts on its own (identity_files or ssh-agent), then retry"
                )
            self._log.warning("connect failed", error=err.message)
            raise err from None
        self._conn, self._client = conn, client
        self.connects += 1
        self.last_error = None
        self._set_state("connected")
        self._log.info("connected", connect_ms=round((time.monotonic() - started) * 1000, 1))
        self._tasks.spawn(self._watch(conn, client), name=f"watch:{self.key}")
        return conn

    async def _watch(self, conn: asyncssh.SSHClientConnection, client: _Client) -> None:
        await conn.wait_closed()
        if conn is not self._conn:
            return
        self._conn = None
        self._set_state("disconnected")
        if not self._closing and not self._idle_closing:
            reason = str(client.lost) if client.lost else "closed by the server"
            self.last_error = f"connection lost: {reason}"
            self._log.warning("connection lost", reason=reason)

    # -- the supervisor ----------------------------------------------------------------------
    async def live(self) -> Live:
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
                if current is not None:  # a dead connection's: closed and awaited
                    await current.pool.aclose()
                    current.supervisor.close()
                    await current.supervisor.wait_closed()
                supervisor = await Supervisor.start(
                    conn,
                    self.key,
                    self.config.connect_timeout_s,
                    self.tag,
                    end_stale=self.config.end_stale_sessions,
                    # A live session is pinged every keepalive interval; the daemon declares
                    # its connection dead after interval x count without an answer, which is
                    # when a new supervisor comes. So that long without a ping is stale.
                    stale_after_s=max(
                        1,
                        math.ceil(
                            self.config.keepalive_interval_s * self.config.keepalive_count_max
                        ),
                    ),
                )
                pool = SparePool(conn, self.config.spare_forwards, self.key)
                guard = PeerGuard.remote(
                    self.key,
                    supervisor.uid,
                    supervisor.owner,
                    can_tell=supervisor.owner_check,
                    enabled=self.config.peer_check == "uid",
                )
                current = self._current = Live(conn, supervisor, pool, guard)
                pool.refill()  # forwards allocated ahead: launches spend no round trip on them
                if self.config.dynamic:  # and the kernel hook installed ahead too
                    self._tasks.spawn(self._prefetch_init_file(conn), name=f"init:{self.key}")
                await self._ping(current)  # the first RTT, and proof the session answers
                self._tasks.spawn(self._measure_rtt(current), name=f"rtt:{self.key}")
            return current

    async def _ping(self, current: Live) -> None:
        self._pings += 1
        started = time.monotonic()
        async with asyncio.timeout(
            self.config.keepalive_interval_s * self.config.keepalive_count_max
        ):
            await current.supervisor.ping(f"p{self._pings}")
        self.rtt_ms = (time.monotonic() - started) * 1000
        self.rtt_at = time.time()

    async def _measure_rtt(self, current: Live) -> None:
        """Every keepalive interval, time a ping through the supervisor session."""
        while not current.supervisor.closed.done():
            await asyncio.sleep(self.config.keepalive_interval_s)
            try:
                await self._ping(current)
            except (RelayError, TimeoutError):
                return

    # -- relay's kernel hook file ------------------------------------------------------------
    async def _prefetch_init_file(self, conn: asyncssh.SSHClientConnection) -> None:
        with contextlib.suppress(RelayError):  # a launch that needs it will report it
            await self.init_file(conn)

    async def init_file(self, conn: asyncssh.SSHClientConnection) -> str:
        """Install RelayKernelInit.wl once per connection (single flight; a failure is tried
        again by the next launch); its remote path."""
        if (
            self._init_file is None
            or self._init_file[0] is not conn
            or (self._init_file[1].done() and self._init_file[1].exception() is not None)
        ):
            task = self._tasks.spawn(self._install_init_file(conn), name=f"hook:{self.key}")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # awaited by launches
            self._init_file = (conn, task)
        return await asyncio.shield(self._init_file[1])

    async def _install_init_file(self, conn: asyncssh.SSHClientConnection) -> str:
        path = await hookfile.install(conn, self.key, self._hook)
        self._log.info("kernel hook in place", path=path)
        return path

    # -- idle close --------------------------------------------------------------------------
    def hold(self) -> Hold:
        """Someone uses this host (a kernel, a launch, a requested forward): no idle close
        until the returned hold is released."""
        self._holds += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        return Hold(self)

    def _unhold(self) -> None:
        self._holds -= 1
        idle = self.config.idle_timeout_s
        if self._holds == 0 and idle > 0 and not self._closing:
            self._idle_timer = asyncio.get_running_loop().call_later(idle, self._idle)

    @property
    def holds(self) -> int:
        """How many kernels, launches and requested forwards use the connection now."""
        return self._holds

    def _idle(self) -> None:
        self._idle_timer = None
        if self._holds == 0 and self._conn is not None:
            self._log.info("closing idle connection", idle_s=self.config.idle_timeout_s)
            self._tasks.spawn(self._close_connection(idle=True), name=f"idle-close:{self.key}")

    async def _close_connection(self, *, idle: bool = False) -> None:
        self._idle_closing = idle
        try:
            current, self._current = self._current, None
            if current is not None:
                await current.pool.aclose()
                current.supervisor.close()
                await current.supervisor.wait_closed()
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
                await conn.wait_closed()
            self._set_state("idle" if idle else "disconnected")
        finally:
            self._idle_closing = False

    def abort(self) -> None:
        """Drop the connection at once (shutdown past its grace): sshd ends the session, and
        the supervisor, seeing end of input, its kernels."""
        self._closing = True
        if self._conn is not None:
            self._conn.abort()

    async def aclose(self) -> None:
        """Close the supervisor (its kernels are terminated remotely) and the connection."""
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        await self._close_connection()
        await self._tasks.aclose()

    def record_failure(self, kernel_id: str, kernel: str, reason: str) -> None:
        """A kernel that failed after its shim had answered: kept for ``relay status``."""
        self.failures.append(
            {"at": time.time(), "kernel_id": kernel_id, "kernel": kernel, "reason": reason}
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.key,
            "hostname": self.config.hostname,
            "state": self.state,
            "since": self.since,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "rtt_at": self.rtt_at,
            "holds": self._holds,
            "connects": self.connects,
            "last_error": self.last_error,
            "failures": list(self.failures),
            "peer_check": {
                "remote": self._current.guard.state if self._current is not None else None,
                "local": self.local_guard.state,
                "refused": self.local_guard.refusals.total
                + (self._current.guard.refusals.total if self._current is not None else 0),
            },
        }
