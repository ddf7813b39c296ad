"""Translate asyncssh and OS exceptions into relay's one-line errors (``relay.errors``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from pathlib import Path

import asyncssh

from relay.errors import (
    AuthenticationFailed,
    ConnectFailed,
    HostKeyChanged,
    HostKeyUnknown,
    RelayError,
    SSHSetupFailed,
    UnknownHost,
)
from relay.ssh import hostkeys
from relay.ssh.sshconfig import SSHView

__all__ = ["translate_connect_error"]


def translate_connect_error(
    exc: BaseException,
    *,
    alias: str,
    view: SSHView,
    known_hosts: Sequence[Path],
    configured: list[str],
    config_source: str,
    timeout_s: float,
    offered: str | None = None,
) -> RelayError:
    """One line naming what ssh would: the resolved host name, port and user of ``view``."""
    host, port, user = view.hostname, view.port, view.user
    target = f"{host}:{port}" if port != 22 else host
    who = f"{user}@{target}"
    shown = hostkeys.entry_name(view.known_hosts_name, port)
    files = " or ".join(str(p) for p in known_hosts[:1]) or "known_hosts"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        seen = f" (the server offers {offered})" if offered else ""
        if hostkeys.has_entry(known_hosts, view.known_hosts_name, port):
            where = next(
                (p for p in known_hosts if hostkeys.has_entry([p], view.known_hosts_name, port)),
                known_hosts[0],
            )
            return HostKeyChanged(
                f"host key for {shown} has CHANGED from the one in {where}{seen}: possible "
                f"man-in-the-middle, or the host was reinstalled; if the change is expected, "
                f"run `ssh-keygen -R '{shown}' -f {where}`, then `relay trust {alias}`"
            )
        return HostKeyUnknown(
            f"host key for {shown} is not in {files}{seen}: check the fingerprint with the "
            f"host's administrator, then run `relay trust {alias}` (relay never trusts unknown "
            f"keys silently)"
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return AuthenticationFailed(
            f"authentication failed for {who}: relay uses keys only (identity_files, ~/.ssh/id_*, "
            f"or ssh-agent); install your public key in ~/.ssh/authorized_keys on {host} or load "
            f"it with ssh-add"
        )
    if isinstance(exc, socket.gaierror):
        known = ", ".join(configured) or "none"
        ssh_files = ", ".join(view.files) or "no ssh_config file"
        return UnknownHost(
            f"cannot resolve host {host!r}: it is not a [hosts] entry in {config_source} "
            f"(configured: {known}), no Host in {ssh_files} names it, and DNS does not know it"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ConnectFailed(
            f"connecting to {who} timed out after {timeout_s:.3g} s (ConnectTimeout, or "
            f"connect_timeout_s in {config_source}): is the host up and port {port} reachable?"
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailed(
            f"cannot connect to {target}: connection refused "
            f"(is sshd running and listening on port {port}?)"
        )
    if isinstance(exc, asyncssh.DisconnectError):
        return ConnectFailed(f"SSH connection to {who} failed: {exc.reason}")
    if isinstance(exc, FileNotFoundError | PermissionError) and exc.filename:
        return SSHSetupFailed(f"cannot read {exc.filename} for {alias}: {exc.strerror}")
    if isinstance(exc, OSError):
        return ConnectFailed(f"cannot connect to {target}: {exc.strerror or exc}")
    if isinstance(exc, asyncssh.KeyImportError):
        return SSHSetupFailed(f"a key for {alias} cannot be used: {exc}")
    if isinstance(exc, ValueError):
        return SSHSetupFailed(f"SSH configuration for {alias} is not usable: {exc}")
    return ConnectFailed(f"SSH connection to {who} failed: {exc!r}")
