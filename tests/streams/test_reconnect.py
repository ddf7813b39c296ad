"""relay.ssh.connector.Connector.reconnect: a resume goes back to the agent's machine, and
gives its host name back when that machine is gone (tests/e2e/test_resume.py has both through
two real sshds behind one name). Here each attempt's outcome is scripted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relay.errors import ConnectFailed
from relay.settings import HostConfig
from relay.ssh.connector import ConnectionStatus, Connector

AGENTS, OTHER = "192.0.2.1", "192.0.2.2"


class _Conn:
    def __init__(self, address: str) -> None:
        self.address, self.closed = address, False

    def close(self) -> None:
        self.closed = True


class _Machines(Connector):
    """Attempts to the agent's address do what ``pinned`` says in turn ("fail": nothing
    answers, "refuse": the machine says no, or "ok"); attempts by name reach ``by_name``
    (None: they fail too, as on a dead path)."""

    def __init__(self, pinned: list[str], by_name: str | None) -> None:
        super().__init__(
            "h", HostConfig(hostname="h"), status=ConnectionStatus(), agent=lambda: None
        )
        self.pinned, self.by_name = pinned, by_name
        self.made: list[_Conn] = []
        self.attempts: list[str | None] = []

    async def connect_once(
        self, deadline: float, ask: Any = None, same_address: str | None = None
    ) -> Any:
        self.attempts.append(same_address)
        if same_address is not None:
            outcome = self.pinned.pop(0)
            if outcome == "fail":
                raise ConnectFailed(f"{same_address}: timed out")
            if outcome == "refuse":
                raise ConnectFailed(f"{same_address}: connection refused", answered=True)
            address = same_address
        elif self.by_name is None:
            raise ConnectFailed("the path is down")
        else:
            address = self.by_name
        self.reached = address
        self.made.append(_Conn(address))
        return self.made[-1], None


def _reconnect(c: _Machines) -> Any:
    return asyncio.run(c.reconnect(1.0, AGENTS))[0]


def test_the_agents_machine_answering_is_all_it_takes() -> None:
    c = _Machines(["ok"], OTHER)
    assert _reconnect(c).address == AGENTS and c.attempts == [AGENTS]


def test_a_dead_path_is_raised_for_the_caller_to_back_off() -> None:
    c = _Machines(["fail"] * 3, None)
    with pytest.raises(ConnectFailed):
        _reconnect(c)
    assert not c.made


def test_the_name_leading_back_to_the_agents_machine_is_taken() -> None:
    c = _Machines(["fail"] * 3, AGENTS)
    assert _reconnect(c).address == AGENTS and c.reached == AGENTS


def test_the_agents_machine_answering_once_the_path_is_up_wins_over_the_other() -> None:
    c = _Machines(["fail"] * 3 + ["ok"], OTHER)
    conn = _reconnect(c)
    assert conn.address == AGENTS and c.reached == AGENTS
    assert [m.closed for m in c.made] == [True, False]  # the other machine's: closed


def test_a_machine_gone_while_another_answers_gives_the_name_back() -> None:
    c = _Machines(["fail"] * 4, OTHER)
    conn = _reconnect(c)
    assert conn.address == OTHER and not conn.closed and c.reached == OTHER


def test_a_machine_that_refuses_is_up_and_never_traded_for_another() -> None:
    """Its sshd restarting, or MaxStartups: the kernels are there. The caller backs off and
    comes back to it; no attempt by name is made."""
    c = _Machines(["refuse"] * 3, OTHER)
    with pytest.raises(ConnectFailed):
        _reconnect(c)
    assert c.attempts == [AGENTS] * 3 and not c.made


def test_a_machine_refusing_right_after_another_answered_keeps_its_kernels() -> None:
    """Silent at first (its sshd was not listening yet after a restart, or the path
    flapped), then refusing once another machine answered: up after all. The other's
    connection is closed and the failure raised for the caller to back off."""
    c = _Machines(["fail"] * 3 + ["refuse"], OTHER)
    with pytest.raises(ConnectFailed):
        _reconnect(c)
    assert [(m.address, m.closed) for m in c.made] == [(OTHER, True)]
