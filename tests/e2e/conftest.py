"""The e2e tier: a real OpenSSH sshd, and the daemon on the event loop ``relay serve`` uses.

``relay serve`` runs on uvloop (``relay.cli``), whose transports are not stdlib classes and
whose callbacks run in a different order; a daemon tested on stdlib asyncio once hid lost
bytes and a crash on every accepted local connection. So every test here runs on uvloop, and
the link-integrity tests (marked ``both_loops``) once more on stdlib asyncio, the fallback
``relay serve --loop asyncio`` uses where uvloop is absent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.sshd)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"uvloop": uvloop.new_event_loop}
    if item.get_closest_marker("both_loops") is not None:
        loops["asyncio"] = asyncio.new_event_loop
    return loops
