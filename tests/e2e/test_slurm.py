"""Kernels on a real Slurm cluster, through its login node (relay.slurm).

The cluster is Debian's munged, slurmctld and slurmd on this machine (relay.sim.slurm), with
one 8-CPU node. Two real sshds stand for the two machines a user meets: the login node, where
relay runs sbatch, squeue and scancel, and the compute node, which relay reaches through the
login node as jump host and where the kernels run as job steps. Both give their sessions the
cluster's SLURM_CONF, as a site's /etc/slurm would. Skipped, with the reason, where Slurm's
packages are missing or the suite is not root (the daemons run as root here).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.control import RELEASE_WAIT_S
from relay.sim import frontend, wire
from relay.sim.faultproxy import FaultProxy
from relay.sim.slurm import LocalSlurm, SlurmSite
from tests.conftest import RELAY, SIM_KERNEL, RelayHome, RunningDaemon, start_daemon
from tests.e2e.helpers import (
    Controller,
    close_launches,
    controller,
    relay_cli,
    remote_command,
    request,
    wait_gone,
)
from tests.e2e.test_resume import KEEPALIVE

pytestmark = pytest.mark.slurm  # skipped, with the reason, where Slurm cannot run (conftest)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as slurm:
        yield slurm


@pytest.fixture(scope="module")
def site(cluster: LocalSlurm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmSite]:
    with SlurmSite(cluster, tmp_path_factory.mktemp("site")) as both:
        yield both


@pytest.fixture
def slurm_home(cluster: LocalSlurm, site: SlurmSite, ssh_agent: str | None) -> Iterator[RelayHome]:
    directory = Path(tempfile.mkdtemp(prefix="relay-", dir="/tmp"))
    home = RelayHome(directory, site.login, agent=ssh_agent)  # a user's shell has one
    home.daemon_options["ssh_config"] = [str(home.ssh_config)]
    home.ssh_config.write_text(site.ssh_config)  # the node's Slurm name -> its sshd
    home.add_host(
        "cluster",
        launch_timeout_s=30,
        slurm={
            "partition": cluster.partition,
            "time": "10",
            "node_port": site.node.port,
            "idle_timeout_s": 60,
            "poll_interval_s": 1,
        },
    )
    yield home
    cluster.cancel_all()
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(home: RelayHome) -> AsyncIterator[RunningDaemon]:
    async with start_daemon(home) as running:
        yield running


async def status(home: RelayHome) -> dict[str, Any]:
    return await request(home, {"op": "status"})


async def hosts(home: RelayHome) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in (await status(home))["hosts"]}


async def until(predicate: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30) -> None:
    """Poll (Slurm has no event to wait on) until ``predicate()``, bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.2)


async def launch_pool(home: RelayHome, n: int) -> list[frontend.RemoteLaunch]:
    launches = await frontend.launch_remote(remote_command(), host="cluster", n=n, env=home.env)
    assert [launch.error for launch in launches] == [None] * n
    return launches


async def test_a_pool_launched_as_the_parallel_package_does_runs_inside_one_slurm_job(
    slurm_home: RelayHome, cluster: LocalSlurm
) -> None:
    async with serving(slurm_home):
        code, out, err = await relay_cli(slurm_home, "connect", "cluster", "--kernels", "4")
        assert code == 0, err
        assert "Slurm job" in out
        launches = await launch_pool(slurm_home, 4)
        try:
            jobs = {launch.kernel.hello["slurm_job_id"] for launch in launches if launch.kernel}
            assert len(jobs) == 1 and None not in jobs, jobs  # one job asked for all four
            (job_id,) = jobs
            seen = cluster.job(str(job_id))
            assert seen is not None and seen.state == "RUNNING"
            assert seen.name.startswith("relay-")
            for launch in launches:
                assert launch.kernel is not None
                assert await launch.kernel.echo(b"on a node") == b"on a node"
            shown = await hosts(slurm_home)
            (job,) = shown["cluster"]["slurm"]["jobs"]
            assert job["job_id"] == job_id and job["state"] == "RUNNING"
            assert job["used"] == {cluster.node: 4}
            assert shown[f"cluster/{cluster.node}"]["kernels"] == 4  # per node
        finally:
            await close_launches(launches)


async def test_plain_launches_grow_the_allocation_and_idle_release_cancels_it(
    slurm_home: RelayHome, cluster: LocalSlurm
) -> None:
    """No `relay connect --kernels`: each launch that finds no room asks for a job of one.
    Once no kernel is left for idle_timeout_s, every job is cancelled and nothing stays."""
    slurm_home.hosts["cluster"]["slurm"]["idle_timeout_s"] = 2  # type: ignore[index]
    async with serving(slurm_home):
        launches = await launch_pool(slurm_home, 2)
        jobs = {launch.kernel.hello["slurm_job_id"] for launch in launches if launch.kernel}
        assert len(jobs) == 2 and None not in jobs
        await close_launches(launches)

        async def released() -> bool:
            return not cluster.jobs(active_only=True)

        await until(released, "the idle allocation was cancelled")
        assert {j.state for j in cluster.jobs() if j.id in jobs} == {"CANCELLED"}
        assert cluster.leftover_steps() == []


async def test_a_pending_job_is_reported_and_the_launch_fails_with_slurms_reason(
    slurm_home: RelayHome, cluster: LocalSlurm
) -> None:
    """Another user's job holds all 8 CPUs: relay's job pends with reason Resources, relay
    status shows it, and the launch gives up after launch_timeout_s with that reason."""
    slurm_home.hosts["cluster"]["launch_timeout_s"] = 4
    hog = cluster.submit("--cpus-per-task=8", "--time=5", "-o", "/dev/null", "--wrap=sleep 300")
    cluster.wait_for(lambda jobs: any(j.id == hog and j.state == "RUNNING" for j in jobs))
    async with serving(slurm_home):
        link = await frontend.ListeningLink.create()
        try:
            shim = asyncio.ensure_future(
                relay_cli(slurm_home, "launch", "--compute", "cluster", "k", str(link.name))
            )

            async def pending() -> bool:
                shown = (await hosts(slurm_home)).get("cluster", {})
                jobs = shown.get("slurm", {}).get("jobs", [])
                return any(j["state"] == "PENDING" and j["reason"] for j in jobs)

            await until(pending, "relay status shows the pending job and its reason")
            code, _, err = await shim
            assert code == 1
            assert "still pending" in err and "Resources" in err, err
            assert len(err.strip().splitlines()) == 1
        finally:
            link.close()


async def test_scancel_from_outside_ends_the_kernels_and_says_so(
    slurm_home: RelayHome, cluster: LocalSlurm
) -> None:
    async with serving(slurm_home):
        await relay_cli(slurm_home, "connect", "cluster", "--kernels", "2")
        launches = await launch_pool(slurm_home, 2)
        try:
            assert launches[0].kernel is not None
            job_id = launches[0].kernel.hello["slurm_job_id"]
            assert cluster.command("scancel", str(job_id)).returncode == 0
            for launch in launches:
                assert launch.kernel is not None
                await asyncio.wait_for(launch.kernel.closed(), 30)

            async def recorded() -> bool:
                failures = (await hosts(slurm_home))["cluster"]["failures"]
                return sum(
                    f"Slurm job {job_id}" in f["reason"] and "cancelled" in f["reason"]
                    for f in failures
                ) == len(launches)

            await until(recorded, "relay status names the cancelled job for each kernel")
            assert cluster.leftover_steps() == []
            assert not (await status(slurm_home))["kernels"]
        finally:
            await close_launches(launches)


async def test_the_time_limit_ends_a_controller_kernel_and_its_shim_says_so(
    slurm_home: RelayHome, cluster: LocalSlurm
) -> None:
    """A front end's own kernel on a compute node. Its job's end is moved to now (scontrol,
    as an admin may): slurmctld ends the job as TIMEOUT on its next time-limit check (every
    30 s, compiled in; relay.sim.slurm) and the shim's last line says the limit ended it."""
    async with serving(slurm_home):
        link = await frontend.ListeningLink.create()
        shim = await asyncio.create_subprocess_exec(
            RELAY, "launch", "cluster", SIM_KERNEL, str(link.name),
            env=slurm_home.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            kernel = await link.accept(60)
            job_id = kernel.hello["slurm_job_id"]
            assert job_id
            done = cluster.command("scontrol", "update", f"JobId={job_id}", "EndTime=now")
            assert done.returncode == 0, done.stderr
            _, err = await asyncio.wait_for(shim.communicate(), 90)
            assert "reached its time limit" in err.decode(), err
            job = cluster.job(str(job_id))
            assert job is not None and job.state == "TIMEOUT"
            await kernel.aclose()
        finally:
            if shim.returncode is None:
                shim.kill()
                await shim.wait()
            link.close()


async def test_shutdown_cancels_the_allocation_and_leaves_no_process(
    slurm_home: RelayHome, cluster: LocalSlurm
) -> None:
    async with serving(slurm_home) as running:
        await relay_cli(slurm_home, "connect", "cluster", "--kernels", "2")
        launches = await launch_pool(slurm_home, 2)
        assert cluster.jobs(active_only=True)
        running.stop.set_result(None)
        await asyncio.wait_for(running.task, 60)
        await close_launches(launches)
    assert not cluster.jobs(active_only=True)
    assert cluster.leftover_steps() == []


async def test_a_job_submitted_while_squeue_runs_is_neither_forgotten_nor_left_running(
    slurm_home: RelayHome, cluster: LocalSlurm
) -> None:
    """squeue answers for the jobs it was asked about. A job sbatch returned while it ran is
    missing from that answer without having ended: taken for ended, it was dropped from the
    allocation and ran on until its time limit (seen as a flaky idle-release test). The
    interleaving is forced: squeue's answer is held back until the second job exists."""
    async with serving(slurm_home) as running:
        status, _, err = await relay_cli(slurm_home, "connect", "cluster", "--kernels", "1")
        assert status == 0, err
        alloc = running.daemon.clusters.allocations["cluster"]
        (first,) = alloc.jobs
        real_run = alloc._run
        answered, go_on = asyncio.Event(), asyncio.Event()

        async def held_squeue(argv: list[str]) -> str:
            out = await real_run(argv)
            if argv[0] == "squeue" and not go_on.is_set():
                answered.set()  # squeue has answered, for the jobs it knew of
                await go_on.wait()
            return out

        alloc._run = held_squeue  # type: ignore[method-assign]
        refreshing = asyncio.ensure_future(alloc.refresh())
        await asyncio.wait_for(answered.wait(), 30)
        await alloc.reserve(2)  # one more kernel than the first job holds: a second job
        (second,) = set(alloc.jobs) - {first}
        go_on.set()
        # the held answer is the refresh in flight, ours or the poller's: refresh() joins it
        await asyncio.wait_for(asyncio.gather(refreshing, alloc.refresh()), 30)

        assert second in alloc.jobs, alloc.ended  # still the allocation's
        assert second in {job.id for job in cluster.jobs(active_only=True)}
    # and so the daemon cancelled it on the way out, with the first
    assert not cluster.jobs(active_only=True)


async def test_a_node_relay_cannot_reach_fails_the_launch_in_one_line(
    slurm_home: RelayHome, cluster: LocalSlurm
) -> None:
    """A site that lets nobody onto its nodes by SSH: the launch says which node and why, and
    relay does not fall back to listeners on the login node."""
    slurm_home.hosts["cluster"]["slurm"]["node_port"] = closed_port()  # type: ignore[index]
    slurm_home.hosts["cluster"]["connect_timeout_s"] = 5
    async with serving(slurm_home):
        link = await frontend.ListeningLink.create()
        try:
            code, _, err = await relay_cli(
                slurm_home, "launch", "--compute", "cluster", SIM_KERNEL, str(link.name)
            )
            assert code == 1
            assert len(err.strip().splitlines()) == 1, err
            assert f"on compute node {cluster.node} of cluster (Slurm job" in err, err
            assert "pam_slurm_adopt" in err
        finally:
            link.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once this returns


@contextlib.asynccontextmanager
async def login_through_proxy(site: SlurmSite) -> AsyncIterator[FaultProxy]:
    """A FaultProxy in front of the login node's sshd: the network path a test breaks."""
    proxy = await FaultProxy(site.login.port).start()
    site.login.trust_port(proxy.port)
    try:
        yield proxy
    finally:
        await proxy.aclose()


async def same_job_then_quit(
    cluster: LocalSlurm, fe: Controller, kernel: frontend.KernelLink, job_id: object, pid: object
) -> None:
    """The kernel is the one that started, in the job it started in (never cancelled), and
    its shim, running all along, exits 0 once it quits."""
    job = cluster.job(str(job_id))
    assert job is not None and job.state == "RUNNING"
    assert kernel.hello["pid"] == pid and fe.proc.returncode is None
    await kernel.quit(0)
    status, _, err = await fe.result()
    assert status == 0, err
    await kernel.aclose()


async def test_a_kernel_on_a_compute_node_outlives_the_network(
    slurm_home: RelayHome, cluster: LocalSlurm, site: SlurmSite
) -> None:
    """The path to the login node (and so to the node, reached through it) goes silently
    dead mid-transfer and comes back: the compute node's agent kept the kernel and its links,
    the node's session resumes through a new login connection, every byte arrives once, and
    the job is the same."""
    node = f"cluster/{cluster.node}"
    async with login_through_proxy(site) as proxy:
        slurm_home.hosts["cluster"].update(port=proxy.port, **KEEPALIVE)
        async with serving(slurm_home) as running, controller(slurm_home, host="cluster") as fe:
            kernel = await fe.link.accept(60)
            job_id, pid = kernel.hello["slurm_job_id"], kernel.hello["pid"]
            assert (await hosts(slurm_home))[node]["resume"]["state"] == "on"
            payload = secrets.token_bytes(2 << 20)
            echo = asyncio.ensure_future(kernel.echo(payload))
            proxy.blackhole()
            await until_resuming(running, node)
            proxy.restore()
            assert await asyncio.wait_for(echo, 90) == payload
            assert await kernel.urgent(wire.INTERRUPT, 5) == (wire.INTERRUPT, 5)
            shown = await hosts(slurm_home)
            assert shown[node]["resume"]["state"] == "on"
            assert shown[node]["resume"]["attaches"] >= 2
            await same_job_then_quit(cluster, fe, kernel, job_id, pid)


async def test_a_compute_node_kernel_ended_by_its_window_is_said_to_its_shim_at_once(
    slurm_home: RelayHome, cluster: LocalSlurm, site: SlurmSite
) -> None:
    """The path to the login node stays dead past resume_window_s: the node's agent ends the
    kernel, and its shim is told with the window's line then. It was told 20 s later
    (RELEASE_WAIT_S): the daemon first asked squeue why the kernel had ended, through the
    login node the same outage had cut off (a review's reproduction; a plain host's shim was
    told at once)."""
    node = f"cluster/{cluster.node}"
    async with login_through_proxy(site) as proxy:
        slurm_home.hosts["cluster"].update(port=proxy.port, resume_window_s=5, **KEEPALIVE)
        async with serving(slurm_home) as running, controller(slurm_home, host="cluster") as fe:
            kernel = await fe.link.accept(60)
            pid = int(kernel.hello["pid"])
            proxy.blackhole()
            await until_resuming(running, node)
            await wait_gone(pid, 60)  # the node's agent ended it: the window ran out
            status, _, err = await fe.result(RELEASE_WAIT_S / 2)
            assert status == 1 and "resume_window_s (5 s)" in err, err
            assert len(err.strip().splitlines()) == 1, err
            await kernel.aclose()
            proxy.restore()


@pytest.mark.parametrize("gateway", [False, True], ids=["login node", "gateway to it"])
async def test_a_login_node_dead_after_a_sleep_is_found_out_on_waking(
    slurm_home: RelayHome, cluster: LocalSlurm, site: SlurmSite, gateway: bool
) -> None:
    """A laptop's sleep kills the login node's connection (its NAT entry gone) while a kernel
    runs on a compute node behind it. The login node holds the allocation, which outlives a
    connection (its jobs are Slurm's; squeue is asked again), so the wake probes it as a
    bare jump host: the node's session, found dead by its own ping, resumes through a new
    login connection within the test's bound, not after the login node's keepalive
    (30 s x 3); the job is the same and was never cancelled.

    With a gateway, the login node is reached through a site's gateway (ProxyJump), and it is
    the gateway's connection the sleep kills. Nothing that resumes goes through the gateway
    directly (the login node has no agent), but the compute nodes go through it by way of
    the login node: it is probed too."""
    slow = {"keepalive_interval_s": 30, "keepalive_count_max": 3}
    node = f"cluster/{cluster.node}"
    async with login_through_proxy(site) as proxy:
        if gateway:
            slurm_home.add_host("gate", port=proxy.port, **slow)  # the gateway: the login sshd
            slurm_home.hosts["cluster"].update(jump="gate", **slow)  # its 127.0.0.1, from there
        else:
            slurm_home.hosts["cluster"].update(port=proxy.port, **slow)
        async with serving(slurm_home) as running, controller(slurm_home, host="cluster") as fe:
            kernel = await fe.link.accept(60)
            job_id, pid = kernel.hello["slurm_job_id"], kernel.hello["pid"]
            daemon_hosts = running.daemon.hosts
            login = daemon_hosts["cluster"]
            assert login.holds >= 1  # the allocation's
            assert login.via == ("gate" if gateway else None)
            payload = secrets.token_bytes(1 << 20)
            echo = asyncio.ensure_future(kernel.echo(payload))
            proxy.strand()
            running.daemon._woke(8.0)
            assert login._probing and (not gateway or daemon_hosts["gate"]._probing)
            assert await asyncio.wait_for(echo, 60) == payload
            assert proxy.accepted == 2  # the first connection through it, and its new one
            assert (await hosts(slurm_home))[node]["resume"]["attaches"] >= 2  # resumed
            await same_job_then_quit(cluster, fe, kernel, job_id, pid)


async def until_resuming(running: RunningDaemon, host: str) -> None:
    async def resuming() -> bool:
        return bool(running.daemon.hosts[host].snapshot()["resume"].get("state") == "resuming")

    await until(resuming, f"{host} resuming", 60)
