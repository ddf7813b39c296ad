"""A shutdown, as the people it interrupts see it: every controller shim says in one line why
its kernel ended (``relay stop``, ``relay restart``, a signal), the daemon's log names what
happened, and conversations still open are told and closed, without a traceback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal

import pytest

from tests.conftest import KernelGate, RelayHome, start_daemon
from tests.e2e.helpers import controller, relay_cli, wait_gone


def log_events(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def daemon_pid(home: RelayHome) -> int:
    status, out, err = await relay_cli(home, "status", "--json")
    assert status == 0, err
    return int(json.loads(out)["daemon"]["pid"])


@pytest.mark.parametrize(
    ("how", "said", "reason"),
    [
        ("stop", "the daemon was stopped (relay stop)", "relay stop"),
        ("restart", "the daemon was restarted (relay restart)", "relay restart"),
        ("SIGTERM", "the daemon was shut down (SIGTERM)", "SIGTERM"),
    ],
)
async def test_a_controller_shim_says_why_its_kernel_ended(
    home: RelayHome, how: str, said: str, reason: str
) -> None:
    home.write()
    try:
        status, _, err = await relay_cli(home, "restart")  # a daemon as the first launch starts it
        assert status == 0, err
        pid = await daemon_pid(home)
        async with controller(home) as fe:
            kernel = await fe.link.accept(60)
            # the shim has its answer (it prints the rewritten name): a shutdown before that
            # is one "during this launch", which another test covers
            assert fe.proc.stdout is not None
            assert "@127.0.0.1," in (await asyncio.wait_for(fe.proc.stdout.readline(), 60)).decode()
            if how == "SIGTERM":
                os.kill(pid, signal.SIGTERM)
            else:
                status, _, err = await relay_cli(home, how)
                assert status == 0, err
            await wait_gone(pid)
            status, _, err = await fe.result()
            await kernel.aclose()
        assert status == 128 + signal.SIGTERM, err  # the kernel's own status, as before
        assert err.splitlines() == [f"relay: {said}; the kernel on local was ended"], err
    finally:
        await relay_cli(home, "stop")
    events = log_events((home.socket.parent / "relay.log").read_text())
    shutdowns = [e for e in events if e["event"] == "shutting down"]
    assert [e.get("reason") for e in shutdowns] == [reason, "relay stop"][: len(shutdowns)]
    assert shutdowns and shutdowns[0]["reason"] == reason
    # ended by relay: not a kernel's failure (relay.kernels.ended_line is for the others)
    assert [e for e in events if e["event"] == "kernel ended"] == []


async def test_a_shutdown_tells_open_conversations_and_logs_no_traceback(
    home: RelayHome, daemon_log: io.StringIO
) -> None:
    """A `relay connect` waiting on a host that never answers and a controller launch whose
    kernel has not started yet, when the daemon shuts down: each client gets one line saying
    so, and the log has no traceback (asyncio's report of a cancelled conversation was one)."""
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # an SSH server that never says a word
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    home.add_host("silent", port=port, connect_timeout_s=120)
    try:
        async with KernelGate(home.dir / "gate") as gate:
            home.add_host("local", controller_args=["-simgate", str(gate.path)])
            async with start_daemon(home) as running, controller(home) as fe:
                connecting = asyncio.ensure_future(relay_cli(home, "connect", "silent"))
                await asyncio.wait_for(accepted.wait(), 60)
                await asyncio.wait_for(gate.arrived.wait(), 60)  # the launch is in flight
                running.stop.set_result(None)
                await asyncio.wait_for(running.task, 60)
                status, _, err = await asyncio.wait_for(connecting, 60)
                assert status == 1, err
                assert err.splitlines() == [
                    "relay: relay shut down before it could answer; run the command again"
                ], err
                status, _, err = await fe.result()
                assert status == 1
                assert err.splitlines() == [
                    "relay: relay shut down during this launch; launch again"
                ], err
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    events = log_events(daemon_log.getvalue())
    assert [e for e in events if e["event"] == "stopped"], "the daemon stopped"
    bad = [e for e in events if e["level"] in ("error", "critical") or "exception" in e]
    assert not bad, bad


async def test_a_launch_answered_as_the_shutdown_begins_ends_its_kernel(
    home: RelayHome, daemon_log: io.StringIO
) -> None:
    """A controller launch whose kernel calls back just after the shutdown began (and
    counted the kernels it ends): that kernel is ended too, and its shim told in one line.
    It was answered "launched", left out of the shutdown, which then waited out its grace."""
    async with KernelGate(home.dir / "gate") as gate:
        home.add_host("local", controller_args=["-simgate", str(gate.path)])
        async with start_daemon(home) as running, controller(home) as fe:
            await asyncio.wait_for(gate.arrived.wait(), 60)  # the launch is in flight
            running.daemon.stopping = True  # the shutdown has begun: its kernels counted
            gate.open()
            status, out, err = await fe.result()
            assert status == 1 and out == "", (out, err)
            assert err.splitlines() == [
                "relay: relay is shutting down and takes no new launches; retry once it has "
                "stopped (it restarts on the next launch)"
            ], err
            assert not running.daemon.kernels  # ended and released, with the launch
    events = log_events(daemon_log.getvalue())
    assert [e for e in events if e["event"] == "kernel exited"], events
    assert not [e for e in events if "grace exceeded" in str(e["event"])], events
