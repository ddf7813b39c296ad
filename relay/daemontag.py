"""Who a daemon is to the remote hosts: its tag.

The tag names what a daemon leaves on a host: its agent's socket and pid file, its
supervisor's stale check, its Slurm jobs. A daemon that starts an agent where one of its own
tag runs takes that one for a dead predecessor's and ends its kernels (docs/agent.md,
"Starting it"): the next daemon on a laptop ends what the crashed one left. So two daemons
may share a tag only when one follows the other on one machine, never when they run on two.

The machine's host name, the uid and the socket path do not promise that. A person's two
laptops are often both ``Alices-MacBook-Pro`` (macOS names a machine after its owner and
model), with uid 501 (macOS's first user) and the same home, hence the same socket: the second
one's first launch would end the first one's kernels. A random id kept on the machine's own
disk tells them apart. It lives in the state directory, not the config one, which people sync
between machines with their dotfiles; the host name stays in the tag for homes shared over
NFS, where the id is shared too.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["daemon_tag", "state_dir"]

ID_FILE = "id"


def state_dir(env: Mapping[str, str] = os.environ, platform: str = sys.platform) -> Path:
    """``$XDG_STATE_HOME/relay``, else ``~/.local/state/relay``; on macOS, beside the default
    socket in ``~/Library/Application Support/relay``."""
    home = Path(env.get("HOME") or Path.home())
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "relay"
    if platform == "darwin":
        return home / "Library" / "Application Support" / "relay"
    return home / ".local" / "state" / "relay"


def daemon_tag(
    socket_path: Path, env: Mapping[str, str] = os.environ, platform: str = sys.platform
) -> tuple[str, str | None]:
    """The tag (16 hex digits), and why this machine's id could not be kept, if it could not
    (the tag then rests on the host name alone, as it did before there was an id)."""
    problem = None
    try:
        kept = _kept_id(state_dir(env, platform) / ID_FILE)
    except OSError as exc:
        kept = ""
        problem = f"{exc.strerror or exc} ({exc.filename or state_dir(env, platform)})"
    who = f"{socket.gethostname()}:{os.getuid()}:{socket_path}:{kept}"
    # a path of bytes not UTF-8 (a Latin-1 HOME), as the file system has it: os.fsencode
    return hashlib.sha256(os.fsencode(who)).hexdigest()[:16], problem


def _kept_id(path: Path) -> str:
    """This machine's id: read, or made once. Two daemons starting at once agree: the id is
    written whole to a file of its own and linked into place, and the one that finds the
    place taken reads the other's. One that is not an id (empty, edited, a symlink) is
    replaced."""
    found = _read_id(path)
    if found:
        return found
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = secrets.token_hex(16)
    part = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(fresh + "\n")
        try:
            os.link(part, path)
        except FileExistsError:
            found = _read_id(path)  # another daemon's, made a moment ago
            if found:
                return found
            os.replace(part, path)  # not an id (empty, edited, a symlink): this one instead
        return fresh
    finally:
        part.unlink(missing_ok=True)


def _read_id(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return ""  # a symlink: replaced by a file of our own
        raise
    with os.fdopen(fd, encoding="ascii", errors="replace") as fh:
        text = fh.read(100).strip()
    return text if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else ""
