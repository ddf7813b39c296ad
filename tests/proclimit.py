"""A user at its process limit (``ulimit -u``), made for real.

RLIMIT_NPROC does not bind root, whom the tests run as: the processes that meet the limit
run as a uid of their own (``as_user``: setpriv, then prlimit), and the limit is reached by
``full``, a process of that uid under the same limit that forks until fork(2) refuses
(EAGAIN), then holds its children (and lets ``free`` of them go, reaped, so that exactly
that many forks are left). No sleep and no guess of a count: the user's process table is
full when ``full`` returns, and stays so until the block ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"  # readable by any uid, unlike a venv under /root
FILL_S = 30.0

# forks until refused, each child waiting on standard input; says how many it holds, then
# waits for the end of its input (the test's), when the children end too
_FILL = r"""
import os, sys
kids = []
while True:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.read(0, 1)
        os._exit(0)
    kids.append(pid)
free = int(sys.argv[1])
for pid in kids[:free]:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(len(kids) - free, flush=True)
os.read(0, 1)
for pid in kids[free:]:
    os.waitpid(pid, 0)
"""


def spare_uid() -> int:
    """A uid no process of this machine has (this run's own: other runs choose theirs)."""
    used = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit():
                used.add(entry.stat().st_uid)
    uid = 300000 + os.getpid() % 100000
    while uid in used:
        uid += 1
    return uid


def as_user(uid: int, gid: int, nproc: int) -> list[str]:
    """The argv prefix that runs a command as ``uid`` under a process limit of ``nproc``."""
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "prlimit",
        f"--nproc={nproc}:{nproc}",
        "--",
    ]


@contextlib.contextmanager
def full(uid: int, gid: int, nproc: int, free: int = 0) -> Iterator[int]:
    """The user ``uid`` at its limit of ``nproc`` processes (but ``free``) while the block
    runs; yields how many processes the filler holds."""
    filler = subprocess.Popen(
        [*as_user(uid, gid, nproc), SYSTEM_PYTHON, "-I", "-c", _FILL, str(free)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert filler.stdin is not None and filler.stdout is not None
    try:
        ready, _, _ = select.select([filler.stdout], [], [], FILL_S)
        assert ready, f"the filler did not fill the process table within {FILL_S:g} s"
        held = filler.stdout.readline()
        assert held.strip().isdigit(), held
        yield int(held)
    finally:
        filler.stdin.close()  # its children read the end of input, and exit
        try:
            filler.wait(FILL_S)
        except subprocess.TimeoutExpired:
            filler.kill()
            filler.wait()
        filler.stdout.close()
