"""A launch's process imports what a launch needs and nothing more. LaunchKernels runs the shim
once per kernel, one after another (docs/topology.md §4), so every import is paid n times in
a row: the `relay` script skips the `import re` an entry-point wrapper has, and the shim uses
the C modules `_socket` and `_signal`, whose wrappers would pull in `enum` and with it a
quarter of a launch's imports (BENCHMARKS.md times the launch)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import RELAY

# what other parts of relay use and a launch must not load
HEAVY = {
    "argparse", "asyncio", "asyncssh", "dataclasses", "enum", "json", "pathlib", "pydantic",
    "re", "signal", "socket", "structlog", "subprocess", "typing", "uvloop",
}  # fmt: skip


def test_a_launch_imports_nothing_heavy(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        RELAY_SOCKET=str(tmp_path / "run" / "relay.sock"),
        PYTHONPROFILEIMPORTTIME="1",  # -X importtime: one stderr line per module imported
    )
    proc = subprocess.run(
        [RELAY, "launch", "--no-autostart", "h", "k", "1@127.0.0.1,2@127.0.0.1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 3, proc.stderr  # no daemon listens: the shim went all the way
    assert "no relay daemon is listening" in proc.stderr
    imported = {
        line.split("|")[2].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert {"relay.shim", "relay.client", "_socket"} <= imported
    assert not imported & HEAVY
