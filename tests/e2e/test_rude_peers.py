"""Kernels and front ends as rude as the reference allows, through a real sshd, on both paths
(relay's agent, and ``resume_window_s = 0``). Each rudeness is a simulator option, and each
says where the reference allows it (``relay/sim/kernel.py``, ``relay/sim/frontend.py``):

- a kernel that writes the moment its data channel exists, before its message channel is
  connected, or connects its channels apart, message first, or ends with a RST;
- a kernel that ends its link on its own at once (connects, writes, exits);
- a front end that closes or resets at accept, resets a running link, or half-closes;
- the old method's front end connecting in any order, apart, writing before the kernel's HELLO;
- the old method's listening kernel writing the moment it accepts.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator

import pytest

from relay.sim import frontend, wire
from relay.sim.sshd import ThrowawaySSHD
from tests.conftest import SIM_KERNEL, RelayHome, RunningDaemon, start_daemon
from tests.e2e.helpers import (
    close_launches,
    controller,
    launch_template,
    remote_command,
    wait_gone,
)
from tests.e2e.test_dynamic import dynamic_traffic, finish
from tests.e2e.test_faults import connected

pytestmark = pytest.mark.sshd
PATHS = ["agent", "today"]  # relay's agent; the path without it (docs/agent.md)
WINDOW = {"agent": {}, "today": {"resume_window_s": 0}}
TIMEOUT_S = 60.0


def add_host(home: RelayHome, path: str, name: str = "local", **extra: object) -> None:
    home.add_host(name, **WINDOW[path], **extra)


def exited_as_it_connected(err: bytes, *statuses: int) -> None:
    """The shim's line for a kernel whose connection closed before relay could check it,
    with one of ``statuses``."""
    lines = [
        f"relay: the kernel on local exited with status {status} as it connected: its "
        "connection closed before relay could check it was yours, and relay carries no "
        "connection it cannot check"
        for status in statuses
    ]
    assert any(line.encode() in err for line in lines), err


async def kernels_gone(running: RunningDaemon, timeout_s: float = 30) -> None:
    """The daemon holds no kernel any more (bounded)."""
    async with asyncio.timeout(timeout_s):
        while running.daemon.kernels:
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "rude",
    [
        # HELLO on the data channel before the message channel is connected, 2 s apart
        ["-simorder", "data", "-simhello", "early", "-simgap", "2"],
        # message channel first, data channel 2 s later
        ["-simorder", "message", "-simgap", "2"],
        # the link ends with a RST rather than a FIN
        ["-simclose", "reset"],
    ],
    ids=["hello-before-message", "message-first-apart", "reset-at-end"],
)
async def test_a_rude_kernel_is_carried(home: RelayHome, path: str, rude: list[str]) -> None:
    add_host(home, path, controller_args=["-simstartup", "0", *rude])
    async with start_daemon(home) as running, controller(home) as fe:
        kl = await fe.link.accept(TIMEOUT_S)
        for size in (1, 70_000):
            payload = secrets.token_bytes(size)
            assert await kl.echo(payload) == payload
        assert await kl.urgent(wire.INTERRUPT, 5) == (wire.INTERRUPT, 5)
        await kl.quit(3)
        status, _, err = await fe.result()
        assert status == 3, err
        await kl.aclose()
        await kernels_gone(running)


@pytest.mark.parametrize("path", PATHS)
async def test_a_front_end_that_resets_ends_its_kernel(home: RelayHome, path: str) -> None:
    """The front end goes away with a RST (a crashed one, with bytes unread): the kernel
    exits, as it does when its link closes (topology §5), and the shim and the daemon's hold
    on it end with it."""
    add_host(home, path, controller_args=["-simstartup", "0"])
    async with start_daemon(home) as running, controller(home) as fe:
        kl = await fe.link.accept(TIMEOUT_S)
        pid = int(kl.hello["pid"])
        await kl.send(wire.SOURCE, str(8 << 20).encode())
        await kl._dr.readexactly(wire.DATA_HEADER)  # it is writing: bytes will be left unread
        kl.reset()
        await wait_gone(pid, TIMEOUT_S)
        await fe.result()
        await kernels_gone(running)


@pytest.mark.parametrize("path", PATHS)
async def test_a_front_end_that_half_closes_still_gets_its_answer(
    home: RelayHome, path: str
) -> None:
    add_host(home, path, controller_args=["-simstartup", "0"])
    async with start_daemon(home), controller(home) as fe:
        kl = await fe.link.accept(TIMEOUT_S)
        await kl.send(wire.SLEEP, b"300")
        kl.half_close()
        assert await asyncio.wait_for(kl.read_return(), TIMEOUT_S) == b"done"
        await kl.aclose()
        await fe.result()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("how", ["quit-then-fin", "fin", "reset"])
async def test_a_front_end_that_ends_the_link_at_accept(
    home: RelayHome, path: str, how: str
) -> None:
    """A front end that ends each connection the moment it accepts it (a launch cancelled as
    the kernel called back), after writing Quit[5] or nothing: the launch ends, and the daemon
    lets the kernel go. The kernel exits as soon as it has read Quit[5] (status 5) or seen
    its link close (status 0): the message channel, with nothing on it, may end before the
    kernel reads the Quit on the data channel (each channel ends on its own, and the kernel
    connects either first). That may be before relay has checked both its connections were
    the user's: then the launch fails, saying so (``exited_as_it_connected``), never "before
    connecting"."""
    add_host(home, path)
    quit_first = how == "quit-then-fin"
    link = await frontend.ListeningLink.create(
        at_accept="reset" if how == "reset" else "close",
        greetings=(wire.data_frame(wire.QUIT, b"5"), b"") if quit_first else (b"", b""),
    )
    try:
        async with start_daemon(home) as running:
            command = frontend.launch_command(launch_template(), link.name)
            proc = await frontend.run_controller(command, env=home.env)
            _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
            assert b"before connecting" not in err, err
            if quit_first and proc.returncode not in (5, 0):
                exited_as_it_connected(err, 5, 0)
            await kernels_gone(running)
    finally:
        link.close()


@pytest.mark.parametrize("path", PATHS)
async def test_a_front_end_that_writes_megabytes_at_accept(home: RelayHome, path: str) -> None:
    """More than a window's worth, written before the kernel has even started."""
    add_host(home, path)
    big = wire.data_frame(wire.ECHO, secrets.token_bytes(8 << 20))
    link = await frontend.ListeningLink.create(
        greetings=(big, wire.message_frame(wire.INTERRUPT, 9))
    )
    try:
        async with start_daemon(home):
            command = frontend.launch_command(launch_template(), link.name)
            proc = await frontend.run_controller(command, env=home.env)
            kl = await link.accept(TIMEOUT_S)
            assert await kl.echo(b"z") == b"z"
            await kl.quit(0)
            _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
            assert proc.returncode == 0, err
            await kl.aclose()
    finally:
        link.close()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "rude",
    [["-simorder", "data", "-simhello", "early", "-simgap", "2"], ["-simorder", "message"]],
    ids=["hello-before-message", "message-first"],
)
async def test_rude_compute_kernels(home: RelayHome, path: str, rude: list[str]) -> None:
    """LaunchRemote as the Parallel package runs it (topology §4), kernels with a real
    start-up and a rude connect."""
    add_host(home, path, compute_args=["-subkernel", "-noinit", *rude])
    async with start_daemon(home):
        launches = await frontend.launch_remote(remote_command(), host="local", n=3, env=home.env)
        try:
            assert [launch.error for launch in launches] == [None] * 3
            for launch in launches:
                assert launch.kernel is not None
                assert await launch.kernel.echo(b"x" * 5000) == b"x" * 5000
        finally:
            await close_launches(launches)


# The old method (up to 11.0): its links listen on the kernel's side, so the kernel must not
# reach the front end's ports but through relay: a host of its own network namespace, as in
# tests/e2e/test_dynamic.py.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawaySSHD]:
    with ThrowawaySSHD(tmp_path_factory.mktemp("netns-sshd"), netns=True) as server:
        yield server


def old_host(home: RelayHome, remote: ThrowawaySSHD, path: str, *rude: str) -> None:
    home.sshd = remote
    home.hosts.clear()
    add_host(home, path, "old", controller_args=["-simversion", "11.0", *rude])


@needs_root
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("order", ["message", "data", "parallel"])
async def test_old_method_front_end_connects_in_any_order(
    home: RelayHome, remote: ThrowawaySSHD, path: str, order: str
) -> None:
    """The front end connects each of the kernel's links in ``order``, a second apart, and
    writes on each channel the moment it is connected (topology §1: neither the order of the
    connects nor who writes first is documented)."""
    old_host(home, remote, path)
    async with start_daemon(home), controller(home, host="old") as fe:
        main, _ = await connected(fe)
        service, preemptive = await main.old_method_links(
            TIMEOUT_S, order=order, gap_s=1.0, write_first=True
        )
        assert main.connect_orders == [order, order]
        await dynamic_traffic(main, service, preemptive)
        await finish(fe, main, service, preemptive)


@needs_root
@pytest.mark.parametrize("path", PATHS)
async def test_old_method_kernel_writes_the_moment_it_accepts(
    home: RelayHome, remote: ThrowawaySSHD, path: str
) -> None:
    """The kernel's listening links write HELLO the moment their data channel is accepted,
    and accept the message channel a second later (topology §1)."""
    old_host(home, remote, path, "-simhello", "early", "-simgap", "1")
    async with start_daemon(home), controller(home, host="old") as fe:
        main, _ = await connected(fe)
        service, preemptive = await main.old_method_links(TIMEOUT_S, order="data")
        assert main.parallel_names is not None
        for kl, name in zip((service, preemptive), main.parallel_names, strict=True):
            assert kl.hello["link_name"] == name
        await dynamic_traffic(main, service, preemptive)
        await finish(fe, main, service, preemptive)


@pytest.mark.parametrize("path", PATHS)
async def test_a_kernel_that_exits_as_it_connects(home: RelayHome, path: str) -> None:
    """A kernel that connects, writes and exits at once with status 4 (its licence check
    failed once the link was up). Its connections close before relay can check whose they
    are (one round trip): relay refuses them, as it refuses every socket it cannot check, and
    the launch says the kernel exited as it connected, with its status (relay's own check
    may win the race, and the kernel's status is then the launch's)."""
    add_host(home, path, controller_args=["-simstartup", "0", "-simexit", "4"])
    async with start_daemon(home) as running:
        link = await frontend.ListeningLink.create(write_first=False)
        command = frontend.launch_command(launch_template("local", SIM_KERNEL), link.name)
        proc = await frontend.run_controller(command, env=home.env)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
            if proc.returncode != 4:
                exited_as_it_connected(err, 4)
            await kernels_gone(running)
        finally:
            link.close()
