"""The benchmark harness, once on tiny sizes, so that it cannot rot (CI does not run
``make bench`` itself)."""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import shutil
from pathlib import Path

from bench import memory
from bench.harness import DIRECTIONS, GREETED, QUIET, Bench, Config, Sample, main, render
from bench.lookup import WAYS
from bench.ways import TunnelWay
from relay.sim.sshd import ThrowawaySSHD


def measured(sample: Sample) -> bool:
    """A comparator's cell was run and reported: timed, or failed saying why (its own luck,
    on a loaded machine, is the comparator's and not what this test checks)."""
    return bool(sample.values) or len(sample.reasons) == sample.failures > 0


async def test_harness_runs_all_figures_on_tiny_sizes(tmp_path: Path) -> None:
    """Every figure is produced; relay's cells must succeed, the comparators' (Tunnel's way,
    ControlMaster) must be measured."""
    config = Config.tiny()
    results = await main(config)
    for rtt in config.rtts_ms:
        sample = results.single[("relay", rtt)]
        assert sample.values and not sample.failures, (rtt, sample)
        for way in ("tunnel", "controlmaster"):
            assert measured(results.single[(way, rtt)]), (way, rtt, results.single[(way, rtt)])
        assert results.single_controller[rtt].values and not results.single_controller[rtt].failures
        assert results.unchecked[rtt].values and not results.unchecked[rtt].failures
        assert results.today[rtt].values and not results.today[rtt].failures  # no agent
    assert results.concurrent[("relay", 0)].values
    assert all(s.values for s in results.pingpong.values())
    assert {key for key, _ in results.bulk} == {
        "relay",
        "relay-today",
        "asyncssh",
        "openssh",
        "openssh-aes128-gcm",
        "direct",
    }
    assert results.unchecked[0].values  # relay with peer_check off, beside it
    # the same links at an emulated RTT, each path's round trips no faster than the RTT
    ways = ("relay", "relay-today", "openssh")
    assert set(results.net_pingpong) == {(10, way) for way in ways}
    assert all(min(s.values) >= 0.010 for s in results.net_pingpong.values())
    assert set(results.net_bulk) == {(10, way, d) for way in ways for d in DIRECTIONS}
    assert all(len(s.values) == config.link_rounds for s in results.net_bulk.values())
    # LaunchKernels, the Parallel way: relay's rounds all succeed, the others' cell is measured
    relay_pool = results.pools[("relay", 0, 2)]
    assert len(relay_pool.values) == config.pool_relay_rounds, relay_pool
    for way in ("tunnel", "controlmaster"):
        assert measured(results.pools[(way, 0, 2)]), (way, results.pools[(way, 0, 2)])
    assert len(results.pool_stolen[(0, 2)]) == 2  # the host's steal in each of relay's rounds
    assert min(results.pool_stolen[(0, 2)]) >= 0 and results.stolen >= 0
    assert math.isfinite(results.shim_wall.median) and results.floor_direct.values
    n = config.daemon_kernels
    assert set(results.daemon) == {
        "idle",
        f"{n} kernels, {QUIET}",
        f"{n} kernels, {GREETED}",
        "after",
    }
    assert set(results.agent) == {"idle", f"{n} kernels"}  # measured with the quiet links
    # where the idle daemon's memory is: every page counted once, relay's own modules a part
    held = sum(results.daemon_holders.values())
    assert abs(held - results.daemon["idle"][0]) < 0.1 * held, (held, results.daemon)
    assert memory.ANONYMOUS in results.daemon_holders
    assert 0 < results.relay_modules_mb < held, results.relay_modules_mb
    assert results.daemon_lean  # as relay serve starts itself where make install compiled
    assert results.calibration[10]["pingpong_ms"] >= 10  # the delay relay delays
    # the peer check's look-up, each way, with the table as it was and filled
    assert len(results.lookups) == 2, results.lookups
    filled, timings = list(results.lookups.values())[1]
    assert filled >= config.lookup_fill // 2, filled  # its TIME_WAIT rows last a minute
    assert set(timings) == set(WAYS) and all(t > 0 for t in timings.values())
    text = render(config, results, "plot.png")
    assert "## Single launch latency" in text and "relay vs Tunnel" in text
    assert "## LaunchKernels as the Parallel package runs it" in text
    assert "CPU the host took during relay's cell" in text and "(steal)" in text
    assert "median of 2 rounds" in text
    assert "## The peer check's cost per connection" in text
    assert "- where the idle daemon's RSS is (its smaps, MB): " in text
    assert "- the daemon ran as `relay serve` starts itself: lean (`-OO -X no_debug_ranges`" in text
    assert f"- target: at most 60 MB with {n} kernels: with quiet links " in text
    # each path's link targets, a verdict apiece, in figures that cannot round onto a target
    # on loopback, and over the emulated network
    assert "## Through a link, over an emulated network" in text
    for where, what in itertools.product(
        ("", "at 10 ms, "), ("through its agent", "resume_window_s = 0")
    ):
        line = re.search(rf"- {where}relay {re.escape(what)} / OpenSSH default: (.*)", text)
        assert line is not None, (where, what)
        assert re.fullmatch(
            r"ping-pong \d+\.\d{3}x \(target at most 1\.5x: (met|missed)\), bulk \d+\.\d{3}x "
            r"to and \d+\.\d{3}x from the kernel \(target at least 0\.95x both ways: "
            r"(met|missed)\)\.",
            line.group(1),
        ), line.group(1)
    tunnel = results.single[("tunnel", 0)]  # a comparator's failure, as the report says it
    tunnel.failures, tunnel.reasons = tunnel.failures + 1, [*tunnel.reasons, "RuntimeError: x"]
    assert "- tunnel, 0 ms: RuntimeError: x" in render(config, results, "plot.png")


async def test_a_comparators_failed_launch_says_what_the_kernels_side_said(
    sshd: ThrowawaySSHD,
) -> None:
    """The kernel's stderr comes back through Tunnel's ssh: a failed launch's reason has it,
    and the launch fails as its ssh exits, not after the 60 s wait for a connection."""
    bench = Bench(Config.tiny())
    try:
        way = TunnelWay(sshd, sshd.port, "/nonexistent/WolframKernel")
        async with asyncio.timeout(30):
            assert await bench.timed_launch(way) is None
        assert "launch command exited 127" in bench.why
        assert "stderr: " in bench.why and "/nonexistent/WolframKernel" in bench.why  # the shell
    finally:
        shutil.rmtree(bench.dir, ignore_errors=True)
