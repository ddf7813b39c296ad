"""The daemon: its hosts, kernels and requested forwards, the operations on them, shutdown.

``serve(config, socket_path, ...)`` runs until ``shutdown_trigger`` completes (SIGTERM/SIGINT
by default). Clients talk to it through ``relay.control``; the launch path reads top to
bottom as daemon (``Daemon.launch``) -> host connection (``relay.ssh.host``) -> kernel
(``relay.kernels``) -> forwards and supervisor (``relay.ssh``).

Every resource has one owner that closes and awaits it: a host session its connection,
supervisor and spare listeners; a kernel its forwards, hook and host hold; a requested
forward (``forward`` on the control socket) its listeners, channels and host hold, and it
stays in ``relay status`` until its channels close. Shutdown (``Daemon.aclose``) is scripted
and bounded by ``SHUTDOWN_GRACE_S``:

1. new launches are refused with a clear message (the socket stays open meanwhile, so a shim
   gets that message instead of starting a second daemon);
2. every kernel is terminated (SIGTERM, then SIGKILL after the host's ``terminate_grace_s``)
   and its controller shim told; compute kernels end too: their links run through us;
3. the control socket stops listening and its conversations end; requested forwards, host
   sessions (supervisors, listeners, connections) are closed and awaited, a host behind a
   jump host or Slurm login node before the host it goes through;
4. past the grace period every SSH connection is aborted outright. A second signal exits at
   once. Hosts with relay's agent (docs/agent.md) are told goodbye first of all, with their
   terminate_grace_s (and again with none on a second signal): their kernels end even if the
   daemon does not get to end them itself. Their answer is waited for (2 s, longer while the
   agent is still heard from) before step 2: one that does not come may not have heard, and
   those kernels' links end then, their shims told that the kernels may run on until the
   window or relay's next connection (``shutdown_line``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import structlog

from relay import __version__, heap, protocol, settings, wake
from relay.activation import Notifier, activated_socket
from relay.agent.expose import AgentExpose
from relay.agent.forward import AgentForward
from relay.agent.session import AgentSession
from relay.control import ControlServer, DaemonLock, prepare_socket_dir
from relay.daemontag import daemon_tag
from relay.errors import (
    BadRequest,
    ConfigError,
    ConnectFailed,
    ForwardFailed,
    NotBack,
    RelayError,
    ShuttingDown,
    host_header,
    shutdown_cause,
)
from relay.kernels import Kernel, launch, new_kernel_id
from relay.lite import locks
from relay.lite.linkname import LOOPBACK, LinkName, LinkNameError
from relay.log import drain as drain_log
from relay.log import problem as log_problem
from relay.settings import HostConfig, RelayConfig
from relay.slurm.nodes import Clusters
from relay.ssh import hookfile, remote_scripts
from relay.ssh.exposed import ExposeForward
from relay.ssh.forwards import CallbackForward, hold_until_connected
from relay.ssh.host import Hold, HostSession, Prompter, close_in_order
from relay.tasks import TaskSet

__all__ = ["Daemon", "serve"]

SHUTDOWN_GRACE_S = 20.0
# a host session relay.toml does not name is dropped after this long with nothing to do
FORGET_AFTER_S = 600.0
MAX_RESERVED_FORWARDS = 512  # relay connect --kernels N: remote listeners asked for at most
log = structlog.get_logger("relay.daemon")


def process_stats() -> dict[str, Any]:
    rss_kb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    return {"rss_kb": rss_kb, "fds": len(os.listdir(fd_dir)), "tasks": len(asyncio.all_tasks())}


@dataclass(eq=False)
class RequestedForward:
    """A link opened on a local client's request; registered until its channels close."""

    name: str
    direction: str
    host: HostSession
    forward: CallbackForward | ExposeForward | AgentForward | AgentExpose
    hold: Hold
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set once it is gone

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "direction": self.direction,
            "host": self.host.key,
            "channels": self.forward.snapshot(),
        }


class Daemon:
    def __init__(
        self,
        config: RelayConfig,
        config_source: str = "relay.toml",
        socket_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_source = config_source
        self.socket_path = socket_path
        self.tag, self.tag_problem = daemon_tag(socket_path or Path("relay.sock"))
        self.hosts: dict[str, HostSession] = {}
        self.kernels: dict[str, Kernel] = {}
        self.forwards: dict[str, RequestedForward] = {}
        self.clusters = Clusters(self.hosts, self._new_session, self.tag)
        self.control: ControlServer | None = None  # serve() builds it (relay check needs none)
        self._tasks = TaskSet(log)
        self.stopping = False
        self.started_at = time.time()
        # the newest client's SSH_AUTH_SOCK (its launch or connect request), for connections
        # opened from now on: the daemon may have started before ssh-add, or elsewhere
        self.environ_agent: str | None = os.environ.get("SSH_AUTH_SOCK")
        # relay.toml as it was last read; a changed file is read again before any request.
        # Not stamped here: ``config`` was read before this daemon was made (relay serve
        # reads it, then waits for its locks), and a save meanwhile would pass for read; the
        # first request reads the file again (a review's reproduction)
        self.config_path = Path(config_source)
        self._config_stamp: tuple[int, int, int] | object | None = _UNREAD
        self.config_error: str | None = None  # a newer file that could not be used
        self._config_error_host: str | None = None  # the [hosts] entry at fault, if one is
        self.stop_requested: asyncio.Future[str] | None = None
        self.stop_reason: str | None = None  # relay stop, relay restart, a signal's name
        # entries removed from relay.toml while in use: their sessions keep the settings they
        # had until nothing runs there (``reload``)
        self._kept: set[str] = set()
        self.heap = heap.Rest()  # its free pages given back at the tick (relay.heap)

    # -- hosts -----------------------------------------------------------------------------
    def watch_wakes(self) -> None:
        """Tell every host when this machine has slept, and have each look at its
        connection's own address (``relay.wake``)."""
        self._tasks.spawn(wake.watch(self._tick), name="wake-watch")

    def _tick(self, late_s: float) -> None:
        if late_s > wake.LATE_S:
            self._woke(late_s)
        carried = self._carried()
        for session in list(self.hosts.values()):
            session.check_address(carried.get(session.key, ()))
        self._forget_unused(carried)
        try:
            self.heap.tick()
        except Exception as exc:  # the wake watch this tick serves goes on
            log.warning("heap look failed", error=repr(exc))

    def _forget_unused(self, carried: dict[str, list[HostSession]]) -> None:
        """Drop the sessions of hosts relay.toml does not name (an ad-hoc name, a Slurm
        compute node, an entry since removed) that have had nothing to do for
        FORGET_AFTER_S: else every host ever named stayed in the daemon (some 60 KB each) and
        in `relay status` for the daemon's life (a review found it; a cluster's nodes alone
        are hundreds over weeks). What a named host needs again is made again."""
        if self.stopping:
            return
        now = time.time()
        for key, session in list(self.hosts.items()):
            since = session.unused_since()
            if (
                since is None
                or now - since < FORGET_AFTER_S
                or key in self.config.hosts
                or self._in_use(key, session, carried)
            ):
                continue
            del self.hosts[key]
            self._kept.discard(key)
            log.info("host forgotten", host=key, unused_s=round(now - since))
            self._tasks.spawn(session.aclose(), name=f"forget:{key}")

    def _woke(self, asleep_s: float) -> None:
        log.info("woke", asleep_s=round(asleep_s, 1))
        carried = self._carried()
        for session in list(self.hosts.values()):
            session.woke(asleep_s, carried.get(session.key, ()))

    def _carried(self) -> dict[str, list[HostSession]]:
        """By host key, the hosts whose last connection went through it (``via``: a
        ProxyJump, a Slurm login node), directly or through others (a site's gateway
        carries the login node behind it and the compute nodes behind that)."""
        direct: dict[str, list[HostSession]] = {}
        for h in self.hosts.values():
            if h.via is not None:
                direct.setdefault(h.via, []).append(h)
        carried: dict[str, list[HostSession]] = {}
        for key in direct:
            below, seen, todo = [], {key}, list(direct[key])
            while todo:  # each host once: a loop of jump hosts (refused by ssh) ends too
                h = todo.pop()
                if h.key not in seen:
                    seen.add(h.key)
                    below.append(h)
                    todo.extend(direct.get(h.key, ()))
            carried[key] = below
        return carried

    def host(self, name: str, *, adhoc: bool | None = None) -> HostSession:
        if adhoc is None:  # a client's name (a jump host is the running configuration's)
            self._refuse_if_rejected(name)
        key, cfg = self.config.resolve(name, self.config_source, adhoc=adhoc)
        session = self.hosts.get(key)
        if session is None:
            session = self.hosts[key] = self._new_session(key, cfg)
        session.asked_at = time.time()  # not forgotten under the request (_forget_unused)
        return session

    def _refuse_if_rejected(self, name: str) -> None:
        """A name the running configuration has no entry for, while a newer relay.toml was
        rejected for that entry (or for the file as a whole: it may be the one adding it), is
        refused with the file's error: it is not an ad-hoc host by accident of a typo."""
        if self.config_error is None or name in self.config.hosts:
            return
        if self._config_error_host in (None, name):
            raise ConfigError(self.config_error, self._config_error_host)

    def _new_session(self, key: str, cfg: HostConfig) -> HostSession:
        return HostSession(
            key,
            cfg,
            tag=self.tag,
            jump=self._jump,
            configured=sorted(self.config.hosts),
            config_source=self.config_source,
            ssh_files=self.config.daemon.ssh_config,
            agent=lambda: self.environ_agent,
        )

    def note_client(self, ssh_auth_sock: str | None) -> None:
        """A client's environment, for connections opened from now on."""
        if ssh_auth_sock:
            self.environ_agent = ssh_auth_sock

    def _jump(self, name: str) -> HostSession:
        # a jump host named in relay.toml was checked at load; one from the user's ssh_config
        # (ProxyJump) is the user's own word, whatever allow_adhoc_hosts says
        return self.host(name, adhoc=True)

    def refuse_if_stopping(self, what: str) -> None:
        if self.stopping:
            raise ShuttingDown(
                f"relay is shutting down and takes no new {what}; "
                f"retry once it has stopped (it restarts on the next launch)"
            )

    # -- kernels ---------------------------------------------------------------------------
    async def launch(self, req: protocol.LaunchRequest) -> Kernel:
        self.refuse_if_stopping("launches")
        self.note_client(req.ssh_auth_sock)
        try:
            link = LinkName.parse(req.linkname)
        except LinkNameError as exc:
            raise BadRequest(str(exc)) from None
        host = self.host(req.host)
        kernel = req.kernel or host.config.kernel
        if not kernel and host.key not in self.config.hosts:  # a mistyped alias, likely
            known = ", ".join(sorted(self.config.hosts)) or "none"
            raise BadRequest(
                f"no kernel given, and {host.key!r} is not a [hosts] entry of "
                f"{self.config_source} (configured: {known}): fix the host's name, or pass "
                f"the kernel path as KERNEL, or set 'kernel' in its [defaults]"
            )
        if not kernel:  # a [hosts] entry without one
            raise BadRequest(
                f"no kernel given: pass the kernel path as KERNEL or set 'kernel' "
                f"in {host_header(host.key)} of {self.config_source}"
            )
        args = host.config.compute_args if req.mode == "compute" else host.config.controller_args
        kernel_id = new_kernel_id()
        structlog.contextvars.bind_contextvars(host=host.key, kernel=kernel_id)
        # a Slurm host's kernels run in its jobs, on compute nodes (relay.slurm)
        start = self.clusters.launch if host.config.slurm is not None else launch
        k = await start(
            host,
            kernel=kernel,
            link=link,
            mode=req.mode,
            extra_args=list(args),
            kernel_id=kernel_id,
        )
        self.kernels[k.id] = k
        self._tasks.spawn(self._reap(k, kernel), name=f"reap:{k.id}")
        if self.stopping:  # started as the shutdown began, after it counted the kernels
            k.end_reason = k.end_reason or "relay shut down as the kernel started"
            await k.terminate()
            self.refuse_if_stopping("launches")
        return k

    async def _reap(self, k: Kernel, kernel: str) -> None:
        """Everything about a launched kernel until it is gone. A compute kernel's shim had
        its answer before the link was connected: one that exits first, or does not call
        back within launch_timeout_s, is recorded (the Parallel package will only say that
        its link never connected) and ended. ``released`` is set last."""
        status: int | None = None
        try:
            try:
                await asyncio.shield(k.callback)
                connected = True
            except RelayError as exc:
                connected = False
                # kept for `relay status`, read later: an outage's line as it was, not "is"
                kept = exc.afterwards if isinstance(exc, NotBack) else exc.message
                why = await self.clusters.explain(k) or kept
                k.log.warning("compute kernel failed after launch", error=why)
                k.named_host.record_failure(k.id, kernel, why)
                await k.terminate(grace_s=1.0)
            status = await asyncio.shield(k.exited)
            # the host's agent ended it (the window ran out): that is why, and Slurm is not
            # asked (squeue through a login node the same outage cut off held the shim's
            # line back by launch_timeout_s; a review's reproduction)
            by_agent = k.ended_with_agent() if connected and status is None else None
            if connected and by_agent is None and (ended := await self.clusters.explain(k)):
                k.log.warning("kernel ended by slurm", reason=ended)  # ended by Slurm
                k.named_host.record_failure(k.id, kernel, ended)
            elif connected and status is not None and (ended := k.unexplained_end(status)):
                # killed by something else than relay (the host's OOM killer), or ended
                # while its connection was down: its shim says so, and `relay status`
                k.end_reason = ended
                k.log.warning("kernel ended", reason=ended)
                k.named_host.record_failure(k.id, kernel, ended)
            elif by_agent is not None:
                # the window ran out with the connection down (or the agent was killed): the
                # shim was told; `relay status` keeps it, as the host's own line moves on
                k.log.warning("kernel ended", reason=by_agent)
                k.named_host.record_failure(k.id, kernel, by_agent)
        finally:
            self.kernels.pop(k.id, None)
            self.clusters.release(k)
            await k.aclose()
        k.log.info("kernel exited", status=status, output=k.output or None)

    async def terminate_kernels(self) -> None:
        """End every kernel and wait until each is released (its shim can then be told)."""
        kernels = list(self.kernels.values())
        if kernels:
            log.info("terminating kernels", count=len(kernels))
            await asyncio.gather(*(k.terminate() for k in kernels), return_exceptions=True)
            await asyncio.gather(*(k.released.wait() for k in kernels))

    # -- links and connections on request --------------------------------------------------
    async def forward(self, req: protocol.ForwardRequest) -> str:
        """Open a link across a host's connection on a local client's request."""
        self.refuse_if_stopping("links")
        try:
            target = LinkName.parse(req.linkname)
        except LinkNameError as exc:
            raise BadRequest(str(exc)) from None
        host = self.host(req.host)
        hold = host.hold()  # no idle close while the link lives
        deadline = asyncio.get_running_loop().time() + host.config.launch_timeout_s
        try:
            await host.connection_by(deadline)  # resuming: as a launch waits for it
            live = await host.live()
            fwd: CallbackForward | ExposeForward | AgentForward | AgentExpose
            # through the host's agent, if it has one: the link outlives the connection (the
            # agent reaches only the host's loopback, and there a listener of the user's own)
            if req.direction == "callback" and live.agent is not None:
                fwd = await AgentForward.open(live.agent, target, host.local_guard)
                await _kept_by_agent(fwd, live.agent, host.key, deadline)
            elif req.direction == "callback":
                fwd = await CallbackForward.open(
                    live.connection, target, host.key, live.guard, host.local_guard, live.pool
                )
            elif live.agent is not None and target.data.host == target.message.host == LOOPBACK:
                fwd = await AgentExpose.to(live.agent, target, host.local_guard)
            else:
                fwd = await ExposeForward.to(live.connection, target, host.local_guard)
        except RelayError:
            hold.release()
            raise
        except (asyncssh.Error, OSError) as exc:
            hold.release()
            raise ForwardFailed(f"cannot open a link to {host.key}: {exc}") from None
        name = str(fwd.name)
        requested = self.forwards[name] = RequestedForward(name, req.direction, host, fwd, hold)
        self._tasks.spawn(self._keep(requested), name=f"forward:{name}")
        log.info(
            "link forwarded on request",
            host=host.key,
            direction=req.direction,
            link=str(target),
            rewritten=name,
        )
        return name

    async def _keep(self, requested: RequestedForward) -> None:
        """A requested forward until both its channels have closed (or nobody connected
        within launch_timeout_s): then it is released and leaves ``relay status``."""
        try:
            fwd = requested.forward
            if await hold_until_connected(fwd, requested.host.config.launch_timeout_s):
                await fwd.peers_closed()
        finally:
            self.forwards.pop(requested.name, None)
            await requested.forward.aclose()
            requested.hold.release()
            requested.released.set()

    async def connect(self, req: protocol.ConnectRequest) -> dict[str, Any]:
        """Open a host's connection, supervisor and spare forwards ahead of any launch, so
        that the first kernel does not pay connect and authentication."""
        self.refuse_if_stopping("connections")
        self.note_client(req.ssh_auth_sock)
        host = self.host(req.host)
        if host.config.slurm is not None:
            return await self._ask_slurm(host, req.kernels, time.monotonic())
        kernel = req.kernel or host.config.kernel or ""
        answer = await self._warm(host, time.monotonic(), req.kernels, kernel)
        log.info("host warmed", host=host.key, kernels=req.kernels)
        return answer

    async def _ask_slurm(self, host: HostSession, kernels: int, started: float) -> dict[str, Any]:
        """A Slurm host: the login node's connection, and room for ``kernels`` asked of Slurm
        at once (the launches then wait for the job, not for a job each)."""
        try:
            await host.connection()
        except (asyncssh.Error, OSError) as exc:
            raise ConnectFailed(f"the SSH connection to {host.key} failed: {exc}") from None
        alloc = self.clusters.allocation(host)
        if kernels:
            await alloc.reserve(kernels)
        log.info("slurm host warmed", host=host.key, kernels=kernels)
        return {
            "event": "connected",
            "host": host.key,
            "connect_ms": round((time.monotonic() - started) * 1000, 1),
            "rtt_ms": None,
            "slurm_jobs": alloc.snapshot()["jobs"],
        }

    async def _warm(
        self, host: HostSession, started: float, kernels: int = 0, kernel: str = ""
    ) -> dict[str, Any]:
        """The host's connection, supervisor and spare forwards up; for ``kernels`` compute
        kernels announced, two forwards each and their executable looked for, at once (one
        round trip for both), so that the first Run is answered as soon as its kernel's start
        line is written. The "connected" answer."""
        answer: dict[str, Any] = {"event": "connected", "host": host.key}
        deadline = asyncio.get_running_loop().time() + host.config.launch_timeout_s
        try:
            await host.connection_by(deadline)  # resuming: as a launch waits for it
            live = await host.live()
            if kernels:
                # asked first, answered while the spares are reserved (held here: a miss is
                # not kept by the supervisor, and may come before the reserve is done)
                known = live.supervisor.check_kernel(kernel) if kernel else None
                slots = min(2 * kernels, MAX_RESERVED_FORWARDS)
                # the agent's spare link streams, or sshd's spare listeners (no agent here)
                spares = live.agent if live.agent is not None else live.pool
                await spares.reserve(slots, linger_s=host.config.launch_timeout_s)
                if known is not None:
                    answer["kernel"] = {"path": kernel, "found": await asyncio.shield(known)}
        except (asyncssh.Error, OSError) as exc:
            raise ConnectFailed(f"the SSH connection to {host.key} failed: {exc}") from None
        answer["connect_ms"] = round((time.monotonic() - started) * 1000, 1)
        answer["rtt_ms"] = host.snapshot()["rtt_ms"]
        return answer

    def status(self) -> dict[str, Any]:
        hosts = []
        for h in self.hosts.values():
            shown = h.snapshot()
            # a Slurm login node counts the kernels on its nodes; each node its own
            shown["kernels"] = sum(h in (k.host, k.named_host) for k in self.kernels.values())
            slurm = self.clusters.snapshot(h)
            if slurm is not None:
                shown["slurm"] = slurm
            hosts.append(shown)
        return {
            "event": "status",
            "daemon": {
                "pid": os.getpid(),
                "version": __version__,
                "uptime_s": round(time.time() - self.started_at, 1),
                "socket": str(self.socket_path),
                "stopping": self.stopping,
                "config": str(self.config_path),
                "config_error": self.config_error,
                "log_problem": log_problem(),  # a full disk: the log itself cannot say so
                **process_stats(),
            },
            "hosts": hosts,
            "kernels": [k.snapshot() for k in self.kernels.values()],
            "forwards": [f.snapshot() for f in self.forwards.values()],
        }

    # -- steering --------------------------------------------------------------------------
    def config_warning(self) -> str | None:
        """What a launch's shim says beside its answer while relay.toml's newer version is
        rejected: the launch went ahead on the configuration loaded before (the person who
        just changed a kernel path would otherwise get the old kernel without a word)."""
        if self.config_error is None:
            return None
        return (
            f"this launch used the configuration loaded before, not the file as it is now: "
            f"{self.config_error} (fix it; `relay reload` says when it is taken)"
        )

    def config_settle_s(self, now: float | None = None) -> float:
        """How long a request waits before relay.toml is read: a file changed less than
        CONFIG_SETTLE_S ago may not be whole yet. An editor that saves in place empties the
        file, then writes it, and an empty file is valid TOML (no [hosts]): a launch read
        in between ran with none (a review's reproduction)."""
        stamp = _stamp(self.config_path)
        if stamp is None or stamp == self._config_stamp:
            return 0.0
        age = (time.time() if now is None else now) - stamp[2] / 1e9
        return CONFIG_SETTLE_S - age if 0 <= age < CONFIG_SETTLE_S else 0.0

    def reload(self, *, force: bool = False) -> dict[str, Any]:
        """Read relay.toml again if it changed (or ``force``): validated first, so a broken
        file is reported (logged, in ``relay status``, to ``relay reload``, to a launch of a
        host it was meant to add) and the running configuration stays. No file is no [hosts]:
        relay runs on ssh_config alone. Every host takes its entry as it now is (see
        ``HostSession.reconfigure``), whatever came before."""
        stamp = _stamp(self.config_path)
        read = {
            "event": "reloaded",
            "path": str(self.config_path),
            "found": stamp is not None,
            "ssh_config": list(self.config.daemon.ssh_config),
        }
        if not force and stamp == self._config_stamp:
            return {**read, "changed": False}
        self._config_stamp = stamp
        try:
            config, _ = settings.load(self.config_path, missing_ok=True)
        except RelayError as exc:
            if _stamp(self.config_path) != stamp:
                return self._changed_while_read(read, force)
            self.config_error = exc.message
            self._config_error_host = exc.host if isinstance(exc, ConfigError) else None
            log.error("configuration not reloaded; the running one stays", error=exc.message)
            if force:
                raise ConfigError(f"{exc.message} (relay goes on with the running one)") from None
            return {**read, "changed": False, "error": exc.message}
        if _stamp(self.config_path) != stamp:
            return self._changed_while_read(read, force)
        self.config_error = self._config_error_host = None
        changed = config != self.config
        before, self.config = self.config, config
        notes = self._daemon_notes(before.daemon, config.daemon)
        carried = self._carried()
        for key, session in list(self.hosts.items()):
            session.connector.files_changed(config.daemon.ssh_config, sorted(config.hosts))
            if key in config.hosts:
                self._kept.discard(key)  # its entry is back
            elif key in before.hosts or key in self._kept:
                # an entry removed (or renamed): not the ad-hoc host of that name, whose
                # settings (port 22, no keys) took the live connection at its next reconnect
                # and lost its kernels and a Slurm job's scancel (a review's finding), at
                # this reload or any later one while it is in use
                if self._in_use(key, session, carried):
                    if key not in self._kept:
                        self._kept.add(key)
                        notes.append(
                            f"{key}: removed from relay.toml; what runs there keeps the entry "
                            f"as it was until it ends"
                        )
                    continue
                self._kept.discard(key)
                del self.hosts[key]  # a later request for the name makes it afresh
                self._tasks.spawn(session.aclose(), name=f"forget:{key}")
                continue
            with contextlib.suppress(RelayError):
                _, cfg = config.resolve(key, self.config_source, adhoc=True)
                if note := session.reconfigure(cfg):
                    notes.append(note)
        notes += self.clusters.reconfigure()  # compute nodes' sessions, from their clusters'
        if changed:
            log.info("configuration reloaded", path=str(self.config_path))
        return {
            **read,
            "changed": changed,
            "ssh_config": list(config.daemon.ssh_config),
            "notes": notes,
        }

    def _daemon_notes(self, old: settings.DaemonConfig, new: settings.DaemonConfig) -> list[str]:
        """What a reload cannot change in a running daemon, said rather than ignored."""
        notes = []
        if new.socket != old.socket:
            notes.append(
                f"[daemon] socket applies from the next start: this daemon listens on "
                f"{self.socket_path} until it stops (stop it with RELAY_SOCKET={self.socket_path} "
                f"relay stop; commands that read the new path do not find it)"
            )
        if new.log_level != old.log_level:
            notes.append("[daemon] log_level applies from the next start (`relay restart`)")
        return notes

    def _in_use(
        self, key: str, session: HostSession, carried: dict[str, list[HostSession]]
    ) -> bool:
        """Whether the host has something to do: a connection, holds, an agent, kernels, a
        host it carries (a jump host), a Slurm allocation of its own or of its cluster."""
        return (
            session.unused_since() is None
            or key in carried
            or key.partition("/")[0] in self.clusters.allocations
            or any(session in (k.host, k.named_host) for k in self.kernels.values())
        )

    def _changed_while_read(self, read: dict[str, Any], force: bool) -> dict[str, Any]:
        """relay.toml was saved again while it was read (a save in chunks): what was read may
        be half of it, so the running configuration stays, and the file is read again at the
        next request, or by the `relay reload` this asks for."""
        self._config_stamp = _UNREAD
        log.warning("configuration changed while read; read again at the next request")
        if force:
            raise ConfigError(
                f"{self.config_path} changed while relay read it (an editor still saving it?); "
                "run `relay reload` again (relay goes on with the running one)"
            )
        return {**read, "changed": False}

    def request_stop(self, why: str) -> None:
        """A graceful shutdown: ``why`` (``relay stop``, ``relay restart``, ``SIGTERM``...) is
        logged and told to every controller's shim."""
        if self.stop_requested is not None and not self.stop_requested.done():
            self.stop_reason = why
            log.info("shutting down", reason=why)
            self.stop_requested.set_result(why)

    def shutdown_line(self, k: Kernel) -> str | None:
        """What a controller's shim is told when the shutdown leaves its kernel with no exit
        status: where the host's agent never answered relay's goodbye, that it may run on
        (``HostSession.unheard_goodbye``); else why it ended (``Kernel.end_reason``)."""
        unheard = k.host.unheard_goodbye()
        if unheard is not None:
            return f"{shutdown_cause(self.stop_reason)}; {unheard}"
        return k.end_reason

    def left_to_agents(self) -> list[str]:
        """What a stop now leaves to the hosts' agents, for ``relay stop`` to say: the kernels
        of each host whose connection is down (``HostSession.stranded``)."""
        notes = []
        for h in self.hosts.values():
            n = sum(1 for k in self.kernels.values() if k.host is h)
            if n and (stranded := h.stranded()) is not None:
                notes.append(f"{n} kernel{'s' if n != 1 else ''} on {h.key}: {stranded}")
        return notes

    async def login(self, req: protocol.LoginRequest, ask: Prompter) -> dict[str, Any]:
        """``relay login HOST``: (re)open the host's connection with a person answering the
        server's password and keyboard-interactive prompts; every later launch uses it."""
        self.refuse_if_stopping("logins")
        self.note_client(req.ssh_auth_sock)
        host = self.host(req.host)
        started = time.monotonic()
        already = await host.login(ask)
        answer = await self._warm(host, started)  # the supervisor and spares, as relay connect
        log.info("logged in", host=host.key, already=already)
        return {**answer, "already": already}

    async def host_key(self, name: str) -> dict[str, Any]:
        """The key ``name`` offers, for ``relay trust``: fetched the way a connection would
        reach the host (ssh_config, jump host, proxy command), and whether it is known."""
        session = self.host(name)
        return await session.host_key()

    # -- shutdown --------------------------------------------------------------------------
    async def aclose(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """The whole shutdown, in order, bounded; see the module's docstring."""
        self.stopping = True
        cause = shutdown_cause(self.stop_reason)
        for k in self.kernels.values():  # what each controller's shim says, in one line
            fate = k.host.stranded() or f"the kernel on {k.named_host.key} was ended"
            k.end_reason = k.end_reason or f"{cause}; {fate}"
        for h in self.hosts.values():  # agents end their kernels even if we are cut short
            h.goodbye(h.config.terminate_grace_s)
        # an agent that does not answer may not have heard: its kernels' links end now, and
        # their shims are told so (``shutdown_line``), not that the kernels were ended
        await asyncio.gather(*(h.goodbye_heard() for h in self.hosts.values()))
        try:
            async with asyncio.timeout(grace_s):
                await self.terminate_kernels()
                await self.clusters.aclose()  # scancel: no allocation outlives the daemon
                if self.control is not None:
                    await self.control.aclose()
                await self._tasks.aclose()  # reapers and requested forwards release theirs
                await close_in_order(self.hosts.values())  # behind a jump host first
        except TimeoutError:
            log.warning("shutdown grace exceeded; aborting SSH connections", grace_s=grace_s)
            await asyncio.gather(*(h.abort() for h in self.hosts.values()))
            if self.control is not None:
                await self.control.aclose(force=True)
            await self._tasks.aclose()


_UNREAD = object()  # a stamp no file has: the file is read at the next request
CONFIG_SETTLE_S = 0.2  # a file saved this recently may not be whole yet (``config_settle_s``)


async def _kept_by_agent(
    fwd: AgentForward, agent: AgentSession, host: str, deadline: float
) -> None:
    """A requested forward is answered once the host's agent has been told to keep its
    listeners (``AgentSession.confirmed``): the name it is answered with then outlives an
    outage. Else the forward is closed, and the request says why in one line."""
    try:
        async with asyncio.timeout_at(deadline):
            await agent.confirmed()
    except (TimeoutError, ConnectFailed) as exc:
        await fwd.aclose()
        why = "did not answer" if isinstance(exc, TimeoutError) else "was lost"
        raise ForwardFailed(
            f"the connection to {host} {why} as the link was forwarded, before relay's agent "
            f"there had it: forward it again once `relay status` shows {host} connected"
        ) from None
    except BaseException:
        await fwd.aclose()
        raise


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells that a file changed: inode, size and modification time."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


EXIT_FLUSH_S = 0.3  # a forced exit's last goodbye to the agents, on its way


def _default_trigger(daemon: Daemon) -> Awaitable[None]:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def on_signal(signum: int) -> None:
        if not stop.done():
            daemon.request_stop(signal.Signals(signum).name)
            stop.set_result(None)
        else:  # a second signal forces exit
            log.warning("second signal: exiting now", signal=signal.Signals(signum).name)
            for h in daemon.hosts.values():  # agents: SIGKILL now, not after the grace
                h.goodbye(0.0)
            if any(h.agent is not None for h in daemon.hosts.values()):
                # written to the sockets already (a transport sends at once when it can); sshd
                # is given a moment to pass it on, as it drops what arrives with the close.
                # Blocking: nothing else is to run in this process any more
                time.sleep(EXIT_FLUSH_S)
            drain_log(EXIT_FLUSH_S)  # the line above, to a reader of stderr that reads
            os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop


def _on_hangup(daemon: Daemon) -> None:
    log.info("SIGHUP: reading the configuration again")
    with contextlib.suppress(RelayError):  # a broken file is logged; the running one stays
        daemon.reload(force=True)


def _hangup_while_stopping() -> None:
    log.info("SIGHUP ignored: the daemon is stopping")


async def serve(
    config: RelayConfig,
    socket_path: Path,
    *,
    config_source: str = "relay.toml",
    shutdown_trigger: Awaitable[None] | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
) -> None:
    """Serve the control socket until ``shutdown_trigger`` completes. ``on_ready`` is called
    once the socket accepts (systemd's READY=1 is sent at the same moment)."""
    # What the daemon ships to hosts, read now, not when a host first needs it: an upgrade
    # while it runs (pipx upgrade) replaces the files, and a daemon that read them later
    # installed another release's agent, hook or supervisor (a review's finding: every launch
    # failed until a restart)
    hookfile.HookFile.packaged()
    hookfile.agent_file()
    for script in ("supervisor.sh", "hookinstall.sh", "safedirs.sh"):
        remote_scripts.one_line(script)
    notifier = Notifier()
    inherited = activated_socket()
    if inherited is not None:
        socket_path = Path(inherited.getsockname())
    prepare_socket_dir(socket_path)
    heap.keep()  # under bulk the heap reuses its pages (relay.heap)
    lock = DaemonLock(Path(locks.daemon_lock_path(str(socket_path))))
    daemon = Daemon(config, config_source, socket_path)
    control = daemon.control = ControlServer(daemon)
    loop = asyncio.get_running_loop()
    daemon.stop_requested = loop.create_future()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, _on_hangup, daemon)
    try:
        await control.start(socket_path, inherited)
        daemon.watch_wakes()
        log.info(
            "serving", socket=str(socket_path), pid=os.getpid(), activated=inherited is not None
        )
        if daemon.tag_problem is not None:
            log.warning(
                "machine id not kept: a daemon on another machine with this host name, user id "
                "and socket path would end this one's kernels on the hosts both use; make the "
                "directory writable or set XDG_STATE_HOME",
                error=daemon.tag_problem,
            )
        notifier.notify(ready="1", status=f"serving {socket_path}")
        if on_ready is not None:
            on_ready(daemon)
        trigger = shutdown_trigger if shutdown_trigger is not None else _default_trigger(daemon)
        waiter: asyncio.Future[Any] = asyncio.ensure_future(trigger)
        stop: asyncio.Future[Any] = daemon.stop_requested
        try:
            await asyncio.wait({waiter, stop}, return_when="FIRST_COMPLETED")
        finally:
            if waiter is not trigger:  # a task of ours (the caller's own future is left alone)
                waiter.cancel()
    finally:
        # SIGHUP's handler stays until the shutdown is over: removed, the signal's default
        # (the process ends) would cut the scripted shutdown short, its kernels' shims told
        # the daemon crashed, a Slurm job left allocated (a closed terminal, a reload sent
        # while stopping)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, _hangup_while_stopping)
        notifier.notify(stopping="1", status="terminating kernels and closing connections")
        await daemon.aclose()
        if inherited is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
        log.info("stopped")
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGHUP)
        lock.release()  # last: relay stop waits on it
