"""Run inside the remote host's network namespace: send raw hook request lines, print replies.

    python3 hookprobe.py PORT LINE [LINE ...]     (each LINE without its newline)

Prints a JSON list of the replies, one per line sent, each on its own connection.
"""

import json
import socket
import sys


def main() -> None:
    port, lines = int(sys.argv[1]), sys.argv[2:]
    replies = []
    for line in lines:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        replies.append(b"".join(chunks).decode())
    print(json.dumps(replies))


if __name__ == "__main__":
    main()
