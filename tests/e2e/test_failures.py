"""Every failure of a launch: non-zero exit, one actionable line, bounded time, nothing left."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from relay.lite import framing
from relay.sim import frontend
from relay.sim.sshd import ThrowawaySSHD
from tests.conftest import (
    RELAY,
    SIM_KERNEL,
    RelayHome,
    RunningDaemon,
    pid_alive,
    run_shim,
    start_daemon,
)
from tests.e2e.helpers import controller, until_readable, wait_gone

LINK = "1@127.0.0.1,2@127.0.0.1"


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("relay: ")
    return lines[0]


async def launch_against(home: RelayHome, host: str = "local", kernel: str = "") -> str:
    """Launch into a real listening link; return the shim's one line of stderr."""
    link = await frontend.ListeningLink.create()
    try:
        result = await run_shim(home, host, kernel, str(link.name), timeout_s=120)
    finally:
        link.close()
    assert result.status == 1, result
    assert result.stdout == ""
    return one_line(result.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script(home: RelayHome, name: str, body: str) -> str:
    path = home.dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("what", ["unknown", "changed"])
async def test_host_key_not_trusted(home: RelayHome, what: str) -> None:
    assert home.sshd is not None
    known = home.dir / "known_hosts"
    if what == "unknown":
        known.write_text("")
    else:
        other = home.dir / "otherkey"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True
        )
        kind, key = (other.with_suffix(".pub")).read_text().split()[:2]
        known.write_text(f"[127.0.0.1]:{home.sshd.port} {kind} {key}\n")
    home.add_host("local", known_hosts=str(known))
    async with start_daemon(home):
        line = await launch_against(home)
    if what == "unknown":
        assert "is not in" in line and "never trusts unknown keys" in line
    else:
        assert "CHANGED" in line and "ssh-keygen -R" in line


async def test_authentication_failure(home: RelayHome) -> None:
    stranger = home.dir / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    home.add_host("local", identity_files=[str(stranger)])
    async with start_daemon(home):
        line = await launch_against(home)
    assert "authentication failed" in line and "authorized_keys" in line


async def test_connection_refused(home: RelayHome) -> None:
    home.add_host("local", port=free_port())
    async with start_daemon(home):
        line = await launch_against(home)
    assert "connection refused" in line


async def test_forwarding_refused_by_the_server(home: RelayHome, tmp_path: Path) -> None:
    with ThrowawaySSHD(tmp_path / "nofwd", options={"AllowTcpForwarding": "no"}) as strict:
        home.sshd = strict
        home.add_host("local")
        async with start_daemon(home):
            line = await launch_against(home)
    assert "refused remote port forwarding" in line and "AllowTcpForwarding" in line


async def test_kernel_missing(daemon: RunningDaemon) -> None:
    line = await launch_against(daemon.home, kernel="/nonexistent/WolframKernel")
    assert "'/nonexistent/WolframKernel' not found or not executable on local" in line


async def test_kernel_exits_before_connecting(daemon: RunningDaemon) -> None:
    kernel = script(daemon.home, "expired", "echo 'License expired on 2026-01-01' >&2\nexit 3\n")
    line = await launch_against(daemon.home, kernel=kernel)
    assert "exited with status 3 before connecting" in line
    assert "License expired on 2026-01-01" in line
    assert not daemon.daemon.kernels


@pytest.mark.parametrize("resume_window_s", [900, 0], ids=["agent", "sshd's path"])
async def test_a_kernel_killed_on_the_host_is_said_by_its_shim(
    home: RelayHome, resume_window_s: int
) -> None:
    """Something on the host (its OOM killer) kills a running kernel: the front end sees its
    link close, and the shim says by what and that relay did not, in one line, and exits
    with the kernel's status; `relay status` lists it among the host's failures. (A kernel
    that quits by itself gets no line: tests/pure/test_ended_line.py.)"""
    home.add_host("local", resume_window_s=resume_window_s)
    async with start_daemon(home) as running, controller(home) as fe:
        kl = await fe.link.accept(60)
        os.kill(int(kl.hello["pid"]), signal.SIGKILL)
        status, _, err = await fe.result(60)
        await kl.aclose()
        snapshot = running.daemon.hosts["local"].snapshot()
    assert status == 137
    assert one_line(err) == (
        "relay: the kernel on local was killed by SIGKILL; not by relay: "
        "if the host ran out of memory, `dmesg` there says so"
    )
    assert [f["reason"] for f in snapshot["failures"]] == [one_line(err).removeprefix("relay: ")]


async def test_a_kernel_relay_ended_is_not_listed_as_killed(home: RelayHome) -> None:
    """The front end ends its kernel (the shim gets SIGTERM): relay signals the kernel, and
    that is no failure of the host's (``relay status`` lists none)."""
    async with start_daemon(home) as running, controller(home) as fe:
        kl = await fe.link.accept(60)
        pid = int(kl.hello["pid"])
        fe.proc.send_signal(signal.SIGTERM)
        status, _, err = await fe.result(60)
        await wait_gone(pid, 60)
        await kl.aclose()
        host = running.daemon.hosts["local"]
        await asyncio.wait_for(_no_kernels(running), 60)
        assert status in (-signal.SIGTERM, 128 + signal.SIGTERM) and err == ""
        assert list(host.failures) == []


async def test_a_shim_killed_with_the_answer_unread_still_ends_its_kernel(
    home: RelayHome, daemon_log: io.StringIO
) -> None:
    """The front end kills a controller's shim just as the launch is answered: the shim
    closes its socket with the answer unread, so the daemon's read of it fails (a reset, not
    an end of file). The kernel is ended all the same, and the daemon serves on. (Found by CI:
    a SIGTERM landing between the kernel's connect and the shim's read left the kernel.)"""
    async with start_daemon(home) as running:
        link = await frontend.ListeningLink.create()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(home.socket))
        request = {"v": 1, "op": "launch", "host": "local", "kernel": SIM_KERNEL}
        client.sendall(framing.encode({**request, "linkname": str(link.name)}))
        kl = await link.accept(60)
        await until_readable(client, 60)  # "launched" waits, unread
        client.close()  # unread data: the daemon's end is reset
        await wait_gone(int(kl.hello["pid"]), 60)
        await kl.aclose()
        await asyncio.wait_for(_no_kernels(running), 60)
        link.close()
        async with controller(home) as fe:  # and the daemon launches on
            kl = await fe.link.accept(60)
            await kl.quit(0)
            assert (await fe.result())[0] == 0
            await kl.aclose()
    assert "shim went away" in daemon_log.getvalue()
    assert "Unhandled" not in daemon_log.getvalue()  # nor a write to the reset socket


async def _no_kernels(running: RunningDaemon) -> None:
    while running.daemon.kernels:  # released once its exit came back
        await asyncio.sleep(0.05)


async def test_kernel_never_connects(home: RelayHome) -> None:
    pidfile = home.dir / "hung.pid"
    kernel = script(home, "hung", f"echo $$ > {pidfile}\nexec sleep 600\n")
    # the bound covers the cold connection and the agent's start too, so not 1 s on a loaded
    # machine: the kernel must have started (written its pid) before it runs out
    home.add_host("local", launch_timeout_s=3)
    async with start_daemon(home) as running:
        line = await launch_against(home, kernel=kernel)
        assert "did not connect within 3 s (launch_timeout_s)" in line
        assert not pid_alive(int(pidfile.read_text())), "a timed-out kernel was left running"
        assert not running.daemon.kernels


async def test_front_end_gone_during_launch(daemon: RunningDaemon) -> None:
    link = await frontend.ListeningLink.create()
    name = str(link.name)
    link.close()  # the front end gave up before the kernel called back
    result = await run_shim(daemon.home, "local", "", name, timeout_s=120)
    assert result.status == 1
    line = one_line(result.stderr)
    assert "front end is not listening" in line


async def test_compute_launch_failure_is_a_nonzero_run(daemon: RunningDaemon) -> None:
    link = await frontend.ListeningLink.create()
    result = await frontend.run_remote_command(
        f'{RELAY} launch --compute "`1`" "/nonexistent/k" "`2`"',
        host="local",
        link=link.name,
        env=daemon.home.env,
    )
    link.close()
    assert result.status == 1 and result.stdout == ""
    assert "not found or not executable" in one_line(result.stderr)


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare -n needs root")
async def test_unknown_host_name_fails_fast(home: RelayHome) -> None:
    """DNS failure, in a network namespace of the test's own so no query leaves the machine."""
    home.config.write_text("")
    daemon = await asyncio.create_subprocess_exec(
        "unshare",
        "-n",
        sys.executable,
        "-m",
        "relay",
        "serve",
        env=home.env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert daemon.stderr is not None
        while b'"serving"' not in await asyncio.wait_for(daemon.stderr.readline(), 30):
            pass
        result = await run_shim(home, "--no-autostart", "nosuchhost.invalid", "/k", LINK)
    finally:
        daemon.terminate()
        await daemon.communicate()
    assert result.status == 1
    line = one_line(result.stderr)
    assert "cannot resolve host 'nosuchhost.invalid'" in line and "[hosts]" in line


async def test_remote_listeners_bind_loopback_only_while_waiting(home: RelayHome) -> None:
    """During a launch the two listeners exist on 127.0.0.1 only (seen with ss, not trusted)."""
    fifo = home.dir / "argv.fifo"
    os.mkfifo(fifo)
    kernel = script(home, "reporting", f'echo "$$ $@" > {fifo}\nexec sleep 600\n')
    home.add_host("local", launch_timeout_s=60)
    async with start_daemon(home) as running:
        link = await frontend.ListeningLink.create()
        shim = await asyncio.create_subprocess_exec(
            RELAY,
            "launch",
            "local",
            kernel,
            str(link.name),
            env=home.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        pid, *argv = (
            await asyncio.wait_for(loop.run_in_executor(None, fifo.read_text), 60)
        ).split()
        name = argv[argv.index("-LinkName") + 1]
        ports = [int(ep.split("@")[0]) for ep in name.split(",")]
        listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
        for port in ports:
            addrs = [
                ln.split()[3] for ln in listening.splitlines() if ln.split()[3].endswith(f":{port}")
            ]
            assert addrs == [f"127.0.0.1:{port}"], listening
        shim.kill()  # the launch is abandoned: the daemon cancels it and ends the kernel
        await shim.wait()
        await wait_gone(int(pid))
        link.close()
    assert not running.daemon.kernels


async def test_newlines_never_reach_the_remote_host(daemon: RunningDaemon) -> None:
    """A newline in the kernel path or an IPv6 scope id would end the supervisor's command
    line and run the rest as a command of its own: refused at once, in one line, and the
    host's supervisor serves the next launch as before."""
    marker = daemon.home.dir / "injected"
    payload = f"\nstart k999 touch {marker}\nx"  # the second line, a command of its own
    link = await frontend.ListeningLink.create()
    for mode, kernel, name in [
        ("--compute", f"{SIM_KERNEL}{payload}", str(link.name)),
        # a controller's front-end host reaches the kernel's environment (Dynamic's hook)
        ("--no-autostart", SIM_KERNEL, f"1@[fe80::1%lo{payload}],2@[fe80::1%lo]"),
    ]:
        result = await run_shim(daemon.home, mode, "local", kernel, name)
        assert result.status == 1
        line = one_line(result.stderr)
        assert "control character" in line or "scope id" in line, line
    assert not marker.exists()
    result = await run_shim(daemon.home, "--compute", "local", SIM_KERNEL, str(link.name))
    assert result.status == 0, result.stderr
    kl = await link.accept(60)
    await kl.quit(0)
    await kl.aclose()
    link.close()


async def test_a_port_that_accepts_tcp_but_never_speaks_ssh(home: RelayHome) -> None:
    """Something listens but is not sshd (or never answers): each attempt waits its
    connect_timeout_s, the launch retries, and the one line says what happened, each
    attempt's time, how many attempts and how long in all, all within launch_timeout_s."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, and never a word

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    launch_timeout_s = 4.0
    home.add_host("local", port=port, connect_timeout_s=1, launch_timeout_s=launch_timeout_s)
    try:
        async with start_daemon(home):
            started = asyncio.get_running_loop().time()
            line = await launch_against(home)
            took_s = asyncio.get_running_loop().time() - started
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    # the time it waited, measured (a loaded machine's timer fires late): at least the bound
    banner = re.search(
        rf"127\.0\.0\.1:{port} accepted TCP but sent no SSH banner in ([\d.]+) s", line
    )
    assert banner is not None and 1.0 <= float(banner[1]) < 2.0, line
    assert "timed out after" not in line, line
    # the attempt said had its whole bound, the setting (its deadline, now plus the setting,
    # is a few microseconds short of it by then): not "what was left of launch_timeout_s"
    assert f"(ConnectTimeout, or connect_timeout_s in {home.config}: 1 s)" in line, line
    found = re.search(r"; (\d) attempts, ([\d.]+) s in all \(a launch waits at most", line)
    assert found is not None, line
    attempts, in_all_s = int(found[1]), float(found[2])
    assert attempts >= 2, line
    assert attempts * 1.0 <= in_all_s <= took_s + 0.05, (line, took_s)  # said to 0.1 s
    assert f"launch_timeout_s, {launch_timeout_s:g} s" in line, line
    assert took_s <= launch_timeout_s + 1.0, (line, took_s)
