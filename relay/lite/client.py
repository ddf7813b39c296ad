"""A minimal control-socket client. Standard library only (the shim and ``relay status``).

Before sending anything, a client makes sure the socket is the user's own daemon's: with no
``XDG_RUNTIME_DIR`` the socket lives under the shared ``/tmp``, where another user could plant
a directory and a fake daemon that would receive hosts, kernels and link names and answer
with link names of its choosing. So the socket's directory must be the user's, mode 0700 and
not a symlink; the socket must be a socket and not a symlink; and the process listening on
it must run as the user (``peer_uid``: SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS).
"""

from __future__ import annotations

import _socket  # not ``socket``: its enums cost every launch 4 ms (relay.lite.shim)
import os
import stat
import struct
import sys
import time

from relay.lite import framing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any

__all__ = [
    "ClientError",
    "UnsafeSocket",
    "check_private_dir",
    "connect",
    "error_line",
    "peer_uid",
    "request",
]

# How a daemon from before relay.protocol said so itself says it does not know a field of the
# request: pydantic's words. A newer relay's field meets it after an upgrade while it runs.
_UNKNOWN_FIELD = "Extra inputs are not permitted"


def error_line(answer: dict[str, Any], default: str) -> str:
    """An error answer's message; where the daemon did not know a field of the request, with
    why and what to do: it is older than this relay (an upgrade while it ran)."""
    message = str(answer.get("message", default))
    if answer.get("code") == "bad_request" and _UNKNOWN_FIELD in message:
        message += (
            " (the running relay daemon is older than this relay: `relay restart` starts this one)"
        )
    return message


class ClientError(Exception):
    pass


class NotAnswering(ClientError):
    """A daemon is there (its socket took the request) but said nothing in time: say so
    with ``relay.lite.locks.unanswered``, which names it and whether it is stopped."""

    def __init__(self, path: str | PathLike[str], timeout_s: float) -> None:
        super().__init__(f"the relay daemon did not answer within {timeout_s:g} s")
        self.path = os.fspath(path)
        self.timeout_s = timeout_s


class UnsafeSocket(ClientError):
    """The socket, its directory or the process behind it is not the user's own."""


def peer_uid(sock: _socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket."""
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    if sys.platform == "darwin":  # LOCAL_PEERCRED (SOL_LOCAL=0, option 1): struct xucred
        creds = sock.getsockopt(0, 1, struct.calcsize("IIh16I"))
        return int(struct.unpack_from("IIh", creds)[1])
    return None


def check_private_dir(directory: str) -> None:
    """The user's own directory, mode 0700 (no group or other bits), not a symlink."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return  # nothing there yet: whoever creates it (the daemon) makes it private
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeSocket(f"refusing {directory}: it is a symlink or not a directory")
    if st.st_uid != os.getuid():
        raise UnsafeSocket(
            f"refusing {directory}: it belongs to uid {st.st_uid}, not you; remove it or set "
            f"RELAY_SOCKET to a path of your own"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise UnsafeSocket(open_directory(directory, "refusing", st.st_mode))


def open_directory(directory: str | PathLike[str], verb: str, mode: int) -> str:
    """Why a socket's directory open to other users is refused, and what to do: a directory
    of relay's own below it (made private), or chmod where nothing else lives there (never
    said of a sticky one: /tmp is everyone's)."""
    where = os.path.abspath(directory)
    own = os.path.join(where, "relay", "relay.sock")
    chmod = (
        "" if mode & stat.S_ISVTX else f", or run `chmod 700 {where}` if nothing else lives there"
    )
    return (
        f"{verb} {where}: it is open to other users; give the socket a directory of its "
        f"own (RELAY_SOCKET={own}){chmod}"
    )


def connect(path: str | PathLike[str]) -> _socket.socket:
    """Connect to the daemon's socket, having checked that it is the user's own daemon's.
    ``FileNotFoundError``/``ConnectionRefusedError`` mean no daemon listens."""
    path = str(path)
    check_private_dir(os.path.dirname(path) or ".")
    st = os.lstat(path)  # FileNotFoundError: no daemon yet
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafeSocket(f"refusing {path}: it is not a socket (a symlink or a planted file)")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        uid = peer_uid(sock)
    except OSError:
        sock.close()
        raise
    if uid is not None and uid != os.getuid():
        sock.close()
        raise UnsafeSocket(
            f"refusing {path}: the process listening there runs as uid {uid}, not you"
        )
    return sock


# the longest path a Unix socket may have (sun_path less its NUL): Linux's, and the BSDs'
SUN_PATH_MAX = 103 if sys.platform == "darwin" or "bsd" in sys.platform else 107


def too_long(path: str | PathLike[str]) -> str | None:
    """Why no daemon can listen on ``path``, if it is longer than a Unix socket's may be."""
    size = len(os.fsencode(path))
    if size <= SUN_PATH_MAX:
        return None
    return (
        f"the socket path {os.fspath(path)} is {size} bytes, and a Unix socket's may be at most "
        f"{SUN_PATH_MAX} here: choose a shorter one with RELAY_SOCKET or [daemon] socket"
    )


def request(
    path: str | PathLike[str], message: dict[str, Any], timeout_s: float = 10.0
) -> dict[str, Any]:
    """Send one request and return the one answer."""
    problem = too_long(path)
    if problem is not None:  # no daemon can listen there: not "the first launch starts one"
        raise ClientError(problem)
    try:
        sock = connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ClientError(
            f"no relay daemon is listening on {path}: the first launch starts one, or start "
            f"it with `relay connect HOST`, `relay serve`, or as a service (`relay service "
            f"install`)"
        ) from exc
    try:  # the C socket: no context manager
        deadline = time.monotonic() + timeout_s
        sock.sendall(framing.encode(message))
        buf = b""
        while not buf.endswith(b"\n"):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(framing.MAX_MESSAGE_BYTES)
            except TimeoutError as exc:
                raise NotAnswering(path, timeout_s) from exc
            if not chunk:
                raise ClientError("the relay daemon closed the connection without answering")
            buf += chunk
            if len(buf) > 64 * framing.MAX_MESSAGE_BYTES:
                raise ClientError("the relay daemon's answer is too large")
    finally:
        sock.close()
    line = buf.split(b"\n", 1)[0] + b"\n"
    try:
        return framing.decode_unbounded(line)
    except framing.FramingError as exc:
        raise ClientError(f"unexpected answer from the relay daemon: {exc}") from exc
