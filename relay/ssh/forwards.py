"""Callback forwards: a link's two single-use listeners on the remote host's 127.0.0.1.

relay has two kinds of forward, named for the way a link goes (``docs/topology.md`` §3):

- callback (this module): the front end listens, the kernel calls back. Two remote listeners
  on the host lead to the front end's two ports. Kernels' main links, the new Dynamic
  method's links (the hook's ``callback``), and ``forward`` with direction ``callback``.
- expose (``relay.ssh.exposed``): something listens on the host, the front end connects.
  Two local listeners lead to it: the old Dynamic method (the hook's ``listen-pair``, whose
  remote ports mirror the local ones) and ``forward`` with direction ``expose``.


For each link relay asks the SSH server for two listeners on ``127.0.0.1`` port 0, so the
server picks free ports (never the front end's numbers, never a collision with another user or
with an old session that still holds a port). Each listener accepts exactly one connection,
which is carried to the front end's matching endpoint; any further connection is refused. As
soon as both channels are connected the listeners are cancelled, so nothing else on the remote
host can connect to them later.

A connection is carried only if the process that made it runs as the SSH login's user
(``relay.ssh.guard``, checked before the channel is accepted); any other is refused and the
listener keeps waiting for the real kernel. The bytes go through a ``relay.ssh.pipe.Pipe``,
which never loses what the front end writes before the channel is open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import asyncssh
import structlog

from relay.errors import ConnectFailed, ForwardRefused, RelayError
from relay.lite.linkname import LOOPBACK, Endpoint, LinkName
from relay.ssh.guard import PeerGuard, unreachable
from relay.ssh.linkpair import LinkChannel, LinkPair
from relay.ssh.pipe import Pipe

__all__ = [
    "CallbackForward",
    "RemoteSlot",
    "SparePool",
    "forwarding_refused",
    "hold_until_connected",
    "open_slots",
]

log = structlog.get_logger("relay.forwards")

LISTEN_HOST = LOOPBACK
WINDOW = 8 << 20  # a link's receive window: bulk transfers are not held up by window updates
# The largest channel packet we invite sshd to send us (asyncssh's default is 32 KiB): fewer,
# larger packets from the kernel cut asyncssh's per-packet Python cost (BENCHMARKS.md measures
# it), and 128 KiB stays well under OpenSSH's 256 KiB limit for a whole packet.
PKTSIZE = 128 << 10


def _already_connected() -> asyncssh.ChannelOpenError:
    return asyncssh.ChannelOpenError(
        asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "relay: this link endpoint is already connected"
    )


def forwarding_refused(host: str) -> ForwardRefused:
    return ForwardRefused(
        f"the SSH server on {host} refused remote port forwarding (its sshd_config probably "
        f"has AllowTcpForwarding no or local); relay needs remote forwards for the kernel to "
        f"connect back"
    )


class RemoteSlot:
    """A remote listener on the host's 127.0.0.1, port chosen by the server, allocated ahead
    and routed late: until ``route`` is set every connection to it is refused."""

    def __init__(self) -> None:
        self.listener: asyncssh.SSHListener | None = None
        self.route: Callable[[str, int], Any] | None = None
        self._closed = False

    @property
    def port(self) -> int:
        assert self.listener is not None
        return int(self.listener.get_port())

    def session_factory(self, orig_host: str, orig_port: int) -> Any:
        if self.route is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "relay: nothing is connected to this port yet",
            )
        return self.route(orig_host, orig_port)

    def close(self) -> None:
        self.route = None
        if self.listener is not None and not self._closed:
            self._closed = True
            self.listener.close()

    async def wait_closed(self) -> None:
        if self.listener is not None:
            await self.listener.wait_closed()


async def open_slots(conn: asyncssh.SSHClientConnection, n: int, host: str) -> list[RemoteSlot]:
    """``n`` remote listeners, requested at once (one round trip in all)."""
    slots = [RemoteSlot() for _ in range(n)]

    async def listen(slot: RemoteSlot) -> asyncssh.SSHListener:
        # asyncssh's create_server is made when this runs: a request cancelled before it
        # starts (the pool closing) leaves no never-awaited coroutine behind
        return await conn.create_server(
            slot.session_factory, LISTEN_HOST, 0, window=WINDOW, max_pktsize=PKTSIZE
        )

    results = await asyncio.gather(*(listen(slot) for slot in slots), return_exceptions=True)
    for slot, result in zip(slots, results, strict=True):
        if isinstance(result, asyncssh.SSHListener):
            slot.listener = result
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        for slot in slots:
            slot.close()
        if all(isinstance(f, asyncssh.ChannelListenError) for f in failures):
            raise forwarding_refused(host)
        raise failures[0]
    return slots


class SparePool:
    """Remote listeners allocated ahead, so that a launch spends no round trip on forwards.

    A launch takes what it needs; when the pool is short it waits for listeners already on
    their way (a refill, or a burst announced by ``relay connect --kernels``) rather than ask
    for its own, which would cost the same round trip again; only what nothing in flight will
    bring is asked for at once. The pool refills itself in the background."""

    MAX_WAITS = 4  # fills a launch waits for before asking for its own listeners

    def __init__(self, conn: asyncssh.SSHClientConnection, size: int, host: str) -> None:
        self._conn = conn
        self.size = size
        self._host = host
        self._free: list[RemoteSlot] = []
        self._fills: dict[asyncio.Task[None], int] = {}  # in flight: how many each brings
        self._trim: asyncio.TimerHandle | None = None
        self._closed = False
        self._closing: list[RemoteSlot] = []  # closed by ``close``: awaited by ``wait_closed``

    def __len__(self) -> int:
        return len(self._free)

    @property
    def coming(self) -> int:
        """Listeners asked for and not yet here."""
        return sum(self._fills.values())

    def _grab(self, n: int) -> list[RemoteSlot]:
        # The free list is only ever changed in place and never across an await, so a fill
        # finishing meanwhile cannot put back what was taken.
        taken = self._free[:n]
        del self._free[:n]
        return taken

    async def take(self, n: int) -> list[RemoteSlot]:
        taken = self._grab(n)
        try:
            for _ in range(self.MAX_WAITS):
                short = n - len(taken)
                if not short or not self._fills or self.coming < short:
                    break
                await asyncio.wait(list(self._fills), return_when=asyncio.FIRST_COMPLETED)
                taken += self._grab(short)
            if len(taken) < n:
                taken += await open_slots(self._conn, n - len(taken), self._host)
        except BaseException:
            for slot in taken:
                slot.close()
            raise
        self.refill()
        return taken

    async def reserve(self, n: int, linger_s: float) -> None:
        """At least ``n`` free listeners, the missing ones asked for at once (one round trip):
        for a burst announced ahead (``relay connect --kernels``), so that launches one after
        another (the Parallel package's Runs) spend no round trip each once the pool's own
        few are gone. What is still free after ``linger_s`` beyond the pool's size is closed."""
        missing = n - len(self._free) - self.coming
        counted = list(self._fills)  # on their way: counted, so waited for too
        if missing > 0 and not self._closed:
            own = self._fill(missing)
            await asyncio.shield(asyncio.wait([own, *counted]))
            if own.cancelled():  # the pool closed with its connection
                raise ConnectFailed(f"{self._host}: the SSH connection closed")
            own.result()  # else raises why our own listeners could not be had
        elif counted:
            await asyncio.shield(asyncio.wait(counted))
        if self._trim is not None:
            self._trim.cancel()
        self._trim = asyncio.get_running_loop().call_later(linger_s, self._shrink)

    def _shrink(self) -> None:
        self._trim = None
        while len(self._free) > self.size:
            self._free.pop().close()

    def refill(self) -> None:
        missing = self.size - len(self._free) - self.coming
        if not self._closed and missing > 0:
            # On failure, launches allocate (and report) what they need themselves.
            self._fill(missing)

    def _fill(self, n: int) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            self._open(n), name=f"spare-forwards:{self._host}"
        )
        self._fills[task] = n
        task.add_done_callback(self._filled)
        return task

    def _filled(self, task: asyncio.Task[None]) -> None:
        self._fills.pop(task, None)  # cancelled before it ran
        if task.cancelled():
            return
        exc = task.exception()  # a refill's failure is a launch's to report; a reserve's raised
        if exc is not None and not isinstance(exc, RelayError | asyncssh.Error | OSError):
            log.error(
                "allocating spare forwards failed unexpectedly", host=self._host, exc_info=exc
            )

    async def _open(self, n: int) -> None:
        me = asyncio.current_task()
        try:
            fresh = await open_slots(self._conn, n, self._host)
        finally:
            # no longer coming: in the same step as they join the free list (the done callback
            # would run a step later, with them counted twice in between)
            self._fills.pop(me, None)  # type: ignore[arg-type]
        if self._closed:
            for slot in fresh:
                slot.close()
            self._closing += fresh
        else:
            self._free.extend(fresh)

    def close(self) -> None:
        """No more spares: fills in flight cancelled (what they bring is closed on arrival),
        the free listeners closed."""
        self._closed = True
        if self._trim is not None:
            self._trim.cancel()
        for task in self._fills:
            task.cancel()
        for slot in self._free:
            slot.close()
        self._closing += self._free
        self._free.clear()

    async def wait_closed(self) -> None:
        """Return once the fills in flight have ended and the server has confirmed every
        listener closed (at once on a connection that is gone)."""
        await asyncio.gather(*self._fills, return_exceptions=True)
        closing, self._closing = self._closing, []
        for slot in closing:
            await slot.wait_closed()

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()


class _Channel(LinkChannel):
    """One endpoint of a link: its remote listener and the one connection it carries."""

    def __init__(self, role: str, target: Endpoint, slot: RemoteSlot) -> None:
        super().__init__(role)
        self.target = target
        self.slot = slot


class CallbackForward:
    """Remote listeners R1, R2 leading back to the front end's data and message ports."""

    def __init__(
        self,
        target: LinkName,
        slots: list[RemoteSlot],
        guard: PeerGuard,
        front_end_guard: PeerGuard,
    ) -> None:
        self.target = target
        self._guard = guard  # the remote host's: who connects to its listeners
        self._front_end_guard = front_end_guard  # this machine's: whose listener we reach
        data, message = slots
        self._pair = LinkPair(
            _Channel("data", target.data, data), _Channel("message", target.message, message)
        )
        self._channels = self._pair.channels
        self.connected = self._pair.connected
        self.name = LinkName.loopback(data.port, message.port)  # what the kernel uses
        # set once the server confirmed both listeners cancelled (after both channels connect)
        self.listeners_gone = asyncio.Event()
        self._cancelling: asyncio.Future[None] | None = None
        self._in_flight = 0  # connections that arrived and are being admitted or connected
        # a connection to a listener was refused as it closed before it could be checked
        self.closed_unchecked = False
        self._settled = asyncio.Event()
        self._settled.set()
        for ch in self._channels:
            ch.slot.route = self._router(ch)

    @classmethod
    async def open(
        cls,
        conn: asyncssh.SSHClientConnection,
        target: LinkName,
        host: str,
        guard: PeerGuard,
        front_end_guard: PeerGuard,
        pool: SparePool | None = None,
    ) -> CallbackForward:
        """Two listeners (from the spare pool when there is one) leading back to ``target``."""
        guard.require()
        slots = await pool.take(2) if pool is not None else await open_slots(conn, 2, host)
        return cls(target, slots, guard, front_end_guard)

    def _router(self, ch: _Channel) -> Callable[[str, int], Any]:
        def route(orig_host: str, orig_port: int) -> Any:
            if ch.taken:
                raise _already_connected()
            return self._tracked(ch, orig_host, orig_port)

        return route

    async def _tracked(self, ch: _Channel, orig_host: str, orig_port: int) -> Any:
        self._in_flight += 1
        self._settled.clear()
        try:
            return await self._accept(ch, orig_host, orig_port)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._settled.set()

    async def settled(self) -> None:
        """Return once no arrived connection is still being admitted or connected: a kernel
        that connects and exits at once has its exit reported before its channels finish
        opening, and must not be mistaken for one that never connected."""
        await self._settled.wait()

    def _closed_unchecked(self) -> None:
        self.closed_unchecked = True

    async def _accept(self, ch: _Channel, orig_host: str, orig_port: int) -> Any:
        """A connection arrived on ``ch``'s remote listener from ``orig_host:orig_port``."""
        link = f"{ch.role} of {self.target}"
        if not await self._guard.admit(
            orig_host, orig_port, ch.slot.port, link, closing=self._closed_unchecked
        ):
            # the listener stays open: the real kernel may still be starting
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "relay: this link belongs to another user",
            )
        if ch.taken:  # the real one won the race while this one was checked
            raise _already_connected()
        ch.taken = True
        pipe = Pipe()
        try:
            # The front end may write the instant it accepts: the pipe keeps those bytes
            # until the channel is open (asyncssh's own forwarder dropped them).
            await asyncio.get_running_loop().create_connection(
                pipe.tcp_protocol, ch.target.host, ch.target.port
            )
        except OSError as exc:
            self._pair.fail(unreachable(ch.target.host, ch.target.port, link, exc))
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"relay: front end unreachable: {exc}"
            ) from None
        if (refused := self._front_end_guard.refusal(pipe.tcp.transport, link)) is not None:
            pipe.close()  # nothing was given to it, nor taken from it
            self._pair.fail(refused)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, "relay: the front end's port is another user's"
            )
        if self._pair.joined(ch, pipe):
            self._cancelling = asyncio.ensure_future(self.listeners_closed())
        return pipe.channel_session()

    def close_listeners(self) -> None:
        """Cancel both remote listeners; connected channels stay up."""
        for ch in self._channels:
            ch.slot.close()

    async def listeners_closed(self) -> None:
        """Return once the server has confirmed both listeners are cancelled."""
        self.close_listeners()
        for ch in self._channels:
            await ch.slot.wait_closed()
        self.listeners_gone.set()

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for ch, ep in zip(self._channels, (self.name.data, self.name.message), strict=True):
            if ch.pipe is not None and not ch.pipe.closed.done():
                state = "connected"
            elif ch.connected_at is not None:
                state = "closed"
            else:
                state = "listening" if ch.slot.route is not None else "closed"
            out.append(
                {
                    "role": ch.role,
                    "remote": str(ep),
                    "target": f"{ch.target.host}:{ch.target.port}",
                    "state": state,
                }
            )
        return out

    async def peers_closed(self) -> None:
        """Return once the channels that were connected have both closed (at either end)."""
        await self._pair.peers_closed()

    async def aclose(self) -> None:
        """Release everything: listeners and connected channels."""
        self.close_listeners()
        if self._cancelling is not None:
            await asyncio.gather(self._cancelling, return_exceptions=True)
        await self._pair.drained()
        self._pair.close_pipes()
        for ch in self._channels:
            await ch.slot.wait_closed()
        await self._pair.wait_closed()
        self._pair.abandon()


class _Forward(Protocol):
    connected: asyncio.Future[None]

    def close_listeners(self) -> None: ...

    async def aclose(self) -> None: ...


async def hold_until_connected(fwd: _Forward, timeout_s: float) -> bool:
    """Keep a forward's listeners until both channels connect (then close the listeners and
    return True), at most ``timeout_s``; if nobody came, or it failed, release it all."""
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(fwd.connected)
    except (TimeoutError, ConnectionError, RelayError, asyncio.CancelledError):
        await fwd.aclose()
        return False
    fwd.close_listeners()
    return True
