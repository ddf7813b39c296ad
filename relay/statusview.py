"""``relay status`` as a table for a person. Pure: a status answer in, text out."""

from __future__ import annotations

import textwrap
import time
from typing import Any

from relay.clock import duration

__all__ = ["render", "resume", "size"]


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    return f"{duration(now - ts)} ago"


ERROR_WIDTH = 60  # a long host error is wrapped onto continuation rows


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell; a cell with newlines continues on rows below."""
    split = [[cell.split("\n") for cell in row] for row in rows]
    widths = [
        max(len(h), *(len(part) for r in split for part in r[i])) for i, h in enumerate(headers)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers).rstrip()]
    for row in split:
        for n in range(max(len(cell) for cell in row)):
            lines.append(fmt.format(*(cell[n] if n < len(cell) else "" for cell in row)).rstrip())
    return lines


def _wrapped(text: str | None) -> str:
    return "\n".join(textwrap.wrap(text, ERROR_WIDTH)) if text else "-"


def _state(h: dict[str, Any], now: float) -> str:
    """The host's state; while its kernels wait for their connection, ``resuming`` and the
    attempt under way."""
    state, attempt = h["state"], h.get("attempt")
    if (attempt if state == "resuming" else state) == "backing-off" and h.get("retry_at"):
        retry = f"retry in {duration(h['retry_at'] - now)}"
        return f"resuming ({retry})" if state == "resuming" else f"backing-off ({retry})"
    if state == "resuming" and attempt == "connecting":
        return "resuming (connecting)"
    return str(state)


def _target(h: dict[str, Any]) -> str:
    """user@host:port as ssh_config resolved it at the last connect."""
    host = h.get("hostname") or "-"
    port = h.get("port")
    target = f"{host}:{port}" if port and port != 22 else host
    return f"{h['user']}@{target}" if h.get("user") else target


def _peer_check(check: dict[str, Any] | None) -> str:
    """Who may connect to a host's link listeners: ``uid`` (only the user's own processes),
    ``unavailable`` (this side cannot tell: launches fail), ``off``; and refusals so far."""
    if not check:
        return "-"
    text = f"remote {check.get('remote') or '-'}, local {check.get('local') or '-'}"
    if check.get("refused"):
        text += f", {check['refused']} refused"
    return text


def size(n: int) -> str:
    """Bytes as a person reads them."""
    if n < 1024:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def resume(r: dict[str, Any] | None) -> str:
    """Whether the host's kernels outlive their connection (docs/agent.md): ``on`` with the
    window; ``resuming`` with the time left and what links hold unacknowledged; ``ended``
    and why (the window ran out); ``off`` and why (no python3 there, resume_window_s = 0,
    ...): one line, as the RESUME column shows it unwrapped."""
    if not r:
        return "-"
    state = r.get("state")
    if state == "on" and not r.get("window_s"):  # an agent told resume_window_s = 0
        return "off: resume_window_s = 0 (kernels end with their connection)"
    if state == "on" and r.get("next_connection"):
        return f"on once connected ({duration(r.get('window_s') or 0)} window)"
    if state == "on":
        return f"on ({duration(r.get('window_s') or 0)} window)"
    if state == "resuming":
        left = r.get("window_left_s")
        text = f"resuming, {duration(left or 0)} left" if left is not None else "resuming"
        if r.get("window_next_s") is not None:  # relay.toml's new one, once back
            text += f" ({duration(r['window_next_s'])} window once back)"
        if r.get("login_needed"):
            text += ", needs `relay login`"
        return f"{text}, {size(int(r.get('unacked') or 0))} held"
    if state in ("ended", "off") and r.get("reason"):
        return f"{state}: {r['reason']}"
    if state == "unknown":  # not connected since the daemon started or relay.toml raised it
        return "unknown until it connects (python3 there is looked for then)"
    return str(state or "-")


def _resume_reason(h: dict[str, Any]) -> str | None:
    """Why the host's kernels did not outlive their connection, where the RESUME column says
    it (the window ran out, the agent was gone)."""
    r = h.get("resume") or {}
    return r.get("reason") if r.get("state") == "ended" else None


def _unrepeated(text: str | None, resume_reason: str | None) -> str | None:
    """A host's error or a kernel's end that is what its RESUME column says already: said
    once there, and pointed to here (a window's end is several lines long, wrapped)."""
    if text and resume_reason and resume_reason in text:
        return "as RESUME says"
    return text


def _slurm(hosts: list[dict[str, Any]]) -> list[str]:
    """Slurm hosts' jobs: state and Slurm's reason (why a job pends), nodes and time left,
    and kernels per node against the slots the job holds there."""
    rows = []
    for h in hosts:
        for job in (h.get("slurm") or {}).get("jobs", []):
            nodes = job.get("slots") or {}
            used = job.get("used") or {}
            per_node = ", ".join(f"{n} {used.get(n, 0)}/{nodes[n]}" for n in sorted(nodes))
            rows.append(
                [
                    h["name"],
                    str(job["job_id"]),
                    job["state"],
                    job.get("reason") or "-",
                    job.get("time_left") or "-",
                    per_node or ", ".join(job.get("nodes") or []) or "-",
                ]
            )
    if not rows:
        return []
    return [
        "",
        *_table(["HOST", "SLURM JOB", "STATE", "REASON", "TIME LEFT", "KERNELS/SLOTS"], rows),
    ]


def render(status: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    d = status["daemon"]
    rss = f"{d['rss_kb'] / 1024:.1f} MB RSS" if d.get("rss_kb") else "RSS unknown"
    lines = [
        f"relay {d['version']}, pid {d['pid']}, up {duration(d['uptime_s'])}, "
        f"{rss}, {d['fds']} fds, {d['tasks']} tasks"
        + (", SHUTTING DOWN" if d.get("stopping") else ""),
        f"socket {d['socket']}",
    ]
    if d.get("config_error"):  # a newer relay.toml that could not be used
        lines.append(
            f"CONFIG REJECTED: {d['config_error']} (the running configuration stays; "
            f"fix the file and it is read again)"
        )
    if d.get("log_problem"):  # the log cannot be written (a full disk): said here instead
        lines.append(f"LOG NOT WRITTEN: {d['log_problem']}")
    lines.append("")
    hosts = status["hosts"]
    if hosts:
        lines += _table(
            [
                "HOST",
                "TARGET",
                "STATE",
                "SINCE",
                "RTT",
                "KERNELS",
                "PEER CHECK",
                "RESUME",
                "LAST ERROR",
            ],
            [
                [
                    h["name"],
                    _target(h),
                    _state(h, now),
                    _ago(h["since"], now),
                    # the last one measured, while the connection it was measured on lives
                    f"{h['rtt_ms']:.1f} ms"
                    if h.get("rtt_ms") is not None and h["state"] == "connected"
                    else "-",
                    str(h["kernels"]),
                    _peer_check(h.get("peer_check")),
                    _wrapped(resume(h.get("resume"))),
                    _wrapped(_unrepeated(h.get("last_error"), _resume_reason(h))),
                ]
                for h in hosts
            ],
        )
    else:
        lines.append("no hosts connected yet")
    lines += _slurm(hosts)
    failures = [(h, f) for h in hosts for f in h.get("failures") or []]
    if failures:
        lines += ["", "kernels that failed after their launch had answered (newest last):"]
        rows, said = [], None
        for h, f in failures:
            reason = f["reason"]
            shown = (
                "as above"
                if (h["name"], reason) == said
                else _unrepeated(reason, _resume_reason(h))
            )
            said = (h["name"], reason)
            rows.append(
                [h["name"], f["kernel_id"], _ago(f["at"], now), f["kernel"], _wrapped(shown)]
            )
        lines += _table(["HOST", "KERNEL", "WHEN", "PATH", "REASON"], rows)
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
                    duration(k["age_s"]),
                    k["frontend_link"],
                    k["remote_link"],
                ]
                for k in kernels
            ],
        )
        lines.append("")
        lines += _table(
            ["KERNEL", "CHANNEL", "REMOTE LISTENER", "FRONT END", "STATE", "UNACKED"],
            [
                [
                    k["id"],
                    f["role"],
                    f["remote"] or "-",
                    f["target"],
                    f["state"],
                    size(f["unacked"]) if "unacked" in f else "-",
                ]
                for k in kernels
                for f in k["forwards"]
            ],
        )
    else:
        lines.append("no kernels running")
    return "\n".join(lines) + "\n"
