"""A host's live connection and what runs on it, opened and closed as one.

``Live.open`` starts, on a connection just made, the supervisor session, the spare listeners
and the peer guard, has the host's kernel looked for and the hook file installed ahead, proves
the session answers (the first ping) and starts timing pings every keepalive interval
(``RttMeter``). ``Live.aclose`` tears all of it down, once: the spare pool, the supervisor
(closed and awaited: its kernels are terminated remotely) and the task that times pings. The
connection itself is the host session's (``relay.ssh.host``), which opens a new ``Live`` on
each new connection.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import asyncssh

from relay.agent.session import AgentSession
from relay.errors import RelayError
from relay.settings import HostConfig
from relay.ssh.forwards import SparePool
from relay.ssh.guard import PeerGuard
from relay.ssh.hookfile import Installer
from relay.ssh.supervisor import Supervisor
from relay.tasks import TaskSet

__all__ = ["Live", "RttMeter", "stale_after_s"]


class RttMeter:
    """The round-trip time through a host's supervisor session, as ``relay status`` shows it:
    the last measured (kept across connections) and when."""

    def __init__(self) -> None:
        self.rtt_ms: float | None = None
        self.rtt_at: float | None = None
        self._pings = 0

    async def ping(self, supervisor: Supervisor, timeout_s: float) -> None:
        """One ping, timed; TimeoutError if no answer within ``timeout_s``."""
        self._pings += 1
        started = time.monotonic()
        async with asyncio.timeout(timeout_s):
            await supervisor.ping(f"p{self._pings}")
        self.rtt_ms = (time.monotonic() - started) * 1000
        self.rtt_at = time.time()

    async def measure(self, supervisor: Supervisor, interval_s: float, timeout_s: float) -> None:
        """Every ``interval_s``, time a ping, until the session ends."""
        while not supervisor.closed.done():
            await asyncio.sleep(interval_s)
            try:
                await self.ping(supervisor, timeout_s)
            except (RelayError, TimeoutError, asyncssh.Error, OSError):
                return  # the connection ended: the host session says so, once


def stale_after_s(config: HostConfig) -> int:
    """A supervisor session not pinged this long is stale (``supervisor.sh``). A live one is
    pinged every keepalive interval; the daemon declares its connection dead after interval x
    count without an answer, which is when a new supervisor comes."""
    return max(1, math.ceil(config.keepalive_interval_s * config.keepalive_count_max))


@dataclass(eq=False)
class Live:
    """A host's live connection and what runs on it: the supervisor session, the spare
    listeners and the peer guard. One per connection; replaced when it is reopened."""

    connection: asyncssh.SSHClientConnection
    supervisor: Supervisor
    pool: SparePool
    guard: PeerGuard  # who may connect to this connection's remote listeners
    # the host's agent, attached on this connection (docs/agent.md): kernels' main links go
    # through it and outlive the connection; ``supervisor`` is then its control stream's
    agent: AgentSession | None = None
    _tasks: TaskSet = field(default_factory=TaskSet)

    @classmethod
    async def open(
        cls,
        conn: asyncssh.SSHClientConnection,
        *,
        key: str,
        tag: str,
        config: HostConfig,
        rtt: RttMeter,
        hook: Installer,
    ) -> Live:
        """Start what runs on ``conn`` (see the module). If the session does not answer its
        first ping, what was started is closed (not awaited: the host may not answer that
        either) and TimeoutError raised."""
        supervisor = await Supervisor.start(
            conn,
            key,
            config.connect_timeout_s,
            tag,
            end_stale=config.end_stale_sessions,
            stale_after_s=stale_after_s(config),
        )
        pool = SparePool(conn, config.spare_forwards, key)
        live = cls(conn, supervisor, pool, _guard(key, supervisor, config))
        await live._begin(config=config, rtt=rtt, hook=hook, key=key)
        return live

    @classmethod
    async def attach(
        cls,
        conn: asyncssh.SSHClientConnection,
        *,
        key: str,
        config: HostConfig,
        rtt: RttMeter,
        hook: Installer,
        agent: AgentSession,
        supervisor: Supervisor,
    ) -> Live:
        """What runs on ``conn`` when the host has an agent: the agent attached (and what
        either side missed replayed), its control stream as the supervisor. No spare sshd
        listeners: every link, the hook's control channel and callback forwards go through
        the agent, which keeps its own spares."""
        await agent.attach(conn)
        pool = SparePool(conn, 0, key)
        live = cls(conn, supervisor, pool, _guard(key, supervisor, config), agent)
        await live._begin(config=config, rtt=rtt, hook=hook, key=key)
        return live

    async def _begin(self, *, config: HostConfig, rtt: RttMeter, hook: Installer, key: str) -> None:
        silence_s = config.keepalive_interval_s * config.keepalive_count_max
        supervisor, conn = self.supervisor, self.connection
        self.pool.refill()  # forwards allocated ahead: launches spend no round trip on them
        if config.kernel and config.slurm is None:
            # and the host's kernel looked for ahead, so that not even the first compute Run
            # waits for its pid (a Slurm host's kernels run on its nodes)
            supervisor.check_kernel(config.kernel)
        if config.dynamic:  # and the kernel hook installed ahead too
            hook.prefetch(conn)
        try:
            await rtt.ping(supervisor, silence_s)  # the first RTT, and proof the session answers
        except BaseException:
            self.close(end_agent=False)
            raise
        self._tasks.spawn(
            rtt.measure(supervisor, config.keepalive_interval_s, silence_s), name=f"rtt:{key}"
        )

    @property
    def usable(self) -> bool:
        """Neither the connection nor the supervisor session has ended."""
        return not self.supervisor.closed.done() and not self.connection.is_closed()

    def close(self, *, end_agent: bool = True) -> None:
        """Stop what runs on the connection: no new spares, the supervisor's input ended.
        With an agent, ``end_agent`` False (the connection was lost; another will attach)
        leaves the agent and its kernels be; True says goodbye (its kernels end)."""
        self.pool.close()
        if self.agent is None or end_agent:
            self.supervisor.close()
        else:
            self.agent.detach()

    async def wait_closed(self, *, end_agent: bool = True) -> None:
        """Return once the spares, the supervisor and the ping timing have ended."""
        await self.pool.wait_closed()
        if self.agent is None or end_agent:
            await self.supervisor.wait_closed()
        await self._tasks.aclose()

    async def aclose(self, *, end_agent: bool = True) -> None:
        self.close(end_agent=end_agent)
        await self.wait_closed(end_agent=end_agent)


def _guard(key: str, supervisor: Supervisor, config: HostConfig) -> PeerGuard:
    """Who may connect to this connection's remote listeners: asked of the supervisor."""
    return PeerGuard.remote(
        key,
        supervisor.uid,
        supervisor.owner,
        can_tell=supervisor.owner_check,
        enabled=config.peer_check == "uid",
    )
