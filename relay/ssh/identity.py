"""Keys named in relay.toml's ``identity_files``, used as ``ssh -i`` uses them.

An unencrypted key is offered directly. An encrypted one is offered through the agent when the
agent holds it (found by its ``.pub``), as ssh does; relay never asks for a passphrase, so one
the agent does not hold is reported at once, naming ``ssh-add``. A missing file is reported at
once too: no retry can make it appear.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncssh

from relay.errors import SSHSetupFailed

__all__ = ["agent_keys", "agent_path", "client_keys"]


def agent_path(identity_agent: object, environ_sock: str | None) -> str | None:
    """The agent socket ssh would use: IdentityAgent (``none`` for none, ``SSH_AUTH_SOCK`` or
    ``$VAR`` for the environment's), else the environment's ``SSH_AUTH_SOCK``."""
    if isinstance(identity_agent, str) and identity_agent:
        if identity_agent.lower() == "none":
            return None
        if identity_agent in ("SSH_AUTH_SOCK", "$SSH_AUTH_SOCK"):
            return environ_sock or None
        return str(Path(identity_agent).expanduser())
    return environ_sock or None


async def agent_keys(path: str | None) -> list[asyncssh.SSHKeyPair]:
    if not path:
        return []
    try:
        async with asyncssh.connect_agent(path) as agent:
            return list(await agent.get_keys())
    except (OSError, asyncssh.Error, ValueError):
        return []


def _read(name: str, host: str) -> tuple[str, asyncssh.SSHKey | None]:
    """An identity file's path, and its public half if it is encrypted (else ``None``)."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise SSHSetupFailed(
            f"identity file {path} for {host} does not exist: fix identity_files in relay.toml"
        )
    try:
        asyncssh.read_private_key(str(path))
    except asyncssh.KeyImportError as exc:
        if "passphrase" not in str(exc).lower():
            raise SSHSetupFailed(f"identity file {path} for {host} is not a key: {exc}") from None
    except OSError as exc:
        raise SSHSetupFailed(f"cannot read identity file {path}: {exc.strerror}") from None
    else:
        return str(path), None
    try:
        return str(path), asyncssh.read_public_key(f"{path}.pub")
    except (OSError, asyncssh.KeyImportError):
        raise SSHSetupFailed(
            f"identity file {path} for {host} is encrypted and has no {path}.pub beside it, so "
            f"relay cannot find it in your ssh-agent: restore the .pub (ssh-keygen -y -f {path})"
        ) from None


async def client_keys(
    files: Sequence[str], *, host: str, agent: str | None
) -> list[asyncssh.SSHKeyPair | str]:
    """What to offer for ``files`` (relay.toml's identity_files for ``host``)."""
    offered: list[asyncssh.SSHKeyPair | str] = []
    held: list[asyncssh.SSHKeyPair] | None = None
    for name in files:
        path, public = _read(name, host)
        if public is None:
            offered.append(path)
            continue
        if held is None:  # encrypted: usable only through the agent
            held = await agent_keys(agent)
        match = [k for k in held if k.public_data == public.public_data]
        if not match:
            why = "your ssh-agent does not hold it" if agent else "no ssh-agent is reachable"
            raise SSHSetupFailed(
                f"identity file {path} for {host} is encrypted and {why}: run `ssh-add {path}` "
                f"(relay never asks for passphrases)"
            )
        offered.append(match[0])
    return offered
