"""Launch-command templates with backquoted words. Pure.

The front end fills a kernel configuration's "Launch command" by replacing backquoted words
(docs/topology.md §3): `` `linkname` ``, `` `dataport` ``, `` `messageport` ``,
`` `ipaddress` ``, `` `username` ``, `` `machinename` ``, ... The Parallel package fills
``$RemoteCommand`` the same way with numbered slots (§4): `` `1` `` host, `` `2` `` link
name, `` `3` `` remote user name, `` `4` `` ``-linkprotocol TCPIP`` or empty. Unknown words
are left as they are, as the front end leaves them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["FRONT_END_WORDS", "fill", "fill_remote_command"]

FRONT_END_WORDS = frozenset(
    {
        "linkname",
        "userbaseDirectory",
        "dataport",
        "messageport",
        "ipaddress",
        "username",
        "machinename",
        "baseDirectory",
        "homeDirectory",
        "installDirectory",
        "java",
        "mathssh",
        "wolframssh",
        "wolframkernel",
        "mathkernel",
    }
)

_WORD = re.compile(r"`([A-Za-z0-9]+)`")


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace each `` `word` `` that ``values`` names; leave the rest untouched."""
    return _WORD.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def fill_remote_command(
    template: str,
    *,
    host: str,
    linkname: str,
    user: str = "",
    protocol_flag: str = "-linkprotocol TCPIP",
) -> str:
    """Fill a ``$RemoteCommand`` template as ``SubKernels`RemoteKernels`` does."""
    return fill(template, {"1": host, "2": linkname, "3": user, "4": protocol_flag})
