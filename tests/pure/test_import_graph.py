"""relay's modules import one another without a cycle. Every import counts: at module level,
inside a function or under ``TYPE_CHECKING`` alike (an import put in a function to dodge a
cycle is still a layer reaching back into the one above it)."""

from __future__ import annotations

import ast
from pathlib import Path

RELAY = Path(__file__).resolve().parents[2] / "relay"


def module_name(path: Path) -> str:
    parts = path.relative_to(RELAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, name: str, *, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that module ``name`` imports, wherever the import statement
    is: ``from relay import check`` names relay and relay.check, ``from relay.ssh.host import
    Hold`` relay.ssh.host, ``from . import spec`` (in relay.slurm) relay.slurm.spec."""
    package = name if is_package else name.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source_module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source_module = ".".join([*base, *([node.module] if node.module else [])])
            named.add(source_module)
            named.update(f"{source_module}.{alias.name}" for alias in node.names)
    found = set()
    for imported in named:
        while imported and imported not in modules:  # relay.ssh.host.Hold: relay.ssh.host
            imported = imported.rpartition(".")[0]
        if imported:
            found.add(imported)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(RELAY.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {
        module_name(p): imports_of(
            p.read_text(), module_name(p), is_package=p.name == "__init__.py", modules=modules
        )
        for p in paths
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle, as the modules along it (the first one again at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if (cycle := visit(start)) is not None:
            return cycle
    return None


def test_relay_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_kind_of_import_is_an_edge() -> None:
    modules = {"relay", "relay.check", "relay.framing", "relay.daemon", "relay.ssh"}
    modules |= {"relay.ssh.host", "relay.ssh.forwards", "relay.slurm", "relay.slurm.spec"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "import asyncio\n"
        "from relay import check, framing\n"
        "if TYPE_CHECKING:\n"
        "    from relay.daemon import Daemon\n"
        "def f():\n"
        "    import relay.ssh.host\n"
        "    from relay.ssh.forwards import CallbackForward\n"
        "    from . import spec\n"
    )
    assert imports_of(source, "relay.slurm.units", is_package=False, modules=modules) == {
        "relay", "relay.check", "relay.framing", "relay.daemon", "relay.ssh.host",
        "relay.ssh.forwards", "relay.slurm", "relay.slurm.spec",
    }  # fmt: skip


def test_a_cycle_is_named() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_daemon_does_not_hold_what_only_a_check_or_a_typo_needs() -> None:
    """``relay serve`` loads ``relay.check`` (with its views) when a check is asked for, and
    difflib when relay.toml has a key it does not know: about 1 MB the daemon need not hold."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import sys, relay.daemon, relay.cli.serve; print(*sys.modules)"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    loaded = set(done.stdout.split())
    assert "relay.daemon" in loaded
    assert not loaded & {"relay.check", "relay.checkview", "relay.statusview", "difflib"}
