"""The remote kernel's command line: build its argv, quote it for ``sh``. Pure.

The flags (``docs/topology.md`` §2) are ``-wstp`` (10+) or ``-mathlink``, ``-LinkMode``,
``-LinkProtocol TCPIP``, ``-LinkName NAME``; relay adds the host's configured arguments.
Parsing kernel flags is the simulated kernel's business (``relay.sim.flags``).
"""

from __future__ import annotations

from relay.lite.linkname import LinkName

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_argv", "no_control_characters", "shell_join"]


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


def no_control_characters(text: str) -> str:
    """Every word that reaches the remote host (kernel path, arguments, link names) travels
    in one line of the supervisor's protocol and through ``sh``: a newline or another
    control character there would end the line and run the rest as a new command."""
    for i, char in enumerate(text):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise ValueError(
                f"contains the control character {char!r} at position {i}: kernel paths "
                f"and arguments must be one line of printable text"
            )
    return text
