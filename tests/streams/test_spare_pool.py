"""The spare pool's scheduling against an SSH server whose forward replies the test holds.

asyncssh's own server, because OpenSSH's cannot be told to hold a ``tcpip-forward`` reply
until the test says so; the pool's listeners through a real sshd are covered by the e2e tier
(test_launch, test_parallel)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import pytest

from relay.ssh.forwards import SparePool


class HeldForwards(asyncssh.SSHServer):
    """Answers every remote-forward request, the first ``early`` once ``first`` is set and
    the rest once ``later`` is set (asyncssh answers global requests in order)."""

    def __init__(self, early: int, first: asyncio.Event, later: asyncio.Event) -> None:
        self.early, self.first, self.later = early, first, later
        self.requests = 0
        self.closing = False  # requests still held when the test ends are refused
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: loopback, this test's own server

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        self.requests += 1
        gate = self.first if self.requests <= self.early else self.later

        async def answer() -> bool:
            await gate.wait()
            # a listener made after the connection's clean-up would never be closed
            return not self.closing

        return answer()


@pytest.fixture
async def held() -> AsyncIterator[tuple[HeldForwards, asyncssh.SSHClientConnection]]:
    first, later = asyncio.Event(), asyncio.Event()
    server = HeldForwards(2, first, later)
    key = asyncssh.generate_private_key("ssh-ed25519")
    acceptor = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[key], server_factory=lambda: server
    )
    port = acceptor.sockets[0].getsockname()[1]
    conn = await asyncssh.connect("127.0.0.1", port, known_hosts=None, username="t")
    try:
        yield server, conn
    finally:
        server.closing = True
        first.set()
        later.set()
        conn.close()
        await conn.wait_closed()
        if server.conn is not None:  # and its listeners, closed with it
            server.conn.close()
            await server.conn.wait_closed()
        acceptor.close()
        await acceptor.wait_closed()


class Pool:
    """A SparePool of two on the held server's connection, counting the listeners it asks
    for (``asked`` is set once ``want`` of them have been asked)."""

    def __init__(self, server: HeldForwards, conn: asyncssh.SSHClientConnection) -> None:
        self.server = server
        self.calls = 0
        self.want = 0
        self.asked = asyncio.Event()
        create_server = conn.create_server

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.want and self.calls >= self.want:
                self.asked.set()
            return create_server(*args, **kwargs)

        conn.create_server = counting  # type: ignore[method-assign]
        self.pool = SparePool(conn, size=2, host="h")


@pytest.fixture
async def pool(held: tuple[HeldForwards, asyncssh.SSHClientConnection]) -> AsyncIterator[Pool]:
    p = Pool(*held)
    try:
        yield p
    finally:
        await p.pool.aclose()


async def test_a_short_pool_hands_out_listeners_already_on_their_way(pool: Pool) -> None:
    """A launch that finds the pool empty while its refill is in flight takes the refill's
    listeners: asking for its own would cost the round trip again (the Parallel package's
    Runs come one after another, each behind the last). Its own requests would be the third
    and fourth, which this server holds for ever: the take would not finish."""
    pool.pool.refill()  # requests 1 and 2, held until `first`
    assert pool.pool.coming == 2
    taking = asyncio.ensure_future(pool.pool.take(2))
    pool.server.first.set()
    slots = await asyncio.wait_for(taking, 30)
    assert len(slots) == 2 and all(slot.listener is not None for slot in slots)
    assert pool.pool.coming == 2  # and the pool refills behind it (requests 3 and 4)
    for slot in slots:
        slot.close()


async def test_what_nothing_in_flight_brings_is_asked_for_at_once(pool: Pool) -> None:
    """Three listeners needed, two on their way: waiting for them would still leave one to
    ask for, a second round trip. So the launch asks for its three at once, while the
    refill's two are still unanswered."""
    pool.pool.refill()
    pool.want = 2 + 3  # the refill's two and the launch's own three
    taking = asyncio.ensure_future(pool.pool.take(3))
    await asyncio.wait_for(pool.asked.wait(), 30)  # with nothing answered yet
    pool.server.first.set()
    pool.server.later.set()
    slots = await asyncio.wait_for(taking, 30)
    assert len(slots) == 3
    for slot in slots:
        slot.close()


async def test_closing_the_pool_cancels_fills_in_flight(pool: Pool) -> None:
    pool.pool.refill()
    fills = list(pool.pool._fills)
    await asyncio.wait_for(pool.pool.aclose(), 30)
    assert all(fill.done() for fill in fills) and pool.pool.coming == 0 and len(pool.pool) == 0
