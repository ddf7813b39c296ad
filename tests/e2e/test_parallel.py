"""The Parallel package's real launch pattern (docs/topology.md §4): LaunchRemote
creates n links, runs ``$RemoteCommand`` once per link one after another, and only then waits
for all kernels. A compute launch answers once its kernel runs, so the start-ups overlap; the
daemon keeps waiting for each callback and records what fails after the answer."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from relay.lite import client
from relay.sim import frontend
from tests.conftest import SIM_KERNEL, KernelGate, RelayHome, pid_alive, start_daemon
from tests.e2e.helpers import close_launches, relay_cli, remote_command, request


async def test_start_ups_overlap_every_run_returns_before_the_first_kernel_connects(
    home: RelayHome,
) -> None:
    """Four kernels whose start-up lasts until every Run has returned (the gate). Were the
    launch answered at the kernel's callback, Run 1 would wait for a kernel that waits for
    Run 4: no launch would succeed. An order of events, not a timing."""
    async with KernelGate(home.dir / "gate") as gate:
        home.add_host("local", compute_args=["-subkernel", "-noinit", "-simgate", str(gate.path)])
        async with start_daemon(home):
            launches = await frontend.launch_remote(
                remote_command(),
                host="local",
                n=4,
                env=home.env,
                runs_returned=gate.open,
            )
            try:
                assert [launch.error for launch in launches] == [None] * 4
                assert all(launch.run is not None and launch.run.status == 0 for launch in launches)
                last_run = max(launch.run_returned or 0 for launch in launches)
                connections = [launch.connected for launch in launches]
                assert None not in connections
                assert last_run < min(c for c in connections if c is not None), (
                    "a kernel connected before every Run had returned: start-ups did not overlap",
                    [(launch.run_returned, launch.connected) for launch in launches],
                )
                for launch in launches:
                    assert launch.kernel is not None
                    assert await launch.kernel.echo(b"overlap") == b"overlap"
            finally:
                await close_launches(launches)


def launch_request(home: RelayHome, kernel: str, linkname: str) -> dict[str, object]:
    return client.request(
        home.socket,
        {
            "op": "launch",
            "host": "local",
            "kernel": kernel,
            "linkname": linkname,
            "mode": "compute",
        },
        timeout_s=60,
    )


async def test_a_known_kernel_path_is_answered_without_waiting_for_its_pid(
    home: RelayHome,
) -> None:
    """The first compute launch of a path waits for the supervisor's pid (so a missing
    kernel is the launch's error); later ones on the same connection do not. (A path other
    than the host's kernel, which is looked for as the connection opens: next test.)"""
    other = home.dir / "other-kernel"
    other.symlink_to(SIM_KERNEL)
    home.add_host("local", kernel=str(other))
    async with start_daemon(home) as running:
        loop = asyncio.get_running_loop()
        answers, links = [], []
        for _ in range(2):
            link = await frontend.ListeningLink.create()
            links.append(link)
            answers.append(
                await loop.run_in_executor(None, launch_request, home, SIM_KERNEL, str(link.name))
            )
        assert [a["event"] for a in answers] == ["launched", "launched"]
        assert isinstance(answers[0]["remote_pid"], int)
        # the second answered once its start line was written (its pid may still have come
        # back before the answer went: remote_pid cannot tell)
        kernels = running.daemon.kernels
        assert [kernels[str(a["kernel_id"])].answered_on for a in answers] == ["pid", "known"]
        missing = await loop.run_in_executor(
            None, launch_request, home, "/nonexistent/WolframKernel", str(links[0].name)
        )
        assert missing["event"] == "error" and "not found or not executable" in str(
            missing["message"]
        )
        for link in links:
            kl = await link.accept(60)
            await kl.quit(0)
            await kl.aclose()
            link.close()


async def test_relay_connect_looks_for_the_kernel_so_the_first_run_need_not_wait_for_it(
    home: RelayHome,
) -> None:
    """The host's kernel is looked for as its connection opens (relay connect HOST, as
    RelaySetupKernelConfiguration runs it); another one by relay connect host --kernels n
    --kernel PATH (RelayMachine[host, n] with a KernelPath). Either way the first compute
    launch is answered once its start line is written, one round trip sooner. A kernel that
    is not there is said so by relay connect, in one line, and still fails its launch with
    the launch's own error."""
    other = home.dir / "other-kernel"
    other.symlink_to(SIM_KERNEL)
    async with start_daemon(home) as running:
        loop = asyncio.get_running_loop()
        for connect, kernel in (
            (("connect", "local"), SIM_KERNEL),  # the host's kernel
            (("connect", "local", "--kernels", "2", "--kernel", str(other)), str(other)),
        ):
            status, _, err = await relay_cli(home, *connect)
            assert status == 0, err
            link = await frontend.ListeningLink.create()
            answer = await loop.run_in_executor(None, launch_request, home, kernel, str(link.name))
            assert answer["event"] == "launched"
            # answered before its pid: the kernel was known
            assert running.daemon.kernels[str(answer["kernel_id"])].answered_on == "known"
            kl = await link.accept(60)
            await kl.quit(0)
            await kl.aclose()
            link.close()
        missing = "/nonexistent/WolframKernel"
        # 1 kernel: its two forwards are spares already; 16: more than the spares, asked
        # for after the look-up, whose answer so comes first (it was once dropped unsaid)
        for n in ("1", "16"):
            status, _, err = await relay_cli(
                home, "connect", "local", "--kernels", n, "--kernel", missing
            )
            assert status == 1 and err.count("\n") == 1, (n, err)
            assert "not found or not executable" in err and "--kernel" in err
        link = await frontend.ListeningLink.create()
        failed = await loop.run_in_executor(None, launch_request, home, missing, str(link.name))
        assert failed["event"] == "error" and "not found or not executable" in str(
            failed["message"]
        )
        link.close()


async def test_failures_after_the_answer_are_recorded_and_the_kernel_ended(
    home: RelayHome,
) -> None:
    """Run[] has returned 0 for both; one kernel exits with a licence-style message before
    connecting, the other never calls back. relay status names both with their reason.
    Two aliases of one host, so that only the silent kernel's wait is short: the licence
    failure comes when the test opens its gate, however long this machine's Runs take."""
    gate = home.dir / "gate"
    os.mkfifo(gate)
    early = home.dir / "early"
    early.write_text(f"#!/bin/sh\necho 'License expired' >&2\nread x <{gate}\nexit 4\n")
    early.chmod(0o755)
    silent = home.dir / "silent"
    pidfile = home.dir / "silent.pid"
    silent.write_text(f"#!/bin/sh\necho $$ >{pidfile}\nexec sleep 300\n")
    silent.chmod(0o755)
    home.add_host("short", launch_timeout_s=2)
    async with start_daemon(home) as running:
        kernels = []
        for host, kernel in (("local", early), ("short", silent)):
            link = await frontend.ListeningLink.create()
            run = await frontend.run_remote_command(
                remote_command(str(kernel)), host=host, link=link.name, env=home.env
            )
            assert run.status == 0, run.stderr  # answered once started, as Run[] needs
            (k,) = (k for k in running.daemon.kernels.values() if k not in kernels)
            kernels.append(k)
            link.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, gate.write_text, "go\n")  # the licence check fails
        async with asyncio.timeout(30):
            for k in kernels:
                await k.released.wait()
        hosts = running.daemon.hosts
        ((early_failure,), (silent_failure,)) = (hosts[h].failures for h in ("local", "short"))
        assert early_failure["kernel"] == str(early)
        assert "exited with status 4 before connecting" in early_failure["reason"]
        assert "License expired" in early_failure["reason"]
        assert silent_failure["kernel"] == str(silent)
        assert "did not connect within 2 s" in silent_failure["reason"]
        assert not pid_alive(int(pidfile.read_text())), "a kernel that never called back lives on"
        answer = await request(home, {"op": "status"})
        shown = {h["name"]: h["failures"] for h in answer["hosts"]}  # type: ignore[attr-defined]
        assert [f["kernel"] for f in shown["local"]] == [str(early)]
        assert [f["kernel"] for f in shown["short"]] == [str(silent)]
        _, table, _ = await relay_cli(home, "status")
        assert "License expired" in table and "did not connect within 2 s" in table


async def test_relay_connect_warms_a_host_before_any_launch(home: RelayHome) -> None:
    async with start_daemon(home) as running:
        status, out, err = await relay_cli(home, "connect", "local")
        assert status == 0, err
        assert "local is connected" in out
        host = running.daemon.hosts["local"]
        assert host.state == "connected" and host.holds == 0 and not running.daemon.kernels
        shown_all = json.loads((await relay_cli(home, "status", "--json"))[1])
        (shown,) = shown_all["hosts"]
        assert shown["state"] == "connected" and shown["kernels"] == 0
        status, _, err = await relay_cli(home, "connect", "no-such-host-anywhere")
        assert status != 0 and err.count("\n") == 1


@pytest.mark.parametrize("path", ["agent", "sshd"])
async def test_relay_connect_with_kernels_reserves_their_listeners_for_a_while(
    home: RelayHome, path: str
) -> None:
    """RelayMachine[host, 8] runs relay connect host --kernels 8: sixteen remote listeners
    asked for at once, so eight Runs in a row spend no round trip each on forwards. Those
    still unused after launch_timeout_s are closed: the spares go back to their number. With
    relay's agent on the host they are its listeners; without (resume_window_s = 0), sshd's."""
    window = {} if path == "agent" else {"resume_window_s": 0}
    home.add_host("local", launch_timeout_s=2, spare_forwards=4, **window)
    async with start_daemon(home) as running:
        status, _, err = await relay_cli(home, "connect", "local", "--kernels", "8")
        assert status == 0, err
        live = await running.daemon.hosts["local"].live()
        assert (live.agent is not None) == (path == "agent")

        def spares() -> int:
            return live.agent.spare_links if live.agent is not None else len(live.pool)

        assert spares() >= 16
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while spares() > 4:
            assert loop.time() < deadline, f"{spares()} listeners still held"
            await asyncio.sleep(0.1)
        assert spares() == 4
        if live.agent is not None:  # and sshd holds none for a host whose links all go
            assert len(live.pool) == 0  # through the agent
