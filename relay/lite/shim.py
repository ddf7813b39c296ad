"""``relay launch``: what the front end's Launch command and ``$RemoteCommand`` run.

Standard library only: this process starts once per kernel, and importing asyncssh alone
takes 280 ms on this project's machines. It sends one launch request over the daemon's Unix
socket, prints the rewritten link name as its single line of stdout, and then

- controller mode (default): stays until the kernel exits and exits with the kernel's status;
  SIGTERM, SIGHUP or SIGINT ends the remote kernel first (the daemon also ends it if this
  process vanishes, because the socket closes);
- compute mode (``--compute``): exits 0 once the kernel is started, as ``Run[]`` needs (the
  daemon waits for it to connect; see ``relay.kernels``).

Every failure is one line on stderr and a non-zero exit within a bounded time. If no daemon
is listening, one is started in the background (like ssh's ControlPersist) unless
``--no-autostart``.
"""

from __future__ import annotations

# ``_socket`` and ``_signal``, the C modules under ``socket`` and ``signal``: the wrappers
# import ``enum`` (and with it functools, collections, operator), about a quarter of a launch's
# imports, for nothing a launch uses. Each Run of LaunchKernels pays the shim's start in turn.
import _socket
import os
import select
import sys
import time

from relay.lite import framing, paths
from relay.lite.client import UnsafeSocket, connect, error_line

TYPE_CHECKING = False  # typing, dataclasses, pathlib, json: each an import per kernel launch
if TYPE_CHECKING:
    import signal as _signal  # the same functions and numbers, with types (no _signal stub)
    from typing import Any

    from relay.lite.locks import StartLock
else:
    import _signal

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DAEMON = 3
DEFAULT_TIMEOUT_S = 120.0
TERMINATE_WAIT_S = 20.0
MAX_TIMEOUT_S = 86400.0
AUTOSTART_WAIT_S = 15.0
SHUTDOWN_WAIT_S = 25.0  # a daemon on its way out: its shutdown grace (relay.daemon) is 20 s


class ShimError(Exception):
    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


def _parser() -> Any:
    import argparse  # only for --help and usage errors; see _parse

    p = argparse.ArgumentParser(
        prog="relay launch",
        description="Launch a remote kernel through the relay daemon (argument order as "
        "Tunnel's: HOST KERNEL LINKNAME).",
    )
    p.add_argument(
        "--compute",
        action="store_true",
        help="compute kernel: return once it is started (for $RemoteCommand)",
    )
    p.add_argument(
        "--no-autostart",
        action="store_true",
        help="fail instead of starting a daemon when none is listening",
    )

    def seconds(text: str) -> float:
        try:
            return _seconds(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a positive number of seconds, at most {MAX_TIMEOUT_S:g}: {text!r}"
            ) from None

    p.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"give up if the daemon has not answered (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument("host", help="a [hosts] name from relay.toml, [user@]host[:port] or ssh://...")
    p.add_argument("kernel", help="remote kernel executable ('' for the host's configured one)")
    p.add_argument("linkname", help="the front end's link name, e.g. `linkname` or `2`")
    return p


def _seconds(text: str) -> float:
    """A --timeout: a positive number of seconds, at most a day (select() takes no more)."""
    value = float(text)
    if not 0 < value <= MAX_TIMEOUT_S:  # also false for nan
        raise ValueError(text)
    return value


class _Args:
    def __init__(
        self,
        host: str,
        kernel: str,
        linkname: str,
        compute: bool = False,
        no_autostart: bool = False,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.host, self.kernel, self.linkname = host, kernel, linkname
        self.compute, self.no_autostart, self.timeout = compute, no_autostart, timeout


def _parse(argv: list[str]) -> _Args:
    """The launch command line, parsed without importing argparse (it runs once per kernel).
    Anything unusual (help, a mistake) goes to the argparse parser, which says what is wrong."""
    compute = no_autostart = False
    timeout = DEFAULT_TIMEOUT_S
    words: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--compute":
            compute = True
        elif word == "--no-autostart":
            no_autostart = True
        elif word == "--timeout" and i + 1 < len(argv):
            try:
                timeout = _seconds(argv[i + 1])
            except ValueError:
                break
            i += 1
        elif word == "--":
            words += argv[i + 1 :]
            i = len(argv)
            continue
        elif word.startswith("-") and word != "-":
            break
        else:
            words.append(word)
        i += 1
    else:
        if len(words) == 3:
            host, kernel, linkname = words
            return _Args(host, kernel, linkname, compute, no_autostart, timeout)
    ns = _parser().parse_args(argv)  # prints usage and exits on a real mistake
    return _Args(ns.host, ns.kernel, ns.linkname, ns.compute, ns.no_autostart, ns.timeout)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        _utf8(args)
        return _run(args)
    except ShimError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return exc.status


def _utf8(args: _Args) -> None:
    """relay's requests carry text: a word of the command line with bytes that are not UTF-8
    (a Latin-1 kernel path, given under LC_ALL=C) is refused here, naming it, not by the
    daemon as "unable to parse raw data as a unicode string"."""
    for what, word in (
        ("kernel path", args.kernel),
        ("host", args.host),
        ("link name", args.linkname),
    ):
        try:
            word.encode()
        except UnicodeEncodeError:
            shown = os.fsencode(word).decode("latin-1").encode("ascii", "backslashreplace").decode()
            raise ShimError(
                f"the {what} '{shown}' is not UTF-8, and relay passes it as UTF-8 text: "
                f"rename it, or give a link to it with a UTF-8 name",
                EXIT_USAGE,
            ) from None


def daemon_socket(path: str, autostart: bool) -> _socket.socket:
    """A connection to the user's own daemon (``relay.lite.client.connect`` checks the socket,
    its directory and the listening process before a byte is sent), started if needed."""
    try:
        return _connect_or_start(path, autostart)
    except UnsafeSocket as exc:  # never talk to it, never start a daemon beside it
        raise ShimError(str(exc), EXIT_DAEMON) from None


def _connect_or_start(path: str, autostart: bool) -> _socket.socket:
    try:
        return connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        if not autostart:
            raise ShimError(
                f"no relay daemon is listening on {path}: start it with "
                f"`relay serve` (or drop --no-autostart)",
                EXIT_DAEMON,
            ) from exc
    except OSError as exc:
        raise ShimError(
            f"cannot reach the relay daemon on {path}: {exc.strerror}", EXIT_DAEMON
        ) from exc
    # Whoever starts a daemon holds the start lock until it listens (relay.lite.locks): shims
    # launched together (LaunchKernels) take turns on it, the first starts the daemon and the
    # others connect to it; a daemon started by hand or by a service manager is waited for.
    with _start_lock(path):
        try:
            return connect(path)  # the daemon started while we waited on the lock
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        if _start_daemon(path) == "busy":
            _wait_for_leaving(path)
            if _start_daemon(path) == "busy":
                raise ShimError(
                    f"another relay daemon took {path} as this one started", EXIT_DAEMON
                )
        try:
            return connect(path)
        except OSError as exc:
            raise ShimError(f"the relay daemon did not come up on {path}", EXIT_DAEMON) from exc


def agent_field() -> dict[str, str]:
    """The client's agent socket, sent with every request that may open a connection: the
    daemon was perhaps started before ``ssh-add`` or in another login session."""
    sock = os.environ.get("SSH_AUTH_SOCK")
    return {"ssh_auth_sock": sock} if sock else {}


_ELSEWHERE = "(or choose another socket directory with RELAY_SOCKET)"


def _start_lock(path: str) -> StartLock:
    """The start lock (``relay.lite.locks``), taken when entered. Waiting on it is bounded by its
    holder: a shim waits at most AUTOSTART_WAIT_S for its daemon, a daemon listens or fails."""
    from relay.lite import locks  # only on the rare autostart path

    try:
        return locks.StartLock(path)
    except OSError as exc:  # a full disk, most often: one line, not a traceback
        import errno  # only when it failed

        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise ShimError(
            f"cannot create the start lock {locks.start_lock_path(path)}: {exc.strerror}"
            + (f"; free some space there {_ELSEWHERE}" if full else ""),
            EXIT_DAEMON,
        ) from None


def _wait_for_leaving(path: str) -> None:
    """The daemon we started found the socket's lock held, while we hold the start lock:
    its holder took the start lock before us, so it listened, and if it no longer does it
    is on its way out (relay stop, a signal). Wait on its lock until it is gone."""
    from relay.lite import locks  # only on the rare autostart path

    lock = locks.daemon_lock_path(path)
    if not locks.wait_free(lock, SHUTDOWN_WAIT_S):
        pid = locks.holder(lock)
        raise ShimError(
            f"the relay daemon on {path}{f' (pid {pid})' if pid else ''} is still shutting "
            f"down after {SHUTDOWN_WAIT_S:g} s; launch again once it has stopped",
            EXIT_DAEMON,
        )


# How the daemon is started: the relay this shim runs, whatever directory the front end started
# the shim in and whatever its environment says. ``-m relay`` would put that directory first on
# sys.path, so a ``relay.py`` (or ``asyncssh.py``...) anyone left in a shared /tmp or a download
# folder would run as the user, and a checkout of another relay there would break the start.
# Hence ``-I`` (isolated): ``-P``, no such directory on sys.path; ``-E``, no PYTHON* variable,
# among them PYTHONPATH, PYTHONHOME and PYTHONWARNINGS (whose categories get imported); ``-s``,
# no user site-packages, which PYTHONUSERBASE moves anywhere even under ``-E`` (so ``-P -E``
# is not enough). What ``-I`` takes from a relay installed with ``pip install --user`` or found
# on PYTHONPATH, the directory this relay came from gives back: it goes first on sys.path
# unless the interpreter has it already, so the daemon's relay is the shim's own, ahead of
# anything else, with the dependencies installed beside it.
_SERVE = (
    "import sys; r = sys.argv.pop(1); sys.path[:0] = [] if r in sys.path else [r]; "
    "from relay.cli import main; sys.exit(main())"
)


def isolated_command() -> list[str]:
    """``relay`` (add ``serve ...``) run by this interpreter, isolated as ``_SERVE`` says."""
    relay_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [sys.executable, "-I", "-c", _SERVE, relay_root]


EXIT_WAIT_S = 2.0  # a daemon that closed its ready pipe unsaid is on its way out
# what relay.log withholds (relay.log._SECRET_WORDS); that module imports structlog
_SECRET_WORDS = ("password", "passphrase", "passwd", "secret", "token", "private_key")
QUOTE_CHARS = 300


def _start_daemon(path: str) -> str:
    """Start ``relay serve`` in the background; return its first word (``ready``/``busy``).
    A daemon that exits before its word is reported as such, with its status and the last
    line it wrote (its stderr goes to its log): the cause, at once, rather than a wait of
    AUTOSTART_WAIT_S that never happened."""
    import subprocess  # only on the rare autostart path

    log_path = os.path.join(os.path.dirname(path), "relay.log")
    # O_NOFOLLOW: a symlink planted in place of the log must not redirect the daemon's output.
    # O_RDWR: what the daemon wrote before it died is read back through this same file.
    try:
        log_fd = os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:  # ELOOP: a symlink stands where the log goes
        raise ShimError(f"cannot open the daemon's log {log_path}: {exc.strerror}") from None
    read_fd, write_fd = os.pipe()
    try:
        log_start = os.fstat(log_fd).st_size  # the log's new part is this daemon's
        try:
            daemon = subprocess.Popen(
                [
                    *isolated_command(),
                    "serve",
                    "--ready-fd",
                    str(write_fd),
                    "--log-file",
                    log_path,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_fd,  # whatever escapes the logger (a crash) lands there too
                pass_fds=(write_fd,),
                start_new_session=True,
                env=dict(os.environ, RELAY_SOCKET=path),
            )
        except OSError as exc:
            raise ShimError(
                f"cannot start the relay daemon ({sys.executable}): {exc.strerror}", EXIT_DAEMON
            ) from None
        finally:
            os.close(write_fd)  # the daemon's copy alone is left: its exit is our EOF
        said = _first_line(read_fd, AUTOSTART_WAIT_S)
        if said is None:
            raise ShimError(
                f"the relay daemon did not start within {AUTOSTART_WAIT_S:g} s; see {log_path}",
                EXIT_DAEMON,
            )
        if said == "ready" or said == "busy":
            return said
        if said.startswith("error "):
            raise ShimError(f"the relay daemon could not start: {said[6:]}", EXIT_DAEMON)
        try:
            status: int | None = daemon.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            status = None
        last = _last_line(log_fd, log_start)
    finally:
        os.close(read_fd)
        os.close(log_fd)
    raise ShimError(
        f"the relay daemon {_how_it_ended(status)}"
        + (f": {last} (see {log_path})" if last else f" and said nothing; see {log_path}"),
        EXIT_DAEMON,
    )


def _first_line(fd: int, timeout_s: float) -> str | None:
    """The first line written to ``fd``, stripped; what came before EOF if no whole line did;
    None if ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            ready, _, _ = select.select([fd], [], [], left)
        except InterruptedError:
            continue
        if not ready:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\n")[0].decode(errors="replace").strip()


def _how_it_ended(status: int | None) -> str:
    if status is None:
        return "closed its ready pipe without a word"
    if status < 0:
        import signal  # only when a daemon died; enum comes with it

        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _last_line(fd: int, start: int) -> str:
    """The last non-blank line of the file ``fd`` from ``start`` on, as one line of at most
    QUOTE_CHARS printable characters, cut after any word that announces a secret: it ends
    up on the front end's stderr, which a person reads and a terminal interprets."""
    end = os.fstat(fd).st_size
    start = max(start, end - 8192)
    text = os.pread(fd, end - start, start).decode(errors="replace") if end > start else ""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line = "".join("?" if ch < " " or "\x7f" <= ch <= "\x9f" else ch for ch in lines[-1].strip())
    lower = line.lower()
    for word in _SECRET_WORDS:
        at = lower.find(word)
        if at >= 0:
            line, lower = line[: at + len(word)] + " [...]", lower[: at + len(word)]
    return line if len(line) <= QUOTE_CHARS else line[:QUOTE_CHARS] + "..."


class _Session:
    """The shim's end of one launch: lines in, signals in, bounded waits."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.signal: int | None = None
        self._wake_r, self._wake_w = _socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._old_wakeup = _signal.set_wakeup_fd(self._wake_w.fileno())
        self._old_handlers = {
            signum: _signal.signal(signum, self._on_signal)
            for signum in (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT)
        }

    def close(self) -> None:
        """The socket closed, and signals handled as before (``relay trust`` asks y/N after
        its request: Ctrl-C there must work)."""
        self.sock.close()
        for signum, handler in self._old_handlers.items():
            _signal.signal(signum, handler)
        _signal.set_wakeup_fd(self._old_wakeup)
        self._wake_r.close()
        self._wake_w.close()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.signal is None:
            self.signal = signum

    def send(self, message: dict[str, Any]) -> None:
        try:
            data = framing.encode(message)
        except framing.FramingError as exc:  # a link name or kernel path of 64 KiB...
            raise ShimError(f"the request is too large to send: {exc}", EXIT_USAGE) from None
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ShimError(f"lost the relay daemon: {exc.strerror}", EXIT_DAEMON) from exc

    def _see_log(self) -> str:
        """Where the daemon that went said why: relay.log beside its socket for one a launch
        started; the service manager's log for a user service (deploy/)."""
        try:
            path = self.sock.getpeername()
        except OSError:
            path = ""
        service = (
            "~/Library/Logs/relay.log"
            if sys.platform == "darwin"
            else "`journalctl --user -u relay` for the service"
        )
        if isinstance(path, str) and path:
            return f"see {os.path.join(os.path.dirname(path), 'relay.log')}, or {service}"
        return f"see its log, or {service}"

    def next_event(
        self, timeout_s: float | None, *, interruptible: bool = True
    ) -> dict[str, Any] | None:
        """The daemon's next message; None when a signal arrived first (``interruptible``:
        else the signal is let be, as when waiting for the end a signal asked for)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            if interruptible and self.signal is not None:
                return None
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0 and timeout_s is not None:
                from relay.lite.locks import unanswered  # only when it did not answer

                raise ShimError(unanswered(paths.socket_path(), timeout_s))
            try:
                ready, _, _ = select.select([self.sock, self._wake_r], [], [], left)
            except InterruptedError:
                continue
            if self._wake_r in ready:
                try:  # noqa: SIM105 (contextlib would be one more import per launch)
                    self._wake_r.recv(64)
                except BlockingIOError:
                    pass
            if self.sock in ready:
                try:
                    chunk = self.sock.recv(framing.MAX_MESSAGE_BYTES)
                except OSError as exc:  # reset: the daemon stopped before taking it up
                    raise ShimError(
                        f"lost the relay daemon: {exc.strerror} ({self._see_log()})",
                        EXIT_DAEMON,
                    ) from None
                if not chunk:
                    # it stopped or crashed with the kernel running: where relay's agent
                    # carries the kernel, the kernel does not end with the daemon's links
                    # (docs/agent.md): the next daemon that reaches the host ends it, or
                    # the window does
                    raise ShimError(
                        f"the relay daemon closed the connection unexpectedly: it stopped or "
                        f"crashed ({self._see_log()}); a kernel that outlives outages runs on "
                        f"until the next relay daemon reaches its host or its "
                        f"resume_window_s runs out",
                        EXIT_DAEMON,
                    )
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        try:
            return framing.decode(line + b"\n")
        except framing.FramingError as exc:
            raise ShimError(f"unexpected answer from the relay daemon: {exc}", EXIT_DAEMON) from exc


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies (a front end that kills the ``sh -c`` wrapper
    of its Launch command would otherwise leave this shim, and the kernel, behind)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # Linux only, and not on the import path of a launch

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, _signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), _signal.SIGTERM)


def request(message: dict[str, Any], timeout_s: float, *, autostart: bool = True) -> dict[str, Any]:
    """One request to the daemon (started first if none listens) and its one answer; for
    commands that want a running daemon, such as ``relay connect``."""
    session = _Session(daemon_socket(paths.socket_path(), autostart=autostart))
    try:
        session.send(message)
        event = session.next_event(timeout_s)
    finally:
        session.close()
    if event is None:
        assert session.signal is not None
        raise ShimError("interrupted", 128 + session.signal)
    return event


def _run(args: _Args) -> int:
    mode = "compute" if args.compute else "controller"
    if mode == "controller":
        # before the daemon is reached: a start of it can take seconds (the start lock, a
        # cold cache), and a parent that died meanwhile would not be noticed after it (the
        # shim then ran on under init with its kernel)
        _die_with_parent()
    path = paths.socket_path()
    sock = daemon_socket(path, autostart=not args.no_autostart)
    session = _Session(sock)
    session.send(
        {
            "op": "launch",
            "host": args.host,
            "kernel": args.kernel,
            "linkname": args.linkname,
            "mode": mode,
            **agent_field(),
        }
    )
    event = session.next_event(args.timeout)
    if event is None:  # a signal during launch: closing the socket cancels the launch
        sock.close()
        assert session.signal is not None
        return 128 + session.signal
    if event.get("event") == "error":
        raise ShimError(error_line(event, "launch failed"))
    if event.get("event") != "launched":
        raise ShimError(f"unexpected answer from the relay daemon: {str(event)[:200]}", EXIT_DAEMON)
    if event.get("warning"):  # it went ahead, but not as the person may think
        print(f"relay: {event['warning']}", file=sys.stderr, flush=True)
    try:
        print(event["linkname"], flush=True)
    except OSError as exc:  # the front end closed our output (EPIPE): one line, no traceback
        # and nothing more for Python to flush at exit, which would print its own complaint
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sock.close()  # a controller's kernel ends with its conversation
        raise ShimError(
            f"cannot write the link name to this launch command's output "
            f"({exc.strerror}); "
            + (
                "its kernel was ended"
                if mode == "controller"
                else "its kernel runs, and connects to the front end's link if it listens"
            )
        ) from None
    if mode == "compute":
        return 0
    event = session.next_event(None)
    if event is None:
        assert session.signal is not None
        session.send({"op": "terminate"})
        try:  # noqa: SIM105 (contextlib would be one more import per launch)
            session.next_event(TERMINATE_WAIT_S, interruptible=False)
        except ShimError:
            pass  # the kernel is being ended either way; the signal decides the status
        return 128 + session.signal
    if event.get("event") == "exited":
        if event.get("reason"):  # ended from outside, e.g. its Slurm job's time limit
            print(f"relay: {event['reason']}", file=sys.stderr)
        return int(event.get("status", EXIT_FAILED)) & 0xFF
    if event.get("event") == "error":  # e.g. the SSH connection died under the kernel
        raise ShimError(str(event.get("message", "the kernel was lost")))
    raise ShimError(f"unexpected answer from the relay daemon: {str(event)[:200]}", EXIT_DAEMON)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
