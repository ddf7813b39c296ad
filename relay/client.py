"""A minimal control-socket client. Standard library only (the shim and ``relay status``)."""

from __future__ import annotations

import socket
import time

from relay import framing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any

__all__ = ["ClientError", "connect", "request"]


class ClientError(Exception):
    pass


def connect(path: str | PathLike[str]) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def request(
    path: str | PathLike[str], message: dict[str, Any], timeout_s: float = 10.0
) -> dict[str, Any]:
    """Send one request and return the one answer."""
    try:
        sock = connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ClientError(f"no relay daemon is listening on {path}") from exc
    with sock:
        deadline = time.monotonic() + timeout_s
        sock.sendall(framing.encode(message))
        buf = b""
        while not buf.endswith(b"\n"):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(framing.MAX_MESSAGE_BYTES)
            except TimeoutError as exc:
                raise ClientError(
                    f"the relay daemon did not answer within {timeout_s:g} s"
                ) from exc
            if not chunk:
                raise ClientError("the relay daemon closed the connection without answering")
            buf += chunk
            if len(buf) > 64 * framing.MAX_MESSAGE_BYTES:
                raise ClientError("the relay daemon's answer is too large")
    line = buf.split(b"\n", 1)[0] + b"\n"
    try:
        return framing.decode_unbounded(line)
    except framing.FramingError as exc:
        raise ClientError(f"unexpected answer from the relay daemon: {exc}") from exc
