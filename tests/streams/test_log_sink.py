"""relay's log never takes relay down: a line that cannot be written is dropped, the failure
said once on stderr, the loss counted once lines get through again; the standard library's
records (asyncio's, asyncssh's) are lines of the same log."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from relay import log


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    log.configure("debug", json=True)


class Flaky(io.StringIO):
    """A stream on a disk that fills up and then has room again."""

    full = False

    def write(self, text: str) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(text)


def test_a_log_file_on_a_full_device_is_said_once_and_never_raises(
    capfd: pytest.CaptureFixture[str],
) -> None:
    f = log.RotatingFile(Path("/dev/full"))
    try:
        for i in range(3):
            f.write(f'{{"event": "line {i}"}}\n')
    finally:
        f.close()
    said = capfd.readouterr().err.splitlines()
    assert said == [
        "relay: cannot write the log /dev/full: no space left on its file system; relay runs on "
        "without logging, and the log resumes once there is room"
    ]
    assert f.sink.lost == 3


def test_a_stream_that_fills_up_then_has_room_counts_what_was_lost(
    capfd: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    stream = Flaky()
    log.configure("info", stream=stream, json=True)
    logger = structlog.get_logger("test")
    logger.info("before")
    stream.full = True
    logger.info("lost one")
    logger.info("lost two")
    problem = log.problem()
    assert problem is not None and "no space left" in problem
    stream.full = False
    logger.info("after")
    assert log.problem() is None
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["before", "log lines lost", "after"]
    assert events[1]["lost_lines"] == 2
    assert len(capfd.readouterr().err.splitlines()) == 1


def test_the_standard_librarys_records_are_lines_of_relays_log(restore_logging: None) -> None:
    stream = io.StringIO()
    log.configure("info", stream=stream, json=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("asyncio").error("Exception in callback", exc_info=True)
    logging.getLogger("asyncio").info("not at info")  # the standard library's own threshold
    (event,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert event["event"] == "Exception in callback" and event["logger"] == "asyncio"
    assert event["level"] == "error" and "RuntimeError: boom" in event["exception"]


def test_a_pipe_nobody_reads_never_stops_the_daemon(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`relay serve 2>&1 | less`, paused: the daemon's next line waited on the full pipe, and
    with it every request, `relay stop` too (a review's finding). Lines wait for the reader
    in a thread of their own; past the bound they are dropped and counted, and said in
    `relay status` (not on stderr, the stream that is full)."""
    monkeypatch.setattr(log._Behind, "LIMIT", 8)
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w")
    log.configure("info", stream=stream, json=True)
    logger = structlog.get_logger("test")
    written = 0
    while log.problem() is None:  # the pipe (64 KiB) full, then the 8 lines behind it
        logger.info("line", n=written, pad="x" * 1000)
        written += 1
        assert written < 10_000, "the writer never found the reader gone"
    assert log.problem() == (
        "cannot write the log: its reader is not reading (a pipe left unread?); relay runs "
        "on without logging until it can"
    )
    got: list[str] = []

    def read() -> None:
        with os.fdopen(read_fd) as pipe:
            got.extend(pipe.readlines())

    reader = threading.Thread(target=read)
    reader.start()  # the reader reads again
    deadline = time.monotonic() + 30
    while log.problem() is not None:  # the next line that gets in says what was lost
        logger.info("after")
        assert time.monotonic() < deadline
    log.drain(30)
    stream.close()
    reader.join(30)
    events = [json.loads(line) for line in got]
    kept = [e["n"] for e in events if e["event"] == "line"]
    assert kept == list(range(len(kept))) and 0 < len(kept) < written  # in order, none twice
    lost = [e for e in events if e["event"] == "log lines lost"]
    assert len(lost) == 1 and lost[0]["lost_lines"] >= written - len(kept)
    assert events[-1]["event"] == "after"


def test_what_waits_for_a_reader_is_written_before_the_process_ends() -> None:
    """Lines wait in a queue for a stream that may block: a process that ends (``atexit``:
    every way out of ``relay serve``) or exits at once (``drain`` first: the daemon's second
    signal) writes them first; a review found the last line before ``os._exit`` lost 20
    times in 20."""
    program = (
        "import os, sys, structlog; from relay import log; "
        "log.configure('info', json=True); "
        "structlog.get_logger('t').warning('the last line', how=sys.argv[1]); "
        "log.drain(5) if sys.argv[1] == 'exit' else None; "
        "os._exit(0) if sys.argv[1] == 'exit' else None"
    )
    for how in ("exit", "end") * 5:
        done = subprocess.run(
            [sys.executable, "-c", program, how], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and '"the last line"' in done.stderr, (how, done)


def test_a_pipe_whose_reader_is_gone_is_said_in_relay_status(restore_logging: None) -> None:
    """`relay serve 2>&1 | head`: the reader gone, each line is lost (EPIPE), and `relay
    status` says so (the thread that writes them had kept it to itself: a review's)."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    stream = os.fdopen(write_fd, "w")
    log.configure("info", stream=stream, json=True)
    logger = structlog.get_logger("test")
    logger.info("into a pipe nobody reads")
    log.drain(30)  # the thread has tried it
    logger.info("the next")
    assert log.problem() == (
        "cannot write the log: Broken pipe; relay runs on without logging until it can"
    )
    with contextlib.suppress(BrokenPipeError):  # what the failed write left in its buffer
        stream.close()


def test_a_line_a_write_fails_for_is_lost_alone(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails for now (EAGAIN on a stderr another process made non-blocking, a
    full disk) loses its line, counted in the next; the lines after it are written (one such
    error stopped the log for good: a review's)."""
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w")
    real_write, failures = stream.write, [1]

    def write(text: str) -> int:
        if failures and "first" in text:
            failures.pop()
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_write(text)

    monkeypatch.setattr(stream, "write", write)
    log.configure("info", stream=stream, json=True)
    logger = structlog.get_logger("test")
    logger.info("first")
    deadline = time.monotonic() + 30
    while failures:  # the writer's thread has tried it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    logger.info("then")
    log.drain(30)
    stream.close()
    with os.fdopen(read_fd) as pipe:
        events = [json.loads(line) for line in pipe]
    assert [e["event"] for e in events] == ["log lines lost", "then"], events
    assert events[0]["lost_lines"] == 1
