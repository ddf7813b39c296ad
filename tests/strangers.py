"""A second user on this machine: nobody, through setpriv (the test suite runs as root in
CI), with the system's Python (pyenv's, under /root, is not nobody's to run)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
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
def stranger(script: str, stdin: bool = False) -> Iterator[subprocess.Popen[str]]:
    """``script`` run by nobody, what it prints on a pipe (and with ``stdin``, what it
    reads on one); killed when the block ends."""
    proc = subprocess.Popen(
        as_nobody(SYSTEM_PYTHON, "-c", script),
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc
    finally:
        proc.kill()
        proc.communicate()


# a directory of the stranger's at a name of ours (argv[1]), made first in a shared /tmp
SQUAT_DIR = "import os,sys\nos.mkdir(sys.argv[1], 0o700)\n"
# Scripts for ``stranger``: a listener that accepts only once data comes, so each connection
# to it stays a request socket (SYN_RECV, which sock_diag reads as uid 0); first its port
# and that of its own connection to it
DEFERRED = (
    "import socket,sys,time\n"
    "s=socket.socket();s.setsockopt(socket.IPPROTO_TCP,socket.TCP_DEFER_ACCEPT,60)\n"
    "s.bind(('127.0.0.1',0));s.listen(4)\n"
    "c=socket.create_connection(s.getsockname())\n"
    "print(s.getsockname()[1],c.getsockname()[1]);sys.stdout.flush();time.sleep(120)\n"
)
# and one that closes when told (a line on its stdin), then says "closed"
CLOSES_WHEN_TOLD = (
    "import socket,sys,time\n"
    "s=socket.socket();s.setsockopt(socket.IPPROTO_TCP,socket.TCP_DEFER_ACCEPT,60)\n"
    "s.bind(('127.0.0.1',0));s.listen(4)\n"
    "print(s.getsockname()[1]);sys.stdout.flush()\n"
    "sys.stdin.readline();s.close();print('closed');sys.stdout.flush();time.sleep(120)\n"
)


@contextlib.contextmanager
def half_closed(port: int) -> Iterator[int]:
    """A connection of nobody's to our listener on ``port``, which wrote a byte and shut
    its side at once, and holds its socket (FIN_WAIT2: its uid and a live inode in
    /proc/net/tcp, not an orphan's 0): its port."""
    script = (
        "import socket,sys,time\n"
        f"c=socket.create_connection(('127.0.0.1',{port}))\n"
        "c.sendall(b'x');c.shutdown(socket.SHUT_WR)\n"
        "print(c.getsockname()[1]);sys.stdout.flush();time.sleep(60)\n"
    )
    with stranger(script) as proc:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())


@contextlib.contextmanager
def shut_at_once() -> Iterator[tuple[int, int]]:
    """``half_closed`` to a listener of ours, accepted and its byte read: the stranger's
    port and the listener's, while the stranger holds its socket."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with half_closed(port) as client_port:
            accepted, _ = server.accept()
            with accepted:
                assert accepted.recv(2) == b"x"
                yield client_port, port
