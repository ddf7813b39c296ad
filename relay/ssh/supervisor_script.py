"""The remote supervisor script (``supervisor.sh``) as the one-line command sshd runs."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

__all__ = ["one_line", "remote_command"]


@cache
def one_line() -> str:
    text = files("relay.ssh").joinpath("supervisor.sh").read_text()
    lines = (line.strip() for line in text.splitlines())
    return " ".join(line for line in lines if line and not line.startswith("#"))


def remote_command(tag: str, *, end_stale: bool = True, stale_after_s: int = 60) -> str:
    """``exec /bin/sh -c '...' relay TAG end|keep STALE_S``: the same under sh, bash, zsh, csh,
    tcsh and fish. A session of the same tag not pinged for STALE_S seconds is stale."""
    script = one_line()
    assert "'" not in script, "supervisor.sh must not contain single quotes"
    if not tag or any(c not in "0123456789abcdef" for c in tag):
        raise ValueError(f"supervisor tag must be lowercase hex, not {tag!r}")
    mode = "end" if end_stale else "keep"
    return f"exec /bin/sh -c '{script}' relay {tag} {mode} {int(stale_after_s)}"
