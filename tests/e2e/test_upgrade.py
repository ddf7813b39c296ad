"""An upgrade while the daemon runs (``pipx upgrade relay-wstp`` with kernels live): the
daemon goes on as the release it started as, and says where it cannot. It read the files it
ships to hosts when a host first needed them, and so installed the new release's agent, hook
or supervisor beside its own code (a review's finding: every launch failed until a
restart), and `relay check`'s code, loaded when first asked for, was the new release's."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import relay
from relay.ssh.hookfile import INIT_FILE, HookFile, agent_file
from tests.conftest import RelayHome
from tests.e2e.helpers import launch_and_quit, relay_cli

pytestmark = pytest.mark.sshd


async def test_an_upgrade_while_it_runs_changes_nothing_it_ships(
    home: RelayHome, tmp_path: Path
) -> None:
    assert home.sshd is not None
    installed = tmp_path / "site"  # the release the daemon runs, where pipx put it
    shutil.copytree(
        Path(relay.__file__).parent,
        installed / "relay",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    home.write()
    env = {**home.env, "PYTHONPATH": str(installed)}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert daemon.stderr is not None
    draining: asyncio.Future[bytes] | None = None
    try:
        said = b""
        while b'"serving"' not in said:
            line = await asyncio.wait_for(asyncio.to_thread(daemon.stderr.readline), 30)
            assert line, said
            said += line
        draining = asyncio.ensure_future(asyncio.to_thread(daemon.stderr.read))
        # the upgrade: every file it ships, and relay check's code, replaced
        package = installed / "relay"
        new = {}
        for path, comment in (
            (package / "wolfram" / INIT_FILE, b"(* the next release *)\n"),
            (package / "agent" / "remote.py", b"# the next release\n"),
            (package / "ssh" / "supervisor.sh", b"# the next release\n"),
            (package / "ssh" / "hookinstall.sh", b"# the next release\n"),
            (package / "check.py", b"# the next release\n"),
        ):
            data = path.read_bytes() + comment
            path.unlink()  # as an installer replaces a file: a new one in its place
            path.write_bytes(data)
            new[path.name] = data
        await launch_and_quit(home, "local")
        cache = home.sshd.home / ".cache" / "relay"
        for name, what in ((INIT_FILE, "the hook"), ("remote.py", "the agent")):
            upgraded = HookFile(name, new[name]).version
            assert not (cache / upgraded).exists(), f"{what} of the next release was installed"
        for shipped in (HookFile.packaged(), agent_file()):  # the test's: the daemon's own
            assert (cache / shipped.version).is_dir()
        status, _, err = await relay_cli(home, "check", "local")
        assert status != 0 and "relay was upgraded while this daemon" in err, err
    finally:
        daemon.terminate()
        assert await asyncio.to_thread(daemon.wait, 60) == 0
        if draining is not None:
            await asyncio.wait_for(draining, 60)
        daemon.stderr.close()
