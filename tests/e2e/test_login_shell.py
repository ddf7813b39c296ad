"""A login shell that talks: the host's ~/.bashrc echoes before every command, which bash runs
for ssh's commands too (Debian's and Red Hat's bash read it when sshd starts them; a
~/.bashrc without an interactive guard at its top prints for each of them). relay's own
commands run through that shell: the supervisor and the agent's start skipped the chatter,
the kernel hook's installer and `relay check` did not, so every launch failed (Dynamic's hook
"not installed") and the agent fell back. Here they get past it, and `relay check` says it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relay.sim.sshd import ThrowawaySSHD
from tests.conftest import RelayHome
from tests.e2e.helpers import controller
from tests.e2e.test_check import by_name, check
from tests.e2e.test_dynamic import finish
from tests.e2e.test_faults import connected, served
from tests.e2e.test_resume import status_of

# What people put there: a greeting, a module system's report (on stdout), a blank line; one
# of them begins with "ok", as the installer's own answer does.
CHATTER = 'echo "Welcome to the cluster"\necho "ok, 3 modules loaded"\necho\n'


@pytest.fixture
def chatty(home: RelayHome) -> Iterator[ThrowawaySSHD]:
    """A throwaway sshd of the test's own whose login (bash, HOME its own) talks first."""
    with ThrowawaySSHD(home.dir / "sshd") as running:
        (running.home / ".bashrc").write_text(CHATTER)
        home.sshd = running
        home.hosts.clear()
        home.add_host("local")
        yield running


async def test_a_launch_gets_past_what_the_login_shell_prints(
    home: RelayHome, chatty: ThrowawaySSHD
) -> None:
    """A controller with Dynamic (the hook installed and loaded) through relay's agent, as on
    a quiet host."""
    async with served(home), controller(home) as fe:
        main, _ = await connected(fe)
        (initfile,) = main.hello["initfile"]
        assert initfile.startswith(str(chatty.home / ".cache" / "relay")), initfile
        assert (await status_of(home))["resume"]["state"] == "on"
        await finish(fe, main)


def test_relay_check_gets_past_it_and_says_what_it_breaks(
    home: RelayHome, chatty: ThrowawaySSHD
) -> None:
    status, answer, text = check(home)
    results = by_name(answer)
    assert status == 0, text
    remote = results["remote host"]
    assert remote["state"] == "warn", text
    assert (
        "the login shell prints before every command ('Welcome to the cluster' and more)"
        in (remote["summary"])
    )
    assert "scp, sftp and rsync fail on it" in remote["summary"]
    assert results["kernel"]["summary"].endswith(": 14.1.0"), text  # not the greeting
    assert results["round trip"]["state"] == "ok", text
