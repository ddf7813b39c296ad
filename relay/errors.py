"""relay's error hierarchy: each error is one actionable line for a person. Pure.

The ``code`` travels on the control socket; the shim prints ``relay: <message>`` and exits
non-zero. Translation of asyncssh and OS exceptions into these lives in ``relay.ssh.errors``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "ConfigError",
    "ConnectFailed",
    "ForwardRefused",
    "FrontEndUnreachable",
    "HostKeyChanged",
    "HostKeyUnknown",
    "KernelExited",
    "KernelMissing",
    "LaunchTimeout",
    "PeerCheckUnavailable",
    "RelayError",
    "ShuttingDown",
    "SupervisorFailed",
    "UnknownHost",
]


class RelayError(Exception):
    code: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False  # may a reconnect with backoff help?

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(RelayError):
    """Malformed link name, host spec, request or control message."""

    code = "bad_request"


class ConfigError(RelayError):
    code = "config"


class UnknownHost(RelayError):
    code = "unknown_host"


class ConnectFailed(RelayError):
    code = "connect_failed"
    retryable = True


class AuthenticationFailed(RelayError):
    code = "auth_failed"


class HostKeyUnknown(RelayError):
    code = "host_key_unknown"


class HostKeyChanged(RelayError):
    code = "host_key_changed"


class ForwardRefused(RelayError):
    code = "forward_refused"


class SupervisorFailed(RelayError):
    code = "supervisor_failed"


class KernelMissing(RelayError):
    code = "kernel_missing"


class KernelExited(RelayError):
    code = "kernel_exited"


class LaunchTimeout(RelayError):
    code = "launch_timeout"


class FrontEndUnreachable(RelayError):
    code = "front_end_unreachable"


class ShuttingDown(RelayError):
    code = "shutting_down"


class PeerCheckUnavailable(RelayError):
    """A host offers no way to tell who connects to relay's listeners, and peer_check is on."""

    code = "peer_check_unavailable"
