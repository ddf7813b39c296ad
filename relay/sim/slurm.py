"""A real one-machine Slurm cluster: Debian's munged, slurmctld and slurmd, under one directory.

Used by the tests marked ``slurm`` and by ``make demo-slurm``: relay's Slurm support is proven
against the scheduler's own daemons and clients, not against a stand-in for ``squeue``. The
research behind every choice here, with a tested shell reference, is docs/slurm-cluster.md.

- Everything lives under the cluster's directory: config, state, spool, logs, pid files, the
  munge key and munge socket. Each cluster picks its own free ports for slurmctld and slurmd,
  so two clusters (pytest-xdist workers) do not collide, and nothing is written to /etc, /run
  or /var.
- All three daemons run as root, in the foreground, as children of this process: their pids
  are known without pid files, and :meth:`LocalSlurm.stop` acts on those pids only. munged runs
  with ``--force`` because it refuses a socket whose directory chain not everybody may search
  (pytest's temporary directories are mode 0700); as root it needs no ``munge`` user either.
- Readiness is what a client sees, not a sleep: ``sinfo`` reports the node usable, then one
  ``srun true`` runs. A daemon that dies meanwhile ends the wait at once, and the error carries
  the tails of the logs.
- Jobs outlive ``scontrol shutdown``: slurmstepd starts a session of its own, so stopping the
  daemons leaves job processes running. :meth:`LocalSlurm.stop` cancels every job and waits for
  the queue to drain first, and afterwards kills what is left of this cluster's jobs: each
  slurmstepd carrying its ``SLURM_CONF`` with its session, and each process carrying that
  ``SLURM_CONF`` and a ``SLURM_JOB_ID``. Nothing is ever killed by name.
- Time limits: slurmctld tests them on a fixed 30 s timer counted from its start
  (``PERIODIC_TIMEOUT``, compiled in; no slurm.conf option changes it), and ``--time`` counts
  whole minutes (``--time=0:30`` is 1:00). A job with ``--time=N`` therefore ends as TIMEOUT
  between N minutes and N minutes + :data:`TIME_LIMIT_CHECK_S` after it started; its
  processes get SIGTERM then, and SIGKILL KillWait (5 s) later.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "TIME_LIMIT_CHECK_S",
    "Job",
    "LocalSlurm",
    "SlurmSite",
    "SlurmUnavailable",
    "slurm_missing",
]

# the programs this module runs (the daemons, munge's tools, and the clients tests use)
REQUIRED = (
    "slurmctld",
    "slurmd",
    "munged",
    "mungekey",
    "munge",
    "unmunge",
    "srun",
    "sbatch",
    "squeue",
    "scancel",
    "sinfo",
    "scontrol",
)
# root's programs are in sbin, which a non-login PATH may lack
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)
START_TIMEOUT_S = 30.0  # the whole of start(): munge, both daemons, sinfo, the first srun
MUNGE_TIMEOUT_S = 5.0  # munged answers in about 0.03 s
SRUN_TIMEOUT_S = 20.0  # the first srun (about 0.1 s once the node is idle)
DRAIN_TIMEOUT_S = 10.0  # stop(): cancelled jobs leave the queue in about 0.3 s
HURRY_S = 1.0  # cancel_all(): then SIGKILL what did not take the SIGTERM (not KillWait's 5 s)
EXIT_TIMEOUT_S = 10.0  # stop(): a daemon's own shutdown, before SIGTERM, then SIGKILL
POLL_S = 0.1
# slurmctld's job time-limit timer (PERIODIC_TIMEOUT in src/slurmctld/slurmctld.h, 22.05)
TIME_LIMIT_CHECK_S = 30.0
# cannot occur in squeue's fields, not even in a job name a user chose (ASCII unit separator)
_SEP = "\x1f"
_FIELDS = ("%i", "%T", "%r", "%N", "%l", "%j")  # the name last: it may hold anything else
_USABLE = ("idle", "mixed", "allocated", "completing")


class SlurmUnavailable(Exception):
    """No cluster here: a program or root is missing, or the daemons did not come up (the
    message then ends with the tails of their logs)."""


def _which(program: str) -> str | None:
    return shutil.which(program, path=_SEARCH_PATH)


def slurm_missing() -> str | None:
    """Why a :class:`LocalSlurm` cannot run here, in one line; ``None`` if it can."""
    missing = [p for p in REQUIRED if _which(p) is None]
    if missing:
        return (
            f"Slurm/munge programs not found: {', '.join(missing)} "
            "(apt-get install --no-install-recommends slurmctld slurmd slurm-client munge)"
        )
    if os.geteuid() != 0:
        return "a local Slurm cluster runs its daemons as root; this process is not root"
    return None


@dataclass(frozen=True)
class Job:
    """One line of ``squeue``: states and reasons as Slurm spells them (``RUNNING``,
    ``PENDING``/``Resources``, ``TIMEOUT``, ...)."""

    id: str
    name: str
    state: str
    reason: str
    nodes: str
    time_limit: str


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel has free now: all are held until all are chosen."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session id) of a live process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[3])


def _pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _gone(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is None or stat[0] in ("Z", "X")  # a zombie holds nothing but its pid


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open(errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
    except OSError:
        return []


class LocalSlurm:
    """``with LocalSlurm(dir) as slurm:``; ``slurm.command("sbatch", ...)``, ``slurm.jobs()``.

    One node named after this host (``hostname -s``, as slurmd names itself) with ``cpus``
    CPUs whatever the hardware has, in one partition. Clients need ``SLURM_CONF``: use
    :attr:`env` or :meth:`command`; os.environ is left alone.
    """

    def __init__(
        self,
        directory: Path,
        *,
        cpus: int = 8,
        real_memory_mb: int = 4000,
        partition: str = "debug",
        cluster: str = "relaytest",
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.cpus = cpus
        self.real_memory_mb = real_memory_mb
        self.partition = partition
        self.cluster = cluster
        # slurm.conf lines added or replaced, e.g. {"MinJobAge": "300"} or
        # {"PrologFlags": "contain"} (pam_slurm_adopt; makes srun 2.5x slower)
        self.options = dict(options or {})
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.dir / "etc" / "slurm.conf"
        self.log_dir = self.dir / "log"
        self.munge_dir = self.dir / "munge"
        self.munge_socket = self.munge_dir / "munge.socket.2"
        self.ctld_port = 0
        self.slurmd_port = 0
        # wall-clock time slurmctld was started: its time-limit timer runs from about then
        self.started_at: float | None = None
        self._munged: subprocess.Popen[bytes] | None = None
        self._slurmctld: subprocess.Popen[bytes] | None = None
        self._slurmd: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalSlurm:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """os.environ for a client of this cluster: its ``SLURM_CONF``, and no other SLURM_
        variable (one inherited from a surrounding job would steer srun into that job)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        return env

    @property
    def pids(self) -> dict[str, int]:
        """The daemons this object started and has not yet reaped."""
        procs = {"munged": self._munged, "slurmctld": self._slurmctld, "slurmd": self._slurmd}
        return {name: p.pid for name, p in procs.items() if p is not None}

    @property
    def running(self) -> bool:
        procs = (self._munged, self._slurmctld, self._slurmd)
        return all(p is not None and p.poll() is None for p in procs)

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start munged, slurmctld and slurmd, and return once a job step runs (bounded by
        START_TIMEOUT_S). On failure everything started is stopped again and
        :class:`SlurmUnavailable` carries the tails of the logs."""
        reason = slurm_missing()
        if reason is not None:
            raise SlurmUnavailable(reason)
        if self._munged is not None or self._slurmctld is not None:
            raise RuntimeError(f"the Slurm cluster in {self.dir} is already started")
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            self._prepare()
            self._start_munged(min(deadline, time.monotonic() + MUNGE_TIMEOUT_S))
            for _attempt in range(3):
                # free a moment ago; if another process took one since, try other ports
                self.ctld_port, self.slurmd_port = _free_ports(2)
                self.write_config()
                self._start_daemons()
                if self._wait_ready(deadline):
                    return
                self._stop_daemons(graceful=False)
            raise SlurmUnavailable(self._failure("no free ports for slurmctld and slurmd"))
        except BaseException:
            self.stop()
            raise

    def _prepare(self) -> None:
        # 0755 down from the cluster's directory: a job's non-root user must read slurm.conf
        for path in (
            self.dir,
            self.conf.parent,
            self.dir / "state",
            self.dir / "spool",
            self.dir / "spool" / f"slurmd-{self.node}",  # slurmd logs an error if absent
            self.dir / "run",
            self.log_dir,
            self.munge_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
        key = self.munge_dir / "munge.key"
        if not key.exists():
            self._run_checked(["mungekey", "--create", "--keyfile", str(key)])
        key.chmod(0o600)  # munged refuses a key others may read

    def _run_checked(self, argv: list[str]) -> None:
        program = _which(argv[0]) or argv[0]
        result = subprocess.run(
            [program, *argv[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        if result.returncode != 0:
            raise SlurmUnavailable(
                f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}"
            )

    def config_text(self) -> str:
        """slurm.conf as docs/slurm-cluster.md §3 tested it, for this directory and ports."""
        d = self.dir
        options = {
            "ClusterName": self.cluster,
            # daemons and clients meet on loopback, whatever this host's name resolves to
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "SlurmctldPort": str(self.ctld_port),
            "SlurmdPort": str(self.slurmd_port),
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "StateSaveLocation": f"{d}/state",
            "SlurmdSpoolDir": f"{d}/spool/slurmd-%n",
            "SlurmctldPidFile": f"{d}/run/slurmctld.pid",
            "SlurmdPidFile": f"{d}/run/slurmd-%n.pid",
            "SlurmctldLogFile": f"{self.log_dir}/slurmctld.log",
            "SlurmdLogFile": f"{self.log_dir}/slurmd.log",
            "SlurmctldDebug": "info",
            "SlurmdDebug": "info",
            "MailProg": "/bin/true",  # else "Configured MailProg is invalid"
            # no cgroups: linuxproc still finds a job's processes when it is cancelled
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "MpiDefault": "none",
            "SwitchType": "switch/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "SchedulerType": "sched/backfill",
            # batch jobs start at slurmctld's next 1 s tick, not after up to 3 s (the default
            # batch_sched_delay) plus the main loop's interval
            "SchedulerParameters": "sched_interval=2,batch_sched_delay=0",
            "ReturnToService": "2",
            # the node may claim more CPUs than the machine has (8 one-CPU jobs on 2 cores)
            "SlurmdParameters": "config_overrides",
            "MessageTimeout": "10",
            "SlurmdTimeout": "30",
            "InactiveLimit": "0",
            "KillWait": "5",  # SIGTERM to SIGKILL at a time limit or cancel
            # finished jobs stay visible to squeue --states=all this long (seconds)
            "MinJobAge": "30",
            "OverTimeLimit": "0",
            # an impossible request fails at submission instead of pending forever
            "EnforcePartLimits": "ALL",
            **self.options,
        }
        lines = [f"{k}={v}\n" for k, v in options.items()]
        lines.append(
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.real_memory_mb} State=UNKNOWN\n"
        )
        lines.append(
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE "
            "State=UP OverSubscribe=NO\n"
        )
        return "".join(lines)

    def write_config(self) -> Path:
        self.conf.write_text(self.config_text())
        self.conf.chmod(0o644)
        return self.conf

    def _daemon(
        self, name: str, argv: list[str], env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        # stdout and stderr to a file, not a pipe: nothing has to drain it, and what a daemon
        # says before it opens its own log file (a bad config) is kept
        with (self.log_dir / f"{name}.out").open("ab") as out:
            return subprocess.Popen(
                [_which(argv[0]) or argv[0], *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,  # a process group of its own, apart from the caller's
            )

    def _start_munged(self, deadline: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self._munged = self._daemon(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",  # accept a directory chain only root may search (a warning)
                f"--socket={self.munge_socket}",
                f"--key-file={self.munge_dir / 'munge.key'}",
                f"--pid-file={self.munge_dir / 'munged.pid'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
            env,
        )
        munge, unmunge = _which("munge") or "munge", _which("unmunge") or "unmunge"
        sock = str(self.munge_socket)
        while True:
            if self._munged.poll() is not None:
                raise SlurmUnavailable(
                    self._failure(f"munged exited with status {self._munged.returncode}")
                )
            if self.munge_socket.exists():
                # a credential made and decoded again: the socket is up and the key works
                with contextlib.suppress(subprocess.TimeoutExpired):
                    cred = subprocess.run(
                        [munge, "-n", "-S", sock],
                        capture_output=True,
                        timeout=2,
                        check=False,
                    )
                    if cred.returncode == 0:
                        check = subprocess.run(
                            [unmunge, "-S", sock],
                            input=cred.stdout,
                            capture_output=True,
                            timeout=2,
                            check=False,
                        )
                        if check.returncode == 0:
                            return
            if time.monotonic() >= deadline:
                raise SlurmUnavailable(self._failure("munged did not answer on its socket"))
            time.sleep(POLL_S)  # munged has no readiness signal to wait on

    def _start_daemons(self) -> None:
        conf = str(self.conf)
        self.started_at = time.time()
        self._slurmctld = self._daemon("slurmctld", ["slurmctld", "-D", "-f", conf], self.env)
        self._slurmd = self._daemon("slurmd", ["slurmd", "-D", "-f", conf], self.env)

    def _wait_ready(self, deadline: float) -> bool:
        """True once the node is usable and a step ran; False if a port was taken meanwhile
        (the daemon that found it so has exited); SlurmUnavailable on anything else."""
        resumed_at = 0.0
        while True:
            for name, proc in (("slurmctld", self._slurmctld), ("slurmd", self._slurmd)):
                assert proc is not None
                if proc.poll() is not None:
                    if self._port_taken(name):
                        return False
                    raise SlurmUnavailable(
                        self._failure(f"{name} exited with status {proc.returncode}")
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SlurmUnavailable(self._failure(f"node {self.node} never became usable"))
            state = ""
            with contextlib.suppress(subprocess.TimeoutExpired):
                state = self.command(
                    "sinfo", "-h", "-n", self.node, "-o", "%T", timeout_s=min(3.0, remaining)
                ).stdout.strip()
            # a trailing * means slurmd has not answered yet
            if state in _USABLE:
                break
            if state.startswith(("down", "drain")) and time.monotonic() - resumed_at > 1:
                resumed_at = time.monotonic()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.command(
                        "scontrol", "update", f"nodename={self.node}", "state=resume", timeout_s=3
                    )
            time.sleep(POLL_S)  # sinfo has no wait-until; it answers in about 10 ms
        remaining = deadline - time.monotonic()
        try:
            result = self.command(
                "srun",
                "-N1",
                "-t",
                "1",
                f"--partition={self.partition}",
                "true",
                timeout_s=max(1.0, min(SRUN_TIMEOUT_S, remaining)),
            )
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(self._failure("the first srun did not finish")) from None
        if result.returncode != 0:
            raise SlurmUnavailable(
                self._failure(f"srun true failed ({result.returncode}): {result.stderr.strip()}")
            )
        return True

    def _port_taken(self, name: str) -> bool:
        lines = _tail(self.log_dir / f"{name}.log", 20) + _tail(self.log_dir / f"{name}.out", 20)
        return any("Address already in use" in line for line in lines)

    def log_tails(self, lines: int = 12) -> str:
        """The last lines each daemon wrote, for an error message: their stdout and stderr
        (``*.out``), which hold all of slurmctld's and slurmd's log lines too (``-D``)."""
        parts = []
        for path in sorted(self.log_dir.glob("*.out")):
            tail = _tail(path, lines)
            if tail:
                parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)

    def _failure(self, reason: str) -> str:
        return f"local Slurm cluster in {self.dir} did not start: {reason}\n{self.log_tails()}"

    # -- clients ---------------------------------------------------------------------------

    def command(self, *argv: str, timeout_s: float = 15) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client (``sbatch``, ``squeue``, ...) against this cluster, output
        captured as text. Raises subprocess.TimeoutExpired (the client killed) after
        ``timeout_s``; a non-zero exit status is the caller's to judge."""
        program = _which(argv[0]) or argv[0]
        return subprocess.run(
            [program, *argv[1:]],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def submit(self, *args: str, timeout_s: float = 15) -> str:
        """``sbatch --parsable ARGS``: the new job's id; RuntimeError with sbatch's message
        if it refused."""
        result = self.command("sbatch", "--parsable", *args, timeout_s=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip().split(";")[0]  # "id" or "id;cluster"

    def jobs(self, *, active_only: bool = False) -> list[Job]:
        """Every job slurmctld still holds: pending, running and completing ones, and
        finished ones for MinJobAge seconds (with ``active_only``, as plain squeue: not
        those)."""
        states = [] if active_only else ["--states=all"]
        result = self.command("squeue", "-h", *states, "-o", _SEP.join(_FIELDS))
        if result.returncode != 0:
            raise RuntimeError(f"squeue failed ({result.returncode}): {result.stderr.strip()}")
        jobs = []
        for line in result.stdout.splitlines():
            fields = line.split(_SEP, len(_FIELDS) - 1)
            if len(fields) != len(_FIELDS):
                continue
            job_id, state, reason, nodes, time_limit, name = fields
            jobs.append(Job(job_id, name, state, reason, nodes, time_limit))
        return jobs

    def job(self, job_id: str) -> Job | None:
        return next((j for j in self.jobs() if j.id == job_id), None)

    def wait_for(
        self,
        predicate: Callable[[list[Job]], bool],
        timeout_s: float = 15,
        *,
        active_only: bool = False,
    ) -> list[Job]:
        """Poll :meth:`jobs` until ``predicate(jobs)`` holds and return those jobs;
        TimeoutError (with the last jobs seen) after ``timeout_s``. Slurm has no event a
        client could wait on, so this polls squeue (about 10 ms a call)."""
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = self.jobs(active_only=active_only)
            if predicate(jobs):
                return jobs
            if time.monotonic() >= deadline:
                raise TimeoutError(f"after {timeout_s} s the jobs are {jobs}")
            time.sleep(POLL_S)

    def cancel_all(self, timeout_s: float = 15) -> None:
        """Cancel every job (any user, any partition) and wait until none is pending,
        running or completing, so that what runs next finds every CPU free; TimeoutError
        after ``timeout_s``.

        A job cancelled while its script is being started can miss the SIGTERM; Slurm would
        then wait out KillWait before its SIGKILL. So the processes of jobs still in the
        queue after HURRY_S are SIGKILLed here, and slurmstepd reports them ended at once."""
        deadline = time.monotonic() + timeout_s
        # an array or heterogeneous job is cancelled whole by its leading number
        ids = sorted(
            {m.group() for j in self.jobs(active_only=True) if (m := re.match(r"\d+", j.id))}
        )
        if not ids:
            return
        self.command("scancel", "--full", *ids, timeout_s=max(1.0, deadline - time.monotonic()))
        hurry_at = time.monotonic() + HURRY_S
        while True:
            jobs = self.jobs(active_only=True)
            if not jobs:
                return
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"after {timeout_s} s these jobs are still active: {jobs}")
            if now >= hurry_at:
                hurry_at = deadline
                # every job's tasks: every job is being cancelled
                _kill(set(self.job_processes()[1]) - _self_and_ancestors())
            time.sleep(POLL_S)  # squeue is all there is to wait on

    # -- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the cluster and every job process it started; safe to call again, and after
        a failed start. Every wait is bounded; only this cluster's processes are touched."""
        ctld = self._slurmctld
        told = False
        if ctld is not None and ctld.poll() is None:
            answering = True
            # jobs first: slurmstepd and the job's processes survive scontrol shutdown
            try:
                self.cancel_all(timeout_s=DRAIN_TIMEOUT_S)
            except TimeoutError:
                pass  # jobs still completing: the leftover scan below ends them
            except (subprocess.TimeoutExpired, RuntimeError):
                answering = False  # squeue or scancel got no answer: neither would shutdown
            if answering:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    result = self.command("scontrol", "shutdown", timeout_s=EXIT_TIMEOUT_S)
                    told = result.returncode == 0  # slurmctld passes it on to slurmd
        # without slurmctld nobody tells slurmd: SIGTERM (its clean shutdown) at once
        self._stop_daemons(graceful=told)
        self.kill_leftovers()
        self._stop_munged()

    def crash(self, daemon: str = "slurmctld") -> None:
        """SIGKILL one daemon (``munged``, ``slurmctld`` or ``slurmd``) and reap it, as a
        crash would end it; :meth:`stop` still cleans up after the others and the jobs."""
        proc = {"munged": self._munged, "slurmctld": self._slurmctld, "slurmd": self._slurmd}[
            daemon
        ]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _stop_daemons(self, *, graceful: bool) -> None:
        deadline = time.monotonic() + (EXIT_TIMEOUT_S if graceful else 0.0)
        for proc in (self._slurmctld, self._slurmd):
            if proc is not None:
                _end(proc, max(0.0, deadline - time.monotonic()))
        self._slurmctld = self._slurmd = None

    def _stop_munged(self) -> None:
        # SIGTERM is what ``munged --stop`` sends; that command would then wait for the pid to
        # vanish, which a child of ours does not do until we reap it (10 s lost)
        if self._munged is not None:
            _end(self._munged, 0.0)
            self._munged = None

    def job_processes(self) -> tuple[list[int], list[int]]:
        """Live processes of this cluster's jobs: its slurmstepds, and every other process
        whose environment holds this cluster's SLURM_CONF and a SLURM_JOB_ID (what a job's
        tasks get). Clients run with :attr:`env` have no SLURM_JOB_ID and are not counted."""
        conf = b"SLURM_CONF=" + os.fsencode(self.conf)
        steps, tasks = [], []
        for pid in _pids():
            if pid == os.getpid() or _gone(pid):
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if conf not in environ:
                continue
            if comm == "slurmstepd":
                steps.append(pid)
            elif any(v.startswith(b"SLURM_JOB_ID=") for v in environ):
                tasks.append(pid)
        return steps, tasks

    def leftover_steps(self) -> list[int]:
        """slurmstepd processes of this cluster (their environ holds its SLURM_CONF)."""
        return self.job_processes()[0]

    def kill_leftovers(self, timeout_s: float = 5.0) -> list[int]:
        """SIGKILL what is left of this cluster's jobs, and wait (bounded) until it is gone;
        returns the pids. That is every slurmstepd with its session and descendants, and
        every task process, also one whose slurmstepd has exited: a job cancelled while its
        script was being started can leave the script's children running, orphaned, after
        Slurm reports the job done (proctrack/linuxproc has no cgroup to hold them)."""
        steps, tasks = self.job_processes()
        if not steps and not tasks:
            return []
        table: dict[int, tuple[int, int]] = {}  # pid -> (ppid, sid)
        for pid in _pids():
            stat = _proc_stat(pid)
            if stat is not None:
                table[pid] = (stat[1], stat[2])
        own_session = os.getsid(0)
        victims = set(steps) | set(tasks)
        for step in steps:
            sid = table.get(step, (0, 0))[1]
            # slurmstepd leads a session of its own; never take a session it merely joined
            if sid == step and sid != own_session:
                victims.update(pid for pid, (_, s) in table.items() if s == sid)
        todo = list(victims)
        while todo:  # descendants, wherever their sessions are
            parent = todo.pop()
            for pid, (ppid, _) in table.items():
                if ppid == parent and pid not in victims:
                    victims.add(pid)
                    todo.append(pid)
        victims -= _self_and_ancestors()
        _kill(victims)
        deadline = time.monotonic() + timeout_s
        while not all(_gone(pid) for pid in victims) and time.monotonic() < deadline:
            time.sleep(POLL_S)  # no way to wait for processes that are not our children
        return sorted(victims)


def _self_and_ancestors() -> set[int]:
    """Never to be killed, whatever their environment says (a test run inside a job)."""
    found = set()
    pid = os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        stat = _proc_stat(pid)
        if stat is None:
            break
        pid = stat[1]
    return found


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _end(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """Wait ``grace_s`` for ``proc`` to exit by itself, then SIGTERM, then SIGKILL its process
    group (its own, from start_new_session: slurmctld's slurmscriptd is in it)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
        return
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
        return
    # not yet reaped, so the group id is still this process's and cannot be another's
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class SlurmSite:
    """A cluster as a user meets it: the login node's sshd, where Slurm's clients run, and a
    compute node's sshd, reached through the login node (both real OpenSSH; both give their
    sessions this cluster's SLURM_CONF, as a site's /etc/slurm would). The user's one key
    opens both, and the node's host key is known under its Slurm name, as a site's
    ssh_known_hosts has it. ``ssh_config`` maps that name to where the node's sshd listens.
    """

    def __init__(self, cluster: LocalSlurm, directory: Path) -> None:
        from relay.sim.sshd import ThrowawaySSHD  # noqa: PLC0415 (tests of the cluster alone)

        self.cluster = cluster
        options = {"SetEnv": f"SLURM_CONF={cluster.conf}"}
        self.login = ThrowawaySSHD(Path(directory) / "login", options=options)
        self.node = ThrowawaySSHD(Path(directory) / "node", options=options)

    def __enter__(self) -> SlurmSite:
        self.login.start()
        try:
            self.node.prepare()
            pub = self.login.client_key.with_suffix(".pub").read_text()
            self.node.authorized_keys.write_text(pub)
            self.node.start()
        except BaseException:
            self.login.stop()
            raise
        kind, key = self.node.host_key.with_suffix(".pub").read_text().split()[:2]
        with self.login.known_hosts.open("a") as fh:
            for name in (self.cluster.node, "127.0.0.1"):
                fh.write(f"[{name}]:{self.node.port} {kind} {key}\n")
        return self

    def __exit__(self, *exc: object) -> None:
        self.node.stop()
        self.login.stop()

    @property
    def ssh_config(self) -> str:
        return f"Host {self.cluster.node}\n  HostName 127.0.0.1\n"

    def host_toml(self, name: str, *, kernel: str, **slurm: object) -> str:
        """``[hosts.NAME]`` for the login node with its ``slurm`` table."""
        keys: dict[str, object] = {
            "partition": self.cluster.partition,
            "node_port": self.node.port,
            **slurm,
        }
        return self.login.host_toml(name, kernel=kernel, slurm=keys)
