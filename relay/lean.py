"""``relay serve`` on an interpreter that leaves out what a daemon never reads.

Most of the daemon's own memory is code: loading the modules of Python, asyncssh,
cryptography, pydantic and relay allocates about 15 MB that stays (tracemalloc), 2.3 MB of it
their docstrings and 1.5 MB their line tables. ``-OO`` leaves docstrings (and ``assert``
statements) out of the code it loads, and ``-X no_debug_ranges`` the column half of the line
tables (tracebacks lose their ``^^^`` marks, nothing else): together about 3 MB less RSS for
the daemon, measured by ``make bench`` (BENCHMARKS.md, the footprint rows).

The flags must be given to the interpreter when it starts, so ``relay serve`` started from a
command line (a shell, the service, a shim's autostart) starts itself again with them, once,
at the top of ``serve``: the same process (its pid, its file descriptors: the ready pipe,
systemd's sockets), the same command line with the two flags put after the interpreter's
name, so whatever flags it was started with (``-I`` for an autostart) it keeps.

It pays only where the optimized bytecode (``*.opt-2.pyc``) is cached or can be: without it
each start would compile every module from source, which takes more memory than the flags
save and a second or two of CPU. So the daemon goes lean where the modules it loads most of
(the standard library's, asyncssh's, pydantic's, relay's) have it, or where Python may write
it beside them (then the first lean start writes it); elsewhere it runs as it was started and
says why in its log. ``make install`` compiles it for the virtualenv.

Linux only: on macOS launchd hands its sockets to the process that checks in, and a process
that execs is not that process for it (the audit token changes), so a launchd-started daemon
would lose its socket.

relay's code does not depend on ``assert``: its checks that guard anything raise.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence

__all__ = ["FLAGS", "MARKERS", "argv", "reexec", "why_not"]

FLAGS = ("-OO", "-X", "no_debug_ranges")
# Modules whose optimized bytecode stands for that of the package (or standard library) they
# are in: the largest the daemon imports. A package is its top-level name and a file in it.
MARKERS = (
    ("typing", None),
    ("asyncssh", "connection.py"),
    ("pydantic", "main.py"),
    ("relay", "daemon.py"),
)


def argv(orig_argv: Sequence[str], executable: str) -> list[str]:
    """The command line again, with ``FLAGS`` right after the interpreter."""
    return [executable, *FLAGS, *orig_argv[1:]]


def _source(top: str, inner: str | None) -> str | None:
    spec = importlib.util.find_spec(top)  # a top-level name: found, not imported
    if spec is None or spec.origin is None:
        return None
    if inner is None:
        return spec.origin
    return os.path.join(os.path.dirname(spec.origin), inner)


def _cached_or_cacheable(source: str) -> bool:
    cache = importlib.util.cache_from_source(source, optimization=2)
    if os.path.exists(cache):
        return True
    if sys.dont_write_bytecode:
        return False
    folder = os.path.dirname(cache)  # made where missing: __pycache__, or a prefix's tree
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return os.access(folder, os.W_OK)


def why_not() -> str | None:
    """Why this daemon does not start lean (None: it does, or already is)."""
    if sys.flags.optimize >= 2:
        return None
    if not sys.platform.startswith("linux"):
        return "not on Linux (launchd's sockets would not survive the exec)"
    for top, inner in MARKERS:
        source = _source(top, inner)
        if source is None:
            return f"{top} has no source file to find its bytecode by"
        if not _cached_or_cacheable(source):
            cannot = (
                "this Python writes no bytecode (PYTHONDONTWRITEBYTECODE or -B)"
                if sys.dont_write_bytecode
                else "its directory is not writable"
            )
            return (
                f"no optimized bytecode beside {source}, and {cannot}; "
                f"`{sys.executable} -OO -m compileall {os.path.dirname(source)}` makes it"
            )
    return None


def reexec() -> str | None:
    """Start this command again lean, or say why not (see the module). Returns only where it
    does not: None when the process is lean already."""
    reason = why_not()
    if reason is None and sys.flags.optimize < 2:
        sys.stdout.flush()
        sys.stderr.flush()
        # the interpreter that runs relay, with relay's own command line: no shell, no input
        os.execv(sys.executable, argv(sys.orig_argv, sys.executable))  # noqa: S606
    return reason
