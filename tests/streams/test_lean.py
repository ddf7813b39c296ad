"""``relay serve`` starts itself again lean (``relay.lean``): in the same process, with the
command line it was given and the interpreter's flags it was started with, as each way of
starting it (a shell's ``relay serve``, a shim's autostart) runs it; and where it cannot, it
runs as it was started and its log says why."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay import lean
from relay.lite import client, shim
from tests.conftest import RELAY, RelayHome


@pytest.fixture
def quiet_home(home: RelayHome) -> RelayHome:
    home.config.write_text("[daemon]\nallow_adhoc_hosts = false\n")
    return home


def serve_ready(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    """``COMMAND serve --ready-fd N --log-level info`` as a shim's autostart starts it, once
    it says ready; and the command line it was started with."""
    read_fd, write_fd = os.pipe()
    argv = [*command, "serve", "--ready-fd", str(write_fd), "--log-level", "info"]
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    with open(read_fd, "rb") as pipe:
        said = pipe.readline()  # the daemon's word, or EOF once it has exited
    assert said == b"ready\n", said
    return proc, argv


def stopped(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.mark.parametrize("way", ["relay serve", "autostart"])
def test_serve_starts_itself_again_lean_in_the_same_process(
    quiet_home: RelayHome, way: str
) -> None:
    command = [RELAY] if way == "relay serve" else shim.isolated_command()
    proc, argv = serve_ready(command, quiet_home.env)
    try:
        running = cmdline(proc.pid)  # the pid it was started as: it exec'd, nothing forked
        assert running[1:4] == list(lean.FLAGS)
        if way == "relay serve":  # the script, run by the interpreter its first line names
            assert running[4:] == argv
        else:  # the autostart's own flags (-I) are kept
            assert running[4:] == argv[1:]
            assert running[4] == "-I"
        # the exec'd daemon answers on its socket: the ready pipe was its own
        assert "daemon" in client.request(str(quiet_home.socket), {"op": "status"})
    finally:
        err = stopped(proc)
    assert "not lean" not in err


def test_serve_without_optimized_bytecode_runs_as_started_and_says_why(
    quiet_home: RelayHome, tmp_path: Path
) -> None:
    # bytecode read from (and written to) an empty directory, and none written: the daemon
    # would compile every module at every start
    env = dict(quiet_home.env, PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=str(tmp_path))
    proc, argv = serve_ready([RELAY], env)
    try:
        assert cmdline(proc.pid)[1:] == argv
    finally:
        err = stopped(proc)
    (line,) = [line for line in err.splitlines() if '"not lean"' in line]
    assert "PYTHONDONTWRITEBYTECODE" in line and "-OO -m compileall" in line


def test_the_flags_go_right_after_the_interpreter() -> None:
    assert lean.argv(["python3", "-I", "-c", "code", "root", "serve"], "/venv/bin/python") == [
        "/venv/bin/python",
        "-OO",
        "-X",
        "no_debug_ranges",
        "-I",
        "-c",
        "code",
        "root",
        "serve",
    ]


def test_lean_where_the_bytecode_is_cached_or_can_be(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path))  # nothing cached there
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert lean.why_not() is None  # the first lean start writes it
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    reason = lean.why_not()
    assert reason is not None and "typing.py" in reason and "compileall" in reason
    for top, inner in lean.MARKERS:  # cached: lean even where nothing may be written
        source = lean._source(top, inner)
        assert source is not None
        cache = Path(importlib.util.cache_from_source(source, optimization=2))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(b"")
    assert lean.why_not() is None


def test_not_lean_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "launchd" in (lean.why_not() or "")
