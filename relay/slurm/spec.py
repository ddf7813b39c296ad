"""Slurm's words, pure: the commands relay runs on the login node and what they print.

Nothing here does I/O (``relay.slurm.allocation`` runs the commands). Formats are the ones
Slurm documents and Slurm 22.05 prints (squeue(1) ``-o``, scontrol(1) ``show job -d``,
sbatch(1), srun(1)); the test suite checks them against a real one-machine cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.errors import host_header
from relay.slurm.units import megabytes

if TYPE_CHECKING:  # only for annotations: settings imports units, not this module
    from relay.settings import SlurmConfig

__all__ = [
    "ENDED",
    "SQUEUE_FORMAT",
    "JobState",
    "cpu_count",
    "ended_message",
    "expand_hostlist",
    "job_name",
    "node_cpus",
    "parse_sbatch",
    "parse_squeue",
    "pending_message",
    "pick_node",
    "sbatch_argv",
    "scancel_argv",
    "scontrol_argv",
    "squeue_argv",
    "srun_prefix",
]

SEP = "|"  # neither a node name, a state, a reason nor a time contains it
# job id, state (long form), reason, node list, time left
SQUEUE_FORMAT = SEP.join(("%i", "%T", "%r", "%N", "%L"))

# Every state a job leaves the queue in (squeue(1), JOB STATE CODES), and what to tell the
# user about its kernels. Anything else (PENDING, RUNNING, CONFIGURING, SUSPENDED, ...) is
# not over. COMPLETING is on the way out: its processes are being ended, and squeue shows the
# state it ends in only once they are.
ENDED: Mapping[str, str] = {
    "TIMEOUT": "reached its time limit",
    "CANCELLED": "was cancelled",
    "COMPLETED": "ended",
    "FAILED": "failed",
    "NODE_FAIL": "lost a node (NODE_FAIL)",
    "PREEMPTED": "was preempted",
    "OUT_OF_MEMORY": "ran out of memory",
    "BOOT_FAIL": "could not boot its nodes (BOOT_FAIL)",
    "DEADLINE": "missed its deadline",
    "REVOKED": "was revoked (a federated sibling ran it)",
    "SPECIAL_EXIT": "ended (SPECIAL_EXIT)",
}


@dataclass(frozen=True)
class JobState:
    id: str
    state: str
    reason: str
    nodes: tuple[str, ...]
    time_left: str

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def ending(self) -> bool:
        return self.state == "COMPLETING"


def job_name(tag: str) -> str:
    """One name for all of a daemon's jobs on a host: squeue and scancel find them by it."""
    return f"relay-{tag}"


def sbatch_argv(cfg: SlurmConfig, kernels: int, name: str) -> list[str]:
    """An allocation for ``kernels`` kernels that holds until scancel or its time limit: a
    batch job whose only step sleeps. Kernels run in it as job steps (``srun_prefix``).
    ``--parsable`` prints ``ID[;cluster]``; output goes nowhere (no slurm-N.out in $HOME)."""
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={name}",
        f"--ntasks={kernels}",
        f"--cpus-per-task={cfg.cpus_per_kernel}",
        "--output=/dev/null",
        "--error=/dev/null",
    ]
    if cfg.kernels_per_node:
        argv.append(f"--ntasks-per-node={cfg.kernels_per_node}")
    if cfg.mem_per_kernel:
        per_cpu = -(-megabytes(cfg.mem_per_kernel) // cfg.cpus_per_kernel)
        argv.append(f"--mem-per-cpu={per_cpu}M")
    for flag, value in (
        ("--partition", cfg.partition),
        ("--account", cfg.account),
        ("--time", cfg.time),
    ):
        if value:
            argv.append(f"{flag}={value}")
    argv += cfg.sbatch_args
    argv.append("--wrap=exec sleep 2147483647")  # until scancel or the time limit
    return argv


def srun_prefix(cfg: SlurmConfig, job_id: str, node: str) -> list[str]:
    """What goes before the kernel's argv: one task of the job on ``node``, with the job's
    environment (SLURM_JOB_ID...). ``--overlap``: relay counts the slots itself, and the
    step must never wait behind the batch step's sleep for resources."""
    return [
        "srun",
        f"--jobid={job_id}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={cfg.cpus_per_kernel}",
        f"--nodelist={node}",
        "--overlap",
        "--quiet",
        "--job-name=relay-kernel",
        *cfg.srun_args,
    ]


def squeue_argv(job_ids: Iterable[str]) -> list[str]:
    # -t all: a job that just ended stays visible (MinJobAge) with the state it ended in
    return ["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}",
            f"--format={SQUEUE_FORMAT}"]  # fmt: skip


def scontrol_argv(job_id: str) -> list[str]:
    return ["scontrol", "--details", "show", "job", job_id]


def scancel_argv(job_ids: Iterable[str]) -> list[str]:
    return ["scancel", *job_ids]


def parse_sbatch(out: str) -> str:
    """The job id of ``sbatch --parsable`` (``ID`` or ``ID;cluster``): its last line, past
    what a chatty login shell printed first (an ``echo`` in ~/.bashrc)."""
    word = (out.strip().splitlines() or [""])[-1].strip().split(";", 1)[0]
    if not word.isdigit():
        raise ValueError(f"sbatch printed no job id: {out.strip()[:200]!r}")
    return word


def parse_squeue(out: str) -> list[JobState]:
    jobs = []
    for line in out.splitlines():
        fields = line.strip().split(SEP)
        if len(fields) != 5 or not fields[0]:
            continue
        job_id, state, reason, nodes, left = fields
        hosts = () if nodes in ("", "(null)") else tuple(expand_hostlist(nodes))
        jobs.append(JobState(job_id, state.split()[0], reason, hosts, left))
    return jobs


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed host list (``node[01-03,07],gpu1``) as names, in order."""
    names: list[str] = []
    for item in _split_top(text):
        names += _expand_one(item)
    return names


def _split_top(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item]


def _expand_one(item: str) -> list[str]:
    open_at = item.find("[")
    if open_at < 0:
        return [item]
    close_at = item.index("]", open_at)
    head, body, tail = item[:open_at], item[open_at + 1 : close_at], item[close_at + 1 :]
    tails = _expand_one(tail) if tail else [""]
    names = []
    for part in body.split(","):
        match = _RANGE.match(part)
        if match is None:
            raise ValueError(f"not a Slurm host list: {item!r}")
        lo, hi = match.group(1), match.group(2) or match.group(1)
        width = len(lo)
        for n in range(int(lo), int(hi) + 1):
            names += [f"{head}{n:0{width}d}{t}" for t in tails]
    return names


def cpu_count(cpu_ids: str) -> int:
    """How many CPUs ``0-3,8`` names."""
    total = 0
    for part in cpu_ids.split(","):
        match = _RANGE.match(part.strip())
        if match is None:
            raise ValueError(f"not a CPU list: {cpu_ids!r}")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        total += hi - lo + 1
    return total


_NODE_LINE = re.compile(r"^\s*Nodes=(\S+)\s+CPU_IDs=(\S+)")


def node_cpus(detail: str) -> dict[str, int]:
    """CPUs per node of a running job, from ``scontrol --details show job`` (its
    ``Nodes=... CPU_IDs=...`` lines; a host list there gives each of its nodes those CPUs)."""
    cpus: dict[str, int] = {}
    for line in detail.splitlines():
        match = _NODE_LINE.match(line)
        if match:
            count = cpu_count(match.group(2))
            for node in expand_hostlist(match.group(1)):
                cpus[node] = cpus.get(node, 0) + count
    return cpus


def pick_node(free: Mapping[str, int]) -> str | None:
    """Where the next kernel goes: the node with the most free slots (the first by name on
    a tie), so kernels spread over the allocation; None when every slot is taken."""
    best = max(sorted(free), key=lambda node: free[node], default=None)
    return best if best is not None and free[best] > 0 else None


def pending_message(host: str, job: JobState, waited_s: float) -> str:
    return (
        f"Slurm job {job.id} on {host} is still {job.state.lower()} after {waited_s:g} s "
        f"(reason: {job.reason or 'none given'}); see `squeue -j {job.id}` on the login node, "
        f"or raise launch_timeout_s / change {host_header(host, 'slurm')}"
    )


def ended_message(host: str, job: JobState) -> str:
    what = ENDED.get(job.state, f"ended ({job.state})")
    hint = f" (time in {host_header(host, 'slurm')})" if job.state == "TIMEOUT" else ""
    return f"Slurm job {job.id} on {host} {what}{hint}: its kernels were ended"
