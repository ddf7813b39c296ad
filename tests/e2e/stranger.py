"""Another user of the same host, racing relay's listeners: run as that user (setpriv).

    python3 stranger.py PORT [PORT ...]

Connects to each port on 127.0.0.1 and reads until the connection ends or 10 s pass.
Prints JSON: for each port, whether it connected, how many bytes it was given, and whether
it saw the end (a refused tunnel is closed at once; a carried one stays open).
"""

import json
import socket
import sys
import time

BOUND_S = 10.0


def main() -> None:
    out = {}
    socks = {}
    for port in sys.argv[1:]:
        try:
            socks[port] = socket.create_connection(("127.0.0.1", int(port)), timeout=BOUND_S)
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
