"""A failing run reports and ends; it never stalls CI. Each test runs pytest on
``leaky.py`` in a subprocess, with a bound the run must end within."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
LEAKY = Path(__file__).with_name("leaky.py")
BOUND_S = 120  # pytest's start-up on a loaded machine, many times over


def run_pytest(test: str, *options: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", f"{LEAKY}::{test}", "-q", "-p", "no:cacheprovider",
         *options],
        cwd=ROOT,
        env=dict(os.environ, **(env or {})),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BOUND_S,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-2000:]
    return proc.stdout


def test_a_failed_test_that_left_a_server_and_a_connection_open_ends_and_says_so() -> None:
    """uvloop's close() once waited for ever on what the failed test left open (the
    warning it gives of each was raised where it cannot be): subprocess.run's timeout
    would end this test instead."""
    out = run_pytest("test_fails_leaving_a_server_and_a_connection_open")
    assert "AssertionError: fails on purpose" in out
    assert "left open by the test: unclosed resource <TCPServer" in out
    assert "1 failed, 1 error" in out


def test_a_test_that_hangs_on_uvloop_is_ended_by_the_timeout() -> None:
    """pytest-timeout's signal method never reached a test waiting in uvloop's C loop."""
    out = run_pytest("test_hangs", "-o", "timeout=5", env={"RELAY_LEAKY_HANG": "1"})
    assert "+ Timeout +" in out  # pytest-timeout's banner, then every thread's stack
