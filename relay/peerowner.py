"""Who is at the other end of a loopback TCP connection to one of relay's listeners.

A link's listeners (on the remote host for callbacks, on the front end's machine for the old
Dynamic method and ``expose``) are reachable by every local user: their ports are in the
kernel's argv and in ``/proc/net/tcp``. relay carries a connection only if the process that
made it runs as the same user (issue: a stranger who connects first would otherwise get the
front end's bytes). The connecting socket is identified by its two ends: its local port is the
originator port (sshd reports it for remote listeners; ``getpeername`` gives it for local
ones) and its remote end is the listener's ``127.0.0.1:PORT``.

Only a live socket is anyone's (issue 23): a client that connected, wrote and closed at once
leaves a socket in FIN_WAIT2 or TIME_WAIT whose uid column reads **0** and whose inode is 0 (no
process holds it any more). Read naively, that is root's socket, so a stranger could pass for
a root login. A connection is the user's only if its socket is ESTABLISHED, still held by a
process (non-zero inode) and its uid is the user's; a closing one is ``CLOSING``, never anyone's,
unless a process of another uid still holds it: that uid's (refused, and said as a stranger's).
Both ends must be the loopback address the listener is bound to (``127.0.0.1``, or its
IPv4-mapped form in ``tcp6``): a client that bound another local address is not looked up by
port alone.

- Linux: the kernel is asked for the one socket with those two ends (``relay.sockdiag``:
  netlink, at a cost that does not grow with the machine's sockets); where it does not
  answer, ``/proc/net/tcp`` and ``/proc/net/tcp6``, which list every socket with its owner's
  uid. Both answers become rows as ``/proc`` writes them (``Row``), judged alike. The remote
  host's supervisor does the same lookup in ``sh`` (``relay/ssh/supervisor.sh``), and relay's
  agent in its own Python (``relay/agent/remote.py``).
- macOS (the front end's machine): ``lsof -F`` lists the sockets of the processes the caller
  can see; an unprivileged user sees only their own, so a socket found there is the user's.

Parsing and judging are pure (``proc_net_rows``, ``owner_in_rows``, ``owner_in_lsof``);
``linux_owner`` and ``local_owner`` are the I/O shells.
Answers: a uid, ``GONE`` (no such socket: the client already left), ``CLOSING`` (the socket
is there but closing or orphaned: nobody's), ``UNKNOWN`` (this system offers no way to
tell) or ``NO_FILES`` (this process is out of open files, and could read nothing).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import struct
from collections.abc import Iterable, Iterator
from typing import Final, NamedTuple

from relay import fdlimit, sockdiag
from relay.sockdiag import Found

__all__ = [
    "CLOSING",
    "GONE",
    "NO_FILES",
    "UNKNOWN",
    "LsofRuns",
    "Row",
    "diag_row",
    "has_proc_net",
    "linux_listening",
    "linux_owner",
    "linux_taker",
    "listening_in_rows",
    "local_owner",
    "lsof_path",
    "owner_in_lsof",
    "owner_in_rows",
    "proc_net_pattern",
    "proc_net_rows",
    "taker_in_rows",
]

GONE: Final = -1
UNKNOWN: Final = -2
CLOSING: Final = -3
NO_FILES: Final = -4  # this process is out of open files: nothing could be read
LISTEN: Final = "0A"
ESTABLISHED: Final = "01"  # the st column of /proc/net/tcp (include/net/tcp_states.h)
SYN_RECV: Final = "03"  # how /proc/net/tcp shows a connection its listener has not yet had
# the final ACK of (a request socket, on the listener's uid): relay's connect() may return
# before the accepting end is ESTABLISHED, even on loopback under load
_LOOPBACK_V4 = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it (little-endian hex)
_LOOPBACK_V4_IN_V6 = "0000000000000000FFFF00000100007F"  # ::ffff:127.0.0.1 in tcp6
LSOF_TIMEOUT_S = 5.0


class Row(NamedTuple):
    """A socket as a row of ``/proc/net/tcp{,6}`` writes it: ends as ``ADDR:PORT`` (hex, the
    address in 32-bit words of the machine's order), the state as two hex digits, uid and
    inode in decimal."""

    local: str
    remote: str
    state: str
    uid: str
    inode: str

    @property
    def held(self) -> bool:
        """Whether a process holds the socket (an orphan's inode reads 0)."""
        return self.inode.isdigit() and int(self.inode) != 0


def proc_net_rows(text: str, port: int | None = None) -> Iterator[Row]:
    """The rows in the text of ``/proc/net/tcp`` (or tcp6, or both); with ``port``, only
    those whose local end has that port (the text searched first, not split line by line:
    a table of a hundred thousand rows has a handful that can matter).

    Columns: ``sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...``;
    a header line or anything else is no row."""
    needle = None if port is None else f":{port:04X} "  # the local end, then a space
    for line in text.splitlines():
        if needle is not None and needle not in line:  # /proc writes hex in upper case
            continue
        fields = line.split()
        if len(fields) >= 10 and fields[0].endswith(":"):
            yield Row(fields[1].upper(), fields[2].upper(), fields[3].upper(), fields[7], fields[9])


def diag_row(found: Found) -> Row:
    """The kernel's answer (``relay.sockdiag``) as ``/proc`` would write its row."""

    def end(addr: bytes, port: int) -> str:
        words = struct.unpack(f"={len(addr) // 4}I", addr)
        return "".join(f"{word:08X}" for word in words) + f":{port:04X}"

    return Row(
        end(*found.local),
        end(*found.remote),
        f"{found.state:02X}",
        str(found.uid),
        str(found.inode),
    )


def proc_net_pattern(client_port: int, listen_port: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The local and remote addresses (``ADDR:PORT``, as ``/proc/net/tcp{,6}`` writes them)
    of the connecting socket's row: loopback to loopback, never another local address."""

    def ends(port: int) -> tuple[str, ...]:
        return f"{_LOOPBACK_V4}:{port:04X}", f"{_LOOPBACK_V4_IN_V6}:{port:04X}"

    return ends(client_port), ends(listen_port)


def owner_in_rows(
    rows: Iterable[Row], client_port: int, listen_port: int, uid: int | None = None
) -> int:
    """The uid owning the live socket ``127.0.0.1:client_port -> 127.0.0.1:listen_port``;
    ``CLOSING`` if that socket is closing or held by no process; ``GONE`` if there is none.

    The listener's own accepted socket is the mirror image (local = listener) and never
    matches. An orphaned socket (FIN_WAIT2, TIME_WAIT after its process closed it) reads uid 0
    and inode 0: it is nobody's, not root's. One a process still holds reads its owner's uid
    in any state: with ``uid`` (the user's), another uid's is that uid's even if closing (a
    stranger that shut its side of the connection at once, held it, and was looked at
    after: said as the user's own kernel that exited as it connected, it hid as "could not
    check"); the user's own that is closing stays ``CLOSING``, never admitted."""
    locals_, remotes = proc_net_pattern(client_port, listen_port)
    found = GONE
    for row in rows:
        if row.local not in locals_ or row.remote not in remotes:
            continue
        stranger = uid is not None and row.uid != str(uid)
        if row.held and row.uid.isdigit() and (row.state == ESTABLISHED or stranger):
            return int(row.uid)
        found = CLOSING  # a newer live socket on the same ends may still follow (tw reuse)
    return found


def taker_in_rows(rows: Iterable[Row], listen_port: int, client_port: int) -> int:
    """The uid of the listener that took relay's own connection ``127.0.0.1:client_port ->
    127.0.0.1:listen_port`` (the front end's, or whoever listens on its port now): the
    accepting end's row, the mirror image of ours, carries the listener's uid from the moment
    the connection is made (its inode is 0 until it is accepted, so that is not asked),
    SYN_RECV too (a request socket, before the final ACK: found under load), and in any state
    while a process holds it (the front end accepted and shut its side); ``CLOSING`` if it is
    orphaned, ``GONE`` if there is none."""
    locals_, remotes = proc_net_pattern(listen_port, client_port)
    found = GONE
    for row in rows:
        if row.local not in locals_ or row.remote not in remotes:
            continue
        if row.uid.isdigit() and (row.state in (ESTABLISHED, SYN_RECV) or row.held):
            return int(row.uid)
        found = CLOSING
    return found


def listening_in_rows(rows: Iterable[Row], port: int, uid: int) -> int:
    """Who listens on ``port`` of the loopback (or every) address: a uid, another user's over
    ``uid``'s own (it could take a connection); ``GONE`` if nobody does."""
    ends = {
        f"{addr}:{port:04X}" for addr in (_LOOPBACK_V4, _LOOPBACK_V4_IN_V6, "00000000", "0" * 32)
    }
    found = GONE
    for row in rows:
        if row.state == LISTEN and row.local in ends and row.uid.isdigit():
            found = int(row.uid)
            if found != uid:
                return found
    return found


def owner_in_lsof(text: str, client_port: int, listen_port: int) -> int:
    """The uid in ``lsof -nP -F un`` output whose socket is
    ``127.0.0.1:client_port->127.0.0.1:listen_port``; ``GONE`` if none."""
    wanted = {
        f"n127.0.0.1:{client_port}->127.0.0.1:{listen_port}",
        f"n[::ffff:127.0.0.1]:{client_port}->[::ffff:127.0.0.1]:{listen_port}",
    }
    uid = GONE
    for line in text.splitlines():
        if line.startswith("p"):
            uid = GONE
        elif line.startswith("u") and line[1:].isdigit():
            uid = int(line[1:])
        elif line in wanted and uid != GONE:
            return uid
    return GONE


@functools.cache
def lsof_path() -> str | None:
    """lsof, where this machine has it (macOS ships it in /usr/sbin)."""
    found = shutil.which("lsof")
    if found is None and os.access("/usr/sbin/lsof", os.X_OK):
        found = "/usr/sbin/lsof"
    return found


def has_proc_net() -> bool:
    return os.path.exists("/proc/net/tcp")


def _proc_net() -> str:
    """This machine's ``/proc/net/tcp`` and ``tcp6`` as one text (procfs: never waits on a
    disk): each parser finds its rows in either, and its header lines are no rows."""
    texts = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as fh:
                texts.append(fh.read())
        except OSError as exc:
            if fdlimit.exhausted(exc):  # not "no such socket": nothing could be read
                raise _OutOfFiles from None
            continue
    return "".join(texts)


class _OutOfFiles(Exception):
    """Neither sock_diag's socket nor ``/proc`` could be opened: this process is out of
    open files (its owner then read ``NO_FILES``, not ``GONE``: another user's, it seemed)."""


def _rows(local_port: int, remote_port: int) -> list[Row]:
    """The rows that can be the socket ``127.0.0.1:local_port -> 127.0.0.1:remote_port``:
    the kernel's answer for those two ends (``relay.sockdiag``, whose cost does not grow with
    the table), with a request socket's uid its listener's as ``/proc`` writes it; where this
    machine gives no such answer, every row of ``/proc/net/tcp{,6}``. Either way the same
    judgments follow."""
    try:
        found = sockdiag.lookup(local_port, remote_port)
        if found is None:
            return []
        row = diag_row(found)
        if row.state == SYN_RECV:
            listener = sockdiag.lookup(local_port, 0)  # the one that made it (sockdiag says)
            if listener is None or listener.state != sockdiag.LISTEN:
                raise sockdiag.Unavailable("closed since")  # /proc still names its owner
            row = row._replace(uid=str(listener.uid))
        return [row]
    except sockdiag.Unavailable:
        return list(proc_net_rows(_proc_net(), local_port))


def linux_owner(client_port: int, listen_port: int) -> int:
    """``owner_in_rows`` on this machine (``has_proc_net``); ``NO_FILES`` where nothing
    could be read (so for each of these three)."""
    try:
        rows = _rows(client_port, listen_port)
        return owner_in_rows(rows, client_port, listen_port, os.getuid())
    except _OutOfFiles:
        return NO_FILES


def linux_taker(listen_port: int, client_port: int) -> int:
    """``taker_in_rows`` on this machine."""
    try:
        return taker_in_rows(_rows(listen_port, client_port), listen_port, client_port)
    except _OutOfFiles:
        return NO_FILES


def linux_listening(port: int, uid: int) -> int:
    """``listening_in_rows`` on this machine: the listener a connection to 127.0.0.1:port
    would reach (the kernel's choice), or with ``/proc`` alone every one on the port."""
    try:
        return listening_in_rows(_rows(port, 0), port, uid)
    except _OutOfFiles:
        return NO_FILES


async def local_owner(client_port: int, listen_port: int) -> int:
    """Who made the connection from ``client_port`` to our listener on ``listen_port``."""
    if has_proc_net():
        return linux_owner(client_port, listen_port)
    lsof = lsof_path()
    if lsof is None:
        return UNKNOWN
    return await _lsof_runs(lsof).owner(client_port, listen_port)


class LsofRuns:
    """macOS's look-ups: one ``lsof`` run answers every look-up waiting when it starts.
    ``lsof`` is a process and takes a good part of a second on a busy machine, so one per
    connection would let a flood of connections to relay's listeners (another user's)
    start as many at once; here at most one runs, and a connection waits for at most the
    run under way and its own."""

    def __init__(self, lsof: str) -> None:
        self.lsof = lsof
        self._waiting: dict[tuple[int, int], list[asyncio.Future[int]]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def owner(self, client_port: int, listen_port: int) -> int:
        loop = asyncio.get_running_loop()
        if self._runner is not None and self._runner.get_loop() is not loop:
            self._runner, self._waiting = None, {}  # another loop's (one test's, then the next)
        answer: asyncio.Future[int] = loop.create_future()
        self._waiting.setdefault((client_port, listen_port), []).append(answer)
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())  # kept here; it ends when all are
        return await answer

    async def _run(self) -> None:
        try:
            while self._waiting:
                asked, self._waiting = self._waiting, {}
                text: str | None = None
                try:
                    text = await self._lsof()
                except Exception:  # lsof could not be started (out of processes): nobody's
                    text = None
                finally:  # cancelled too (the daemon stops): every look-up gets its answer
                    self._answer(asked, text)
        finally:  # and those that came during a cancelled run, which no run would answer
            waiting, self._waiting = self._waiting, {}
            self._answer(waiting, None)

    @staticmethod
    def _answer(asked: dict[tuple[int, int], list[asyncio.Future[int]]], text: str | None) -> None:
        for (client_port, listen_port), answers in asked.items():
            uid = UNKNOWN if text is None else owner_in_lsof(text, client_port, listen_port)
            for answer in answers:
                if not answer.done():  # its connection's check was given up meanwhile
                    answer.set_result(uid)

    async def _lsof(self) -> str | None:
        """Every loopback TCP socket this user can see, as ``lsof -F un`` lists them; None
        if lsof did not answer in time."""
        proc = await asyncio.create_subprocess_exec(
            self.lsof,
            "-nP",
            "-iTCP@127.0.0.1",
            "-F",
            "un",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(LSOF_TIMEOUT_S):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None
        except asyncio.CancelledError:
            proc.kill()  # not left running; the loop's child watcher reaps it
            raise
        return out.decode(errors="replace")


@functools.cache
def _lsof_runs(lsof: str) -> LsofRuns:
    return LsofRuns(lsof)
