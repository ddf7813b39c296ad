"""A kernel's life: forwards, start, callback, exit, teardown.

launch():  remote forwards R1,R2 (server-chosen ports) -> start the kernel with
           -LinkName R1@127.0.0.1,R2@127.0.0.1 -> wait until both channels are connected
           -> cancel the listeners (``Kernel.callback``, settled by a task the kernel owns).
launch() is two steps: ``_acquire`` takes what the kernel needs (the hold, the forwards, its
start through the supervisor) and hands it to a ``Kernel``; ``_answer`` waits until the caller
may have its answer.
When launch() answers depends on the mode:
- controller: once the callback is done, as the front end's Launch command expects;
- compute: once the kernel is started. The Parallel package runs ``$RemoteCommand`` once per
  kernel, one after another, and waits for all only after the last (docs/topology.md §4):
  answering at the callback would serialize the kernels' start-ups (n x about a second).
  "Started" is the supervisor's ``pid`` for a kernel path this connection has not started
  yet, so a missing or non-executable kernel is still the launch's one-line error; for a
  path it has started before, it is the start line written, with no round trip. The daemon
  goes on waiting for the callback (``launch_timeout_s``), and a kernel that exits or never
  calls back is ended and recorded as a failure of its host.
Failure before the answer gives back what was taken (one ``AsyncExitStack``): the host
hold, the listeners, the forwards and the hook; a started kernel is killed. After the
answer the ``Kernel`` owns them and ``Kernel.aclose`` releases them once, when it is gone.
The wait is bounded by the host's launch_timeout_s and ends early, with the kernel's last
output, if the kernel exits or is missing.
terminate(): SIGTERM, then SIGKILL after terminate_grace_s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Literal

import asyncssh
import structlog

from relay.agent.forward import AgentForward
from relay.clock import moment, span
from relay.errors import (
    ConnectFailed,
    ConnectionLost,
    KernelExited,
    KernelMissing,
    LaunchTimeout,
    StartLost,
    host_header,
)
from relay.kernelcmd import build_argv
from relay.lite.linkname import LinkName
from relay.ssh.forwards import CallbackForward, RemoteSlot
from relay.ssh.hookserver import REQUEST_TIMEOUT_S, HookServer
from relay.ssh.host import Hold, HostSession
from relay.ssh.supervisor import RemoteProcess, Supervisor
from relay.tasks import Flag, retrieved

__all__ = ["Kernel", "launch"]

Mode = Literal["controller", "compute"]
_ids = itertools.count(1)
# a failed launch gives back what it took before it answers, on a host that answers: a
# signal's round trip and the forwards' cancellation, the grace of a kernel slow to exit
RELEASE_WAIT_S = 2.0


def _who_ends_it(host: HostSession) -> str:
    """Who ends a kernel relay could not signal because the connection is lost."""
    if host.resumes:  # the signal waits with the agent's other messages (docs/agent.md)
        return (
            "relay's agent there gets the signal once the connection is back, or ends its "
            "kernels when resume_window_s runs out"
        )
    return "the host's supervisor ends its kernels when it notices the session ended"


def ended_line(
    host: str,
    status: int,
    *,
    at: float | None,
    outage: tuple[float, float] | None,
    signum: int | None = None,
    now: float | None = None,
) -> str | None:
    """What a controller's shim says of a kernel that ended and relay did not end it: killed
    by signal ``signum``, or ended at ``at`` during ``outage`` (wall times: our clock); None
    for a kernel that exited by itself while its connection held (the front end sees that for
    itself). ``signum`` is what the agent says (0: it exited); where it is None (what
    ``supervisor.sh``, in sh, says: only a STATUS) a STATUS of 128+N is read as signal N."""
    during = ""
    if outage is not None and at is not None:
        during = f" at {moment(at, now)}, while the connection was down ({span(*outage, now)})"
    if signum is None and 128 < status <= 128 + 64:
        signum = status - 128
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        line = f"the kernel on {host} was killed by {name}{during}; not by relay"
        if signum == signal.SIGKILL:
            return line + ": if the host ran out of memory, `dmesg` there says so"
        return line + ": something on the host ended it"
    if during:
        return f"the kernel on {host} exited with status {status}{during}"
    return None


class Kernel:
    """A started kernel. It owns its link's forwards, its hook (Dynamic), its hold on the
    host and the task that waits for its callback; ``aclose`` releases them, once."""

    def __init__(
        self,
        kernel_id: str,
        host: HostSession,
        hold: Hold,
        mode: Mode,
        frontend_link: LinkName,
        forward: CallbackForward | AgentForward,
        supervisor: Supervisor,
        proc: RemoteProcess,
        hook: HookServer | None = None,
    ) -> None:
        self.hook = hook
        self.id = kernel_id
        # why the kernel was ended from outside (its Slurm job's end, relay's shutdown, a kill
        # on the host: ``unexplained_end``), for the shim and status
        self.end_reason: str | None = None
        self.signalled = False  # relay signalled it (``terminate``)
        self.slurm_job: str | None = None
        # the host the launch named: ``host`` unless that was a Slurm login node
        self.named_host = host
        self.host = host
        self._hold = hold
        self.mode = mode
        self.frontend_link = frontend_link
        self.forward = forward
        self.remote_link = forward.name
        self._supervisor = supervisor
        self._proc = proc
        self.started_at = time.time()
        self.released = Flag()  # set by aclose, once everything is released
        # both channels connected and the listeners cancelled (or why not): set by launch()
        self.callback: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.callback.add_done_callback(retrieved)
        self._following: asyncio.Task[None] | None = None  # the task that settles ``callback``
        # a compute launch: answered once the pid came back ("pid"), once the start line was
        # written, the kernel being known on this connection ("known"), or at its callback
        self.answered_on: str | None = None
        self.log = structlog.get_logger("relay.kernel").bind(host=host.key, kernel=kernel_id)

    @property
    def remote_pid(self) -> int | None:
        return self._proc.pid

    @property
    def exited(self) -> asyncio.Future[int | None]:
        return self._proc.exited

    @property
    def output(self) -> list[str]:
        return list(self._proc.output or ())

    def unexplained_end(self, status: int) -> str | None:
        """Why it ended (``ended_line``) when nothing else says: a signal relay did not
        send, or an end while its connection was down. None if relay ended it
        (``signalled``), or something else says why (``end_reason``: its Slurm job's end,
        relay's shutdown)."""
        if self.end_reason or self.signalled:
            return None
        at = outage = None
        agent = self.host.agent
        ended_at = self._proc.ended_at
        if agent is not None and ended_at is not None:
            at = agent.local_time(ended_at)
            outage = agent.outage_around(ended_at)
        return ended_line(
            self.named_host.key, status, at=at, outage=outage, signum=self._proc.signum
        )

    def ended_with_agent(self) -> str | None:
        """Why the host's agent ended this kernel where relay did not ask it to, and its exit
        status never came (the window ran out with the connection down, the agent was
        killed): the line its shim was told. None otherwise."""
        if self.end_reason or self.signalled or not isinstance(self.forward, AgentForward):
            return None
        return self.forward.ended_unasked

    def connection_lost(self) -> ConnectionLost:
        if self.host.kernels_waiting:  # ended from the front end while resuming
            return ConnectionLost(
                f"the connection to {self.host.key} is down: {_who_ends_it(self.host)}"
            )
        if isinstance(self.forward, AgentForward) and self.forward.ended_because:
            return ConnectionLost(
                f"{self.forward.ended_because}: restart the kernel from the front end"
            )
        reason = self.host.last_error or "connection lost"
        return ConnectionLost(
            f"the SSH connection to {self.host.key} ended ({reason}); "
            f"the kernel ended with it: restart it from the front end"
        )

    def _state(self) -> str:
        if not self.callback.done():
            return "starting"
        if self.signalled and not self.exited.done():
            return "ending"  # relay signalled it (during an outage: once the connection is back)
        if self.host.kernels_waiting and isinstance(self.forward, AgentForward):
            return "resuming"  # its links quiet, waiting for the connection with it
        return "connected"

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host.key,
            "mode": self.mode,
            "remote_pid": self.remote_pid,
            "state": self._state(),
            "frontend_link": str(self.frontend_link),
            "remote_link": str(self.remote_link),
            "age_s": round(time.time() - self.started_at, 1),
            "forwards": self.forward.snapshot(),
            "hook_links": self.hook.snapshot() if self.hook is not None else [],
            **({"slurm_job": self.slurm_job} if self.slurm_job else {}),
        }

    async def terminate(self, grace_s: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL; returns the exit status (None if the connection died).

        Each signal is followed by a ping: the supervisor answers in order, so its pong says
        the signal was delivered. A kernel still running after the grace has ignored it only
        if the pong came; otherwise the signal may never have reached the host (a connection
        that is dead but not yet declared lost), and no second signal would either."""
        grace = grace_s if grace_s is not None else self.host.config.terminate_grace_s
        supervisor = self._supervisor
        for name in ("TERM", "KILL"):
            if self.exited.done():
                break
            self.signalled = True  # what ends it now is relay's doing, not news for its shim
            supervisor.signal(self.id, name)
            if self.host.kernels_waiting:  # no answer can come before the resume: none waited
                self.log.info(
                    "could not signal the kernel",
                    signal=name,
                    reason=f"the connection to {self.host.key} is down; {_who_ends_it(self.host)}",
                )
                self.host.spawn(self._terminate_once_back(grace), name=f"terminate:{self.id}")
                break
            heard = asyncio.ensure_future(supervisor.ping(f"{self.id}{name}"))
            try:
                async with asyncio.timeout(grace):
                    if await asyncio.shield(self.exited) is None:  # the connection ended
                        self.log.info(
                            "could not signal the kernel",
                            signal=name,
                            reason=f"the connection to {self.host.key} is lost; "
                            f"{_who_ends_it(self.host)}",
                        )
            except TimeoutError:
                if heard.done() and not heard.cancelled() and heard.exception() is None:
                    self.log.warning("kernel ignored signal", signal=name)
                    continue
                self.log.warning(
                    "could not signal the kernel",
                    signal=name,
                    reason=f"{self.host.key} has not answered for {grace:g} s: the connection "
                    f"to it looks lost; {_who_ends_it(self.host)}",
                )
                break
            finally:
                heard.cancel()
                await asyncio.gather(heard, return_exceptions=True)
        return self.exited.result() if self.exited.done() else None

    async def _terminate_once_back(self, grace_s: float) -> None:
        """A kernel signalled while its host was resuming: the signal goes with the agent's
        other messages once the connection is back. One that ignores it gets SIGKILL after
        the grace then, as it would have connected (said twice, SIGTERM is harmless)."""
        await self.host.resumed()
        if not self.exited.done() and not self.host.kernels_waiting:
            await self.terminate(grace_s)

    def follow_callback(self, kernel: str, deadline: float) -> None:
        """Wait for the kernel's callback in a task of its own (``callback`` says how it
        went), owned here: ended by ``stop_following`` or ``aclose``."""
        task = asyncio.get_running_loop().create_task(
            _callback(self, kernel, self.host.config.launch_timeout_s, deadline),
            name=f"callback:{self.id}",
        )
        task.add_done_callback(self._followed)
        self._following = task

    def _followed(self, task: asyncio.Task[None]) -> None:
        _settle(self.callback, task)
        if self._following is task:
            self._following = None  # a finished task holds its coroutine: not kept for life

    async def stop_following(self) -> None:
        """Cancel the wait for the callback, if it is still on, and await its end."""
        if self._following is not None:
            self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)

    async def aclose(self) -> None:
        """Release the main link's forwards, the hook (and every link opened through it) and
        the hold on the host. Called once the kernel has exited (or never started)."""
        if self.released.is_set():
            return
        try:
            await self.stop_following()
            await self.forward.aclose()
            if self.hook is not None:
                await self.hook.aclose()
        finally:
            self._hold.release()
            self.released.set()


def new_kernel_id() -> str:
    return f"k{next(_ids)}"


async def launch(
    host: HostSession,
    *,
    kernel: str,
    link: LinkName,
    mode: Mode,
    extra_args: list[str],
    kernel_id: str | None = None,
    wrapper: Sequence[str] = (),
) -> Kernel:
    """Start a kernel on ``host`` that connects back to ``link``. ``wrapper`` goes before the
    kernel's argv (a Slurm job step: ``srun ...``)."""
    # launch_timeout_s bounds the whole launch: connecting, the supervisor, the forwards and
    # the kernel's callback share one deadline
    loop = asyncio.get_running_loop()
    deadline = loop.time() + host.config.launch_timeout_s
    kernel_id = kernel_id or new_kernel_id()  # kept by a second start: a new supervisor's

    async def once() -> Kernel:
        start = functools.partial(
            _start,
            host,
            kernel=kernel,
            link=link,
            mode=mode,
            args=list(extra_args),
            kernel_id=kernel_id,
            wrapper=wrapper,
        )
        k = await _acquire(host, start, deadline)
        k.log.info("launching", mode=mode, link=str(link), remote_link=str(k.remote_link))
        k.follow_callback(kernel, deadline)
        await _answer(k, kernel)
        return k

    try:
        return await once()
    except StartLost as exc:
        # a blip between the launch's listeners and its kernel's start: the agent that was
        # to run it, with no kernel, ended with the connection, so nothing of it runs; made
        # once more on the next connection, within the same deadline (a review's finding:
        # "SSH connection lost" for a launch that a second's blip cut short)
        if loop.time() >= deadline:
            raise
        structlog.get_logger("relay.kernel").info(
            "launching again on the next connection", host=host.key, error=str(exc)
        )
        return await once()


async def _acquire(
    host: HostSession,
    start: Callable[[Hold, contextlib.AsyncExitStack], Awaitable[Kernel]],
    deadline: float,
) -> Kernel:
    """What a kernel needs, taken: a hold on the host, its connection, then (``start``) its
    supervisor, forwards (and hook) and the kernel started. All given back if any of it
    fails; else the returned ``Kernel`` owns it."""
    cfg = host.config
    async with contextlib.AsyncExitStack() as unwind:  # what is taken is given back on failure
        hold = host.hold()  # no idle close while this kernel lives
        unwind.callback(hold.release)
        try:
            # connecting is bounded by launch_timeout_s itself, and says its own error
            await host.connection_by(deadline)
            async with asyncio.timeout_at(deadline):
                k = await start(hold, unwind)
        except TimeoutError:  # the deadline, or the supervisor's first ping unanswered
            late = asyncio.get_running_loop().time() >= deadline
            raise _unanswered(host, cfg.launch_timeout_s if late else None) from None
        except (asyncssh.Error, OSError) as exc:  # the connection died under us
            raise ConnectFailed(
                f"the SSH connection to {host.key} was lost during launch: {exc}"
            ) from None
        unwind.pop_all()  # from here on the kernel owns all of it
    return k


async def _answer(k: Kernel, kernel: str) -> None:
    """Return when the launch may answer (see the module): a compute kernel started, a
    controller's callback done. A failure ends the kernel and gives back what it took."""
    try:
        if k.mode == "compute":
            k.answered_on = await _started(k, kernel, k._supervisor)
        else:
            await asyncio.shield(k.callback)
    except BaseException as exc:
        await k.stop_following()
        await _release(k)
        k.log.warning("launch failed", error=str(exc))
        raise


async def _start(
    host: HostSession,
    hold: Hold,
    unwind: contextlib.AsyncExitStack,
    *,
    kernel: str,
    link: LinkName,
    mode: Mode,
    args: list[str],
    kernel_id: str,
    wrapper: Sequence[str],
) -> Kernel:
    """The launch up to the kernel's start line: the live connection, its forwards (and the
    hook), what each took pushed on ``unwind``; the started kernel owns them with ``hold``."""
    cfg = host.config
    live = await host.live()
    live.guard.require()  # a host that cannot tell who connects fails here, at once
    dynamic = mode == "controller" and cfg.dynamic
    forward: CallbackForward | AgentForward
    hook: HookServer | None = None
    env: dict[str, str] = {}
    slots: list[RemoteSlot] = []
    if dynamic:
        args += ["-initfile", await host.init_file(live.connection)]

    async def open_hook() -> HookServer:
        # Dynamic's service and preemptive links: relay's hook (RelayKernelInit.wl)
        # and a per-kernel control channel; see relay.lite.hook for the protocol.
        return await HookServer.open(
            live.connection,
            slot=slots[-1] if slots else None,  # the hook's control channel (no agent)
            agent=live.agent,
            remote_guard=live.guard,
            local_guard=host.local_guard,
            host=host.key,
            kernel_id=kernel_id,
            frontend_host=link.data.host,
            timeout_s=cfg.launch_timeout_s,
        )

    if live.agent is not None:
        # Every link through the host's agent: they outlive the connection (docs/agent.md),
        # the hook's control channel and the links it opens too. Its listeners are asked
        # for together: one round trip.
        main = asyncio.ensure_future(AgentForward.open(live.agent, link, host.local_guard))
        hooked = asyncio.ensure_future(open_hook()) if dynamic else None
        both: list[asyncio.Future[Any]] = [main, *([hooked] if hooked is not None else [])]
        try:
            await asyncio.wait(both)
        finally:  # what was made is released by unwind; what was not is stopped
            for task in both:
                if not task.done():
                    task.cancel()
                elif not task.cancelled() and task.exception() is None:
                    what = "release" if task is main else "release-hook"
                    unwind.push_async_callback(
                        _give_back, host, task.result().aclose, f"{what}:{kernel_id}"
                    )
        forward = main.result()  # raises what failed, if it did
        hook = hooked.result() if hooked is not None else None
    else:
        # Warm, every listener comes from the spare pool: no round trip before the kernel
        # starts. The two forwards of the main link, and the hook's control channel.
        slots = await live.pool.take(3 if dynamic else 2)
        unwind.callback(_close_slots, slots)  # those no forward or hook has taken over
        forward = CallbackForward(link, slots[:2], live.guard, host.local_guard)
        unwind.push_async_callback(_give_back, host, forward.aclose, f"release:{kernel_id}")
        if dynamic:
            hook = await open_hook()
            unwind.push_async_callback(_give_back, host, hook.aclose, f"release-hook:{kernel_id}")
    if hook is not None:
        env = {
            "RELAY_HOOK_PORT": str(hook.port),
            "RELAY_HOOK_TOKEN": hook.first_token,
            "RELAY_DYNAMIC_METHOD": cfg.dynamic_method,
            "RELAY_FRONTEND_HOST": link.data.host,
            "RELAY_HOOK_TIMEOUT": f"{REQUEST_TIMEOUT_S:g}",
        }
    proc = live.supervisor.start_kernel(
        kernel_id, [*wrapper, *build_argv(kernel, forward.name, args)], env
    )
    return Kernel(kernel_id, host, hold, mode, link, forward, live.supervisor, proc, hook)


def _silence_s(host: HostSession) -> float:
    """How long without a word from the host before relay declares its connection lost."""
    return host.config.keepalive_interval_s * host.config.keepalive_count_max


def _unanswered(host: HostSession, timeout_s: float | None) -> LaunchTimeout:
    """The host stopped answering after the connection was made: no kernel started before
    the launch's deadline (``timeout_s``, launch_timeout_s), or the new supervisor's first
    ping went unanswered (None). (A connect says its own error, within the same bound.)"""
    silence = _silence_s(host)
    if timeout_s is None:
        return LaunchTimeout(
            f"{host.key} did not answer relay's supervisor within {silence:g} s "
            f"(keepalive_interval_s x keepalive_count_max): the connection may be lost"
        )
    return LaunchTimeout(
        f"{host.key} did not answer within {timeout_s:g} s (launch_timeout_s): the connection "
        f"may be lost (relay declares it lost after {silence:g} s without a word: "
        f"keepalive_interval_s x keepalive_count_max)"
    )


async def _give_back(
    host: HostSession, close: Callable[[], Coroutine[Any, Any, None]], name: str
) -> None:
    """What a failed launch took, given back: waited for a while (a healthy host confirms in a
    round trip), then left to the host session, as on a host that no longer answers the
    cancellation of a remote listener waits for the connection's end."""
    task = host.spawn(close(), name=name)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(RELEASE_WAIT_S):
            await asyncio.shield(task)


async def _release(k: Kernel) -> None:
    """End a kernel whose launch failed and give back what it took. The launch waits for
    that on a host that answers (bounded); on one that does not (its start was never
    confirmed: a dead connection, not yet declared lost) the answer does not wait: the host
    session finishes the release, which ends when the connection does."""

    async def release() -> None:
        await k.terminate(grace_s=1.0)
        await k.aclose()

    task = k.host.spawn(release(), name=f"release:{k.id}")
    answering = k._proc.started.done()
    try:
        async with asyncio.timeout(RELEASE_WAIT_S if answering else 0):
            await asyncio.shield(task)
    except TimeoutError:
        k.log.info("the failed launch's release goes on after its answer")


def _close_slots(slots: list[RemoteSlot]) -> None:
    for slot in slots:
        slot.close()


def _settle(target: asyncio.Future[None], source: asyncio.Future[None]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())  # type: ignore[arg-type]
    else:
        target.set_result(None)


async def _callback(k: Kernel, kernel: str, timeout_s: float, deadline: float) -> None:
    """Both channels connected, then the listeners cancelled: from here on nothing else on
    the remote host can connect. Bounded by the launch's ``deadline``, ``timeout_s``
    (launch_timeout_s) after it began."""
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await _until_connected(k, kernel)
                await k.forward.listeners_closed()
        except TimeoutError:
            # the daemon was stopped (SIGSTOP, Ctrl-Z, a paused VM) while the kernel called
            # back: its connection waits unread, behind the timer that woke first (a review's
            # finding: "did not connect within 6 s" for a kernel that had). As long again,
            # at most, for what waits to be read
            if (away_s := k.host.away_s()) <= 0:
                raise
            async with asyncio.timeout(min(away_s, timeout_s)):
                await _until_connected(k, kernel)
                await k.forward.listeners_closed()
    except TimeoutError:
        # the path went down under the launch: the kernel's links wait at the host's agent,
        # and that, not the kernel, is why it did not connect
        lost = k.host.gave_up_waiting()
        if lost is not None:
            raise lost from None
        if not k._proc.started.done():  # no pid: the start line may never have arrived
            raise LaunchTimeout(
                f"the kernel on {k.host.key} did not connect within {timeout_s:g} s "
                f"(launch_timeout_s), and {k.host.key} did not confirm its start: the "
                f"connection may be lost (relay declares it lost after {_silence_s(k.host):g} "
                f"s without a word: keepalive_interval_s x keepalive_count_max)"
            ) from None
        raise LaunchTimeout(
            f"the kernel on {k.host.key} did not connect within {timeout_s:g} s "
            f"(launch_timeout_s){_last_words(k.output)}"
        ) from None


async def _started(k: Kernel, kernel: str, supervisor: Supervisor) -> str:
    """The compute kernel runs: its pid is back; or its start line is written, for a kernel
    path this connection knows is there (a start of it reported a pid, or the supervisor's
    ``which`` found it: the host's kernel as the connection opened, another by ``relay
    connect --kernels``; an answer still on its way is waited for: it comes before the pid)."""
    started = k._proc.started
    known = supervisor.kernel_known(kernel)
    if known is not None:
        first: set[asyncio.Future[Any]] = {known, started, k.callback}
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if known.done() and not known.cancelled() and not known.exception() and known.result():
            return "known"
    waiting: set[asyncio.Future[Any]] = {started, k.callback}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if started.done():
        exc = started.exception()
        if exc is None:
            supervisor.kernel_started(kernel)
            return "pid"
        raise _not_started(k, kernel, exc)
    k.callback.result()  # it failed before the pid came back: raise why
    return "connected"  # (a kernel may call back before its pid line is read)


def _not_started(k: Kernel, kernel: str, exc: BaseException) -> BaseException:
    """Why the supervisor reported no pid: a missing kernel (status 127 from ``nokernel``),
    an exit before the pid line, or the connection's loss."""
    if not isinstance(exc, KernelMissing):
        return exc
    status = k.exited.result() if k.exited.done() else None
    if status == 127:
        return KernelMissing(
            f"kernel executable {kernel!r} not found or not executable on "
            f"{k.host.key}: check the KERNEL argument or 'kernel' in "
            f"{host_header(k.host.key)}"
        )
    return _exited_before_connecting(k, status)


async def _until_connected(k: Kernel, kernel: str) -> None:
    started = k._proc.started
    waiting: set[asyncio.Future[Any]] = {k.forward.connected, k.exited, started}
    while not k.forward.connected.done():
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if k.forward.connected in done:
            break
        if started in done:
            waiting.discard(started)
            exc = started.exception()
            if exc is not None:
                raise _not_started(k, kernel, exc)
        if k.exited in done:
            await k.forward.settled()  # connections that reached the host before the exit
            if k.forward.connected.done():
                break
            status = k.exited.result()
            if status is None:
                raise KernelExited(f"the SSH connection to {k.host.key} was lost during launch")
            raise _exited_before_connecting(k, status)
    k.forward.connected.result()  # raises FrontEndUnreachable


def _exited_before_connecting(k: Kernel, status: int | None) -> KernelExited:
    """The launch's error for a kernel that exited before its link was carried. One that
    connected and exited at once (a licence failure once its link was up, a Quit the front end
    sent as it accepted) left a connection that closed before relay could check whose it was:
    relay refused it, as it refuses every socket it cannot check (``relay.peerowner``: a
    closing socket is nobody's), and says so rather than "before connecting"."""
    if k.forward.closed_unchecked:
        return KernelExited(
            f"the kernel on {k.host.key} exited with status {status} as it connected: its "
            f"connection closed before relay could check it was yours, and relay carries no "
            f"connection it cannot check{_last_words(k.output)}"
        )
    return KernelExited(
        f"the kernel on {k.host.key} exited with status {status} before "
        f"connecting{_last_words(k.output)}"
    )


def _last_words(output: list[str]) -> str:
    if not output:
        return ""
    return f"; its last output: {' | '.join(line.strip() for line in output)[-300:]}"
