"""Whether a failed attempt heard from the machine (``relay.ssh.connector.answered``): a
resume keeps coming back to an agent's machine that answers, even to refuse, and gives its
host name back only to silence (``Connector.reconnect``). Here each way an attempt fails,
made for real on loopback through ``Connector.connect_once``, as the socket and asyncssh
report it."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from relay.errors import ConnectFailed
from relay.settings import HostConfig
from relay.ssh.connector import ConnectionStatus, Connector, answered

TIMEOUT_S = 1.0  # connect_timeout_s: what the silent server takes, the others never do

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _failure(port: int, tmp: Path) -> ConnectFailed:
    known_hosts = tmp / "known_hosts"
    known_hosts.touch()
    config = HostConfig(
        hostname="127.0.0.1",
        port=port,
        known_hosts=str(known_hosts),
        identity_files=[],
        connect_timeout_s=TIMEOUT_S,
    )
    c = Connector("h", config, status=ConnectionStatus(), ssh_files=(), agent=lambda: None)
    with pytest.raises(ConnectFailed) as failed:
        await c.connect_once(time.monotonic() + 10 * TIMEOUT_S)
    return failed.value


async def _through(serve: Serve, tmp: Path) -> ConnectFailed:
    open_writers: list[asyncio.StreamWriter] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_writers.append(writer)
        await serve(reader, writer)

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    try:
        return await _failure(server.sockets[0].getsockname()[1], tmp)
    finally:
        server.close()
        for w in open_writers:
            w.close()
        await server.wait_closed()


async def _reset(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """sshd restarting, or dropping the connection past MaxStartups."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
    """Accepted and never a word: as a path that died after the handshake looks."""
    await reader.read()


async def _sshd_then_gone(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    await writer.drain()
    writer.close()


def test_a_refused_connection_is_an_answer(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
    try:
        failed = asyncio.run(_failure(sock.getsockname()[1], tmp_path))
    finally:
        sock.close()
    assert failed.answered, failed.message


def test_a_connection_reset_before_the_banner_is_an_answer(tmp_path: Path) -> None:
    failed = asyncio.run(_through(_reset, tmp_path))
    assert "reset the connection before SSH began: sshd restarting" in failed.message
    assert failed.answered, failed.message


def test_sshd_speaking_and_hanging_up_is_an_answer(tmp_path: Path) -> None:
    failed = asyncio.run(_through(_sshd_then_gone, tmp_path))
    assert "during the SSH handshake" in failed.message
    assert failed.answered, failed.message


def test_silence_until_the_timeout_is_no_answer(tmp_path: Path) -> None:
    failed = asyncio.run(_through(_silent, tmp_path))
    assert "no SSH banner" in failed.message
    assert not failed.answered


@pytest.mark.parametrize(
    ("exc", "reached", "heard"),
    [
        (ConnectionResetError(), "none", True),  # reset before the connect was seen done
        (ConnectionRefusedError(), "none", True),
        (TimeoutError(), "ssh", True),  # sshd spoke, then was too slow
        (TimeoutError(), "tcp", False),  # accepted, then silence: a path that died
        (TimeoutError(), "none", False),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "none", False),
    ],
)
def test_what_counts_as_an_answer(exc: BaseException, reached: str, heard: bool) -> None:
    assert answered(exc, reached) is heard
