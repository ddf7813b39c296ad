"""A launch's process imports what a launch needs and nothing more. LaunchKernels runs the shim
once per kernel, one after another (docs/topology.md §4), so every import is paid n times in
a row: the `relay` script skips the `import re` an entry-point wrapper has, and the shim uses
the C modules `_socket` and `_signal`, whose wrappers would pull in `enum` and with it a
quarter of a launch's imports (BENCHMARKS.md times the launch).

The simulated kernel is held to the same: `make bench` starts up to 64 of them on the same two
cores as the launches it times, so what a kernel's start costs there is charged to relay.

Both import only ``relay.lite`` (and the simulator's own modules), and one rule keeps that
package light: a module there imports only the package itself and the light standard-library
modules below at module level; inside a function (a rare path, paid only when taken) a few more;
under ``TYPE_CHECKING``, what its annotations name. Importing the whole package loads nothing
heavy."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import relay.lite
from tests.conftest import RELAY, SIM_KERNEL

# what other parts of relay use and a launch must not load
HEAVY = {
    "argparse", "asyncio", "asyncssh", "dataclasses", "enum", "json", "pathlib", "pydantic",
    "re", "signal", "socket", "structlog", "subprocess", "typing", "uvloop",
}  # fmt: skip

LITE = Path(relay.lite.__file__).parent
# at module level: C modules and the few pure-Python ones a bare interpreter has loaded already
LIGHT = {
    "__future__", "_signal", "_socket", "errno", "fcntl", "os", "select", "stat", "struct",
    "sys", "time",
}  # fmt: skip
# inside a function only: argparse for --help, subprocess to start the daemon, re for a
# hook's link name, ipaddress for an IPv6 literal, tomllib for a [daemon] socket...
RARE = {
    "argparse",
    "ctypes",
    "hmac",
    "ipaddress",
    "re",
    "secrets",
    "signal",
    "subprocess",
    "tomllib",
}
# under TYPE_CHECKING: never imported when relay runs
TYPES_ONLY = {"collections.abc", "os", "signal", "types", "typing"}


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
    assert {"relay.lite.shim", "relay.lite.client", "_socket"} <= imported
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


def imports_by_place(path: Path) -> dict[str, set[str]]:
    """The modules a file imports, by where the import statement is: "module" (run at import),
    "function" (run when the function is) or "types" (under ``if TYPE_CHECKING:``)."""
    found: dict[str, set[str]] = {"module": set(), "function": set(), "types": set()}

    def visit(node: ast.AST, place: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found[place].update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                found[place].add(f"relay.lite.{module}".rstrip(".") if child.level else module)
            elif isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                for statement in child.body:
                    visit(ast.Module(body=[statement], type_ignores=[]), "types")
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]), place)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, "function")
            else:
                visit(child, place)

    visit(ast.parse(path.read_text(), str(path)), "module")
    return found


def _outside(names: set[str], allowed: set[str]) -> set[str]:
    return {n for n in names if n not in allowed and n.split(".")[:2] != ["relay", "lite"]}


@pytest.mark.parametrize("path", sorted(LITE.glob("*.py")), ids=lambda p: p.name)
def test_a_lite_module_imports_only_the_package_and_light_modules(path: Path) -> None:
    found = imports_by_place(path)
    assert not _outside(found["module"], LIGHT), f"{path.name} imports, at module level"
    assert not _outside(found["function"], LIGHT | RARE), f"{path.name} imports, in a function"
    assert not _outside(found["types"], LIGHT | TYPES_ONLY), f"{path.name} imports, for types"


def test_the_rule_reads_every_place_of_an_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nfrom . import framing\nTYPE_CHECKING = False\n"
        "if TYPE_CHECKING:\n    from typing import Any\nelse:\n    import _signal\n"
        "def f():\n    import subprocess\n    from relay import daemon\n"
        "class C:\n    def g(self):\n        import asyncio\n"
    )
    assert imports_by_place(source) == {
        "module": {"os", "relay.lite", "_signal"},
        "function": {"subprocess", "relay", "asyncio"},
        "types": {"typing"},
    }
    assert _outside({"relay", "relay.lite.framing", "asyncio"}, LIGHT) == {"relay", "asyncio"}


def test_importing_the_lite_package_loads_nothing_heavy(tmp_path: Path) -> None:
    """Every module of relay.lite, imported in a fresh interpreter (from elsewhere than the
    checkout, as the front end runs the shim)."""
    names = sorted(f"relay.lite.{p.stem}" for p in LITE.glob("*.py") if p.stem != "__init__")
    code = f"import sys; import {', '.join(names)}; print(' '.join(sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert set(names) <= loaded
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
    assert not {m for m in loaded if m.startswith("relay.") and not m.startswith("relay.lite")}
