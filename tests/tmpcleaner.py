"""systemd-tmpfiles as Fedora and RHEL run it daily on /tmp (``q /tmp 1777 root root 10d``),
the cleaner a remote host's files meet weeks into a computation; asked to judge by
modification time alone (``m:``), since a test cannot age a change time."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

TMPFILES = shutil.which("systemd-tmpfiles")
NO_TMPFILES = "systemd-tmpfiles is not on this machine"


def age(directory: Path, days: float = 30) -> None:
    """Every file in ``directory``, and it, last touched ``days`` ago."""
    then = time.time() - days * 86400
    for path in [*directory.iterdir(), directory]:
        os.utime(path, (then, then), follow_symlinks=False)


def tmp_cleaner(directory: Path, tmp_path: Path) -> str:
    """systemd-tmpfiles' daily clean of ``directory``: what it said it removed."""
    assert TMPFILES is not None
    conf = tmp_path / "relay-test.conf"
    conf.write_text(f"d {directory} 0700 - - m:10d\n")
    done = subprocess.run(
        [TMPFILES, "--clean", str(conf)], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, SYSTEMD_LOG_LEVEL="debug"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr
