"""A black-holed path (a dead Wi-Fi, a suspended laptop): when relay declares the connection
lost, what a launch made just after the freeze says and how long it takes, and what the log
says of signals that could not reach the host. Timings are measured from events (the proxy's
last byte to the client, the daemon's log line, the shim's exit), never from sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from datetime import datetime
from typing import Any

import pytest

from relay.sim.faultproxy import FaultProxy
from tests.conftest import RelayHome, start_daemon
from tests.e2e.helpers import controller


class TimedProxy(FaultProxy):
    """A fault proxy that notes when it last passed bytes to the client (wall clock): the
    client's keepalive timer restarts on every byte it receives."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.to_client: set[asyncio.StreamWriter] = set()
        self.last_to_client = 0.0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.to_client.add(writer)
        await super()._accept(reader, writer)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if self.blackholed:
                    continue
                dst.write(data)
                if dst in self.to_client:
                    self.last_to_client = time.time()
                await dst.drain()
            if not self.blackholed:
                dst.close()


def events(log: io.StringIO, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.getvalue().splitlines():
        with_event = json.loads(line)
        if with_event.get("event") == name:
            found.append(with_event)
    return found


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


@pytest.mark.today_path  # shims end with the connection there
async def test_loss_is_declared_after_interval_times_count(
    home: RelayHome, daemon_log: io.StringIO
) -> None:
    """README: a dead connection is noticed after keepalive_interval_s x keepalive_count_max
    of silence (asyncssh alone would wait one interval more)."""
    assert home.sshd is not None
    interval, count = 2.0, 2
    proxy = await TimedProxy(home.sshd.port).start()
    home.sshd.trust_port(proxy.port)
    home.add_host(
        "local", port=proxy.port, keepalive_interval_s=interval, keepalive_count_max=count
    )
    try:
        async with start_daemon(home) as running, controller(home) as fe:
            kl = await fe.link.accept(60)
            host = running.daemon.hosts["local"]
            conn = await host.connection()
            proxy.blackhole()
            status, _, err = await fe.result()  # it ends when the loss is declared
            assert status == 1 and "not responding to keepalive" in err, err
            await asyncio.wait_for(conn.wait_closed(), 30)  # the host session saw it first
            assert host.state == "disconnected"
            assert host.last_error is not None and "keepalive" in host.last_error
            (lost,) = events(daemon_log, "connection lost")
            silent_s = at(lost) - proxy.last_to_client
            assert interval * count - 0.25 <= silent_s <= interval * (count + 0.5), silent_s
            assert lost["silent_s"] == interval * count  # what the log says relay waited
            await kl.aclose()
    finally:
        await proxy.aclose()


@pytest.mark.today_path  # shims end with the connection there
async def test_a_launch_just_after_the_freeze_is_bounded_by_launch_timeout(
    home: RelayHome, daemon_log: io.StringIO
) -> None:
    """The connection is not yet declared lost (that takes 2 x 4 s here) when a launch comes:
    its answer comes within launch_timeout_s all the same, saying what it waited for; the
    signals it then sends its kernel could not reach the host, and the log says so."""
    assert home.sshd is not None
    launch_timeout_s = 3.0
    proxy = await TimedProxy(home.sshd.port).start()
    home.sshd.trust_port(proxy.port)
    home.add_host(
        "local",
        port=proxy.port,
        keepalive_interval_s=4.0,
        keepalive_count_max=2,
        launch_timeout_s=launch_timeout_s,
    )
    try:
        async with start_daemon(home) as running:
            async with controller(home) as fe:  # a first launch: the connection is up
                kl = await fe.link.accept(60)
                conn = await running.daemon.hosts["local"].connection()
                proxy.blackhole()
                started = time.monotonic()
                async with controller(home) as fe2:
                    status, _, err = await fe2.result()
                    took_s = time.monotonic() - started
                    fe2.link.close()
                assert status == 1, err
                assert took_s <= launch_timeout_s + 1.5, (took_s, err)
                assert "within 3 s (launch_timeout_s)" in err, err
                assert "did not confirm" in err or "lost" in err, err
                await fe.result()
                await kl.aclose()
            await asyncio.wait_for(conn.wait_closed(), 30)  # the host session saw it first
            assert running.daemon.hosts["local"].state != "connected"
        ignored = events(daemon_log, "kernel ignored signal")
        assert not ignored, ignored
        unsent = events(daemon_log, "could not signal the kernel")
        assert unsent and "local" in unsent[0]["reason"], daemon_log.getvalue()[-3000:]
    finally:
        await proxy.aclose()
