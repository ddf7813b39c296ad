"""relay as a good OpenSSH citizen, against a real sshd: ssh_config aliases resolved and named
as ssh would, host keys checked and recorded as ssh would, keys used through the agent as
``ssh -i`` would, and connecting bounded by the time a launch waits."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.sim.sshd import ThrowawaySSHD
from tests.conftest import SIM_KERNEL, RelayHome, run_shim, start_daemon
from tests.e2e.helpers import launch_and_quit, relay_cli
from tests.e2e.test_full_disk import small_tmpfs

LINK = "1@127.0.0.1,2@127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alias(home: RelayHome, name: str, port: int, **options: object) -> None:
    """A ``Host`` block in the daemon's ssh_config reaching the test sshd as ``name``."""
    assert home.sshd is not None
    lines = [
        f"Host {name}",
        "    HostName 127.0.0.1",
        f"    Port {port}",
        f"    User {home.sshd.user}",
        f"    IdentityFile {home.sshd.client_key}",
        "    IdentitiesOnly yes",
    ]
    lines += [f"    {k} {v}" for k, v in options.items()]
    with home.ssh_config.open("a") as fh:
        fh.write("\n".join(lines) + "\n")


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def events(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


# -- names: what ssh_config resolved, not the alias --------------------------------------------
async def test_an_alias_error_names_the_resolved_host_and_port(home: RelayHome) -> None:
    closed = free_port()
    alias(home, "typoport", closed)
    async with start_daemon(home):
        result = await run_shim(home, "typoport", SIM_KERNEL, LINK)
    line = one_line(result.stderr)
    assert (
        f"cannot connect to 127.0.0.1:{closed}: connection refused "
        f"(is sshd running and listening on port {closed}?)"
    ) in line


async def test_an_alias_is_launched_through_with_its_ssh_config(home: RelayHome) -> None:
    assert home.sshd is not None
    alias(home, "work", home.sshd.port, UserKnownHostsFile=home.sshd.known_hosts)
    alias(home, "*", 1, ServerAliveInterval=7, ServerAliveCountMax=2, ConnectTimeout=9)
    async with start_daemon(home) as running:
        await launch_and_quit(home, "work")
        host = running.daemon.hosts["work"]
        assert host.config.keepalive_interval_s == 7.0  # ServerAliveInterval (Host *)
        assert host.config.keepalive_count_max == 2 and host.config.connect_timeout_s == 9.0
        shown = host.snapshot()
        assert (shown["hostname"], shown["port"]) == ("127.0.0.1", home.sshd.port)


async def test_a_changed_key_on_an_alias_is_called_changed(home: RelayHome, tmp_path: Path) -> None:
    assert home.sshd is not None
    other = ThrowawaySSHD(tmp_path / "other")
    other.prepare()
    pub = other.host_key.with_suffix(".pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{home.sshd.port} {pub[0]} {pub[1]}\n")
    alias(home, "work", home.sshd.port, UserKnownHostsFile=known)
    async with start_daemon(home):
        result = await run_shim(home, "work", SIM_KERNEL, LINK)
        trusted = await relay_cli(home, "trust", "work", "--yes")  # never replaces a key
    assert trusted[0] == 1 and "a DIFFERENT key is recorded" in trusted[2]
    assert pub[1] in known.read_text() and str(home.sshd.port) in known.read_text()
    line = one_line(result.stderr)
    assert f"host key for [127.0.0.1]:{home.sshd.port} has CHANGED from the one in {known}" in line
    command = f"ssh-keygen -R '[127.0.0.1]:{home.sshd.port}' -f {known}"
    assert command in line
    # relay trust suggests the same (it once left out -f, which edits ~/.ssh/known_hosts)
    assert f"`{command}`" in trusted[2], trusted[2]
    # and what they suggest works, run as written: then relay trust records the new key
    removed = subprocess.run(["sh", "-c", command], capture_output=True)
    assert removed.returncode == 0 and pub[1] not in known.read_text()
    async with start_daemon(home):
        trusted = await relay_cli(home, "trust", "work", "--yes")
    assert trusted[0] == 0, trusted


# -- host keys: unknown ones shown, recorded by a person (or accept-new) ------------------------
async def test_an_unknown_key_is_shown_and_relay_trust_records_it(
    home: RelayHome, tmp_path: Path
) -> None:
    assert home.sshd is not None
    known = tmp_path / "ssh" / "known_hosts"  # not there yet, nor its directory
    alias(home, "work", home.sshd.port, UserKnownHostsFile=known)
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(home.sshd.host_key.with_suffix(".pub"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    async with start_daemon(home):
        result = await run_shim(home, "work", SIM_KERNEL, LINK)
        line = one_line(result.stderr)
        assert f"host key for [127.0.0.1]:{home.sshd.port} is not in {known}" in line
        assert f"ED25519 {fingerprint}" in line and "`relay trust work`" in line
        status, out, err = await relay_cli(home, "trust", "work", stdin=b"n\n")
        assert status == 1 and fingerprint in out and not known.exists()
        status, out, err = await relay_cli(home, "trust", "work", stdin=b"yes\n")
        assert status == 0, err
        assert f"[127.0.0.1]:{home.sshd.port} ssh-ed25519 " in known.read_text()
        assert known.stat().st_mode & 0o077 == 0 and known.parent.stat().st_mode & 0o077 == 0
        await launch_and_quit(home, "work")
        status, out, _ = await relay_cli(home, "trust", "work")
        assert status == 0 and "already recorded" in out


async def test_accept_new_records_a_first_key_as_ssh_does(home: RelayHome, tmp_path: Path) -> None:
    assert home.sshd is not None
    known = tmp_path / "known_hosts"
    alias(
        home, "work", home.sshd.port, UserKnownHostsFile=known, StrictHostKeyChecking="accept-new"
    )
    async with start_daemon(home):
        await launch_and_quit(home, "work")
    assert f"[127.0.0.1]:{home.sshd.port} ssh-ed25519 " in known.read_text()


async def test_accept_new_on_a_full_disk_says_the_disk_not_the_key(home: RelayHome) -> None:
    """A first key accept-new cannot record (a full disk, a quota): the launch said the key
    was unknown and to check its fingerprint with the host's administrator. It says the
    disk, and nothing half-written is left in known_hosts."""
    assert home.sshd is not None
    with small_tmpfs(home.dir / "full-ssh", "64k") as full:
        known = full / "known_hosts"
        known.write_text("")
        with contextlib.suppress(OSError), (full / "filler").open("wb") as filler:
            for _ in range(64):  # bounded: 64 x 4 KB fills it, ENOSPC ends it sooner
                filler.write(b"\0" * 4096)
                filler.flush()
        alias(
            home,
            "work",
            home.sshd.port,
            UserKnownHostsFile=known,
            StrictHostKeyChecking="accept-new",
        )
        async with start_daemon(home):
            result = await run_shim(home, "work", SIM_KERNEL, LINK)
        line = one_line(result.stderr)
        assert (
            f"cannot write the new host key of [127.0.0.1]:{home.sshd.port} to {known} "
            f"(StrictHostKeyChecking accept-new): no space left on its file system; free some "
            f"space there and launch again"
        ) in line, line
        assert known.read_text() == ""


# -- keys: through the agent when encrypted; missing files said at once --------------------------
@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A running ssh-agent (its socket) and an askpass program for ssh-add."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "SSH_AUTH_SOCK=...; export ..." comes once it listens
    askpass = tmp_path / "askpass"
    askpass.write_text("#!/bin/sh\necho correct-horse\n")
    askpass.chmod(0o700)
    yield str(sock), askpass
    proc.terminate()
    proc.wait()
    proc.stdout.close()


async def test_an_encrypted_key_works_through_the_agent_the_launch_brings(
    home: RelayHome,
    tmp_path: Path,
    agent: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    daemon_log: io.StringIO,
) -> None:
    """The daemon starts with no agent; the shim's SSH_AUTH_SOCK is used from its launch on."""
    assert home.sshd is not None
    sock, askpass = agent
    key = tmp_path / "id_locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "correct-horse", "-f", str(key)], check=True
    )
    server = ThrowawaySSHD(tmp_path / "locked-sshd")
    server.prepare()
    server.authorized_keys.write_text(key.with_suffix(".pub").read_text())
    with server:
        home.sshd = server
        home.hosts.clear()
        home.add_host("locked", identity_files=[str(key)])
        monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
        async with start_daemon(home) as running:
            assert running.daemon.environ_agent is None
            monkeypatch.setenv("SSH_AUTH_SOCK", sock)  # the front end's session has one
            result = await run_shim(home, "locked", "", LINK)
            line = one_line(result.stderr)
            assert f"identity file {key} for locked is encrypted" in line
            assert f"run `ssh-add {key}`" in line
            assert not [e for e in events(daemon_log) if "retrying" in str(e["event"])]
            added = subprocess.run(
                ["ssh-add", str(key)],
                env=dict(
                    os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
                    DISPLAY=":0",
                ),
                capture_output=True,
                start_new_session=True,
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            await launch_and_quit(home, "locked")


async def test_a_missing_identity_file_is_said_at_once(
    home: RelayHome, daemon_log: io.StringIO
) -> None:
    home.add_host("local", identity_files=["/nonexistent/id_ed25519"])
    async with start_daemon(home):
        result = await run_shim(home, "local", "", LINK)
    line = one_line(result.stderr)
    assert "identity file /nonexistent/id_ed25519 for local does not exist" in line
    assert not [e for e in events(daemon_log) if "retrying" in str(e["event"])]


# -- connecting: bounded by the launch, the user's ConnectTimeout honoured ----------------------
@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port whose SYNs go unanswered: a listener with a full accept queue (backlog 0, one
    connection parked and never accepted), as a host behind a dropping firewall looks."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    parked = socket.create_connection(("127.0.0.1", port), timeout=5)
    yield port
    parked.close()
    listener.close()


async def test_connecting_honours_connect_timeout_and_fits_the_launch(
    home: RelayHome, black_hole: int, daemon_log: io.StringIO
) -> None:
    alias(home, "dark", black_hole, ConnectTimeout=2)
    home.add_host("darker", port=black_hole, launch_timeout_s=3, connect_timeout_s=15)
    async with start_daemon(home):
        by_ssh_config = await run_shim(home, "dark", SIM_KERNEL, LINK)
        by_launch = await run_shim(home, "darker", "", LINK)
    assert "timed out after 2 s (ConnectTimeout" in one_line(by_ssh_config.stderr)
    # one attempt, cut to what is left of launch_timeout_s: no retry would fit after it
    assert "timed out after 3 s" in one_line(by_launch.stderr)
    assert not [
        e for e in events(daemon_log) if e.get("host") == "darker" and "retrying" in str(e["event"])
    ]
