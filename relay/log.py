"""Logging, configured once: structlog, JSON when not on a TTY, console on one.

Secrets never reach a log: values of keys that look secret are replaced before rendering.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO, cast

import structlog

__all__ = ["RotatingFile", "configure", "redact"]

_SECRET_WORDS = ("password", "passphrase", "secret", "token", "private_key")


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = "[redacted]"
    return event


def _open_append(path: Path) -> TextIO:
    """Append to ``path``, never through a symlink someone planted in its place."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    return open(fd, "a", encoding="utf-8")


class RotatingFile:
    """A log file that rotates at ``max_bytes``, keeping ``backups`` old files (.1, .2, ...),
    for those without journald. Lines are written whole and flushed."""

    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = _open_append(path)

    def write(self, text: str) -> int:
        if self._fh.tell() > 0 and self._fh.tell() + len(text) > self.max_bytes:
            self._rotate()
        n = self._fh.write(text)
        self._fh.flush()
        return n

    def flush(self) -> None:
        self._fh.flush()

    def isatty(self) -> bool:
        return False

    def _rotate(self) -> None:
        self._fh.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._fh = _open_append(self.path)

    def close(self) -> None:
        self._fh.close()


def configure(
    level: str = "info", *, stream: TextIO | RotatingFile | None = None, json: bool | None = None
) -> None:
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, stream)),
        cache_logger_on_first_use=False,
    )
    # asyncssh logs through the standard library; keep it quiet unless debugging.
    logging.getLogger("asyncssh").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


class RateLimited:
    """A warning that anyone can provoke (a stranger's connection, a wrong hook token):
    logged once per key per ``window_s``, the next line saying how many were not, so a flood
    cannot rotate real logs away. ``total`` counts them all."""

    def __init__(self, log: Any, event: str, window_s: float = 60.0) -> None:
        self._log = log
        self._event = event
        self._window_s = window_s
        self._last: dict[object, tuple[float, int]] = {}  # key -> (logged at, not logged since)
        self.total = 0

    def warn(self, key: object, **facts: object) -> None:
        self.total += 1
        now = time.monotonic()
        logged_at, since = self._last.get(key, (float("-inf"), 0))
        if now - logged_at < self._window_s:
            self._last[key] = (logged_at, since + 1)
            return
        self._last[key] = (now, 0)
        self._log.warning(self._event, not_logged_since_last=since, **facts)
