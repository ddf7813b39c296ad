"""relay's Wolfram Language files (package data) and their installer.

``RelayKernelInit.wl``  the kernel hook, installed on remote hosts by relay.ssh.hookfile.
``RelayTools/``         the ``RelayTools``` package for the front-end machine, installed into
                        ``$UserBaseDirectory/Applications`` by ``relay wolfram install``.
"""

from __future__ import annotations

import json
import shutil
from importlib.resources import as_file, files
from pathlib import Path

__all__ = ["install_relaytools"]


def install_relaytools(user_base: Path, relay_command: str) -> Path:
    """Copy RelayTools` into ``user_base/Applications`` and record the relay executable."""
    target = user_base / "Applications" / "RelayTools"
    with as_file(files("relay.wolfram").joinpath("RelayTools")) as source:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    # json.dumps writes a string literal the Wolfram Language reads back the same
    (target / "RelayConfig.wl").write_text(
        f"RelayTools`$RelayCommand = {json.dumps(relay_command)};\n"
    )
    return target
