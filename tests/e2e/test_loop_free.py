"""One host's slow files hold up nobody else: reading what ssh_config and known_hosts say of
a host happens off the daemon's loop. A ``Match exec`` runs its command and waits for it (a
site's VPN probe, ``nc -z -w1 bastion 22``, waits its timeout with the VPN down), and a site's
known_hosts may be thousands of lines; both ran on the loop, on every connect attempt, and
every request to the daemon waited (a review measured 2 s stalls, nine a minute while a host
resumed). Here the command, or the file, is a FIFO that holds until the test lets it go: the
daemon answers ``status`` meanwhile, and the connection is made once it is let go."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RELAY, RelayHome
from tests.e2e.helpers import relay_cli, request
from tests.e2e.test_faults import served

pytestmark = pytest.mark.sshd


@pytest.mark.parametrize("slow", ["match-exec", "known-hosts"])
async def test_a_host_whose_files_are_slow_holds_up_no_other_request(
    home: RelayHome, tmp_path: Path, slow: str
) -> None:
    assert home.sshd is not None
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    if slow == "match-exec":
        home.ssh_config.write_text(f'Match originalhost 127.0.0.1 exec "cat {gate} >/dev/null"\n')
    else:
        home.hosts["local"]["known_hosts"] = str(gate)
    async with served(home):
        connecting = asyncio.ensure_future(relay_cli(home, "connect", "local"))
        # returns once the daemon (its command) opened the FIFO to read: it is reading now
        held = await asyncio.wait_for(asyncio.to_thread(open, gate, "wb"), 60)
        try:
            answer = await asyncio.wait_for(request(home, {"op": "status"}), 20)
            assert answer["event"] == "status", answer
        finally:  # what later reads find: no Match, or the file itself (so a daemon that
            # failed here is not held for good)
            if slow == "match-exec":
                swap = tmp_path / "ssh_config.new"
                swap.write_text("")
                swap.replace(home.ssh_config)
            else:
                known = home.sshd.known_hosts.read_bytes()
                swap = tmp_path / "known.new"
                swap.write_bytes(known)
                swap.replace(gate)
                held.write(known)  # the read in progress gets the file's bytes too
            held.close()
        status, _, err = await asyncio.wait_for(connecting, 60)
        assert status == 0, err


async def test_a_stderr_nobody_reads_holds_up_no_request(home: RelayHome) -> None:
    """`relay serve 2>&1 | less`, paused: once the pipe was full (some 280 lines) the daemon's
    next line waited for it, and every request with it, `relay stop` too."""
    from relay.lite import client

    home.write()
    read_fd, write_fd = os.pipe()
    daemon = subprocess.Popen(
        [RELAY, "serve"], env=home.env, stdin=subprocess.DEVNULL, stderr=write_fd
    )
    os.close(write_fd)
    reader = os.fdopen(read_fd, "rb")
    try:
        said = b""
        while b'"serving"' not in said:  # read until it serves, then no more
            line = await asyncio.wait_for(asyncio.to_thread(reader.readline), 30)
            assert line, said
            said += line

        def bad_requests() -> None:
            for _ in range(600):  # each a line of the log: twice what the pipe holds
                sock = client.connect(home.socket)
                try:
                    sock.settimeout(20)
                    sock.sendall(b"not json " + b"x" * 200 + b"\n")
                    assert b"bad_request" in sock.recv(4096)
                finally:
                    sock.close()

        await asyncio.wait_for(asyncio.to_thread(bad_requests), 120)
        answer = await asyncio.wait_for(request(home, {"op": "status"}), 20)
        assert answer["event"] == "status", answer
    finally:
        daemon.terminate()
        rest = await asyncio.wait_for(asyncio.to_thread(reader.read), 60)  # read again
        reader.close()
        assert await asyncio.to_thread(daemon.wait, 60) == 0
    assert rest.count(b"bad message on control socket") == 600  # none lost, behind the bound


async def test_a_stop_is_not_held_by_a_read_that_hangs(home: RelayHome, tmp_path: Path) -> None:
    """A `Match exec` that never ends (a probe with no timeout): `relay stop` ends the daemon
    anyway. Read in the loop's default executor, the exit waited for that thread, the lock
    let go meanwhile, so `relay restart` started a second daemon beside it (a review's)."""
    from tests.e2e.test_faults import serve_subprocess

    gate = tmp_path / "gate"
    os.mkfifo(gate)
    home.ssh_config.write_text(f'Match originalhost 127.0.0.1 exec "cat {gate} >/dev/null"\n')
    daemon = await serve_subprocess(home)
    held = None
    try:
        connecting = asyncio.ensure_future(relay_cli(home, "connect", "local"))
        held = await asyncio.wait_for(asyncio.to_thread(open, gate, "wb"), 60)  # it reads
        status, _, err = await relay_cli(home, "stop")
        assert status == 0, err
        assert await asyncio.wait_for(daemon.wait(), 30) == 0  # the read still hangs
        await asyncio.wait_for(connecting, 60)
    finally:
        if held is not None:
            held.close()
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
