"""``relay serve`` starts itself again lean (``relay.lean``): in the same process, with the
command line it was given and the interpreter's flags it was started with, as each way of
starting it (a shell's ``relay serve``, a shim's autostart) runs it, its bytecode in relay's
own cache, filled first where it lacks it; and where it cannot, it runs as it was started
and its log says why."""

from __future__ import annotations

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


def serve_ready(
    command: list[str], env: dict[str, str], *, stderr: int | None = subprocess.PIPE
) -> tuple[subprocess.Popen[str], list[str]]:
    """``COMMAND serve --ready-fd N --log-level info`` as a shim's autostart starts it, once
    it says ready; and the command line it was started with."""
    read_fd, write_fd = os.pipe()
    argv = [*command, "serve", "--ready-fd", str(write_fd), "--log-level", "info"]
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
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
    return err or ""


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.mark.parametrize("way", ["relay serve", "autostart"])
def test_serve_starts_itself_again_lean_in_the_same_process(
    quiet_home: RelayHome, way: str
) -> None:
    command = [RELAY] if way == "relay serve" else shim.isolated_command()
    proc, argv = serve_ready(command, quiet_home.env)
    flags = lean.flags(lean.cache_dir(quiet_home.env))
    try:
        running = cmdline(proc.pid)  # the pid it was started as: it exec'd, nothing forked
        assert running[1 : 1 + len(flags)] == flags
        rest = running[1 + len(flags) :]
        if way == "relay serve":  # the script, run by the interpreter its first line names
            assert rest == argv
        else:  # the autostart's own flags (-I) are kept
            assert rest == argv[1:] and rest[0] == "-I"
        # the exec'd daemon answers on its socket: the ready pipe was its own
        assert "daemon" in client.request(str(quiet_home.socket), {"op": "status"})
    finally:
        err = stopped(proc)
    assert "not lean" not in err


@pytest.mark.alone  # the compile has COMPILE_TIMEOUT_S: beside other tests it ran out once
def test_a_first_start_fills_the_cache_before_it_goes_lean(
    quiet_home: RelayHome, tmp_path: Path
) -> None:
    """An empty cache (a new install, a new Python): a child compiles what the daemon
    imports into it first, whatever PYTHONDONTWRITEBYTECODE says (a review found a daemon
    that compiled it itself took 10 MB more for its life), and the daemon reads it there."""
    env = dict(quiet_home.env, XDG_CACHE_HOME=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    cache = lean.cache_dir(env)
    proc, _ = serve_ready([RELAY], env)
    try:
        assert lean.runs_lean(cmdline(proc.pid))
        assert f"pycache_prefix={cache}" in cmdline(proc.pid)
        written = list(cache.rglob("*.opt-2.pyc"))
        assert any(p.name.startswith("daemon.") for p in written), written[:5]
        assert (cache.stat().st_mode & 0o777) == 0o700
    finally:
        stopped(proc)


def test_a_stale_cache_is_filled_again(quiet_home: RelayHome, tmp_path: Path) -> None:
    """After an upgrade (relay's or Python's) the cache holds bytecode of sources that
    changed: the importer would compile them in the daemon. The child fills it again."""
    env = dict(quiet_home.env, XDG_CACHE_HOME=str(tmp_path))
    cache = lean.cache_dir(env)
    proc, _ = serve_ready([RELAY], env)
    stopped(proc)
    (daemon,) = [p for p in cache.rglob("daemon.*.opt-2.pyc") if p.parent.name == "relay"]
    head = bytearray(daemon.read_bytes())
    head[8:12] = (int.from_bytes(head[8:12], "little") - 1).to_bytes(4, "little")
    daemon.write_bytes(bytes(head))  # as if relay/daemon.py had changed since
    assert not lean._fresh(str(Path(lean.__file__).with_name("daemon.py")), str(daemon))
    proc, _ = serve_ready([RELAY], env)
    try:
        assert lean.runs_lean(cmdline(proc.pid))
        assert lean._fresh(str(Path(lean.__file__).with_name("daemon.py")), str(daemon))
    finally:
        stopped(proc)


@pytest.mark.parametrize("where", ["cache", "above"])
def test_a_cache_another_user_could_write_is_not_used(
    quiet_home: RelayHome, tmp_path: Path, where: str
) -> None:
    """Bytecode is code the daemon runs: a cache directory others may write to is refused,
    the daemon runs as started, and its log says why. So is one below a directory others
    may write to (XDG_CACHE_HOME here): they could swap the cache after the check, and
    Python finds the bytecode by name (a review ran its own code in the daemon so)."""
    xdg = tmp_path / "xdg"
    cache = lean.cache_dir({"XDG_CACHE_HOME": str(xdg)})
    cache.mkdir(parents=True)
    (cache if where == "cache" else xdg).chmod(0o777)
    env = dict(quiet_home.env, XDG_CACHE_HOME=str(xdg))
    proc, argv = serve_ready([RELAY], env)
    try:
        assert cmdline(proc.pid)[1:] == argv
    finally:
        err = stopped(proc)
    (line,) = [line for line in err.splitlines() if '"not lean"' in line]
    said = "is not yours alone" if where == "cache" else f"{xdg} is writable by others"
    assert said in line, line
    assert not list(cache.rglob("*.pyc"))


def test_closed_standard_streams_do_not_stop_it(quiet_home: RelayHome, tmp_path: Path) -> None:
    """stdout and stderr closed at start (a review found the exec's flush of them crashed
    ``relay serve`` there): it goes lean and serves."""
    log = tmp_path / "relay.log"
    read_fd, write_fd = os.pipe()
    code = (
        "import os, sys; os.close(1); os.close(2); "
        "os.execv(sys.argv[1], sys.argv[1:])"  # the daemon starts with no fd 1 or 2
    )
    serve = [RELAY, "serve", "--ready-fd", str(write_fd), "--log-file", str(log)]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *serve],
        env=quiet_home.env,
        stdin=subprocess.DEVNULL,
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    with open(read_fd, "rb") as pipe:
        assert pipe.readline() == b"ready\n"
    try:
        assert lean.runs_lean(cmdline(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)


def test_an_interpreter_started_with_o_is_left_as_it_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``-O`` kept beside ``-OO`` made level 3, whose bytecode is never cached (a review's
    finding): a daemon started with -O is not made lean."""

    class Flags:
        optimize = 1

    monkeypatch.setattr(sys, "flags", Flags)
    assert "started with -O" in (lean.why_not(tmp_path / "cache") or "")


def test_the_flags_go_right_after_the_interpreter() -> None:
    cache = Path("/home/u/.cache/relay/bytecode")
    argv = ["python3", "-I", "-c", "code", "root", "serve"]
    assert lean.argv(argv, "/venv/bin/python", cache) == [
        "/venv/bin/python",
        "-OO",
        "-X",
        "no_debug_ranges",
        "-X",
        f"pycache_prefix={cache}",
        "-I",
        "-c",
        "code",
        "root",
        "serve",
    ]
    assert lean.runs_lean(lean.argv(argv, "/venv/bin/python", cache))
    assert not lean.runs_lean(argv)


def test_not_lean_off_linux(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "launchd" in (lean.why_not(tmp_path / "cache") or "")
