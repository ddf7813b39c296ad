"""A fake Mathematica front end / controller kernel (docs/topology.md §3-5).

- ``ListeningLink.create()`` is ``LinkCreate[LinkMode -> Listen, LinkProtocol -> "TCPIP"]``:
  two listening ports on the chosen host address; its name is ``P1@H,P2@H``.
- ``launch_command()`` fills a kernel configuration's Launch command the way the front end
  does (backquoted words, §3); ``run_controller()`` runs it and keeps it running, since
  the front end needs the launch command to stay alive until the kernel quits.
- ``run_remote_command()`` fills ``$RemoteCommand`` slots `1`..`4` and runs the result the way
  the Parallel package's ``Run[]`` does: through the shell, under a time limit
  (``$MathLinkTimeout``, 15 s by default), a non-zero status being a failed launch (§4).
- ``launch_remote()`` is ``LaunchRemote`` for ``RemoteMachine[host, template, n]`` exactly
  (§4): all n listening links first, then ``Run`` of the filled template once per link,
  one after another, and only after the last ``Run`` a wait for all n kernels to connect.
- ``ListeningLink.accept()`` waits for the kernel's two connections (in either order) and
  returns a ``KernelLink`` that exchanges traffic on both channels.
- ``ListeningLink.create()`` is, by default, a front end that speaks first: neither side of a
  link is documented to write first, and the listening side may write the moment it accepts
  (§1). It writes an evaluation on the data channel and an urgent message on the
  message channel inside ``connection_made``, before its own code has even seen the
  connection, and ``KernelLink.start`` checks that the kernel answered exactly those bytes
  (``write_first=False`` waits for the kernel's first frame instead).
- It can be ruder still, by option, as far as the reference allows (topology §1, §5):
  ``ListeningLink.create(at_accept="close"|"reset")`` ends each connection at accept (after
  what it writes first, ``greetings`` to choose those bytes), as a front end whose launch was
  cancelled does; ``KernelLink.reset()`` ends a link with a RST, as a crashed front end with
  unread bytes does; ``KernelLink.half_close()`` ends the front end's output on the data
  channel and goes on reading. The reference promises the kernel nothing of its front end's
  lifetime: "exits when its link closes" (§5) is all, so the link may close, either way TCP
  closes, at any moment, at accept too.
- ``KernelLink.old_method_links()`` (up to 11.0 the front end is the connecting side) connects
  each link's two channels in an order it picks, since "the order of the two connects is not
  documented: a relay must not depend on it" (§1): ``order`` data, message, parallel or
  random (the default; ``RELAY_SIM_SEED`` seeds the choice, which ``connect_orders`` records),
  ``gap_s`` between them; and, as the main link's front end does unless
  ``write_first=False``, it writes on each channel the moment it is connected, before the
  kernel has said anything ("Which side writes first ... is not documented", §1).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import itertools
import json
import os
import random
import secrets
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.lite.linkname import Endpoint, LinkName
from relay.sim import wire
from relay.sim.templates import fill, fill_remote_command

__all__ = [
    "KernelLink",
    "ListeningLink",
    "RemoteLaunch",
    "RunResult",
    "launch_command",
    "launch_remote",
    "run_controller",
    "run_remote_command",
]

MATHLINK_TIMEOUT_S = 15.0  # Parallel`Settings`$MathLinkTimeout default (§4)
MLOPEN_ARGS = "-LinkMode Listen -LinkProtocol TCPIP -LinkOptions MLDontInteract -LinkHost 127.0.0.1"

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
CONNECT_ORDERS = ("data", "message", "parallel")
# what the simulator leaves to chance, reproducible with RELAY_SIM_SEED
_chance = random.Random(os.environ.get("RELAY_SIM_SEED"))  # noqa: S311 (not a secret)
_LINGER_0 = struct.pack("ii", 1, 0)  # struct linger: on, 0 s


async def _open(end: Endpoint, first: bytes) -> Stream:
    """A connection to ``end``, writing ``first`` on it the moment it is made."""
    reader, writer = await asyncio.open_connection(end.host, end.port)
    if first:
        writer.write(first)
    return reader, writer


def _greetings() -> tuple[bytes, bytes]:
    """What a write-first front end writes at once: an evaluation of 1 B-64 KiB of random bytes
    on the data channel and an Interrupt with a random argument on the message channel."""
    return (
        wire.data_frame(wire.ECHO, secrets.token_bytes(1 + secrets.randbelow(64 * 1024))),
        wire.message_frame(wire.INTERRUPT, secrets.randbits(32)),
    )


def _reset(writer: asyncio.BaseTransport | asyncio.StreamWriter) -> None:
    """Close with a RST (SO_LINGER on, 0 s), as a process that dies with unread bytes does."""
    transport = writer.transport if isinstance(writer, asyncio.StreamWriter) else writer
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
    transport.abort()  # type: ignore[attr-defined]


async def read_data(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind, length = wire.data_header(await reader.readexactly(wire.DATA_HEADER))
    return kind, await reader.readexactly(length)


async def read_message(reader: asyncio.StreamReader) -> tuple[int, int]:
    return wire.message(await reader.readexactly(wire.MESSAGE_SIZE))


class LostBytes(ValueError):
    """What the front end wrote first did not come back as the kernel must answer it."""


class KernelLink:
    """The front end's side of a connected link: data and message channels."""

    def __init__(
        self, data: Stream, message: Stream, greetings: tuple[bytes, bytes] | None = None
    ) -> None:
        self._dr, self._dw = data
        self._mr, self._mw = message
        self.hello: dict[str, Any] = {}
        self.parallel_names: tuple[str, str] | None = None
        self.messages: list[str] = []  # what the kernel printed (wire.MESSAGE), in order
        self._listening: list[ListeningLink] = []
        self._greetings = greetings  # what a write-first front end sent on accepting
        self._greeting_due = False  # its answer has not been read yet
        self._stash: list[tuple[int, bytes]] = []
        self.connect_orders: list[str] = []  # how old_method_links connected each link

    def reset(self) -> None:
        """End the link with a RST on both channels, as a crashed front end does."""
        for writer in (self._dw, self._mw):
            _reset(writer)

    def half_close(self) -> None:
        """End the front end's output on the data channel (a FIN) and go on reading."""
        self._dw.write_eof()

    async def _next(self) -> tuple[int, bytes]:
        """The next data-channel frame that is not a message the kernel printed."""
        while True:
            kind, payload = await read_data(self._dr)
            if kind != wire.MESSAGE:
                return kind, payload
            self.messages.append(payload.decode(errors="replace"))

    async def start(self) -> None:
        kind, payload = await read_data(self._dr)
        if kind != wire.HELLO:
            raise LostBytes(f"expected HELLO from the kernel, got frame type {kind}")
        self.hello = json.loads(payload)
        if self._greetings is not None:
            message = self._greetings[1]
            if wire.message_frame(*await read_message(self._mr)) != message:
                raise LostBytes("the urgent message the front end wrote first was lost")
            # The answer to the early evaluation normally comes next; an old-method kernel
            # sends its OpenParallelLinksPacket first.
            kind, payload = await self._next()
            if kind == wire.RETURN:
                self._check_greeting(payload)
            else:
                self._greeting_due = True
                self._stash.append((kind, payload))

    def _check_greeting(self, answer: bytes) -> None:
        assert self._greetings is not None
        self._greeting_due = False
        if wire.data_frame(wire.ECHO, answer) != self._greetings[0]:
            raise LostBytes("the bytes the front end wrote first on the data channel were lost")

    async def _frame(self) -> tuple[int, bytes]:
        """The next data-channel frame; the early evaluation's answer is checked on the way."""
        if self._stash:
            return self._stash.pop(0)
        while True:
            kind, payload = await self._next()
            if self._greeting_due and kind == wire.RETURN:
                self._check_greeting(payload)
                continue
            return kind, payload

    async def evaluate(self, kind: int, payload: bytes = b"") -> bytes:
        self._dw.write(wire.data_frame(kind, payload))
        await self._dw.drain()
        got, result = await self._frame()
        if got != wire.RETURN:
            raise ValueError(f"expected RETURN, got frame type {got}")
        return result

    async def echo(self, payload: bytes) -> bytes:
        return await self.evaluate(wire.ECHO, payload)

    async def urgent(self, code: int, arg: int = 0) -> tuple[int, int]:
        """Send an urgent message on the message channel; return the kernel's answer."""
        self._mw.write(wire.message_frame(code, arg))
        await self._mw.drain()
        return await read_message(self._mr)

    async def send(self, kind: int, payload: bytes = b"") -> None:
        self._dw.write(wire.data_frame(kind, payload))
        await self._dw.drain()

    async def read_return(self) -> bytes:
        got, result = await self._frame()
        if got != wire.RETURN:
            raise ValueError(f"expected RETURN, got frame type {got}")
        return result

    async def open_parallel_links_packet(self, timeout_s: float = 30.0) -> tuple[str, str]:
        """Up to 11.0: the names the kernel sends (``OpenParallelLinksPacket``)."""
        async with asyncio.timeout(timeout_s):
            kind, payload = await self._frame()
        if kind != wire.OPEN_PARALLEL_LINKS:
            raise ValueError(f"expected OpenParallelLinksPacket, got frame type {kind}")
        service, preemptive, _protocol = json.loads(payload)
        self.parallel_names = (service, preemptive)
        return service, preemptive

    async def old_method_links(
        self,
        timeout_s: float = 30.0,
        *,
        order: str = "random",
        gap_s: float = 0.0,
        write_first: bool | None = None,
    ) -> tuple[KernelLink, KernelLink]:
        """Up to 11.0: the kernel sends the names of the two links it created; the front end
        connects to them, service link first, each link's channels in ``order`` (the module's
        docstring), writing first on each unless ``write_first`` is False (None: as this
        link's own front end does)."""
        names = await self.open_parallel_links_packet(timeout_s)
        rude = self._greetings is not None if write_first is None else write_first
        links = []
        async with asyncio.timeout(timeout_s):
            for name in names:
                link = LinkName.parse(name)
                greetings = _greetings() if rude else None
                chosen = _chance.choice(CONNECT_ORDERS) if order == "random" else order
                self.connect_orders.append(chosen)
                ends = {"data": link.data, "message": link.message}
                first = dict(zip(ends, greetings or (b"", b""), strict=True))
                if chosen == "parallel":
                    data, message = await asyncio.gather(
                        *(_open(ends[role], first[role]) for role in ends)
                    )
                else:
                    opened: dict[str, Stream] = {}
                    for role in ("data", "message") if chosen == "data" else ("message", "data"):
                        if opened:
                            await asyncio.sleep(gap_s)
                        opened[role] = await _open(ends[role], first[role])
                    data, message = opened["data"], opened["message"]
                kl = KernelLink(data, message, greetings)
                await kl.start()
                links.append(kl)
        return links[0], links[1]

    async def new_method_links(
        self, host: str = "127.0.0.1", timeout_s: float = 30.0
    ) -> tuple[KernelLink, KernelLink]:
        """From 11.1: the front end creates two listening links on its own machine and sends
        their names inside the main link; the kernel connects to them and answers."""
        rude = self._greetings is not None
        service = await ListeningLink.create(host, write_first=rude)
        preemptive = await ListeningLink.create(host, write_first=rude)
        self.parallel_names = (str(service.name), str(preemptive.name))
        self._listening = [service, preemptive]
        await self.send(
            wire.PARALLEL_LINK_NAMES, json.dumps([*self.parallel_names, "TCPIP"]).encode()
        )
        accepting = asyncio.gather(service.accept(timeout_s), preemptive.accept(timeout_s))
        try:
            async with asyncio.timeout(timeout_s):
                result = await self.read_return()
                if result != b"linked":
                    raise ValueError(
                        f"the kernel could not link: {result.decode(errors='replace')}"
                    )
                links = await accepting
        finally:
            accepting.cancel()
            await asyncio.gather(accepting, return_exceptions=True)
            for listening in self._listening:
                listening.close()
        return links[0], links[1]

    async def user_link(self) -> str:
        """User code's own ``LinkCreate[..., LinkMode -> Connect]`` after start-up."""
        return (await self.evaluate(wire.USER_LINK)).decode()

    async def sink(self, total: int, chunk: int = 1 << 20) -> int:
        """Send ``total`` bytes to the kernel; returns the count it confirms (benchmarks)."""
        block = bytes(chunk)
        left = total
        while left > 0:
            self._dw.write(wire.data_frame(wire.SINK, block[: min(left, chunk)]))
            left -= chunk
            await self._dw.drain()
        return int(await self.evaluate(wire.SINK))

    async def source(self, total: int) -> int:
        """Have the kernel send ``total`` bytes; returns how many arrived (benchmarks)."""
        await self.send(wire.SOURCE, str(total).encode())
        got = 0
        while chunk := await self.read_return():
            got += len(chunk)
        return got

    async def quit(self, status: int = 0) -> None:
        await self.send(wire.QUIT, str(status).encode())

    async def closed(self) -> None:
        """Wait until the kernel closes the data channel."""
        with contextlib.suppress(ConnectionError):
            while await self._dr.read(65536):
                pass

    async def aclose(self) -> None:
        for listening in self._listening:
            listening.close()
        for w in (self._dw, self._mw):
            w.close()
        for w in (self._dw, self._mw):
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()


class _WritesFirst(asyncio.StreamReaderProtocol):
    """A listening side that writes the instant the TCP connection is accepted."""

    def __init__(self, first: bytes, callback: Any) -> None:
        super().__init__(asyncio.StreamReader(), callback)
        self._first = first

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self._first)  # type: ignore[attr-defined]
        super().connection_made(transport)


class ListeningLink:
    """``LinkCreate`` in Listen mode: two ports, each accepting the kernel's one connection."""

    def __init__(
        self,
        host: str,
        write_first: bool = True,
        at_accept: str | None = None,
        greetings: tuple[bytes, bytes] | None = None,
    ) -> None:
        if at_accept not in (None, "close", "reset"):
            raise ValueError(f"at_accept is close, reset or None, not {at_accept!r}")
        self.host = host
        self.at_accept = at_accept  # each connection ends at accept: a FIN or a RST
        self._servers: list[asyncio.Server] = []
        loop = asyncio.get_running_loop()
        self._accepted: list[asyncio.Future[Stream]] = [loop.create_future(), loop.create_future()]
        self.extra_connections = 0
        self.handed_out: KernelLink | None = None  # what accept() gave
        self.greetings = greetings if greetings is not None else None
        if write_first and greetings is None:
            self.greetings = _greetings()

    @classmethod
    async def create(
        cls,
        host: str = "127.0.0.1",
        *,
        write_first: bool = True,
        at_accept: str | None = None,
        greetings: tuple[bytes, bytes] | None = None,
    ) -> ListeningLink:
        """A listening link; by default one that writes first, as a front end may;
        ``greetings``: what it writes (data, message), instead of an evaluation and an
        Interrupt; ``at_accept``: see the module's docstring."""
        self = cls(host, write_first, at_accept, greetings)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        loop = asyncio.get_running_loop()
        for i in range(2):
            if self.greetings is None:
                server = await asyncio.start_server(self._acceptor(i), host, 0, family=family)
            else:
                factory = functools.partial(_WritesFirst, self.greetings[i], self._acceptor(i))
                server = await loop.create_server(factory, host, 0, family=family)
            self._servers.append(server)
        return self

    def _acceptor(self, i: int) -> Any:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self.at_accept is not None:
                self.extra_connections += self._accepted[i].done()
                if not self._accepted[i].done():
                    self._accepted[i].set_exception(ConnectionResetError("ended at accept"))
                    self._accepted[i].exception()  # retrieved: nobody need await it
                if self.at_accept == "reset":
                    _reset(writer)
                else:
                    writer.close()
                return
            if self._accepted[i].done():
                self.extra_connections += 1
                writer.close()
                return
            self._accepted[i].set_result((reader, writer))

        return accepted

    @property
    def name(self) -> LinkName:
        ports = [s.sockets[0].getsockname()[1] for s in self._servers]
        return LinkName.parse(f"{ports[0]}@{self.host},{ports[1]}@{self.host}")

    async def connected(self, timeout_s: float = 30.0) -> None:
        """Both of the kernel's TCP connections have arrived (benchmarks time this)."""
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(asyncio.shield(f) for f in self._accepted))

    async def accept(self, timeout_s: float = 30.0) -> KernelLink:
        async with asyncio.timeout(timeout_s):
            data, message = await asyncio.gather(*self._accepted)
        link = self.handed_out = KernelLink(data, message, self.greetings)
        async with asyncio.timeout(timeout_s):
            await link.start()
        return link

    def close(self) -> None:
        """Stop listening (the front end gave up or the link is connected). Connections
        already handed to a KernelLink stay open; half-accepted ones are dropped."""
        for s in self._servers:
            s.close()
        for fut in self._accepted:
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled() and fut.exception() is None and self.handed_out is None:
                fut.result()[1].close()


def launch_command(template: str, link: LinkName, **extra: str) -> str:
    """Fill a Launch command as the front end does (backquoted words, §3)."""
    values = {
        "linkname": str(link),
        "dataport": str(link.data.port),
        "messageport": str(link.message.port),
        "ipaddress": link.data.host,
        "username": getpass.getuser(),
        "machinename": socket.gethostname(),
        "homeDirectory": os.path.expanduser("~"),
        **extra,
    }
    return fill(template, values)


async def run_controller(
    command: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """Start a filled Launch command; the front end keeps it running until the kernel quits."""
    return await asyncio.create_subprocess_shell(
        command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )


@dataclass(frozen=True)
class RunResult:
    status: int
    stdout: str
    stderr: str


async def run_remote_command(
    template: str,
    *,
    host: str,
    link: LinkName,
    user: str = "",
    timeout_s: float = MATHLINK_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> RunResult:
    """``Run[]`` of a filled ``$RemoteCommand`` under ``$MathLinkTimeout`` (§4)."""
    command = fill_remote_command(template, host=host, linkname=str(link), user=user)
    proc = await asyncio.create_subprocess_shell(
        command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return RunResult(proc.returncode, out.decode(), err.decode())


@dataclass
class RemoteLaunch:
    """One kernel of ``launch_remote``: its link, how its ``Run`` went, and when (as event
    numbers, so tests can check order without timing) its Run returned and its link connected."""

    link: ListeningLink
    run: RunResult | None = None
    error: str | None = None
    run_returned: int | None = None
    connected: int | None = None
    kernel: KernelLink | None = None
    overran: bool = False  # Run took longer than $MathLinkTimeout (it is not cut short)


async def launch_remote(
    template: str,
    *,
    host: str,
    n: int,
    user: str = "",
    timeout_s: float = MATHLINK_TIMEOUT_S,
    env: dict[str, str] | None = None,
    link_host: str = "127.0.0.1",
    write_first: bool = True,
    runs_returned: Callable[[], object] | None = None,
) -> list[RemoteLaunch]:
    """``LaunchRemote`` as ``SubKernels`RemoteKernels`` runs it (§4).

    1. ``Table[LinkCreate[LinkProtocol -> "TCPIP", LinkHost -> lh], {n}]``: n listening links;
    2. ``Run[filled template]`` once per link, **one after another**, each inside
       ``TimeConstrained[..., $MathLinkTimeout]``, which (the package's own comment says
       "this does not work") cannot cut an external process short: a slow Run is waited out
       and only marked ``overran``; a non-zero status is ``LaunchRemote::rsh`` and that
       link is given up;
    3. then ``initLink``/``kernelInit`` for all of them: wait for each kernel to connect
       (``$MathLinkTimeout`` each) and read its first packet.
    Bounded: a Run is killed after ten times the time limit, so a test cannot hang here.
    ``runs_returned`` is called between steps 2 and 3 (a test opens its kernels' gate there)."""
    sequence = itertools.count()
    launches = [
        RemoteLaunch(await ListeningLink.create(link_host, write_first=write_first))
        for _ in range(n)
    ]

    async def watch(launch: RemoteLaunch) -> None:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await launch.link.connected(10 * timeout_s)
            launch.connected = next(sequence)

    watchers = [asyncio.ensure_future(watch(launch)) for launch in launches]
    try:
        for launch in launches:
            started = asyncio.get_running_loop().time()
            try:
                launch.run = await run_remote_command(
                    template,
                    host=host,
                    link=launch.link.name,
                    user=user,
                    timeout_s=10 * timeout_s,
                    env=env,
                )
            except TimeoutError:
                launch.error = f"Run did not return within {10 * timeout_s:g} s"
            launch.run_returned = next(sequence)
            launch.overran = asyncio.get_running_loop().time() - started > timeout_s
            if launch.run is not None and launch.run.status != 0:
                launch.error = (
                    f"LaunchRemote::rsh: status {launch.run.status}: "
                    f"{launch.run.stderr.strip()[:300]}"
                )
            if launch.error:
                launch.link.close()
        if runs_returned is not None:
            runs_returned()
        for launch, watcher in zip(launches, watchers, strict=True):
            if launch.error:
                continue
            try:
                launch.kernel = await launch.link.accept(timeout_s)
            except (TimeoutError, OSError, ValueError) as exc:
                launch.error = f"the kernel did not connect within {timeout_s:g} s ({exc!r})"
                launch.link.close()
            else:
                await watcher  # it saw the same connections: let it record their place
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return launches
