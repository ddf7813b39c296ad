"""One host's Slurm allocation: jobs asked for on the login node, and kernels placed in them.

The allocation is a set of batch jobs (``relay.slurm.spec.sbatch_argv``), all named after the
daemon's tag. ``reserve(n)`` asks for room for n kernels at once (``relay connect --kernels``,
which ``RelayMachine[host, n]`` runs); a launch that finds no free slot and no room on its
way asks for a job of one. ``place`` waits, bounded, until a job runs with a free slot, and
fails with Slurm's reason for the wait. One task asks ``squeue`` how the jobs are (every
second while anything is pending or waited for, else every ``poll_interval_s``); a job that
ended (time limit, scancel from outside, node failure) is reported to the kernels placed in it,
which Slurm has ended. With no placement for ``idle_timeout_s``, and on ``aclose``, every job is
cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import structlog

from relay.errors import RelayError, SlurmFailed, SlurmPending
from relay.kernelcmd import shell_join
from relay.settings import SlurmConfig
from relay.slurm import spec
from relay.ssh import remote_scripts
from relay.ssh.host import Hold, HostSession
from relay.tasks import TaskSet

__all__ = ["Allocation", "Placement"]

COMMAND_TIMEOUT_S = 30.0  # one sbatch/squeue/scancel on the login node
PENDING_POLL_S = 1.0
CANCEL_TIMEOUT_S = 15.0


@dataclass
class Job:
    id: str
    kernels: int  # asked for
    submitted: float
    state: spec.JobState | None = None
    slots: dict[str, int] = field(default_factory=dict)  # node -> kernels it holds (running)
    used: dict[str, int] = field(default_factory=dict)
    placements: set[Placement] = field(default_factory=set)

    @property
    def running(self) -> bool:
        return self.state is not None and self.state.running and bool(self.slots)

    @property
    def ended(self) -> bool:
        return self.state is not None and self.state.ended

    @property
    def settling(self) -> bool:
        """On its way out (COMPLETING): no new kernels, and no final state yet."""
        return self.state is not None and self.state.ending

    def free(self) -> dict[str, int]:
        return {node: n - self.used.get(node, 0) for node, n in self.slots.items()}

    def snapshot(self) -> dict[str, Any]:
        s = self.state
        return {
            "job_id": self.id,
            "kernels_asked": self.kernels,
            "state": s.state if s else "SUBMITTED",
            "reason": s.reason if s else "",
            "nodes": list(s.nodes) if s else [],
            "time_left": s.time_left if s else "",
            "slots": dict(self.slots),
            "used": {node: n for node, n in self.used.items() if n},
        }


class Placement:
    """One kernel's slot: a job, a node, and the ``srun`` words that put it there."""

    def __init__(self, allocation: Allocation, job: Job, node: str, srun: list[str]) -> None:
        self.allocation = allocation
        self.job = job
        self.node = node
        self.srun = srun
        self.ended: str | None = None  # why Slurm ended it, once it has
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.allocation._release(self)


class Allocation:
    def __init__(
        self,
        host: HostSession,
        cfg: SlurmConfig,
        tag: str,
        on_running: Callable[[HostSession, list[str]], None] | None = None,
    ) -> None:
        self.host = host
        self._on_running = on_running
        self.cfg = cfg
        self.name = spec.job_name(tag)
        self.jobs: dict[str, Job] = {}
        self.ended: list[dict[str, Any]] = []  # the last jobs Slurm ended, newest last
        self._log = structlog.get_logger("relay.slurm").bind(host=host.key)
        self._tasks = TaskSet(self._log)
        self._changed = asyncio.Event()
        self._waiting = 0
        self._hold: Hold | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._poller: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self.closing = False

    # -- commands on the login node ---------------------------------------------------------
    async def _run(self, argv: list[str]) -> str:
        conn = await self.host.connection()
        try:
            remote = remote_scripts.script(shell_join(argv))  # whatever the login shell
            result = await remote_scripts.run(conn, remote, check=False, timeout=COMMAND_TIMEOUT_S)
        except asyncssh.TimeoutError:
            raise SlurmFailed(
                f"{argv[0]} on {self.host.key} did not finish within {COMMAND_TIMEOUT_S:g} s"
            ) from None
        except (asyncssh.Error, OSError) as exc:  # the connection was lost (an outage): asked again
            raise SlurmFailed(f"{argv[0]} on {self.host.key} could not run: {exc}") from None
        if result.exit_status != 0:
            said = str(result.stderr or result.stdout or "").strip().splitlines()
            last = said[-1] if said else f"exit status {result.exit_status}"
            if result.exit_status == 127:
                last = f"{argv[0]} not found: is Slurm's client on the login node's PATH?"
            raise SlurmFailed(f"{argv[0]} on {self.host.key} failed: {last[:300]}")
        return str(result.stdout or "")

    # -- asking -----------------------------------------------------------------------------
    def _room(self) -> int:
        """Kernels that fit without asking again: free slots, and jobs not running yet."""
        room = 0
        for job in self.jobs.values():
            if job.running:
                room += sum(max(0, n) for n in job.free().values())
            elif not job.ended and not job.settling:
                room += job.kernels
        return room

    async def reserve(self, kernels: int) -> None:
        """Room for ``kernels`` more kernels, asked for in one job if there is not."""
        short = kernels - self._room()
        if short > 0:
            await self._submit(short)

    async def _submit(self, kernels: int) -> Job:
        out = await self._run(spec.sbatch_argv(self.cfg, kernels, self.name))
        try:
            job_id = spec.parse_sbatch(out)
        except ValueError as exc:
            raise SlurmFailed(f"{self.host.key}: {exc}") from None
        job = self.jobs[job_id] = Job(job_id, kernels, time.monotonic())
        self._log.info("slurm job submitted", job_id=job_id, kernels=kernels)
        if self._hold is None:
            # the login node's connection stays while jobs do; they outlive it (Slurm's)
            self._hold = self.host.hold(outlives_connection=True)
        self._touch()
        if self._poller is None or self._poller.done():
            self._poller = self._tasks.spawn(self._poll(), name=f"squeue:{self.host.key}")
        self._changed.set()
        return job

    async def place(self, timeout_s: float) -> Placement:
        """A slot in a running job, waited for up to ``timeout_s``."""
        started = time.monotonic()
        self._waiting += 1
        try:
            if self._room() < self._waiting:
                await self._submit(1)
            async with asyncio.timeout(timeout_s):
                while True:
                    placement = self._take()
                    if placement is not None:
                        return placement
                    self._changed.clear()
                    await self._changed.wait()
                    if self._room() < self._waiting:  # a job ended under us: ask again
                        await self._submit(1)
        except TimeoutError:
            raise SlurmPending(self._why_waiting(time.monotonic() - started)) from None
        finally:
            self._waiting -= 1

    def _take(self) -> Placement | None:
        for job in sorted(self.jobs.values(), key=lambda j: int(j.id)):
            if not job.running:
                continue
            node = spec.pick_node(job.free())
            if node is None:
                continue
            job.used[node] = job.used.get(node, 0) + 1
            placement = Placement(self, job, node, spec.srun_prefix(self.cfg, job.id, node))
            job.placements.add(placement)
            self._touch()
            return placement
        return None

    def _why_waiting(self, waited_s: float) -> str:
        waiting = [j for j in self.jobs.values() if not (j.running or j.ended or j.settling)]
        if waiting:
            job = max(waiting, key=lambda j: j.submitted)
            state = job.state or spec.JobState(job.id, "PENDING", "", (), "")
            return spec.pending_message(self.host.key, state, round(waited_s, 1))
        return (
            f"no free kernel slot on {self.host.key}'s Slurm allocation after "
            f"{waited_s:.1f} s; see `relay status`"
        )

    def _release(self, placement: Placement) -> None:
        job = placement.job
        job.placements.discard(placement)
        job.used[placement.node] = max(0, job.used.get(placement.node, 0) - 1)
        self._touch()
        self._changed.set()

    # -- watching ---------------------------------------------------------------------------
    async def _poll(self) -> None:
        while self.jobs and not self.closing:
            try:
                await self.refresh()
            except (RelayError, asyncssh.Error, OSError) as exc:
                self._log.warning("squeue failed", error=str(exc))
            busy = self._waiting or any(not j.running for j in self.jobs.values())
            await asyncio.sleep(PENDING_POLL_S if busy else self.cfg.poll_interval_s)

    async def refresh(self) -> None:
        """Ask squeue once how every job is, and act on what changed. Callers at the same
        time share one squeue (64 kernels ending together ask once, not 64 times)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = self._tasks.spawn(self._refresh(), name=f"squeue:{self.host.key}")
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        # Only the jobs squeue is asked about are judged by its answer: one that sbatch
        # returned while squeue ran is missing from it without having ended (taken for ended,
        # it was forgotten and left running until its time limit).
        asked = list(self.jobs.values())
        if not asked:
            return
        argv = spec.squeue_argv(job.id for job in asked)
        seen = {s.id: s for s in spec.parse_squeue(await self._run(argv))}
        for job in asked:
            if self.jobs.get(job.id) is not job:
                continue  # ended while squeue or scontrol ran (scancel, an earlier answer)
            state = seen.get(job.id)
            if state is None:  # gone from slurmctld's memory (MinJobAge): it ended
                state = spec.JobState(job.id, "COMPLETED", "", (), "")
            before, job.state = job.state, state
            if state.running and not job.slots:
                cpus = spec.node_cpus(await self._run(spec.scontrol_argv(job.id)))
                job.slots = {n: c // self.cfg.cpus_per_kernel for n, c in cpus.items()}
                self._log.info("slurm job running", job_id=job.id, nodes=job.slots)
                if self._on_running is not None:
                    self._on_running(self.host, sorted(job.slots))
            elif state.ended:
                self._end(job)
            if before is None or before.state != state.state:
                self._changed.set()

    def _end(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        state = job.state
        assert state is not None
        message = spec.ended_message(self.host.key, state)
        if job.placements:
            self._log.warning("slurm job ended", job_id=job.id, state=state.state)
        else:
            self._log.info("slurm job ended", job_id=job.id, state=state.state)
        self.ended = [*self.ended[-9:], {**job.snapshot(), "message": message}]
        for placement in list(job.placements):
            placement.ended = message
        if not self.jobs:
            self._let_go()

    def reconfigure(self, cfg: SlurmConfig) -> None:
        """relay.toml's [slurm] table changed: the next job is asked for with ``cfg``, kernels
        are placed by it, and the idle clock restarts with its timeout (it kept the table it
        was made with for the daemon's life: a review's finding)."""
        self.cfg = cfg
        self._log.info("slurm settings changed; the next job and placement take them")
        self._touch()

    # -- letting go -------------------------------------------------------------------------
    def _touch(self) -> None:
        """Someone placed or released a kernel: restart the idle clock if none are placed."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        busy = any(job.placements for job in self.jobs.values())
        if not busy and self.jobs and not self.closing and self.cfg.idle_timeout_s > 0:
            self._idle = asyncio.get_running_loop().call_later(
                self.cfg.idle_timeout_s, self._on_idle
            )

    def _on_idle(self) -> None:
        self._idle = None
        placed = any(job.placements for job in self.jobs.values())
        if self.jobs and not placed and not self._waiting:
            self._log.info("releasing idle slurm allocation", jobs=sorted(self.jobs))
            self._tasks.spawn(self.cancel(), name=f"scancel:{self.host.key}")

    async def cancel(self, *, wait: bool = False) -> None:
        """scancel every job (bounded). With ``wait``, until squeue shows them ended: their
        processes are gone then (a job is COMPLETING while Slurm ends them)."""
        ids = sorted(self.jobs)
        if not ids:
            return
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                await self._run(spec.scancel_argv(ids))
                self._log.info("slurm jobs cancelled", jobs=ids)
                while wait:
                    states = spec.parse_squeue(await self._run(spec.squeue_argv(ids)))
                    if all(s.ended for s in states):
                        break
                    await asyncio.sleep(PENDING_POLL_S / 2)
        except (RelayError, asyncssh.Error, OSError, TimeoutError) as exc:
            self._log.warning("scancel failed", jobs=ids, error=str(exc) or "timed out")
            return
        for job_id in ids:
            job = self.jobs.get(job_id)
            if job is not None and not job.placements:
                job.state = spec.JobState(job_id, "CANCELLED", "relay released it", (), "")
                self._end(job)

    def _let_go(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._hold is not None:
            self._hold.release()
            self._hold = None

    async def aclose(self) -> None:
        """Shutdown: cancel every job, stop watching."""
        self.closing = True
        await self.cancel(wait=True)
        for job in list(self.jobs.values()):
            for placement in list(job.placements):
                placement.ended = placement.ended or "relay shut down"
        self.jobs.clear()
        self._let_go()
        await self._tasks.aclose()

    def snapshot(self) -> dict[str, Any]:
        return {
            "job_name": self.name,
            "jobs": [job.snapshot() for job in self.jobs.values()],
            "ended": list(self.ended),
        }
