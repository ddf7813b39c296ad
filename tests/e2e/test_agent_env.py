"""relay from a shell with an ssh-agent, and from one without (``agent_or_not``): every request
that may open a connection carries the shell's SSH_AUTH_SOCK when there is one (README, "The
agent"), none is refused for it, and the daemon (started with no agent of its own: the
session's SSH_AUTH_SOCK is removed, tests/conftest.py) takes it for its connections.
``relay check`` and ``relay login`` run both ways in their own files."""

from __future__ import annotations

import pytest

from tests.conftest import RelayHome, start_daemon
from tests.e2e.helpers import launch_and_quit, relay_cli

pytestmark = pytest.mark.sshd


async def test_launch(home: RelayHome, agent_or_not: str | None) -> None:
    async with start_daemon(home) as running:
        assert running.daemon.environ_agent is None
        await launch_and_quit(home, "local")
        assert running.daemon.environ_agent == agent_or_not


async def test_trust(home: RelayHome, agent_or_not: str | None) -> None:
    async with start_daemon(home) as running:
        status, out, err = await relay_cli(home, "trust", "local")
        assert status == 0 and "already recorded in known_hosts" in out, err
        assert running.daemon.environ_agent == agent_or_not


async def test_connect(home: RelayHome, agent_or_not: str | None) -> None:
    async with start_daemon(home) as running:
        status, out, err = await relay_cli(home, "connect", "local")
        assert status == 0 and "local is connected" in out, err
        assert running.daemon.environ_agent == agent_or_not


async def test_trust_starting_the_daemon(home: RelayHome, agent_or_not: str | None) -> None:
    """``relay trust`` starts the daemon when none runs (in the shell's environment)."""
    home.write()
    try:
        status, out, err = await relay_cli(home, "trust", "local")
        assert status == 0 and "already recorded in known_hosts" in out, err
    finally:
        await relay_cli(home, "stop")
