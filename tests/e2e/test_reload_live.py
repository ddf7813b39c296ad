"""relay.toml changed while kernels run through relay's agent, as people change it over weeks:
what runs keeps working, and what relay says of it is true (a review's findings, each
reproduced here first)."""

from __future__ import annotations

import pytest

from tests.conftest import RelayHome, start_daemon
from tests.e2e.helpers import controller, relay_cli
from tests.e2e.test_resume import (
    BOUND_S,
    behind_proxy,
    connected,
    outage,
    quit_cleanly,
    resume_state,
    until,
)

pytestmark = pytest.mark.sshd


async def test_a_removed_entry_keeps_its_kernels_through_an_outage(home: RelayHome) -> None:
    """The entry went from relay.toml while its kernel ran: the live connection's next
    reconnect used the ad-hoc host of that name (port 22, no keys) and never came back, and
    the kernel was lost. Its settings stay until what runs there ends."""
    async with (
        behind_proxy(home) as proxy,
        start_daemon(home) as running,
        controller(home) as fe,
    ):
        kl, _ = await connected(fe)
        saved = home.hosts.pop("local")
        home.write()
        status, out, err = await relay_cli(home, "reload")
        assert status == 0 and "local: removed from relay.toml" in out + err, (out, err)
        await outage(running, proxy, "reset")
        proxy.restore()
        await until(lambda: resume_state(running)["state"] == "on", "the resume")
        assert await kl.echo(b"still here") == b"still here"
        home.hosts["local"] = saved
        await quit_cleanly(kl, fe)


async def test_a_window_raised_on_a_path_dead_unnoticed_is_not_the_kernels_yet(
    home: RelayHome,
) -> None:
    """A window raised while the path had died silently (the keepalive not yet run out) was
    counted as the agent's the moment its line was written: `relay status` showed it, and
    the daemon waited the new window for an agent that kept the old, then said "relay's agent
    was not there". The window is the agent's once the agent acknowledges it."""
    async with (
        behind_proxy(
            home, resume_window_s=5, keepalive_interval_s=4, keepalive_count_max=2
        ) as proxy,
        start_daemon(home) as running,
        controller(home) as fe,
    ):
        kl, _ = await connected(fe)
        proxy.blackhole()  # the Wi-Fi gone, silently
        home.hosts["local"]["resume_window_s"] = 120
        home.write()
        status, _, err = await relay_cli(home, "reload")
        assert status == 0, err
        shown = resume_state(running)
        assert (shown["window_s"], shown["window_next_s"]) == (5, 120), shown
        status, _, err = await fe.result(BOUND_S)  # the 5 s the agent has, counted here too
        assert status != 0 and "within resume_window_s (5 s)" in err, err
        await kl.aclose()


async def test_a_keepalive_changed_reaches_the_agent_with_the_next_connection(
    home: RelayHome,
) -> None:
    """The silence the agent allows a daemon (HELLO's silence_s) is that of the connection it
    came on: it was the agent's first one's, so a keepalive raised in relay.toml had the
    agent let go of the daemon at every ping, and take it back."""
    async with (
        behind_proxy(home) as proxy,
        start_daemon(home) as running,
        controller(home) as fe,
    ):
        kl, _ = await connected(fe)
        agent = running.daemon.hosts["local"].agent
        assert agent is not None and agent.silence_s == 0.5 * 2
        home.hosts["local"]["keepalive_interval_s"] = 10
        home.write()
        assert (await relay_cli(home, "reload"))[0] == 0
        await outage(running, proxy, "reset")
        proxy.restore()
        await until(lambda: resume_state(running)["state"] == "on", "the resume")
        assert agent.silence_s == 10 * 2
        assert await kl.echo(b"x") == b"x"
        await quit_cleanly(kl, fe)
