"""A stop's wait for the agent's answer to relay's goodbye (``HostSession.goodbye_heard``),
with a real AgentSession on a scripted channel: longer while the agent is still heard from
(its answer queued behind a kernel's output on a slow path), bounded, and short where it is
silent. The same through a real sshd: tests/e2e/test_resume.py (a stop just after the path
went silent).

The agent's frames arrive on loop timers at fixed deadlines, and the wait's timeouts are
loop timers too: the loop runs them in deadline order however late it runs, so what the wait
sees does not depend on the machine's load."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from relay.agent import mux
from relay.agent.session import AgentSession
from relay.clock import moment
from relay.settings import HostConfig
from relay.ssh import host as host_module
from relay.ssh.host import HostSession
from tests.streams.test_agent_session import _attach, _session

WINDOW_S = 1.0  # goodbye_heard's wait for an answer, and again while the agent is heard
EVERY_S = 0.25  # a frame from the agent (a kernel's output ahead of the answer)


async def _said_goodbye() -> tuple[HostSession, AgentSession, Any]:
    """A host whose attached agent relay has just told goodbye; its channel."""
    session = _session()
    channel = await _attach(session)
    host = HostSession("host", HostConfig(hostname="h"), tag="00", ssh_files=())
    host.agent = session
    host.goodbye(1.0)
    assert session.said_bye and not session.bye_heard.done()
    return host, session, channel


def _frames_then(channel: Any, until_s: float, bye: bool) -> list[asyncio.TimerHandle]:
    """The agent's frames every EVERY_S up to ``until_s`` (a stream relay no longer has: heard,
    and nothing else), then its BYE if ``bye``: each at a fixed deadline from now."""
    loop = asyncio.get_running_loop()
    heard = mux.ack(99, 0)
    timers = [
        loop.call_later(EVERY_S * (i + 1), channel.data_received, heard, None)
        for i in range(int(until_s / EVERY_S))
    ]
    if bye:
        timers.append(loop.call_later(until_s, channel.data_received, mux.encode(mux.BYE, 0), None))
    return timers


async def test_an_agent_still_heard_from_is_waited_for_past_the_first_window() -> None:
    """The answer comes after 2.5 windows, frames before it all the way: the stop waits for
    it, and the session is not ended as unanswered (its shims would be told the agent may
    not have heard, while it ended their kernels)."""
    host, session, channel = await _said_goodbye()
    loop = asyncio.get_running_loop()
    began = loop.time()
    _frames_then(channel, 2.5 * WINDOW_S, bye=True)
    await asyncio.wait_for(host.goodbye_heard(WINDOW_S), 30)
    assert session.bye_heard.done()
    assert loop.time() - began >= 2.5 * WINDOW_S  # waited on: it did not give up at one window
    assert not session.ended.done()
    assert host.unheard_goodbye() is None


async def test_a_silent_agent_is_waited_for_one_window_then_its_links_end() -> None:
    host, session, _ = await _said_goodbye()
    await asyncio.wait_for(host.goodbye_heard(WINDOW_S), 30)
    assert session.ended.done() and not session.bye_heard.done()
    line = host.unheard_goodbye()
    assert line is not None and "did not answer relay's goodbye" in line, line


async def test_an_agent_heard_from_that_never_answers_is_waited_for_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Frames keep coming and no answer: the wait ends at BYE_WAIT_MAX_S, not with them."""
    monkeypatch.setattr(host_module, "BYE_WAIT_MAX_S", 3 * WINDOW_S)
    host, session, channel = await _said_goodbye()
    timers = _frames_then(channel, 8 * WINDOW_S, bye=False)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        await asyncio.wait_for(host.goodbye_heard(WINDOW_S), 30)
    finally:
        for timer in timers:
            timer.cancel()
    waited_s = loop.time() - began
    assert 3 * WINDOW_S <= waited_s < 8 * WINDOW_S, waited_s
    assert session.ended.done() and not session.bye_heard.done()


async def test_a_connection_closed_during_the_wait_ends_it_and_says_it_may_not_have_heard() -> None:
    """The connection closes while the stop waits (a reset: the goodbye may have been lost
    on the way): the wait ends then, and what the shims are told is still that the agent did
    not answer, with what ends the kernels, not that relay ended them."""
    host, session, channel = await _said_goodbye()
    wait = asyncio.ensure_future(host.goodbye_heard(60.0))
    await asyncio.sleep(0)  # waiting
    channel.connection_lost(ConnectionResetError("reset by peer"))
    await asyncio.wait_for(wait, 30)  # at once: not the 60 s window
    assert session.ended.done() and not session.bye_heard.done()
    line = host.unheard_goodbye()
    assert line is not None and "did not answer relay's goodbye" in line, line
    assert "at once when relay next connects to host" in line, line


async def test_a_window_days_long_is_said_to_end_on_its_day() -> None:
    """A window of two days: the line names the day it ends on (the helper's report: a time
    of day alone read as the moment the connection went, as if the window were over)."""
    host, session, _ = await _said_goodbye()
    session.window_s = 2 * 86400
    await asyncio.wait_for(host.goodbye_heard(WINDOW_S), 30)
    line = host.unheard_goodbye()
    assert line is not None
    ends = line.split("when resume_window_s runs out (")[1].split(")")[0]
    assert ends[:3] in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"), line
    day = ends.rsplit(" ", 2)[0]  # two days on, whichever second the line was written in
    assert day in {moment(time.time() + 2 * 86400 + d).rsplit(" ", 2)[0] for d in (-60, 0)}
