"""relay.toml and ssh_config merged into what one connection attempt uses. Pure.

Precedence, keyword by keyword (README, "ssh_config"): a key set in relay.toml (for the host,
or in ``[defaults]``, which every host takes) wins; else the host's ssh_config value; else relay's
default. asyncssh reads the same ssh_config files itself, so keywords relay has no opinion on
(IdentityAgent, CertificateFile, IdentitiesOnly, HostKeyAlias, HostKeyAlgorithms, ...) reach
the connection as ssh would use them; relay passes explicitly only what it decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.settings import HostConfig
from relay.ssh.sshconfig import SSHView

__all__ = ["ConnectPlan", "asyncssh_keepalive", "plan"]


@dataclass(frozen=True)
class ConnectPlan:
    config: HostConfig  # relay.toml's, with ssh_config's values where relay.toml is silent
    kwargs: dict[str, Any]  # for asyncssh.connect, besides the host name and known_hosts
    known_hosts: list[Path]  # consulted in this order (missing ones hold no keys)
    jump: str | None  # a single ProxyJump hop relay shares as a host session of its own
    notes: list[str] = field(default_factory=list)  # where relay does not do what ssh would


def asyncssh_keepalive(interval_s: float, count_max: int) -> tuple[float, int]:
    """asyncssh's ``keepalive_interval`` and ``keepalive_count_max`` for relay's settings.

    relay (README) and ssh's ServerAliveCountMax declare a connection dead after ``interval_s x
    count_max`` without a word from the server. asyncssh's keepalive timer counts one interval
    more: it sends a request each interval and closes when the count *exceeds* its maximum,
    after ``interval x (count_max + 1)`` of silence (45 s would be 60 s). So it is given one
    request fewer, or for a count of 1 (asyncssh's least) half the interval: it closes after
    ``interval_s x count_max`` all the same."""
    if count_max >= 2:
        return interval_s, count_max - 1
    return interval_s / 2, 1


def plan(config: HostConfig, view: SSHView) -> ConnectPlan:
    explicit = config.model_fields_set
    update: dict[str, Any] = {}
    notes: list[str] = []
    kwargs: dict[str, Any] = {
        "config": list(view.files),
        # Offered so that a server demanding them is recognised; the client declines both
        # unless a person is at a terminal (relay login).
        "password_auth": True,
        "kbdint_auth": True,
        "agent_forwarding": False,  # never: the kernel's host gets no key of the user's
        "x11_forwarding": False,
    }
    if view.get("ForwardAgent"):
        notes.append("ForwardAgent is not honoured: relay never forwards your agent to a host")

    timeout = view.get("ConnectTimeout")
    if "connect_timeout_s" not in explicit and isinstance(timeout, int) and timeout > 0:
        update["connect_timeout_s"] = float(timeout)
    interval = view.get("ServerAliveInterval")
    if "keepalive_interval_s" not in explicit and isinstance(interval, int):
        if interval > 0:
            update["keepalive_interval_s"] = float(interval)
        else:
            notes.append(
                "ServerAliveInterval 0 is not honoured: relay keeps its keepalive "
                f"({config.keepalive_interval_s:g} s), by which it ends kernels whose "
                "connection is gone"
            )
    count = view.get("ServerAliveCountMax")
    if "keepalive_count_max" not in explicit and isinstance(count, int) and count > 0:
        update["keepalive_count_max"] = count
    effective = config.model_copy(update=update)
    kwargs["connect_timeout"] = effective.connect_timeout_s
    kwargs["keepalive_interval"], kwargs["keepalive_count_max"] = asyncssh_keepalive(
        effective.keepalive_interval_s, effective.keepalive_count_max
    )

    if "ciphers" in explicit or view.get("Ciphers") is None:
        kwargs["encryption_algs"] = config.ciphers
    if "compression" in explicit or view.get("Compression") is None:
        kwargs["compression_algs"] = ("zlib@openssh.com", "zlib") if config.compression else None

    if config.port is not None:
        kwargs["port"] = config.port
    if config.user is not None:
        kwargs["username"] = config.user

    jump = config.jump
    if config.proxy_command is not None:
        kwargs["proxy_command"] = config.proxy_command
    elif jump is None:
        hops = str(view.get("ProxyJump") or "")
        if hops and hops.lower() != "none" and "," not in hops:
            jump = hops  # shared: one connection to the bastion for every host behind it
        # several hops: asyncssh follows the chain itself, from the same ssh_config
    if jump is not None:
        kwargs["tunnel"] = None  # set to the jump host's connection by the caller

    if config.known_hosts is not None:
        known = [Path(config.known_hosts).expanduser()]
    else:
        known = [Path(p).expanduser() for p in view.user_known_hosts + view.global_known_hosts]

    if view.strict_host_key_checking == "no":
        notes.append(
            "StrictHostKeyChecking no is not honoured: relay always checks host keys "
            "(record a key with `relay trust`)"
        )
    if view.unsupported:
        notes.append(
            "ssh_config keywords relay does not support are ignored: " + ", ".join(view.unsupported)
        )
    return ConnectPlan(effective, kwargs, known, jump, notes)
