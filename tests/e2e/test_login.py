"""2FA hosts: ``relay login`` answers the server's prompts once, at a terminal; every later
launch uses the authenticated connection. Against a real sshd with
``AuthenticationMethods publickey,keyboard-interactive`` and a PAM stack of the test's own
(``pam_exec`` checking a one-time code), as HPC login nodes are set up."""

from __future__ import annotations

import asyncio
import io
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.lite import framing
from relay.sim.sshd import ThrowawaySSHD, find_sshd
from tests.conftest import RELAY, SIM_KERNEL, RelayHome, pid_alive, run_shim, start_daemon
from tests.e2e.helpers import communicate, controller, until_readable, wait_gone
from tests.e2e.test_resume import behind_proxy, until

pytestmark = pytest.mark.skipif(
    not Path("/etc/pam.d").is_dir() or not Path("/proc/self").exists(),
    reason="needs PAM (/etc/pam.d)",
)
CODE = "424242"


@pytest.fixture
def otp_sshd(tmp_path: Path) -> Iterator[ThrowawaySSHD]:
    if os.geteuid() != 0:
        pytest.skip("a PAM stack of the test's own needs root (/etc/pam.d)")
    sshd = find_sshd()
    assert sshd is not None
    name = f"relay-test-otp-{secrets.token_hex(4)}"
    program = tmp_path / name
    program.symlink_to(sshd)  # sshd's PAM service is its program name
    check = tmp_path / "check-code"
    check.write_text(f'#!/bin/sh\ncode=$(tr -d "\\000\\n")\ntest "$code" = "{CODE}"\n')
    check.chmod(0o755)
    service = Path("/etc/pam.d") / name
    service.write_text(
        f"auth required pam_exec.so expose_authtok quiet {check}\n"
        "auth optional pam_permit.so\n"  # pam_setcred: pam_exec has no credentials to give
        "account required pam_permit.so\n"
        "session required pam_permit.so\n"
    )
    options = {
        "UsePAM": "yes",
        "KbdInteractiveAuthentication": "yes",
        "AuthenticationMethods": "publickey,keyboard-interactive",
        "PermitRootLogin": "yes",
    }
    try:
        with ThrowawaySSHD(tmp_path / "sshd", options=options, program=str(program)) as server:
            yield server
    finally:
        service.unlink()


async def login(home: RelayHome, host: str, typed: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        RELAY,
        "login",
        host,
        env=home.env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # no terminal: getpass reads standard input
    )
    out, err = await communicate(proc, typed.encode(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_login_once_then_launches_use_the_connection(
    home: RelayHome, otp_sshd: ThrowawaySSHD, daemon_log: io.StringIO, agent_or_not: str | None
) -> None:
    home.sshd = otp_sshd
    home.hosts.clear()
    home.add_host("hpc")
    async with start_daemon(home) as running:
        refused = await run_shim(home, "hpc", "", "1@127.0.0.1,2@127.0.0.1")
        (line,) = refused.stderr.strip().splitlines()
        assert "asks for keyboard-interactive (2FA) answers" in line
        assert "run `relay login hpc` in a terminal" in line
        status, _, err = await login(home, "hpc", "000000\n")  # a wrong code, then nothing
        assert status == 1, err
        assert running.daemon.hosts["hpc"].state != "connected"
        status, out, err = await login(home, "hpc", f"{CODE}\n")
        assert status == 0, "\n".join([err, *list(otp_sshd.log)[-12:]])
        assert "Password" in err  # the server's own prompt, shown as ssh shows it
        assert "logged in to hpc" in out
        assert running.daemon.environ_agent == agent_or_not  # login carried the shell's agent
        for _ in range(2):  # every later launch: no prompt, the same connection
            async with controller(home, host="hpc", kernel=SIM_KERNEL) as fe:
                kl = await fe.link.accept(60)
                await kl.quit(0)
                assert (await fe.result())[0] == 0
                await kl.aclose()
        assert running.daemon.hosts["hpc"].connects == 1
        status, out, _ = await login(home, "hpc", "")
        assert status == 0 and "connected already" in out
    assert CODE not in daemon_log.getvalue()  # what a person typed is never logged


async def test_a_login_client_gone_with_the_prompt_unread_loses_nothing(
    home: RelayHome, otp_sshd: ThrowawaySSHD, daemon_log: io.StringIO
) -> None:
    """`relay login` killed as the server's prompt arrives: it closes with the prompt
    unread, so the daemon's read of the answer is reset rather than ended. That login is
    abandoned, and the next one goes through."""
    home.sshd = otp_sshd
    home.hosts.clear()
    home.add_host("hpc")
    async with start_daemon(home) as running:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(home.socket))
        client.sendall(framing.encode({"v": 1, "op": "login", "host": "hpc"}))
        await until_readable(client, 60)  # the prompt waits, unread
        client.close()  # unread data: the daemon's end is reset
        status, out, err = await login(home, "hpc", f"{CODE}\n")
        assert status == 0, err
        assert "logged in to hpc" in out
        assert running.daemon.hosts["hpc"].state == "connected"
    assert "Unhandled" not in daemon_log.getvalue()
    assert "connect failed" not in daemon_log.getvalue()  # the reset was the client's


async def test_a_resume_that_needs_2fa_waits_for_relay_login(
    home: RelayHome, otp_sshd: ThrowawaySSHD
) -> None:
    """A 2FA host and a network change: the reconnect needs a person's answers, which relay
    never gives on its own. The resume makes one attempt, says `relay login hpc` is needed
    and waits for it (no attempt after attempt that fail2ban would count), the kernels held
    meanwhile; the login's connection resumes them, every byte there."""
    home.sshd = otp_sshd
    home.hosts.clear()
    async with behind_proxy(home, "hpc") as proxy, start_daemon(home) as running:
        status, _, err = await login(home, "hpc", f"{CODE}\n")
        assert status == 0, err
        async with controller(home, host="hpc", kernel=SIM_KERNEL) as fe:
            kl = await fe.link.accept(60)
            pid = int(kl.hello["pid"])
            payload = secrets.token_bytes(1 << 20)
            echo = asyncio.ensure_future(kl.echo(payload))
            proxy.reset()  # a network change: the path is back at once
            host = running.daemon.hosts["hpc"]
            await until(lambda: host.snapshot()["resume"].get("login_needed"), "login")
            tried = proxy.accepted
            state = host.snapshot()
            assert "relay login hpc" in state["last_error"], state
            assert not echo.done() and pid_alive(pid)
            status, out, err = await login(home, "hpc", f"{CODE}\n")
            assert status == 0 and "logged in to hpc" in out, err
            assert await asyncio.wait_for(echo, 60) == payload
            assert proxy.accepted == tried + 1  # the login's: nothing tried in between
            assert pid_alive(pid)
            await kl.quit(0)
            assert (await fe.result())[0] == 0
            await kl.aclose()


async def test_a_window_that_ends_waiting_for_relay_login_says_so(
    home: RelayHome, otp_sshd: ThrowawaySSHD
) -> None:
    """Nobody runs `relay login` within the window: the controller's shim exits with one
    line that names the outage, the window and the login it waited for."""
    home.sshd = otp_sshd
    home.hosts.clear()
    async with behind_proxy(home, "hpc", resume_window_s=3) as proxy, start_daemon(home) as running:
        status, _, err = await login(home, "hpc", f"{CODE}\n")
        assert status == 0, err
        async with controller(home, host="hpc", kernel=SIM_KERNEL) as fe:
            kl = await fe.link.accept(60)
            pid = int(kl.hello["pid"])
            proxy.reset()
            host = running.daemon.hosts["hpc"]
            await until(lambda: host.snapshot()["resume"].get("login_needed"), "login")
            status, _, err = await fe.result()
            (line,) = err.strip().splitlines()
            assert status != 0 and "resume_window_s (3 s)" in line, line
            assert "it needed `relay login hpc`" in line, line
            await wait_gone(pid, 60)  # the agent ends it: the window is over there too
            await kl.aclose()


async def test_a_login_whose_person_is_slower_than_connect_timeout_s_goes_through(
    home: RelayHome, otp_sshd: ThrowawaySSHD
) -> None:
    """connect_timeout_s bounds reaching the server; from its first prompt on, the time is
    the person's (LOGIN_TIMEOUT_S): a code typed after connect_timeout_s still logs in."""
    home.sshd = otp_sshd
    home.hosts.clear()
    home.add_host("hpc", connect_timeout_s=1)
    async with start_daemon(home) as running:
        proc = await asyncio.create_subprocess_exec(
            RELAY,
            "login",
            "hpc",
            env=home.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stderr is not None
        # the server's own prompt (after getpass's warning that no terminal hides the echo)
        await asyncio.wait_for(proc.stderr.readuntil(b"Password"), 60)
        await asyncio.sleep(2)  # a person typing, past connect_timeout_s: the subject
        out, err = await communicate(proc, f"{CODE}\n".encode(), 60)
        assert proc.returncode == 0, err
        assert b"logged in to hpc" in out
        assert running.daemon.hosts["hpc"].state == "connected"


async def test_a_login_over_a_dead_path_says_so_within_connect_timeout_s(
    home: RelayHome,
) -> None:
    """`relay login` where the path is down (the Wi-Fi gone, a host behind a dead VPN): the
    attempt is bounded as a launch's is, and ends with its one line, not after ten minutes
    of silence at the terminal (LOGIN_TIMEOUT_S is for a person's answers, once asked)."""
    async with behind_proxy(home, "hpc", connect_timeout_s=2) as proxy, start_daemon(home):
        proxy.blackhole()  # TCP taken, nothing said: as a dead path behind a VPN or NAT
        started = asyncio.get_running_loop().time()
        status, _, err = await login(home, "hpc", "")
        took_s = asyncio.get_running_loop().time() - started
        assert status == 1 and len(err.strip().splitlines()) == 1, err
        waited = re.search(r" in ([\d.]+) s", err)  # measured: a loaded machine's timer fires late
        assert waited is not None and 2.0 <= float(waited[1]) < 3.0, err
        assert "connect_timeout_s" in err, err
        assert took_s < 30, took_s  # connect_timeout_s and the CLI's start, not 600 s
