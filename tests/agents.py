"""relay's agents (docs/agent.md) that tests on this machine started: after a test, no kernel
may be left under one (relay stop, the window or the next daemon end them; a test that ends
otherwise would leave them for the window, 900 s)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def running() -> set[int]:
    """Pids of relay's agents running here (the tests' hosts are this machine)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(arg.endswith(b"/relayagent.py") for arg in argv):
                found.add(int(entry))
    return found


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


def assert_no_kernels_left(before: set[int], timeout_s: float = 15.0) -> None:
    """No agent started since ``before`` still has kernels (waited for, bounded: an agent
    ending its kernels gives SIGKILL after 5 s). Every such agent is then ended, so the next
    test starts clean; an agent with no kernel goes by itself within a minute anyway."""
    deadline = time.monotonic() + timeout_s
    left: dict[int, list[int]] = {}
    while time.monotonic() < deadline:
        left = {pid: kids for pid in running() - before if (kids := _children(pid))}
        if not left:
            break
        time.sleep(0.2)
    for pid in running() - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # it ends its kernels too
    assert not left, f"kernels left under relay's agent (pid: kernels): {left}"
