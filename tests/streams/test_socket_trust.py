"""The shim talks only to the user's own daemon: a directory, socket or listening process
planted by another user (here a real second uid, nobody, through setpriv) is refused in one
line before a byte is sent, and no daemon is started beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RELAY
from tests.strangers import NOBODY, SYSTEM_PYTHON, as_nobody, needs_second_uid

pytestmark = needs_second_uid

FAKE_DAEMON = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(1)
print("ready", flush=True)
conn, _ = s.accept()
data = conn.recv(65536)
open(sys.argv[2], "wb").write(data)  # what the shim would have told a stranger
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="relay-trust-", dir="/tmp"))
    directory.chmod(0o1777)  # like /tmp itself
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def shim(socket_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RELAY_SOCKET=str(socket_path), RELAY_CONFIG="/nonexistent")
    return subprocess.run(
        [RELAY, "launch", *extra, "host", "/k", "1@127.0.0.1,2@127.0.0.1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def fake_daemon(socket_path: Path, told: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        as_nobody(SYSTEM_PYTHON, "-c", FAKE_DAEMON, str(socket_path), str(told)),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_directory_planted_by_another_user_is_refused(shared: Path) -> None:
    planted = shared / "relay-0"
    planted.mkdir(mode=0o700)
    os.chown(planted, NOBODY, NOBODY)
    told = shared / "told"
    daemon = fake_daemon(planted / "relay.sock", told)  # nobody can bind there: it is theirs
    try:
        for extra in ((), ("--no-autostart",)):
            result = shim(planted / "relay.sock", *extra)
            assert result.returncode == 3 and result.stderr.count("\n") == 1
            assert f"belongs to uid {NOBODY}, not you" in result.stderr
        assert not told.exists() and not (planted / "relay.sock.lock").exists()
    finally:
        daemon.kill()
        daemon.communicate()  # reaps it and closes its pipe


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_relay_serve_in_a_directory_planted_by_another_user_says_so_at_once(
    shared: Path,
) -> None:
    """relay serve with its socket in another user's directory (/tmp/relay-UID made first,
    where there is no XDG_RUNTIME_DIR), its start lock held by them: it took the lock file
    there and waited on it for good ("a relay daemon is being started ...; waiting"). It
    says whose directory it is, at once, and locks nothing there."""
    planted = shared / "relay-0"
    planted.mkdir(mode=0o700)
    os.chown(planted, NOBODY, NOBODY)
    holder = subprocess.Popen(
        as_nobody(SYSTEM_PYTHON, "-c", HOLD_LOCK, str(planted / "relay.start.lock")),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        config = shared / "relay.toml"
        config.write_text("")  # the defaults: no host needed to start
        env = dict(os.environ, RELAY_CONFIG=str(config), RELAY_SOCKET=str(planted / "relay.sock"))
        result = subprocess.run(
            [RELAY, "serve"], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1, result
        assert f"belongs to uid {NOBODY}, not you" in result.stderr, result.stderr
        assert "waiting" not in result.stderr, result.stderr
    finally:
        holder.kill()
        holder.communicate()


def test_a_foreign_daemon_behind_a_socket_in_our_own_directory_is_refused(
    shared: Path, tmp_path: Path
) -> None:
    """Our 0700 directory, but the process listening on the socket runs as nobody (it bound
    elsewhere and the socket was moved in): the peer's uid gives it away."""
    mine = Path(tempfile.mkdtemp(prefix="relay-mine-", dir="/tmp"))
    try:
        told = shared / "told"
        daemon = fake_daemon(shared / "s.sock", told)
        os.rename(shared / "s.sock", mine / "relay.sock")
        try:
            result = shim(mine / "relay.sock", "--no-autostart")
            assert result.returncode == 3
            assert f"runs as uid {NOBODY}, not you" in result.stderr
        finally:
            daemon.kill()
            daemon.communicate()
        assert not told.exists() or told.read_bytes() == b""
    finally:
        shutil.rmtree(mine, ignore_errors=True)


def test_symlinks_for_the_socket_and_the_log_are_refused(tmp_path: Path) -> None:
    mine = Path(tempfile.mkdtemp(prefix="relay-mine-", dir="/tmp"))
    try:
        (mine / "relay.sock").symlink_to(tmp_path / "elsewhere.sock")
        (tmp_path / "elsewhere.sock").write_text("")
        result = shim(mine / "relay.sock", "--no-autostart")
        assert result.returncode == 3 and "is not a socket" in result.stderr
        (mine / "relay.sock").unlink()
        victim = tmp_path / "victim"
        victim.write_text("keep me\n")
        (mine / "relay.log").symlink_to(victim)
        result = shim(mine / "relay.sock")  # autostart would log through the link
        assert result.returncode != 0 and result.stderr.count("\n") == 1
        assert "cannot open the daemon's log" in result.stderr
        assert victim.read_text() == "keep me\n"
    finally:
        shutil.rmtree(mine, ignore_errors=True)
