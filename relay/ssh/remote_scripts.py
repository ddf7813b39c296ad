"""relay's remote shell scripts as the one-line commands sshd runs. Pure.

``supervisor.sh`` (one long-lived session per connection: starts and reaps kernels) and
``hookinstall.sh`` (one short session: writes the kernel hook file). Both are POSIX sh, joined
into one line and run as ``exec /bin/sh -c '...' relay ARGS``: the same under whatever login
shell the account has (sh, bash, zsh, csh, tcsh, fish), and nothing but /bin/sh needed.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

__all__ = ["HOOK_KEEP_DAYS", "hook_install_command", "one_line", "remote_command"]

HOOK_KEEP_DAYS = 30  # an unused kernel hook version directory is pruned after this long


@cache
def one_line(name: str = "supervisor.sh") -> str:
    text = files("relay.ssh").joinpath(name).read_text()
    lines = (line.strip() for line in text.splitlines())
    script = " ".join(line for line in lines if line and not line.startswith("#"))
    assert "'" not in script, f"{name} must not contain single quotes"
    return script


def _command(name: str, *args: str) -> str:
    return f"exec /bin/sh -c '{one_line(name)}' relay {' '.join(args)}"


def remote_command(tag: str, *, end_stale: bool = True, stale_after_s: int = 60) -> str:
    """The supervisor: ``exec /bin/sh -c '...' relay TAG end|keep STALE_S``. A session of the
    same tag not pinged for STALE_S seconds is stale."""
    if not tag or any(c not in "0123456789abcdef" for c in tag):
        raise ValueError(f"supervisor tag must be lowercase hex, not {tag!r}")
    mode = "end" if end_stale else "keep"
    return _command("supervisor.sh", tag, mode, str(int(stale_after_s)))


def hook_install_command(version: str, name: str, keep_days: int = HOOK_KEEP_DAYS) -> str:
    """The hook installer: ``exec /bin/sh -c '...' relay VERSION NAME KEEP_DAYS``; the file's
    bytes go on the session's standard input."""
    if not version or any(c not in "0123456789abcdef" for c in version):
        raise ValueError(f"hook version must be lowercase hex, not {version!r}")
    if not name or not all(c.isascii() and (c.isalnum() or c == ".") for c in name):
        raise ValueError(f"hook file name must be letters, digits and dots, not {name!r}")
    return _command("hookinstall.sh", version, name, str(int(keep_days)))
