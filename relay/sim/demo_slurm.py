"""``make demo-slurm``: kernels on a Slurm cluster's compute node, end to end, on this machine.

Starts a real one-machine Slurm cluster (munged, slurmctld, slurmd; relay.sim.slurm), a login
node's sshd and a compute node's sshd, writes a relay.toml whose host ``cluster`` has a
``[hosts.cluster.slurm]`` table, starts ``relay serve``, and acts as the front end of
``LaunchKernels[RelayMachine["cluster", 8]]``: ``relay connect cluster --kernels 8`` (one job
for all eight), then the Parallel package's pattern with ``relay launch``. It prints each
kernel's node and Slurm job, ``relay status``, and after shutdown that no job is left. Needs
root and Debian's Slurm packages (``make system-packages`` installs them).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from relay.sim import frontend
from relay.sim.demo import KERNEL, RELAY, _exchange, serving
from relay.sim.slurm import LocalSlurm, SlurmSite, SlurmUnavailable, slurm_missing
from relay.sim.sshd import toml_value

KERNELS = 8


async def _relay(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        RELAY, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return out.decode(errors="replace").rstrip()


async def run(workdir: Path) -> int:
    print(
        f"relay demo-slurm: a Slurm cluster, two sshds, the daemon and the simulator in {workdir}"
    )
    (workdir / "slurm").mkdir()
    with LocalSlurm(workdir / "slurm") as cluster, SlurmSite(cluster, workdir) as site:
        print(
            f"  Slurm: node {cluster.node} ({cluster.cpus} CPUs), partition {cluster.partition}; "
            f"login node sshd on 127.0.0.1:{site.login.port}, compute node sshd on "
            f"127.0.0.1:{site.node.port}"
        )
        (workdir / "ssh_config").write_text(site.ssh_config)
        config = workdir / "relay.toml"
        config.write_text(
            f"[daemon]\nssh_config = {toml_value([str(workdir / 'ssh_config')])}\n"
            + site.host_toml("cluster", kernel=KERNEL, time="10", idle_timeout_s=30)
        )
        env = dict(
            cluster.env,
            RELAY_CONFIG=str(config),
            RELAY_SOCKET=str(workdir / "run" / "relay.sock"),
        )
        async with serving(env) as daemon_log:
            status = await _front_end(env, cluster)
        left = cluster.jobs(active_only=True)
        print(f"  after relay stopped: {len(left)} Slurm jobs left, "
              f"{len(cluster.leftover_steps())} job processes left")  # fmt: skip
        status = status or (1 if left else 0)
    if status != 0:
        sys.stderr.write(b"".join(daemon_log[-20:]).decode(errors="replace"))
    return status


async def _front_end(env: dict[str, str], cluster: LocalSlurm) -> int:
    started = time.monotonic()
    print('\n$ relay connect cluster --kernels 8   (what RelayMachine["cluster", 8] runs)')
    print("  " + (await _relay(env, "connect", "cluster", "--kernels", str(KERNELS))).replace(
        "\n", "\n  "
    ))  # fmt: skip
    remote = f'{RELAY} launch --compute "`1`" "{KERNEL}" "`2`"'
    launches = await frontend.launch_remote(remote, host="cluster", n=KERNELS, env=env)
    total_ms = (time.monotonic() - started) * 1000
    kernels = [launch.kernel for launch in launches if launch.kernel is not None]
    print(f"\n  {'front end link':<32} {'job':>5}  {'rewritten link (on the node)':<32} data")
    results = []
    for launch in launches:
        if launch.kernel is None:
            print(f"  launch failed: {launch.error}", file=sys.stderr)
            continue
        ok = await _exchange(launch.kernel)
        results.append(ok)
        job = launch.kernel.hello.get("slurm_job_id") or "-"
        print(f"  {launch.link.name!s:<32} {job:>5}  {launch.kernel.hello['link_name']:<32} {ok}")
    print(
        f"\n  LaunchKernels of {KERNELS} kernels on the compute node, as the Parallel package "
        f"runs it, job start included: {total_ms:.0f} ms"
    )
    print("\n$ relay status")
    print("  " + (await _relay(env, "status")).replace("\n", "\n  "))
    for kernel in kernels:
        await kernel.quit(0)
        await kernel.aclose()
    for launch in launches:
        launch.link.close()
    if len(kernels) != KERNELS or any(ok != "ok" for ok in results):
        print("relay demo-slurm: FAILED", file=sys.stderr)
        return 1
    print("relay demo-slurm: every kernel ran inside relay's Slurm job and exchanged data")
    return 0


def main() -> int:
    missing = slurm_missing()
    if missing is not None:
        print(f"relay demo-slurm: cannot run a Slurm cluster here: {missing}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="relay-slurm-", dir="/tmp"))
    workdir.chmod(0o755)  # the cluster's files are read by job steps and sshd sessions
    try:
        return asyncio.run(run(workdir))
    except SlurmUnavailable as exc:
        print(f"relay demo-slurm: the Slurm cluster did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
