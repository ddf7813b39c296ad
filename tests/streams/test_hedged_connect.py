"""relay.ssh.connector.Connector._hedged, the racing of connect attempts while resuming
(tests/e2e/test_resume.py has it through a real sshd behind a path that swallows an attempt).
Here each attempt's outcome is scripted: which wins, what is closed, when it gives up."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from relay.errors import ConnectFailed
from relay.settings import HostConfig
from relay.ssh.connector import HEDGED_AT_ONCE, ConnectionStatus, Connector

HEDGE_S = 0.005


class _Conn:
    def __init__(self, n: int) -> None:
        self.n, self.closed = n, False

    def close(self) -> None:
        self.closed = True


class _Scripted(Connector):
    """Attempt i does what ``script[i]`` says: "hang" (until cancelled), "fail", "ok",
    "late": it hangs, and connects even as it is cancelled (the race _hedged must close), or
    "gate": it connects when ``gate`` is set (all of them in the same turn)."""

    def __init__(self, script: list[str]) -> None:
        super().__init__(
            "h", HostConfig(hostname="h"), status=ConnectionStatus(), agent=lambda: None
        )
        self.script = script
        self.conns: list[_Conn] = []
        self.cancelled = 0
        self.addresses: list[str | None] = []  # each attempt's same_address
        self.gate = asyncio.Event()

    async def connect_once(
        self, deadline: float, ask: Any = None, same_address: str | None = None
    ) -> Any:
        n = len(self.conns)
        self.conns.append(_Conn(n))
        self.addresses.append(same_address)
        what = self.script[n]
        if what == "fail":
            raise ConnectFailed(f"attempt {n} refused")
        if what == "gate":
            await self.gate.wait()
        if what in ("hang", "late"):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                if what == "hang":
                    raise
        return self.conns[n], None

    async def hedged(self, same_address: str | None = None) -> Any:
        return await self._hedged(time.monotonic() + 60, HEDGE_S, same_address)


async def _idle(hedges: int) -> None:
    """Let at least ``hedges`` hedge intervals pass (longer under load: never shorter)."""
    for _ in range(hedges):
        await asyncio.sleep(HEDGE_S)


def test_an_attempt_that_hangs_is_joined_and_the_first_to_connect_wins() -> None:
    c = _Scripted(["hang", "hang", "ok"])
    conn, _ = asyncio.run(c.hedged("192.0.2.7"))
    assert conn.n == 2 and not conn.closed
    assert c.cancelled == 2  # the stuck ones, cancelled
    assert c.addresses == ["192.0.2.7"] * 3  # every attempt to the agent's machine


def test_no_more_than_hedged_at_once_are_in_flight() -> None:
    async def main() -> _Scripted:
        c = _Scripted(["hang"] * (HEDGED_AT_ONCE + 1))
        task = asyncio.ensure_future(c.hedged())
        await _idle(4 * (HEDGED_AT_ONCE + 1))
        assert len(c.conns) == HEDGED_AT_ONCE and not task.done()  # ConnectTimeout ends them
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return c

    c = asyncio.run(main())
    assert c.cancelled == HEDGED_AT_ONCE  # nothing left behind


def _failure(script: list[str]) -> tuple[_Scripted, BaseException | None]:
    async def main() -> tuple[_Scripted, BaseException | None]:
        c = _Scripted(script)
        try:
            await c.hedged()
        except ConnectFailed as exc:
            return c, exc
        return c, None

    return asyncio.run(main())


def test_a_failure_is_raised_at_once_for_the_caller_to_back_off() -> None:
    """Refused at once: no other attempt here (the caller backs off: no busy loop)."""
    c, failed = _failure(["fail", "ok"])
    assert isinstance(failed, ConnectFailed) and "attempt 0" in failed.message
    assert len(c.conns) == 1


def test_a_failure_beside_a_stuck_attempt_ends_both() -> None:
    """The path is back but refuses (sshd restarting): the stuck attempt is given up and
    closed when it connects as it is cancelled; the caller backs off and tries afresh."""
    c, failed = _failure(["late", "fail", "ok"])
    assert isinstance(failed, ConnectFailed) and "attempt 1" in failed.message
    assert len(c.conns) == 2 and c.conns[0].closed


def test_one_that_connects_as_it_is_cancelled_is_closed() -> None:
    c = _Scripted(["late", "ok"])
    conn, _ = asyncio.run(c.hedged())
    assert conn.n == 1 and not conn.closed
    assert c.conns[0].closed  # connected as the winner's cleanup cancelled it: not kept


def test_attempts_that_connect_in_the_same_turn_keep_one_and_close_the_other() -> None:
    """The path comes back and both stalled attempts finish together: one is the host's
    connection, the other is closed (it was kept open, a second login nobody used)."""

    async def main() -> tuple[_Scripted, Any]:
        c = _Scripted(["gate"] * HEDGED_AT_ONCE)
        task = asyncio.ensure_future(c.hedged())
        for _ in range(1000):  # bounded: the second joins after a hedge interval
            if len(c.conns) >= 2:
                break
            await asyncio.sleep(HEDGE_S)
        c.gate.set()
        return c, await task

    c, (conn, _) = asyncio.run(main())
    assert not conn.closed
    losers = [k for k in c.conns if k is not conn]
    assert losers and all(k.closed for k in losers)


async def _silent_port_said(setting_s: float, deadline_in_s: float) -> str:
    """One real attempt (``connect_once``) at a port that accepts TCP and never says a word,
    with ``deadline_in_s`` left of its round: the line it fails with."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = HostConfig(hostname="127.0.0.1", port=port, connect_timeout_s=setting_s)
    connector = Connector("h", cfg, status=ConnectionStatus(), ssh_files=(), agent=lambda: None)
    try:
        await connector.connect_once(time.monotonic() + deadline_in_s)
    except ConnectFailed as exc:
        return exc.message
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    raise AssertionError("a port that never speaks SSH was connected to")


def test_a_lone_attempts_bound_is_the_setting_and_a_shorter_one_is_said_cut_short() -> None:
    """A lone attempt (a resume's to the agent's machine, ``relay login``) is given a deadline
    of now plus the setting, a few microseconds short of it by the time it starts: its bound
    is still the setting, named as such. One that had less (what a round of attempts had
    left of launch_timeout_s) is not called the setting."""
    whole = asyncio.run(_silent_port_said(0.4, 0.4))
    assert "sent no SSH banner in " in whole, whole
    assert "(ConnectTimeout, or connect_timeout_s in relay.toml: 0.4 s)" in whole, whole
    short = asyncio.run(_silent_port_said(0.4, 0.2))
    assert "(what was left of launch_timeout_s: 0.2 s)" in short, short
