"""The e2e tier: a real OpenSSH sshd, and the daemon on the event loop ``relay serve`` uses.

``relay serve`` runs on uvloop (``relay.cli``), whose transports are not stdlib classes and
whose callbacks run in a different order; a daemon tested on stdlib asyncio once hid lost
bytes and a crash on every accepted local connection. So every test here runs on uvloop, and
the link-integrity tests (marked ``both_loops``) once more on stdlib asyncio, the fallback
``relay serve --loop asyncio`` uses where uvloop is absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.sshd)


def new_uvloop() -> asyncio.AbstractEventLoop:
    """A uvloop whose ``close()`` ends whatever a test left open, and then says what it was.

    uvloop's ``close()`` closes every handle still open (a failed test's servers and
    connections) after a ``ResourceWarning`` for each. With ``filterwarnings = error`` that
    warning is raised inside uvloop's callback, which cannot raise: the handle was never
    closed, and ``close()`` waited on it for ever, in C, where no timeout reached it (a failed
    e2e test with kernels connected stalled the run). So the warnings are collected while the
    loop closes and issued after it: the test that leaked still fails, and the run goes on."""
    loop = uvloop.new_event_loop()
    close = loop.close

    def close_then_warn() -> None:
        with warnings.catch_warnings(record=True) as unclosed:
            warnings.simplefilter("always", ResourceWarning)
            close()
        if unclosed:
            what = "; ".join(str(warning.message) for warning in unclosed)
            warnings.warn(f"left open by the test: {what}", ResourceWarning, stacklevel=2)

    loop.close = close_then_warn  # type: ignore[method-assign]
    return loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"uvloop": new_uvloop}
    if item.get_closest_marker("both_loops") is not None:
        loops["asyncio"] = asyncio.new_event_loop
    return loops


def _agents() -> dict[int, str]:
    """relay's agents running on this machine (the tests' hosts are this machine)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(arg.endswith(b"/relayagent.py") for arg in argv):
                found[int(entry)] = " ".join(a.decode(errors="replace") for a in argv)
    return found


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


@pytest.fixture(autouse=True)
def no_orphaned_kernels() -> Iterator[None]:
    """After every e2e test, no kernel is left under an agent the test started (docs/agent.md:
    relay stop, the window or the next daemon end them; a test that ends otherwise would
    leave them for the window, 900 s). An agent with no kernel left goes by itself (within a
    minute, if nobody ever attached); it is ended here so the next test starts clean."""
    before = set(_agents())
    yield
    deadline = time.monotonic() + 15  # an agent ending its kernels: SIGTERM, SIGKILL at 5 s
    left: dict[int, list[int]] = {}
    while time.monotonic() < deadline:
        left = {pid: kids for pid in set(_agents()) - before if (kids := _children(pid))}
        if not left:
            break
        time.sleep(0.2)
    for pid in set(_agents()) - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # it ends its kernels too
    assert not left, f"kernels left under relay's agent (pid: kernels): {left}"
