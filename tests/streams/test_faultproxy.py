"""relay.sim.faultproxy, the tests' own rude network path: what it leaves behind when a
connection is cut short while it connects upstream (the e2e tests use it through sshd)."""

from __future__ import annotations

import asyncio
import socket
import types
from typing import Any

import pytest

from relay.sim import faultproxy, nsbridge
from relay.sim.faultproxy import FaultProxy


async def test_a_connection_closed_with_the_proxy_while_it_connects_upstream_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The proxy closed (a test's end) while an accepted connection still waits for its
    upstream: that connection was left open, its task never ended, and Python 3.11's
    start_server does not close it for a cancellation; the cyclic GC then freed its socket
    during a later, unrelated test, whose ResourceWarning failed it (the CI saw one). The
    client now sees its connection end, and nothing is left to the GC."""
    entered = asyncio.Event()

    async def upstream_never_answers(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio, "open_connection", upstream_never_answers)
    proxy = await FaultProxy(9).start()  # the target is never reached: connecting hangs
    loop = asyncio.get_running_loop()
    with socket.socket() as client:
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", proxy.port))
        await asyncio.wait_for(entered.wait(), 30)
        await proxy.aclose()
        try:
            said = await asyncio.wait_for(loop.sock_recv(client, 1), 30)
        except ConnectionResetError:
            said = b""
        assert said == b""


class _Inline:
    """A thread that runs its work at ``start``, in the loop's thread: what it hands to the
    loop (``call_soon_threadsafe``) is queued in an order the test knows."""

    def __init__(self, target: Any, name: str, daemon: bool) -> None:
        self.target = target

    def start(self) -> None:
        self.target()


async def test_a_connection_made_upstream_as_its_wait_is_cancelled_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``_connect_in`` (an upstream in another network namespace): its thread connected and
    handed the socket over, and the wait was cancelled before it took it (the proxy closed
    at that moment). The socket stayed in the wait's future, open, until the cyclic GC."""
    monkeypatch.setattr(nsbridge, "enter", lambda pid: None)  # this namespace
    monkeypatch.setattr(faultproxy, "threading", types.SimpleNamespace(Thread=_Inline))
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        waiting = asyncio.ensure_future(faultproxy._connect_in(1, ("127.0.0.1", port)))
        await asyncio.sleep(0)  # it connects, queues the hand-over, and waits
        await asyncio.sleep(0)  # the hand-over: its wait's wake-up is queued behind us
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            assert conn.recv(1) == b""  # closed, not left to the GC
