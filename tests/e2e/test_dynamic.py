"""Dynamic over SSH: the service and preemptive links, both methods, through a real sshd.

The sshd runs in a network namespace of its own (root only), so the "remote host" has its own
loopback: the kernel cannot reach the front end's ports except through relay, and the ports
relay holds on the front end's side never collide with the kernel's.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

import asyncssh
import pytest

from relay.lite import hook
from relay.lite.linkname import LinkName
from relay.sim import frontend, wire
from relay.sim.faultproxy import FaultProxy
from relay.sim.frontend import read_data
from relay.sim.sshd import ThrowawaySSHD
from tests.conftest import SIM_KERNEL, RelayHome, RunningDaemon, start_daemon
from tests.e2e.helpers import Controller, controller, expose_listening_kernel, request
from tests.e2e.test_faults import connected
from tests.e2e.test_resume import KEEPALIVE, outage, resume_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
PROBE = str(Path(__file__).with_name("hookprobe.py"))
BADCHANNEL = str(Path(__file__).with_name("badchannel.py"))


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawaySSHD]:
    with ThrowawaySSHD(tmp_path_factory.mktemp("netns-sshd"), netns=True) as server:
        yield server


@pytest.fixture
async def dyn(home: RelayHome, remote: ThrowawaySSHD) -> AsyncIterator[RunningDaemon]:
    home.sshd = remote
    home.hosts.clear()
    home.add_host("new")
    home.add_host("old", controller_args=["-simversion", "11.0"])
    home.add_host("forced-old", dynamic_method="old")
    async with start_daemon(home) as running:
        yield running


def remote_listening(remote: ThrowawaySSHD) -> set[int]:
    out = subprocess.run(
        remote.nsenter("ss", "-Hltn"), capture_output=True, text=True, check=True
    ).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()}


def local_listening() -> set[int]:
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()}


def ports(name: str) -> set[int]:
    link = LinkName.parse(name)
    return {link.data.port, link.message.port}


async def dynamic_traffic(
    main: frontend.KernelLink, service: frontend.KernelLink, preemptive: frontend.KernelLink
) -> None:
    """Dynamic-like traffic on the preemptive link while the main link is busy, and an
    interrupt on the message channel of every link."""
    await main.send(wire.SLEEP, b"600000")  # the main link is busy evaluating
    for _ in range(5):
        payload = secrets.token_bytes(4096)
        assert await preemptive.echo(payload) == payload
    assert await service.echo(b"palette") == b"palette"
    for i, kl in enumerate((main, service, preemptive)):
        assert await kl.urgent(wire.INTERRUPT, 100 + i) == (wire.INTERRUPT, 100 + i)
    assert await main.urgent(wire.ABORT, 1) == (wire.ABORT, 1)
    assert await main.read_return() == b"$Aborted"


async def finish(fe: Controller, *links: frontend.KernelLink) -> None:
    await links[0].quit(0)
    status, _, err = await fe.result()
    assert status == 0, err
    for kl in links:
        await kl.aclose()


async def test_new_method_end_to_end(dyn: RunningDaemon, remote: ThrowawaySSHD) -> None:
    async with controller(dyn.home, host="new") as fe:
        main, _ = await connected(fe)
        assert main.hello["method"] == "new" and main.hello["hook"]
        (initfile,) = main.hello["initfile"]
        shipped = files("relay.wolfram").joinpath("RelayKernelInit.wl").read_bytes()
        assert Path(initfile).read_bytes() == shipped
        assert hashlib.sha256(shipped).hexdigest()[:16] in initfile
        service, preemptive = await main.new_method_links()
        assert main.parallel_names is not None
        # via relay: each kernel was given a pair of relay's listeners on its host, which
        # lead to the front end's pair (the host is a network namespace of its own, so a
        # port number there may be one the front end has here too: not a test of it)
        (kernel,) = dyn.daemon.status()["kernels"]
        relayed = {
            frozenset(int(ch["remote"].split("@")[0]) for ch in link["channels"]): frozenset(
                int(ch["target"].rsplit(":", 1)[1]) for ch in link["channels"]
            )
            for link in kernel["hook_links"]
        }
        for kl, fe_name in zip((service, preemptive), main.parallel_names, strict=True):
            assert kl.hello["role"] in ("service", "preemptive")
            assert kl.hello["link_name"] != fe_name
            assert relayed[frozenset(ports(kl.hello["link_name"]))] == ports(fe_name), relayed
        (k,) = dyn.daemon.kernels.values()
        assert k.hook is not None and len(k.hook.callbacks) == 2
        for fwd in k.hook.callbacks:  # wait (passively) for sshd to confirm the cancel...
            await asyncio.wait_for(fwd.listeners_gone.wait(), 30)
        callback_ports = ports(service.hello["link_name"]) | ports(preemptive.hello["link_name"])
        assert not callback_ports & remote_listening(remote)  # ...then see it on the host
        (kernel,) = dyn.daemon.status()["kernels"]
        assert [link["kind"] for link in kernel["hook_links"]] == ["callback", "callback"]
        await dynamic_traffic(main, service, preemptive)
        await finish(fe, main, service, preemptive)
    assert not dyn.daemon.kernels


@pytest.mark.parametrize("host", ["old", "forced-old"])
async def test_old_method_end_to_end(dyn: RunningDaemon, remote: ThrowawaySSHD, host: str) -> None:
    async with controller(dyn.home, host=host) as fe:
        main, _ = await connected(fe)
        assert main.hello["method"] == "old"
        service, preemptive = await main.old_method_links()
        assert main.parallel_names is not None
        for kl, name in zip((service, preemptive), main.parallel_names, strict=True):
            # the same numbers: the front end connected here to the name the kernel listened
            # on there, through the daemon's single-use listener on this side
            assert kl.hello["link_name"] == name
            assert not ports(name) & local_listening()  # closed once connected
            assert not ports(name) & remote_listening(remote)
        await dynamic_traffic(main, service, preemptive)
        await finish(fe, main, service, preemptive)
    assert not dyn.daemon.kernels


def bad_channel_kernel(home: RelayHome, mode: str) -> str:
    script = home.dir / f"kernel-{mode}"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {BADCHANNEL} {mode} {SIM_KERNEL} "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("mode", ["silent", "gone"])
@pytest.mark.parametrize("host", ["new", "old"])
async def test_a_kernel_that_cannot_reach_relay_still_starts(
    dyn: RunningDaemon, host: str, mode: str
) -> None:
    """A control channel that never answers, or a daemon whose listener is gone: every hook
    request is bounded, the kernel says why once, and its main link works. The old method
    still sends listening links (tunnel.m's fallback), the new one fails its links."""
    async with controller(dyn.home, host=host, kernel=bad_channel_kernel(dyn.home, mode)) as fe:
        main, _ = await connected(fe)
        if host == "new":
            with pytest.raises(ValueError, match=r"could not link: \$Failed: .*did not answer"):
                await main.new_method_links(timeout_s=60)
        else:
            for name in await main.open_parallel_links_packet(60):
                link = LinkName.parse(name)  # names a listening link, not $Failed
                assert (link.data.host, link.message.host) == ("127.0.0.1", "127.0.0.1")
        assert await main.echo(b"the main link works") == b"the main link works"
        assert len(main.messages) == 1, main.messages
        assert "did not answer on 127.0.0.1:" in main.messages[0]
        assert "within 1 s; Dynamic and palettes will not work" in main.messages[0]
        (k,) = dyn.daemon.kernels.values()
        assert k.hook is not None and not k.hook.callbacks  # relay was never asked
        await finish(fe, main)


async def test_user_links_after_start_up_are_left_alone(dyn: RunningDaemon) -> None:
    """User code that later connects to a link on the kernel host's own 127.0.0.1 reaches it
    there: the hook redirects only the front end's own set-up."""
    async with controller(dyn.home, host="new") as fe:
        main, _ = await connected(fe)
        service, preemptive = await main.new_method_links()
        got = await main.user_link()
        assert got.startswith("direct "), got
        (k,) = dyn.daemon.kernels.values()
        assert k.hook is not None and len(k.hook.callbacks) == 2  # the front end's two only
        assert await preemptive.echo(b"dynamic") == b"dynamic"
        await finish(fe, main, service, preemptive)


async def probe_kernel(home: RelayHome) -> tuple[str, Path]:
    """A kernel that reports its pid and hook environment, then runs the simulator."""
    fifo = home.dir / "env.fifo"
    os.mkfifo(fifo)
    script = home.dir / "probe"
    script.write_text(
        f'#!/bin/sh\necho "$$ $RELAY_HOOK_PORT $RELAY_HOOK_TOKEN" > {fifo}\n'
        f'exec {SIM_KERNEL} "$@"\n'
    )
    script.chmod(0o755)
    return str(script), fifo


async def send_raw(remote: ThrowawaySSHD, port: int, *lines: str) -> list[str]:
    """Hook requests from inside the remote host's namespace (not blocking the daemon's loop)."""
    proc = await asyncio.create_subprocess_exec(
        *remote.nsenter(sys.executable, PROBE, str(port), *lines), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    return list(json.loads(out))


async def test_tokens_are_single_use_and_private(
    dyn: RunningDaemon, remote: ThrowawaySSHD, daemon_log: io.StringIO
) -> None:
    kernel, fifo = await probe_kernel(dyn.home)
    async with controller(dyn.home, host="new", kernel=kernel) as fe:
        loop = asyncio.get_running_loop()
        pid, port, first = (await loop.run_in_executor(None, fifo.read_text)).split()
        main, _ = await connected(fe)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert first not in argv  # never in argv
        wrong, missing = secrets.token_urlsafe(32), ""
        replies = await send_raw(
            remote,
            int(port),
            hook.request_line(wrong, "listen-pair").rstrip("\n"),
            hook.request_line(missing, "listen-pair").rstrip("\n"),
            "GET / HTTP/1.0",
            hook.request_line(first, "listen-pair").rstrip("\n"),
        )
        refused = [hook.parse_reply(r) for r in replies[:3]]
        assert all(not ok and token is None for ok, token, _ in refused)
        assert refused[0][2] == "token refused" and refused[1][2] == "token refused"
        ok, second, pair = hook.parse_reply(replies[3])  # the first token still worked
        assert ok and second and second != first
        assert ports(pair) <= local_listening()
        (released,) = await send_raw(
            remote, int(port), hook.request_line(second, "release", pair).rstrip("\n")
        )
        # its successor used, the first is dead (until then it is taken again, with the
        # same next token: its reply may have been lost, relay.lite.hook)
        (reused,) = await send_raw(
            remote, int(port), hook.request_line(first, "listen-pair").rstrip("\n")
        )
        assert hook.parse_reply(reused)[:2] == (False, None)
        ok, third, text = hook.parse_reply(released)
        assert ok and text == "released" and third
        assert not ports(pair) & local_listening()
        # a name the hook left alone during the front end's set-up is logged by the daemon
        odd = "5@10.9.9.9,6@10.9.9.9"
        (noted,) = await send_raw(
            remote, int(port), hook.request_line(third, "skipped", odd).rstrip("\n")
        )
        assert hook.parse_reply(noted)[0::2] == (True, "noted")
        assert any(
            json.loads(line).get("event") == "hook left a link name alone"
            and json.loads(line).get("name") == odd
            for line in daemon_log.getvalue().splitlines()
        )
        # anyone on the host can connect here: a flood of bad requests is counted, and logged
        # once a minute per kind (a wrong token, a malformed line), with the count
        await send_raw(remote, int(port), *["GET / HTTP/1.0"] * 30, *[f"RELAY1 {wrong} x -"] * 30)
        (k,) = dyn.daemon.kernels.values()
        assert k.hook is not None and k.hook.refusals.total == 4 + 60
        log_lines = [json.loads(line) for line in daemon_log.getvalue().splitlines()]
        refusals = [e for e in log_lines if e["event"] == "hook request refused"]
        assert len(refusals) == 2 and all(e.get("kernel") for e in refusals)
        assert first not in daemon_log.getvalue() and second not in daemon_log.getvalue()
        # another local user on the remote host cannot read the token from the kernel
        denied = subprocess.run(
            ["cat", f"/proc/{pid}/environ"], user="nobody", capture_output=True, text=True, cwd="/"
        )
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        await finish(fe, main)


async def test_a_kernel_cannot_make_relay_connect_elsewhere(
    dyn: RunningDaemon, remote: ThrowawaySSHD
) -> None:
    kernel, fifo = await probe_kernel(dyn.home)
    async with controller(dyn.home, host="new", kernel=kernel) as fe:
        loop = asyncio.get_running_loop()
        _, port, token = (await loop.run_in_executor(None, fifo.read_text)).split()
        main, _ = await connected(fe)
        (reply,) = await send_raw(
            remote,
            int(port),
            hook.request_line(token, "callback", "80@192.0.2.1,81@192.0.2.1").rstrip("\n"),
        )
        ok, nxt, text = hook.parse_reply(reply)
        assert not ok and nxt and "only loopback or the front end's own address" in text
        await finish(fe, main)


async def test_forward_request_from_the_local_socket(
    dyn: RunningDaemon, remote: ThrowawaySSHD
) -> None:
    # callback: a link listening here, reachable from the remote host's 127.0.0.1
    link = await frontend.ListeningLink.create()
    answer = await request(dyn.home, {"op": "forward", "host": "new", "linkname": str(link.name)})
    assert answer["event"] == "forwarded"
    rewritten = str(answer["linkname"])
    assert ports(rewritten) <= remote_listening(remote)
    proc = await asyncio.create_subprocess_exec(
        *remote.nsenter(SIM_KERNEL, "-wstp", "-LinkMode", "Connect", "-LinkName", rewritten)
    )
    kl = await link.accept(60)
    assert await kl.echo(b"on demand") == b"on demand"
    # while its link lives, the forward is listed and holds the host against idle close
    forwards = (await request(dyn.home, {"op": "status"}))["forwards"]
    assert isinstance(forwards, list)
    (listed,) = forwards
    assert listed["name"] == rewritten
    assert [c["state"] for c in listed["channels"]] == ["connected", "connected"]
    requested = dyn.daemon.forwards[rewritten]
    assert dyn.daemon.hosts["new"].holds == 1
    await kl.quit(0)
    assert await proc.wait() == 0
    await kl.aclose()
    link.close()
    await asyncio.wait_for(requested.released.wait(), 30)  # its channels closed: released
    assert not (await request(dyn.home, {"op": "status"}))["forwards"]
    assert dyn.daemon.hosts["new"].holds == 0
    # expose: a kernel listening on the remote host, reachable from here
    listener, local = await expose_listening_kernel(dyn.home, "new", remote.nsenter())
    streams = [
        await asyncio.open_connection(ep.host, ep.port) for ep in (local.data, local.message)
    ]
    kind, hello = await read_data(streams[0][0])
    assert kind == wire.HELLO and json.loads(hello)["link_name"] is None
    streams[0][1].write(wire.data_frame(wire.QUIT, b"0"))
    assert await asyncio.wait_for(listener.wait(), 30) == 0
    for _, w in streams:
        w.close()
        await w.wait_closed()
    bad = await request(dyn.home, {"op": "forward", "host": "new", "linkname": "x"})
    assert bad["event"] == "error"


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawaySSHD]:
    """An sshd with no ``Subsystem sftp`` line (hardened and embedded configurations have none),
    whose sessions get a HOME of the test's own (sshd's SetEnv), where the hook goes."""
    directory = tmp_path_factory.mktemp("no-sftp")
    (directory / "home").mkdir()
    options = {"SetEnv": f"HOME={directory / 'home'}"}
    with ThrowawaySSHD(directory, netns=True, sftp=False, options=options) as server:
        yield server


@pytest.fixture
async def bare_daemon(home: RelayHome, bare: ThrowawaySSHD) -> AsyncIterator[RunningDaemon]:
    home.sshd = bare
    home.hosts.clear()
    home.add_host("bare")
    async with start_daemon(home) as running:
        yield running


async def test_a_host_without_sftp_runs_a_controller_with_dynamic(
    bare_daemon: RunningDaemon, bare: ThrowawaySSHD
) -> None:
    """The kernel hook is installed through an exec session instead, and Dynamic works."""
    live = await bare_daemon.daemon.host("bare").live()
    with pytest.raises(asyncssh.Error):  # the host really offers no SFTP
        async with live.connection.start_sftp_client():
            pass
    async with controller(bare_daemon.home, host="bare") as fe:
        main, _ = await connected(fe)
        (initfile,) = main.hello["initfile"]
        assert Path(initfile).is_relative_to(bare.dir / "home" / ".cache" / "relay")
        shipped = files("relay.wolfram").joinpath("RelayKernelInit.wl").read_bytes()
        assert Path(initfile).read_bytes() == shipped
        service, preemptive = await main.new_method_links()
        await dynamic_traffic(main, service, preemptive)
        await finish(fe, main, service, preemptive)


async def test_a_refused_hook_install_says_why_and_is_tried_again(
    bare_daemon: RunningDaemon, bare: ThrowawaySSHD
) -> None:
    """A ``~/.cache/relay`` planted as a symlink is not written through: the launch fails with
    one line saying what to do, and once it is fixed the next launch installs the hook (a
    failure is not remembered for the connection's life)."""
    cache = bare.dir / "home" / ".cache" / "relay"
    shutil.rmtree(cache, ignore_errors=True)
    cache.parent.mkdir(exist_ok=True)
    elsewhere = bare.dir / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    cache.symlink_to(elsewhere)
    try:
        async with controller(bare_daemon.home, host="bare") as fe:
            status, _, err = await fe.result()
        assert status != 0
        (line,) = err.strip().splitlines()
        assert f"{cache} is a symlink" in line and "dynamic = false in [hosts.bare]" in line
        assert not list(elsewhere.iterdir())
    finally:
        cache.unlink()
    async with controller(bare_daemon.home, host="bare") as fe:
        main, _ = await connected(fe)
        (initfile,) = main.hello["initfile"]
        assert Path(initfile).parent.parent == cache
        await finish(fe, main)


@asynccontextmanager
async def path_to(
    home: RelayHome, remote: ThrowawaySSHD, **extra: object
) -> AsyncIterator[tuple[FaultProxy, RunningDaemon]]:
    """The host "path": the host of its own behind a FaultProxy, and relay serving it."""
    home.sshd = remote
    home.hosts.clear()
    assert remote.proc is not None
    proxy = await FaultProxy(remote.port, netns_pid=remote.proc.pid).start()
    remote.trust_port(proxy.port)
    home.add_host("path", port=proxy.port, proxy_command=None, **KEEPALIVE, **extra)
    try:
        async with start_daemon(home) as running:
            yield proxy, running
    finally:
        await proxy.aclose()


@pytest.mark.parametrize("method", ["new", "old"])
async def test_dynamic_links_outlive_the_network(
    home: RelayHome, remote: ThrowawaySSHD, method: str
) -> None:
    """Through a path that goes silently dead and comes back, then one that is reset (as in
    tests/e2e/test_resume.py, on the host of its own): the service and preemptive links in
    the middle of transfers, and the hook's control channel (the new method's links asked
    for again afterwards), go on with every byte exactly once."""
    extra: dict[str, object] = (
        {"controller_args": ["-simversion", "11.0"]} if method == "old" else {}
    )
    async with (
        path_to(home, remote, **extra) as (proxy, running),
        controller(home, host="path") as fe,
    ):
        main, pid = await connected(fe)
        links = await (main.new_method_links() if method == "new" else main.old_method_links())
        service, preemptive = links
        await dynamic_traffic(main, service, preemptive)
        for how in ("blackhole", "reset"):
            payloads = [secrets.token_bytes(2 << 20), secrets.token_bytes(1 << 20)]
            echoes = [
                asyncio.ensure_future(kl.echo(p))
                for kl, p in zip((preemptive, service), payloads, strict=True)
            ]
            await outage(running, proxy, how, host="path")
            proxy.restore()
            assert await asyncio.wait_for(asyncio.gather(*echoes), 60) == payloads
            for i, kl in enumerate((main, service, preemptive)):
                assert await kl.urgent(wire.INTERRUPT, 7 + i) == (wire.INTERRUPT, 7 + i)
        again: tuple[frontend.KernelLink, ...] = ()
        if method == "new":  # the front end asks again (the old method asks at start only)
            again = await main.new_method_links()  # through the hook's channel, resumed
            await dynamic_traffic(main, *again)
        (k,) = running.daemon.kernels.values()
        assert k.hook is not None and k.remote_pid == pid
        assert int(str(resume_state(running, "path")["attaches"])) >= 3
        await finish(fe, main, service, preemptive, *again)


async def test_a_requested_forward_nothing_connected_to_yet_outlives_the_network(
    home: RelayHome, remote: ThrowawaySSHD
) -> None:
    """``relay forward``'s listeners on the host, and the path resets before anything
    connects to them: the daemon held the host for them and resumed, but the agent, with
    no kernel and nothing connected, exited at the outage, and the resume found it gone
    (a review's finding). The daemon says it took them (``take``), so the agent waits, and
    the kernel that connects once the path is back reaches the front end."""
    async with path_to(home, remote) as (proxy, running):
        link = await frontend.ListeningLink.create()
        answer = await request(home, {"op": "forward", "host": "path", "linkname": str(link.name)})
        assert answer["event"] == "forwarded", answer
        agent = int(str(resume_state(running, "path")["pid"]))
        await outage(running, proxy, "reset", host="path")
        proxy.restore()
        called = await asyncio.create_subprocess_exec(
            *remote.nsenter(
                SIM_KERNEL, "-wstp", "-LinkMode", "Connect", "-LinkName", str(answer["linkname"])
            )
        )
        back = await link.accept(60)
        payload = secrets.token_bytes(1 << 16)
        assert await asyncio.wait_for(back.echo(payload), 60) == payload
        assert int(str(resume_state(running, "path")["pid"])) == agent
        await back.quit(0)
        assert await asyncio.wait_for(called.wait(), 30) == 0
        await back.aclose()
        link.close()


async def test_requested_forwards_outlive_the_network(
    home: RelayHome, remote: ThrowawaySSHD
) -> None:
    """``relay forward``'s links both ways, through the host's agent: a black-holed path
    that comes back loses no byte of either."""
    async with path_to(home, remote) as (proxy, running):
        link = await frontend.ListeningLink.create()
        answer = await request(home, {"op": "forward", "host": "path", "linkname": str(link.name)})
        assert answer["event"] == "forwarded", answer
        called = await asyncio.create_subprocess_exec(
            *remote.nsenter(
                SIM_KERNEL, "-wstp", "-LinkMode", "Connect", "-LinkName", str(answer["linkname"])
            )
        )
        back = await link.accept(60)
        listener, local = await expose_listening_kernel(home, "path", remote.nsenter())
        streams = [
            await asyncio.open_connection(ep.host, ep.port) for ep in (local.data, local.message)
        ]
        exposed = frontend.KernelLink(streams[0], streams[1])
        await exposed.start()  # its HELLO
        payloads = [secrets.token_bytes(2 << 20), secrets.token_bytes(1 << 20)]
        echoes = [
            asyncio.ensure_future(kl.echo(p))
            for kl, p in zip((back, exposed), payloads, strict=True)
        ]
        await outage(running, proxy, "blackhole", host="path")
        proxy.restore()
        assert await asyncio.wait_for(asyncio.gather(*echoes), 60) == payloads
        for kl, proc in ((back, called), (exposed, listener)):
            await kl.quit(0)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            await kl.aclose()
        link.close()
