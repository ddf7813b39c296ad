"""Putting a host's agent in place: its file shipped (``hookinstall.sh``, proven by its
sha256, old versions pruned) and started from it, in one exec session, so that a host's
login is paid once; the agent makes the secret and says it on the session's standard output
(``docs/agent.md``). ``parse_start`` is pure; ``start`` is the I/O around it.

Where the agent cannot run, ``start`` says why and the host keeps today's path (sshd's
listeners and ``supervisor.sh``): ``Unavailable``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh

from relay.agent.session import AgentInfo
from relay.errors import ConnectFailed, HookInstallFailed
from relay.settings import HostConfig
from relay.ssh import hookfile, remote_scripts
from relay.ssh.hookfile import agent_file
from relay.ssh.remote_scripts import hook_install_command

__all__ = [
    "NO_OWNER_CHECK",
    "START_TIMEOUT_S",
    "Generations",
    "Superseded",
    "Unavailable",
    "agent_file",
    "parse_install_and_start",
    "parse_start",
    "start",
    "unwanted",
]

START_TIMEOUT_S = 30.0
SECRET_DIGITS = 64  # the agent's secret: 32 random bytes, in hex
_SECRET_LIKE = re.compile("[0-9a-f]{16,}")  # what no message quotes: a secret's part

NO_OWNER_CHECK = "the host cannot tell who connects (no /proc/net/tcp)"


WINDOW_ZERO = "resume_window_s = 0"


def unwanted(cfg: HostConfig) -> str | None:
    """Why a host's kernels do not go through relay's agent, from its configuration alone
    (``relay check`` says the same); None where the agent is wanted. The host can still
    refuse it: no python3, no Unix socket forwarding, no /proc/net/tcp (``NO_OWNER_CHECK``)."""
    if cfg.resume_window_s <= 0:
        return WINDOW_ZERO
    if cfg.slurm is not None:
        # no kernel runs on a login node: each compute node's session has its own agent
        return "kernels run on the compute nodes, each with its agent"
    if cfg.peer_check != "uid":
        return "peer_check = off (the agent admits only the user's own)"
    return None


_REFUSALS = {
    "mkdir": "cannot create {path} (is TMPDIR a directory you can write to?)",
    "full": "cannot create {path}: the host's TMPDIR has no space left (free some space "
    "there, or set TMPDIR there to a directory that has it)",
    "gone": "{path} was removed each time it was made (another user of the host racing for "
    "the name?)",
    "pidfile": "cannot write {path} (is the disk full?)",
    "notdir": "{path} is not a directory (remove it)",
    "symlink": "{path} is a symlink (remove it)",
    "notmine": "{path} is not owned by you",
    "mode": "{path} is open to others (chmod 700 {path})",
    "lockfile": "cannot create {path} (is the disk full?)",
    "busy": "another start of relay's agent held {path} too long (is one stuck on the host?)",
    "toolong": "{path} is too long for a socket path (set a shorter TMPDIR on the host)",
    "notutf8": "{path} is not UTF-8, and relay can name a socket to sshd only in UTF-8 (set "
    "TMPDIR on the host to a directory whose path is)",
}


@dataclass(frozen=True)
class Unavailable:
    """Why the agent cannot run on a host: the host keeps today's path."""

    reason: str


@dataclass(frozen=True)
class Superseded:
    """The host runs an agent of this tag that a later start made (``agent newer N``): this
    start ended nothing and started nothing."""

    generation: int


class Generations:
    """The numbers a daemon gives its starts of a host's agent, each larger than the last.
    An agent's start never ends an agent that a later start made (``relayagent.py``): a
    start on a connection lost on the client's side alone is kept by sshd, and may reach
    the host after a later connection's, whose agent carries the kernels. The wall clock's
    nanoseconds, so that a new daemon's outnumber a dead one's; one more than any number
    given or heard of, where the clock was stepped back."""

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        self._last = 0

    def next(self, above: int = 0) -> int:
        self._last = max(self._clock(), self._last + 1, above + 1)
        return self._last


def parse_start(
    host: str, exit_status: int | None, stdout: str, stderr: str = ""
) -> tuple[AgentInfo, str] | Unavailable | Superseded:
    """The start line (``agent 1 SECRET PID SOCKPATH UID CHECK ENDED``): what the agent said,
    and its secret; or why there is none (a crash says it on stderr: its last line, the
    exception). ConnectFailed if the session was cut off with its connection (no exit
    status). No message quotes a start line: it holds the secret."""
    if exit_status is None:
        raise ConnectFailed(f"the SSH connection to {host} was lost while relay's agent started")
    line = next((ln for ln in stdout.splitlines() if ln.startswith("agent ")), "")
    _, kind, rest = [*line.split(" ", 2), "", ""][:3]
    if kind == "none":
        return Unavailable(f"no python3 on {host}'s PATH")
    if kind == "old":
        return Unavailable(f"python3 on {host} is {rest}; relay's agent needs 3.6 or later")
    if kind == "newer" and rest.isascii() and rest.isdigit() and len(rest) <= 19:
        return Superseded(int(rest))
    why, _, path = rest.partition(" ")  # a path as it is: TMPDIR may hold a space
    if kind == "refuse" and why in _REFUSALS and path:
        return Unavailable(_REFUSALS[why].format(path=path))
    secret, _, rest = rest.partition(" ")
    pid, _, rest = rest.partition(" ")
    words = [pid, *rest.rsplit(" ", 3)]  # PID SOCKPATH UID CHECK ENDED; SOCKPATH as it is
    if (
        kind == "1"
        and len(secret) == SECRET_DIGITS
        and all(c in "0123456789abcdef" for c in secret)
        and len(words) == 5
        and all(w.isdigit() for w in (words[0], words[2]))
    ):
        pid, sock, uid, check, ended = words
        # said by the installer before the agent's start (hookinstall.sh)
        supervised = "supervised" in stdout.splitlines()
        info = AgentInfo(int(pid), sock, int(uid), check == "proc", int(ended or 0), supervised)
        return info, secret
    last_words = stderr.strip().splitlines()[-1:] or [""]
    if kind == "1":
        said = "agent 1 ..."  # the rest is the secret, and what is around it
    else:
        said = line or stdout.strip()[:80] or last_words[0].strip()[:160] or "nothing"
    # a start line glued to what was printed before it (a background job of ~/.bashrc) is
    # found by no line's start: its secret, in what is quoted instead, is not said either
    said = _SECRET_LIKE.sub("...", said)
    return Unavailable(f"relay's agent did not start (exit {exit_status}, said {said!r})")


def parse_install_and_start(
    host: str,
    exit_status: int | None,
    stdout: bytes,
    stderr: bytes = b"",
    file: hookfile.HookFile | None = None,
) -> tuple[AgentInfo, str] | Unavailable | Superseded:
    """The one session's output (``start``): the installer's answer and the bytes of
    ``file`` (the agent's), then the agent's start line; or why the agent cannot run."""
    file = file or agent_file()
    for line in stdout.splitlines()[: hookfile.CHATTER_LINES]:
        if hookfile.is_answer(line, file):
            break
        if line == b"agent none":  # no python3: nothing was installed
            return Unavailable(f"no python3 on {host}'s PATH")
    try:
        _, rest = hookfile.parse_answer_before(host, file, exit_status, stdout)
    except HookInstallFailed as exc:
        return Unavailable(exc.message)
    return parse_start(
        host, exit_status, rest.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
    )


async def start(
    conn: asyncssh.SSHClientConnection,
    host: str,
    tag: str,
    window_s: float,
    generations: Generations,
    opened: Callable[[], object] | None = None,
) -> tuple[AgentInfo, str] | Unavailable:
    """The agent's file installed and the agent started from it, in one session: what it
    said, and its secret. ``opened`` is called once the server has given that session (the
    host's login runs from then on): what else needs a session may open one beside it, and
    a server of one session at a time has given this one first. Each start is numbered by
    ``generations``; where the host says a later start's agent runs, which a daemon's own
    starts, one at a time, can only meet after its clock was stepped back (or while a
    second daemon of this tag runs), it is started once more, numbered above that one."""
    started = await _start_once(conn, host, tag, window_s, generations.next(), opened)
    if isinstance(started, Superseded):
        above = generations.next(started.generation)
        started = await _start_once(conn, host, tag, window_s, above, None)
        if isinstance(started, Superseded):
            return Unavailable(
                f"a relay agent started after this one runs on {host} (is a second relay "
                "daemon of yours reaching it?)"
            )
    return started


async def _start_once(
    conn: asyncssh.SSHClientConnection,
    host: str,
    tag: str,
    window_s: float,
    generation: int,
    opened: Callable[[], object] | None,
) -> tuple[AgentInfo, str] | Unavailable | Superseded:
    agent = agent_file()
    remote = hook_install_command(
        agent.version,
        agent.name,
        size=len(agent.data),
        spare=hookfile.spared(agent),
        agent=(tag, window_s, generation),
    )

    async def run() -> asyncssh.SSHCompletedProcess:
        process = await conn.create_process(
            remote.command, input=remote.preamble + agent.data, encoding=None
        )
        if opened is not None:
            opened()
        return await process.wait(check=False, timeout=START_TIMEOUT_S)

    try:
        async with asyncio.timeout(START_TIMEOUT_S):  # the input's delivery included
            result = await remote_scripts.session(run)
    except (asyncssh.TimeoutError, TimeoutError):
        return Unavailable(f"relay's agent did not start within {START_TIMEOUT_S:g} s")
    except asyncssh.ChannelOpenError as exc:
        return Unavailable(f"the server refused a session for relay's agent ({exc.reason})")
    except (asyncssh.Error, OSError) as exc:
        if conn.is_closed():  # not the host's doing: the launch that waits says so
            raise ConnectFailed(
                f"the SSH connection to {host} was lost while relay's agent started"
            ) from None
        return Unavailable(f"the session that starts relay's agent failed ({exc})")
    stdout = result.stdout if isinstance(result.stdout, bytes) else b""
    stderr = result.stderr if isinstance(result.stderr, bytes) else b""
    return parse_install_and_start(host, result.exit_status, stdout, stderr)
