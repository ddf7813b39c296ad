"""Why supervisor.sh ended before its hello, as a launch's line says it (relay.ssh.supervisor)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from relay.ssh.supervisor import _not_startable, _why


def test_a_tmpdir_it_cannot_use_is_named_with_what_mktemp_said() -> None:
    said = (
        "mktemp: failed to create directory via template '/nope/relay-ab.XXXXXX': "
        "No such file or directory\n"
    )
    line = _why(97, said)
    assert line.startswith("it cannot make its directory in the host's TMPDIR (mktemp: failed")
    assert line.endswith(
        "set TMPDIR there to a directory you can write to (`relay check` shows it)"
    )
    assert "mktemp failed" in _why(97, "")


def test_a_full_tmpdir_is_said_as_such() -> None:
    line = _why(98, "relay: 1: echo: echo: I/O error\n")
    assert line.startswith("it cannot write its files in the host's TMPDIR (relay: 1: echo:")
    assert "free some space there" in line
    assert "a write failed" in _why(98, "")


def test_a_shell_that_cannot_run_and_other_ends() -> None:
    assert (
        _why(127, "sh: 1: /bin/sh: not found")
        == "/bin/sh could not be run there (sh: 1: /bin/sh: not found)"
    )
    assert _why(1, "This service allows sftp connections only.\n") == (
        "needs /bin/sh and mktemp on the remote host (exit 1: This service allows sftp "
        "connections only.)"
    )
    # a session the server ended unrun (a second one where MaxSessions is 1): no shell's
    # failure, which "needs /bin/sh and mktemp" would send a person after (a review's finding)
    assert _why(None, "") == (
        "the SSH server ended its session with no exit status (one session at a time, "
        "MaxSessions 1 in its sshd_config, with another open? `relay check` says)"
    )
    assert _why(None, "sh: mktemp: not found").startswith("needs /bin/sh and mktemp")


def test_a_directory_a_full_disk_has_no_room_for_is_said_as_full() -> None:
    """A TMPDIR on a disk with no block (ext4 refuses the directory) or no inode left:
    mktemp failed with ENOSPC, and the line sent the person to make a writable TMPDIR
    writable."""
    for why in ("No space left on device", "Disk quota exceeded", "Quota exceeded"):
        said = f"mktemp: failed to create directory via template '/tmp/relay-ab.XXXXXX': {why}\n"
        line = _why(97, said)
        assert line.startswith("it cannot write its files in the host's TMPDIR (mktemp: failed")
        assert why in line and "free some space there" in line, line


@pytest.mark.parametrize(
    ("said", "why"),
    [
        (
            "ENOSPC [Errno 28] No space left on device",
            "[Errno 28] No space left on device (the host's TMPDIR is full, where the kernel's "
            "log goes)",
        ),
        (
            "EDQUOT [Errno 122] Disk quota exceeded",
            "[Errno 122] Disk quota exceeded (the user's disk quota is reached in the host's "
            "TMPDIR, where the kernel's log goes)",
        ),
    ],
)
def test_a_start_the_agent_had_no_room_for_says_where(said: str, why: str) -> None:
    """The kernel's log in a full TMPDIR, or one at the user's quota (common on clusters'
    shared scratch): the agent's ``nostart`` is said with where the room is lacking, not as
    the bare errno."""
    assert _not_startable("h", said) == f"relay's agent on h could not start the kernel: {why}"


@pytest.mark.parametrize(
    "why", ["No space left on device", "Disk quota exceeded", "Quota exceeded"]
)
def test_the_host_probe_says_a_tmpdir_with_no_room_for_a_directory_full(
    why: str, tmp_path: Path
) -> None:
    """relay check's probe, where mktemp cannot make its directory for want of room: glibc's
    words for EDQUOT, and musl's (Alpine, busybox's mktemp), are both a full TMPDIR."""
    from relay.check import HOST_PROBE
    from relay.checkview import parse_probe

    fake = tmp_path / "bin"
    fake.mkdir()
    mktemp = fake / "mktemp"
    mktemp.write_text(
        f"#!/bin/sh\necho \"mktemp: can't create directory 'x': {why}\" >&2\nexit 1\n"
    )
    mktemp.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        ["sh", "-c", HOST_PROBE], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert parse_probe(done.stdout)["tmpdir_writable"] == "full", done.stdout
