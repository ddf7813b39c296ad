"""Where relay keeps its files. Pure, standard library only (the shim uses it).

Config: ``RELAY_CONFIG``, else ``$XDG_CONFIG_HOME/relay/relay.toml``, else
``~/.config/relay/relay.toml``. Socket: ``RELAY_SOCKET``, else ``[daemon] socket`` in the config
file, else ``$XDG_RUNTIME_DIR/relay/relay.sock``, else (macOS)
``~/Library/Application Support/relay/relay.sock``, else ``/tmp/relay-$UID/relay.sock``.

Paths are strings built with ``os.path``: the shim runs once per kernel and ``pathlib`` would be
one more import on its way.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["config_path", "default_socket_path", "socket_path"]


def _home(env: Mapping[str, str]) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def config_path(env: Mapping[str, str] = os.environ) -> str:
    if env.get("RELAY_CONFIG"):
        return os.path.expanduser(env["RELAY_CONFIG"])
    base = env.get("XDG_CONFIG_HOME") or os.path.join(_home(env), ".config")
    return os.path.join(base, "relay", "relay.toml")


def default_socket_path(env: Mapping[str, str] = os.environ, platform: str = sys.platform) -> str:
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "relay", "relay.sock")
    if platform == "darwin":  # persistent (launchd's socket must survive reboots), per user
        return os.path.join(_home(env), "Library", "Application Support", "relay", "relay.sock")
    return f"/tmp/relay-{os.getuid()}/relay.sock"  # noqa: S108 (0700, owner checked)


def socket_path(env: Mapping[str, str] = os.environ) -> str:
    """The control socket, as the shim and the daemon both must agree on it."""
    if env.get("RELAY_SOCKET"):
        return os.path.expanduser(env["RELAY_SOCKET"])
    try:
        with open(config_path(env), "rb") as fh:
            raw = fh.read()
    except OSError:
        raw = b""
    configured = None
    if b"socket" in raw:  # parse (and import tomllib) only when it can matter
        import tomllib

        try:
            daemon = tomllib.loads(raw.decode()).get("daemon")
            configured = daemon.get("socket") if isinstance(daemon, dict) else None
        except (ValueError, RecursionError):  # not UTF-8, not TOML, a number too long
            configured = None  # the daemon reports config errors; the shim needs a path
    if isinstance(configured, str) and configured:
        return os.path.expanduser(configured)
    return default_socket_path(env)
