"""Loopback connections whose owner relay's look-ups are asked for: a live one, and a client
socket that closed at once while the server still holds its end, what issue 23's stranger
leaves behind (FIN_WAIT2, orphaned: uid 0 and inode 0 in /proc/net/tcp)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def orphaned_client(data: bytes = b"") -> Iterator[tuple[int, int]]:
    """``(client_port, listen_port)`` of a loopback connection whose client wrote ``data``
    and closed, its FIN seen by the server, which keeps its end open until the block ends."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        listen_port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", listen_port))
        client_port = client.getsockname()[1]
        accepted, _ = server.accept()
        with accepted:
            if data:
                client.sendall(data)
            client.shutdown(socket.SHUT_WR)
            client.close()
            assert accepted.recv(len(data) + 1) == data
            if data:
                assert accepted.recv(1) == b""  # the FIN arrived: the client's end is closing
            yield client_port, listen_port


@contextlib.contextmanager
def live_connection() -> Iterator[tuple[int, int]]:
    """``(client_port, listen_port)`` of a loopback connection of this process's, both ends
    open (the server's accepted) until the block ends."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        listen_port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", listen_port)) as client:
            accepted, _ = server.accept()
            with accepted:
                yield client.getsockname()[1], listen_port
