"""The suite's own count of relay's agents (tests/agents.py): a test run counts and ends only
agents its own servers' logins started, so two runs on one machine (two clones, or a test run
beside the developer's own relay with a localhost host) leave each other's agents alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from relay.sim.sshd import MARK, ThrowawaySSHD
from tests import agents

# what an agent's command line looks like (relay.agent.start): ~/.cache/relay/VER/relayagent.py
STAND_IN = "import time; time.sleep(120)"


class StandIn(Protocol):
    def __call__(self, ssh_connection: str | None, mark: str | None = None) -> int: ...


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[StandIn]:
    procs: list[subprocess.Popen[bytes]] = []
    script = tmp_path / "relayagent.py"
    script.write_text(STAND_IN)

    def start(ssh_connection: str | None, mark: str | None = None) -> int:
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_CONNECTION", MARK)}
        if ssh_connection is not None:
            env["SSH_CONNECTION"] = ssh_connection
        if mark is not None:
            env[MARK] = mark
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
    stand_in: StandIn,
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
    stand_in: StandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ThrowawaySSHD, "ports_started", {2203})
    monkeypatch.setattr(ThrowawaySSHD, "marks_started", {"ours"})
    ours = stand_in("127.0.0.1 40002 127.0.0.1 2203", "ours")
    theirs = stand_in("127.0.0.1 40003 127.0.0.1 2204", "theirs")
    found = agents.running()
    assert ours in found
    assert theirs not in found


def test_another_runs_server_on_the_same_port_is_not_ours(
    stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run's network-namespace server listens on 2222, in a namespace of its own, and
    another run may listen on a port one of this run's servers has let go: the port is the
    same, the server's mark is not. Another run's agent counted as ours failed our test
    ("kernels left under relay's agent") and was sent SIGTERM, its kernels with it."""
    monkeypatch.setattr(ThrowawaySSHD, "ports_started", {2222})
    monkeypatch.setattr(ThrowawaySSHD, "marks_started", {"ours"})
    ours = stand_in("127.0.0.1 40004 127.0.0.1 2222", "ours")
    theirs = stand_in("127.0.0.1 40005 127.0.0.1 2222", "theirs")
    unmarked = stand_in("127.0.0.1 40006 127.0.0.1 2222")
    assert agents.server_mark(ours) == "ours"
    assert agents.server_mark(unmarked) is None
    found = agents.running()
    assert ours in found
    assert theirs not in found
    assert unmarked not in found


def test_a_servers_sessions_carry_its_mark(tmp_path: Path) -> None:
    """What tells this run's agents from another's: every session of a server, whoever logs
    in, has the server's own mark in its environment (sshd's SetEnv)."""
    server = ThrowawaySSHD(tmp_path, options={"SetEnv": "A=1"})
    config = server.write_config(2299).read_text()
    assert f'SetEnv A=1 "{MARK}={server.mark}" "HOME=' in config
    assert ThrowawaySSHD(tmp_path).mark != server.mark
    server.user = "someone-else"
    assert f'SetEnv A=1 "{MARK}={server.mark}"\n' in server.write_config(2299).read_text()
