"""The e2e tier: a real OpenSSH sshd, and the daemon on the event loop ``relay serve`` uses.

``relay serve`` runs on uvloop (``relay.cli``), whose transports are not stdlib classes and
whose callbacks run in a different order; a daemon tested on stdlib asyncio once hid lost
bytes and a crash on every accepted local connection. So every test here runs on uvloop, and
the link-integrity tests (marked ``both_loops``) once more on stdlib asyncio, the fallback
``relay serve --loop asyncio`` uses where uvloop is absent.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Mapping

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
