"""relay's Wolfram Language files (package data) and their installer.

``RelayKernelInit.wl``  the kernel hook, installed on remote hosts by relay.ssh.hookfile.
``RelayTools/``         the ``RelayTools``` package for the front-end machine, installed into
                        ``$UserBaseDirectory/Applications`` by ``relay wolfram install``.
"""

from __future__ import annotations

import shutil
from importlib.resources import as_file, files
from pathlib import Path

from relay.frontendconfig import wl_string

__all__ = ["install_relaytools", "installed_relaytools", "uninstall_relaytools"]


def installed_relaytools(user_base: Path) -> Path:
    return user_base / "Applications" / "RelayTools"


def install_relaytools(user_base: Path, relay_command: str) -> Path:
    """Copy RelayTools` into ``user_base/Applications`` and record the relay executable."""
    target = installed_relaytools(user_base)
    with as_file(files("relay.wolfram").joinpath("RelayTools")) as source:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "RelayConfig.wl").write_text(
        f"RelayTools`$RelayCommand = {wl_string(relay_command)};\n", encoding="ascii"
    )
    return target


def uninstall_relaytools(user_base: Path) -> Path | None:
    """Remove RelayTools` from ``user_base``; the directory removed, or None if it was not there."""
    target = installed_relaytools(user_base)
    if not (target / "RelayTools.wl").is_file():
        return None
    shutil.rmtree(target)
    return target
