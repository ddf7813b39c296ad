"""``relay check``'s results: one per check, rendered one line each. Pure.

A check has a state: ``ok``, ``warn`` (works, with something to know), ``fail`` (a launch
would fail here; ``advice`` says what to do) or ``skip`` (not run: an earlier check failed, or
there was nothing to check). The checks themselves are in ``relay.check``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Result", "login_seconds", "origin_words", "parse_probe", "render", "verdict"]

State = Literal["ok", "warn", "fail", "skip"]
MARKS: dict[str, str] = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "--  "}


@dataclass
class Result:
    step: int
    name: str
    state: State
    summary: str
    advice: str | None = None
    ms: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(results: list[Result]) -> int:
    """The exit status: 0 when nothing failed."""
    return 1 if any(r.state == "fail" for r in results) else 0


def render(host: str, results: list[Result], width: int = 16) -> str:
    lines = [f"relay check {host}"]
    for r in results:
        took = f" ({r.ms:.0f} ms)" if r.ms is not None else ""
        name_width = width - len(str(r.step)) + 1  # step 10's summary under step 9's
        lines.append(f"{MARKS[r.state]} {r.step}. {r.name:<{name_width}} {r.summary}{took}")
        for key, value in r.data.get("show", {}).items():
            lines.append(f"{'':<{width + 9}}{key}: {value}")
        if r.advice:
            lines.append(f"{'':<{width + 9}}-> {r.advice}")
    failed = [r for r in results if r.state == "fail"]
    if failed:
        lines.append(f"first failure: {failed[0].name}: {failed[0].advice or failed[0].summary}")
    else:
        lines.append("every check passed" + (" (with warnings)" if _warned(results) else ""))
    return "\n".join(lines) + "\n"


def _warned(results: list[Result]) -> bool:
    return any(r.state == "warn" for r in results)


def origin_words(origin: dict[str, str], field: str | None = None) -> str:
    """Where a host's user and port came from (``origin``: "relay.toml", "ssh_config", "ssh's
    defaults" or "the host spec SPEC"): "user and port from ssh_config", "user from
    relay.toml, port from ssh's defaults"; for one ``field``, briefly: "from the host spec"."""
    if field is not None:
        where = origin.get(field, "?")
        return "from the host spec" if where.startswith("the host spec") else f"from {where}"
    user, port = origin.get("user", "?"), origin.get("port", "?")
    if user == port:
        return f"user and port from {user}"
    return f"user from {user}, port from {port}"


def after_chatter(text: str, marker: str) -> list[str]:
    """A command's non-blank lines from the first that begins with ``marker``: what the login
    shell printed before the command ran (an ``echo`` in ~/.bashrc, which bash reads for ssh's
    commands too) is not the command's. All of them if none does."""
    lines = [line for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith(marker):
            return lines[i:]
    return lines


def chatter(text: str, first: str) -> list[str]:
    """What the login shell printed before a command's own ``first`` line."""
    lines = text.splitlines()
    if first not in lines:
        return []
    return [line for line in lines[: lines.index(first)] if line.strip()]


def parse_probe(text: str) -> dict[str, str]:
    """The remote host probe's ``key=value`` lines (relay.check.HOST_PROBE)."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            found[key] = value.strip()
    return found


def login_seconds(probe: dict[str, str]) -> float | None:
    """How long the probe's session took from its process's start to the probe's first
    command: sshd's work for the session and the login shell's start-up files
    (``login=STARTED NOW HZ``: that process's start and the start of one the probe made,
    in clock ticks since boot, /proc/PID/stat's field 22, and the ticks per second). The
    process is sshd's child for the session, which the login shell and then /bin/sh
    replaced (relay.ssh.remote_scripts.BOOTSTRAP: exec), so no round trip counts. None
    where the host has no /proc, or the two disagree (a start after now)."""
    words = probe.get("login", "").split()
    if len(words) != 3 or not all(word.isdigit() for word in words) or words[2] == "0":
        return None
    started, now, hz = (int(word) for word in words)
    return (now - started) / hz if now >= started else None
