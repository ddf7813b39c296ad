"""Service-manager integration: socket activation and readiness notification.

- systemd: a socket unit passes the listening socket as fd 3 with ``LISTEN_PID``/``LISTEN_FDS``
  (sd_listen_fds(3)); a ``Type=notify`` service reports ``READY=1``, ``STATUS=...`` and
  ``STOPPING=1`` as datagrams to ``$NOTIFY_SOCKET`` (sd_notify(3); a leading ``@`` is the
  abstract namespace). Both are implemented here in a few lines rather than with a binding.
- launchd: a ``Sockets`` entry named ``Listeners`` is fetched with ``launch_activate_socket``
  from libSystem (macOS only, through ctypes).
- a shim that starts the daemon itself (``relay launch`` autostart) hands it a pipe and
  waits for one word on it (``ReadyPipe``): the same moment systemd is told READY=1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Mapping

__all__ = ["Notifier", "ReadyPipe", "activated_socket"]

SD_LISTEN_FDS_START = 3
LAUNCHD_SOCKET_NAME = "Listeners"


def activated_socket(env: Mapping[str, str] = os.environ) -> socket.socket | None:
    """The listening Unix socket a service manager handed over, if any."""
    if env.get("LISTEN_PID") == str(os.getpid()) and env.get("LISTEN_FDS"):
        count = int(env["LISTEN_FDS"])
        if count < 1:
            return None
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)  # not for our children (sd_listen_fds unset_environment)
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise OSError(
                f"activated socket is {sock.family!r}/{sock.type!r}, not a Unix stream socket"
            )
        return sock
    if sys.platform == "darwin" and env.get("XPC_SERVICE_NAME", "0") != "0":
        return _launchd_socket()
    return None


def _launchd_socket() -> socket.socket | None:  # pragma: no cover (macOS only)
    import ctypes  # noqa: PLC0415

    libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
    fds = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    err = libc.launch_activate_socket(
        LAUNCHD_SOCKET_NAME.encode(), ctypes.byref(fds), ctypes.byref(count)
    )
    if err != 0 or count.value < 1:
        return None
    fd = fds[0]
    libc.free(fds)
    return socket.socket(fileno=fd)


class Notifier:
    """sd_notify: best effort, a no-op without ``$NOTIFY_SOCKET``."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        os.environ.pop("NOTIFY_SOCKET", None)  # kernels and shells must not inherit it

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, **fields: str) -> None:
        if not self._address:
            return
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        # OSError: the manager went away, nothing to tell.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.sendto(message, self._address)


class ReadyPipe:
    """The autostarting shim's pipe (``relay serve --ready-fd N``): one line, ``ready``,
    ``busy`` (another daemon serves the socket) or ``error MESSAGE``, then closed. A no-op
    without a pipe."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def say(self, word: str) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):  # the shim gave up waiting: nothing to tell
            os.write(fd, f"{word}\n".encode())
        os.close(fd)
