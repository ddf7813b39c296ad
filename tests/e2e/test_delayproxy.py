"""bench.delayproxy, the emulated round trip ``make bench`` runs the OpenSSH ways and relay
through: a connection that ends under it ends its pipes quietly, on uvloop (the e2e loop)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from bench.delayproxy import DelayProxy


async def test_a_connection_reset_upstream_ends_both_pipes_without_an_error() -> None:
    """Bytes still held for a server that reset the connection are dropped: writing them to
    the closed transport raised in the pipe's task (uvloop), an error nobody retrieved."""

    async def reset_at_once(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST, as a crashed peer sends

    server = await asyncio.start_server(reset_at_once, "127.0.0.1", 0)
    proxy = await DelayProxy(server.sockets[0].getsockname()[1], 0.2).start()
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        async with asyncio.timeout(30):
            while not proxy._tasks:  # both pipes start once the upstream connect is made
                writer.write(bytes(4096))
                await asyncio.sleep(0.01)
            pipes = set(proxy._tasks)
            while not all(task.done() for task in pipes):
                if not writer.is_closing():
                    writer.write(bytes(4096))  # more held for the server that is gone
                await asyncio.sleep(0.01)
        outcomes = await asyncio.gather(*pipes, return_exceptions=True)
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        writer.close()
        with contextlib.suppress(ConnectionError):  # the proxy dropped it: that is the point
            await writer.wait_closed()
    finally:
        await proxy.aclose()
        server.close()
        await server.wait_closed()
