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

__all__ = ["host_key_refused", "translate_connect_error"]


def translate_connect_error(
    exc: BaseException,
    *,
    alias: str,
    view: SSHView,
    known_hosts: Sequence[Path],
    configured: list[str],
    config_source: str,
    timeout_s: float,
    offered: asyncssh.SSHKey | None = None,
    recorded: hostkeys.Recorded | None = None,
    elapsed_s: float | None = None,
    reached: str = "none",
    cut_short: bool = False,
) -> RelayError:
    """One line naming what ssh would: the resolved host name, port and user of ``view``.
    A refused host key is explained by ``recorded``, the look-up the connection was checked
    against, and ``offered``, the key the server offers (when it could be fetched). A
    timeout says how far the attempt got (``reached``: "none", "tcp" without the server's
    SSH version line, or "ssh") and how long it took (``elapsed_s``, measured) against its
    bound (``timeout_s``): ConnectTimeout, or what was left of a round of attempts'
    launch_timeout_s when that was less (``cut_short``)."""
    host, port, user = view.hostname, view.port, view.user
    target = f"{host}:{port}" if port != 22 else host
    who = f"{user}@{target}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return host_key_refused(
            alias=alias, view=view, known_hosts=known_hosts, recorded=recorded, offered=offered
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
    # a timeout's bound: the setting, or what a round of attempts had left of its own
    setting = (
        "what was left of launch_timeout_s"
        if cut_short
        else f"ConnectTimeout, or connect_timeout_s in {config_source}"
    )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError) and reached != "none":
        took = timeout_s if elapsed_s is None else elapsed_s
        bound = f"{setting}: {timeout_s:.1f} s" if cut_short else f"{setting}: {timeout_s:g} s"
        if reached == "tcp":
            return ConnectFailed(
                f"{host}:{port} accepted TCP but sent no SSH banner in {took:.1f} s ({bound}): "
                f"is sshd what listens on port {port}? (or it is too busy to answer: "
                f"MaxStartups)"
            )
        return ConnectFailed(
            f"{who} answered but did not finish the SSH handshake and login in {took:.1f} s "
            f"({bound})"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ConnectFailed(
            f"connecting to {who} timed out after {timeout_s:.3g} s ({setting}): is the host up "
            f"and port {port} reachable?"
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailed(
            f"cannot connect to {target}: connection refused "
            f"(is sshd running and listening on port {port}?)"
        )
    if isinstance(exc, ConnectionResetError):
        when = "during the SSH handshake" if reached == "ssh" else "before SSH began"
        return ConnectFailed(
            f"{target} reset the connection {when}: sshd restarting or too busy "
            f"(MaxStartups), or a firewall on the way refusing SSH"
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


def host_key_refused(
    *,
    alias: str,
    view: SSHView,
    known_hosts: Sequence[Path],
    recorded: hostkeys.Recorded | None,
    offered: asyncssh.SSHKey | None,
) -> RelayError:
    """Why the server's key is refused, in the words ``relay trust`` and ``relay check`` use:
    ``recorded.state`` of the offered key, so all three say the same of one key."""
    entry = (
        recorded.entry if recorded is not None else hostkeys.entry_name(*hostkeys.known_as(view))
    )
    state = recorded.state(offered) if recorded is not None and offered is not None else None
    if state in (None, "known"):
        # no key to judge, or not the one the connection refused (a host certificate, or
        # another of the server's keys): said by what is recorded for the host
        state = "changed" if recorded is not None and recorded.has_entry else "unknown"
    seen = f" (the server offers {hostkeys.fingerprint(offered)})" if offered is not None else ""
    if state == "revoked":
        consulted = ", ".join(str(p) for p in known_hosts) or "known_hosts"
        return HostKeyChanged(
            f"host key for {entry} is marked @revoked in known_hosts ({consulted}){seen}: it "
            f"must never be accepted, and a revoked key offered may mean a stolen one "
            f"impersonating the host; tell the host's administrator"
        )
    if state == "changed":
        where = (recorded.where if recorded is not None else None) or (
            known_hosts[0] if known_hosts else "known_hosts"
        )
        return HostKeyChanged(
            f"host key for {entry} has CHANGED from the one in {where}{seen}: possible "
            f"man-in-the-middle, or the host was reinstalled; if the change is expected, "
            f"run `{hostkeys.remove_command(entry, where)}`, then `relay trust {alias}`"
        )
    files = " or ".join(str(p) for p in known_hosts[:1]) or "known_hosts"
    return HostKeyUnknown(
        f"host key for {entry} is not in {files}{seen}: check the fingerprint with the "
        f"host's administrator, then run `relay trust {alias}` (relay never trusts unknown "
        f"keys silently)"
    )
