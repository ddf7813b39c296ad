"""The one-machine Slurm cluster relay's Slurm tests run against (relay.sim.slurm), on its own.

It must schedule as a real cluster does (a step inside a running job, a job pending for want
of CPUs), and it must leave nothing behind: job processes outlive the Slurm daemons
(docs/slurm-cluster.md §7), so after stop() no process may still carry its SLURM_CONF, even when
slurmctld died first and could not cancel anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.sim.slurm import Job, LocalSlurm, slurm_missing

pytestmark = pytest.mark.slurm


def _cluster(tmp_path: Path) -> LocalSlurm:
    reason = slurm_missing()
    if reason is not None:
        pytest.skip(reason)
    return LocalSlurm(tmp_path / "slurm")


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[LocalSlurm]:
    with _cluster(tmp_path) as cluster:
        yield cluster


def _processes_with(conf: Path) -> list[int]:
    """Every process whose environment names this cluster's slurm.conf (found apart from
    relay.sim.slurm's own scan, which the tests check)."""
    mine = b"SLURM_CONF=" + os.fsencode(conf)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if mine in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _running(job_id: str) -> Callable[[list[Job]], bool]:
    return lambda jobs: any(j.id == job_id and j.state == "RUNNING" for j in jobs)


def _sleeper(slurm: LocalSlurm, out: Path) -> str:
    return slurm.submit(
        "--time=5", "-n1", "-o", f"{out}/%j.out", "--wrap", "echo up; exec sleep 300"
    )


def _wait_up(out: Path, job_ids: list[str], timeout_s: float = 10) -> None:
    """Until each job's script has written its first line. A job is RUNNING in squeue before
    its processes exist; cancelled in that moment they miss the SIGTERM, and the cancel waits
    out KillWait (5 s) before SIGKILL."""
    deadline = time.monotonic() + timeout_s
    while not all(_read(out / f"{j}.out") == "up\n" for j in job_ids):
        assert time.monotonic() < deadline, f"jobs {job_ids} did not start their scripts"
        time.sleep(0.05)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_batch_job_step_cancel_and_clean_stop(tmp_path: Path) -> None:
    slurm = _cluster(tmp_path)
    with slurm:
        job_id = _sleeper(slurm, tmp_path)
        # ignores SIGTERM (so does its sleep): only KillWait's SIGKILL, or cancel_all's, ends it
        stubborn = slurm.submit(
            "--time=5", "-n1", "-o", f"{tmp_path}/%j.out",
            "--wrap", "trap '' TERM; echo up; exec sleep 300",
        )  # fmt: skip
        jobs = slurm.wait_for(lambda js: all(_running(j)(js) for j in (job_id, stubborn)), 10)
        _wait_up(tmp_path, [job_id, stubborn])
        job = next(j for j in jobs if j.id == job_id)
        assert job == Job(job_id, "wrap", "RUNNING", "None", slurm.node, "5:00")

        step = slurm.command(
            "srun", f"--jobid={job_id}", "--overlap", "-N1", "-n1",
            "bash", "-c", "echo $SLURM_JOB_ID",
        )  # fmt: skip
        assert step.returncode == 0, step.stderr
        assert step.stdout.strip() == job_id
        assert _processes_with(slurm.conf)  # slurmstepd and the job's sleep, at least

        started = time.monotonic()
        slurm.cancel_all()
        assert time.monotonic() - started < 4  # not KillWait's 5 s
        assert {j.id: j.state for j in slurm.jobs() if j.id in (job_id, stubborn)} == {
            job_id: "CANCELLED",
            stubborn: "CANCELLED",
        }
        assert slurm.job_processes() == ([], [])
    assert slurm.pids == {}
    assert _processes_with(slurm.conf) == []


def test_job_processes_die_with_a_crashed_controller(tmp_path: Path) -> None:
    slurm = _cluster(tmp_path)
    with slurm:
        job_id = _sleeper(slurm, tmp_path)
        slurm.wait_for(_running(job_id), 10)
        _wait_up(tmp_path, [job_id])
        steps = slurm.leftover_steps()
        assert steps  # the batch step's slurmstepd
        slurm.crash("slurmctld")  # nobody left to cancel the job or stop slurmd
    assert slurm.pids == {}
    assert _processes_with(slurm.conf) == []


def test_ninth_one_cpu_job_pends_for_resources(slurm: LocalSlurm, tmp_path: Path) -> None:
    assert slurm.cpus == 8
    ids = [_sleeper(slurm, tmp_path) for _ in range(slurm.cpus + 1)]

    def settled(jobs: list[Job]) -> bool:
        states = {j.id: (j.state, j.reason) for j in jobs}
        return sum(s == "RUNNING" for s, _ in states.values()) == slurm.cpus and states.get(
            ids[-1]
        ) == ("PENDING", "Resources")

    jobs = slurm.wait_for(settled, 15)
    assert {j.id for j in jobs if j.state == "RUNNING"} == set(ids[:-1])
    _wait_up(tmp_path, ids[:-1])  # a quick teardown
