"""A launch's process imports what a launch needs and nothing more. LaunchKernels runs the shim
once per kernel, one after another (docs/topology.md §4), so every import is paid n times in
a row: the `relay` script skips the `import re` an entry-point wrapper has, and the shim uses
the C modules `_socket` and `_signal`, whose wrappers would pull in `enum` and with it a
quarter of a launch's imports (BENCHMARKS.md times the launch).

The simulated kernel is held to the same: `make bench` starts up to 64 of them on the same two
cores as the launches it times, so what a kernel's start costs there is charged to relay."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests.conftest import RELAY, SIM_KERNEL

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
    imported = _imported(proc.stderr)
    assert {"relay.shim", "relay.client", "_socket"} <= imported
    assert not imported & HEAVY


def _imported(stderr: str) -> set[str]:
    return {
        line.split("|")[2].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_a_simulated_kernel_imports_nothing_heavy() -> None:
    """All the way through a connect, in the default (random) order: two ports that are bound
    and not listening refuse it, and the kernel says so."""
    with socket.socket() as data, socket.socket() as message:
        data.bind(("127.0.0.1", 0))
        message.bind(("127.0.0.1", 0))
        name = f"{data.getsockname()[1]}@127.0.0.1,{message.getsockname()[1]}@127.0.0.1"
        env = {k: v for k, v in os.environ.items() if k != "RELAY_SIM_CONNECT_ORDER"}
        proc = subprocess.run(
            [SIM_KERNEL, "-wstp", "-LinkMode", "Connect", "-LinkProtocol", "TCPIP",
             "-LinkName", name, "-simstartup", "0"],
            env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"cannot connect to {name}" in proc.stderr
    imported = _imported(proc.stderr)
    assert {"relay.sim.kernel", "_socket"} <= imported
    assert not imported & (HEAVY | {"threading", "random"})
