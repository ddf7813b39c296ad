"""``python proxybridge.py HOST PORT MARK``: standard input and output to a TCP connection, as
ssh_config's ``ProxyCommand`` runs it (``nc HOST PORT``, which hosts may not have); it adds a
line to MARK first, so a test sees that the command ran."""

import os
import socket
import sys
import threading


def main() -> None:
    host, port, mark = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(mark, "a") as f:
        f.write("ran\n")
    sock = socket.create_connection((host, port))

    def up() -> None:
        while data := os.read(0, 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=up, daemon=True).start()
    while data := sock.recv(65536):
        os.write(1, data)


if __name__ == "__main__":
    main()
