"""The login shell on the host runs every command relay sends there (sshd runs ``$SHELL -c
COMMAND``). Two ways it used to get in the way, each through a real sshd:

- a shell that talks: ~/.bashrc echoes before every command, which bash runs for ssh's
  commands too (Debian's and Red Hat's bash read it when sshd starts them; a ~/.bashrc
  without an interactive guard at its top prints for each of them). The supervisor and the
  agent's start skipped the chatter; the kernel hook's installer and `relay check` did not,
  so every launch failed (Dynamic's hook "not installed") and the agent fell back;
- a shell that reads a command otherwise: tcsh substituted history at the ``!`` of the
  supervisor's and the installer's ``*[!0-9]*`` ("0: Event not found"), so nothing launched
  for a tcsh user; fish could not run `relay check`'s probes (``x=$(...)``, ``if ...; then``).
  relay.ssh.remote_scripts now hands every shell the same bootstrap.

Here they get past both, and `relay check` says the first."""

from __future__ import annotations

import os
import shutil
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


# tcsh and fish are what .ci/run installs for these; a developer's machine may lack them
REQUIRED = {"tcsh", "fish"} if os.environ.get("CI") else set()


@pytest.fixture(params=["tcsh", "fish", "zsh"])
def other_shell(home: RelayHome, request: pytest.FixtureRequest) -> Iterator[ThrowawaySSHD]:
    """A throwaway sshd of the test's own whose login has ``request.param`` as its shell."""
    name: str = request.param
    found = shutil.which(name)
    if found is None:
        if name in REQUIRED:
            pytest.fail(f"{name} is not installed (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    with ThrowawaySSHD(home.dir / "sshd", login_shell=found) as running:
        home.sshd = running
        home.hosts.clear()
        home.add_host("local")
        yield running


async def test_a_launch_through_another_login_shell(
    home: RelayHome, other_shell: ThrowawaySSHD
) -> None:
    """A controller with Dynamic (the hook installed by its installer) through relay's agent
    (shipped by the same installer, started by its own command)."""
    async with served(home), controller(home) as fe:
        main, _ = await connected(fe)
        (initfile,) = main.hello["initfile"]
        assert initfile.startswith(str(other_shell.home / ".cache" / "relay")), initfile
        assert (await status_of(home))["resume"]["state"] == "on"
        await finish(fe, main)


@pytest.mark.today_path
async def test_a_launch_on_sshds_path_through_another_login_shell(
    home: RelayHome, other_shell: ThrowawaySSHD
) -> None:
    """The same where kernels do not resume: the supervisor's session starts the kernel."""
    async with served(home), controller(home) as fe:
        main, _ = await connected(fe)
        assert (await status_of(home))["resume"]["state"] == "off"
        await finish(fe, main)


def test_relay_check_through_another_login_shell(
    home: RelayHome, other_shell: ThrowawaySSHD
) -> None:
    status, answer, text = check(home)
    assert status == 0, text
    assert {r["state"] for r in answer["results"]} == {"ok"}, text
    assert by_name(answer)["kernel"]["summary"].endswith(": 14.1.0"), text
