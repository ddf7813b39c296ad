"""relay's log never takes relay down: a line that cannot be written is dropped, the failure
said once on stderr, the loss counted once lines get through again; the standard library's
records (asyncio's, asyncssh's) are lines of the same log."""

from __future__ import annotations

import errno
import io
import json
import logging
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
