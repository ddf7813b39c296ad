"""The suite's own count of relay's agents (tests/agents.py): a test run counts and ends only
agents its own servers' logins started, so two runs on one machine (two clones, or a test run
beside the developer's own relay with a localhost host) leave each other's agents alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.sim.sshd import ThrowawaySSHD
from tests import agents

# what an agent's command line looks like (relay.agent.start): ~/.cache/relay/VER/relayagent.py
STAND_IN = "import time; time.sleep(120)"


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[Callable[[str | None], int]]:
    procs: list[subprocess.Popen[bytes]] = []
    script = tmp_path / "relayagent.py"
    script.write_text(STAND_IN)

    def start(ssh_connection: str | None) -> int:
        env = {k: v for k, v in os.environ.items() if k != "SSH_CONNECTION"}
        if ssh_connection is not None:
            env["SSH_CONNECTION"] = ssh_connection
        proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.DEVNULL, env=env)
        procs.append(proc)
        # its command line is set once its exec is done: until then /proc shows it empty
        deadline = time.monotonic() + 30
        while not Path(f"/proc/{proc.pid}/cmdline").read_bytes().endswith(b"relayagent.py\0"):
            assert time.monotonic() < deadline, "the stand-in never ran"
            time.sleep(0.01)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_an_agent_is_counted_only_for_the_servers_whose_login_started_it(
    stand_in: Callable[[str | None], int],
) -> None:
    ours = stand_in("127.0.0.1 40000 127.0.0.1 2201")
    theirs = stand_in("127.0.0.1 40001 127.0.0.1 2202")
    no_login = stand_in(None)
    assert agents.server_port(ours) == 2201
    assert agents.server_port(no_login) is None
    found = agents.running({2201})
    assert ours in found
    assert theirs not in found
    assert no_login not in found
    assert agents.running({2201, 2202}) >= {ours, theirs}


def test_by_default_the_count_is_this_runs_servers(
    stand_in: Callable[[str | None], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ThrowawaySSHD, "ports_started", {2203})
    ours = stand_in("127.0.0.1 40002 127.0.0.1 2203")
    theirs = stand_in("127.0.0.1 40003 127.0.0.1 2204")
    found = agents.running()
    assert ours in found
    assert theirs not in found
