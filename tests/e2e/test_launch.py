"""Launches through a real OpenSSH sshd, with the simulator as front end and kernel."""

from __future__ import annotations

import asyncio
import random
import secrets
import signal

import pytest

from relay.lite import framing
from relay.lite.linkname import LinkName
from relay.sim import frontend, wire
from tests.conftest import RunningDaemon, pid_alive
from tests.e2e.helpers import controller, remote_command, wait_gone


async def test_controller_launch_carries_random_bytes_both_ways_on_both_channels(
    daemon: RunningDaemon,
) -> None:
    async with controller(daemon.home) as fe:
        kl = await fe.link.accept(60)
        rewritten = LinkName.parse(kl.hello["link_name"])
        assert rewritten.data.host == rewritten.message.host == "127.0.0.1"
        assert {rewritten.data.port, rewritten.message.port}.isdisjoint(
            {fe.link.name.data.port, fe.link.name.message.port}
        )
        for size in (1, 1000, 1_000_000):
            payload = secrets.token_bytes(size)
            assert await kl.echo(payload) == payload
        rng = random.Random(7)
        for _ in range(20):
            code, arg = rng.choice([wire.INTERRUPT, wire.ABORT]), rng.getrandbits(32)
            assert await kl.urgent(code, arg) == (code, arg)
        await kl.quit(0)
        status, out, err = await fe.result()
    assert status == 0, err
    assert out.splitlines() == [str(rewritten)]
    await kl.aclose()


async def test_interrupt_arrives_while_the_data_channel_is_busy(daemon: RunningDaemon) -> None:
    async with controller(daemon.home) as fe:
        kl = await fe.link.accept(60)
        await kl.send(wire.SLEEP, b"600000")
        assert await kl.urgent(wire.INTERRUPT, 1) == (wire.INTERRUPT, 1)
        assert await kl.urgent(wire.ABORT, 2) == (wire.ABORT, 2)
        assert await kl.read_return() == b"$Aborted"
        await kl.quit(0)
        assert (await fe.result())[0] == 0
        await kl.aclose()


@pytest.mark.parametrize("status", [0, 1, 42, 137, 255])
async def test_shim_exits_with_the_kernels_status(daemon: RunningDaemon, status: int) -> None:
    """A kernel's own exit, even with 137 (128 + SIGKILL), is not said to be a kill: the
    agent says which signal ended a kernel, besides its status."""
    async with controller(daemon.home) as fe:
        kl = await fe.link.accept(60)
        await kl.quit(status)
        ended, _, err = await fe.result()
        assert (ended, err) == (status, "")
        await kl.aclose()
    assert list(daemon.daemon.hosts["local"].failures) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
async def test_signal_to_the_shim_leaves_no_remote_kernel(
    daemon: RunningDaemon, signum: int
) -> None:
    async with controller(daemon.home, exec_=True) as fe:
        kl = await fe.link.accept(60)
        pid = kl.hello["pid"]
        assert pid_alive(pid)
        assert fe.proc.stdout is not None
        await asyncio.wait_for(fe.proc.stdout.readline(), 60)  # the shim has the answer
        fe.proc.send_signal(signum)
        status, _, err = await fe.result()
        assert status == 128 + signum, err
        assert not pid_alive(pid), "the remote kernel outlived its shim"
        await kl.closed()
        await kl.aclose()


async def test_killing_the_launch_commands_shell_ends_shim_and_kernel(
    daemon: RunningDaemon,
) -> None:
    async with controller(daemon.home) as fe:  # sh -c '... relay launch ...': sh is the parent
        kl = await fe.link.accept(60)
        pid = kl.hello["pid"]
        assert fe.proc.stdout is not None
        await asyncio.wait_for(fe.proc.stdout.readline(), 60)
        fe.proc.kill()  # the shell dies; the shim gets SIGTERM from PR_SET_PDEATHSIG
        # the shim, which the shell's pipes were handed to, has ended once they close: a shim
        # left running (as the loop closed, CI once saw it still holding them) fails here
        status, _, err = await fe.result()
        assert status == -signal.SIGKILL and err == "", err
        await kl.closed()
        await wait_gone(pid)
        assert not pid_alive(pid)
        await kl.aclose()


async def test_sigkill_of_the_shim_still_ends_the_kernel(daemon: RunningDaemon) -> None:
    async with controller(daemon.home, exec_=True) as fe:
        kl = await fe.link.accept(60)
        pid = kl.hello["pid"]
        assert fe.proc.stdout is not None
        await asyncio.wait_for(fe.proc.stdout.readline(), 60)
        fe.proc.kill()
        await fe.proc.wait()
        await kl.closed()  # the daemon saw the socket close and terminated the kernel
        await wait_gone(pid)
        assert not pid_alive(pid)
        await kl.aclose()


async def test_remote_listeners_refuse_connections_once_the_kernel_is_connected(
    daemon: RunningDaemon,
) -> None:
    async with controller(daemon.home) as fe:
        kl = await fe.link.accept(60)
        assert fe.proc.stdout is not None
        rewritten = LinkName.parse((await asyncio.wait_for(fe.proc.stdout.readline(), 60)).decode())
        for ep in (rewritten.data, rewritten.message):
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(ep.host, ep.port)
        assert fe.link.extra_connections == 0
        assert await kl.echo(b"still fine") == b"still fine"
        await kl.quit(0)
        assert (await fe.result())[0] == 0
        await kl.aclose()


async def test_32_concurrent_compute_launches_over_one_authentication(
    daemon: RunningDaemon,
) -> None:
    sshd = daemon.home.sshd
    assert sshd is not None
    assert "MaxSessions 10" in (sshd.dir / "sshd_config").read_text()
    auths_before = sshd.authentications
    links = [await frontend.ListeningLink.create() for _ in range(32)]
    results = await asyncio.gather(
        *(
            frontend.run_remote_command(
                remote_command(), host="local", link=link.name, env=daemon.home.env, timeout_s=120
            )
            for link in links
        )
    )
    assert [r.status for r in results] == [0] * 32, [r.stderr for r in results if r.status]
    kernels = await asyncio.gather(*(link.accept(60) for link in links))
    for i, kl in enumerate(kernels):
        assert kl.hello["subkernel"] and kl.hello["noinit"]  # compute_args by default
        assert LinkName.parse(results[i].stdout) == LinkName.parse(kl.hello["link_name"])
        payload = secrets.token_bytes(5000)
        assert await kl.echo(payload) == payload
    assert len(daemon.daemon.kernels) == 32
    assert sshd.authentications - auths_before == 1
    pids = [kl.hello["pid"] for kl in kernels]
    for kl in kernels:
        await kl.quit(0)
    for pid, kl in zip(pids, kernels, strict=True):
        await kl.closed()
        await kl.aclose()
        await wait_gone(pid)
    for link in links:
        link.close()


async def test_front_end_on_ipv6_and_another_loopback_address(daemon: RunningDaemon) -> None:
    for host in ("::1", "127.0.0.2"):
        async with controller(daemon.home, link_host=host) as fe:
            kl = await fe.link.accept(60)
            assert await kl.echo(b"x" * 100) == b"x" * 100
            await kl.quit(0)
            assert (await fe.result())[0] == 0
            await kl.aclose()


async def test_daemon_keeps_serving_launches_after_a_garbage_client(daemon: RunningDaemon) -> None:
    reader, writer = await asyncio.open_unix_connection(str(daemon.home.socket))
    writer.write(secrets.token_bytes(4096) + b"\n")
    reply = framing.decode(await asyncio.wait_for(reader.readline(), 30))
    assert reply["event"] == "error"
    writer.close()
    await writer.wait_closed()
    async with controller(daemon.home) as fe:
        kl = await fe.link.accept(60)
        await kl.quit(0)
        assert (await fe.result())[0] == 0
        await kl.aclose()


async def test_adhoc_spec_and_jump_host(daemon: RunningDaemon) -> None:
    sshd = daemon.home.sshd
    assert sshd is not None
    daemon.home.add_host("viajump", jump="local")
    daemon.home.defaults = {
        "identity_files": [str(sshd.client_key)],
        "known_hosts": str(sshd.known_hosts),
    }
    daemon.home.write()  # the running daemon reads the changed file before the next request
    for host in ("viajump", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"):
        async with controller(daemon.home, host=host) as fe:
            kl = await fe.link.accept(60)
            assert await kl.echo(b"hop") == b"hop"
            await kl.quit(0)
            status, _, err = await fe.result()
            assert status == 0, err
            await kl.aclose()
    assert {"viajump", "local", f"{sshd.user}@127.0.0.1:{sshd.port}"} <= set(daemon.daemon.hosts)


@pytest.mark.today_path  # with the agent, a launch's listeners are the agent's
async def test_warm_launches_use_listeners_allocated_ahead(daemon: RunningDaemon) -> None:
    async def launch_once() -> LinkName:
        async with controller(daemon.home) as fe:
            kl = await fe.link.accept(60)
            name = LinkName.parse(kl.hello["link_name"])
            await kl.quit(0)
            assert (await fe.result())[0] == 0
            await kl.aclose()
            return name

    await launch_once()  # connects, and fills the spare pool
    host = daemon.daemon.hosts["local"]
    connected = await host.live()
    pool = connected.pool
    if pool._fills:  # the refill after the first launch
        await asyncio.wait_for(asyncio.gather(*pool._fills, return_exceptions=True), 30)
    spare = {slot.port for slot in pool._free}
    assert len(spare) == host.config.spare_forwards
    # an unrouted spare listener refuses: sshd accepts, relay rejects the channel, the
    # connection closes without a byte
    reader, writer = await asyncio.open_connection("127.0.0.1", next(iter(spare)))
    assert await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()
    await writer.wait_closed()
    name = await launch_once()
    assert {name.data.port, name.message.port} <= spare  # no forward requested at launch


async def test_rounds_of_simultaneous_launches_never_share_a_listener(
    daemon: RunningDaemon,
) -> None:
    """Launches that drain the spare pool while it refills (a race once put taken listeners
    back into the pool, so two kernels shared one)."""
    for _ in range(3):
        links = [await frontend.ListeningLink.create() for _ in range(25)]
        results = await asyncio.gather(
            *(
                frontend.run_remote_command(
                    remote_command(),
                    host="local",
                    link=link.name,
                    env=daemon.home.env,
                    timeout_s=120,
                )
                for link in links
            )
        )
        assert [r.stderr for r in results if r.status] == []
        names = [LinkName.parse(r.stdout) for r in results]
        ports = [p for n in names for p in (n.data.port, n.message.port)]
        assert len(set(ports)) == len(ports)
        for link in links:
            kl = await link.accept(60)
            await kl.quit(0)
            await kl.closed()
            await kl.aclose()
            link.close()
