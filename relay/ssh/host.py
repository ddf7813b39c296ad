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
import contextvars
import hashlib
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncssh
import structlog

from relay.errors import (
    AuthenticationFailed,
    ConnectFailed,
    RelayError,
    ShuttingDown,
    SSHSetupFailed,
)
from relay.settings import HostConfig
from relay.ssh import hookfile, hostkeys, identity, ignorepad, options, sshconfig
from relay.ssh.errors import host_key_refused, translate_connect_error
from relay.ssh.forwards import SparePool
from relay.ssh.guard import PeerGuard
from relay.ssh.options import ConnectPlan
from relay.ssh.sshconfig import SSHView
from relay.ssh.supervisor import Supervisor
from relay.tasks import TaskSet

__all__ = ["Hold", "HostSession", "Live", "Prompter"]

T = TypeVar("T")
JumpGetter = Callable[[str], Awaitable[asyncssh.SSHClientConnection]]
ATTEMPTS_PER_REQUEST = 3
FAILURES_KEPT = 10
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter in its upper half: attempt 0 -> 0.25-0.5 s."""
    ceiling: float = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
    return ceiling * (0.5 + rng.random() / 2)


Prompter = Callable[[str, str, list[tuple[str, bool]]], Awaitable[list[str]]]
LOGIN_TIMEOUT_S = 600.0  # relay login: a person types passwords and one-time codes


class _Client(asyncssh.SSHClient):
    """Records why a connection ended and whether the server wanted a person to answer. With
    ``ask`` (``relay login``), a person does: password and keyboard-interactive prompts go
    to them; otherwise (every launch) both are declined and noted for the error message."""

    def __init__(self, ask: Prompter | None = None, who: str = "") -> None:
        self.lost: Exception | None = None
        self.opened: asyncssh.SSHClientConnection | None = None  # the transport was made
        self.person_needed: list[str] = []
        self._ask = ask
        self._who = who

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.opened = conn
        ignorepad.drop_padding(conn)  # one packet per packet, not two (see the module)

    def reached(self) -> str:
        """How far a failed attempt got: "none" (no transport), "tcp" (a transport, but no
        SSH version line from the server) or "ssh" (the server said its version)."""
        if self.opened is None:
            return "none"
        return "ssh" if self.opened.get_extra_info("server_version") else "tcp"

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc

    async def password_auth_requested(self) -> str | None:
        if self._ask is None:
            self.person_needed.append("a password")
            return None
        (answer,) = await self._ask("", "", [(f"{self._who}'s password: ", False)])
        return answer

    def kbdint_auth_requested(self) -> str | None:
        if self._ask is None:
            self.person_needed.append("keyboard-interactive (2FA) answers")
            return None
        return ""  # whatever submethods the server has

    async def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str] | None:
        if self._ask is None:
            return None
        if not prompts:  # a message only (e.g. "Authenticated with partial success.")
            if name or instructions:
                await self._ask(name, instructions, [])
            return []
        return await self._ask(name, instructions, list(prompts))


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
        ssh_files: Sequence[str] = sshconfig.DEFAULT_FILES,
        agent: Callable[[], str | None] = lambda: os.environ.get("SSH_AUTH_SOCK"),
    ) -> None:
        self.key = key
        self.base_config = config  # as relay.toml says; ``config`` adds ssh_config's values
        self.config = config
        self.ssh_files: tuple[str, ...] = tuple(ssh_files)
        self.view: SSHView | None = None  # ssh_config's view of the host at the last connect
        self._agent = agent  # the agent socket new connections use (the newest client's)
        self._noted: set[str] = set()
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
        self.retry_at: float | None = None  # while backing off: when the next attempt is made
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
                self._connect_with_retry(),
                name=f"connect:{self.key}",
                context=contextvars.Context(),  # the launch that asked first is not its owner
            )
            self._connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(self._connecting)

    def _connect_done(self, task: asyncio.Task[asyncssh.SSHClientConnection]) -> None:
        self._connecting = None
        if task.cancelled():
            self._set_state("disconnected")
        elif task.exception() is not None:
            self._set_state("failed")

    def _may_retry(self) -> bool:
        """The reconnect limiter: at most ``reconnect_attempts`` automatic retries per
        ``reconnect_window_s``. A request a person made (a launch, ``relay connect``) always
        gets its first attempt, so a host that is back is used at once."""
        now = time.monotonic()
        window = self.config.reconnect_window_s
        while self._attempts and now - self._attempts[0] > window:
            self._attempts.popleft()
        if len(self._attempts) >= self.config.reconnect_attempts:
            return False
        self._attempts.append(now)
        return True

    async def _connect_with_retry(self) -> asyncssh.SSHClientConnection:
        """Attempts until one succeeds, one fails in a way no retry can mend, or the time a
        launch waits (``launch_timeout_s``) would be overrun; each attempt is bounded by
        ConnectTimeout (or connect_timeout_s)."""
        began = time.monotonic()
        deadline = began + self.base_config.launch_timeout_s
        for attempt in range(ATTEMPTS_PER_REQUEST):
            self._set_state("connecting")
            self.retry_at = None
            try:
                conn = await self._connect_once(deadline)
            except RelayError as exc:
                self.last_error = exc.message
                delay = backoff_s(attempt, self._rng)
                if (
                    not exc.retryable
                    or attempt == ATTEMPTS_PER_REQUEST - 1
                    or time.monotonic() + delay >= deadline - 1.0
                    or not self._may_retry()
                ):
                    if attempt > 0:  # each attempt's message says its own time: and in all?
                        exc.message = self.last_error = (
                            f"{exc.message}; {attempt + 1} attempts, "
                            f"{time.monotonic() - began:.1f} s in all (a launch waits at most "
                            f"launch_timeout_s, {self.base_config.launch_timeout_s:g} s)"
                        )
                        exc.args = (exc.message,)
                    raise
                self._set_state("backing-off")
                self.retry_at = time.time() + delay
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

    async def login(self, ask: Prompter) -> bool:
        """Open the connection with a person answering the server's prompts (``relay
        login``); True if it was open already (nothing asked)."""
        if self._closing:
            raise ShuttingDown(f"{self.key}: relay is shutting down")
        if self._connecting is not None:  # a launch is connecting: let it finish or fail
            with contextlib.suppress(RelayError, asyncio.CancelledError):
                await asyncio.shield(self._connecting)
        if self._conn is not None and not self._conn.is_closed():
            return True
        self._set_state("connecting")
        try:
            await self._connect_once(time.monotonic() + LOGIN_TIMEOUT_S, ask=ask)
        except RelayError as exc:
            self.last_error = exc.message
            self._set_state("failed")
            raise
        self._attempts.clear()
        return False

    def reconfigure(self, config: HostConfig) -> None:
        """relay.toml changed: the host's settings are ``config`` from now on, whatever came
        before (a start as an ad-hoc host, connects that failed under the old entry). Launches
        take it at once (kernel, arguments, timeouts, peer_check here); what a connection is
        made with (target, keys, keepalive, ciphers, spares) applies from the next one. The old
        settings' failures no longer stand as the host's error nor count against its retries."""
        if config == self.base_config:
            return
        self.base_config = config
        # ssh_config's values as the last connect resolved them, until the next resolves again
        self.config = config if self.view is None else options.plan(config, self.view).config
        self.local_guard.enabled = config.peer_check == "uid"
        self._attempts.clear()
        if self.state == "failed":
            self._set_state("disconnected")
            self.last_error = None
        self._log.info("host configuration changed; connection settings apply from the next one")

    async def host_key(self) -> dict[str, Any]:
        """The key the host offers now, reached as a connection would reach it, and whether
        the known_hosts files relay consults record it (``relay trust``)."""
        view, connect_plan = self.plan()
        kwargs = await self._through_jump(connect_plan, dict(connect_plan.kwargs))
        try:
            key = await self._offered_key(kwargs)
            if key is None:
                raise ConnectFailed(f"{view.hostname} offered no host key")
            recorded = self._recorded(view, connect_plan)
            state = recorded.state(key)
            if state in ("unknown", "changed") and await self._certified(kwargs, recorded):
                state = "known"  # as a connection finds it: by the certificate it prefers
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            raise self._translate(
                exc, view, connect_plan, connect_plan.config.connect_timeout_s
            ) from None
        if state == "revoked":  # nothing for a person to trust: said as a launch says it
            raise host_key_refused(
                alias=self.key,
                view=view,
                known_hosts=connect_plan.known_hosts,
                recorded=recorded,
                offered=key,
            )
        # (name, port) make the entry (hostkeys.known_as): an alias's port is 22
        name, port = hostkeys.known_as(view)
        where = recorded.where if state == "changed" else None  # what ssh-keygen -R edits
        return {
            "event": "hostkey",
            "host": self.key,
            "name": name,
            "port": port,
            "key": key.export_public_key("openssh").decode().strip(),
            "fingerprint": hostkeys.fingerprint(key),
            "state": state,
            "file": str(where or connect_plan.known_hosts[0]),
        }

    def plan(self) -> tuple[SSHView, ConnectPlan]:
        """What this host is now, by relay.toml and the ssh_config files as they are on disk
        (re-read on every connect, as ssh would)."""
        cfg = self.base_config
        try:
            view = sshconfig.resolve(
                cfg.hostname, port=cfg.port, user=cfg.user, files=self.ssh_files
            )
        except (OSError, ValueError) as exc:
            raise SSHSetupFailed(f"ssh_config is not usable for {self.key}: {exc}") from None
        connect_plan = options.plan(cfg, view)
        self.config, self.view = connect_plan.config, view
        for note in connect_plan.notes:
            if note not in self._noted:
                self._noted.add(note)
                self._log.warning("ssh_config", note=note)
        return view, connect_plan

    async def _connect_once(
        self, deadline: float, ask: Prompter | None = None
    ) -> asyncssh.SSHClientConnection:
        started = time.monotonic()
        view, connect_plan = self.plan()
        cfg = connect_plan.config
        limit = cfg.connect_timeout_s if ask is None else LOGIN_TIMEOUT_S
        timeout_s = max(0.1, min(limit, deadline - started))
        kwargs = dict(connect_plan.kwargs, connect_timeout=timeout_s, login_timeout=timeout_s)
        agent = identity.agent_path(view.get("IdentityAgent"), self._agent())
        if agent is not None:
            kwargs["agent_path"] = agent
        who = f"{view.user}@{view.hostname}"
        client = _Client(ask, who)
        offered: asyncssh.SSHKey | None = None
        recorded: hostkeys.Recorded | None = None
        try:
            recorded = self._recorded(view, connect_plan)
            kwargs["known_hosts"] = recorded.known_hosts()
            if cfg.identity_files is not None:
                kwargs["client_keys"] = await identity.client_keys(
                    cfg.identity_files, host=self.key, agent=agent
                )
                kwargs["ignore_encrypted"] = True
            kwargs = await self._through_jump(connect_plan, kwargs)

            async def attempt() -> asyncssh.SSHClientConnection:
                async with asyncio.timeout(timeout_s):
                    return await asyncssh.connect(
                        cfg.hostname, client_factory=lambda: client, **kwargs
                    )

            try:
                conn = await attempt()
            except asyncssh.HostKeyNotVerifiable:
                if not await self._accept_new(view, connect_plan, recorded, kwargs):
                    raise
                client = _Client(ask, who)  # the key is recorded now: once more, as ssh would
                recorded = self._recorded(view, connect_plan)
                kwargs["known_hosts"] = recorded.known_hosts()
                conn = await attempt()
        except RelayError:
            raise
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            if isinstance(exc, asyncssh.HostKeyNotVerifiable):
                offered = await self._offered(kwargs)
            direct = not (connect_plan.jump or cfg.proxy_command)  # else a tunnel, not TCP
            err = translate_connect_error(
                exc,
                alias=self.key,
                view=view,
                known_hosts=connect_plan.known_hosts,
                configured=self._configured,
                config_source=self._config_source,
                timeout_s=timeout_s,
                offered=offered,
                recorded=recorded,
                elapsed_s=time.monotonic() - started,
                reached=client.reached() if direct else "none",
            )
            if isinstance(err, AuthenticationFailed) and client.person_needed:
                err = AuthenticationFailed(
                    f"{view.user}@{view.hostname} asks for {' and '.join(client.person_needed)} "
                    f"after the keys relay offered, and relay never answers those during a "
                    f"launch: run `relay login {self.key}` in a terminal once, or give relay a "
                    f"key the server accepts on its own (identity_files or ssh-agent)"
                )
            self._log.warning("connect failed", error=err.message)
            raise err from None
        self._conn, self._client = conn, client
        self.connects += 1
        self.last_error = None
        self._set_state("connected")
        self._log.info("connected", connect_ms=round((time.monotonic() - started) * 1000, 1))
        # asyncssh's keepalive (relay.ssh.options.asyncssh_keepalive) ends it after this long
        silent_s = cfg.keepalive_interval_s * cfg.keepalive_count_max
        self._tasks.spawn(self._watch(conn, client, silent_s), name=f"watch:{self.key}")
        return conn

    def _translate(
        self,
        exc: BaseException,
        view: SSHView,
        connect_plan: ConnectPlan,
        timeout_s: float,
        offered: asyncssh.SSHKey | None = None,
        recorded: hostkeys.Recorded | None = None,
    ) -> RelayError:
        return translate_connect_error(
            exc,
            alias=self.key,
            view=view,
            known_hosts=connect_plan.known_hosts,
            configured=self._configured,
            config_source=self._config_source,
            timeout_s=timeout_s,
            offered=offered,
            recorded=recorded,
        )

    def _recorded(self, view: SSHView, connect_plan: ConnectPlan) -> hostkeys.Recorded:
        """What the known_hosts files record for the host, looked up as ssh looks it up
        (``hostkeys``): the one look-up connections, ``relay trust`` and ``relay check`` use.
        Raises OSError for a file that exists but cannot be read."""
        recorded = hostkeys.lookup(connect_plan.known_hosts, *hostkeys.known_as(view))
        note = ", ".join(recorded.skipped)
        if note and note not in self._noted:
            self._noted.add(note)
            self._log.warning("known_hosts lines skipped: ssh cannot read them either", lines=note)
        return recorded

    async def _accept_new(
        self,
        view: SSHView,
        connect_plan: ConnectPlan,
        recorded: hostkeys.Recorded,
        kwargs: dict[str, Any],
    ) -> bool:
        """``StrictHostKeyChecking accept-new``, as ssh does it: a host with no key recorded
        gets the one it offers recorded (never a host whose recorded key differs, nor a
        revoked key)."""
        (name, port), files = hostkeys.known_as(view), connect_plan.known_hosts
        if view.strict_host_key_checking != "accept-new" or recorded.has_entry:
            return False
        try:
            key = await self._offered_key(kwargs)
        except (OSError, asyncssh.Error, TimeoutError, ValueError):
            return False
        if key is None or recorded.state(key) != "unknown":
            return False
        try:
            line = await asyncio.to_thread(hostkeys.record, files[0], name, port, key)
        except OSError as exc:  # then the launch says the key is unknown, and where
            self._log.warning("cannot record a new host key", file=str(files[0]), error=str(exc))
            return False
        self._log.warning(
            "recorded a new host key (StrictHostKeyChecking accept-new)",
            file=str(files[0]),
            fingerprint=hostkeys.fingerprint(key),
            entry=line.split(" ", 1)[0],
        )
        return True

    async def _offered(self, kwargs: dict[str, Any]) -> asyncssh.SSHKey | None:
        """The key the server offers, for the message (best effort): its fingerprint, and
        whether it is unknown, changed or revoked."""
        try:
            return await self._offered_key(kwargs)
        except (OSError, asyncssh.Error, TimeoutError, ValueError):
            return None

    async def _offered_key(self, kwargs: dict[str, Any]) -> asyncssh.SSHKey | None:
        """The host key the server offers, reached as ``kwargs`` reach it (bounded by the
        connect timeout); the errors of a connection attempt are the caller's."""
        async with asyncio.timeout(self.config.connect_timeout_s):
            return await hostkeys.offered_key(self.base_config.hostname, kwargs)

    async def _certified(self, kwargs: dict[str, Any], recorded: hostkeys.Recorded) -> bool:
        """Whether the server's host certificate is from a CA recorded for it (bounded by the
        connect timeout)."""
        async with asyncio.timeout(self.config.connect_timeout_s):
            return await hostkeys.certified(self.base_config.hostname, kwargs, recorded)

    async def connect_kwargs(
        self, connect_plan: ConnectPlan, view: SSHView | None = None
    ) -> dict[str, Any]:
        """``connect_plan``'s options for ``asyncssh.connect`` with the host keys recorded for
        the host (looked up as a connection looks them up, for ``view``, by default the last
        ``plan()``'s) and, behind a jump host, the tunnel: the host reached as its connection
        reaches it."""
        view = view or self.view
        assert view is not None, "plan() first"
        recorded = self._recorded(view, connect_plan)
        kwargs = dict(connect_plan.kwargs, known_hosts=recorded.known_hosts())
        return await self._through_jump(connect_plan, kwargs)

    async def _through_jump(
        self, connect_plan: ConnectPlan, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """``kwargs`` with the jump host's connection (shared, kept open) as the tunnel."""
        if connect_plan.jump:
            assert self._jump is not None
            kwargs["tunnel"] = await self._jump(connect_plan.jump)
        return kwargs

    async def _watch(
        self, conn: asyncssh.SSHClientConnection, client: _Client, silent_s: float
    ) -> None:
        await conn.wait_closed()
        if conn is not self._conn:
            return
        self._conn = None
        self._set_state("disconnected")
        if not self._closing and not self._idle_closing:
            reason = str(client.lost) if client.lost else "closed by the server"
            fields: dict[str, Any] = {}
            if "keepalive" in reason:  # declared after this long without a word from the server
                fields["silent_s"] = silent_s
                reason += f" for {silent_s:g} s"
            self.last_error = f"connection lost: {reason}"
            self._log.warning("connection lost", reason=reason, **fields)

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
                if self.config.kernel and self.config.slurm is None:
                    # and the host's kernel looked for ahead, so that not even the first
                    # compute Run waits for its pid (a Slurm host's kernels run on its nodes)
                    supervisor.check_kernel(self.config.kernel)
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
            except (RelayError, TimeoutError, asyncssh.Error, OSError):
                return  # the connection ended: _watch says so, once

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Work on this host that may outlive the request that began it (a failed launch's
        release on a connection that does not answer): owned here, ended by ``aclose``."""
        return self._tasks.spawn(coro, name=name)

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
            "hostname": self.view.hostname if self.view is not None else self.config.hostname,
            "port": self.view.port if self.view is not None else self.config.port,
            "user": self.view.user if self.view is not None else self.config.user,
            "state": self.state,
            "since": self.since,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "rtt_at": self.rtt_at,
            "holds": self._holds,
            "connects": self.connects,
            "last_error": self.last_error,
            "retry_at": self.retry_at if self.state == "backing-off" else None,
            "failures": list(self.failures),
            "peer_check": {
                "remote": self._current.guard.state if self._current is not None else None,
                "local": self.local_guard.state,
                "refused": self.local_guard.refusals.total
                + (self._current.guard.refusals.total if self._current is not None else 0),
            },
        }
