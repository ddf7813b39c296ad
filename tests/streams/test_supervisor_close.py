"""Supervisor.wait_closed: close, then await, bounded, whatever the remote side does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import structlog

from relay.ssh import supervisor as sup
from relay.ssh.supervisor import Supervisor


class _Stream:
    """A session stream that yields nothing until closed."""

    def __init__(self, ended: asyncio.Event) -> None:
        self._ended = ended

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        await self._ended.wait()
        return
        yield ""  # pragma: no cover (makes this an async generator)


class _Process:
    """A supervisor session whose remote script ignores the end of its input; its channel
    closes only when closed from this side, and confirms that close a moment later."""

    def __init__(self, *, confirms: bool) -> None:
        self.ended = asyncio.Event()
        self.stdout = _Stream(self.ended)
        self.stderr = _Stream(self.ended)
        self.close_called = False
        self._confirms = confirms

    def close(self) -> None:
        self.close_called = True
        if self._confirms:
            asyncio.get_running_loop().call_later(0.05, self.ended.set)

    async def wait_closed(self) -> None:
        await self.ended.wait()


def supervisor(process: _Process) -> Supervisor:
    return Supervisor(cast(Any, process), "h", 1, structlog.get_logger("test"))


async def test_a_session_that_ignores_its_end_is_closed_and_its_close_awaited() -> None:
    process = _Process(confirms=True)
    s = supervisor(process)
    await asyncio.wait_for(s.wait_closed(timeout_s=0.01), 5)
    assert process.close_called and process.ended.is_set()
    assert s.closed.done()


async def test_a_close_never_confirmed_is_given_up_within_its_bound(
    monkeypatch: Any,
) -> None:
    """A dead connection confirms nothing until it is declared lost: the wait is bounded."""
    monkeypatch.setattr(sup, "CLOSE_CONFIRM_S", 0.01)
    process = _Process(confirms=False)
    s = supervisor(process)
    await asyncio.wait_for(s.wait_closed(timeout_s=0.01), 5)
    assert process.close_called and not process.ended.is_set()
    process.ended.set()  # let the readers end


async def test_the_supervisor_refuses_a_line_it_would_not_send() -> None:
    # checks that keep a line of the host's script whole raise, not assert: relay serve runs
    # with -OO (relay.lean), which leaves asserts out
    process = _Process(confirms=True)
    s = supervisor(process)
    with pytest.raises(ValueError, match="not a signal"):
        s.signal("k1", "TERM\nkill 1 KILL")
    with pytest.raises(ValueError, match="letters and digits"):
        await s.ping("k1-TERM")
    await asyncio.wait_for(s.wait_closed(timeout_s=0.01), 5)
