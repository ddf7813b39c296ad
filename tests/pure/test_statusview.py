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


def test_resume_column_says_on_resuming_with_time_left_and_held_or_off_and_why() -> None:
    on = {"state": "on", "window_s": 900.0, "unacked": 0}
    assert "on (15m00s window)" in render(answer(resume=on), now=110.0)
    resuming = {"state": "resuming", "window_s": 900.0, "window_left_s": 872.4, "unacked": 3 << 20}
    assert "resuming, 14m32s left, 3.0 MiB held" in render(answer(resume=resuming), now=110.0)
    waiting = {**resuming, "login_needed": True}  # 2FA again: it waits for a person
    shown = render(answer(resume=waiting), now=110.0)
    assert "resuming, 14m32s left, needs `relay login`, 3.0 MiB held" in shown
    off = {"state": "off", "reason": "no python3 on cluster's PATH"}
    assert "off: no python3 on cluster's PATH" in render(answer(resume=off), now=110.0)
    # not connected yet (or not since the window was raised from 0): the next one decides
    unknown = render(answer(resume={"state": "unknown"}), now=110.0)
    assert "unknown until it connects (python3 there is looked for then)" in unknown


def test_resume_column_says_a_window_waiting_for_the_connection_and_one_that_ran_out() -> None:
    """relay.toml's new window during an outage, taken once back; a window that ran out,
    said until a new connection starts an agent again (the host's own error moves on with
    the attempts that follow); an agent told resume_window_s = 0 keeps no kernel through an
    outage, and is shown so, as `relay check` says it."""
    resuming = {"state": "resuming", "window_s": 300.0, "window_left_s": 297.0, "unacked": 0}
    later = render(answer(resume={**resuming, "window_next_s": 3600.0}), now=110.0)
    assert "resuming, 4m57s left (1h00m window once back), 0 B held" in " ".join(
        line.strip() for line in later.splitlines()
    )
    ran_out = (
        "the connection to cluster was lost at 12:03:07 and did not come back within "
        "resume_window_s (60 s); relay's agent there ends its kernels"
    )
    shown = render(answer(resume={"state": "ended", "reason": ran_out}), now=110.0)
    assert "ended: the connection to cluster was lost at 12:03:07" in shown
    assert "resume_window_s (60 s)" in shown
    zero = render(answer(resume={"state": "on", "window_s": 0.0, "unacked": 0}), now=110.0)
    assert "off: resume_window_s = 0 (kernels end" in zero and "0s window" not in zero


def test_a_resuming_host_says_so_with_its_attempt_and_no_rtt_from_before() -> None:
    """While its kernels wait, the host is ``resuming`` since the connection was lost, with
    the attempt under way; the RTT of the lost connection is not shown as the path's."""
    lost = {"state": "resuming", "window_s": 900.0, "window_left_s": 872.4, "unacked": 0}
    trying = answer(state="resuming", attempt="connecting", since=50.0, rtt_ms=1.0, resume=lost)
    row = render(trying, now=110.0).splitlines()[4]
    assert "resuming (connecting)  1m00s ago  -" in row, row
    waiting = answer(state="resuming", attempt="backing-off", retry_at=114.0, since=50.0)
    assert "resuming (retry in 4s)" in render(waiting, now=110.0)
    connected = render(answer(rtt_ms=1.25), now=110.0).splitlines()[4]
    assert "1.2 ms" in connected or "1.3 ms" in connected, connected


def test_each_channel_shows_what_it_holds_unacknowledged() -> None:
    status = answer(resume={"state": "resuming", "window_s": 900.0, "window_left_s": 60.0})
    status["kernels"] = [
        {
            "id": "k1",
            "host": "cluster",
            "mode": "controller",
            "remote_pid": 42,
            "state": "connected",
            "frontend_link": "1@127.0.0.1,2@127.0.0.1",
            "remote_link": "3@127.0.0.1,4@127.0.0.1",
            "age_s": 5.0,
            "forwards": [
                {
                    "role": "data",
                    "remote": "3@127.0.0.1",
                    "target": "127.0.0.1:1",
                    "state": "resuming",
                    "unacked": 1536,
                },
                {
                    "role": "message",
                    "remote": "4@127.0.0.1",
                    "target": "127.0.0.1:2",
                    "state": "resuming",
                    "unacked": 0,
                },
            ],
            "hook_links": [],
        }
    ]
    text = render(status, now=110.0)
    header = next(line for line in text.splitlines() if "UNACKED" in line)
    data = next(line for line in text.splitlines() if "3@127.0.0.1" in line and "resuming" in line)
    assert data[header.index("UNACKED") :].startswith("1.5 KiB"), text


def test_a_windows_end_is_said_once_not_in_every_column_and_row() -> None:
    """After a window ran out, the host's RESUME says why; its LAST ERROR and each of its
    kernels' failures carried the same lines again, wrapped (a review counted three copies
    and more with every kernel): they point to it, and a failure like the one above says so."""
    ran_out = (
        "the connection to cluster was lost at 12:03:07 UTC and did not come back within "
        "resume_window_s (60 s); relay's agent there ends its kernels"
    )
    failed = [
        {"at": 105.0, "kernel_id": f"k{i}", "kernel": "math", "reason": f"{ran_out}: restart it"}
        for i in (1, 2)
    ] + [{"at": 106.0, "kernel_id": "k3", "kernel": "math", "reason": "killed by SIGKILL"}]
    shown = render(
        answer(resume={"state": "ended", "reason": ran_out}, last_error=ran_out, failures=failed),
        now=110.0,
    )
    assert shown.count("did not come back") == 1, shown
    rows = {line.split()[1]: line for line in shown.splitlines() if line.startswith("cluster  k")}
    assert rows["k1"].endswith("as RESUME says"), shown
    assert rows["k2"].endswith("as above"), shown
    assert rows["k3"].endswith("killed by SIGKILL"), shown
    host_row = next(line for line in shown.splitlines() if line.startswith("cluster "))
    assert host_row.rstrip().endswith("as RESUME says"), shown
