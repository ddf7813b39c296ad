"""A second user on this machine: nobody, through setpriv (the test suite runs as root in
CI), with the system's Python (pyenv's, under /root, is not nobody's to run)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"

needs_second_uid = pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("setpriv") or not os.path.exists(SYSTEM_PYTHON),
    reason="acting as a second user needs root, setpriv and /usr/bin/python3",
)


def as_nobody(*argv: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


@contextlib.contextmanager
def stranger(script: str) -> Iterator[subprocess.Popen[str]]:
    """``script`` run by nobody, what it prints on a pipe; killed when the block ends."""
    proc = subprocess.Popen(
        as_nobody(SYSTEM_PYTHON, "-c", script), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield proc
    finally:
        proc.kill()
        proc.communicate()
