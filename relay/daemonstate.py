"""What ``relay check`` reads of the daemon it runs in: a protocol of its own, so that the
daemon's control layer can name it without importing the checks. ``relay.check`` is loaded
when a check is asked for, not with the daemon (about 1 MB it need not hold meanwhile)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from relay.kernels import Kernel
    from relay.settings import RelayConfig
    from relay.ssh.host import HostSession

__all__ = ["DaemonState"]


class DaemonState(Protocol):
    """What the checks read of the daemon they run in (``relay.daemon.Daemon`` is one; the
    control layer and the CLI call ``relay.check.run``)."""

    config: RelayConfig
    config_source: str
    environ_agent: str | None
    kernels: dict[str, Kernel]

    def host(self, name: str) -> HostSession: ...
