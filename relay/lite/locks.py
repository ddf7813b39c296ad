"""The two locks beside the control socket: what starting and stopping a daemon wait on.
Standard library only (the shim takes them).

- ``relay.sock.lock`` (``daemon_lock_path``): an exclusive flock the daemon holds for its life
  (``relay.control.DaemonLock`` takes it and writes the daemon's pid in it). ``serve`` lets go
  of it last, once its socket is removed: free again means the daemon has shut down.
  ``relay stop`` waits on it, and so does a shim whose daemon found one on its way out.
- ``relay.start.lock`` (``StartLock``): held by whoever starts a daemon until that daemon
  listens or has failed: an autostarting shim, for the daemon it starts (shims launched
  together start one daemon), and ``relay serve`` started any other way. So a shim that
  finds no daemon listening, and then holds this lock, knows that none is about to listen.

A wait on either is bounded: ``wait_free`` and ``StartLock.acquire`` block in ``flock`` (no
polling) until the lock is free or a timer (SIGALRM) ends the wait. They run in a process's
main thread, as the shim and the CLI do.
"""

from __future__ import annotations

import fcntl
import os

TYPE_CHECKING = False  # typing: one import more per autostart
if TYPE_CHECKING:
    import signal as _signal  # the same functions, with types (no _signal stub)
    from types import FrameType
else:
    import _signal  # not ``signal``: its enums cost the shim 4 ms (relay.lite.shim)

__all__ = ["StartLock", "daemon_lock_path", "holder", "start_lock_path", "unanswered", "wait_free"]


def daemon_lock_path(socket_path: str) -> str:
    return socket_path + ".lock"


def start_lock_path(socket_path: str) -> str:
    return os.path.join(os.path.dirname(socket_path), "relay.start.lock")


def holder(path: str) -> int | None:
    """The pid a daemon wrote in its lock file, if one can be read."""
    try:
        with open(path, "rb") as fh:
            return int(fh.read(32).strip() or b"x")
    except (OSError, ValueError):
        return None


def unanswered(path: str, timeout_s: float) -> str:
    """What to say of the daemon on ``path`` that did not answer within ``timeout_s``: its
    pid (its lock file's), and whether it is stopped (Ctrl-Z, SIGSTOP: /proc says so), which
    a user who sees "no daemon" would never guess (a new-user pass's finding)."""
    pid = holder(daemon_lock_path(path))
    said = f"the relay daemon{f' (pid {pid})' if pid else ''} did not answer within {timeout_s:g} s"
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        state = b""
    if state in (b"T", b"t"):
        return (
            f"{said}: it is stopped (Ctrl-Z in its terminal, or SIGSTOP); `kill -CONT {pid}` "
            f"(or `fg` there) lets it go on"
        )
    return f"{said}: it may be busy, or stuck (its log says what it was doing)"


class _TimedOut(Exception):
    pass


def _flock(fd: int, operation: int, timeout_s: float) -> bool:
    """``flock(fd, operation)``, blocking at most ``timeout_s``: whether it was taken."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        if timeout_s <= 0:
            return False
    taken = False

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        if not taken:  # the alarm came with the lock: keep it
            raise _TimedOut

    previous = _signal.signal(_signal.SIGALRM, on_alarm)
    try:
        _signal.setitimer(_signal.ITIMER_REAL, timeout_s)
        try:
            fcntl.flock(fd, operation)  # EINTR: the handler raises; otherwise retried
            taken = True
        finally:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
    except _TimedOut:
        return False
    finally:
        _signal.signal(_signal.SIGALRM, previous)
    return True


def wait_free(path: str, timeout_s: float) -> bool:
    """Wait until nobody holds the lock on ``path`` (or there is no such file): False if
    ``timeout_s`` passed first."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        return _flock(fd, fcntl.LOCK_SH, timeout_s)  # released by the close below
    finally:
        os.close(fd)


class StartLock:
    """``relay.start.lock`` beside the socket (its directory made, 0700, if need be). The
    ``OSError`` of a directory or file that cannot be made (a full disk) is the caller's to
    put in words."""

    def __init__(self, socket_path: str) -> None:
        from relay.lite.client import check_private_dir  # the shim has it loaded already

        self.path = start_lock_path(socket_path)
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # made by us, or there already: the user's own, or nothing is locked in it (another
        # user's directory, made between a check and makedirs, would hold it for good);
        # UnsafeSocket says whose it is
        check_private_dir(directory or ".")
        self._fd: int | None = os.open(
            self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )

    def acquire(self, timeout_s: float | None = None) -> bool:
        """Take the lock: at once if ``timeout_s`` is 0, else within ``timeout_s``, else
        (None) when its holder lets go (a holder waits a bounded time for its daemon)."""
        assert self._fd is not None
        if timeout_s is not None:
            return _flock(self._fd, fcntl.LOCK_EX, timeout_s)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> StartLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
