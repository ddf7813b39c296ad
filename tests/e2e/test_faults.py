"""Faults injected against a real sshd: nothing orphaned, nothing leaked, service goes on.

Every check of the remote side uses ps/ss (tests.e2e.remote), not the daemon's bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from relay.lite import client
from relay.lite.linkname import LinkName
from relay.sim import frontend
from relay.sim.faultproxy import FaultProxy
from relay.sim.sshd import ThrowawaySSHD
from tests.conftest import RELAY, SIM_KERNEL, RelayHome, pid_alive, run_shim, start_daemon
from tests.e2e.helpers import (
    Controller,
    close_launches,
    controller,
    relay_cli,
    remote_command,
    wait_gone,
)
from tests.e2e.remote import listening_ports, sshd_session_of

KEEPALIVE = {"keepalive_interval_s": 0.5, "keepalive_count_max": 2}


def fifo_kernel(home: RelayHome, name: str, then: str = "exec sleep 600") -> tuple[str, Path]:
    """A kernel that reports "PID ARGV..." through a FIFO, then runs ``then``."""
    fifo = home.dir / f"{name}.fifo"
    os.mkfifo(fifo)
    path = home.dir / name
    path.write_text(f'#!/bin/sh\necho "$$ $*" > {fifo}\n{then}\n')
    path.chmod(0o755)
    return str(path), fifo


async def read_fifo(fifo: Path) -> tuple[int, LinkName]:
    loop = asyncio.get_running_loop()
    words = (await asyncio.wait_for(loop.run_in_executor(None, fifo.read_text), 60)).split()
    return int(words[0]), LinkName.parse(words[words.index("-LinkName") + 1])


async def connected(fe: Controller) -> tuple[frontend.KernelLink, int]:
    kl = await fe.link.accept(60)
    assert fe.proc.stdout is not None
    await asyncio.wait_for(fe.proc.stdout.readline(), 60)  # the shim has its answer
    return kl, int(kl.hello["pid"])


@pytest.mark.today_path  # with the agent: tests/e2e/test_resume.py
async def test_blackholed_network_is_detected_reported_and_cleaned_up(home: RelayHome) -> None:
    assert home.sshd is not None
    proxy = await FaultProxy(home.sshd.port).start()
    home.sshd.trust_port(proxy.port)
    home.add_host("local", port=proxy.port, **KEEPALIVE)
    hung, fifo = fifo_kernel(home, "hung")
    try:
        async with start_daemon(home) as running, controller(home) as fe1, controller(home) as fe2:
            (kl1, pid1), (kl2, pid2) = await connected(fe1), await connected(fe2)
            link = await frontend.ListeningLink.create()
            in_flight = asyncio.ensure_future(run_shim(home, "local", hung, str(link.name)))
            hung_pid, held = await read_fifo(fifo)
            assert {held.data.port, held.message.port} <= listening_ports()
            old_session = sshd_session_of(pid1)

            proxy.blackhole()
            started = time.monotonic()
            results = await asyncio.gather(fe1.result(), fe2.result(), in_flight)
            detected_s = time.monotonic() - started
            for status, _, err in results[:2]:  # every waiting shim, at once
                assert status == 1 and "not responding to keepalive" in err, err
                assert "ended" in err and len(err.splitlines()) == 1
            assert results[2].status == 1 and "lost" in results[2].stderr
            assert detected_s < 0.5 * 2 + 5, detected_s
            # the remote side cannot know: its kernels still run until the next connection
            assert pid_alive(pid1) and pid_alive(hung_pid)

            proxy.restore()
            async with controller(home) as fe3:
                kl3, _ = await connected(fe3)
                for pid in (pid1, pid2, hung_pid, old_session):
                    await wait_gone(pid)
                assert not {held.data.port, held.message.port} & listening_ports()
                assert running.daemon.hosts["local"].connects == 2
                assert list(running.daemon.kernels) and len(running.daemon.kernels) == 1
                await kl3.quit(0)
                assert (await fe3.result())[0] == 0
            for kl in (kl1, kl2, kl3):
                await kl.aclose()
            link.close()
    finally:
        await proxy.aclose()


@pytest.mark.today_path  # with the agent: tests/e2e/test_resume.py
async def test_reconnect_never_collides_with_ports_an_old_session_holds(home: RelayHome) -> None:
    """With stale-session clean-up off, the old session keeps its listeners and the new
    connection still gets its forwards: relay asks for port 0, never for a number."""
    assert home.sshd is not None
    proxy = await FaultProxy(home.sshd.port).start()
    home.sshd.trust_port(proxy.port)
    home.add_host("local", port=proxy.port, end_stale_sessions=False, **KEEPALIVE)
    hung, fifo = fifo_kernel(home, "hung")
    try:
        async with start_daemon(home):
            link = await frontend.ListeningLink.create()
            in_flight = asyncio.ensure_future(run_shim(home, "local", hung, str(link.name)))
            hung_pid, held = await read_fifo(fifo)
            old_session = sshd_session_of(hung_pid)
            proxy.blackhole()
            assert (await in_flight).status == 1
            proxy.restore()
            async with controller(home) as fe:
                kl, _ = await connected(fe)
                new = LinkName.parse(kl.hello["link_name"])
                still_held = {held.data.port, held.message.port}
                assert still_held <= listening_ports(), "the old session should still hold them"
                assert not {new.data.port, new.message.port} & still_held
                await kl.quit(0)
                assert (await fe.result())[0] == 0
                await kl.aclose()
            link.close()
            os.kill(old_session, signal.SIGTERM)  # what end_stale_sessions would have done
            await wait_gone(old_session)
            await wait_gone(hung_pid)
    finally:
        await proxy.aclose()


@pytest.mark.today_path  # with the agent: tests/e2e/test_resume.py
async def test_sshd_killed_and_restarted_while_kernels_run(home: RelayHome, tmp_path: Path) -> None:
    with ThrowawaySSHD(tmp_path / "crashy") as sshd:
        home.sshd = sshd
        home.add_host("local")
        async with start_daemon(home) as running, controller(home) as fe:
            kl, pid = await connected(fe)
            port = sshd.port
            sshd.kill_all()
            status, _, err = await fe.result()
            assert status == 1 and "ended" in err
            await wait_gone(pid)  # the supervisor saw end of input and reaped it
            sshd.start(port=port)
            async with controller(home) as fe2:
                kl2, _ = await connected(fe2)
                assert running.daemon.hosts["local"].connects == 2
                await kl2.quit(0)
                assert (await fe2.result())[0] == 0
                await kl2.aclose()
            await kl.aclose()


async def test_kernel_crash_is_reported_and_released(daemon) -> None:  # type: ignore[no-untyped-def]
    async with controller(daemon.home) as fe:
        kl, pid = await connected(fe)
        os.kill(pid, signal.SIGKILL)
        status, _, _ = await fe.result()
        assert status == 128 + signal.SIGKILL
        await kl.closed()  # the front end's link is closed, not left hanging
        assert not daemon.daemon.kernels
        assert daemon.daemon.hosts["local"].holds == 0
        await kl.aclose()
    async with controller(daemon.home) as fe:  # and the next launch works
        kl, _ = await connected(fe)
        await kl.quit(0)
        assert (await fe.result())[0] == 0
        await kl.aclose()


async def test_front_end_vanishing_during_a_launch(home: RelayHome) -> None:
    go = home.dir / "go.fifo"
    os.mkfifo(go)
    kernel, fifo = fifo_kernel(home, "slow", f'read x < {go}\nexec {SIM_KERNEL} "$@"')
    async with start_daemon(home) as running:
        link = await frontend.ListeningLink.create()
        shim = asyncio.ensure_future(run_shim(home, "local", kernel, str(link.name)))
        pid, remote = await read_fifo(fifo)
        link.close()  # the front end gives up while the kernel is starting
        await asyncio.get_running_loop().run_in_executor(None, go.write_text, "go\n")
        result = await shim
        assert result.status == 1 and "front end is not listening" in result.stderr
        await wait_gone(pid)
        assert not {remote.data.port, remote.message.port} & listening_ports()
        assert not running.daemon.kernels


async def serve_subprocess(
    home: RelayHome, *args: str, under: Sequence[str] = ()
) -> asyncio.subprocess.Process:
    """``relay serve`` as a process of its own, as a user or a service manager runs it
    (``under``: a command that runs it, ``unshare ...``)."""
    home.write()
    proc = await asyncio.create_subprocess_exec(
        *under, RELAY, "serve", *args, env=home.env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    said: list[bytes] = []
    try:
        while b'"serving"' not in (line := await asyncio.wait_for(proc.stderr.readline(), 30)):
            assert line, f"relay serve ended before serving: {b''.join(said)[-2000:]!r}"
            said.append(line)
    except BaseException:  # not left running behind a failed test (its log elsewhere, say)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return proc


@asynccontextmanager
async def served(
    home: RelayHome,
    *args: str,
    under: Sequence[str] = (),
    events: Counter[str] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``serve_subprocess`` for a block: its log drained meanwhile (``events``: counting each
    event it logs); at the end continued (a test may have stopped it), terminated, and its
    exit checked (0: it may have been stopped with `relay stop`)."""
    daemon = await serve_subprocess(home, *args, under=under)
    draining = asyncio.ensure_future(drain(daemon, events))
    try:
        yield daemon
    finally:
        if daemon.returncode is None:  # else stopped already (`relay stop`)
            daemon.send_signal(signal.SIGCONT)
            daemon.terminate()
        assert await daemon.wait() == 0
        await draining


async def drain(proc: asyncio.subprocess.Process, events: Counter[str] | None = None) -> None:
    """Read a daemon's log to its end; ``events``: count each event by name (JSON lines)."""
    if proc.stderr is None:
        return
    if events is None:
        while await proc.stderr.read(65536):
            pass
        return
    while True:
        try:
            line = await proc.stderr.readline()
        except ValueError:  # a line past the stream's limit (asyncio drops it): not an event
            continue
        if not line:
            return
        with contextlib.suppress(ValueError, AttributeError):  # a line not of JSON's
            events[str(json.loads(line).get("event"))] += 1


@pytest.mark.today_path  # with the agent: tests/e2e/test_resume.py
async def test_daemon_sigkilled_kernels_die_with_its_connection(home: RelayHome) -> None:
    daemon = await serve_subprocess(home)
    draining = asyncio.ensure_future(drain(daemon))
    links = [await frontend.ListeningLink.create() for _ in range(2)]
    results = await asyncio.gather(
        *(
            frontend.run_remote_command(
                f'{RELAY} launch --compute "`1`" "{SIM_KERNEL}" "`2`"',
                host="local",
                link=link.name,
                env=home.env,
            )
            for link in links
        )
    )
    assert [r.status for r in results] == [0, 0]
    kernels = [await link.accept(60) for link in links]
    pids = [int(k.hello["pid"]) for k in kernels]
    daemon.kill()
    await daemon.wait()
    await draining
    for pid in pids:
        await wait_gone(pid)
    for k in kernels:
        await k.closed()
        await k.aclose()
    daemon = await serve_subprocess(home)  # the stale socket and lock are taken over
    draining = asyncio.ensure_future(drain(daemon))
    try:
        async with controller(home) as fe:
            kl, _ = await connected(fe)
            await kl.quit(0)
            assert (await fe.result())[0] == 0
            await kl.aclose()
    finally:
        daemon.terminate()
        assert await daemon.wait() == 0
        await draining
    for link in links:
        link.close()


async def test_a_sighup_while_the_daemon_stops_does_not_cut_the_stop_short(
    home: RelayHome,
) -> None:
    """``relay serve``'s SIGHUP (reload) handler was removed as its shutdown began, and the
    signal's default then ended the process in the middle of it (a terminal closed after a
    Ctrl-C, a reload sent while stopping): exit 129, no "stopped", the socket left behind,
    and each shim told that the daemon crashed instead of why its kernel ended. A kernel
    that ignores SIGTERM holds the stop open while the SIGHUP comes."""
    stubborn = home.dir / "stubborn"
    stubborn.write_text(f"#!/bin/sh\ntrap '' TERM\n{SIM_KERNEL} \"$@\"\n")
    stubborn.chmod(0o755)
    home.add_host("local", terminate_grace_s=5)  # the stop's length: the kernel's SIGKILL
    daemon = await serve_subprocess(home)
    assert daemon.stderr is not None
    log: list[bytes] = []
    try:
        async with controller(home, kernel=str(stubborn)) as fe:
            kl = await fe.link.accept(60)
            assert fe.proc.stdout is not None
            await asyncio.wait_for(fe.proc.stdout.readline(), 60)  # launch answered
            daemon.terminate()
            while b"terminating kernels" not in (line := await daemon.stderr.readline()):
                assert line, b"".join(log)
                log.append(line)
            daemon.send_signal(signal.SIGHUP)
            log.append(await asyncio.wait_for(daemon.stderr.read(), 60))
            assert await asyncio.wait_for(daemon.wait(), 60) == 0, b"".join(log)
            _, _, err = await fe.result()
            assert "crashed" not in err and "SIGTERM" in err, err
            await kl.aclose()
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
    said = b"".join(log).decode()
    assert "SIGHUP ignored" in said and '"stopped"' in said, said
    assert not home.socket.exists()


async def test_a_stopped_daemon_is_said_stopped_not_absent(home: RelayHome) -> None:
    """``relay serve`` stopped (Ctrl-Z, SIGSTOP): `relay stop` said "no relay daemon is
    running" (and the daemon stopped later, when it ran again, without a word), `relay
    status --json` printed the no-daemon answer, and `relay check` checked in a daemon of
    its own and reported another connection as the host's (a new-user pass's finding). Each
    now names the daemon's pid and that it is stopped; the stop asked for is taken when it
    runs again."""
    daemon = await serve_subprocess(home)
    draining = asyncio.ensure_future(drain(daemon))
    try:
        daemon.send_signal(signal.SIGSTOP)
        stopped = f"the relay daemon (pid {daemon.pid}) did not answer within"
        code, _, err = await relay_cli(home, "check", "local")
        assert code == 3 and stopped in err and "it is stopped" in err, err
        assert "kill -CONT" in err and len(err.strip().splitlines()) == 1, err
        code, out, err = await relay_cli(home, "status", "--json")
        assert code == 3 and stopped in err, (out, err)
        assert json.loads(out)["daemon"] == {"pid": daemon.pid, "answering": False}, out
        code, _, err = await relay_cli(home, "stop")
        assert code == 1 and stopped in err and "stops once it reads the request" in err, err
        daemon.send_signal(signal.SIGCONT)
        assert await asyncio.wait_for(daemon.wait(), 60) == 0  # the stop, taken
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
        await draining


def proc_stats(pid: int) -> tuple[int, int]:
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def settled(pid: int, fds: int, timeout_s: float = 10.0) -> None:
    """Give ``pid`` a bounded moment to get back to ``fds`` open files. What a daemon lets go
    of (a launch's connection once its shim has gone, the losing attempt of a resume, a
    status request just answered) closes a moment after the answer that ended it; a leaked
    one never does, and the caller's count says so."""
    deadline = time.monotonic() + timeout_s
    while proc_stats(pid)[1] > fds and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def settled_tasks(home: RelayHome, tasks: int, timeout_s: float = 10.0) -> dict[str, Any]:
    """The daemon's status once it has no kernel and at most ``tasks`` tasks, or after a
    bounded moment: what a launch just ended leaves (its kernel's reap, a spare's refill)
    ends a moment after the answer; a leaked task never does, and the caller's count says
    so."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await asyncio.get_running_loop().run_in_executor(
            None, client.request, home.socket, {"op": "status"}
        )
        if status["kernels"] == [] and status["daemon"]["tasks"] <= tasks:
            return status
        if time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


def open_files(pid: int) -> list[str]:
    """What ``pid`` holds open, for a failure message: files by path, TCP sockets by their
    addresses (from /proc/net), Unix sockets by path."""
    named: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            named[f[9]] = f"{table} {_port(f[1])}->{_port(f[2])}"
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        named[f[6]] = f"unix {f[7] if len(f) > 7 else '(unnamed)'}"
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            inode = target.removeprefix("socket:[").removesuffix("]")
            held.append(named.get(inode, target))
    return sorted(held)


def newly_open(before: list[str], after: list[str]) -> str:
    """What ``open_files`` lists after and not before, for a failure message."""
    return f"holds {sorted((Counter(after) - Counter(before)).elements())} it did not before"


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


async def test_200_launches_with_failures_keep_memory_and_fds_flat(home: RelayHome) -> None:
    early = home.dir / "early"
    early.write_text("#!/bin/sh\necho 'no license' >&2\nexit 4\n")
    early.chmod(0o755)
    # memory and fds over many launches: the kernels' realistic 1 s start-up is not the subject
    home.add_host("local", controller_args=["-simstartup", "0"])
    daemon = await serve_subprocess(home)
    draining = asyncio.ensure_future(drain(daemon))
    outcomes: dict[str, int] = {}
    try:

        async def one(i: int) -> None:
            kind = ("ok", "ok", "missing", "early", "badlink", "gone")[i % 6]
            link = await frontend.ListeningLink.create()
            name = str(link.name)
            if kind == "gone":
                link.close()
            if kind == "badlink":
                name = "12345@127.0.0.1"
            kernel = {"missing": "/nonexistent/k", "early": str(early)}.get(kind, SIM_KERNEL)
            command = f'{RELAY} launch "local" "{kernel}" "{name}"'
            proc = await frontend.run_controller(command, env=home.env)
            if kind == "ok":
                kl = await link.accept(60)
                await kl.quit(0)
                await kl.aclose()
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert (proc.returncode == 0) == (kind == "ok"), (kind, err)
            outcomes[kind] = outcomes.get(kind, 0) + 1
            link.close()

        for i in range(24):
            await one(i)
        warm_rss, warm_fds = proc_stats(daemon.pid)
        warm_held = open_files(daemon.pid)
        warm_tasks = client.request(home.socket, {"op": "status"})["daemon"]["tasks"]
        for i in range(24, 200):
            await one(i)
        end = await settled_tasks(home, warm_tasks)
        await settled(daemon.pid, warm_fds)
        rss, fds = proc_stats(daemon.pid)
        held = open_files(daemon.pid)
    finally:
        daemon.terminate()
        await daemon.wait()
        await draining
    print(
        f"\ndaemon after 24 launches: {warm_rss} kB RSS, {warm_fds} fds, {warm_tasks} tasks; "
        f"after 200: {rss} kB, {fds} fds, {end['daemon']['tasks']} tasks; {outcomes}"
    )
    assert sum(outcomes.values()) == 200
    assert end["kernels"] == [] and end["daemon"]["tasks"] <= warm_tasks
    assert fds <= warm_fds, newly_open(warm_held, held)
    assert rss <= warm_rss * 1.10, (warm_rss, rss)


async def test_shutdown_past_its_grace_aborts_the_connections(
    home: RelayHome, daemon_log: io.StringIO
) -> None:
    """A kernel that ignores SIGTERM and a 20 s terminate_grace_s: shutdown with a 1 s grace
    does not wait them out; it aborts the SSH connection, and the kernel goes with it (at
    its grace's end: the agent was told goodbye, and kills it then)."""
    stubborn = home.dir / "stubborn"
    stubborn.write_text(f"#!/bin/sh\ntrap '' TERM\n{SIM_KERNEL} \"$@\"\n")
    stubborn.chmod(0o755)
    home.add_host("local", terminate_grace_s=20)
    async with start_daemon(home) as running, controller(home, kernel=str(stubborn)) as fe:
        kl = await fe.link.accept(60)
        pid = kl.hello["pid"]
        assert fe.proc.stdout is not None
        await asyncio.wait_for(fe.proc.stdout.readline(), 60)  # launch answered
        await asyncio.wait_for(running.daemon.aclose(grace_s=1.0), 15)
        assert running.daemon.hosts["local"].state != "connected"
        assert pid_alive(pid), "the shutdown waited out the kernel's grace"
        await wait_gone(pid, 60)  # its link died with the connection
        await kl.aclose()
    events = [line.split('"event": ')[1][:60] for line in daemon_log.getvalue().splitlines()]
    assert any("shutdown grace exceeded" in e for e in events), "\n".join(events)


async def test_two_host_names_for_one_account_hold_kernels_side_by_side(
    home: RelayHome,
) -> None:
    """Two [hosts] entries reaching the same remote account: the second connection's
    supervisor must not take the first one's session for a stale one of its own."""
    home.add_host("alias")  # the same sshd, user and key as "local"
    async with start_daemon(home) as running, controller(home, host="local") as first:
        kl1 = await first.link.accept(60)
        async with controller(home, host="alias") as second:
            kl2 = await second.link.accept(60)
            assert running.daemon.hosts["alias"].connects == 1
            for kl in (kl1, kl2):
                assert await kl.echo(b"side by side") == b"side by side"
            assert pid_alive(kl1.hello["pid"]) and pid_alive(kl2.hello["pid"])
            await kl2.quit(0)
            assert (await second.result())[0] == 0
            await kl2.aclose()
        assert await kl1.echo(b"still here") == b"still here"
        await kl1.quit(0)
        assert (await first.result())[0] == 0
        await kl1.aclose()


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc/PID/limits")


async def test_a_daemon_started_under_a_low_open_file_limit_carries_a_pool_beyond_it(
    home: RelayHome,
) -> None:
    """Each kernel costs the daemon two sockets or more. Started under a soft limit of 256
    (macOS's default), the daemon ran out at about 120 kernels and said the front end was not
    listening (a review's reproduction). It raises its soft limit to the hard one at start,
    as the host's agent does; here a limit of 32 would not carry twelve kernels' links."""

    async with served(home, under=["prlimit", "--nofile=32:4096", "--"]) as daemon:
        assert _soft_nofile(daemon.pid) == 4096
        launches = await frontend.launch_remote(remote_command(), host="local", n=12, env=home.env)
        try:
            assert [launch.error for launch in launches] == [None] * 12
            for launch in launches:
                assert launch.kernel is not None
                assert await launch.kernel.echo(b"many") == b"many"
        finally:
            await close_launches(launches)
