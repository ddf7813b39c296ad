"""Kernel flags as a kernel reads them, for the simulated kernel. Pure, standard library.

Flags (``docs/topology.md`` §2): ``-wstp`` (10+) or ``-mathlink`` selects link-mode start-up;
``-LinkMode Connect|Listen|Launch``, ``-LinkProtocol TCPIP``, ``-LinkName NAME``,
``-LinkHost ADDR``, ``-LinkOptions N``. Flag names are case-insensitive and unknown flags are
ignored, as the kernel does. ``MLDontInteract`` is the link option value 256.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["LINK_OPTIONS", "KernelFlags", "parse_flags", "parse_link_options"]

LINK_OPTIONS = {"mldontinteract": 256, "wsdontinteract": 256}
_VALUED = {
    "-linkmode",
    "-linkprotocol",
    "-linkname",
    "-linkhost",
    "-linkoptions",
    "-initfile",
    "-run",
}


def parse_link_options(text: str) -> int:
    """``-LinkOptions`` value: a number or option names joined by ``|`` or ``+``."""
    total = 0
    for part in text.replace("+", "|").split("|"):
        word = part.strip()
        if word.isdigit():
            total |= int(word)
        elif word.lower() in LINK_OPTIONS:
            total |= LINK_OPTIONS[word.lower()]
        else:
            raise ValueError(f"unknown -LinkOptions value {word!r}")
    return total


class KernelFlags:
    """What a kernel makes of its command line (see ``parse_flags``)."""

    def __init__(self) -> None:
        self.link_startup = False
        self.link_mode: str | None = None
        self.link_protocol: str | None = None
        self.link_name: str | None = None
        self.link_host: str | None = None
        self.link_options = 0
        self.subkernel = False
        self.noinit = False
        self.initfile: list[str] = []
        self.run: list[str] = []
        self.ignored: list[str] = []

    @property
    def dont_interact(self) -> bool:
        return bool(self.link_options & 256)


def parse_flags(argv: Sequence[str]) -> KernelFlags:
    """Parse kernel flags the way a kernel does: case-insensitive, unknown ones ignored."""
    flags = KernelFlags()
    i = 0
    while i < len(argv):
        word = argv[i]
        low = word.lower()
        if low in _VALUED:
            if i + 1 >= len(argv):
                raise ValueError(f"kernel flag {word} needs a value")
            value = argv[i + 1]
            i += 2
            if low == "-linkmode":
                flags.link_mode = value.lower()
            elif low == "-linkprotocol":
                flags.link_protocol = value.upper()
            elif low == "-linkname":
                flags.link_name = value
            elif low == "-linkhost":
                flags.link_host = value
            elif low == "-linkoptions":
                flags.link_options = parse_link_options(value)
            elif low == "-initfile":
                flags.initfile.append(value)
            else:
                flags.run.append(value)
            continue
        if low in ("-wstp", "-mathlink"):
            flags.link_startup = True
        elif low == "-subkernel":
            flags.subkernel = True
        elif low == "-noinit":
            flags.noinit = True
        else:
            flags.ignored.append(word)
        i += 1
    return flags
