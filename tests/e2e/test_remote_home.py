"""The "remote host" the suite and ``make demo`` log in to is this machine, as this user: its
sessions get a HOME of their own (ThrowawaySSHD), so relay's kernel hook, which the installer
writes under the login's ``~/.cache/relay``, never lands in the real one."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from relay.sim.sshd import ThrowawaySSHD
from tests.conftest import RelayHome, RunningDaemon
from tests.e2e.helpers import controller
from tests.e2e.test_dynamic import finish
from tests.e2e.test_faults import connected


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``directory`` (itself included) with its mtime and size."""
    found: dict[str, tuple[int, int]] = {}
    if not directory.exists():
        return found
    for path in [directory, *directory.rglob("*")]:
        stat = path.lstat()
        found[str(path)] = (stat.st_mtime_ns, stat.st_size)
    return found


async def test_a_launch_leaves_the_real_cache_untouched(
    daemon: RunningDaemon, home: RelayHome, sshd: ThrowawaySSHD
) -> None:
    """A controller with Dynamic (the hook installed and loaded) takes its hook from the
    throwaway home, and the real ``~/.cache/relay`` is as it was."""
    real = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "relay"
    before = snapshot(real)
    async with controller(home) as fe:
        main, _ = await connected(fe)
        (initfile,) = main.hello["initfile"]
        await finish(fe, main)
    assert not Path(initfile).is_relative_to(real), initfile
    assert Path(initfile).is_relative_to(sshd.home / ".cache" / "relay"), initfile
    assert snapshot(real) == before
