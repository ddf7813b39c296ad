"""A host's agent met again on a connection that lived on (``HostSession._reattach``), and a
connection's setup whose caller went as it finished (``HostSession.live``); without sshd:
the parts around them are stand-ins."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from relay import wake
from relay.agent.session import AgentGone
from relay.settings import HostConfig
from relay.ssh.host import HostSession


class _Agent:
    """An agent whose socket is gone when relay asks for it again."""

    window_s = 3.0
    end_reason: str | None = None
    heard_clock = 0.0

    async def attach(self, conn: Any) -> None:
        raise AgentGone("h: relay's agent is not there any more (open failed)")

    def end(self, why: str) -> None:
        self.end_reason = why


class _Current:
    class connection:
        @staticmethod
        def is_closed() -> bool:
            return False


def _host() -> HostSession:
    return HostSession("h", HostConfig(hostname="h"), tag="00", ssh_files=())


@pytest.mark.parametrize("tick", ["before", "after"])
async def test_an_agent_gone_after_a_sleep_past_its_window_is_said_so(tick: str) -> None:
    """The machine slept an hour with its network up: the connection lived and the agent,
    hearing nothing for its window, ended its kernels. That was said as an agent an OOM
    killer took. After a suspend the wake's tick comes up to TICK_S after other work (the
    loop's timers stand still in a suspend), so the agent's absence is usually found first
    (a review's finding): the time since the last tick says the same as the wake would."""
    host = _host()
    agent: Any = _Agent()
    if tick == "before":  # relay stopped (SIGSTOP): the overdue tick ran first
        host.woke(3600.0, ())
    else:  # a suspend: the tick has not run since well before it
        host.ticked_at = wake.steady() - 3600
    await host._reattach(agent, _Current())  # type: ignore[arg-type]
    assert agent.end_reason is not None
    assert re.match(r"this machine slept, or relay was stopped, for 3\d{3} s", agent.end_reason)
    assert "past h's resume_window_s (3 s)" in agent.end_reason


async def test_an_agent_gone_with_no_sleep_is_said_killed() -> None:
    host = _host()
    agent: Any = _Agent()
    await host._reattach(agent, _Current())  # type: ignore[arg-type]
    assert "ended without being told (killed" in str(agent.end_reason)


class _Live:
    made: list[_Live] = []
    usable = True

    def __init__(self, conn: Any) -> None:
        self.connection = conn
        self.closed = False
        self.supervisor = type("S", (), {"closed": asyncio.get_running_loop().create_future()})()
        _Live.made.append(self)

    async def aclose(self, end_agent: bool = True) -> None:
        self.closed = True


async def test_a_setup_that_finishes_as_its_caller_goes_is_kept_not_made_twice() -> None:
    """``live`` runs the setup in a task of its own (its log is the host's, not the
    launch's); the caller cancelled (a request's timeout) in the turn the setup finished
    dropped what it made (a supervisor, an agent's channel), never closed, and the next
    caller made a second one on the same connection (a review's finding)."""
    host = _host()
    conn: Any = type("C", (), {"is_closed": staticmethod(lambda: False)})()
    _Live.made.clear()

    async def connection() -> Any:
        return conn

    outer: asyncio.Task[Any] | None = None

    async def open_live(c: Any) -> _Live:
        await asyncio.sleep(0)
        assert outer is not None
        asyncio.get_running_loop().call_soon(outer.cancel)  # due as the setup completes
        return _Live(c)

    host.connection = connection  # type: ignore[method-assign]
    host._open_live = open_live  # type: ignore[method-assign,assignment]
    outer = asyncio.ensure_future(host.live())
    with pytest.raises(asyncio.CancelledError):
        await outer
    first: Any = _Live.made[0]
    assert host._current is first
    assert await host.live() is first
    assert len(_Live.made) == 1
