"""relay's agents (docs/agent.md) that this test run started: after a test, no kernel may be
left under one (relay stop, the window or the next daemon end them; a test that ends otherwise
would leave them for the window, 900 s).

An agent is this run's when the login that started it came to one of this run's servers: its
environment keeps the login's SSH_CONNECTION, whose last word is the server's port, and the
server's mark (relay.sim.sshd.MARK), which no other server has. The port alone does not
tell: every run's network-namespace server listens on 2222 in its own namespace, and another
run may listen on a port that one of this run's servers has let go. Another test run on the
machine (another clone's), or the developer's own relay with a host of localhost, has agents
of its own, which a test here must neither count nor end."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Collection
from pathlib import Path

from relay.sim.sshd import MARK, ThrowawaySSHD


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(entry.split(b"=", 1) for entry in reversed(entries) if b"=" in entry)


def server_port(pid: int) -> int | None:
    """The port of the SSH server whose login started process ``pid``: None if it is not an
    SSH login's (or is gone, or unreadable)."""
    words = _environ(pid).get(b"SSH_CONNECTION", b"").split()
    return int(words[3]) if len(words) == 4 and words[3].isdigit() else None


def server_mark(pid: int) -> str | None:
    """The mark of the test server whose login started process ``pid`` (relay.sim.sshd.MARK):
    None if it has none (or is gone, or unreadable)."""
    mark = _environ(pid).get(MARK.encode())
    return None if mark is None else mark.decode(errors="replace")


def running(ports: Collection[int] | None = None, marks: Collection[str] | None = None) -> set[int]:
    """Pids of relay's agents running here that logins to ``ports`` started (the tests'
    hosts are this machine), through a server of ``marks`` if given; by default, this run's
    servers' ports and marks."""
    if ports is None:
        ports = ThrowawaySSHD.ports_started
        marks = ThrowawaySSHD.marks_started if marks is None else marks
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if not any(arg.endswith(b"/relayagent.py") for arg in argv):
                continue
            if server_port(int(entry)) in ports and (
                marks is None or server_mark(int(entry)) in marks
            ):
                found.add(int(entry))
    return found


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


def _describe(pid: int) -> str:
    """``pid``'s state and command line, for a failure's message (gone: said so)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return f"{pid} (gone)"
    return f"{pid} {state} {b' '.join(argv).decode(errors='replace').strip()[:200]!r}"


def assert_no_kernels_left(before: set[int], timeout_s: float = 15.0) -> None:
    """No agent started since ``before`` still has kernels (waited for, bounded: an agent
    ending its kernels gives SIGKILL after 5 s). Every such agent is then ended, so the next
    test starts clean; an agent with no kernel goes by itself within a minute anyway."""
    deadline = time.monotonic() + timeout_s
    left: dict[int, list[int]] = {}
    while time.monotonic() < deadline:
        left = {pid: kids for pid in running() - before if (kids := _children(pid))}
        if not left:
            break
        time.sleep(0.2)
    # what each is, while it still runs: a kernel, or another child of a relayagent.py process
    said = {_describe(pid): [_describe(kid) for kid in kids] for pid, kids in left.items()}
    for pid in running() - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # it ends its kernels too
    assert not left, f"kernels left under relay's agent (pid: kernels): {said}"
