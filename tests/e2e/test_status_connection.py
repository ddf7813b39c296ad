"""relay status, the launch's log lines, and the connection's life against a real sshd."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from relay.sim.sshd import ThrowawaySSHD
from tests.conftest import RELAY, RelayHome, RunningDaemon, run_shim, start_daemon
from tests.e2e.helpers import controller


def status_cli(home: RelayHome, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RELAY, "status", *args], capture_output=True, text=True, env=home.env, timeout=60
    )


async def test_status_shows_hosts_kernels_and_forwards(daemon: RunningDaemon) -> None:
    async with controller(daemon.home) as fe:
        kl = await fe.link.accept(60)
        assert fe.proc.stdout is not None
        remote = (await asyncio.wait_for(fe.proc.stdout.readline(), 60)).decode().strip()
        loop = asyncio.get_running_loop()
        done = await loop.run_in_executor(None, status_cli, daemon.home, "--json")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        (host,) = answer["hosts"]
        assert host["name"] == "local" and host["state"] == "connected"
        assert host["rtt_ms"] > 0 and host["kernels"] == 1
        assert host["peer_check"] == {"remote": "uid", "local": "uid", "refused": 0}
        (kernel,) = answer["kernels"]
        assert kernel["remote_pid"] == kl.hello["pid"] and kernel["mode"] == "controller"
        assert kernel["remote_link"] == remote
        assert kernel["frontend_link"] == str(fe.link.name)
        assert [f["state"] for f in kernel["forwards"]] == ["connected", "connected"]
        assert answer["daemon"]["fds"] > 0 and answer["daemon"]["rss_kb"] > 0
        table = (await loop.run_in_executor(None, status_cli, daemon.home)).stdout
        assert "local" in table and "connected" in table and remote in table
        assert kernel["id"] in table and "FRONT END LINK" in table
        await kl.quit(0)
        assert (await fe.result())[0] == 0
        await kl.aclose()


def test_status_without_a_daemon(home: RelayHome) -> None:
    done = status_cli(home)
    assert done.returncode == 3 and "no relay daemon is listening" in done.stderr
    assert done.stdout == ""
    # --json: the same line and status, and what a script reads on stdout says it too
    shown = status_cli(home, "--json")
    assert shown.returncode == 3 and "no relay daemon is listening" in shown.stderr
    assert json.loads(shown.stdout) == {"daemon": None, "socket": str(home.socket)}


def test_status_where_no_daemon_could_listen_says_why(home: RelayHome) -> None:
    """A socket path longer than a Unix socket's may be: `relay status` said no daemon was
    listening and that the first launch would start one, which cannot listen there either
    (a review's finding). It says the path is too long, as the launch does."""
    long = home.dir / "run" / ("x" * 120 + ".sock")
    done = subprocess.run(
        [RELAY, "status"],
        capture_output=True,
        text=True,
        env=dict(home.env, RELAY_SOCKET=str(long)),
        timeout=60,
    )
    assert done.returncode != 0
    (line,) = done.stderr.splitlines()
    size = len(os.fsencode(long))
    assert f"the socket path {long} is {size} bytes, and a Unix socket's may be at most" in line
    assert "choose a shorter one with RELAY_SOCKET" in line, line
    assert "the first launch starts one" not in line, line


async def test_every_launch_line_names_host_and_kernel_and_kernel_output_is_logged(
    home: RelayHome, daemon_log: io.StringIO
) -> None:
    chatty = home.dir / "chatty"
    chatty.write_text(
        f'#!/bin/sh\necho "kernel warming up" >&2\nexec {Path(RELAY).parent}'
        f'/relay-sim-kernel "$@"\n'
    )
    chatty.chmod(0o755)
    async with start_daemon(home), controller(home, kernel=str(chatty)) as fe:
        kl = await fe.link.accept(60)
        await kl.quit(0)
        assert (await fe.result())[0] == 0
        await kl.aclose()
    lines = [json.loads(line) for line in daemon_log.getvalue().splitlines()]
    launch = [e for e in lines if e["event"] in ("launching", "launched", "kernel exited")]
    assert [e["event"] for e in launch] == ["launching", "launched", "kernel exited"]
    for e in launch:
        assert e["host"] == "local" and e["kernel"].startswith("k")
    assert launch[-1]["output"] == ["kernel warming up"]


async def test_refused_connections_back_off_and_a_host_that_is_back_is_used_at_once(
    home: RelayHome, daemon_log: io.StringIO, tmp_path: Path
) -> None:
    """Automatic retries back off and stop at the cap; the cap never refuses a launch a person
    asked for, so the first launch after the host is back connects."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    later = ThrowawaySSHD(tmp_path / "later")
    later.prepare()
    later.port = port
    home.sshd = later
    home.add_host("local", reconnect_attempts=2, reconnect_window_s=600)
    try:
        async with start_daemon(home) as running:
            first = await run_shim(home, "local", "", "1@127.0.0.1,2@127.0.0.1")
            second = await run_shim(home, "local", "", "1@127.0.0.1,2@127.0.0.1")
            assert first.status == second.status == 1
            for result in (first, second):
                assert f"cannot connect to 127.0.0.1:{port}: connection refused" in result.stderr
            retries = [
                json.loads(line)
                for line in daemon_log.getvalue().splitlines()
                if "retrying" in line
            ]
            # the first launch: two retries after a growing, jittered backoff; the second:
            # its own attempt only, the cap (2 per 600 s) being spent
            assert [r["attempt"] for r in retries] == [1, 2]
            assert 0.25 <= retries[0]["delay_s"] <= 0.5 and 0.5 <= retries[1]["delay_s"] <= 1.0
            assert running.daemon.hosts["local"].snapshot()["state"] == "failed"
            later.start(port)  # the host is back
            async with controller(home) as fe:
                kl = await fe.link.accept(60)
                await kl.quit(0)
                assert (await fe.result())[0] == 0
                await kl.aclose()
    finally:
        later.stop()


async def test_a_server_asking_for_a_password_is_refused_once_never_retried(
    home: RelayHome, tmp_path: Path
) -> None:
    options = {"AuthenticationMethods": "publickey,password", "PasswordAuthentication": "yes"}
    with ThrowawaySSHD(tmp_path / "2fa", options=options) as strict:
        home.sshd = strict
        home.add_host("local")
        async with start_daemon(home):
            result = await run_shim(home, "local", "", "1@127.0.0.1,2@127.0.0.1")
        assert result.status == 1
        assert "asks for a password after the keys relay offered" in result.stderr
        assert "never answers those during a launch" in result.stderr
        assert "run `relay login local` in a terminal once" in result.stderr
        partial = [line for line in strict.log if "Partial publickey" in line]
        assert len(partial) == 1, strict.log  # one connection, no silent retries


async def test_idle_connection_is_closed_and_reopened(home: RelayHome) -> None:
    home.add_host("local", idle_timeout_s=0.2)
    async with start_daemon(home) as running:
        host = None
        for attempt in range(2):
            async with controller(home) as fe:
                kl = await fe.link.accept(60)
                host = running.daemon.hosts["local"]
                conn = await host.connection()
                await kl.quit(0)
                assert (await fe.result())[0] == 0
                await kl.aclose()
            await asyncio.wait_for(conn.wait_closed(), 30)  # closed for idleness
            assert host.state == "idle"
            assert host.connects == attempt + 1


async def test_a_host_no_longer_named_is_forgotten_once_unused(
    home: RelayHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host removed from relay.toml (as an ad-hoc name or a Slurm compute node, one it
    never named) stayed in the daemon and in `relay status` for the daemon's life, its
    connection long closed (a review found every name ever used there). Once it has had
    nothing to do for FORGET_AFTER_S it is dropped; a host relay.toml names is kept."""
    from relay import daemon as daemon_module

    monkeypatch.setattr(daemon_module, "FORGET_AFTER_S", 0.0)
    home.add_host("local", idle_timeout_s=0.2)
    home.add_host("gone", idle_timeout_s=0.2)
    async with start_daemon(home) as running:
        for name in ("local", "gone"):
            async with controller(home, host=name) as fe:
                kl = await fe.link.accept(60)
                conn = await running.daemon.hosts[name].connection()
                await kl.quit(0)
                assert (await fe.result())[0] == 0
                await kl.aclose()
            await asyncio.wait_for(conn.wait_closed(), 30)  # closed for idleness
        del home.hosts["gone"]
        home.write()
        running.daemon.reload()
        for _ in range(600):  # each wake tick looks (bounded: 30 s)
            if "gone" not in running.daemon.hosts:
                break
            await asyncio.sleep(0.05)
        assert "gone" not in running.daemon.hosts
        assert "local" in running.daemon.hosts  # named: kept, idle
        hosts = [h["name"] for h in running.daemon.status()["hosts"]]
        assert hosts == ["local"], hosts


async def test_keepalive_is_on_by_default() -> None:
    from relay.settings import HostConfig
    from relay.ssh.host import HostSession

    _, plan = await HostSession("h", HostConfig(hostname="h"), tag="00", ssh_files=()).plan()
    # asyncssh closes after interval x (count_max + 1) of silence: relay's 15 s x 3 (45 s)
    assert plan.kwargs["keepalive_interval"] == 15 and plan.kwargs["keepalive_count_max"] == 2
    assert plan.kwargs["compression_algs"] is None


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    import random

    from relay.ssh.host import BACKOFF_CAP_S, backoff_s

    rng = random.Random(1)
    for attempt, (low, high) in enumerate([(0.25, 0.5), (0.5, 1), (1, 2), (2, 4)]):
        delays = {backoff_s(attempt, rng) for _ in range(50)}
        assert low <= min(delays) and max(delays) <= high and len(delays) > 1
    assert backoff_s(30, rng) <= BACKOFF_CAP_S


def test_rotating_log_file(tmp_path: Path) -> None:
    from relay.log import RotatingFile

    f = RotatingFile(tmp_path / "relay.log", max_bytes=100, backups=2)
    for i in range(20):
        f.write(f"line {i:02d} " + "x" * 30 + "\n")
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["relay.log", "relay.log.1", "relay.log.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert "line 19" in (tmp_path / "relay.log").read_text()


def test_secrets_are_redacted_from_log_events() -> None:
    from relay.log import redact

    event = redact(
        None, "info", {"event": "x", "password": "hunter2", "auth_token": "t", "host": "h"}
    )
    assert event == {
        "event": "x",
        "password": "[redacted]",
        "auth_token": "[redacted]",
        "host": "h",
    }


def test_status_table_renders_a_synthetic_answer() -> None:
    from relay.statusview import render

    answer = {
        "daemon": {
            "pid": 1,
            "version": "0.1.0",
            "uptime_s": 3700,
            "socket": "/s",
            "rss_kb": 51200,
            "fds": 12,
            "tasks": 5,
            "stopping": False,
        },
        "hosts": [
            {
                "name": "h",
                "state": "connected",
                "since": 100.0,
                "rtt_ms": 48.2,
                "kernels": 1,
                "last_error": None,
                "peer_check": {"remote": "unavailable", "local": "uid", "refused": 3},
            }
        ],
        "kernels": [
            {
                "id": "k1",
                "host": "h",
                "mode": "compute",
                "remote_pid": 42,
                "age_s": 65,
                "frontend_link": "1@a,2@a",
                "remote_link": "3@b,4@b",
                "forwards": [
                    {"role": "data", "remote": "3@b", "target": "a:1", "state": "connected"}
                ],
            }
        ],
    }
    text = render(answer, now=160.0)
    assert "up 1h01m" in text and "50.0 MB RSS" in text
    assert "1m00s ago" in text and "48.2 ms" in text
    assert "remote unavailable, local uid, 3 refused" in text
    assert "k1" in text and "1m05s" in text and "3@b,4@b" in text and "a:1" in text
    assert os.linesep in text
