"""``relay status``'s table: back-off shown with its next attempt, long errors wrapped."""

from __future__ import annotations

from typing import Any

from relay.statusview import ERROR_WIDTH, render


def answer(**host: Any) -> dict[str, Any]:
    return {
        "daemon": {"version": "x", "pid": 1, "uptime_s": 5, "fds": 3, "tasks": 2, "socket": "s"},
        "hosts": [
            {
                "name": "cluster",
                "hostname": "login.example.org",
                "port": 2222,
                "user": "ada",
                "state": "connected",
                "since": 100.0,
                "kernels": 0,
                **host,
            }
        ],
        "kernels": [],
    }


def test_the_resolved_target_is_shown() -> None:
    assert "ada@login.example.org:2222" in render(answer(), now=110.0)


def test_backing_off_says_when_it_tries_again_and_why() -> None:
    error = "cannot connect to login.example.org:2222: connection refused " * 3
    text = render(answer(state="backing-off", retry_at=130.0, last_error=error), now=110.0)
    assert "backing-off (retry in 20s)" in text
    lines = text.splitlines()
    assert all(len(line) < 200 for line in lines)
    wrapped = [line for line in lines if "connection refused" in line]
    assert len(wrapped) >= 3  # continued on rows of its own, under the LAST ERROR column
    column = lines[3].index("LAST ERROR")
    assert all(line[column:].strip() and len(line[column:]) <= ERROR_WIDTH for line in wrapped)


def test_a_slurm_hosts_jobs_show_state_reason_and_kernels_per_node() -> None:
    jobs = [
        {"job_id": "12", "state": "RUNNING", "reason": "None", "time_left": "9:58",
         "nodes": ["n1", "n2"], "slots": {"n1": 4, "n2": 4}, "used": {"n1": 3}},
        {"job_id": "13", "state": "PENDING", "reason": "Resources", "time_left": "10:00",
         "nodes": [], "slots": {}, "used": {}},
    ]  # fmt: skip
    text = render(answer(slurm={"jobs": jobs, "ended": []}), now=110.0)
    running = next(
        line for line in text.splitlines() if line.startswith("cluster") and " 12 " in line
    )
    assert "RUNNING" in running and "n1 3/4, n2 0/4" in running and "9:58" in running
    pending = next(line for line in text.splitlines() if " 13 " in line)
    assert "PENDING" in pending and "Resources" in pending


def test_a_rejected_relay_toml_is_shown_on_top() -> None:
    """The README says a broken new file is reported in ``relay status``: the plain table too,
    not only ``--json``."""
    status = answer()
    error = "/home/ada/.config/relay/relay.toml: hosts.cluster.kernal: unknown key"
    status["daemon"]["config_error"] = error
    lines = render(status, now=110.0).splitlines()
    said = [line for line in lines if "relay.toml" in line]
    assert said and error in said[0] and "running configuration" in said[0]
    assert lines.index(said[0]) < 3  # before the hosts, where it is seen
    status["daemon"]["config_error"] = None
    assert "relay.toml" not in render(status, now=110.0)


def test_a_log_that_cannot_be_written_is_shown_on_top() -> None:
    """A full disk: the daemon's log cannot say so, ``relay status`` does, before the hosts."""
    status = answer()
    status["daemon"]["log_problem"] = "cannot write the log /x/relay.log: No space left on device"
    lines = render(status, now=110.0).splitlines()
    said = [line for line in lines if line.startswith("LOG NOT WRITTEN")]
    assert said and "No space left" in said[0] and lines.index(said[0]) < 3
    status["daemon"]["log_problem"] = None
    assert "LOG NOT WRITTEN" not in render(status, now=110.0)
