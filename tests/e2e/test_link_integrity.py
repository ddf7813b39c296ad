"""A link is a faithful pipe: every byte exactly once, in order, both ways, on both channels,
whoever speaks first and whenever, through a real sshd, on uvloop and on stdlib asyncio.

The kernel is ``linkprobe.py`` (launched by relay like any kernel, through ``relay launch``);
the front end is ``_FrontEndChannel`` below, which can write inside ``connection_made``, the
instant it accepts, before relay's SSH channel for that connection is even open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from tests.conftest import RelayHome, RunningDaemon, run_shim, start_daemon
from tests.e2e.helpers import controller
from tests.e2e.test_faults import drain, serve_subprocess
from tests.e2e.test_resume import behind_proxy, resume_state, until

pytestmark = pytest.mark.both_loops

PROBE = Path(__file__).with_name("linkprobe.py")
MiB = 1 << 20
BOUND_S = 120.0


def expected(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class _FrontEndChannel(asyncio.Protocol):
    """One channel of a listening link, as rude as a front end may be."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.out = expected(plan["frontend_seed"], plan["frontend_size"])
        self.want = expected(plan["kernel_seed"], plan["kernel_size"])
        self.received = 0
        self.prefix_ok = True
        self.eof = False
        self.sent = False
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.accepted: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.accepted.done():
            self.accepted.set_result(None)
        if self.plan["frontend_start"] == "now":
            self._send()  # the instant it accepts (docs/topology.md §1)

    def _send(self) -> None:
        if self.sent or self.transport is None:
            return
        self.sent = True
        plan, t = self.plan, self.transport
        limit = len(self.out) // 2 if plan["frontend_end"] == "abort" else len(self.out)
        chunk = plan["frontend_chunk"]
        for i in range(0, limit, chunk):
            t.write(self.out[i : min(i + chunk, limit)])
        if plan["frontend_end"] == "half_close":
            t.write_eof()
            if self.eof:
                t.close()
        elif plan["frontend_end"] == "close":
            t.close()  # flushes what was written, then closes
        else:
            t.abort()  # cut in mid-transfer

    def data_received(self, data: bytes) -> None:
        if self.want[self.received : self.received + len(data)] != data:
            self.prefix_ok = False
        self.received += len(data)
        if self.plan["frontend_start"] == "after_peer":
            self._send()

    def eof_received(self) -> bool:
        self.eof = True
        if self.plan["frontend_start"] == "after_peer":
            self._send()
        if self.sent and self.transport is not None:
            self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass
class Outcome:
    frontend: dict[str, _FrontEndChannel]
    kernel: dict[str, dict[str, Any]]


def _same(side: _FrontEndChannel) -> _FrontEndChannel:
    """A protocol factory that gives the one channel it was made for."""
    return side


async def _wrapper(directory: Path, schedule: dict[str, Any]) -> str:
    """The kernel path for this schedule: a script that runs the probe with it."""
    path = directory / f"probe-{random.getrandbits(48):x}.sh"
    path.write_text(f"#!/bin/sh\nexec {sys.executable} {PROBE} '{json.dumps(schedule)}' \"$@\"\n")
    path.chmod(0o755)
    return str(path)


async def run_schedule(
    daemon: RunningDaemon, schedule: dict[str, Any], carried: asyncio.Event | None = None
) -> Outcome:
    """Create a listening link, launch the probe through ``relay launch``, carry it out;
    ``carried`` is set once relay has carried both of the kernel's connections."""
    loop = asyncio.get_running_loop()
    report_path = daemon.home.dir / f"report-{random.getrandbits(32):x}.sock"
    reports: asyncio.Future[dict[str, dict[str, Any]]] = loop.create_future()

    async def on_report(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if not reports.done():
            reports.set_result(json.loads(line))
        writer.close()

    report_server = await asyncio.start_unix_server(on_report, path=str(report_path))
    sides = {role: _FrontEndChannel(schedule[role]) for role in ("data", "message")}

    async def on_gate(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The probe holds its connections until relay has carried both (linkprobe.py)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BOUND_S):
                await asyncio.gather(*(side.accepted for side in sides.values()))
                if carried is not None:
                    carried.set()
        writer.close()

    gate_path = daemon.home.dir / f"admitted-{random.getrandbits(32):x}.sock"
    gate_server = await asyncio.start_unix_server(on_gate, path=str(gate_path))
    servers = [
        await loop.create_server(functools.partial(_same, sides[role]), "127.0.0.1", 0)
        for role in ("data", "message")
    ]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    name = f"{ports[0]}@127.0.0.1,{ports[1]}@127.0.0.1"
    try:
        probe_schedule = {**schedule, "report": str(report_path), "admitted": str(gate_path)}
        kernel = await _wrapper(daemon.home.dir, probe_schedule)
        async with asyncio.timeout(BOUND_S):
            result = await run_shim(daemon.home, "--compute", "local", kernel, name)
            assert result.status == 0, result.stderr
            for side in sides.values():
                await side.done
            kernel_report = await reports
    finally:
        for server in (*servers, report_server, gate_server):
            server.close()
    return Outcome(sides, kernel_report)


def check(outcome: Outcome, schedule: dict[str, Any]) -> None:
    for role in ("data", "message"):
        plan, fe, k = schedule[role], outcome.frontend[role], outcome.kernel[role]
        where = f"{role} channel, plan {plan}"
        assert fe.prefix_ok, f"front end got bytes the kernel never sent ({where})"
        assert k["prefix_ok"], f"kernel got bytes the front end never sent ({where})"
        assert k["error"] is None, f"{k['error']} ({where})"
        if "abort" in (plan["frontend_end"], plan["kernel_end"]):
            continue  # cut in mid-transfer: what arrived is in order, nothing more promised
        if plan["frontend_end"] == "half_close":
            assert fe.received == plan["kernel_size"], f"front end lost bytes ({where})"
            assert fe.eof, f"front end never saw the end ({where})"
        if plan["kernel_end"] == "half_close":
            assert k["received"] == plan["frontend_size"], f"kernel lost bytes ({where})"
            assert k["eof"], f"kernel never saw the end ({where})"


SIZES = st.one_of(
    st.sampled_from([0, 1, 5, 4095, 32768, 32769, 65536, 300_000, 2 * MiB]),
    st.integers(0, 200_000),
)


@st.composite
def channel_plans(draw: st.DrawFn) -> dict[str, Any]:
    fe_size, k_size = draw(SIZES), draw(SIZES)
    first = draw(st.sampled_from(["frontend", "kernel", "both"]))
    # A side may close outright (not half-close) only when nothing is coming its way, or
    # TCP itself would answer the peer's late bytes with a reset; "abort" cuts mid-transfer.
    fe_end = draw(st.sampled_from(["half_close", "close", "abort"]))
    k_end = draw(st.sampled_from(["half_close", "close", "abort"]))
    if fe_end == "close" and k_size:
        fe_end = "half_close"
    if k_end == "close" and fe_size:
        k_end = "half_close"
    return {
        "frontend_size": fe_size,
        "kernel_size": k_size,
        "frontend_seed": draw(st.integers(0, 2**32)),
        "kernel_seed": draw(st.integers(0, 2**32)),
        "frontend_chunk": max(draw(st.sampled_from([1, 7, 1024, 32768, MiB])), fe_size // 256),
        "kernel_chunk": max(draw(st.sampled_from([1, 7, 1024, 32768, MiB])), k_size // 256),
        "frontend_start": "now" if first in ("frontend", "both") else "after_peer",
        "kernel_start": "now" if first in ("kernel", "both") else "after_peer",
        "frontend_end": fe_end,
        "kernel_end": k_end,
    }


schedules = st.fixed_dictionaries(
    {
        "data": channel_plans(),
        "message": channel_plans(),
        "order": st.sampled_from(["data", "message"]),
        "message_first": st.booleans(),
    }
)


def plan(size_fe: int, size_k: int, first: str = "both", **over: Any) -> dict[str, Any]:
    base = {
        "frontend_size": size_fe,
        "kernel_size": size_k,
        "frontend_seed": 1,
        "kernel_seed": 2,
        "frontend_chunk": max(65536, size_fe // 64),
        "kernel_chunk": max(65536, size_k // 64),
        "frontend_start": "now" if first in ("frontend", "both") else "after_peer",
        "kernel_start": "now" if first in ("kernel", "both") else "after_peer",
        "frontend_end": "half_close",
        "kernel_end": "half_close",
    }
    return {**base, **over}


async def test_the_e2e_tier_runs_on_the_loop_it_names(request: pytest.FixtureRequest) -> None:
    loop = asyncio.get_running_loop()
    assert ("uvloop" in type(loop).__module__) == ("uvloop" in request.node.name)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schedule=schedules)
@example(  # the front end writes the instant it accepts, while the channel is opening
    schedule={
        "data": plan(70_000, 0, "frontend"),
        "message": plan(8, 0, "frontend"),
        "order": "data",
        "message_first": False,
    }
)
@example(
    schedule={"data": plan(0, 0), "message": plan(0, 0), "order": "message", "message_first": False}
)
async def test_random_schedules_carry_every_byte_exactly_once(
    daemon: RunningDaemon, schedule: dict[str, Any]
) -> None:
    check(await run_schedule(daemon, schedule), schedule)


async def test_64_mib_each_way_on_both_channels(daemon: RunningDaemon) -> None:
    schedule = {
        "data": plan(64 * MiB, 64 * MiB),
        "message": plan(64 * MiB, 64 * MiB, "kernel"),
        "order": "data",
        "message_first": False,
    }
    check(await run_schedule(daemon, schedule), schedule)


async def test_urgent_bytes_pass_while_the_data_channel_is_saturated(
    daemon: RunningDaemon,
) -> None:
    """The kernel reads nothing on the data channel until the message channel has ended, so
    16 MiB of data back up behind it: relay must still carry the message channel."""
    schedule = {
        "data": plan(16 * MiB, 0, "frontend"),
        "message": plan(4096, 4096, "frontend"),
        "order": "data",
        "message_first": True,
    }
    check(await run_schedule(daemon, schedule), schedule)


async def test_a_controller_launch_against_a_front_end_that_writes_first(
    daemon: RunningDaemon,
) -> None:
    """The simulator's rude front end, through the whole controller path (Launch command,
    shim, hook): its first evaluation and urgent message come back as answered."""
    for _ in range(5):
        async with controller(daemon.home) as fe:
            assert fe.link.greetings is not None
            kl = await fe.link.accept(60)  # raises LostBytes if the first bytes were lost
            assert await kl.echo(b"after") == b"after"
            await kl.quit(0)
            assert (await fe.result())[0] == 0
            await kl.aclose()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_relay_serve_in_its_own_process_on_either_loop(home: RelayHome, loop: str) -> None:
    """The daemon exactly as ``relay serve --loop`` runs it, in a process of its own, and
    a front end that writes first: its first bytes come back answered."""
    serving = await serve_subprocess(home, "--loop", loop)
    drained = asyncio.ensure_future(drain(serving))
    try:
        for _ in range(3):
            async with controller(home) as fe:
                kl = await fe.link.accept(60)  # raises LostBytes if a first byte was lost
                await kl.quit(0)
                assert (await fe.result())[0] == 0
                await kl.aclose()
    finally:
        serving.terminate()
        assert await asyncio.wait_for(serving.wait(), 60) == 0
        await drained


OUTAGES = st.lists(
    st.tuples(
        st.sampled_from(["blackhole", "reset"]),
        st.floats(0, 0.05),  # when: after the links are carried (or relay resumed)
        st.floats(0, 1.0),  # how long the path stays down once relay has noticed
    ),
    min_size=1,
    max_size=2,
)


@st.composite
def long_schedules(draw: st.DrawFn) -> dict[str, Any]:
    """A schedule whose data channel carries 8-32 MiB each way to its end, so that an outage
    early in it finds bytes on the way in both directions."""
    schedule: dict[str, Any] = draw(schedules)
    sizes = st.integers(8 * MiB, 32 * MiB)
    fe_size, k_size = draw(sizes), draw(sizes)
    schedule["data"] = {
        **schedule["data"],
        "frontend_size": fe_size,
        "kernel_size": k_size,
        "frontend_chunk": max(schedule["data"]["frontend_chunk"], fe_size // 256),
        "kernel_chunk": max(schedule["data"]["kernel_chunk"], k_size // 256),
        "frontend_end": "half_close",
        "kernel_end": "half_close",
    }
    return schedule


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # an example takes seconds: no shrinking
)
@given(schedule=long_schedules(), outages=OUTAGES)
@example(  # found by this test: an ACK lost in the black hole left the front end paused
    schedule={
        "data": plan(31_233_188, 24_360_544, frontend_chunk=122_004, kernel_chunk=95_158),
        "message": plan(1, 2 * MiB, "kernel", frontend_chunk=MiB, kernel_chunk=8192),
        "order": "data",
        "message_first": True,
    },
    outages=[("blackhole", 0.01, 1.0), ("blackhole", 0.01, 0.83)],
)
async def test_random_schedules_through_random_outages_carry_every_byte_exactly_once(
    home: RelayHome, schedule: dict[str, Any], outages: list[tuple[str, float, float]]
) -> None:
    """Schedules as above through the host's agent while the path to sshd goes silently
    dead or is reset, at random points and for random lengths (tests/e2e/test_resume.py's
    FaultProxy): every byte still arrives exactly once, in order, with every end."""
    async with (
        behind_proxy(home, connect_timeout_s=2) as proxy,
        start_daemon(home) as running,
    ):
        carried = asyncio.Event()
        run = asyncio.ensure_future(run_schedule(running, schedule, carried))
        hit = 0  # outages that found the schedule still running
        try:
            await asyncio.wait_for(carried.wait(), BOUND_S)
            for how, after_s, down_s in outages:
                await asyncio.wait([run], timeout=after_s)  # a random point in the schedule
                if run.done():
                    break
                hit += 1
                if how == "blackhole":
                    proxy.blackhole()
                else:
                    proxy.refuse()
                    proxy.reset()
                await until(
                    lambda: resume_state(running).get("state") == "resuming", "relay noticed"
                )
                await asyncio.wait([run], timeout=down_s)
                proxy.restore()
                await until(lambda: resume_state(running).get("state") == "on", "resumed")
            outcome = await asyncio.wait_for(run, BOUND_S)
        finally:
            proxy.restore()
            if not run.done():
                run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        check(outcome, schedule)
        event(f"outages that found bytes on the way: {hit}")
        assert int(str(resume_state(running)["attaches"])) >= 1 + hit  # each one resumed
