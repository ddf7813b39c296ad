"""``relay-sim-kernel``: a fake Wolfram kernel executable. Standard library only.

Behaviour, with its source in the topology reference:
- accepts the kernel flags of section 2, case-insensitively, ignoring unknown ones
  (``-subkernel``, ``-noinit``, ``-initfile``, ``-pacletreadonly``, ...);
- ``-LinkMode Connect``: opens both TCP connections of ``-LinkName P1@H1,P2@H2`` (section 1).
  The order of the two connects is not documented, so the simulator varies it: data first,
  message first, or both at once (``RELAY_SIM_CONNECT_ORDER`` = data|message|parallel|random,
  default random), and a relay must work with all three;
- ``-LinkMode Listen``: binds both ports on ``-LinkHost`` (default 127.0.0.1) and prints
  ``Link created on: NAME`` unless ``-LinkOptions`` has MLDontInteract (256) (section 1);
- serves evaluations on the data channel (``relay.sim.wire``) and answers urgent messages on
  the message channel while the data channel may be busy: Interrupt is acknowledged, Abort
  cuts a busy evaluation short, Terminate ends the kernel (section 1);
- exits when its main link closes (section 5), with the status a ``QUIT`` frame asked for;
- acts out the service and preemptive links of section 3 when relay's hook is in its
  environment (``RELAY_HOOK_PORT``/``RELAY_HOOK_TOKEN``), doing exactly the requests
  RelayKernelInit.wl does (protocol: ``relay.hook``). ``-simversion V`` sets the simulated
  ``$VersionNumber`` (default 14.1): up to 11.0 the kernel creates two listening links at
  start-up through ``listen-pair`` and sends their names (``OPEN_PARALLEL_LINKS``, the old
  method); from 11.1 it waits for the front end's ``PARALLEL_LINK_NAMES`` and connects to
  them through ``callback`` (the new method). Every link is served concurrently, so a busy
  main link does not hold up the preemptive link (Dynamic).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import sys
from collections.abc import Sequence

from relay import hook
from relay.kernelcmd import KernelFlags, parse_flags
from relay.linkname import LinkName
from relay.sim import wire

__all__ = ["HookClient", "main"]

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class HookRefused(Exception):
    pass


class HookClient:
    """The kernel's side of relay's hook protocol (``relay.hook``)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token

    async def request(self, op: str, argument: str = "-") -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(hook.request_line(self.token, op, argument).encode())
            await writer.drain()
            reply = (await reader.read()).decode()  # relay closes after its one reply line
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        ok, next_token, text = hook.parse_reply(reply)
        if next_token is not None:
            self.token = next_token
        if not ok:
            raise HookRefused(text)
        return text


async def connect(link: LinkName, order: str) -> tuple[Stream, Stream]:
    if order == "random":
        order = random.choice(["data", "message", "parallel"])  # noqa: S311
    if order == "parallel":
        data, message = await asyncio.gather(
            asyncio.open_connection(link.data.host, link.data.port),
            asyncio.open_connection(link.message.host, link.message.port),
        )
    elif order == "message":
        message = await asyncio.open_connection(link.message.host, link.message.port)
        data = await asyncio.open_connection(link.data.host, link.data.port)
    else:
        data = await asyncio.open_connection(link.data.host, link.data.port)
        message = await asyncio.open_connection(link.message.host, link.message.port)
    return data, message


class _Listening:
    """A link this kernel created in Listen mode: two ports, one connection each."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.got: list[asyncio.Future[Stream]] = [loop.create_future(), loop.create_future()]
        self.servers: list[asyncio.Server] = []

    def acceptor(self, i: int) -> object:
        async def accepted(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if self.got[i].done():
                w.close()
            else:
                self.got[i].set_result((r, w))

        return accepted

    async def bind(self, host: str, ports: tuple[int, int]) -> None:
        for i, port in enumerate(ports):
            self.servers.append(await asyncio.start_server(self.acceptor(i), host, port))  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        ports = [s.sockets[0].getsockname() for s in self.servers]
        return f"{ports[0][1]}@{ports[0][0]},{ports[1][1]}@{ports[1][0]}"

    async def accepted(self) -> tuple[Stream, Stream]:
        data, message = await asyncio.gather(*self.got)
        self.close()
        return data, message

    def close(self) -> None:
        for s in self.servers:
            s.close()


class SimKernel:
    def __init__(self, flags: KernelFlags, version: float) -> None:
        self.flags = flags
        self.version = version
        self.exit_status = 0
        self.order = os.environ.get("RELAY_SIM_CONNECT_ORDER", "random")
        self.hook: HookClient | None = None
        if os.environ.get("RELAY_HOOK_PORT") and os.environ.get("RELAY_HOOK_TOKEN"):
            self.hook = HookClient(
                int(os.environ["RELAY_HOOK_PORT"]), os.environ["RELAY_HOOK_TOKEN"]
            )
        self.method = hook.choose_method(version, os.environ.get("RELAY_DYNAMIC_METHOD", "auto"))
        self.links: set[asyncio.Task[None]] = set()

    def hello(self, role: str, name: str | None) -> bytes:
        return json.dumps(
            {
                "pid": os.getpid(),
                "role": role,
                "subkernel": self.flags.subkernel,
                "noinit": self.flags.noinit,
                "link_name": name,
                "initfile": self.flags.initfile,
                "ignored": self.flags.ignored,
                "version": self.version,
                "method": self.method,
                "hook": self.hook is not None,
            }
        ).encode()

    async def listen(self) -> tuple[Stream, Stream]:
        listening = _Listening()
        await listening.bind(self.flags.link_host or "127.0.0.1", (0, 0))
        if not self.flags.dont_interact:
            print(f"Link created on: {listening.name}", flush=True)
        return await listening.accepted()

    async def old_method_links(self, main_writer: asyncio.StreamWriter) -> None:
        """Up to 11.0: CreateFrontEndLink twice, through relay's listen-pair, then tell the
        front end (OpenParallelLinksPacket); it connects to the service link first."""
        assert self.hook is not None
        names: list[str] = []
        listenings: list[_Listening] = []
        for _role in ("service", "preemptive"):
            for _attempt in range(5):
                pair = LinkName.parse(await self.hook.request("listen-pair"))
                listening = _Listening()
                try:
                    await listening.bind("127.0.0.1", (pair.data.port, pair.message.port))
                except OSError as exc:
                    listening.close()
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    await self.hook.request("release", str(pair))
                    continue
                names.append(str(pair))
                listenings.append(listening)
                break
            else:
                raise HookRefused("no free pair of ports after 5 tries")
        main_writer.write(
            wire.data_frame(wire.OPEN_PARALLEL_LINKS, json.dumps([*names, "TCPIP"]).encode())
        )
        for role, name, listening in zip(("service", "preemptive"), names, listenings, strict=True):
            data, message = await listening.accepted()
            self.spawn_link(role, name, data, message)

    async def new_method_links(self, payload: bytes) -> bytes:
        """From 11.1: the front end named its two listening links; connect through relay."""
        service, preemptive, _protocol = json.loads(payload)
        for role, name in (("service", service), ("preemptive", preemptive)):
            target = await self.hook.request("callback", name) if self.hook else name
            data, message = await connect(LinkName.parse(target), self.order)
            self.spawn_link(role, target, data, message)
        return b"linked"

    def spawn_link(self, role: str, name: str, data: Stream, message: Stream) -> None:
        task = asyncio.ensure_future(self.serve_link(role, name, data, message))
        self.links.add(task)
        task.add_done_callback(self.links.discard)

    async def serve_link(self, role: str, name: str | None, data: Stream, message: Stream) -> None:
        (dr, dw), (mr, mw) = data, message
        dw.write(wire.data_frame(wire.HELLO, self.hello(role, name)))
        link = _Link(self, role, dw)
        urgent = asyncio.ensure_future(link.urgent(mr, mw))
        evaluate = asyncio.ensure_future(link.evaluate(dr, dw))
        if role == "main" and self.hook is not None and self.method == "old":
            await self.old_method_links(dw)
        await asyncio.wait({urgent, evaluate}, return_when=asyncio.FIRST_COMPLETED)
        for task in (urgent, evaluate):
            task.cancel()
        await asyncio.gather(urgent, evaluate, return_exceptions=True)
        for w in (dw, mw):
            w.close()

    async def serve(self, data: Stream, message: Stream) -> int:
        await self.serve_link("main", self.flags.link_name, data, message)
        for task in list(self.links):  # the main link closed: the kernel exits
            task.cancel()
        await asyncio.gather(*self.links, return_exceptions=True)
        return self.exit_status


class _Link:
    """One link's two channels, served independently of the kernel's other links."""

    def __init__(self, kernel: SimKernel, role: str, writer: asyncio.StreamWriter) -> None:
        self.kernel = kernel
        self.role = role
        self.busy: asyncio.Task[None] | None = None
        self.aborted = False

    async def evaluate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                kind, payload = await wire.read_data(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the link closed
            if kind == wire.ECHO:
                writer.write(wire.data_frame(wire.RETURN, payload))
            elif kind == wire.SLEEP:
                self.aborted = False
                self.busy = asyncio.ensure_future(asyncio.sleep(int(payload) / 1000))
                try:
                    await self.busy
                    result = b"done"
                except asyncio.CancelledError:
                    if not self.aborted:
                        raise
                    result = b"$Aborted"
                self.busy = None
                writer.write(wire.data_frame(wire.RETURN, result))
            elif kind == wire.PARALLEL_LINK_NAMES:
                try:
                    result = await self.kernel.new_method_links(payload)
                except (HookRefused, OSError, ValueError) as exc:
                    result = f"$Failed: {exc}".encode()
                writer.write(wire.data_frame(wire.RETURN, result))
            elif kind == wire.QUIT and self.role == "main":
                self.kernel.exit_status = int(payload or b"0")
                return
            await writer.drain()

    async def urgent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                code, arg = await wire.read_message(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if code == wire.TERMINATE:
                return
            if code == wire.ABORT and self.busy is not None:
                self.aborted = True
                self.busy.cancel()
            writer.write(wire.message_frame(code, arg))  # acknowledge on the message channel
            await writer.drain()


def _sim_version(flags: KernelFlags) -> float:
    ignored = [word.lower() for word in flags.ignored]
    if "-simversion" in ignored:
        i = ignored.index("-simversion")
        if i + 1 < len(ignored):
            return float(flags.ignored[i + 1])
    return 14.1


async def run(argv: Sequence[str]) -> int:
    try:
        flags = parse_flags(argv)
        version = _sim_version(flags)
    except ValueError as exc:
        print(f"relay-sim-kernel: {exc}", file=sys.stderr)
        return 2
    if not flags.link_startup and flags.link_mode is None:
        print("relay-sim-kernel: no -wstp/-mathlink or -LinkMode: nothing to do", file=sys.stderr)
        return 2
    kernel = SimKernel(flags, version)
    mode = flags.link_mode or "connect"
    if flags.link_protocol not in (None, "TCPIP"):
        print(
            f"relay-sim-kernel: only -LinkProtocol TCPIP is simulated, not {flags.link_protocol}",
            file=sys.stderr,
        )
        return 2
    if mode == "connect":
        if not flags.link_name:
            print("relay-sim-kernel: -LinkMode Connect needs -LinkName", file=sys.stderr)
            return 2
        try:
            data, message = await connect(LinkName.parse(flags.link_name), kernel.order)
        except (ValueError, OSError) as exc:
            print(f"relay-sim-kernel: cannot connect to {flags.link_name}: {exc}", file=sys.stderr)
            return 1
    elif mode == "listen":
        data, message = await kernel.listen()
    else:
        print(f"relay-sim-kernel: -LinkMode {mode} is not simulated", file=sys.stderr)
        return 2
    try:
        return await kernel.serve(data, message)
    except HookRefused as exc:
        print(f"relay-sim-kernel: relay's hook refused: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
