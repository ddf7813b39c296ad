"""Where relay keeps its files. Pure, standard library only (the shim uses it).

Config: ``RELAY_CONFIG``, else ``$XDG_CONFIG_HOME/relay/relay.toml``, else
``~/.config/relay/relay.toml``. Socket: ``RELAY_SOCKET``, else ``[daemon] socket`` in the config
file, else ``$XDG_RUNTIME_DIR/relay/relay.sock``, else (macOS)
``~/Library/Application Support/relay/relay.sock``, else ``/tmp/relay-$UID/relay.sock``.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

__all__ = ["config_path", "default_socket_path", "socket_path"]


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("RELAY_CONFIG"):
        return Path(env["RELAY_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "relay" / "relay.toml"


def default_socket_path(env: Mapping[str, str] = os.environ, platform: str = sys.platform) -> Path:
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "relay" / "relay.sock"
    if platform == "darwin":  # persistent (launchd's socket must survive reboots), per user
        home = Path(env.get("HOME") or Path.home())
        return home / "Library" / "Application Support" / "relay" / "relay.sock"
    return Path(f"/tmp/relay-{os.getuid()}") / "relay.sock"  # noqa: S108 (0700, owner checked)


def socket_path(env: Mapping[str, str] = os.environ) -> Path:
    """The control socket, as the shim and the daemon both must agree on it."""
    if env.get("RELAY_SOCKET"):
        return Path(env["RELAY_SOCKET"]).expanduser()
    path = config_path(env)
    try:
        with path.open("rb") as fh:
            configured = tomllib.load(fh).get("daemon", {}).get("socket")
    except (OSError, tomllib.TOMLDecodeError):
        configured = None  # the daemon reports config errors; the shim just needs a path
    if isinstance(configured, str) and configured:
        return Path(configured).expanduser()
    return default_socket_path(env)
