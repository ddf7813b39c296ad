"""The daemon's limit on open files: raised at start, and named where it is reached.

Each kernel costs the daemon two sockets or more (its link's channels to the front end, and
each Dynamic link's), and a daemon carries kernels for every host. A soft limit of 256
(macOS's default) ran out at about 120 kernels and 1024 (a systemd user service's) at about
500, where the front end was said not to be listening and the user's own connections were
taken for another user's (a review's reproduction). The soft limit is raised towards the
hard one at start, as the host's agent raises its own (``relayagent.py``, ``more_files``);
where it is reached even so, the error says so, with the way out.
"""

from __future__ import annotations

import errno
import os

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

__all__ = ["WANTED", "exhausted", "out_of_files", "raise_soft_limit"]

# enough for thousands of kernels; within any hard limit a distribution sets by default
WANTED = 1 << 16
_EXHAUSTED = (errno.EMFILE, errno.ENFILE)


def raise_soft_limit(wanted: int = WANTED) -> tuple[int, int] | None:
    """The soft limit on open files raised to ``wanted``, or to the hard limit below it:
    (before, after), or None where it was not raised (already as high, or refused)."""
    if resource is None:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if soft == resource.RLIM_INFINITY or want <= soft:
            return None
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):  # macOS refuses some values above kern.maxfilesperproc
        return None
    return soft, want


def soft_limit() -> int | None:
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def exhausted(exc: BaseException | None = None) -> bool:
    """Whether ``exc`` says this process (EMFILE) or the machine (ENFILE) is out of open
    files; without one, whether this process can open one more file now."""
    if exc is not None:
        return isinstance(exc, OSError) and exc.errno in _EXHAUSTED
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as err:
        return err.errno in _EXHAUSTED
    return False


def out_of_files(what: str) -> str:
    """The one line for ``what`` that failed because relay's daemon is out of open files."""
    soft = soft_limit()
    limit = f" (ulimit -n: {soft})" if soft is not None else ""
    return (
        f"{what}: relay's daemon is out of open files{limit}; raise its limit "
        f"(LimitNOFILE= in its service, or ulimit -n before relay serve) or end some kernels"
    )
