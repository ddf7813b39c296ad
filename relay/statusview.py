"""``relay status`` as a table for a person. Pure: a status answer in, text out."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["render"]


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    return f"{_duration(now - ts)} ago"


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def _peer_check(check: dict[str, Any] | None) -> str:
    """Who may connect to a host's link listeners: ``uid`` (only the user's own processes),
    ``unavailable`` (this side cannot tell: launches fail), ``off``; and refusals so far."""
    if not check:
        return "-"
    text = f"remote {check.get('remote') or '-'}, local {check.get('local') or '-'}"
    if check.get("refused"):
        text += f", {check['refused']} refused"
    return text


def render(status: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    d = status["daemon"]
    rss = f"{d['rss_kb'] / 1024:.1f} MB RSS" if d.get("rss_kb") else "RSS unknown"
    lines = [
        f"relay {d['version']}, pid {d['pid']}, up {_duration(d['uptime_s'])}, "
        f"{rss}, {d['fds']} fds, {d['tasks']} tasks"
        + (", SHUTTING DOWN" if d.get("stopping") else ""),
        f"socket {d['socket']}",
        "",
    ]
    hosts = status["hosts"]
    if hosts:
        lines += _table(
            ["HOST", "STATE", "SINCE", "RTT", "KERNELS", "PEER CHECK", "LAST ERROR"],
            [
                [
                    h["name"],
                    h["state"],
                    _ago(h["since"], now),
                    f"{h['rtt_ms']:.1f} ms" if h.get("rtt_ms") is not None else "-",
                    str(h["kernels"]),
                    _peer_check(h.get("peer_check")),
                    h.get("last_error") or "-",
                ]
                for h in hosts
            ],
        )
    else:
        lines.append("no hosts connected yet")
    failures = [(h["name"], f) for h in hosts for f in h.get("failures") or []]
    if failures:
        lines += ["", "kernels that failed after their launch had answered (newest last):"]
        lines += _table(
            ["HOST", "KERNEL", "WHEN", "PATH", "REASON"],
            [
                [name, f["kernel_id"], _ago(f["at"], now), f["kernel"], f["reason"]]
                for name, f in failures
            ],
        )
    kernels = status["kernels"]
    lines.append("")
    if kernels:
        lines += _table(
            ["KERNEL", "HOST", "MODE", "STATE", "PID", "AGE", "FRONT END LINK", "REMOTE LINK"],
            [
                [
                    k["id"],
                    k["host"],
                    k["mode"],
                    k.get("state", "-"),
                    str(k.get("remote_pid") or "-"),
                    _duration(k["age_s"]),
                    k["frontend_link"],
                    k["remote_link"],
                ]
                for k in kernels
            ],
        )
        lines.append("")
        lines += _table(
            ["KERNEL", "CHANNEL", "REMOTE LISTENER", "FRONT END", "STATE"],
            [
                [k["id"], f["role"], f["remote"] or "-", f["target"], f["state"]]
                for k in kernels
                for f in k["forwards"]
            ],
        )
    else:
        lines.append("no kernels running")
    return "\n".join(lines) + "\n"
