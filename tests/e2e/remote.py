"""What the remote host says, read with ps and ss rather than trusted from the daemon."""

from __future__ import annotations

import subprocess
from pathlib import Path


def parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def sshd_session_of(pid: int) -> int:
    """The sshd session process a remote kernel descends from."""
    current = pid
    for _ in range(20):
        current = parent(current)
        if Path(f"/proc/{current}/comm").read_text().strip().startswith("sshd"):
            return current
    raise AssertionError(f"process {pid} has no sshd ancestor")


def listening_ports() -> set[int]:
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()}
