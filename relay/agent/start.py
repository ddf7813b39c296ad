"""Putting a host's agent in place: its file shipped (``hookinstall.sh``, proven by its
sha256, old versions pruned), then started once with the daemon's secret on its standard
input (``docs/agent.md``). ``parse_start`` is pure; ``start`` is the I/O around it.

Where the agent cannot run, ``start`` says why and the host keeps today's path (sshd's
listeners and ``supervisor.sh``): ``Unavailable``.
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import asyncssh

from relay.agent.session import AgentInfo
from relay.errors import ConnectFailed, HookInstallFailed
from relay.settings import HostConfig
from relay.ssh import hookfile, remote_scripts
from relay.ssh.remote_scripts import Remote

__all__ = [
    "NO_OWNER_CHECK",
    "START_TIMEOUT_S",
    "Unavailable",
    "agent_file",
    "parse_start",
    "start",
    "start_command",
    "unwanted",
]

START_TIMEOUT_S = 30.0

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


@cache
def agent_file() -> hookfile.HookFile:
    """The agent's source as it is shipped (read once, when first needed)."""
    return hookfile.HookFile(
        "relayagent.py",
        files("relay.agent").joinpath("remote.py").read_bytes(),
        what="relay's agent",
        advice="kernels there end with their connection (set resume_window_s = 0 in {header} "
        "to say so and not try)",
    )


_REFUSALS = {
    "mkdir": "cannot create {path} (is TMPDIR a directory you can write to?)",
    "gone": "{path} was removed each time it was made (another user of the host racing for "
    "the name?)",
    "pidfile": "cannot write {path} (is the disk full?)",
    "notdir": "{path} is not a directory (remove it)",
    "symlink": "{path} is a symlink (remove it)",
    "notmine": "{path} is not owned by you",
    "mode": "{path} is open to others (chmod 700 {path})",
}


@dataclass(frozen=True)
class Unavailable:
    """Why the agent cannot run on a host: the host keeps today's path."""

    reason: str


def start_command(path: str, tag: str, window_s: float) -> Remote:
    """The agent's start (relay.ssh.remote_scripts: any login shell); the secret follows the
    preamble on standard input."""
    if not tag or any(c not in "0123456789abcdef" for c in tag):
        raise ValueError(f"agent tag must be lowercase hex, not {tag!r}")
    return remote_scripts.script(
        # without python3 the secret is still read to its end: a session that exits before
        # its input is taken can leave the sender waiting (seen: the start never returned)
        "command -v python3 >/dev/null 2>&1 || { cat >/dev/null; echo agent none; exit 0; }; "
        # the path in the script, which only /bin/sh reads: any home directory's name will do
        f'exec python3 -I {shlex.quote(path)} start "$1" "$2"',
        tag,
        str(max(1, round(window_s))),
    )


def parse_start(
    host: str, exit_status: int | None, stdout: str, stderr: str = ""
) -> AgentInfo | Unavailable:
    """The start line (``agent 1 PID SOCKPATH UID CHECK ENDED``), or why there is none (a
    crash says it on stderr: its last line, the exception); ConnectFailed if the session was
    cut off with its connection (no exit status)."""
    if exit_status is None:
        raise ConnectFailed(f"the SSH connection to {host} was lost while relay's agent started")
    line = next((ln for ln in stdout.splitlines() if ln.startswith("agent ")), "")
    _, kind, rest = [*line.split(" ", 2), "", ""][:3]
    if kind == "none":
        return Unavailable(f"no python3 on {host}'s PATH")
    if kind == "old":
        return Unavailable(f"python3 on {host} is {rest}; relay's agent needs 3.6 or later")
    why, _, path = rest.partition(" ")  # a path as it is: TMPDIR may hold a space
    if kind == "refuse" and why in _REFUSALS and path:
        return Unavailable(_REFUSALS[why].format(path=path))
    pid, _, rest = rest.partition(" ")
    words = [pid, *rest.rsplit(" ", 3)]  # PID SOCKPATH UID CHECK ENDED; SOCKPATH as it is
    if kind == "1" and len(words) == 5 and all(w.isdigit() for w in (words[0], words[2])):
        pid, sock, uid, check, ended = words
        return AgentInfo(int(pid), sock, int(uid), check == "proc", int(ended or 0))
    last_words = stderr.strip().splitlines()[-1:] or [""]
    said = line or stdout.strip()[:80] or last_words[0].strip()[:160] or "nothing"
    return Unavailable(f"relay's agent did not start (exit {exit_status}, said {said!r})")


async def start(
    conn: asyncssh.SSHClientConnection, host: str, tag: str, window_s: float
) -> tuple[AgentInfo, str] | Unavailable:
    """The agent's file installed and the agent started: what it said, and its secret."""
    try:
        path = await hookfile.install(conn, host, agent_file())
    except HookInstallFailed as exc:
        return Unavailable(exc.message)
    secret = secrets.token_hex(32)
    try:
        async with asyncio.timeout(START_TIMEOUT_S):  # the input's delivery included
            result = await remote_scripts.run(
                conn,
                start_command(path, tag, window_s),
                secret + "\n",
                check=False,
                timeout=START_TIMEOUT_S,
            )
    except (asyncssh.TimeoutError, TimeoutError):
        return Unavailable(f"relay's agent did not start within {START_TIMEOUT_S:g} s")
    except asyncssh.ChannelOpenError as exc:
        return Unavailable(f"the server refused a session for relay's agent ({exc.reason})")
    stdout = result.stdout if isinstance(result.stdout, str) else ""
    stderr = result.stderr if isinstance(result.stderr, str) else ""
    started = parse_start(host, result.exit_status, stdout, stderr)
    if isinstance(started, Unavailable):
        return started
    return started, secret
