"""The peer check's cost per connection: the kernel asked for one socket (``relay.sockdiag``)
against ``/proc/net/tcp`` read whole, by the daemon (``relay.peerowner.linux_owner``) and by
the agent (``relay/agent/remote.py``'s ``owner``, run here under the bench's Python), at the
machine's table as it is and with it filled.

The filled table is a model, not something a user does: one connection after another made and
closed by the accepting side, each leaving a TIME_WAIT socket for a minute. That is the table
of a busy login node, or of another local user filling it on purpose; it costs them nothing.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay import peerowner, sockdiag

AGENT = Path(__file__).resolve().parents[1] / "relay" / "agent" / "remote.py"
WAYS = ("daemon, kernel asked", "daemon, /proc read", "agent, kernel asked", "agent, /proc read")
LISTENERS = 10  # the filling connections spread over: a port pair is reused past ~28k


def _agent() -> Any:
    spec = importlib.util.spec_from_file_location("relay_bench_agent", AGENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows() -> int:
    """The rows of this machine's TCP table (``/proc/net/tcp`` and ``tcp6``)."""
    count = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as table:
            count += sum(1 for _ in table) - 1  # its header line
    return count


def fill(connections: int) -> None:
    """``connections`` loopback connections, each closed first by its accepting end (which
    keeps it in TIME_WAIT for a minute; the client's port is free at once)."""
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(LISTENERS)]
    try:
        for n in range(connections):
            listener = listeners[n % LISTENERS]
            with socket.create_connection(listener.getsockname()) as client:
                accepted, _ = listener.accept()
                accepted.close()
                client.recv(1)  # its FIN: the accepting end is the one that waits
    finally:
        for listener in listeners:
            listener.close()


def _unavailable(local_port: int, remote_port: int) -> None:
    raise sockdiag.Unavailable("measured without it")


def measure(repeats: int) -> tuple[int, dict[str, float]]:
    """(rows in the table, the median microseconds of one look-up each way) for a live
    connection of the user's, found every time (checked). The ways take turns, so each
    sees the same table (a filled one empties after a minute)."""
    agent: Any = _agent()
    kernel_asked, agent_diag = sockdiag.lookup, agent.diag
    table = rows()
    with socket.create_server(("127.0.0.1", 0)) as server:
        lport = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", lport)) as client:
            accepted, _ = server.accept()
            with accepted:
                cport = client.getsockname()[1]
                asks: dict[str, Callable[[], Any]] = {
                    WAYS[0]: lambda: peerowner.linux_owner(cport, lport),
                    WAYS[1]: lambda: peerowner.linux_owner(cport, lport),
                    WAYS[2]: lambda: int(agent.owner(cport, lport)),
                    WAYS[3]: lambda: int(agent.owner(cport, lport)),
                }
                times: dict[str, list[float]] = {way: [] for way in WAYS}
                try:
                    for _ in range(repeats):
                        for way, ask in asks.items():
                            by_proc = way.endswith("/proc read")
                            sockdiag.lookup = _unavailable if by_proc else kernel_asked
                            agent.diag = (lambda lp, rp: None) if by_proc else agent_diag
                            started = time.perf_counter()
                            found = ask()
                            times[way].append(time.perf_counter() - started)
                            assert found == os.getuid(), (way, found)
                finally:
                    sockdiag.lookup, agent.diag = kernel_asked, agent_diag
    return table, {way: statistics.median(t) * 1e6 for way, t in times.items()}
