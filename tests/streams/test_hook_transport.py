"""The hook's two transports, as the simulator runs them (RelayKernelInit.wl does the same with
SocketConnect/SocketReadyQ and RunProcess): each reads one reply line, bounded in time, and
the bash one gets the request on stdin, never in argv."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from relay.lite import hook
from relay.sim.kernel import HookClient, HookUnreachable

LINE = hook.request_line("secret-token-0000000000", "listen-pair")


class Server:
    """127.0.0.1:port that answers each request line with ``reply`` (None: never answers) and
    keeps the connection open, as a daemon that does not close would."""

    def __init__(self, reply: str | None) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[str] = []
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            data = b""
            while b"\n" not in data and (chunk := conn.recv(4096)):
                data += chunk
            self.requests.append(data.decode())
            if self.reply is not None:
                conn.sendall(self.reply.encode())

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def answering() -> Iterator[Server]:
    server = Server(hook.format_reply(True, "next-token-00000000000", "5@127.0.0.1,6@127.0.0.1"))
    yield server
    server.close()


@pytest.fixture
def silent() -> Iterator[Server]:
    server = Server(None)
    yield server
    server.close()


def refused_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sockets", [True, False], ids=["socket", "bash"])
def test_a_reply_line_is_enough(answering: Server, sockets: bool) -> None:
    client = HookClient(answering.port, "secret-token-0000000000", 30, sockets=sockets)
    assert client.request("listen-pair") == "5@127.0.0.1,6@127.0.0.1"  # no wait for EOF
    assert client.token == "next-token-00000000000"
    assert answering.requests == [LINE]


def test_a_silent_channel_is_given_up_on_both_ways(silent: Server) -> None:
    client = HookClient(silent.port, "secret-token-0000000000", 1, sockets=True)
    with pytest.raises(HookUnreachable, match=r"did not answer on 127\.0\.0\.1:.* within 1 s"):
        client.request("listen-pair")
    assert silent.requests == [LINE, LINE]  # the socket, then bash's /dev/tcp


def test_a_refused_channel_fails_at_once() -> None:
    client = HookClient(refused_port(), "secret-token-0000000000", 30, sockets=True)
    with pytest.raises(HookUnreachable):
        client.request("callback", "5@127.0.0.1,6@127.0.0.1")


def test_bash_transport_exit_codes(silent: Server) -> None:
    import subprocess

    def run(port: int) -> int:
        argv = ["/bin/bash", "-c", hook.BASH_TRANSPORT, "relay-hook", str(port), "1"]
        assert not any("secret" in word for word in argv)
        return subprocess.run(argv, input=LINE.encode(), capture_output=True, timeout=30).returncode

    assert run(refused_port()) == 4  # cannot connect
    assert run(silent.port) == 5  # connected, no reply within the limit
