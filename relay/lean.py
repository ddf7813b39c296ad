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
systemd's sockets), the same command line with the flags put after the interpreter's name,
so whatever flags it was started with (``-I`` for an autostart) it keeps.

The optimized bytecode those flags load goes in a cache of relay's own,
``$XDG_CACHE_HOME/relay/bytecode`` (``-X pycache_prefix``): a system Python's standard
library has none and its directories are root's, and a module without it would be compiled
at every start, which takes more memory than the flags save and a second of CPU. Where the
cache lacks it (the first start, a new Python or relay), a child process of the same
interpreter and flags imports what the daemon imports and writes it there, and the daemon
starts once that is done: it never compiles more than a module it imports late. The cache
is the user's alone (a directory of their own, written by nobody else), as it is code the
daemon runs.

Where that cannot be (the cache is not the user's alone, the child failed, or on macOS,
where launchd hands its sockets to the process that checks in and an exec is not that
process for it), the daemon runs as it was started and its log says why; an interpreter
started with ``-O`` is left as it was asked to be.

relay's code does not depend on ``assert``: its checks that guard anything raise.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from relay import safepath

__all__ = ["BASE_FLAGS", "MARKERS", "argv", "cache_dir", "flags", "reexec", "runs_lean", "why_not"]

BASE_FLAGS = ("-OO", "-X", "no_debug_ranges")
# Modules whose optimized bytecode in the cache stands for that of what the daemon imports: the
# largest of each part. A package is its top-level name and a file in it.
MARKERS = (
    ("typing", None),
    ("asyncssh", "connection.py"),
    ("pydantic", "main.py"),
    ("relay", "daemon.py"),
)
# what the child imports to fill the cache: what ``relay serve`` imports
IMPORTS = "import uvloop, relay.cli.serve, relay.daemon"
COMPILE_TIMEOUT_S = 10.0  # well within a shim's wait for an autostarted daemon (15 s)


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "relay" / "bytecode"


def flags(cache: Path) -> list[str]:
    return [*BASE_FLAGS, "-X", f"pycache_prefix={cache}"]


def argv(orig_argv: Sequence[str], executable: str, cache: Path) -> list[str]:
    """The command line again, with the flags right after the interpreter."""
    return [executable, *flags(cache), *orig_argv[1:]]


def runs_lean(argv: Sequence[str]) -> bool:
    """Whether a command line (a process's, from /proc) is a lean one."""
    return list(argv[1 : 1 + len(BASE_FLAGS)]) == list(BASE_FLAGS)


def _private(cache: Path) -> str | None:
    """Make the cache (0700) and say what is wrong with it, if anything: it and the directory
    it is in must be real directories of the user's, which nobody else may write to."""
    try:
        cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        cache.mkdir(mode=0o700, exist_ok=True)
        for path in (cache.parent, cache):
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                return f"{path} is not a directory"
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return f"{path} is not yours alone (another user could put code there)"
        why = safepath.unsafe(cache)  # and the directories above it: each could be swapped
        if why is not None:
            return f"{why} (another user could put code in {cache})"
    except OSError as exc:
        return f"cannot make {cache}: {exc.strerror or exc}"
    return None


def _cached(cache: Path) -> bool:
    """Whether the markers' optimized bytecode is in the cache (where the lean interpreter
    reads it)."""
    before = sys.pycache_prefix
    sys.pycache_prefix = str(cache)  # how cache_from_source places it
    try:
        for top, inner in MARKERS:
            spec = importlib.util.find_spec(top)  # a top-level name: found, not imported
            if spec is None or spec.origin is None:
                return False
            source = spec.origin
            if inner is not None:
                source = os.path.join(os.path.dirname(source), inner)
            if not _fresh(source, importlib.util.cache_from_source(source, optimization=2)):
                return False
    finally:
        sys.pycache_prefix = before
    return True


def _fresh(source: str, cached: str) -> bool:
    """Whether ``cached`` is bytecode of ``source`` as it is now, as the importer judges it
    (its header: this Python's magic number, the source's mtime and size): after an upgrade
    of relay or Python the cache is filled again, not the daemon left to compile."""
    try:
        with open(cached, "rb") as f:
            head = f.read(16)
        st = os.stat(source)
    except OSError:
        return False
    if len(head) < 16 or head[:4] != importlib.util.MAGIC_NUMBER:
        return False
    if int.from_bytes(head[4:8], "little"):  # checked by the source's hash: fresh as found
        return True
    mtime, size = int.from_bytes(head[8:12], "little"), int.from_bytes(head[12:16], "little")
    return mtime == int(st.st_mtime) & 0xFFFFFFFF and size == st.st_size & 0xFFFFFFFF


def _fill(cache: Path) -> str | None:
    """Have a child of the lean interpreter import what the daemon does, writing its
    bytecode to the cache; what went wrong, if anything. The child's import path is this
    process's (no current directory is added: ``-P``); it writes bytecode whatever
    PYTHONDONTWRITEBYTECODE says, to relay's own cache alone."""
    code = f"import sys; sys.path[:] = {sys.path!r}; {IMPORTS}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    try:
        done = subprocess.run(
            [sys.executable, *flags(cache), "-P", "-c", code],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"compiling its bytecode failed: {exc}"
    if done.returncode != 0:
        said = (done.stderr.decode(errors="replace").strip().splitlines() or ["nothing"])[-1]
        return f"compiling its bytecode failed (exit {done.returncode}: {said[:200]})"
    return None if _cached(cache) else f"compiling its bytecode left none in {cache}"


def why_not(cache: Path) -> str | None:
    """Why this daemon does not start lean (None: it may), having filled the cache where it
    lacked the bytecode."""
    if sys.flags.optimize:
        return f"started with -O (optimize level {sys.flags.optimize}): left as it is"
    if not sys.platform.startswith("linux"):
        return "not on Linux (launchd's sockets would not survive the exec)"
    wrong = _private(cache)
    if wrong is not None:
        return wrong
    if not _cached(cache):
        return _fill(cache)
    return None


def reexec() -> str | None:
    """Start this command again lean, or say why not (see the module). Returns only where it
    does not: None when the process is lean already."""
    if sys.flags.optimize >= 2 and sys.pycache_prefix is not None:
        return None  # lean (or started so by hand)
    cache = cache_dir()
    reason = why_not(cache)
    if reason is not None:
        return reason
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None where that descriptor was closed at start
            stream.flush()
    try:
        # the interpreter that runs relay, with relay's own command line: no shell, no input
        os.execv(sys.executable, argv(sys.orig_argv, sys.executable, cache))  # noqa: S606
    except OSError as exc:
        return f"cannot start {sys.executable} again: {exc.strerror or exc}"
