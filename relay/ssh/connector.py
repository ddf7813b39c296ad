"""How a host is reached: its plan, each connection attempt, retries, login and host keys.

A ``Connector`` turns relay.toml's entry and the ssh_config files (re-read on every connect, as
ssh would) into a ``ConnectPlan`` and makes connections from it: one attempt bounded by
ConnectTimeout (``connect_once``), attempts with exponential backoff and jitter until one
succeeds, one fails in a way no retry can mend, or ``launch_timeout_s`` would be overrun
(``connect``), at most ``reconnect_attempts`` per ``reconnect_window_s`` (``RetryLimiter``), or
a person answering the server's prompts (``login``). Host keys are looked up, accepted-new and
fetched as ssh does (``host_key``, for ``relay trust``). It owns no connection: the host session
(``relay.ssh.host``) keeps what it makes. ``ConnectionStatus`` is what ``relay status`` says.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import asyncssh
import structlog

from relay.errors import (
    AuthenticationFailed,
    ConnectFailed,
    LoginNeeded,
    RelayError,
    SSHSetupFailed,
    cannot_write,
)
from relay.settings import HostConfig
from relay.ssh import hostkeys, identity, ignorepad, options, resolver, sshconfig
from relay.ssh.errors import host_key_refused, translate_connect_error
from relay.ssh.holds import Hold
from relay.ssh.options import ConnectPlan
from relay.ssh.sshconfig import SSHView
from relay.tasks import in_thread

__all__ = [
    "ATTEMPTS_PER_REQUEST",
    "BACKOFF_CAP_S",
    "ConnectionStatus",
    "Connector",
    "Prompter",
    "RetryLimiter",
    "backoff_s",
]


class JumpHost(Protocol):
    """A jump host's session, as a host reached through it uses it: its (shared) connection,
    held open while a connection through it lives (``HostSession.hold``)."""

    key: str

    async def connection(self) -> asyncssh.SSHClientConnection: ...

    def carry(self) -> Hold: ...


JumpGetter = Callable[[str], JumpHost]  # a jump host's session, by its name in the plan
ATTEMPTS_PER_REQUEST = 3
CUT_SHORT_S = 0.05  # an attempt's bound this much under its setting was cut by a deadline
HEDGED_AT_ONCE = 3  # connect attempts in flight at once while resuming (``_hedged``)
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter in its upper half: attempt 0 -> 0.25-0.5 s."""
    ceiling: float = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
    return ceiling * (0.5 + rng.random() / 2)


def answered(exc: BaseException, reached: str) -> bool:
    """Whether a failed direct attempt heard from the machine (``_Client.reached``: how far
    it got): it refused or reset the connection (a reset may come before the socket's
    connect is even seen done), its sshd spoke, or it ended a connection it had accepted
    (sshd restarting, MaxStartups); so it is up. Not a silence: a timeout before any word
    (a connection accepted and never answered too) or unreachable, which a machine that is
    gone and a dead path both give."""
    if isinstance(exc, ConnectionRefusedError | ConnectionResetError) or reached == "ssh":
        return True
    return reached == "tcp" and not isinstance(exc, TimeoutError)


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
        self.person_asked: Callable[[], None] | None = None  # told as a login's prompts begin
        self.asked = False  # the server asked a person (relay login) for answers
        self._ask = ask
        self._who = who

    def _asking(self) -> None:
        self.asked = True
        if self.person_asked is not None:
            self.person_asked()

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
        self._asking()
        (answer,) = await self._ask("", "", [(f"{self._who}'s password: ", False)])
        return answer

    def kbdint_auth_requested(self) -> str | None:
        if self._ask is None:
            self.person_needed.append("keyboard-interactive (2FA) answers")
            return None
        self._asking()
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


def _unwanted(attempt: asyncio.Future[tuple[asyncssh.SSHClientConnection, _Client]]) -> None:
    """A hedged attempt that lost (cancelled, or done in the same turn as the winner):
    closed if it connected all the same."""
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result()[0].close()


class _Direct:
    """asyncssh's tunnel interface for a direct connection: the host name resolved by relay's
    resolver (``relay.ssh.resolver``: off the loop's, one look-up per name at a time), each
    address tried in turn, as asyncio's own connect does.

    With ``same_address`` (a resume), the machine the last connection reached comes first: a
    host name with several addresses (login nodes behind one name, a DNS round robin) can
    lead a reconnect to another machine, where relay's agent and its kernels are not. If the
    name no longer has it (a VPN's split DNS: the name has other addresses inside than
    outside), the name's own addresses are tried, as ssh would, and ``moved`` is told."""

    def __init__(
        self,
        bind: str | None,
        same_address: str | None = None,
        moved: Callable[[str], None] | None = None,
        *,
        family: int = socket.AF_UNSPEC,  # ssh_config's AddressFamily
    ) -> None:
        self._family = family
        self._bind = (bind, 0) if bind else None  # ssh_config's BindAddress, as asyncssh's own
        self.address = same_address
        self._moved = moved  # told the address when the name no longer has it

    async def create_connection(
        self, session_factory: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        loop = asyncio.get_running_loop()
        found = await resolver.addresses(host, port, self._family)
        if self.address is not None:
            if self.address in found:
                found = [self.address]
            elif self._moved is not None:
                self._moved(self.address)
        error: OSError | None = None
        for address in found:
            try:
                return await loop.create_connection(
                    session_factory, address, port, local_addr=self._bind
                )
            except OSError as exc:
                error = exc
        raise error or OSError(f"{host} has no address")


class ConnectionStatus:
    """What ``relay status`` says of a host's connection: its state and since when, the last
    error, when the next attempt is made while backing off, how many connections the host has
    had (``HostSession._adopt``)."""

    def __init__(self) -> None:
        self.state = "disconnected"
        self.since = time.time()
        self.last_error: str | None = None
        self.retry_at: float | None = None  # while backing off: when the next attempt is made
        self.connects = 0

    def set(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()


class RetryLimiter:
    """At most ``attempts`` automatic retries per ``window_s`` (relay.toml's reconnect_attempts
    per reconnect_window_s, passed on each call: a reload applies at once)."""

    def __init__(self) -> None:
        self._attempts: collections.deque[float] = collections.deque()

    def allow(self, attempts: int, window_s: float) -> bool:
        """Whether one more retry is allowed now; counted if so."""
        now = time.monotonic()
        while self._attempts and now - self._attempts[0] > window_s:
            self._attempts.popleft()
        if len(self._attempts) >= attempts:
            return False
        self._attempts.append(now)
        return True

    def clear(self) -> None:
        """A connection was made, or the settings changed: earlier failures no longer count."""
        self._attempts.clear()


class Connector:
    """How one host is reached (see the module); ``config`` is relay.toml's entry with
    ssh_config's values as the last ``plan()`` resolved them."""

    def __init__(
        self,
        key: str,
        config: HostConfig,
        *,
        status: ConnectionStatus,
        jump: JumpGetter | None = None,
        configured: list[str] | None = None,
        config_source: str = "relay.toml",
        ssh_files: Sequence[str] = sshconfig.DEFAULT_FILES,
        agent: Callable[[], str | None],
    ) -> None:
        self.key = key
        self.base_config = config  # as relay.toml says; ``config`` adds ssh_config's values
        self.config = config
        self.ssh_files: tuple[str, ...] = tuple(ssh_files)
        self.view: SSHView | None = None  # ssh_config's view of the host at the last connect
        self.status = status
        self.limiter = RetryLimiter()
        self._agent = agent  # the agent socket new connections use (the newest client's)
        self._noted: set[str] = set()
        self._jump = jump
        self.via: str | None = None  # the jump host the last connection went through, by key
        self.via_host: JumpHost | None = None  # and its session
        self._configured = configured or []
        self._config_source = config_source
        # the address the last direct connection reached (its peer): the machine its agent
        # is on, which a resume must reach again (``_Direct``); None behind a jump host
        self.reached: str | None = None
        self._rng = random.Random()  # noqa: S311 (jitter, not secrets)
        self._log = structlog.get_logger("relay.host").bind(host=key)

    async def connect(
        self, hedge_s: float | None = None, same_address: str | None = None
    ) -> tuple[asyncssh.SSHClientConnection, _Client]:
        """Attempts until one succeeds, one fails in a way no retry can mend, or the time a
        launch waits (``launch_timeout_s``) would be overrun; each attempt is bounded by
        ConnectTimeout (or connect_timeout_s). With ``hedge_s`` (resuming: the path was
        just lost), an attempt that has not finished within it is joined by another
        (``_hedged``); with ``same_address`` (resuming too), a direct connection goes to
        that address if the host name still has it (``_Direct``)."""
        status = self.status
        began = time.monotonic()
        deadline = began + self.base_config.launch_timeout_s
        for attempt in range(ATTEMPTS_PER_REQUEST):
            status.set("connecting")
            status.retry_at = None
            try:
                if hedge_s is None:
                    made = await self.connect_once(deadline, same_address=same_address)
                else:
                    made = await self._hedged(deadline, hedge_s, same_address)
            except RelayError as exc:
                status.last_error = exc.message
                delay = backoff_s(attempt, self._rng)
                if (
                    not exc.retryable
                    or attempt == ATTEMPTS_PER_REQUEST - 1
                    or time.monotonic() + delay >= deadline - 1.0
                    or not self.limiter.allow(
                        self.config.reconnect_attempts, self.config.reconnect_window_s
                    )
                ):
                    if attempt > 0:  # each attempt's message says its own time: and in all?
                        exc.message = status.last_error = (
                            f"{exc.message}; {attempt + 1} attempts, "
                            f"{time.monotonic() - began:.1f} s in all (a launch waits at most "
                            f"launch_timeout_s, {self.base_config.launch_timeout_s:g} s)"
                        )
                        exc.args = (exc.message,)
                    raise
                status.set("backing-off")
                status.retry_at = time.time() + delay
                self._log.warning(
                    "connect failed; retrying",
                    error=exc.message,
                    attempt=attempt + 1,
                    delay_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
            else:
                self.limiter.clear()
                return made
        raise AssertionError("unreachable")  # pragma: no cover

    async def reconnect(
        self, hedge_s: float, address: str | None
    ) -> tuple[asyncssh.SSHClientConnection, _Client]:
        """Resuming: ``connect`` to ``address``, the machine the agent is on. If nothing
        answers there (a timeout, unreachable), the host name may lead elsewhere now: the
        agent's machine down, or taken out of the name's rotation. Then a connection by name
        that reaches another machine, with ``address`` silent once more right after it (the
        path is up, so that silence is the machine's), is returned: the agent is not there
        and its kernels end, but the host is usable again, not unreachable for the whole
        window. A machine that answers, even to refuse (its sshd restarting, MaxStartups),
        is up with its kernels: the failure is raised, and the caller backs off and comes
        back to it."""
        try:
            return await self.connect(hedge_s, address)
        except ConnectFailed as exc:
            if address is None or exc.answered:
                raise  # it answered: up (its sshd restarting, MaxStartups), kernels and all
        made = await self.connect(hedge_s)  # fails too if it is the path: the caller backs off
        if self.reached == address:  # it was the path after all
            return made
        elsewhere = self.reached
        try:
            mine = await self.connect_once(
                time.monotonic() + self.config.connect_timeout_s, same_address=address
            )
        except ConnectFailed as exc:
            if exc.answered:  # up after all, refusing for now: the kernels are there
                made[0].close()
                raise
            self._log.warning(
                "the agent's machine does not answer, another behind the host name does",
                address=address,
                reached=elsewhere,
                error=exc.message,
            )
            return made
        except BaseException:
            made[0].close()
            raise
        made[0].close()  # the agent's machine answered after all: not the other one
        return mine

    async def _hedged(
        self, deadline: float, hedge_s: float, same_address: str | None = None
    ) -> tuple[asyncssh.SSHClientConnection, _Client]:
        """``connect_once``, joined by another attempt each ``hedge_s`` that none has
        finished (at most HEDGED_AT_ONCE at a time). An attempt made while the path was dead
        can stay dead after it comes back (its SYN or first packets lost, a VPN's old route,
        a NAT entry gone) until ConnectTimeout: the kernels resume with the next attempt,
        not after it. The first to finish decides: connected, it wins; failed, its failure
        is raised (the caller backs off). The rest are cancelled, and closed if they
        connected all the same."""

        def attempt() -> asyncio.Future[tuple[asyncssh.SSHClientConnection, _Client]]:
            return asyncio.ensure_future(self.connect_once(deadline, same_address=same_address))

        attempts = {attempt()}
        done: set[asyncio.Future[tuple[asyncssh.SSHClientConnection, _Client]]] = set()
        try:
            while True:
                done, attempts = await asyncio.wait(
                    attempts, timeout=hedge_s, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task.exception() is None:
                        done.discard(task)  # the winner; any other done with it is closed
                        return task.result()
                if done:
                    raise next(iter(done)).exception()  # type: ignore[misc]
                if len(attempts) < HEDGED_AT_ONCE and time.monotonic() < deadline:
                    self._log.info("connect attempt stalled; another joins it", after_s=hedge_s)
                    attempts.add(attempt())
        finally:
            for task in done:  # finished in the same turn as the one that decided
                _unwanted(task)
            for task in attempts:
                task.cancel()
                task.add_done_callback(_unwanted)  # closes it even if this wait is cut short
            await asyncio.gather(*attempts, return_exceptions=True)

    async def login(
        self, ask: Prompter, same_address: str | None = None
    ) -> tuple[asyncssh.SSHClientConnection, _Client]:
        """One attempt with a person answering the server's prompts (``relay login``); to
        ``same_address`` as ``connect`` (resuming)."""
        self.status.set("connecting")
        try:
            made = await self.connect_once(
                time.monotonic() + LOGIN_TIMEOUT_S, ask=ask, same_address=same_address
            )
        except RelayError as exc:
            self.status.last_error = exc.message
            self.status.set("failed")
            raise
        self.limiter.clear()
        return made

    def reconfigure(self, config: HostConfig) -> bool:
        """relay.toml changed: ``config`` from now on (see ``HostSession.reconfigure``); False
        if it is what the host has already."""
        if config == self.base_config:
            return False
        self.base_config = config
        # ssh_config's values as the last connect resolved them, until the next resolves again
        self.config = config if self.view is None else options.plan(config, self.view).config
        self.limiter.clear()
        return True

    def files_changed(self, ssh_files: Sequence[str], configured: list[str]) -> None:
        """relay.toml's ``[daemon] ssh_config`` and its host names, as they now are: read from
        the next connect (the running session kept the list it was made with)."""
        self.ssh_files, self._configured = tuple(ssh_files), configured

    async def host_key(self) -> dict[str, Any]:
        """The key the host offers now, reached as a connection would reach it, and whether
        the known_hosts files relay consults record it (``relay trust``)."""
        view, connect_plan = await self.plan()
        kwargs = await self._through_jump(connect_plan, dict(connect_plan.kwargs))
        try:
            key = await self._offered_key(kwargs)
            if key is None:
                raise ConnectFailed(f"{view.hostname} offered no host key")
            recorded = await self._recorded(view, connect_plan)
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

    async def plan(self) -> tuple[SSHView, ConnectPlan]:
        """What this host is now, by relay.toml and the ssh_config files as they are on disk
        (re-read on every connect, as ssh would). Read in a thread: a ``Match exec`` runs its
        command and waits for it (a VPN's probe, `nc -z -w1 bastion 22`), and the whole
        daemon stood still for it, on every attempt (a review's finding)."""
        cfg = self.base_config
        try:
            for _ in range(3):  # again if relay.toml changed meanwhile (bounded: a save loop)
                cfg, files = self.base_config, self.ssh_files
                view = await in_thread(
                    f"ssh_config:{self.key}",
                    functools.partial(
                        sshconfig.resolve, cfg.hostname, port=cfg.port, user=cfg.user, files=files
                    ),
                )
                if self.base_config is cfg and self.ssh_files is files:
                    break
        except (OSError, ValueError) as exc:
            raise SSHSetupFailed(f"ssh_config is not usable for {self.key}: {exc}") from None
        connect_plan = options.plan(cfg, view)
        self.view = view
        if self.base_config is cfg:  # else a reload's settings stand (``reconfigure``)
            self.config = connect_plan.config
        for note in connect_plan.notes:
            if note not in self._noted:
                self._noted.add(note)
                self._log.warning("ssh_config", note=note)
        return view, connect_plan

    async def connect_once(
        self, deadline: float, ask: Prompter | None = None, same_address: str | None = None
    ) -> tuple[asyncssh.SSHClientConnection, _Client]:
        """One attempt, bounded by ConnectTimeout (a login's by LOGIN_TIMEOUT_S) and
        ``deadline``; the connection and its client (which records why it ended). A direct
        one goes to ``same_address`` if the host name still has it (``_Direct``)."""
        started = time.monotonic()
        view, connect_plan = await self.plan()
        cfg = connect_plan.config
        # else a tunnel, not TCP: relay.toml's way there, or ssh_config's (a ProxyCommand, or
        # ProxyJump's several hops, which asyncssh follows itself)
        hops = str(view.get("ProxyJump") or "").lower()
        proxied = view.get("ProxyCommand") is not None or hops not in ("", "none")
        direct = not (connect_plan.jump or cfg.proxy_command or proxied)
        limit = cfg.connect_timeout_s if ask is None else LOGIN_TIMEOUT_S
        timeout_s = max(0.1, min(limit, deadline - started))
        # A login's LOGIN_TIMEOUT_S is the person's, from the server's first prompt; reaching
        # the server before it (TCP, its version line, the key exchange, the keys offered) is
        # bounded as every connect is: a dead path says so in connect_timeout_s, not after
        # ten minutes of silence at the terminal.
        reach_s = max(0.1, min(cfg.connect_timeout_s, timeout_s))
        kwargs = dict(connect_plan.kwargs, connect_timeout=timeout_s, login_timeout=timeout_s)
        agent = identity.agent_path(view.get("IdentityAgent"), self._agent())
        if agent is not None:
            kwargs["agent_path"] = agent
        who = f"{view.user}@{view.hostname}"
        client = _Client(ask, who)
        offered: asyncssh.SSHKey | None = None
        recorded: hostkeys.Recorded | None = None
        try:
            recorded = await self._recorded(view, connect_plan)
            kwargs["known_hosts"] = recorded.known_hosts()
            if cfg.identity_files is not None:
                kwargs["client_keys"] = await identity.client_keys(
                    cfg.identity_files, host=self.key, agent=agent
                )
                kwargs["ignore_encrypted"] = True
            kwargs = await self._through_jump(connect_plan, kwargs)
            if direct and "tunnel" not in kwargs:
                bind = view.get("BindAddress")
                family = view.get("AddressFamily") or socket.AF_UNSPEC
                kwargs["tunnel"] = _Direct(
                    bind and str(bind), same_address, self._moved, family=int(family)
                )

            async def attempt() -> asyncssh.SSHClientConnection:
                ends = asyncio.get_running_loop().time() + timeout_s
                async with asyncio.timeout(reach_s) as bound:
                    client.person_asked = functools.partial(bound.reschedule, ends)
                    return await asyncssh.connect(
                        cfg.hostname, client_factory=lambda: client, **kwargs
                    )

            try:
                conn = await attempt()
            except asyncssh.HostKeyNotVerifiable:
                if not await self._accept_new(view, connect_plan, recorded, kwargs):
                    raise
                client = _Client(ask, who)  # the key is recorded now: once more, as ssh would
                recorded = await self._recorded(view, connect_plan)
                kwargs["known_hosts"] = recorded.known_hosts()
                conn = await attempt()
        except RelayError:
            raise
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # cancelled (a hedge that lost, a shutdown), which asyncssh reports as the
                # connection lost: not the host's failure, and not to be logged as one
                raise asyncio.CancelledError from None
            if isinstance(exc, asyncssh.HostKeyNotVerifiable):
                offered = await self._offered(kwargs)
            bound_s = timeout_s if client.asked else reach_s
            setting_s = limit if client.asked else cfg.connect_timeout_s
            # the round's deadline came first: not a setting's value. A deadline of now plus
            # the setting (a lone attempt's) leaves it a few microseconds short: the setting,
            # said as relay.toml has it
            cut_short = setting_s - bound_s > CUT_SHORT_S
            err = self._translate(
                exc,
                view,
                connect_plan,
                bound_s if cut_short else setting_s,
                offered=offered,
                recorded=recorded,
                elapsed_s=time.monotonic() - started,
                reached=client.reached() if direct else "none",
                cut_short=cut_short,
            )
            if isinstance(err, AuthenticationFailed) and client.person_needed:
                err = LoginNeeded(
                    f"{view.user}@{view.hostname} asks for {' and '.join(client.person_needed)} "
                    f"after the keys relay offered, and relay never answers those during a "
                    f"launch: run `relay login {self.key}` in a terminal once, or give relay a "
                    f"key the server accepts on its own (identity_files or ssh-agent)"
                )
            if isinstance(err, ConnectFailed) and direct:
                err.answered = answered(exc, client.reached())
            self._log.warning("connect failed", error=err.message)
            raise err from None
        jump = self._jump_host(connect_plan)
        self.via = jump.key if jump is not None else None
        self.via_host = jump
        peer = conn.get_extra_info("peername") if direct else None
        self.reached = str(peer[0]) if peer else None
        self.status.last_error = None
        self.status.set("connected")
        self._log.info("connected", connect_ms=round((time.monotonic() - started) * 1000, 1))
        return conn, client

    def _moved(self, address: str) -> None:
        """The host name has no longer the address a resume wanted (``_Direct``): said
        once per address, not once per attempt."""
        if f"moved {address}" not in self._noted:
            self._noted.add(f"moved {address}")
            self._log.warning(
                "the host name no longer has the address relay's agent was reached at; "
                "connecting by name (another machine there ends the kernels)",
                address=address,
            )

    def _translate(
        self,
        exc: BaseException,
        view: SSHView,
        connect_plan: ConnectPlan,
        timeout_s: float,
        **found: Any,
    ) -> RelayError:
        """``exc`` as the one line ``relay.ssh.errors`` makes of it for this host; ``found``:
        what the attempt learned (``translate_connect_error``'s offered, recorded, ...)."""
        return translate_connect_error(
            exc,
            alias=self.key,
            view=view,
            known_hosts=connect_plan.known_hosts,
            configured=self._configured,
            config_source=self._config_source,
            timeout_s=timeout_s,
            **found,
        )

    async def _recorded(self, view: SSHView, connect_plan: ConnectPlan) -> hostkeys.Recorded:
        """What the known_hosts files record for the host, looked up as ssh looks it up
        (``hostkeys``): the one look-up connections, ``relay trust`` and ``relay check`` use.
        Raises OSError for a file that exists but cannot be read. In a thread: a site's
        known_hosts of thousands of lines took the daemon half a second per attempt."""
        files, (name, port) = connect_plan.known_hosts, hostkeys.known_as(view)
        recorded = await in_thread(
            f"known_hosts:{self.key}", lambda: hostkeys.lookup(files, name, port)
        )
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
        except OSError as exc:
            # said as what it is (a full disk, a read-only home), not as a key to check with
            # the host's administrator, which is what a launch said
            self._log.warning("cannot record a new host key", file=str(files[0]), error=str(exc))
            raise cannot_write(
                f"the new host key of {hostkeys.entry_name(name, port)} to {files[0]} "
                f"(StrictHostKeyChecking accept-new)",
                exc,
                "and launch again",
            ) from None
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
        recorded = await self._recorded(view, connect_plan)
        kwargs = dict(connect_plan.kwargs, known_hosts=recorded.known_hosts())
        return await self._through_jump(connect_plan, kwargs)

    async def _through_jump(
        self, connect_plan: ConnectPlan, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """``kwargs`` with the jump host's connection (shared, kept open) as the tunnel."""
        jump = self._jump_host(connect_plan)
        if jump is not None:
            kwargs["tunnel"] = await jump.connection()
        return kwargs

    def _jump_host(self, connect_plan: ConnectPlan) -> JumpHost | None:
        if not connect_plan.jump:
            return None
        assert self._jump is not None
        return self._jump(connect_plan.jump)
