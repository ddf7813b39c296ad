"""A TCP proxy of the simulator's own (the tests' and `make demo`'s) that fails the way
real network paths do: it can black-hole its connections (drop everything, close nothing: a
dead Wi-Fi, a suspended laptop, an expired NAT entry), reset them (a network change, a VPN
reconnect: RST both ways), refuse new ones (the path is down and says so), strand the open
ones (silent for good while new ones pass: a laptop that slept past its NAT entries), and
then restore itself. It can also be slow (``rate``: bytes per second each way, a thin VPN
or a hotel's Wi-Fi), so that what is in flight takes seconds to arrive. Its upstream may be
in another network namespace (``netns_pid``: the test suite's ThrowawaySSHD(netns=True),
whose host has a loopback of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Self

from relay.sim import nsbridge


class FaultProxy:
    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", *, netns_pid: int | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self.netns_pid = netns_pid
        self.blackholed = False
        self.refusing = False
        self.accepted = 0  # connections carried upstream, in all
        self.refused = 0  # connections reset at once by refuse(), in all
        self._refused_one = asyncio.Event()
        self.swallowed = 0  # connections taken while black-holed: dead for good
        self.swallowed_one = asyncio.Event()  # cleared by blackhole(): one since
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stranded: set[asyncio.StreamWriter] = set()  # their bytes are lost: strand()
        self.port = 0
        self.rate: float | None = None  # bytes per second, each way and each connection

    async def start(self, sock: socket.socket | None = None) -> Self:
        """Listening on 127.0.0.1 (a port of its own), or on ``sock``, a bound socket of the
        caller's: an address that refused connections until now (nothing listened there)."""
        if sock is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        else:
            self._server = await asyncio.start_server(self._accept, sock=sock)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def blackhole(self) -> None:
        self.blackholed = True
        self.swallowed_one.clear()

    def strand(self) -> None:
        """Every open connection goes silently dead for good; new ones are carried (a
        laptop's sleep: its NAT entries expired, or it woke on another network)."""
        self._stranded |= self._writers

    def restore(self) -> None:
        self.blackholed = False
        self.refusing = False

    def refuse(self) -> None:
        """New connections are reset at once (the far end says no); open ones carry on."""
        self.refusing = True

    async def refusals(self, count: int, timeout_s: float) -> None:
        """Until ``count`` connections in all have been refused (bounded by ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while self.refused < count:
                self._refused_one.clear()  # nothing runs between the count and this
                await self._refused_one.wait()

    def reset(self) -> None:
        """Every open connection is reset, both ways, as a network change does."""
        for w in list(self._writers):
            _rst(w)
        self._writers.clear()

    def reset_client_side(self) -> None:
        """Every open connection is reset on the client's side alone, and the server's side
        goes silently dead: the client's network changed (a Wi-Fi switch), and nothing
        tells the server, which waits for its keepalive or TCP's retries to give up."""
        self._stranded |= self._writers
        for w in list(self._writers):
            if w.get_extra_info("sockname")[1] == self.port:  # an accepted end: the client's
                _rst(w)
                self._writers.discard(w)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()  # ended by aclose too, while the loop still runs
        if this is not None:
            self._tasks.add(this)
            this.add_done_callback(self._tasks.discard)
        if self.blackholed:  # SYNs are lost too: never connect upstream, not even restored
            self._writers.add(writer)  # (a VPN's old route, a NAT entry gone: it stays dead)
            self.swallowed += 1
            self.swallowed_one.set()
            return
        if self.refusing:
            _rst(writer)
            self.refused += 1
            self._refused_one.set()
            return
        try:
            if self.netns_pid is None:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            else:
                sock = await _connect_in(self.netns_pid, self.target)
                up_reader, up_writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            # refused upstream, or cancelled: the accepted end is ours to close (Python
            # 3.11's start_server closes it only for an exception, not a cancellation; left
            # to the cyclic GC, its socket's ResourceWarning failed a later, unrelated test)
            writer.close()
            raise
        self.accepted += 1
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if self.blackholed or dst in self._stranded:
                    continue  # lost on the way
                dst.write(data)
                await dst.drain()
                if self.rate:  # a slow path: this chunk's time on the wire
                    await asyncio.sleep(len(data) / self.rate)
            if not self.blackholed and dst not in self._stranded:  # nor is a FIN
                dst.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self._writers:
            w.close()
        for w in self._writers:
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()


async def _connect_in(pid: int, target: tuple[str, int]) -> socket.socket:
    """A TCP connection made in PID's network namespace, by a thread of its own (setns moves
    only the calling thread, and a pool's thread would stay there)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[socket.socket] = loop.create_future()

    def settle(result: socket.socket | OSError) -> None:
        if done.cancelled():
            if isinstance(result, socket.socket):
                result.close()
        elif isinstance(result, OSError):
            done.set_exception(result)
        else:
            done.set_result(result)

    def work() -> None:
        result: socket.socket | OSError
        try:
            nsbridge.enter(pid)
            result = socket.create_connection(target, timeout=10)
            result.setblocking(False)
        except OSError as exc:
            result = exc
        loop.call_soon_threadsafe(settle, result)

    threading.Thread(target=work, name="faultproxy-netns", daemon=True).start()
    try:
        return await done
    except asyncio.CancelledError:  # cancelled after settle() gave the socket, before we ran
        if done.done() and not done.cancelled() and done.exception() is None:
            done.result().close()
        raise


def _rst(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # SO_LINGER 0: the close sends RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()
