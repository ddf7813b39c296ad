"""Another user of the same host, racing relay's listeners: run as that user (setpriv).

    python3 stranger.py PORT [PORT ...]
    python3 stranger.py --closing JUNK PORT [PORT ...]
    python3 stranger.py --from ADDR PORT [PORT ...]

Connects to each port on 127.0.0.1 and reads until the connection ends or 10 s pass.
Prints JSON: for each port, whether it connected, how many bytes it was given, and whether
it saw the end (a refused tunnel is closed at once; a carried one stays open).

``--closing JUNK`` is the attack of issue 23: first JUNK connections to each port, held open,
so the owner look-ups queue behind them; then, per port, a connection that writes, half-closes
and closes at once. Its socket sits in FIN_WAIT2/TIME_WAIT, where /proc/net/tcp's uid column
reads 0: read naively, it passes for root's. Prints the same JSON (``bytes`` is what it wrote:
relay may refuse the connection before it writes, or half-closes, when its check comes first).

``--from ADDR`` connects from another local address (127.0.0.2, say: any of 127/8 reaches a
127.0.0.1 listener), the user's own uid or not: only the listener's loopback address counts.
"""

import json
import socket
import sys
import time

BOUND_S = 10.0


PAYLOAD = b"stranger's bytes"


def closing(junk: int, ports: list[str]) -> None:
    held = []
    for port in ports:
        for _ in range(junk):
            try:
                held.append(socket.create_connection(("127.0.0.1", int(port)), timeout=BOUND_S))
            except OSError:
                break
    out = {}
    for port in ports:
        try:
            sock = socket.create_connection(("127.0.0.1", int(port)), timeout=BOUND_S)
        except OSError:
            out[port] = {"connected": False, "bytes": 0, "eof": True}
            continue
        wrote = 0
        try:
            sock.sendall(PAYLOAD)
            wrote = len(PAYLOAD)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # refused before it could close: relay's check came first (its
            pass  # look-up takes microseconds), and its close reset the connection
        finally:
            sock.close()
        out[port] = {"connected": True, "bytes": wrote, "eof": True}
    for sock in held:
        sock.close()
    print(json.dumps(out))


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--closing"]:
        closing(int(args[1]), args[2:])
        return
    source = None
    if args[:1] == ["--from"]:
        source, args = (args[1], 0), args[2:]
    out = {}
    socks = {}
    for port in args:
        try:
            socks[port] = socket.create_connection(
                ("127.0.0.1", int(port)), timeout=BOUND_S, source_address=source
            )
        except OSError:
            out[port] = {"connected": False, "bytes": 0, "eof": True}
    deadline = time.monotonic() + BOUND_S
    for port, sock in socks.items():
        got, eof = 0, False
        try:
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    eof = True
                    break
                got += len(data)
        except OSError:  # a timeout (still carried) or a reset (refused)
            eof = eof or (got == 0 and time.monotonic() < deadline)
        sock.close()
        out[port] = {"connected": True, "bytes": got, "eof": eof}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
