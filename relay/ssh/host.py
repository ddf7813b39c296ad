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

A ``HostSession`` composes the pieces, each in its own module: how the host is reached
(``relay.ssh.connector``: plan, attempts, retries, login, host keys), what runs on a connection
(``relay.ssh.live``: supervisor, spares, guard, RTT), who holds it (``relay.ssh.holds``) and
the kernel hook file (``relay.ssh.hookfile.Installer``). It owns the connection itself: one at a
time, opened once for concurrent callers, watched, closed in one place.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import hashlib
import os
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import asyncssh
import structlog

from relay import wake
from relay.agent import start as agent_start
from relay.agent.session import AgentGone, AgentSession
from relay.clock import duration, moment
from relay.errors import (
    ConnectFailed,
    ConnectionLost,
    LoginNeeded,
    NotBack,
    RelayError,
    ShuttingDown,
)
from relay.log import RateLimited
from relay.peerowner import CLOSING, GONE, UNKNOWN
from relay.settings import HostConfig
from relay.ssh import hookfile, sshconfig
from relay.ssh.connector import (
    BACKOFF_CAP_S,
    ConnectionStatus,
    Connector,
    JumpGetter,
    Prompter,
    _Client,
    backoff_s,
)
from relay.ssh.guard import STRANGER, UNCHECKED, WHY, PeerGuard
from relay.ssh.holds import Hold, Holds
from relay.ssh.live import Live, RttMeter, stale_after_s
from relay.ssh.options import ConnectPlan, asyncssh_keepalive
from relay.ssh.sshconfig import SSHView
from relay.ssh.supervisor import Supervisor
from relay.tasks import TaskSet

# backoff_s and BACKOFF_CAP_S: the retry schedule, tested through here
__all__ = [
    "BACKOFF_CAP_S",
    "Hold",
    "HostSession",
    "Live",
    "Prompter",
    "backoff_s",
    "close_in_order",
]

T = TypeVar("T")
FAILURES_KEPT = 10
# why relay's agent could not check a connection it closed, by its ``refused`` line's mark
AGENT_UNCHECKED = {
    "c": WHY[CLOSING],
    "-": WHY[GONE],
    "?": "not checked: relay's agent is out of open files there (ulimit -n)",
}


BYE_CONFIRM_S = 2.0  # how long a shutdown past its grace waits for an agent's answer
BYE_WAIT_MAX_S = 10.0  # a stop waits this long at most for one still heard from
# the log event of an idle period that ran out while the connection was down
IDLE_WITH_NO_CONNECTION = "idle period over with no connection to close"
# Resuming, a launch that follows one that waited its launch_timeout_s in vain within this
# long (the Parallel package's next Run) fails at once (``connection_by``)
IN_VAIN_FOLLOWERS_S = 5.0
# Resuming, a connect attempt not done in this long is joined by another (Connector._hedged):
# the path came back, but the attempt made while it was dead may never finish. A handshake is
# a few round trips (HANDSHAKE_RTTS, at the last RTT measured) and the server's key exchange.
RESUME_HEDGE_S = 3.0
HANDSHAKE_RTTS = 10
# an agent found gone this soon after a wake from longer than its window ended its kernels
# as the window ran out, not killed (``_reattach``)
WOKE_RECENTLY_S = 60.0
# Woken (relay.wake), a resumable connection is pinged: no answer in this long (or ten round
# trips) and it is declared lost, not after keepalive's interval x count.
WAKE_PROBE_S = 3.0
LOGIN_WAIT_CHECK_S = 10.0  # a resume waiting for relay login looks at the wall clock this often


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
        self.status = ConnectionStatus()
        self.connector = Connector(
            key,
            config,
            status=self.status,
            jump=jump,
            configured=configured,
            config_source=config_source,
            ssh_files=ssh_files,
            agent=agent,
        )
        # Who this host session is to the remote host: the daemon and the host entry, so two
        # names for one account (two [hosts] entries, two aliases) never take each other's
        # supervisor for a stale one of their own.
        self.tag = hashlib.sha256(f"{tag}:{key}".encode()).hexdigest()[:16]
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connecting: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._connect_waiters = 0  # callers awaiting ``_connecting`` (``connection``)
        self._let_go: set[asyncio.Task[asyncssh.SSHClientConnection]] = set()  # winding down
        self._current: Live | None = None
        # the host's agent (docs/agent.md), once started: it outlives connections
        self.agent: AgentSession | None = None
        self._agent_supervisor: Supervisor | None = None
        self.agent_unavailable: str | None = None  # why kernels here end with the connection
        self.agent_ran = False  # an agent was attached here: the next connection starts one
        # a connection ran the old path here (supervisor.sh): one of them that died silently
        # may have left its session and kernels, which the agent does not end. Said by the
        # agent's start (AgentInfo.supervised: its record on the host), this daemon's or a
        # predecessor's before a relay restart (a new-user pass's finding); set again by a
        # sweep that failed
        self._supervised = False
        self._resuming: asyncio.Task[None] | None = None
        # a resume the server wants a person for (2FA) waits on this for ``relay login``
        self._login_wanted: asyncio.Future[None] | None = None
        self._probing = False  # a ping after a wake is on its way (``woke``)
        # the last wake (``woke``): when, on the steady clock, and after how long away; and
        # the last tick (``check_address``), which a suspend holds back until after waking
        self.woke_at, self.slept_s = float("-inf"), 0.0
        self.ticked_at = wake.steady()
        # resuming, when a launch last waited its launch_timeout_s for the connection in vain
        # (``connection_by``: the launches right after it fail at once)
        self._waited_in_vain: float | None = None
        self._declared_lost: str | None = None  # why we dropped the connection ourselves
        # a wake's probe of a bare connection (a jump host's) has tightened its keepalive:
        # a keepalive loss is then this (``_probe_keepalive``), not keepalive's own bound
        self._probe_bound: str | None = None
        self._rng = random.Random()  # noqa: S311 (jitter, not secrets)
        guard_log = structlog.get_logger("relay.guard").bind(host=key, side="remote", via="agent")
        self.agent_refusals = RateLimited(guard_log, STRANGER)
        # what the agent closed for it could not tell whose it was (a socket that closed
        # first, out of files there): not said as another user's, which sends its reader
        # after a stranger who is not there
        self.agent_unchecked = RateLimited(guard_log, UNCHECKED)
        self._supervisor_lock = asyncio.Lock()
        self._generations = agent_start.Generations()  # the agent's starts, numbered
        self._closing = False
        self._idle_closing = False
        self.asked_at = time.time()  # when a request last asked the daemon for this host
        self._tasks = TaskSet()
        self._holds = Holds(lambda: self.config.idle_timeout_s, self._idle, self._free)
        self.rtt = RttMeter()
        self._hook = hookfile.Installer(key, self._tasks)
        # compute kernels that failed after their shim had its answer, newest last
        self.failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=FAILURES_KEPT)
        self._log = structlog.get_logger("relay.host").bind(host=key)
        # who may connect to the listeners relay opens on this machine for the host's links
        self.local_guard = PeerGuard.local(key, enabled=config.peer_check == "uid")

    # -- what the connector knows --------------------------------------------------------------
    @property
    def config(self) -> HostConfig:
        """relay.toml's entry with ssh_config's values as the last connect resolved them."""
        return self.connector.config

    @property
    def base_config(self) -> HostConfig:
        """relay.toml's entry as it says."""
        return self.connector.base_config

    @property
    def view(self) -> SSHView | None:
        """ssh_config's view of the host at the last connect."""
        return self.connector.view

    @property
    def via(self) -> str | None:
        """The jump host (a ProxyJump, a Slurm login node) the connection goes through."""
        return self.connector.via

    @property
    def state(self) -> str:
        return self.status.state

    @property
    def resumes(self) -> bool:
        """Its kernels outlive the connection: an agent is attached, or being resumed."""
        return self.agent is not None and not self.agent.ended.done()

    @property
    def last_error(self) -> str | None:
        return self.status.last_error

    @property
    def connects(self) -> int:
        return self.status.connects

    async def plan(self) -> tuple[SSHView, ConnectPlan]:
        """What this host is now, by relay.toml and the ssh_config files as they are on disk."""
        return await self.connector.plan()

    async def connect_kwargs(
        self, connect_plan: ConnectPlan, view: SSHView | None = None
    ) -> dict[str, Any]:
        """``connect_plan``'s options for ``asyncssh.connect`` (``Connector.connect_kwargs``)."""
        return await self.connector.connect_kwargs(connect_plan, view)

    async def host_key(self) -> dict[str, Any]:
        """The key the host offers now, and whether it is known (``relay trust``)."""
        return await self.connector.host_key()

    def reconfigure(self, config: HostConfig) -> str | None:
        """relay.toml changed: the host's settings are ``config`` from now on, whatever came
        before (a start as an ad-hoc host, connects that failed under the old entry). Launches
        take it at once (kernel, arguments, timeouts, peer_check here); what a connection is
        made with (target, keys, keepalive, ciphers, spares) applies from the next one. The old
        settings' failures no longer stand as the host's error nor count against its retries.

        Returns a line for ``relay reload`` where a new ``resume_window_s`` does not reach
        the running kernels now, as a person raising it for a weekend would expect."""
        if not self.connector.reconfigure(config):
            return None
        self.local_guard.enabled = config.peer_check == "uid"
        if self.status.state == "failed":
            self.status.set("disconnected")
            self.status.last_error = None
        self._log.info("host configuration changed; connection settings apply from the next one")
        window_s = config.resume_window_s
        agent = self.agent
        if agent is not None and not agent.ended.done():
            # the kernels running here wait that long too; while resuming the agent cannot be
            # told: the window it has stands until the connection is back (a resume counts
            # down that one), and a window given back to it is no change at all
            had = agent.window_next if agent.window_next is not None else agent.window_s
            told = agent.set_window(window_s)
            if window_s == had:
                return None
            if told or agent.window_next is None:
                self._log.info("resume_window_s for the running kernels", window_s=window_s)
                return None
            self._log.info(
                "resume_window_s for the running kernels once the connection is back",
                window_s=window_s,
            )
            return (
                f"{self.key}: resuming: its kernels take resume_window_s = {window_s:g} s once "
                f"the connection is back; until then the window they had "
                f"({agent.window_s:g} s) counts down"
            )
        if window_s > 0 and self.on_old_path:
            if not self._holds:
                self._renew_for_the_agent()
                return (
                    f"{self.key}: its connection was made with resume_window_s = 0 and carries "
                    f"no kernel: closed, so that kernels wait {window_s:g} s from the next "
                    f"launch"
                )
            return (
                f"{self.key}: its connection was made with resume_window_s = 0, so the kernels "
                f"launched on it end with it; it is closed once they have ended, and kernels "
                f"wait {window_s:g} s from its next connection"
            )
        return None

    @property
    def on_old_path(self) -> bool:
        """The live connection carries its kernels on the old path because resume_window_s
        was 0 when it was made: they end with it, whatever relay.toml says now. Never a
        Slurm host's: its kernels are its compute nodes'."""
        current, conn = self._current, self._conn
        return (
            self.config.slurm is None
            and self.agent_unavailable == agent_start.WINDOW_ZERO
            and current is not None
            and current.agent is None
            and current.connection is conn
            and conn is not None
            and not conn.is_closed()
        )

    @property
    def kernels_waiting(self) -> bool:
        """The connection was lost and the agent is not attached again yet: the kernels'
        links are quiet, waiting for it."""
        agent = self.agent
        return self.resuming and agent is not None and not agent.attached

    # -- the connection ----------------------------------------------------------------------
    async def connection(self) -> asyncssh.SSHClientConnection:
        """The live connection, connecting (once, shared by concurrent callers) if needed."""
        if self._closing:
            raise ShuttingDown(f"{self.key}: relay is shutting down")
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(
                self._connect(),
                name=f"connect:{self.key}",
                context=contextvars.Context(),  # the launch that asked first is not its owner
            )
            self._connecting.add_done_callback(self._connect_done)
        self._connect_waiters += 1
        try:
            return await asyncio.shield(self._connecting)
        finally:
            self._connect_waiters -= 1
            task = asyncio.current_task()
            if task is not None and task.cancelling() and not self.resuming:
                # the last launch waiting for it gave up (its timeout, its shim gone): let it
                # go, so the next launch makes an attempt of its own rather than join this
                # one, perhaps on a path that died under it (a review's finding: the first
                # launch once the path was back failed at once, with a stale error)
                self._let_go_of_attempt()

    async def connection_by(self, deadline: float) -> asyncssh.SSHClientConnection:
        """``connection`` for a launch, which waits no longer than its ``deadline`` (loop
        time). While the host is resuming (its kernels waiting for their connection), a
        launch joins the resume's attempts; if the connection is not back by its deadline,
        it fails with a line that says so, rather than after the resume's slower attempts
        (the agent's address, then the name) with the last one's error, which blames sshd
        for a path that is down. Launches that follow such a failure at once (within
        IN_VAIN_FOLLOWERS_S of it or of each other) fail at once."""
        if not self.resuming:
            return await self.connection()  # bounded by launch_timeout_s itself
        # The Parallel package runs one launch right after another: once one has waited its
        # launch_timeout_s in vain, those that follow at once fail at once, not each after a
        # wait of its own (16 kernels: 30 s, not 8 minutes); one a person makes later waits.
        waited = self._waited_in_vain
        if waited is not None and time.monotonic() - waited < IN_VAIN_FOLLOWERS_S:
            # each follower renews the mark: a burst of any length fails at once, all of it
            raise self._in_vain(self.status.last_error)
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    try:
                        return await self.connection()
                    except ConnectFailed:
                        resume = self._resuming
                        if resume is None or resume.done():
                            raise
                        # the resume's attempt this launch joined failed: perhaps one made
                        # on the dead path just before it came back, which fails only at
                        # its own bound. The resume makes the next after its backoff: the
                        # launch waits for the resume, to its own deadline (it failed at
                        # once, with 6 s left and the resume back 0.4 s later: CI, in
                        # parallel), not with that attempt
                        await asyncio.wait({resume})
        except (TimeoutError, ConnectFailed) as exc:
            if not self.resuming:  # it is over (the kernels ended): that is the news
                raise
            raise self._in_vain(str(exc) or self.status.last_error) from None

    def gave_up_waiting(self) -> NotBack | None:
        """A launch that began before the connection was lost, and waited in vain for it to
        come back: what it fails with (``_not_back``), and, as after a wait in
        ``connection_by``, the launches that follow at once fail at once. None if the host
        is not resuming (the launch failed for a reason of its own)."""
        return self._in_vain(self.status.last_error) if self.resuming else None

    def _in_vain(self, last: str | None) -> NotBack:
        """A launch's wait for the resume ends in vain: the launches that follow at once fail
        at once (``connection_by``), with what this one fails with: the line for its shim,
        and the one ``relay status`` keeps, in the past tense (it may be back by then)."""
        self._waited_in_vain = time.monotonic()
        return self._not_back(last)

    def _not_back(self, last: str | None) -> NotBack:
        agent = self.agent
        lost_at = agent.lost_at if agent is not None else None
        when = f" at {moment(lost_at)}" if lost_at is not None else ""
        afterwards = (
            f"{self.key}: the connection was lost{when}, and was not back when this launch "
            f"gave up waiting for it"
        )
        if agent is None or lost_at is None:
            now = f"{self.key}: the connection was lost and is not back yet: {last}"
            return NotBack(now, afterwards)
        left = agent.window_left() or 0.0
        last = (last or "").removeprefix("resuming: ")
        now = (
            f"{self.key}: the connection was lost{when} and is not back yet; relay is "
            f"reconnecting and the kernels there wait ({duration(left)} of resume_window_s left): "
            f"launch again once `relay status` shows it back"
            + (f" (the last attempt: {last})" if last else "")
        )
        return NotBack(now, afterwards)

    async def _connect(self) -> asyncssh.SSHClientConnection:
        if not self.resuming:
            return self._adopt(*await self.connector.connect())
        hedge_s = self._handshake_bound(RESUME_HEDGE_S)
        # the agent is on the machine the lost connection reached, whatever else its name has
        return self._adopt(*await self.connector.reconnect(hedge_s, self.connector.reached))

    @property
    def resuming(self) -> bool:
        """The connection was lost and its kernels wait while relay reconnects."""
        return self._resuming is not None and not self._resuming.done()

    def _since_lost(self) -> str:
        """Since when the kernels here wait for their connection, as relay status says it."""
        lost_at = self._lost_at()
        return f"the connection was lost at {moment(lost_at)}" if lost_at else "lost"

    def _handshake_bound(self, floor_s: float) -> float:
        """``floor_s``, or ten round trips of the path (its last RTT) if that is longer:
        how long a handshake or a ping may take before it counts as stalled."""
        rtt_ms = self.rtt.rtt_ms or 0.0
        return max(floor_s, rtt_ms / 1000 * HANDSHAKE_RTTS)

    def _connect_done(self, task: asyncio.Task[asyncssh.SSHClientConnection]) -> None:
        if self._connecting is not task:  # let go at a window's end (``_resume``): not the
            return  # host's attempt any more, and another may be under way
        self._connecting = None
        if task.cancelled():
            self.status.set("disconnected")
        elif task.exception() is not None:
            self.status.set("failed")

    async def login(self, ask: Prompter) -> bool:
        """Open the connection with a person answering the server's prompts (``relay
        login``); True if it was open already (nothing asked)."""
        if self._closing:
            raise ShuttingDown(f"{self.key}: relay is shutting down")
        resuming = self.resuming
        if self._connecting is not None:  # a launch or the resume connects: let it finish
            # resuming on a dead path, that attempt runs on for tens of seconds: not waited
            # for beyond connect_timeout_s (a new-user pass's `relay login` hung 44-74 s).
            # Through a jump host that reconnects too it may be slow but working: the line
            # says "down or slow", and the attempt is left to go on either way
            bound = self.config.connect_timeout_s if resuming else None
            try:
                async with asyncio.timeout(bound):
                    await asyncio.shield(self._connecting)
            except TimeoutError:
                raise ConnectFailed(
                    f"{self.key}: resuming ({self._since_lost()}): relay's own attempt to "
                    f"connect has not ended within connect_timeout_s ({bound:g} s): the path "
                    "is down or slow; that attempt goes on, and `relay status` shows when "
                    "the host is back"
                ) from None
            except LoginNeeded:
                pass  # what this login is for
            except RelayError as exc:
                if resuming:  # the path is down: this login's attempt would fail as that one
                    raise ConnectFailed(
                        f"{self.key}: resuming ({self._since_lost()}): {exc.message}"
                    ) from None
            except asyncio.CancelledError:  # that attempt's (let go, or a stop), not ours:
                task = asyncio.current_task()  # a login whose person hung up ends here,
                if task is not None and task.cancelling():  # before it asks the server
                    raise
        if self._conn is not None and not self._conn.is_closed():
            return True
        # resuming, the agent's machine (as _connect)
        same = self.connector.reached if resuming else None
        try:
            made = await self.connector.login(ask, same)
        except LoginNeeded:
            raise
        except RelayError as exc:
            if resuming:
                exc.message = f"{self.key}: resuming ({self._since_lost()}): {exc.message}"
                exc.args = (exc.message,)
            raise
        self._adopt(*made)
        if self._login_wanted is not None and not self._login_wanted.done():
            self._login_wanted.set_result(None)  # the resume goes on with this connection
        return False

    def _adopt(
        self, conn: asyncssh.SSHClientConnection, client: _Client
    ) -> asyncssh.SSHClientConnection:
        """A connection just made is the host's, watched until it ends. Counted here, not
        where it was made: a hedged attempt that lost, or one by name that a resume did not
        keep, was never the host's."""
        self._conn = conn
        self.status.connects += 1
        self._declared_lost = self._probe_bound = None  # said of an older one, if ever
        self._waited_in_vain = None
        cfg = self.config
        # asyncssh's keepalive (relay.ssh.options.asyncssh_keepalive) ends it after this long
        silent_s = cfg.keepalive_interval_s * cfg.keepalive_count_max
        if self.agent is not None:  # the silence the agent may take for a lost daemon, said
            # in each HELLO: this connection's (its pings'), not the agent's first one's; a
            # keepalive raised in relay.toml had the agent let go at every ping (a review's)
            self.agent.silence_s = silent_s
        # the jump host's connection carries this one: not closed under it as idle, nor as
        # one made with resume_window_s = 0 (a review's finding: that ended this host's
        # kernels). Not counted as its own (``fragile_holds``): the wake probe of a jump
        # host weighs the hosts it carries apart (``woke``)
        jump = self.connector.via_host
        through = jump.carry() if jump is not None else None
        self._tasks.spawn(self._watch(conn, client, silent_s, through), name=f"watch:{self.key}")
        return conn

    async def _watch(
        self,
        conn: asyncssh.SSHClientConnection,
        client: _Client,
        silent_s: float,
        through: Hold | None = None,
    ) -> None:
        try:
            await conn.wait_closed()
        finally:
            if through is not None:
                through.release()
        if conn is not self._conn:
            return
        self._conn = None
        self.status.set("disconnected")
        if not self._closing and not self._idle_closing:
            reason = self._declared_lost or (
                str(client.lost) if client.lost else "closed by the server"
            )
            self._declared_lost = None
            fields: dict[str, Any] = {}
            if "keepalive" in reason and self._probe_bound is not None:
                reason = self._probe_bound
            elif "keepalive" in reason:  # declared after this long without a word from the server
                fields["silent_s"] = silent_s
                reason += f" for {silent_s:g} s"
            self.status.last_error = f"connection lost: {reason}"
            self._log.warning("connection lost", reason=reason, **fields)
            agent = self.agent
            if agent is not None and not agent.ended.done():
                agent.detach()
                supervisor = self._agent_supervisor
                # the connections it carried (a jump host's) end with it: not its own users
                if not self._holds.own and (supervisor is None or not supervisor.running):
                    # no kernel, launch or forward waits on it, and the agent runs no kernel
                    # of ours (a failed launch's, whose signal waits for the resume): nothing
                    # to resume. The agent, with nothing to keep and no daemon, exits by
                    # itself; the next launch connects and starts another
                    agent.let_go(f"the connection to {self.key} was lost ({reason})")
                elif not self.resuming:
                    self._resuming = self._tasks.spawn(
                        self._resume(agent), name=f"resume:{self.key}"
                    )

    # -- resuming ----------------------------------------------------------------------------
    def woke(self, asleep_s: float, carried: Sequence[HostSession] = ()) -> None:
        """The machine slept, or the daemon was stopped, ``asleep_s`` (``relay.wake``). A
        connection that lived through it may be dead without a word (a NAT entry gone, a new
        network) and keepalive would take its interval x count to say so. Where the kernels
        resume, it is pinged now: no answer within WAKE_PROBE_S (or ten round trips) and it
        is declared lost, so the resume begins. Elsewhere a lost connection ends kernels: a
        slow answer must not, so those wait for keepalive.

        A jump host's connection (``carried``: the hosts that went through it last,
        directly or behind another: a Slurm login node's compute nodes, and a gateway's
        login node and its nodes) is probed the same way when hosts whose kernels
        resume go through it and nothing else would end with it: nothing of its own (no
        kernel, launch or forward: ``fragile_holds``; a Slurm allocation outlives it) and
        nothing of the others' that does not resume. Otherwise the hosts behind it, found
        lost by their own pings, would reconnect through a dead connection until its
        keepalive ended it."""
        self.woke_at, self.slept_s = wake.steady(), asleep_s
        if self._probing:
            return
        current = self._current
        if current is not None and current.agent is not None and current.usable:
            self._probing = True
            self._tasks.spawn(self._probe(current, asleep_s), name=f"wake-probe:{self.key}")
            return
        conn = self._conn
        if (
            conn is not None
            and not conn.is_closed()
            and self.fragile_holds == 0
            and any(h.resumes for h in carried)
            and all(h.resumes or h.fragile_holds == 0 for h in carried)
        ):
            self._probing = True
            self._tasks.spawn(self._probe_keepalive(conn, asleep_s), name=f"wake-probe:{self.key}")

    def check_address(self, carried: Sequence[HostSession] = ()) -> None:
        """Every tick of ``relay.wake``: a direct connection whose own address this machine
        no longer has (the Wi-Fi switched, a VPN reconnected with another) can never hear
        from the host again, whatever keepalive has yet to say. Where the kernels resume, or
        the connection carries hosts whose kernels do (``carried``: the hosts that went
        through it last, as a jump host or a Slurm login node), it is declared lost at once;
        elsewhere keepalive ends it, as ssh would."""
        self.ticked_at = wake.steady()
        conn = self._conn
        if conn is None or conn.is_closed() or self.connector.reached is None:
            return
        if not (self.resumes or any(h.resumes for h in carried)):
            return
        sockname = conn.get_extra_info("sockname")
        if sockname and wake.address_gone(sockname):
            self._declared_lost = (
                f"this machine no longer has the address the connection came from "
                f"({sockname[0]}): another network"
            )
            conn.abort()

    async def _probe(self, current: Live, asleep_s: float) -> None:
        timeout_s = self._handshake_bound(WAKE_PROBE_S)
        try:
            await self.rtt.ping(current.supervisor, timeout_s)
        except TimeoutError:
            if current is self._current and current.usable:
                self._declared_lost = (
                    f"no answer within {timeout_s:g} s after {asleep_s:.0f} s asleep"
                )
                current.connection.abort()
        except (RelayError, asyncssh.Error, OSError):
            pass  # it ended all the same: _watch says so
        finally:
            self._probing = False

    async def _probe_keepalive(self, conn: asyncssh.SSHClientConnection, asleep_s: float) -> None:
        """``woke``'s probe of a connection with no session to ping (a bare jump host's):
        asyncssh's keepalive is tightened so that silence for the probe's bound ends it, for
        half as long again, then put back as the host's settings have it."""
        timeout_s = self._handshake_bound(WAKE_PROBE_S)
        self._probe_bound = f"no answer within {timeout_s:g} s after {asleep_s:.0f} s asleep"
        conn.set_keepalive(*asyncssh_keepalive(timeout_s, 1))
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.5 * timeout_s):
                    await conn.wait_closed()
        finally:
            if not conn.is_closed():  # it answered: as it was (a lost one's bound is _watch's)
                self._probe_bound = None
                cfg = self.config
                conn.set_keepalive(
                    *asyncssh_keepalive(cfg.keepalive_interval_s, cfg.keepalive_count_max)
                )
            self._probing = False

    async def _resume(self, agent: AgentSession) -> None:
        """Reconnect with backoff until the agent is attached again, or its window is over
        (counted from the last word heard, on the steady clock: a daemon that slept counts
        its sleep, an NTP step counts for nothing). Past the window the agent ends its kernels
        itself; here their links end."""
        lost_at = agent.lost_at if agent.lost_at is not None else time.time()
        lost_clock = agent.lost_clock if agent.lost_clock is not None else wake.steady()
        window = agent.window_s
        self._log.info("resuming", window_s=window)
        attempt = 0
        login_needed = False  # the last attempt wanted a person's answers
        while not agent.ended.done() and not self._closing:
            # an attach that was answered and then lost its connection (its first ping)
            # heard the agent, which began its window again: so does this one (and status)
            lost_at = agent.lost_at if agent.lost_at is not None else lost_at
            lost_clock = agent.lost_clock if agent.lost_clock is not None else lost_clock
            # and the window it counts down: that attach's HELLO carried relay.toml's new one
            # (a reload while resuming), which the agent took. The one this resume began with
            # counted 5 s from a loss right after such a resume (before its first ping), and
            # ended kernels the agent kept for 120 s (an e2e run under load)
            window = agent.window_s
            left = lost_clock + window - wake.steady()
            if left <= 0:
                break
            self.status.set("resuming")
            try:
                async with asyncio.timeout(left):
                    await self.live()
                if agent.ending_on_host == "window over":
                    # the agent heard nothing for its window before we did (each side counts
                    # from the last word it heard): it ends its kernels, and no resume was made
                    counted = " as the agent there counted it (from the last word it heard)"
                    self._window_over(agent, lost_at, window, counted)
                    return
                self._holds.rearm()  # its kernels may have ended meanwhile: idle from now
                return
            except AgentGone as exc:  # its socket gone: the agent with it, and its kernels
                if agent.ended.done():  # ended here meanwhile (a stop): nothing to say
                    return
                self._log.warning("relay's agent is gone", reason=exc.message)
                carried = self._agent_supervisor.confirmed if self._agent_supervisor else 0
                if exc.what is not None:
                    found = exc.what
                elif not carried:
                    # none of relay's kernels there: an agent with none ends once its daemon
                    # is gone (a launch's start lost with the connection, a review's case),
                    # and nothing was lost (said as lost, with KERNELS 0)
                    found = (
                        "relay's agent there had ended, with no kernel of relay's to keep; "
                        "the next launch starts another"
                    )
                else:
                    found = (
                        f"relay's agent was not there (the host restarted, the agent was "
                        f"killed, or {self.key} now leads to another machine): its kernels "
                        f"are lost"
                    )
                agent.end(
                    f"the connection to {self.key} was lost at {moment(lost_at)}; when "
                    f"it was back, {found}"
                )
                return
            except LoginNeeded:
                login_needed = True
                await self._wait_for_login(lost_clock + window)
                attempt = 0
                continue
            except (RelayError, asyncssh.Error, OSError, TimeoutError) as exc:
                login_needed = False
                self.status.last_error = f"resuming: {exc}"
            left = lost_clock + window - wake.steady()
            delay = max(0.0, min(backoff_s(attempt, self._rng), left))
            # said by status as "resuming (retry in 4s)", not as the attempt that failed
            self.status.retry_at = time.time() + delay
            self.status.set("backing-off")
            await asyncio.sleep(delay)
            attempt += 1
        if not agent.ended.done():
            why = f" (it needed `relay login {self.key}`)" if login_needed else ""
            self._window_over(agent, lost_at, window, why)
            self.status.set("disconnected")
            # the resume's own attempt, under way on the dead path: nobody waits for it now,
            # and when it failed it said "failed" and its own error over the window's news
            self._let_go_of_attempt()

    def _let_go_of_attempt(self) -> None:
        """The resume's own attempt to connect, under way on the dead path as its window
        ran out, is cancelled if nobody waits for it: failing later, it said "failed" and
        its own error over the window's news. It is let go at once, so that a launch that
        comes while it winds down starts an attempt of its own rather than join this one and
        get its cancellation; ``aclose`` waits for it."""
        connecting = self._connecting
        if connecting is None or connecting.done() or self._connect_waiters:
            return
        self._connecting = None
        connecting.cancel()
        self._let_go.add(connecting)
        connecting.add_done_callback(self._let_go.discard)

    async def _wait_for_login(self, window_ends: float) -> None:
        """The server wants a person's answers again (2FA), which relay never gives on its
        own: wait for ``relay login`` (or the window's end) instead of failing attempt after
        attempt, which the server logs and fail2ban counts."""
        self.status.last_error = (
            f"{self.key} asks for a person's answers (2FA, a password) to reconnect: run "
            f"`relay login {self.key}` in a terminal, and the kernels there go on"
        )
        self.status.set("resuming")
        self._log.warning("resuming waits for relay login")
        wanted = self._login_wanted = asyncio.get_running_loop().create_future()
        try:  # ``window_ends`` is on the steady clock: a sleep must not stretch the wait
            while not wanted.done() and (left := window_ends - wake.steady()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, LOGIN_WAIT_CHECK_S)):
                        await asyncio.shield(wanted)
        finally:
            self._login_wanted = None

    # -- what runs on it ---------------------------------------------------------------------
    async def live(self) -> Live:
        """The live connection and its supervisor session (started once per connection)."""
        current = self._current
        if current is not None and current.usable:
            return current
        async with self._supervisor_lock:
            again = True
            while True:
                conn = await self.connection()
                current = self._current
                if (
                    current is not None
                    and current.connection is conn
                    and not current.supervisor.closed.done()
                ):
                    return current
                self._current = None
                if current is not None:  # a dead connection's: closed and awaited
                    await current.aclose(end_agent=False)
                try:
                    # in a context of its own, as the connection is made: what it logs is the
                    # host's, not the launch's that asked first (a new-user pass found "ended
                    # the kernels of an earlier relay daemon" logged with the new kernel's id)
                    opening = asyncio.get_running_loop().create_task(
                        self._open_live(conn),
                        name=f"open-live:{self.key}",
                        context=contextvars.Context(),
                    )
                    current = await opening
                except asyncio.CancelledError:
                    # the caller went (a request's timeout) as the setup finished: kept, as a
                    # direct await would have (else a supervisor or an agent's channel left
                    # open, and the next caller's made beside it)
                    if opening.done() and not opening.cancelled() and not opening.exception():
                        self._current = opening.result()
                    raise
                except ConnectFailed:
                    # lost while it was set up (a reset, a network change while the agent
                    # started): nothing depends on it yet, so a new connection is tried
                    # once, within the caller's bounds, before a launch hears of it. The
                    # lost start, if sshd kept it and its login ends later, leaves the new
                    # start's agent alone: it is numbered lower (agent_start.Generations)
                    if not (again and conn.is_closed()):
                        raise
                    again = False
                    self._log.info("connection lost while it was set up: connecting again")
                    continue
                self._current = current
                return current

    async def _open_live(self, conn: asyncssh.SSHClientConnection) -> Live:
        """What runs on a new connection: the host's agent attached (started first if it has
        none yet), or where it cannot run, ``supervisor.sh`` and sshd's listeners."""
        cfg = self.config
        agent = self.agent
        if agent is not None and agent.ended.done():
            agent = self.agent = self._agent_supervisor = None
        fresh = agent is None
        if agent is None and self._agent_wanted(cfg):
            agent = await self._start_agent(conn, cfg)
        if agent is not None and self._agent_supervisor is not None:
            try:
                live = await Live.attach(
                    conn,
                    key=self.key,
                    config=cfg,
                    rtt=self.rtt,
                    hook=self._hook,
                    agent=agent,
                    supervisor=self._agent_supervisor,
                )
            except AgentGone as exc:
                if not fresh or exc.what is not None:
                    raise
                # started, but sshd will not open a channel to its socket: nobody can attach
                # (it goes away by itself, unattached, within a minute)
                agent.end(exc.message)
                self.agent = self._agent_supervisor = None
                self.agent_unavailable = (
                    "sshd refused the channel to relay's agent (AllowStreamLocalForwarding or "
                    "AllowTcpForwarding no, or remote, in its sshd_config?)"
                )
                self._log.warning(
                    "kernels here end with their connection", reason=self.agent_unavailable
                )
            else:
                self.agent_ran = True
                if self._supervised and cfg.end_stale_sessions:
                    self._supervised = False  # until the sweep fails
                    self._tasks.spawn(self._end_stale_sessions(conn, cfg), name=f"stale:{self.key}")
                return live
        # no mark for a sweep: one that dies silently leaves its record on the host, which
        # the next agent's start says (AgentInfo.supervised); one that ends cleanly removes
        # it, and no sweep's session is spent (a review's finding)
        return await Live.open(
            conn, key=self.key, tag=self.tag, config=cfg, rtt=self.rtt, hook=self._hook
        )

    async def _end_stale_sessions(
        self, conn: asyncssh.SSHClientConnection, cfg: HostConfig
    ) -> None:
        """The agent runs now where an earlier connection ran the old path (resume_window_s
        was 0 then, or the agent could not start): one that died silently left its session
        and kernels on the host, which the next supervisor would end (``supervisor.sh``) but
        the agent does not. So a supervisor is started for that alone, and closed: once such
        a session is stale (not pinged for ``stale_after_s``; its last ping came before this
        connection was made, and a loss found out at once, a new address say, is sooner)."""
        stale_s = stale_after_s(cfg)
        await asyncio.sleep(stale_s + 1)
        try:
            supervisor = await Supervisor.start(
                conn, self.key, cfg.connect_timeout_s, self.tag, stale_after_s=stale_s
            )
        except (RelayError, asyncssh.Error, OSError) as exc:
            self._supervised = True  # looked for on the next connection
            self._log.info("stale sessions of the old path not looked for", error=str(exc))
            return
        supervisor.close()
        await supervisor.wait_closed()

    def _agent_wanted(self, cfg: HostConfig) -> bool:
        self.agent_unavailable = agent_start.unwanted(cfg)
        return self.agent_unavailable is None

    async def _start_agent(
        self, conn: asyncssh.SSHClientConnection, cfg: HostConfig
    ) -> AgentSession | None:
        # the kernel hook's install (for controllers) beside the agent's start, not after it:
        # each session pays the host's login, which may take seconds; beside it, so that a
        # server of one session at a time gives the agent's first (Live._begin installs the
        # hook again where that refused it)
        opened = (lambda: self._hook.prefetch(conn, quiet=True)) if cfg.dynamic else None
        started = await agent_start.start(
            conn, self.key, self.tag, cfg.resume_window_s, self._generations, opened=opened
        )
        if isinstance(started, agent_start.Unavailable):
            self.agent_unavailable = started.reason
            self._log.warning("kernels here end with their connection", reason=started.reason)
            return None
        info, secret = started
        if not info.owner_check:
            self.agent_unavailable = agent_start.NO_OWNER_CHECK
            return None
        if info.ended:
            self._log.info("ended the kernels of an earlier relay daemon", agents=info.ended)
        if info.supervised:  # an old-path session's record: swept once the agent runs
            self._supervised = True
        silence_s = cfg.keepalive_interval_s * cfg.keepalive_count_max
        agent = AgentSession(
            self.key,
            info,
            secret,
            window_s=cfg.resume_window_s,
            silence_s=silence_s,
            spares=cfg.spare_forwards,
            serve_spares=1 if cfg.dynamic else 0,
        )
        agent.refused = self._agent_refused
        agent.channel_closed = lambda: self._channel_closed(agent)
        self.agent_unavailable = None
        self.agent = agent
        self._agent_supervisor = Supervisor(
            agent.port,
            self.key,
            info.pid,
            structlog.get_logger("relay.supervisor").bind(host=self.key),
            uid=info.uid,
            owner_check=info.owner_check,
            keeps_nothing_when_lost=True,
        )
        return agent

    def _channel_closed(self, agent: AgentSession) -> None:
        """The agent's channel closed while we did not close it. With the connection, a
        resume follows (``_watch``). On a connection that lives on, the agent closed it: it
        was killed (an OOM killer, a login node's reaper of long-running processes), which
        took its kernels with it, or it let go of a daemon silent for too long (stopped):
        without a look, the front ends would wait forever on links nobody carries."""
        current = self._current
        if (
            self._closing
            or current is None
            or current.agent is not agent
            or current.connection.is_closed()
        ):
            return
        self._tasks.spawn(self._reattach(agent, current), name=f"reattach:{self.key}")

    def _window_over(self, agent: AgentSession, lost_at: float, window: float, why: str) -> None:
        """The resume window ran out (here, or first on the host: ``why`` says which, or what
        else kept the connection away): the agent ends its kernels, and their links end."""
        at = moment(lost_at)
        if window <= 0:  # lowered to 0 in relay.toml since the connection was made
            what = "with resume_window_s = 0 (kernels end with their connection)"
        else:
            what = f"and did not come back within resume_window_s ({window:g} s){why}"
        agent.end(
            f"the connection to {self.key} was lost at {at} {what}; relay's agent there ends "
            "its kernels"
        )
        self._log.warning(
            "resume window ran out; the agent ends the kernels", lost_at=at, window_s=window
        )
        self.status.last_error = agent.end_reason

    def away_s(self) -> float:
        """How long this daemon was just away (the machine asleep, or relay stopped), if it
        woke lately: the last wake's, or, where its tick has not run yet (the loop's timers
        stand still in a suspend, so the tick comes up to TICK_S after other work on waking),
        the time since the last tick."""
        now = wake.steady()
        since_tick = now - self.ticked_at - wake.TICK_S
        recent = self.slept_s if now - self.woke_at < WOKE_RECENTLY_S else 0.0
        return max(recent, since_tick if since_tick > wake.LATE_S else 0.0)

    async def _reattach(self, agent: AgentSession, current: Live) -> None:
        """The channel again, over the same connection: the agent takes the daemon back and
        both replay; if it is gone, its kernels are gone with it and their links end now."""
        try:
            await agent.attach(current.connection)
        except AgentGone as exc:
            if current.connection.is_closed():
                return  # the connection went too: the resume finds out
            self._log.warning("relay's agent is gone", reason=exc.message)
            if exc.what is None and 0 < agent.window_s <= (slept := self.away_s()):
                # not killed: this daemon was away longer than the window (the machine slept
                # with its path up, or relay was stopped), and the agent, hearing nothing,
                # ended its kernels as its window ran out
                agent.end(
                    f"this machine slept, or relay was stopped, for {slept:.0f} s, past "
                    f"{self.key}'s resume_window_s ({agent.window_s:g} s): relay's agent "
                    f"there heard nothing from relay and ended its kernels"
                )
                self._log.warning(
                    "resume window ran out while relay was away; the agent ended the kernels",
                    away_s=round(slept),
                    window_s=agent.window_s,
                )
                self.status.last_error = agent.end_reason
                return
            agent.end(
                exc.message
                if exc.what is not None
                else f"relay's agent on {self.key} ended without being told (killed: an OOM "
                f"killer, a reaper of long-running processes?), and its kernels with it"
            )
        except ConnectionLost as exc:
            if not current.connection.is_closed() and current is self._current:
                # no answer on a connection that lives on (a stalled path, a stopped agent):
                # let it go, and the resume tries again with backoff until the window ends
                self._declared_lost = exc.message
                current.connection.abort()
        except (RelayError, asyncssh.Error, OSError):
            pass  # the connection is going: _watch resumes on the next one
        else:
            self._log.info("relay's agent took the daemon back on the same connection")

    def _agent_refused(self, sid: int, said: str) -> None:
        """The agent turned a stranger away from a link's listener (before a byte got
        through): logged once a minute, counted for ``relay status``, said as the guard of
        sshd's listeners says it (relay.ssh.guard)."""
        who, _, rest = said.partition(" ")
        listener, _, count = rest.partition(" ")  # how many since the last line (agent's)
        n = int(count) if count.isdigit() and int(count) > 0 else 1
        port = int(listener) if listener.isdigit() else None
        link = f"agent stream {sid}"
        if who.isdigit():
            self.agent_refusals.warn(who, n, foreign_uid=int(who), listener=port, link=link)
        elif who.startswith("@"):  # any of 127.0.0.0/8: one key, not millions
            why = f"from {who[1:]}, not 127.0.0.1"
            self.agent_refusals.warn("@", n, foreign_uid=why, listener=port, link=link)
        else:
            why = AGENT_UNCHECKED.get(who, WHY[UNKNOWN])
            self.agent_unchecked.warn(who, n, reason=why, listener=port, link=link)

    async def init_file(self, conn: asyncssh.SSHClientConnection) -> str:
        """RelayKernelInit.wl's remote path on ``conn``'s host, installed once per connection
        (single flight; a failure is tried again by the next launch)."""
        return await self._hook.path(conn)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Work on this host that may outlive the request that began it (a failed launch's
        release on a connection that does not answer): owned here, ended by ``aclose``."""
        return self._tasks.spawn(coro, name=name)

    # -- idle close --------------------------------------------------------------------------
    def hold(self, *, outlives_connection: bool = False) -> Hold:
        """Someone uses this host (a kernel, a launch, a requested forward; a Slurm
        allocation, which ``outlives_connection``): no idle close until the returned hold
        is released."""
        return self._holds.hold(outlives_connection=outlives_connection)

    def carry(self) -> Hold:
        """A connection made through this host (it is their jump host, or their Slurm login
        node): the host's connection is not closed under it (as idle, or as one made with
        resume_window_s = 0), but it is no user of the host's own (``Holds.own``)."""
        return self._holds.hold(outlives_connection=True, carried=True)

    @property
    def holds(self) -> int:
        """How many kernels, launches, requested forwards and allocations use the
        connection now."""
        return len(self._holds)

    @property
    def fragile_holds(self) -> int:
        """Of ``holds``, those that end with the connection (all but an allocation's)."""
        return self._holds.fragile

    def _free(self) -> None:
        """Nothing holds the connection any more (``Holds``)."""
        if self.config.resume_window_s > 0 and self.on_old_path:
            self._renew_for_the_agent()

    def _renew_for_the_agent(self) -> None:
        """The connection was made with resume_window_s = 0 and relay.toml has raised it
        since: once no kernel is on it, it is closed, so that the next launch's connection
        runs relay's agent. Without this, a host with no ``idle_timeout_s`` (the default)
        kept it until a restart (a new-user pass's finding)."""
        if self._closing or self._idle_closing or self._conn is None:
            return
        self._log.info("closing the connection made with resume_window_s = 0: nothing on it")
        # taken from the host at once, not after the old supervisor's close (a round trip or
        # more): a launch that comes meanwhile makes a new connection, not one on its way out
        # (a review's finding: its kernel's links died with it)
        current, self._current = self._current, None
        conn, self._conn = self._conn, None
        self.status.set("idle")
        self._tasks.spawn(self._let_go_of(current, conn), name=f"renew:{self.key}")

    async def _let_go_of(self, current: Live | None, conn: asyncssh.SSHClientConnection) -> None:
        """A connection no longer the host's, and what ran on it, closed (aborted if the
        host closes meanwhile, a stop, and ends this task)."""
        try:
            if current is not None:
                await current.aclose()
            conn.close()
            await conn.wait_closed()
        finally:
            if not conn.is_closed():
                conn.abort()

    def _idle(self) -> None:
        if self._conn is not None:
            self._log.info("closing idle connection", idle_s=self.config.idle_timeout_s)
            self._tasks.spawn(self._close_connection(idle=True), name=f"idle-close:{self.key}")
        else:  # lost: a resume that comes back with nothing holding it begins another
            self._log.info(IDLE_WITH_NO_CONNECTION, idle_s=self.config.idle_timeout_s)

    async def _close_connection(self, *, idle: bool = False) -> None:
        self._idle_closing = idle
        try:
            current, self._current = self._current, None
            if current is not None:
                await current.aclose()
            if self._resuming is not None:
                self._resuming.cancel()
            agent = self.agent
            if (
                agent is not None
                and not agent.ended.done()
                and (current is None or current.agent is not agent)
            ):
                agent.goodbye()  # mid-outage: nobody to tell; the window ends its kernels
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
                await conn.wait_closed()
            self.status.set("idle" if idle else "disconnected")
        finally:
            self._idle_closing = False

    def goodbye(self, grace_s: float) -> None:
        """relay is stopping: an attached agent is told now, so that its kernels end (SIGTERM,
        SIGKILL ``grace_s`` later) whatever happens to the daemon next (a second signal, a
        crash). Mid-outage there is nobody to tell: the window ends them (``stranded``), and
        their links end here now, not after a shutdown's grace spent waiting for them."""
        agent = self.agent
        if agent is None or agent.ended.done():
            return
        stranded = self.stranded()
        if stranded is not None:
            agent.end(stranded)
        elif agent.attached:
            agent.goodbye(grace_s)

    async def goodbye_heard(self, timeout_s: float = BYE_CONFIRM_S) -> None:
        """After ``goodbye``: wait, bounded, for the attached agent to answer it, for longer
        while it is still heard from (a slow path, output queued ahead of the answer), up to
        BYE_WAIT_MAX_S. One that does not answer may not have heard: its connection went
        silent before keepalive could tell (the Wi-Fi gone a moment before ``relay stop``).
        Its session ends then, so its kernels' links end now, not after the shutdown's
        grace; what their shims are told is ``unheard_goodbye``."""
        agent = self.agent
        if agent is None or agent.ended.done() or not agent.said_bye:
            return
        waited_s, heard = 0.0, agent.heard_clock
        while True:
            await asyncio.wait(
                {agent.bye_heard, agent.ended}, timeout=timeout_s, return_when="FIRST_COMPLETED"
            )
            waited_s += timeout_s
            if agent.bye_heard.done() or agent.ended.done():
                break
            if agent.heard_clock == heard or waited_s >= BYE_WAIT_MAX_S:
                break
            heard = agent.heard_clock  # still speaking: its answer may be on its way
        if not agent.bye_heard.done():
            self._log.warning("the agent did not answer relay's goodbye", waited_s=waited_s)
            agent.end(self.unheard_goodbye() or "relay's goodbye went unanswered")

    def unheard_goodbye(self) -> str | None:
        """What becomes of this host's kernels when relay said goodbye to its agent and no
        answer came (``goodbye_heard``, or the connection closing first): None where it
        answered, or where relay has not said goodbye."""
        agent = self.agent
        if agent is None or not agent.said_bye or agent.bye_heard.done():
            return None
        silent_s = max(0.0, wake.steady() - agent.heard_clock)
        heard = time.time() - silent_s
        at, until = moment(heard), moment(heard + agent.window_s)
        return (
            f"relay's agent on {self.key} did not answer relay's goodbye (nothing heard from "
            f"it since {at}: the connection may be down): if it did not get it, "
            f"{self._left_to_agent(until)}"
        )

    async def resumed(self) -> None:
        """Until the resume under way (if any) is over: the agent attached again, or its
        window ran out."""
        task = self._resuming
        if task is not None and not task.done():
            await asyncio.wait({task})

    def stranded(self) -> str | None:
        """What becomes of the kernels here if relay lets go of them while the agent cannot
        be told (resuming): its window ends them, or the next daemon to reach the host (it
        ends its predecessor's agent). None where the agent can be told, or there is none."""
        agent = self.agent
        lost_at = agent.lost_at if agent is not None else None
        if agent is None or agent.attached or agent.ended.done() or lost_at is None:
            return None
        at, until = moment(lost_at), moment(time.time() + (agent.window_left() or 0))
        return (
            f"the connection to {self.key} was down (lost at {at}), so relay's agent there "
            f"could not be told: {self._left_to_agent(until)}"
        )

    def _left_to_agent(self, until: str) -> str:
        """What ends kernels whose agent relay could not tell to (``stranded``, and
        ``unheard_goodbye``)."""
        return (
            f"it ends the kernels there when resume_window_s runs out ({until}), or at once "
            f"when relay next connects to {self.key}"
        )

    async def abort(self) -> None:
        """Drop the connection at once (shutdown past its grace): sshd ends the session, and
        the supervisor, seeing end of input, its kernels. An agent outlives that by design, so
        it is told goodbye first and the connection closed once the agent has answered it
        (bounded by BYE_CONFIRM_S): sshd may drop channel data that arrives with the
        disconnect, and the agent would keep its kernels for the whole window."""
        self._closing = True
        self._holds.stop()
        conn = self._conn
        if conn is None:
            return
        agent = self.agent
        if agent is not None and agent.attached and not agent.ended.done():
            agent.goodbye()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BYE_CONFIRM_S):
                    await asyncio.shield(agent.bye_heard)
        conn.abort()

    def unused_since(self) -> float | None:
        """Since when (the time of its state) this session has had nothing to do, if it has
        nothing now: no connection and none being made, nothing held (kernels, forwards,
        launches), no agent whose kernels live on, no resume, no task of its own; else None."""
        if (
            self._conn is not None
            or self._connecting is not None
            or self._let_go
            or len(self._holds)
            or self.resumes
            or (self._resuming is not None and not self._resuming.done())
            or len(self._tasks)
            or self._closing
            or self.state not in ("idle", "disconnected", "failed")
        ):
            return None
        return max(self.status.since, self.asked_at)

    async def aclose(self) -> None:
        """Close the supervisor (its kernels are terminated remotely) and the connection."""
        self._closing = True
        self._holds.stop()
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        await asyncio.gather(*self._let_go, return_exceptions=True)
        await self._close_connection()
        await self._tasks.aclose()

    def record_failure(self, kernel_id: str, kernel: str, reason: str) -> None:
        """A kernel that failed after its shim had answered: kept for ``relay status``."""
        self.failures.append(
            {"at": time.time(), "kernel_id": kernel_id, "kernel": kernel, "reason": reason}
        )

    def snapshot(self) -> dict[str, Any]:
        view, status, rtt = self.view, self.status, self.rtt
        return {
            "name": self.key,
            "hostname": view.hostname if view is not None else self.config.hostname,
            "port": view.port if view is not None else self.config.port,
            "user": view.user if view is not None else self.config.user,
            # while the kernels wait for their connection, that is the host's state (the
            # attempt under way is ``attempt``), since it was lost
            **(
                {"state": "resuming", "attempt": status.state, "since": self._lost_at()}
                if self.kernels_waiting
                else {"state": status.state, "since": status.since}
            ),
            "rtt_ms": None if rtt.rtt_ms is None else round(rtt.rtt_ms, 2),
            "rtt_at": rtt.rtt_at,
            "holds": len(self._holds),
            "connects": status.connects,
            "last_error": status.last_error,
            "retry_at": status.retry_at if status.state == "backing-off" else None,
            "failures": list(self.failures),
            "peer_check": {
                "remote": self._current.guard.state if self._current is not None else None,
                "local": self.local_guard.state,
                "refused": self.local_guard.refused
                + self.agent_refusals.total
                + self.agent_unchecked.total
                + (self._current.guard.refused if self._current is not None else 0),
            },
            "resume": self._resume_snapshot(),
        }

    def _lost_at(self) -> float | None:
        agent = self.agent
        return (
            agent.lost_at if agent is not None and agent.lost_at is not None else self.status.since
        )

    def _resume_snapshot(self) -> dict[str, Any]:
        """Whether kernels here outlive their connection, and how the agent stands: ``on``,
        ``resuming``, ``ended`` (its kernels ended without relay asking: the window ran out,
        the agent was killed; until the next connection starts another), ``off`` (and why),
        ``unknown`` (not connected yet)."""
        agent = self.agent
        if agent is not None and not agent.ended.done():
            state = "on" if agent.attached else "resuming"
            waiting = self._login_wanted is not None  # for `relay login`
            return {"state": state, **agent.snapshot(), "login_needed": waiting}
        if agent is not None and agent.end_reason and not agent.said_bye:
            return {"state": "ended", "reason": agent.end_reason, "lost_at": agent.lost_at}
        window_s = self.config.resume_window_s
        reason = self.agent_unavailable
        if reason == agent_start.WINDOW_ZERO and window_s > 0:
            # relay.toml raised it since: the live connection's kernels still end with it;
            # with none, the next connection decides
            reason = (
                f"{reason} when this connection was made ({window_s:g} s from the next one)"
                if self.on_old_path
                else None
            )
        if reason is None and window_s > 0:
            # relay.toml alone may say it (Slurm, peer_check = off), before any connection
            # or where none ran kernels (a login node, a jump host): not "unknown until it
            # connects" where the agent never runs (a review's finding)
            reason = agent_start.unwanted(self.config)
        if reason is not None:
            return {"state": "off", "reason": reason}
        if window_s > 0 and self.agent_ran:
            # its agent ended with a connection that had no kernel to resume: the next one
            # starts another, as it did (not "unknown", a new-user pass's finding)
            return {"state": "on", "window_s": window_s, "next_connection": True}
        return {"state": "unknown" if window_s > 0 else "off"}


async def close_in_order(hosts: Iterable[HostSession]) -> None:
    """Close ``hosts`` in dependency order: each after every host whose connection goes through
    it (``via``: a ProxyJump, a Slurm login node), so a dependent's supervisor still hears its
    end of input through the tunnel. Hosts that depend on nothing in common close at once."""
    sessions = list(hosts)
    by_key = {h.key: h for h in sessions}
    dependents: dict[str, list[HostSession]] = collections.defaultdict(list)
    for h in sessions:
        if h.via is not None and h.via in by_key and h.via != h.key:
            dependents[h.via].append(h)
    started: set[str] = set()

    async def close(h: HostSession) -> None:
        started.add(h.key)
        await asyncio.gather(*(close(d) for d in dependents[h.key] if d.key not in started))
        await h.aclose()

    roots = [h for h in sessions if h.via is None or h.via not in by_key or h.via == h.key]
    await asyncio.gather(*(close(h) for h in roots))
    # a loop of jump hosts (no connection can have gone through it): whatever is left, at once
    await asyncio.gather(*(h.aclose() for h in sessions if h.key not in started))
