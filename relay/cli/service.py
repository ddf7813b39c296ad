"""``relay service install|uninstall``: relay as a systemd (Linux) or launchd (macOS) user
service; the files themselves are ``relay.service``'s."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing: see relay.cli
if TYPE_CHECKING:
    from typing import Any

__all__ = ["run"]


def run(ns: Any) -> int:
    from relay import service

    if ns.action == "install":
        status, lines = service.install(print_only=ns.print_only, start=not ns.no_start)
    else:
        status, lines = service.uninstall()
    for line in lines:
        print(line, file=sys.stderr if line.startswith("relay:") else sys.stdout)
    return status
