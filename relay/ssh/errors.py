"""Translate asyncssh and OS exceptions into relay's one-line errors (``relay.errors``)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import asyncssh

from relay.errors import (
    AuthenticationFailed,
    ConnectFailed,
    HostKeyChanged,
    HostKeyUnknown,
    RelayError,
    UnknownHost,
)

__all__ = ["translate_connect_error"]


def _known_hosts_has(path: Path, host: str, port: int) -> bool:
    """Whether known_hosts has any entry for the host (then a mismatch means a changed key)."""
    try:
        known = asyncssh.read_known_hosts(str(path))
    except (OSError, ValueError):
        return False
    names = [host] if port == 22 else [f"[{host}]:{port}"]
    for name in names:
        keys, ca_keys, *_ = known.match(name, "", port)
        if keys or ca_keys:
            return True
    return False


def translate_connect_error(
    exc: BaseException,
    *,
    alias: str,
    host: str,
    port: int,
    user: str | None,
    known_hosts: Path,
    configured: list[str],
    config_source: str,
    timeout_s: float,
) -> RelayError:
    target = f"{host}:{port}" if port != 22 else host
    who = f"{user}@{target}" if user else target
    shown = f"[{host}]:{port}" if port != 22 else host
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        if _known_hosts_has(known_hosts, host, port):
            return HostKeyChanged(
                f"host key for {shown} has CHANGED from the one in {known_hosts} (possible "
                f"man-in-the-middle, or the host was reinstalled); if the change is expected, "
                f"run `ssh-keygen -R '{shown}' -f {known_hosts}` and verify the new key with ssh"
            )
        return HostKeyUnknown(
            f"host key for {shown} is not in {known_hosts}: verify it and record it by "
            f"connecting once with `ssh -p {port} {who}` (relay never trusts unknown keys)"
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return AuthenticationFailed(
            f"authentication failed for {who}: relay uses keys only (identity_files, ~/.ssh/id_*, "
            f"or ssh-agent); install your public key in ~/.ssh/authorized_keys on {host} or load "
            f"it with ssh-add"
        )
    if isinstance(exc, socket.gaierror):
        known = ", ".join(configured) or "none"
        return UnknownHost(
            f"cannot resolve host {host!r}: it is not a [hosts] entry in {config_source} "
            f"(configured: {known}) and DNS does not know it"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ConnectFailed(
            f"connecting to {who} timed out after {timeout_s:g} s "
            f"(connect_timeout_s): is the host up and port {port} reachable?"
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailed(
            f"cannot connect to {target}: connection refused "
            f"(is sshd running and listening on port {port}?)"
        )
    if isinstance(exc, asyncssh.DisconnectError):
        return ConnectFailed(f"SSH connection to {who} failed: {exc.reason}")
    if isinstance(exc, FileNotFoundError | PermissionError) and exc.filename:
        return ConnectFailed(f"cannot read {exc.filename} for {alias}: {exc.strerror}")
    if isinstance(exc, OSError):
        return ConnectFailed(f"cannot connect to {target}: {exc.strerror or exc}")
    if isinstance(exc, ValueError | asyncssh.KeyImportError):
        return ConnectFailed(f"SSH configuration for {alias} is not usable: {exc}")
    return ConnectFailed(f"SSH connection to {who} failed: {exc!r}")
