"""``python -m relay.sim.nsbridge PID PORT``: stdin/stdout to 127.0.0.1:PORT in PID's network
namespace, for ssh's (and relay's) ``proxy_command``. Linux, root only; standard library only.

The test suite's ThrowawaySSHD(netns=True) runs sshd in a network namespace of its own, so the
"remote host" has a loopback of its own; this bridge is how relay's SSH connection gets in.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import socket
import sys

CLONE_NEWNET = 0x40000000


def enter(pid: int) -> None:
    """Move the calling thread into PID's network namespace: sockets it makes from now on are
    that namespace's (the whole process's, if it has one thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns: {os.strerror(errno)}")
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    pid, port = (sys.argv[1:] if argv is None else argv)[:2]
    try:
        enter(int(pid))
    except OSError as exc:
        print(f"nsbridge: {exc.strerror}", file=sys.stderr)
        return 1
    sock = socket.create_connection(("127.0.0.1", int(port)))
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    sel.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj == 0:
                data = os.read(0, 65536)
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    sel.unregister(0)
                    continue
                sock.sendall(data)
            else:
                data = sock.recv(65536)
                if not data:
                    return 0
                os.write(1, data)


if __name__ == "__main__":
    sys.exit(main())
