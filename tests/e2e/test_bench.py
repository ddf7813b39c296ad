"""The benchmark harness, once on tiny sizes, so that it cannot rot (CI does not run
``make bench`` itself)."""

from __future__ import annotations

import math
from pathlib import Path

from bench.harness import Config, main, render


async def test_harness_runs_all_figures_on_tiny_sizes(tmp_path: Path) -> None:
    config = Config.tiny()
    results = await main(config)
    for way in ("tunnel", "controlmaster", "relay"):
        for rtt in config.rtts_ms:
            sample = results.single[(way, rtt)]
            assert sample.values and not sample.failures, (way, rtt, sample)
    assert results.concurrent[("relay", 0)].values
    assert all(s.values for s in results.pingpong.values())
    assert {key for key, _ in results.bulk} == {
        "relay",
        "asyncssh",
        "openssh",
        "openssh-aes128-gcm",
        "direct",
    }
    assert results.unchecked[0].values  # relay with peer_check off, beside it
    for way in ("relay", "tunnel", "controlmaster"):  # LaunchKernels, the Parallel way
        rounds = config.pool_relay_rounds if way == "relay" else 1
        assert len(results.pools[(way, 0, 2)].values) == rounds, way
    assert len(results.pool_stolen[(0, 2)]) == 2  # the host's steal in each of relay's rounds
    assert min(results.pool_stolen[(0, 2)]) >= 0 and results.stolen >= 0
    assert math.isfinite(results.shim_wall.median) and results.floor_direct.values
    assert set(results.daemon) == {"idle", f"{config.daemon_kernels} kernels", "after"}
    assert results.calibration[10]["pingpong_ms"] >= 10  # the delay relay delays
    text = render(config, results, "plot.png")
    assert "## Single launch latency" in text and "relay vs Tunnel" in text
    assert "## LaunchKernels as the Parallel package runs it" in text
    assert "CPU the host took during relay's cell" in text and "(steal)" in text
    assert "median of 2 rounds" in text
