"""``relay-sim-kernel``: a fake Wolfram kernel executable. Standard library only.

Behaviour, with its source in the topology reference:
- accepts the kernel flags of section 2, case-insensitively, ignoring unknown ones
  (``-subkernel``, ``-noinit``, ``-pacletreadonly``, ... are accepted and ignored);
- ``-LinkMode Connect``: opens both TCP connections of ``-LinkName P1@H1,P2@H2`` (section 1).
  The order of the two connects is not documented, so the simulator varies it: data first,
  message first, or both at once (``RELAY_SIM_CONNECT_ORDER`` = data|message|parallel|random,
  default random), and a relay must work with all three;
- ``-LinkMode Listen``: binds both ports on ``-LinkHost`` (default 127.0.0.1) and prints
  ``Link created on: NAME`` unless ``-LinkOptions`` has MLDontInteract (256) (section 1);
- serves evaluations on the data channel (``relay.sim.wire``) and answers urgent messages on
  the message channel while the data channel may be busy: Interrupt is acknowledged, Abort
  cuts a busy evaluation short, Terminate ends the kernel (section 1);
- exits when its link closes (section 5), with the status a ``QUIT`` frame asked for.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import Sequence

from relay.kernelcmd import KernelFlags, parse_flags
from relay.linkname import LinkName
from relay.sim import wire

__all__ = ["main"]


class SimKernel:
    def __init__(self, flags: KernelFlags) -> None:
        self.flags = flags
        self.exit_status = 0
        self.busy: asyncio.Task[None] | None = None
        self.aborted = False

    async def connect(
        self, link: LinkName, order: str
    ) -> tuple[
        tuple[asyncio.StreamReader, asyncio.StreamWriter],
        tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ]:
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

    async def listen(
        self,
    ) -> tuple[
        tuple[asyncio.StreamReader, asyncio.StreamWriter],
        tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ]:
        host = self.flags.link_host or "127.0.0.1"
        loop = asyncio.get_running_loop()
        got: list[asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = [
            loop.create_future(),
            loop.create_future(),
        ]

        def on_accept(i: int) -> object:
            async def accepted(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                if got[i].done():
                    w.close()
                else:
                    got[i].set_result((r, w))

            return accepted

        servers = [await asyncio.start_server(on_accept(i), host, 0) for i in range(2)]  # type: ignore[arg-type]
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        name = f"{ports[0]}@{host},{ports[1]}@{host}"
        if not self.flags.dont_interact:
            print(f"Link created on: {name}", flush=True)
        data, message = await asyncio.gather(*got)
        for s in servers:
            s.close()
        return data, message

    async def serve(
        self,
        data: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        message: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> int:
        (dr, dw), (mr, mw) = data, message
        hello = {
            "pid": os.getpid(),
            "subkernel": self.flags.subkernel,
            "noinit": self.flags.noinit,
            "link_name": self.flags.link_name,
            "ignored": self.flags.ignored,
        }
        dw.write(wire.data_frame(wire.HELLO, json.dumps(hello).encode()))
        urgent = asyncio.ensure_future(self._urgent(mr, mw))
        evaluate = asyncio.ensure_future(self._evaluate(dr, dw))
        await asyncio.wait({urgent, evaluate}, return_when=asyncio.FIRST_COMPLETED)
        for task in (urgent, evaluate):
            task.cancel()
        await asyncio.gather(urgent, evaluate, return_exceptions=True)
        for w in (dw, mw):
            w.close()
        return self.exit_status

    async def _evaluate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                kind, payload = await wire.read_data(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the link closed: the kernel exits
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
            elif kind == wire.QUIT:
                self.exit_status = int(payload or b"0")
                return
            await writer.drain()

    async def _urgent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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


async def run(argv: Sequence[str]) -> int:
    try:
        flags = parse_flags(argv)
    except ValueError as exc:
        print(f"relay-sim-kernel: {exc}", file=sys.stderr)
        return 2
    if not flags.link_startup and flags.link_mode is None:
        print("relay-sim-kernel: no -wstp/-mathlink or -LinkMode: nothing to do", file=sys.stderr)
        return 2
    kernel = SimKernel(flags)
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
            link = LinkName.parse(flags.link_name)
            order = os.environ.get("RELAY_SIM_CONNECT_ORDER", "random")
            data, message = await kernel.connect(link, order)
        except (ValueError, OSError) as exc:
            print(f"relay-sim-kernel: cannot connect to {flags.link_name}: {exc}", file=sys.stderr)
            return 1
    elif mode == "listen":
        data, message = await kernel.listen()
    else:
        print(f"relay-sim-kernel: -LinkMode {mode} is not simulated", file=sys.stderr)
        return 2
    return await kernel.serve(data, message)


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
