"""The daemon's side of a host's supervisor session (the remote half is ``supervisor.sh``).

Design (issue: 32 concurrent compute launches against sshd's default ``MaxSessions 10``): a
session per kernel would hit MaxSessions at 10 kernels, pay a channel open per launch, and run
the remote shell's start-up files every time (80 ms with a slow ``.bashrc``, measured). Instead
one session per connection runs a small POSIX ``sh`` loop that starts kernels, reports their pids
and exit statuses, and signals them on request. Forwarded TCP channels do not count against
MaxSessions, so a host's only limit is its own process table. When the connection or session
ends, the script sees end of input and terminates every kernel it started.

``parse_line`` is pure; ``Supervisor`` is the thin I/O shell around one SSH process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncssh
import structlog

from relay.errors import ConnectFailed, KernelMissing, StartLost, SupervisorFailed
from relay.kernelcmd import no_control_characters, shell_join
from relay.peerowner import CLOSING, GONE, UNKNOWN
from relay.ssh.remote_scripts import remote_command, session
from relay.tasks import TaskSet, retrieved

__all__ = ["Event", "Process", "RemoteProcess", "Supervisor", "parse_line"]
CLOSE_CONFIRM_S = 2.0  # a channel closed from this side: how long its close is awaited

PROTOCOL = "4"
OUTPUT_LINES = 5
_SIGNALS = frozenset({"TERM", "KILL", "INT", "HUP"})


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    id: str
    value: str


EXIT_READ_S = 2.0  # for what a supervisor that could not start said, once its output ended
# strerror(ENOSPC), strerror(EDQUOT): glibc's "Disk quota exceeded", musl's (Alpine's
# busybox) "Quota exceeded"
_NO_ROOM = ("No space left on device", "uota exceeded")


def _why(status: int | None, said: str) -> str:
    """Why supervisor.sh ended before its hello, from its exit status and its last line on
    stderr (mktemp's, the shell's)."""
    last = (said.strip().splitlines() or [""])[-1][:200]
    # a directory a full disk has no block (ext4) or inode for: mktemp says why, in the
    # strerror of ENOSPC or EDQUOT, and the TMPDIR is no less writable for it
    full = status == 97 and any(why in last for why in _NO_ROOM)
    if status == 97 and not full:  # supervisor.sh: its directory could not be made
        return (
            f"it cannot make its directory in the host's TMPDIR ({last or 'mktemp failed'}): "
            f"set TMPDIR there to a directory you can write to (`relay check` shows it)"
        )
    if status == 98 or full:  # made, but its first file could not be written: a full TMPDIR
        return (
            f"it cannot write its files in the host's TMPDIR ({last or 'a write failed'}): "
            f"free some space there, or set TMPDIR there to a directory that has it (`relay "
            f"check` shows it)"
        )
    if status in (126, 127):
        return f"/bin/sh could not be run there ({last or f'exit {status}'})"
    if status is None and not last:  # no exit status, nothing said: not a shell's failure
        return (
            "the SSH server ended its session with no exit status (one session at a time, "
            "MaxSessions 1 in its sshd_config, with another open? `relay check` says)"
        )
    return (
        f"needs /bin/sh and mktemp on the remote host (exit {status}{': ' + last if last else ''})"
    )


# what a host lacks when relay's agent cannot start a kernel (``nostart ID ERRNO TEXT``)
_LACKS = {
    "EMFILE": "the agent's open-file limit, ulimit -n, is reached: end some kernels or raise it",
    "ENFILE": "the host's table of open files is full",
    "EAGAIN": "the user's process limit there, ulimit -u, is reached: end some processes",
    "ENOMEM": "the host is out of memory",
    "ENOSPC": "the host's TMPDIR is full, where the kernel's log goes",
    "EDQUOT": "the user's disk quota is reached in the host's TMPDIR, where the kernel's log goes",
}


def _not_startable(host: str, value: str, doing: str = "start the kernel") -> str:
    """Why relay's agent could not start a kernel, or look for one (``nostart``: no file,
    process or memory to start it with), as what it is: not the missing kernel that
    ``nokernel`` says."""
    name, _, said = value.partition(" ")
    lacks = _LACKS.get(name)
    return f"relay's agent on {host} could not {doing}: {said.strip() or name}" + (
        f" ({lacks})" if lacks else ""
    )


def _no_fork(host: str, doing: str = "start the kernel") -> str:
    """Why supervisor.sh could not start a kernel, or look for one (``nofork``): its shell
    could not fork, which is the user's process limit there (dash says "Cannot fork",
    without the errno; EAGAIN is what a limit gives, and all that makes fork fail short of
    a host out of memory)."""
    lacks = _LACKS["EAGAIN"]
    return f"relay's supervisor on {host} could not {doing}: its shell cannot fork ({lacks})"


def parse_line(line: str) -> Event | None:
    """One line from supervisor.sh; ``None`` for anything else (a chatty login shell)."""
    kind, _, rest = line.rstrip("\n").partition(" ")
    if kind not in {
        "hello",
        "nokernel",
        "nostart",
        "nofork",
        "found",
        "norecord",
        "pid",
        "out",
        "exit",
        "pong",
        "owner",
    }:
        return None
    ident, _, value = rest.partition(" ")
    # ``exit ID STATUS``; the agent adds when, on the host's clock, and the signal that ended
    # it (``RemoteProcess.ended_at``, ``signum``)
    if kind in {"pid", "exit"} and not value.partition(" ")[0].isdigit():
        return None
    return Event(kind, ident, value)


def hello_words(value: str) -> tuple[str, str, str, str]:
    """PID, N, UID and CHECK of a hello's ``PID DIR N UID CHECK``. DIR is in TMPDIR, whose
    name may have spaces: the words are taken from both ends, not counted from the start
    (where a TMPDIR of "/tmp/a b" made UID the count N, CHECK the uid, and every launch on
    the host was refused as one that cannot tell who connects; a review's finding)."""
    words = value.split(" ")
    words += [""] * (5 - len(words))  # fewer than a hello has: the missing ones empty
    return words[0], words[-3], words[-2], words[-1]


@dataclass(eq=False)
class RemoteProcess:
    """One kernel as the supervisor sees it."""

    id: str
    started: asyncio.Future[int]
    exited: asyncio.Future[int | None]  # None: the connection was lost, status unknown
    # its last OUTPUT_LINES lines, made at the first (most kernels say nothing)
    output: collections.deque[str] | None = None
    # when it ended, on the host's clock, and the signal that ended it (0: none): the agent
    # says both; supervisor.sh says neither (its STATUS 128+N may be signal N or an exit)
    ended_at: float | None = None
    signum: int | None = None

    @property
    def pid(self) -> int | None:
        if self.started.done() and not self.started.cancelled() and not self.started.exception():
            return self.started.result()
        return None


class _Input(Protocol):
    def write(self, data: str) -> None: ...
    def write_eof(self) -> None: ...
    def is_closing(self) -> bool: ...


class Process(Protocol):
    """What a supervisor drives: an SSH process running ``supervisor.sh``, or the control
    stream of relay's agent (``relay.agent.session.ControlPort``), which speaks its protocol."""

    @property
    def stdin(self) -> _Input: ...
    @property
    def stdout(self) -> AsyncIterable[str]: ...
    @property
    def stderr(self) -> AsyncIterable[str]: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


class Supervisor:
    def __init__(
        self,
        process: Process,
        host: str,
        remote_pid: int,
        log: Any,
        uid: int | None = None,
        owner_check: bool = False,
        keeps_nothing_when_lost: bool = False,
    ) -> None:
        self._process = process
        # lost, it ran nothing on: relay's agent, which ends only with no kernel of relay's
        # to keep (or ending them); not supervisor.sh, whose session sshd may not see lost
        # (the client's side reset alone) and whose kernel may run on (a review's finding)
        self._keeps_nothing_when_lost = keeps_nothing_when_lost
        self._host = host
        self._log = log
        self.remote_pid = remote_pid
        self.uid = uid  # the remote user the SSH login runs as
        self.owner_check = owner_check  # whether the host can tell who connected (/proc)
        self._procs: dict[str, RemoteProcess] = {}
        self._pings: dict[str, asyncio.Future[None]] = {}
        self._owners: dict[str, asyncio.Future[int]] = {}
        self._owner_ids = 0
        # kernel executables this connection knows about: found (a start's pid came back, or
        # a which said so), or a which in flight. A miss is not kept: it may be installed yet.
        self._kernels: dict[str, asyncio.Future[bool]] = {}
        self._whiches: dict[str, tuple[str, asyncio.Future[bool]]] = {}  # id: (kernel, answer)
        self._tasks = TaskSet(log)
        self._tasks.spawn(self._read_events(), name=f"supervisor-events:{host}")
        self._tasks.spawn(self._drain_stderr(), name=f"supervisor-stderr:{host}")
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def start(
        cls,
        conn: asyncssh.SSHClientConnection,
        host: str,
        timeout_s: float,
        tag: str,
        *,
        end_stale: bool = True,
        stale_after_s: int = 60,
    ) -> Supervisor:
        log = structlog.get_logger("relay.supervisor").bind(host=host)
        remote = remote_command(tag, end_stale=end_stale, stale_after_s=stale_after_s)
        try:
            process = await session(
                lambda: conn.create_process(remote.command, encoding="utf-8", errors="replace")
            )
            process.stdin.write(remote.preamble.decode())  # the script, then its requests
        except asyncssh.ChannelOpenError as exc:
            raise SupervisorFailed(
                f"{host}: the SSH server refused a session for relay's supervisor: {exc.reason}"
            ) from None
        try:
            async with asyncio.timeout(timeout_s):
                for _ in range(200):  # skip what a chatty login shell prints first
                    line = await process.stdout.readline()
                    if not line:
                        break
                    event = parse_line(line)
                    if event and event.kind == "hello":
                        if event.id != PROTOCOL:
                            break
                        pid, stale, uid, check = hello_words(event.value)
                        ended = int(stale) if stale.isdigit() else 0
                        if ended:
                            log.info(
                                "ended stale supervisor sessions of earlier connections",
                                count=ended,
                            )
                        return cls(
                            process,
                            host,
                            int(pid),
                            log,
                            uid=int(uid) if uid.isdigit() else None,
                            owner_check=check == "proc",
                        )
        except TimeoutError:
            process.close()
            raise SupervisorFailed(
                f"{host}: relay's supervisor did not start within {timeout_s:g} s"
            ) from None
        said = ""
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            async with asyncio.timeout(EXIT_READ_S):  # it ended: what it said is all there
                said = await process.stderr.read()
                await process.wait_closed()
        process.close()
        raise SupervisorFailed(
            f"{host}: relay's supervisor could not start: " + _why(process.exit_status, said)
        )

    def start_kernel(
        self, kernel_id: str, argv: list[str], env: dict[str, str] | None = None
    ) -> RemoteProcess:
        """Ask for a kernel; the returned futures resolve as the supervisor reports."""
        if self.closed.done():
            raise ConnectFailed(f"{self._host}: connection lost")
        loop = asyncio.get_running_loop()
        proc = RemoteProcess(kernel_id, loop.create_future(), loop.create_future())
        # A launch that already failed may never look at ``started`` again.
        proc.started.add_done_callback(retrieved)
        self._procs[kernel_id] = proc
        snippet = "set -- " + shell_join(argv)
        for name, value in (env or {}).items():
            snippet += f"; {name}={shell_join([value])}; export {name}"
        # Every field was checked where it entered relay (relay.kernelcmd); this is the last
        # line of defence for the line protocol: a newline would start a new command.
        no_control_characters(snippet)
        self._process.stdin.write(f"start {kernel_id} {snippet}\n")
        return proc

    def check_kernel(self, kernel: str) -> asyncio.Future[bool] | None:
        """Ask, ahead of any launch, whether ``kernel`` is there as a start would look for it
        (the host's kernel as the connection opens; another by ``relay connect --kernels``):
        one round trip on the way, so that the Parallel package's first Run need not wait
        for its kernel's pid. Asked once per connection until found. Returns the answer to
        come (or known), which a caller keeps: a miss is forgotten here as it arrives, so
        ``kernel_known`` cannot tell it later. None once the session has ended."""
        if kernel in self._kernels:
            return self._kernels[kernel]
        if self.closed.done():
            return None
        self._owner_ids += 1
        ident = f"w{self._owner_ids}"
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(retrieved)
        self._kernels[kernel] = fut
        self._whiches[ident] = (kernel, fut)
        snippet = "set -- " + shell_join([kernel])
        no_control_characters(snippet)
        self._process.stdin.write(f"which {ident} {snippet}\n")
        return fut

    def kernel_known(self, kernel: str) -> asyncio.Future[bool] | None:
        """Whether ``kernel`` is known to be there: a done future (True), one still on its way,
        or None when nothing was asked."""
        return self._kernels.get(kernel)

    def kernel_started(self, kernel: str) -> None:
        """A start of ``kernel`` reported a pid: later launches need not wait for theirs."""
        fut = self._kernels.get(kernel)
        if fut is None or fut.done():
            fut = self._kernels[kernel] = asyncio.get_running_loop().create_future()
        fut.set_result(True)

    @property
    def running(self) -> int:
        """Kernels started here whose exit has not come back yet."""
        return len(self._procs)

    @property
    def confirmed(self) -> int:
        """Of those, the ones whose start the host confirmed (a pid came back): not a start
        lost on its way, with its connection."""
        return sum(
            1
            for p in self._procs.values()
            if p.started.done()
            and not p.started.cancelled()
            and p.started.exception() is None
            and not p.exited.done()
        )

    def signal(self, kernel_id: str, signal: str) -> None:
        if signal not in _SIGNALS:  # a line of the supervisor's stdin: nothing else in it
            raise ValueError(f"not a signal the supervisor sends: {signal!r}")
        if not self.closed.done() and kernel_id in self._procs:
            self._process.stdin.write(f"kill {kernel_id} {signal}\n")

    async def ping(self, ping_id: str) -> None:
        # letters and digits only: relay's agent ignores a line whose ident has anything else
        # (a kernel's "k1-TERM" went unanswered there, so a kernel that ignored SIGTERM was
        # never sent SIGKILL)
        if not ping_id.isalnum():
            raise ValueError(f"a ping's ident is letters and digits: {ping_id!r}")
        fut = asyncio.get_running_loop().create_future()
        self._pings[ping_id] = fut
        try:
            self._process.stdin.write(f"ping {ping_id}\n")
            await fut
        finally:
            self._pings.pop(ping_id, None)

    async def owner(self, client_port: int, listen_port: int) -> int:
        """The uid of the remote process that connected from ``127.0.0.1:client_port`` to our
        listener on ``listen_port`` (``peerowner.GONE`` if it left, ``CLOSING`` if its socket
        is closing or orphaned, ``UNKNOWN`` if the host cannot tell). One round trip through
        this session."""
        if not self.owner_check:
            return UNKNOWN
        self._owner_ids += 1
        ident = f"o{self._owner_ids}"
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._owners[ident] = fut
        try:
            self._process.stdin.write(f"owner {ident} {client_port:04X} {listen_port:04X}\n")
            return await fut
        finally:
            self._owners.pop(ident, None)

    async def _read_events(self) -> None:
        try:
            async for line in self._process.stdout:
                event = parse_line(line)
                if event is not None:
                    self._dispatch(event)
        except (asyncssh.Error, OSError) as exc:
            self._log.info("supervisor session ended", reason=str(exc))
        finally:
            self._lost()

    def _unstarted(self, event: Event, doing: str = "start the kernel") -> str:
        """Why a start (or a look for a kernel) could not be made: the agent's ``nostart``
        or supervisor.sh's ``nofork``."""
        if event.kind == "nofork":
            return _no_fork(self._host, doing)
        return _not_startable(self._host, event.value, doing)

    def _dispatch(self, event: Event) -> None:
        if event.kind == "pong":
            fut = self._pings.get(event.id)
            if fut and not fut.done():
                fut.set_result(None)
            return
        replies = {"found", "nokernel", "nostart", "nofork"}
        asked = self._whiches.pop(event.id, None) if event.kind in replies else None
        if asked is not None:
            kernel, which = asked
            if not which.done():
                if event.kind in {"nostart", "nofork"}:  # no /bin/sh run, or fork, to look
                    looking = self._unstarted(event, "look for the kernel")
                    which.set_exception(SupervisorFailed(looking))
                else:
                    which.set_result(event.kind == "found")
            if event.kind != "found" and self._kernels.get(kernel) is which:
                del self._kernels[kernel]  # asked again next time
            return
        if event.kind == "owner":
            waiter = self._owners.get(event.id)
            if waiter is not None and not waiter.done():
                value = event.value.strip()
                answers = {"-": GONE, "c": CLOSING}
                waiter.set_result(int(value) if value.isdigit() else answers.get(value, UNKNOWN))
            return
        proc = self._procs.get(event.id)
        if proc is None:
            return
        if event.kind == "pid" and not proc.started.done():
            proc.started.set_result(int(event.value))
        elif event.kind == "out":
            if proc.output is None:
                proc.output = collections.deque(maxlen=OUTPUT_LINES)
            proc.output.append(event.value)
        elif event.kind == "norecord":
            self._procs.pop(event.id, None)
            if not proc.started.done():
                proc.started.set_exception(
                    SupervisorFailed(
                        f"{self._host}: the kernel started but its pid could not be recorded "
                        f"(is the host's TMPDIR full?), so relay ended it rather than lose it"
                    )
                )
            if not proc.exited.done():
                proc.exited.set_result(137)
        elif event.kind in {"nostart", "nofork"}:
            self._procs.pop(event.id, None)
            if not proc.started.done():
                proc.started.set_exception(SupervisorFailed(self._unstarted(event)))
            if not proc.exited.done():
                proc.exited.set_result(126)
        elif event.kind == "nokernel":
            self._procs.pop(event.id, None)
            if not proc.started.done():
                proc.started.set_exception(KernelMissing("kernel executable missing"))
            if not proc.exited.done():
                proc.exited.set_result(127)
        elif event.kind == "exit":
            self._procs.pop(event.id, None)
            status, *said = event.value.split(" ")
            with contextlib.suppress(ValueError, IndexError):
                proc.ended_at = float(said[0])
                proc.signum = int(said[1])
            if not proc.started.done():
                proc.started.set_exception(KernelMissing("kernel did not start"))
            if not proc.exited.done():
                proc.exited.set_result(int(status))

    def _lost(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        err = ConnectFailed(f"{self._host}: SSH connection lost")
        unstarted = StartLost(str(err)) if self._keeps_nothing_when_lost else err
        for proc in self._procs.values():
            if not proc.started.done():
                proc.started.set_exception(unstarted)
            if not proc.exited.done():
                proc.exited.set_result(None)
        self._procs.clear()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(err)
        for waiter in self._owners.values():
            if not waiter.done():
                waiter.set_exception(err)
        for _, which in self._whiches.values():
            if not which.done():
                which.set_exception(err)

    async def _drain_stderr(self) -> None:
        count = 0
        try:
            async for line in self._process.stderr:
                count += 1
                if count <= 100:  # bounded: a noisy remote cannot flood the log
                    self._log.debug("supervisor stderr", line=line.rstrip()[:300])
        except (asyncssh.Error, OSError):
            return  # the connection ended: the host session says so, once

    def close(self) -> None:
        """End the session's input: the remote script terminates its kernels and exits."""
        if not self._process.stdin.is_closing():
            self._process.stdin.write_eof()

    async def wait_closed(self, timeout_s: float = 10.0) -> None:
        """Until the remote script has exited and its channel is closed; past ``timeout_s``
        the channel is closed from this side, and that close awaited too, for at most
        ``CLOSE_CONFIRM_S`` (a dead connection confirms nothing until it is declared lost)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._process.wait_closed()
        except TimeoutError:
            self._process.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_CONFIRM_S):
                    await self._process.wait_closed()
        await self._tasks.aclose()
        self._lost()
