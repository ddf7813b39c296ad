"""Host keys as ssh keeps them: known_hosts look-ups, the key a server offers, and recording it.

relay never trusts an unknown key silently. A key is recorded only by ``relay trust HOST`` (a
person saw its fingerprint and said yes, as at ssh's ``StrictHostKeyChecking ask`` prompt) or,
where ssh_config says ``StrictHostKeyChecking accept-new``, on first contact as ssh would.
A key that differs from a recorded one is never replaced here: that is ``ssh-keygen -R``'s job.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh

__all__ = ["entry_name", "fingerprint", "has_entry", "offered_key", "record", "state"]


def entry_name(name: str, port: int) -> str:
    """How known_hosts names a host: ``name``, or ``[name]:port`` off port 22."""
    return name if port == 22 else f"[{name}]:{port}"


def _port(port: int) -> int | None:
    """asyncssh's ``match`` builds ``[name]:port`` itself, for a port other than 22 (and then
    also tries the bare name, as asyncssh's own check does)."""
    return None if port == 22 else port


def has_entry(files: Sequence[Path], name: str, port: int) -> bool:
    """Whether any of the files records any key for the host (then a mismatch is a CHANGE)."""
    for path in files:
        try:
            known = asyncssh.read_known_hosts(str(path))
        except (OSError, ValueError):
            continue
        keys, ca_keys, *_ = known.match(name, "", _port(port))
        if keys or ca_keys:
            return True
    return False


def state(files: Sequence[Path], name: str, port: int, key: asyncssh.SSHKey) -> str:
    """``known`` (recorded), ``changed`` (another key is recorded) or ``unknown``."""
    for path in files:
        try:
            known = asyncssh.read_known_hosts(str(path))
        except (OSError, ValueError):
            continue
        keys, *_ = known.match(name, "", _port(port))
        if any(k.public_data == key.public_data for k in keys):
            return "known"
    return "changed" if has_entry(files, name, port) else "unknown"


def fingerprint(key: asyncssh.SSHKey) -> str:
    """``ED25519 SHA256:...`` as ssh prints it."""
    algorithm = key.get_algorithm().removeprefix("ssh-").split("-")[0].upper()
    return f"{algorithm} {key.get_fingerprint('sha256')}"


async def offered_key(host: str, options: dict[str, Any]) -> asyncssh.SSHKey | None:
    """The host key the server offers (a key exchange, no authentication), reached the way a
    connection would be (port, ssh_config, jump host or proxy command in ``options``)."""
    kwargs = {
        k: v
        for k, v in options.items()
        if k in ("port", "tunnel", "proxy_command", "config") and v is not None
    }
    return await asyncssh.get_server_host_key(host, **kwargs)


def record(path: Path, name: str, port: int, key: asyncssh.SSHKey) -> str:
    """Append the key for the host to a known_hosts file (made 0600 in a 0700 directory if
    new); the line written."""
    line = f"{entry_name(name, port)} {key.export_public_key('openssh').decode().strip()}\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # a symlinked known_hosts (dotfiles) is followed, as ssh follows it
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:
        if fh.tell() > 0:
            with path.open("rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    fh.write("\n")
        fh.write(line)
    return line.strip()
