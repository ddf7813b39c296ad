"""relay.ssh.connector's ``_Direct``, every direct connection's path, and the path a resume
takes to the machine its agent is on (tests/e2e/test_resume.py has it through two real sshds
behind one name). Here the ways it must not go wrong on loopback: a name that no longer has
the address (a VPN's split DNS) is connected to by name, ssh_config's BindAddress is kept,
an address that refuses is followed by the next; and its resolver (relay.ssh.resolver)
looks a name up once however many attempts want it, while other names resolve."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from relay.ssh import resolver
from relay.ssh.connector import _Direct


class _Said:
    def __init__(self) -> None:
        self.moved: list[str] = []

    def __call__(self, address: str) -> None:
        self.moved.append(address)


async def _peer_of_one_connection(same: _Direct, host: str) -> tuple[str, tuple[str, int]]:
    """Connect through ``same`` to a server on 127.0.0.1 named ``host``; the address the
    connection reached and the one the server saw it come from."""
    came_from: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    def accepted(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        came_from.set_result(writer.get_extra_info("peername")[:2])
        writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport, _ = await same.create_connection(asyncio.Protocol, host, port)
        reached = str(transport.get_extra_info("peername")[0])
        transport.close()
        return reached, await asyncio.wait_for(came_from, 30)
    finally:
        server.close()
        await server.wait_closed()


def test_a_name_without_the_address_any_more_is_connected_to_by_name() -> None:
    """127.0.0.2 has nothing listening: taken blindly, the connection would be refused."""
    said = _Said()
    reached, _ = asyncio.run(_peer_of_one_connection(_Direct(None, "127.0.0.2", said), "127.0.0.1"))
    assert reached == "127.0.0.1"
    assert said.moved == ["127.0.0.2"]  # and said so


def test_the_address_is_taken_while_the_name_has_it_and_bind_address_is_kept() -> None:
    said = _Said()
    reached, came_from = asyncio.run(
        _peer_of_one_connection(_Direct("127.0.0.3", "127.0.0.1", said), "localhost")
    )
    assert reached == "127.0.0.1" and not said.moved
    assert came_from[0] == "127.0.0.3"  # ssh_config's BindAddress, as asyncssh would bind


def test_each_address_is_tried_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with two addresses, the first refusing: the second is reached, as asyncio's
    own connect would."""

    def two(host: str, port: int, **_: object) -> list[tuple[Any, ...]]:
        assert host == "pair.test"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
            for address in ("127.0.0.2", "127.0.0.1")
        ]

    monkeypatch.setattr(resolver, "getaddrinfo", two)
    reached, _ = asyncio.run(_peer_of_one_connection(_Direct(None), "pair.test"))
    assert reached == "127.0.0.1"


def test_a_name_is_looked_up_once_however_many_attempts_want_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name whose DNS server is gone (a VPN down) takes its look-up 20-40 s: every connect
    attempt, retry and hedge for it started another, in the loop's few resolver threads,
    and a healthy host queued behind them (a review's reproduction). Here they all wait on
    one, cancelled attempts leave it running for the others, and another name resolves."""
    gate = threading.Event()
    calls: list[str] = []

    def look_up(host: str, port: int, **_: object) -> list[tuple[Any, ...]]:
        calls.append(host)
        if host == "dead.test":
            assert gate.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(resolver, "getaddrinfo", look_up)

    async def main() -> None:
        attempts = [asyncio.ensure_future(resolver.addresses("dead.test", 22)) for _ in range(5)]
        await asyncio.sleep(0)
        attempts[0].cancel()  # one timed out: the look-up goes on for the rest
        assert await asyncio.wait_for(resolver.addresses("fine.test", 22), 30) == ["127.0.0.1"]
        assert resolver.in_flight() == 1
        gate.set()
        results = await asyncio.gather(*attempts, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert all(isinstance(r, socket.gaierror) for r in results[1:]), results
        assert resolver.in_flight() == 0
        assert await resolver.addresses("127.0.0.1", 22) == ["127.0.0.1"]  # no look-up

    try:
        asyncio.run(main())
    finally:
        gate.set()
    assert sorted(calls) == ["dead.test", "fine.test"]


def test_an_address_is_itself_its_scope_kept_and_its_family_checked() -> None:
    async def main() -> None:
        assert await resolver.addresses("[fe80::1%eth0]", 22) == ["fe80::1%eth0"]
        assert await resolver.addresses("::1", 22, socket.AF_INET6) == ["::1"]
        with pytest.raises(socket.gaierror):  # ssh -4 ::1: "Address family ... not supported"
            await resolver.addresses("::1", 22, socket.AF_INET)

    asyncio.run(main())


def test_a_look_up_left_by_a_closed_loop_is_not_handed_to_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loop that closed while its look-up ran never settles it: the next loop's attempts
    for that name waited on it, or raised "attached to a different loop" (a review's)."""
    gate = threading.Event()

    def look_up(host: str, port: int, **_: object) -> list[tuple[Any, ...]]:
        assert gate.wait(30)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(resolver, "getaddrinfo", look_up)

    async def started() -> None:
        running = asyncio.ensure_future(resolver.addresses("name.test", 22))
        await asyncio.sleep(0)
        running.cancel()  # as asyncio.run does with what is left

    asyncio.run(started())  # its loop closes with the look-up running
    gate.set()
    assert asyncio.run(resolver.addresses("name.test", 22)) == ["127.0.0.1"]
