"""The remote kernel's command line: build its argv, quote it for ``sh``. Pure.

The flags (``docs/topology.md`` §2) are ``-wstp`` (10+) or ``-mathlink``, ``-LinkMode``,
``-LinkProtocol TCPIP``, ``-LinkName NAME``; relay adds the host's configured arguments.
Parsing kernel flags is the simulated kernel's business (``relay.sim.flags``).
"""

from __future__ import annotations

from relay.linkname import LinkName

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_argv", "shell_join"]


def build_argv(kernel: str, link: LinkName, extra: Sequence[str] = ()) -> list[str]:
    """The remote kernel's argv: connect back to ``link`` over TCPIP."""
    return [
        kernel,
        "-wstp",
        "-LinkMode",
        "Connect",
        "-LinkProtocol",
        "TCPIP",
        "-LinkName",
        str(link),
        *extra,
    ]


def shell_join(argv: Sequence[str]) -> str:
    """One POSIX ``sh`` command line whose words are exactly ``argv``."""
    import shlex  # noqa: PLC0415 (the daemon's; the simulator kernel never quotes)

    return shlex.join(argv)
