"""Times and durations as relay's messages give them to a person (pure).

An outage's messages name when the connection was lost and when the window ends, and a
window may last up to a week: a time of day alone would read as past, or as the same
time, where it is days away. So a wall time carries its day when that is not today's, and
always its time zone, so that a shim's line can be matched with the log's UTC stamps."""

from __future__ import annotations

import time

__all__ = ["duration", "moment", "span"]


def duration(seconds: float) -> str:
    """``42s``, ``14m57s``, ``3h05m``, ``1d23h``: a countdown's precision, rounded down."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _parts(wall: float, now: float | None) -> tuple[str, str, str]:
    """A wall time's day (empty where it is ``now``'s), clock and zone, in local time."""
    t = time.localtime(wall)
    today = time.localtime(time.time() if now is None else now)
    day = ""
    if (t.tm_year, t.tm_yday) != (today.tm_year, today.tm_yday):
        day = f"{time.strftime('%a', t)} {t.tm_mday} {time.strftime('%b', t)}"
        if t.tm_year != today.tm_year:
            day += f" {t.tm_year}"
    return day, time.strftime("%H:%M:%S", t), time.strftime("%Z", t)


def _join(*words: str) -> str:
    return " ".join(w for w in words if w)


def moment(wall: float, now: float | None = None) -> str:
    """A wall time in local time with its zone, ``08:32:58 EST``; with its day,
    ``Tue 8 Dec 08:32:58 EST``, when that is not ``now``'s (the present by default)."""
    return _join(*_parts(wall, now))


def span(start: float, end: float, now: float | None = None) -> str:
    """From one wall time to another: ``12:30:02 to 13:05:37 CET``, the day and zone said
    once where both share them."""
    (day, clock, zone), later = _parts(start, now), _parts(end, now)
    if (day, zone) == later[::2]:
        return f"{_join(day, clock)} to {_join(later[1], zone)}"
    return f"{_join(day, clock, zone)} to {_join(*later)}"
