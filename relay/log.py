"""Logging, configured once: structlog, JSON when not on a TTY, console on one. The standard
library's loggers (asyncio's, asyncssh's) go to the same place, as the same lines.

Secrets never reach a log: values of keys that look secret are replaced before rendering.

Logging never takes relay down: a line that cannot be written (a full disk, a closed stderr) is
dropped, the first such failure is said once, in one line, on stderr, and ``problem()`` holds it
(for ``relay status``); the next line that gets through is preceded by one saying how many
were lost.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import io
import json as jsonlib
import logging
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO, cast

import structlog

__all__ = ["RotatingFile", "configure", "drain", "problem", "redact", "say_on_stderr"]

_SECRET_WORDS = ("password", "passphrase", "secret", "token", "private_key")


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = "[redacted]"
    return event


def _open_append(path: Path) -> int:
    """Append to ``path``, never through a symlink someone planted in its place."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)


def say_on_stderr(line: str) -> None:
    """One line on stderr, best effort: stderr may be the very file that cannot be written
    (an autostarted daemon's is its log), and nothing may stay buffered to fail again at exit."""
    with contextlib.suppress(OSError, ValueError):
        os.write(2, f"relay: {line}\n".encode(errors="backslashreplace"))


def _why(what: str, exc: BaseException) -> str:
    """One line for a log that cannot be written."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"cannot write {what}: no space left on its file system; relay runs on without "
            f"logging, and the log resumes once there is room"
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or repr(exc)
    return f"cannot write {what}: {reason}; relay runs on without logging until it can"


class _Sink:
    """What every log line goes through: a line that cannot be written is counted and
    dropped, never raised into the code that logged it."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.problem: str | None = None  # the current failure, said once
        self.lost = 0  # lines dropped since the last one that got through

    def failed(self, exc: BaseException, *, say: bool = True) -> None:
        self.lost += 1
        if self.problem is None:
            self.problem = _why(self.what, exc)
            if say:
                say_on_stderr(self.problem)

    def lost_line(self, json: bool) -> str:
        """The line that says how many were lost, once a line gets through again."""
        if json:
            return (
                jsonlib.dumps(
                    {
                        "lost_lines": self.lost,
                        "error": self.problem,
                        "event": "log lines lost",
                        "level": "warning",
                        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                )
                + "\n"
            )
        return f"[warning] log lines lost: {self.lost} ({self.problem})\n"

    def recovered(self) -> None:
        self.problem = None
        self.lost = 0


class RotatingFile:
    """A log file that rotates at ``max_bytes``, keeping ``backups`` old files (.1, .2, ...),
    for those without journald. Each line is one unbuffered append (``write(2)``), whole; a
    line that cannot be written is dropped (see the module's docstring)."""

    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.sink = _Sink(f"the log {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = _open_append(path)
        self._size = os.fstat(self._fd).st_size
        self._torn = False  # a line was cut short by a failed write: the next starts afresh

    def write(self, text: str) -> int:
        data = text.encode(errors="backslashreplace")
        if self.sink.lost:
            data = self.sink.lost_line(json=True).encode() + data
        if self._torn:
            data = b"\n" + data
        try:
            if self._fd is None:
                self._fd = _open_append(self.path)
                self._size = os.fstat(self._fd).st_size
            if self._size > 0 and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._append(data)
        except OSError as exc:
            self.sink.failed(exc)
        else:
            self.sink.recovered()
        return len(text)

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except OSError:
                self._torn = self._torn or len(view) < len(data)  # part of a line is out
                raise
            self._size += n
            view = view[n:]
        self._torn = False

    def flush(self) -> None:
        pass  # every line is written as it comes

    def isatty(self) -> bool:
        return False

    def _rotate(self) -> None:
        self.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._fd = _open_append(self.path)
        self._size = 0

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class _Blocked(OSError):
    """The log's reader has stopped reading: a line for it is dropped, not waited for."""


class _Behind:
    """Lines for a stream whose writes can block (a pipe, a socket, a terminal), written by a
    thread of their own: ``relay serve 2>&1 | less`` paused, or a `tee` into a stalled
    reader, stopped the whole daemon at its next line once the pipe was full, `relay stop`
    too (a review's finding). Past ``LIMIT`` lines waiting, a line is dropped and counted,
    as for a full disk."""

    LIMIT = 4096  # lines waiting: about a megabyte

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: queue.Queue[str | None] = queue.Queue(self.LIMIT)
        # why a write failed (a reader gone: EPIPE), for good: a stream's end does not mend
        self.broken: BaseException | None = None
        self.dropped = 0  # lines a write failed for otherwise (for now), and why the last
        self.why_dropped: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="relay-log", daemon=True)
        self._thread.start()

    def put(self, text: str) -> bool:
        try:
            self._lines.put_nowait(text)
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        while (text := self._lines.get()) is not None:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (BrokenPipeError, ConnectionResetError, ValueError) as exc:  # its end
                self.broken = self.broken or exc  # said by the next write (``_Guarded``)
            except OSError as exc:  # that line lost (EAGAIN, ENOSPC...), and said so
                self.dropped, self.why_dropped = self.dropped + 1, exc

    def drain(self, timeout_s: float) -> None:
        """What waits, written within ``timeout_s`` (a reader that reads again), then the
        thread ends."""
        with contextlib.suppress(queue.Full):
            self._lines.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)


def _may_block(stream: TextIO) -> bool:
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False  # a buffer of the process's own (a test's): never blocks
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


class _Guarded:
    """Any other stream (stderr, a test's buffer), with the same promise as RotatingFile."""

    def __init__(self, stream: TextIO, json: bool) -> None:
        self._stream = stream
        self._json = json
        self.sink = _Sink("the log (stderr)" if stream is sys.stderr else "the log")
        self.behind = _Behind(stream) if _may_block(stream) else None
        self._dropped = 0  # of the behind's, counted already

    def write(self, text: str) -> int:
        if self.behind is not None:
            if self.behind.broken is not None:  # a broken pipe: `relay status` says so
                self.sink.failed(self.behind.broken, say=False)
                return len(text)
            if (dropped := self.behind.dropped) > self._dropped:  # counted in the next line
                assert self.behind.why_dropped is not None
                for _ in range(dropped - self._dropped):
                    self.sink.failed(self.behind.why_dropped, say=False)
                self._dropped = dropped
            lost = self.sink.lost_line(self._json) if self.sink.lost else ""
            if self.behind.put(lost + text):
                self.sink.recovered()
            else:  # said in `relay status`, not on stderr: that is the stream that is full
                self.sink.failed(
                    _Blocked(errno.EAGAIN, "its reader is not reading (a pipe left unread?)"),
                    say=False,
                )
            return len(text)
        try:
            if self.sink.lost:
                self._stream.write(self.sink.lost_line(self._json))
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self.sink.failed(exc)
        else:
            self.sink.recovered()
        return len(text)

    def flush(self) -> None:
        if self.behind is not None:
            return  # the writer's thread flushes each line; the stream is that thread's alone
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


class _FromStdlib(logging.Handler):
    """asyncio's and asyncssh's records, as lines of relay's own log."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            facts: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                facts["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **facts)
        except Exception:  # noqa: S110 (a log line never takes relay down)
            pass


_sink: _Sink | None = None
_guarded: _Guarded | None = None
_from_stdlib = _FromStdlib(logging.WARNING)


def drain(timeout_s: float = 2.0) -> None:
    """At the end of ``relay serve``: the lines still waiting for a slow reader, written
    within ``timeout_s``."""
    if _guarded is not None and _guarded.behind is not None:
        _guarded.behind.drain(timeout_s)


atexit.register(drain)  # every way out of the process but os._exit (which calls it first)


def problem() -> str | None:
    """Why the log cannot be written right now, if it cannot."""
    return _sink.problem if _sink is not None else None


def configure(
    level: str = "info", *, stream: TextIO | RotatingFile | None = None, json: bool | None = None
) -> None:
    global _sink, _guarded  # logging is configured once per process, here
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    out = stream if isinstance(stream, RotatingFile) else _Guarded(stream, json)
    _sink, _guarded = out.sink, (out if isinstance(out, _Guarded) else None)
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
        logger_factory=structlog.WriteLoggerFactory(cast(TextIO, out)),  # one write a line
        cache_logger_on_first_use=False,
    )
    # asyncssh logs through the standard library; keep it quiet unless debugging.
    logging.getLogger("asyncssh").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    root = logging.getLogger()
    if _from_stdlib not in root.handlers:
        root.addHandler(_from_stdlib)


class RateLimited:
    """A warning that anyone can provoke (a stranger's connection, a wrong hook token):
    logged once per key per ``window_s``, the next line saying how many were not, so a flood
    cannot rotate real logs away. ``total`` counts them all. Past ``MAX_KEYS`` keys, a new
    one is counted under ``OTHERS``: the keys are the callers' (uids, a few kinds), but a
    caller that keys by something a stranger picks would make each a line, and an entry kept
    for good."""

    MAX_KEYS = 64
    OTHERS = "(others)"

    def __init__(self, log: Any, event: str, window_s: float = 60.0) -> None:
        self._log = log
        self._event = event
        self._window_s = window_s
        self._last: dict[object, tuple[float, int]] = {}  # key -> (logged at, not logged since)
        self.total = 0

    def warn(self, key: object, count: int = 1, **facts: object) -> None:
        """``count`` of them at once (a source that counted them itself, as relay's agent)."""
        self.total += count
        now = time.monotonic()
        if key not in self._last and len(self._last) >= self.MAX_KEYS:
            key = self.OTHERS
        logged_at, since = self._last.get(key, (float("-inf"), 0))
        if now - logged_at < self._window_s:
            self._last[key] = (logged_at, since + count)
            return
        self._last[key] = (now, 0)
        self._log.warning(self._event, not_logged_since_last=since + count - 1, **facts)
