"""Slurm's words as relay writes and reads them (relay.slurm.spec), and [hosts.X.slurm]."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relay.settings import RelayConfig, SlurmConfig
from relay.slurm import spec


def slurm(**keys: object) -> SlurmConfig:
    config = RelayConfig.model_validate({"hosts": {"c": {"hostname": "login", "slurm": keys}}})
    assert config.hosts["c"].slurm is not None
    return config.hosts["c"].slurm


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("vm", ["vm"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("a[1-2],b5", ["a1", "a2", "b5"]),
        ("r[1-2]n[08-09]", ["r1n08", "r1n09", "r2n08", "r2n09"]),
        ("gpu[9-11]", ["gpu9", "gpu10", "gpu11"]),
    ],
)
def test_host_lists_expand_as_slurm_writes_them(text: str, names: list[str]) -> None:
    assert spec.expand_hostlist(text) == names


def test_a_broken_host_list_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="host list"):
        spec.expand_hostlist("node[a-b]")


def test_cpus_per_node_come_from_scontrols_detail_lines() -> None:
    detail = """JobId=7 JobName=relay-ab
   NodeList=n[1-2],vm BatchHost=n1
     Nodes=n[1-2] CPU_IDs=0-3 Mem=0 GRES=
     Nodes=vm CPU_IDs=0,2,5-6 Mem=0 GRES=
   MinCPUsNode=1 MinMemoryNode=0"""
    assert spec.node_cpus(detail) == {"n1": 4, "n2": 4, "vm": 4}


def test_squeue_lines_parse_including_nodes_and_pending_reasons() -> None:
    out = "12|RUNNING|None|node[1-2]|9:58\n13|PENDING|Resources||10:00\n\n"
    running, pending = spec.parse_squeue(out)
    assert running.running and running.nodes == ("node1", "node2")
    assert not pending.running and not pending.ended and pending.reason == "Resources"
    assert pending.nodes == ()


@pytest.mark.parametrize(
    ("state", "ended", "ending"),
    [("TIMEOUT", True, False), ("CANCELLED", True, False), ("COMPLETING", False, True),
     ("RUNNING", False, False), ("PENDING", False, False)],
)  # fmt: skip
def test_which_states_end_a_job(state: str, ended: bool, ending: bool) -> None:
    job = spec.JobState("1", state, "", (), "")
    assert (job.ended, job.ending) == (ended, ending)


def test_sbatch_asks_for_the_kernels_with_every_configured_key() -> None:
    cfg = slurm(
        partition="short",
        account="proj",
        time="1-00:00",
        cpus_per_kernel=2,
        mem_per_kernel="4G",
        kernels_per_node=8,
        sbatch_args=["--qos=interactive"],
    )
    argv = spec.sbatch_argv(cfg, 16, "relay-ab")
    assert argv[:2] == ["sbatch", "--parsable"]
    for word in (
        "--job-name=relay-ab",
        "--ntasks=16",
        "--cpus-per-task=2",
        "--ntasks-per-node=8",
        "--mem-per-cpu=2048M",
        "--partition=short",
        "--account=proj",
        "--time=1-00:00",
        "--qos=interactive",
        "--output=/dev/null",
    ):
        assert word in argv
    assert argv[-1].startswith("--wrap=exec sleep")


def test_a_kernel_is_one_task_of_the_job_on_its_node() -> None:
    prefix = spec.srun_prefix(slurm(cpus_per_kernel=4, srun_args=["--mpi=none"]), "12", "n3")
    assert prefix[0] == "srun"
    assert {"--jobid=12", "--nodes=1", "--ntasks=1", "--cpus-per-task=4", "--nodelist=n3",
            "--overlap", "--mpi=none"} <= set(prefix)  # fmt: skip


def test_kernels_spread_to_the_node_with_the_most_free_slots() -> None:
    assert spec.pick_node({"a": 1, "b": 3, "c": 3}) == "b"
    assert spec.pick_node({"a": 0, "b": 0}) is None
    assert spec.pick_node({}) is None


def test_sbatch_parsable_output() -> None:
    assert spec.parse_sbatch("42\n") == "42"
    assert spec.parse_sbatch("42;cluster2\n") == "42"
    # a login shell that talks before the command runs (~/.bashrc's echo)
    assert spec.parse_sbatch("Welcome to the cluster\n\n42\n") == "42"
    with pytest.raises(ValueError, match="no job id"):
        spec.parse_sbatch("sbatch: error: Batch job submission failed\n")


def test_messages_name_the_job_the_state_and_what_to_do() -> None:
    ended = spec.ended_message("c", spec.JobState("9", "TIMEOUT", "TimeLimit", (), ""))
    assert ended == (
        "Slurm job 9 on c reached its time limit (time in [hosts.c.slurm]): its kernels were ended"
    )
    pending = spec.pending_message("c", spec.JobState("9", "PENDING", "Priority", (), ""), 30)
    assert "still pending after 30 s" in pending and "Priority" in pending
    assert "squeue -j 9" in pending


@pytest.mark.parametrize(
    ("keys", "complaint"),
    [
        ({"time": "2h"}, "not a Slurm time limit"),
        ({"mem_per_kernel": "lots"}, "not a memory size"),
        ({"node_hostname": "compute"}, "{node}"),
        ({"node_hostname": "{node}}.cluster"}, "no other braces"),
        ({"node_hostname": "{{node}.cluster"}, "no other braces"),
        ({"cpus_per_kernel": 0}, "greater than or equal to 1"),
        ({"partition": "a\nb"}, "control"),
        ({"qos": "x"}, "Extra inputs"),
    ],
)
def test_bad_slurm_keys_are_refused_with_the_key_and_the_reason(
    keys: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ValidationError, match="slurm") as caught:
        slurm(**keys)
    assert complaint in str(caught.value)


@pytest.mark.parametrize("time", ["30", "30:00", "4:00:00", "2-12", "2-12:30", "2-12:30:00"])
def test_every_sbatch_time_format_is_accepted(time: str) -> None:
    assert slurm(time=time).time == time
