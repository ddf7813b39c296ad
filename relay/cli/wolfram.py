"""``relay wolfram install|uninstall``: the RelayTools` package in each Wolfram user base
directory of this machine."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing: see relay.cli
if TYPE_CHECKING:
    from typing import Any

__all__ = ["run"]


def _os_name() -> str:
    return {"darwin": "MacOSX", "win32": "Windows"}.get(sys.platform, "Unix")


def run(ns: Any) -> int:
    """``relay wolfram install|uninstall``."""
    import os
    from pathlib import Path

    from relay.cli.common import this_relay
    from relay.frontendconfig import user_base_directories
    from relay.wolfram import install_relaytools, uninstall_relaytools

    if ns.user_base_directory:
        given = Path(ns.user_base_directory).expanduser()
        if not given.is_dir():  # a typo is not made into a directory the front end never reads
            print(
                f"relay: {given} is not a directory: give $UserBaseDirectory as a notebook of "
                f"the front end shows it (on Linux ~/.Wolfram, or ~/.Mathematica before 14.1)",
                file=sys.stderr,
            )
            return 1
        bases = [given]
    else:
        candidates = user_base_directories(
            _os_name(), str(Path.home()), os.environ.get("APPDATA", "")
        )
        bases = [Path(c) for c in candidates if Path(c).is_dir()]
        if not bases and ns.action == "install":
            print(
                f"relay: no Wolfram user base directory found (looked for "
                f"{' and '.join(candidates)}); start Mathematica once on this machine, "
                f"or pass --user-base-directory DIR ($UserBaseDirectory in a notebook)",
                file=sys.stderr,
            )
            return 1
    if ns.action == "install":
        from relay.errors import LocalFileError

        relay = this_relay()
        for base in bases:
            try:
                print(f"installed RelayTools` in {install_relaytools(base, relay)}")
            except LocalFileError as exc:
                print(f"relay: {exc.message}; nothing there was changed", file=sys.stderr)
                return 1
        print('load it with Needs["RelayTools`"] in a kernel of the front end')
        return 0
    removed = [target for base in bases if (target := uninstall_relaytools(base))]
    for target in removed:
        print(f"removed {target}")
    if not removed:
        print("RelayTools` is not installed in " + (" or ".join(map(str, bases)) or "any"))
        return 0
    print(
        "kernel configurations it added stay: RelayRemoveKernelConfiguration[All] (before "
        "uninstalling) or Evaluation > Kernel Configuration Options removes them"
    )
    return 0
