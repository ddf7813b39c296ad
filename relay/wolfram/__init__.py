"""relay's Wolfram Language files (package data) and their installer.

``RelayKernelInit.wl``  the kernel hook, installed on remote hosts by relay.ssh.hookfile.
``RelayTools/``         the ``RelayTools``` package for the front-end machine, installed into
                        ``$UserBaseDirectory/Applications`` by ``relay wolfram install``.
"""

from __future__ import annotations

import os
import shutil
from importlib.resources import as_file, files
from pathlib import Path

from relay.errors import cannot_write
from relay.frontendconfig import wl_string

__all__ = ["install_relaytools", "installed_relaytools", "uninstall_relaytools"]


def installed_relaytools(user_base: Path) -> Path:
    return user_base / "Applications" / "RelayTools"


def install_relaytools(user_base: Path, relay_command: str) -> Path:
    """Copy RelayTools` into ``user_base/Applications`` and record the relay executable. The
    copy is made beside the installed one and put in its place whole: the old one was
    removed first, and a full disk (a quota, a read-only home) then left a half copy with
    an empty RelayConfig.wl, and a traceback. Where the copy cannot be made, the one
    installed stays as it was and ``LocalFileError`` says why in one line; one already as
    it should be is not copied again."""
    target = installed_relaytools(user_base)
    config = f"RelayTools`$RelayCommand = {wl_string(relay_command)};\n".encode("ascii")
    with as_file(files("relay.wolfram").joinpath("RelayTools")) as source:
        if _same(source, target, config):
            return target
        staged = target.with_name(f".{target.name}.{os.getpid()}.new")
        try:
            shutil.rmtree(staged, ignore_errors=True)
            staged.parent.mkdir(parents=True, exist_ok=True)
            for name, data in _package(source, config).items():
                (staged / name).parent.mkdir(parents=True, exist_ok=True)
                (staged / name).write_bytes(data)  # an OSError of its own (copytree's sums)
            old = target.with_name(f".{target.name}.{os.getpid()}.old")
            if target.exists():
                target.rename(old)
            try:
                staged.rename(target)
            except OSError:
                if old.exists():
                    old.rename(target)
                raise
        except OSError as exc:
            raise cannot_write(str(target), exc) from None
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target


CONFIG = "RelayConfig.wl"


def _package(source: Path, config: bytes) -> dict[Path, bytes]:
    """What an install puts in RelayTools`'s directory: its files by name, and the config."""
    found = {
        p.relative_to(source): p.read_bytes()
        for p in sorted(source.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    found[Path(CONFIG)] = config
    return found


def _same(source: Path, target: Path, config: bytes) -> bool:
    """Whether ``target`` holds what an install would put there, file for file."""
    try:
        wanted = _package(source, config)
        there = {p.relative_to(target) for p in target.rglob("*") if p.is_file()}
        return there == set(wanted) and all(
            (target / name).read_bytes() == data for name, data in wanted.items()
        )
    except OSError:
        return False


def uninstall_relaytools(user_base: Path) -> Path | None:
    """Remove RelayTools` from ``user_base``; the directory removed, or None if it was not there."""
    target = installed_relaytools(user_base)
    if not (target / "RelayTools.wl").is_file():
        return None
    shutil.rmtree(target)
    return target
