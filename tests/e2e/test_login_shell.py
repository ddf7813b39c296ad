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
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from relay.sim.sshd import ThrowawaySSHD
from relay.ssh.hookfile import HookFile, agent_file
from tests.conftest import RelayHome, installed
from tests.e2e.helpers import controller
from tests.e2e.test_check import by_name, check
from tests.e2e.test_dynamic import finish
from tests.e2e.test_faults import connected, served
from tests.e2e.test_resume import status_of

# What people put there: a greeting, a module system's report (on stdout), a blank line; one
# of them begins with "ok", as the installer's own answer does.
CHATTER = 'echo "Welcome to the cluster"\necho "ok, 3 modules loaded"\necho\n'


@contextmanager
def own_sshd(home: RelayHome, **options: Any) -> Iterator[ThrowawaySSHD]:
    """A throwaway sshd of the test's own (``options``: ThrowawaySSHD's), as host "local"."""
    with ThrowawaySSHD(home.dir / "sshd", **options) as running:
        home.sshd = running
        home.hosts.clear()
        home.add_host("local")
        yield running


async def launch_with_dynamic(home: RelayHome, sshd: ThrowawaySSHD, resume: str) -> None:
    """A controller with Dynamic (the hook installed by its installer and loaded), its host's
    resume state ``resume`` ("on": through relay's agent, which the same installer ships and
    a command of its own starts; "off": the supervisor's session starts the kernel)."""
    async with served(home), controller(home) as fe:
        main, _ = await connected(fe)
        (initfile,) = main.hello["initfile"]
        assert initfile.startswith(str(sshd.home / ".cache" / "relay")), initfile
        assert (await status_of(home))["resume"]["state"] == resume
        await finish(fe, main)


@pytest.fixture
def chatty(home: RelayHome) -> Iterator[ThrowawaySSHD]:
    """An sshd whose login (bash, HOME its own) talks first."""
    with own_sshd(home) as running:
        (running.home / ".bashrc").write_text(CHATTER)
        yield running


async def test_a_launch_gets_past_what_the_login_shell_prints(
    home: RelayHome, chatty: ThrowawaySSHD
) -> None:
    """As on a quiet host."""
    await launch_with_dynamic(home, chatty, "on")


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
    assert results["resume"]["summary"].startswith("python3 3."), text  # its probe's line found


# An xterm title, set for every command: no newline after it, so a script's first line was
# glued to it and nothing relay ran there was understood (a review's finding)
TITLE = "printf '\\033]0;%s\\007' cluster-login\n"


async def test_a_launch_and_relay_check_get_past_a_title_with_no_newline(home: RelayHome) -> None:
    with own_sshd(home) as running:
        (running.home / ".bashrc").write_text(TITLE)
        await launch_with_dynamic(home, running, "on")
        status, answer, text = check(home)
    assert status == 0, text
    remote = by_name(answer)["remote host"]
    assert (
        "the login shell prints before every command ('\\x1b]0;cluster-login\\x07')"
        in (remote["summary"])
    ), text


# tcsh and fish are what .ci/run installs for these; a developer's machine may lack them
REQUIRED = {"tcsh", "fish"} if os.environ.get("CI") else set()


@pytest.fixture(params=["tcsh", "fish", "zsh"])
def other_shell(home: RelayHome, request: pytest.FixtureRequest) -> Iterator[ThrowawaySSHD]:
    """An sshd whose login has ``request.param`` as its shell."""
    with own_sshd(home, login_shell=installed(request.param, REQUIRED)) as running:
        yield running


async def test_a_launch_through_another_login_shell(
    home: RelayHome, other_shell: ThrowawaySSHD
) -> None:
    await launch_with_dynamic(home, other_shell, "on")


@pytest.mark.today_path
async def test_a_launch_on_sshds_path_through_another_login_shell(
    home: RelayHome, other_shell: ThrowawaySSHD
) -> None:
    """The same where kernels do not resume."""
    await launch_with_dynamic(home, other_shell, "off")


def test_relay_check_through_another_login_shell(
    home: RelayHome, other_shell: ThrowawaySSHD
) -> None:
    status, answer, text = check(home)
    assert status == 0, text
    assert {r["state"] for r in answer["results"]} == {"ok"}, text
    assert by_name(answer)["kernel"]["summary"].endswith(": 14.1.0"), text


@pytest.mark.parametrize(
    ("shell", "start_up", "advice"),
    [
        ("tcsh", ".cshrc", "if ($?prompt) then ... endif"),
        ("zsh", ".zshenv", "move it from ~/.zshenv to ~/.zshrc"),
    ],
)
def test_relay_check_advises_the_login_shells_own_quiet_start_up(
    home: RelayHome, shell: str, start_up: str, advice: str
) -> None:
    """A tcsh or zsh user whose start-up file prints: the advice was bash's (`[[ $- == *i*
    ]] || return` in ~/.bashrc), which tcsh cannot read (a new-user review's finding)."""
    with own_sshd(home, login_shell=installed(shell, REQUIRED)) as running:
        (running.home / start_up).write_text("echo Welcome\n")
        status, answer, text = check(home)
    assert status == 0, text
    assert advice in by_name(answer)["remote host"]["advice"], text


async def test_a_slow_login_is_paid_once_for_the_agent(home: RelayHome) -> None:
    """Each session pays the host's login (~/.bashrc: module loads, a 3 s one measured):
    the agent's file is installed and the agent started from it in one session, where two
    made a slow login count twice before the first kernel. Each login writes down its
    command here, and the agent's words come in one session alone."""
    with own_sshd(home) as running:
        logins = running.home / "logins"
        (running.home / ".bashrc").write_text(f'echo "$BASH_EXECUTION_STRING" >>{logins}\n')
        await launch_with_dynamic(home, running, "on")
        sessions = sorted(line.split("' relay ", 1)[1] for line in logins.read_text().splitlines())
    agent, hook = agent_file(), HookFile.packaged()
    assert sorted(session.split()[:4] for session in sessions) == sorted(
        [
            [agent.version, agent.name, "30", hook.version],
            [hook.version, hook.name, "30", agent.version],
        ]
    ), sessions  # the agent's install and start, and the kernel hook's install
    (started,) = (session.split() for session in sessions if agent.name in session)
    assert started[4:6] == [str(len(agent.data)), "agent"] and started[7] == "900", sessions
    assert re.fullmatch("[0-9a-f]{16}", started[6]), sessions  # the agent's tag


async def test_the_kernel_hook_is_installed_beside_the_agents_start(home: RelayHome) -> None:
    """A controller waits for the kernel hook's install, a session of its own: begun once
    the agent's session is open, not after the agent started, so the two logins overlap.
    Each login here waits (10 s at most) until two have begun, and says whether they met."""
    with own_sshd(home) as running:
        begun, met = running.home / "begun", running.home / "met"
        (running.home / ".bashrc").write_text(
            f'echo "$BASH_EXECUTION_STRING" >>{begun}\n'
            f'i=0; while test "$(wc -l <{begun})" -lt 2 && test $i -lt 100; do\n'
            f"  sleep 0.1; i=$((i + 1))\ndone\n"
            f'test "$(wc -l <{begun})" -ge 2 && echo "$BASH_EXECUTION_STRING" >>{met}\n'
        )
        await launch_with_dynamic(home, running, "on")
        first = begun.read_text().splitlines()[0]
        assert agent_file().name in first, first  # the agent's session was given first
        assert first in met.read_text().splitlines(), (begun.read_text(), met.read_text())
