"""A user-space delay relay: emulated round-trip time between an SSH client and sshd.

This machine kind's kernel has no ``netem`` qdisc, so the round trip is made here: every chunk
is held for RTT/2 in each direction (order kept, and reading pauses when too much is held),
and the upstream connect is delayed by RTT/2. ``calibrate()`` measures a plain TCP connect and
a 100-byte ping-pong through it, to print beside the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

HIGH_WATER = 8 << 20  # bytes held per direction before reading pauses


async def until(due: float) -> None:
    """Wait until ``time.monotonic()`` reaches ``due``. A loop's timer may fire early
    (uvloop's count whole milliseconds from a time cached at the top of its iteration), so
    the clock itself is asked: a round trip through the proxy is never shorter than the RTT
    it emulates."""
    while (left := due - time.monotonic()) > 0:
        await asyncio.sleep(left)


class DelayProxy:
    def __init__(self, target_port: int, rtt_s: float) -> None:
        self.target_port = target_port
        self.half = rtt_s / 2
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.half:
            await until(time.monotonic() + self.half)  # the SYN's way there
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        held = 0
        room = asyncio.Event()
        room.set()

        async def deliver() -> None:
            nonlocal held
            while True:
                due, data = await queue.get()
                await until(due)
                if not data:
                    dst.close()
                    return
                held -= len(data)
                if held < HIGH_WATER:
                    room.set()
                if dst.is_closing():
                    continue  # its peer is gone (reset, closed): what was held for it is dropped
                dst.write(data)
                await dst.drain()

        deliverer = asyncio.ensure_future(deliver())
        try:
            while True:
                await room.wait()
                data = await src.read(1 << 16)
                queue.put_nowait((time.monotonic() + self.half, data))
                if not data:
                    break
                held += len(data)
                if held >= HIGH_WATER:
                    room.clear()
            await deliverer
        except (ConnectionError, asyncio.CancelledError):
            deliverer.cancel()
            dst.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def calibrate(rtt_s: float, rounds: int = 20) -> dict[str, float]:
    """Connect time and 100-byte ping-pong through a DelayProxy to a local echo server."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = await DelayProxy(server.sockets[0].getsockname()[1], rtt_s).start()
    try:
        connects, pings = [], []
        for _ in range(3):
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"x")
            await reader.readexactly(1)  # the connection is usable end to end
            connects.append(time.perf_counter() - started)
            for _ in range(rounds):
                started = time.perf_counter()
                writer.write(bytes(100))
                await reader.readexactly(100)
                pings.append(time.perf_counter() - started)
            writer.close()
            await writer.wait_closed()
        return {
            "connect_ms": statistics.median(connects) * 1000,
            "pingpong_ms": statistics.median(pings) * 1000,
        }
    finally:
        await proxy.aclose()
        server.close()
