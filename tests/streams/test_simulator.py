"""The simulator against itself, with no relay in between: it must be right on its own."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from relay.sim import frontend, wire
from relay.sim.frontend import read_data
from tests.conftest import SIM_KERNEL, KernelGate


@pytest.mark.parametrize("order", ["data", "message", "parallel"])
async def test_connect_mode_in_every_connect_order(order: str) -> None:
    link = await frontend.ListeningLink.create()
    proc = await asyncio.create_subprocess_exec(
        SIM_KERNEL,
        "-wstp",
        "-LinkMode",
        "Connect",
        "-LinkProtocol",
        "TCPIP",
        "-LinkName",
        str(link.name),
        "-subkernel",
        "-unknownflag",
        env=dict(os.environ, RELAY_SIM_CONNECT_ORDER=order),
    )
    kl = await link.accept(30)
    assert kl.hello["subkernel"] is True and kl.hello["ignored"] == ["-unknownflag"]
    payload = secrets.token_bytes(200_000)
    assert await kl.echo(payload) == payload
    assert await kl.urgent(wire.INTERRUPT, 9) == (wire.INTERRUPT, 9)
    await kl.quit(5)
    assert await asyncio.wait_for(proc.wait(), 30) == 5
    await kl.aclose()
    link.close()


async def test_abort_reaches_a_busy_kernel_on_the_message_channel() -> None:
    link = await frontend.ListeningLink.create()
    proc = await asyncio.create_subprocess_exec(
        SIM_KERNEL, "-wstp", "-linkmode", "connect", "-linkname", str(link.name)
    )
    kl = await link.accept(30)
    await kl.send(wire.SLEEP, b"600000")
    assert await kl.urgent(wire.ABORT) == (wire.ABORT, 0)
    assert await kl.read_return() == b"$Aborted"
    await kl.aclose()  # the link closes: the kernel exits
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    link.close()


@pytest.mark.parametrize("channel", ["data", "message"])
async def test_kernel_exits_when_either_channel_of_its_link_ends(channel: str) -> None:
    """A link is both channels: a kernel whose message channel is gone has lost its link,
    and exits (§5) instead of waiting on the data channel for ever."""
    link = await frontend.ListeningLink.create()
    proc = await asyncio.create_subprocess_exec(
        SIM_KERNEL, "-wstp", "-linkmode", "connect", "-linkname", str(link.name), "-subkernel"
    )
    kl = await link.accept(30)
    assert await kl.echo(b"alive") == b"alive"
    writer = kl._dw if channel == "data" else kl._mw
    writer.close()  # only this channel; the other stays open
    await asyncio.wait_for(proc.wait(), 30)
    await kl.closed()  # and the kernel closed the other one
    await kl.aclose()
    link.close()


async def test_a_gated_kernel_waits_at_its_gate_then_connects(tmp_path: Path) -> None:
    """``-simgate``: the tests' way to order "a kernel connects" after an event of their own."""
    link = await frontend.ListeningLink.create()
    name = str(link.name)
    gate_dir = Path(tempfile.mkdtemp(dir="/tmp"))  # a Unix socket's path: 108 bytes at most
    try:
        async with KernelGate(gate_dir / "gate") as gate:
            proc = await asyncio.create_subprocess_exec(
                *(SIM_KERNEL, "-wstp", "-linkmode", "connect", "-linkname", name),
                *("-simstartup", "0", "-simgate", str(gate.path)),
            )
            await asyncio.wait_for(gate.arrived.wait(), 30)
            gate.open()
            kl = await link.accept(30)
            assert await kl.echo(b"through") == b"through"
            await kl.quit(0)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            await kl.aclose()
    finally:
        link.close()
        shutil.rmtree(gate_dir)
    proc = await asyncio.create_subprocess_exec(
        *(SIM_KERNEL, "-wstp", "-linkmode", "connect", "-linkname", name),
        *("-simstartup", "0", "-simgate", str(tmp_path / "nobody-listens")),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1 and b"cannot wait at the gate" in err


@pytest.mark.parametrize(
    ("options", "prints"), [("0", True), ("MLDontInteract", False), ("256", False)]
)
async def test_listen_mode_prints_link_created_unless_dont_interact(
    options: str, prints: bool
) -> None:
    proc = await asyncio.create_subprocess_exec(
        SIM_KERNEL,
        "-wstp",
        "-LinkMode",
        "Listen",
        "-LinkProtocol",
        "TCPIP",
        "-LinkHost",
        "127.0.0.1",
        "-LinkOptions",
        options,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    if prints:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("Link created on: ")
        from relay.lite.linkname import LinkName

        name = LinkName.parse(line.removeprefix("Link created on: "))
        streams = [
            await asyncio.open_connection(ep.host, ep.port) for ep in (name.data, name.message)
        ]
        (dr, dw), (_mr, mw) = streams
        kind, _ = await read_data(dr)
        assert kind == wire.HELLO
        dw.write(wire.data_frame(wire.QUIT, b"0"))
        await dw.drain()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        for w in (dw, mw):
            w.close()
            await w.wait_closed()
    else:
        proc.terminate()
        assert await proc.stdout.read() == b""
        await proc.wait()


async def test_bad_flags_exit_non_zero_with_a_message() -> None:
    proc = await asyncio.create_subprocess_exec(
        SIM_KERNEL, "-wstp", "-LinkMode", "Connect", stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"needs -LinkName" in err


def test_launch_command_filling_matches_the_front_end() -> None:
    from relay.lite.linkname import LinkName

    link = LinkName.parse("59000@127.0.0.1,59001@127.0.0.1")
    out = frontend.launch_command(
        'relay launch "h" "k" "`linkname`" `dataport` `messageport`', link
    )
    assert out == 'relay launch "h" "k" "59000@127.0.0.1,59001@127.0.0.1" 59000 59001'
