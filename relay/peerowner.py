"""Who is at the other end of a loopback TCP connection to one of relay's listeners.

A link's listeners (on the remote host for callbacks, on the front end's machine for the old
Dynamic method and ``expose``) are reachable by every local user: their ports are in the
kernel's argv and in ``/proc/net/tcp``. relay carries a connection only if the process that
made it runs as the same user (issue: a stranger who connects first would otherwise get the
front end's bytes). The connecting socket is identified by its two ends: its local port is the
originator port (sshd reports it for remote listeners; ``getpeername`` gives it for local
ones) and its remote end is the listener's ``127.0.0.1:PORT``.

- Linux: ``/proc/net/tcp`` and ``/proc/net/tcp6`` list every socket with its owner's uid.
  The remote host's supervisor does the same lookup in ``sh`` (``relay/ssh/supervisor.sh``).
- macOS (the front end's machine): ``lsof -F`` lists the sockets of the processes the caller
  can see; an unprivileged user sees only their own, so a socket found there is the user's.

Parsing is pure (``owner_in_proc_net``, ``owner_in_lsof``); ``local_owner`` is the I/O shell.
Answers: a uid, ``GONE`` (no such socket: the client already left) or ``UNKNOWN`` (this
system offers no way to tell).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
from typing import Final

__all__ = [
    "GONE",
    "UNKNOWN",
    "has_proc_net",
    "local_owner",
    "lsof_path",
    "owner_in_lsof",
    "owner_in_proc_net",
    "proc_net_pattern",
]

GONE: Final = -1
UNKNOWN: Final = -2
_LOOPBACK_V4 = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it (little-endian hex)
_LOOPBACK_V4_IN_V6 = "0000000000000000FFFF00000100007F"  # ::ffff:127.0.0.1 in tcp6
LSOF_TIMEOUT_S = 5.0


def proc_net_pattern(client_port: int, listen_port: int) -> tuple[str, tuple[str, ...]]:
    """The local-address suffix and the remote addresses of the connecting socket's row."""
    return f":{client_port:04X}", (
        f"{_LOOPBACK_V4}:{listen_port:04X}",
        f"{_LOOPBACK_V4_IN_V6}:{listen_port:04X}",
    )


def owner_in_proc_net(text: str, client_port: int, listen_port: int) -> int:
    """The uid owning the socket ``127.0.0.1:client_port -> 127.0.0.1:listen_port`` in the
    text of ``/proc/net/tcp`` (or tcp6); ``GONE`` if there is none.

    Columns: ``sl local_address rem_address st tx:rx tr:when retrnsmt uid ...``. The listener's
    own accepted socket is the mirror image (local = listener) and never matches."""
    local_suffix, remotes = proc_net_pattern(client_port, listen_port)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8 or not fields[0].endswith(":"):
            continue
        local, remote, uid = fields[1], fields[2], fields[7]
        if local.upper().endswith(local_suffix) and remote.upper() in remotes and uid.isdigit():
            return int(uid)
    return GONE


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


def proc_net_owner(client_port: int, listen_port: int) -> int:
    """The lookup in this machine's ``/proc/net/tcp{,6}`` (procfs: never waits on a disk)."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as fh:
                uid = owner_in_proc_net(fh.read(), client_port, listen_port)
        except OSError:
            continue
        if uid != GONE:
            return uid
    return GONE


async def local_owner(client_port: int, listen_port: int) -> int:
    """Who made the connection from ``client_port`` to our listener on ``listen_port``."""
    if has_proc_net():
        return proc_net_owner(client_port, listen_port)
    lsof = lsof_path()
    if lsof is None:
        return UNKNOWN
    proc = await asyncio.create_subprocess_exec(
        lsof,
        "-nP",
        "-a",
        f"-iTCP@127.0.0.1:{client_port}",
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
        return UNKNOWN
    return owner_in_lsof(out.decode(errors="replace"), client_port, listen_port)
