"""relay.ssh.connector's ``_SameAddress``, the path a resume takes to the machine its agent is
on (tests/e2e/test_resume.py has it through two real sshds behind one name). Here the two
ways it must not go wrong on loopback: a name that no longer has the address (a VPN's split
DNS) is connected to by name, and ssh_config's BindAddress is kept."""

from __future__ import annotations

import asyncio

from relay.ssh.connector import _SameAddress


class _Said:
    def __init__(self) -> None:
        self.moved: list[str] = []

    def __call__(self, address: str) -> None:
        self.moved.append(address)


async def _peer_of_one_connection(same: _SameAddress, host: str) -> tuple[str, tuple[str, int]]:
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
    reached, _ = asyncio.run(
        _peer_of_one_connection(_SameAddress("127.0.0.2", None, said), "127.0.0.1")
    )
    assert reached == "127.0.0.1"
    assert said.moved == ["127.0.0.2"]  # and said so


def test_the_address_is_taken_while_the_name_has_it_and_bind_address_is_kept() -> None:
    said = _Said()
    reached, came_from = asyncio.run(
        _peer_of_one_connection(_SameAddress("127.0.0.1", "127.0.0.3", said), "localhost")
    )
    assert reached == "127.0.0.1" and not said.moved
    assert came_from[0] == "127.0.0.3"  # ssh_config's BindAddress, as asyncssh would bind
