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


# a relay.toml that does not parse is read once more this much later: an editor that saves
# in place (truncates, then writes) leaves it half-written for a moment
HALF_SAVED_S = 0.05
# an empty relay.toml changed this recently may be one caught between its truncation and
# its write (for a small file, one write: the state a reader most often catches)
JUST_SAVED_S = 1.0


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _just_emptied(path: str) -> bool:
    """Whether ``path`` is an empty file changed in the last ``JUST_SAVED_S``."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    import time

    return info.st_size == 0 and abs(time.time() - info.st_mtime) < JUST_SAVED_S


def _configured_socket(raw: bytes) -> object:
    """``[daemon] socket`` in relay.toml's bytes (None where unset); ValueError where they
    do not parse (not UTF-8, not TOML, a number too long)."""
    # parse (and import tomllib) only when it can matter: where it names a socket, or it is
    # cut in a line (a saved file ends in a newline; one cut before "socket" was whole in
    # the word's absence and sent the shim to the default socket)
    if not raw or (b"socket" not in raw and raw.endswith(b"\n")):
        return None
    import tomllib

    try:
        daemon = tomllib.loads(raw.decode()).get("daemon")
    except RecursionError as exc:
        raise ValueError(str(exc)) from None
    return daemon.get("socket") if isinstance(daemon, dict) else None


def socket_path(env: Mapping[str, str] = os.environ) -> str:
    """The control socket, as the shim and the daemon both must agree on it."""
    if env.get("RELAY_SOCKET"):
        return os.path.expanduser(env["RELAY_SOCKET"])
    configured = None
    for attempt in range(2):
        try:
            raw = _read(config_path(env))
            if not raw and attempt == 0 and _just_emptied(config_path(env)):
                raise ValueError("empty")  # truncated, not yet written: read once more
            configured = _configured_socket(raw)
            break
        except ValueError:
            # a file being saved as the shim read it (else the default: the daemon reports
            # config errors; the shim needs a path, and a socket set in a half-written file
            # would send it to the default one, where it would start a second daemon)
            if attempt == 0:
                import time

                time.sleep(HALF_SAVED_S)
    if isinstance(configured, str) and configured:
        return os.path.expanduser(configured)
    return default_socket_path(env)
