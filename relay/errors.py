"""relay's error table: each error is one actionable line for a person. Pure.

Every code that travels on the control socket is a class here, and ``error_event`` is the one
place an exception becomes what a client (the shim, ``relay status``) or a kernel's hook is
told. The shim prints ``relay: <message>`` and exits non-zero. Translation of asyncssh and OS
exceptions into these lives in ``relay.ssh.errors``.
"""

from __future__ import annotations

import errno
from typing import Any, ClassVar

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "ConfigError",
    "ConnectFailed",
    "ConnectionLost",
    "ForwardFailed",
    "ForwardRefused",
    "FrontEndUnreachable",
    "HookInstallFailed",
    "HostKeyChanged",
    "HostKeyUnknown",
    "Internal",
    "KernelExited",
    "KernelMissing",
    "LaunchTimeout",
    "LocalFileError",
    "LoginAbandoned",
    "LoginNeeded",
    "NotBack",
    "PeerCheckUnavailable",
    "RelayError",
    "SSHSetupFailed",
    "ShuttingDown",
    "SlurmFailed",
    "SlurmPending",
    "SupervisorFailed",
    "UnknownHost",
    "cannot_write",
    "error_event",
    "host_header",
    "shutdown_cause",
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

    def __init__(self, message: str, host: str | None = None) -> None:
        super().__init__(message)
        self.host = host  # the [hosts] entry at fault, when the fault is in one


class UnknownHost(RelayError):
    code = "unknown_host"


class ConnectFailed(RelayError):
    code = "connect_failed"
    retryable = True

    def __init__(self, message: str, *, answered: bool = False) -> None:
        super().__init__(message)
        # the machine answered (refused, reset, a handshake too slow or cut short): it is up,
        # whatever its sshd says now; a silence (a timeout, unreachable) says nothing of it
        self.answered = answered


class NotBack(ConnectFailed):
    """A launch gave up waiting for a lost connection to come back. ``message`` says so as
    it is now, to the launch's shim ("is not back yet ... launch again"); ``afterwards`` is
    what ``relay status`` keeps of it, read when the connection may be back."""

    def __init__(self, message: str, afterwards: str) -> None:
        super().__init__(message)
        self.afterwards = afterwards


class StartLost(ConnectFailed):
    """relay's agent, which would have run a kernel, ended before the kernel's start was
    confirmed: nothing of that start runs on (an agent ends only with no kernel of relay's
    to keep). A launch may start it again on the next connection. Not said of the old path's
    supervisor: sshd may not see its session lost, and its kernel may run on."""


class AuthenticationFailed(RelayError):
    code = "auth_failed"


class LoginNeeded(AuthenticationFailed):
    """The server wants a person's answers (a password, 2FA codes): ``relay login``."""


class HostKeyUnknown(RelayError):
    code = "host_key_unknown"


class HostKeyChanged(RelayError):
    code = "host_key_changed"


class ForwardRefused(RelayError):
    code = "forward_refused"


class SSHSetupFailed(RelayError):
    """Something on this machine needs fixing (a key file, ssh_config): retrying cannot help."""

    code = "ssh_setup"


class SupervisorFailed(RelayError):
    code = "supervisor_failed"


class HookInstallFailed(RelayError):
    """relay's kernel hook (for Dynamic) could not be written or proven on a host."""

    code = "hook_install_failed"


class KernelMissing(RelayError):
    code = "kernel_missing"


class KernelExited(RelayError):
    code = "kernel_exited"


class LaunchTimeout(RelayError):
    code = "launch_timeout"


class LoginAbandoned(RelayError):
    """``relay login`` ended before the server's prompts were answered."""

    code = "login_abandoned"


class FrontEndUnreachable(RelayError):
    code = "front_end_unreachable"


class ShuttingDown(RelayError):
    code = "shutting_down"


class PeerCheckUnavailable(RelayError):
    """A host offers no way to tell who connects to relay's listeners, and peer_check is on."""

    code = "peer_check_unavailable"


class ForwardFailed(RelayError):
    """A link asked for on the control socket could not be opened."""

    code = "forward_failed"


class SlurmFailed(RelayError):
    """An sbatch, squeue or scancel on a login node failed; its own last line says why."""

    code = "slurm"


class SlurmPending(RelayError):
    """No slot in a running Slurm job within the launch's time; Slurm's reason is given."""

    code = "slurm_pending"


class ConnectionLost(RelayError):
    """The SSH connection ended under a running kernel."""

    code = "connection_lost"


class LocalFileError(RelayError):
    """A file of relay's own on this machine (its socket directory, its lock) cannot be made
    or written: a full disk, most often."""

    code = "local_file"


def cannot_write(what: str, exc: OSError, hint: str = "") -> LocalFileError:
    """``what`` (e.g. "the lock file PATH") could not be written, in one line; a full disk
    says so in words, with ``hint`` (another place to choose)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return LocalFileError(
            f"cannot write {what}: no space left on its file system; free some space there"
            + (f" {hint}" if hint else "")
        )
    return LocalFileError(f"cannot write {what}: {exc.strerror or exc}")


class Upgraded(RelayError):
    """relay's files changed under the running daemon (an upgrade): code it has not loaded
    yet would be another release's."""

    code = "upgraded"


class Internal(RelayError):
    """A bug: said once, in one line, while the daemon serves on."""

    code = "internal"


def error_event(exc: BaseException) -> dict[str, Any]:
    """What a client is told about ``exc``: ``{"event": "error", "code", "message"}``."""
    if not isinstance(exc, RelayError):
        exc = Internal(f"relay failed unexpectedly: {exc!r} (see the daemon's log)")
    return {"event": "error", "code": exc.code, "message": exc.message}


def shutdown_cause(why: str | None) -> str:
    """What ended the daemon, as those it interrupted are told: ``why`` is ``relay stop``,
    ``relay restart``, a signal's name, or None (whoever ran ``serve`` ended it)."""
    how = {"relay stop": "stopped", "relay restart": "restarted"}.get(why or "", "shut down")
    return f"the daemon was {how}" + (f" ({why})" if why else "")


def host_header(name: str, table: str = "") -> str:
    """The TOML header of host ``name``'s table (``table``: one of its sub-tables, e.g.
    ``slurm``), as a message suggests it: the name quoted when it is not a bare key."""
    return "[hosts." + _toml_key(name) + (f".{table}" if table else "") + "]"


def _toml_key(key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    escaped = "".join(
        "\\" + c if c in '"\\' else f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c
        for c in key
    )
    return f'"{escaped}"'
