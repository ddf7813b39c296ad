"""The hook's control channel as sshd's listener carries it (relay.ssh.hookserver), without
a connection: a request whose kernel stopped waiting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from relay.ssh import hookserver


class _Closed:
    """A channel the kernel's hook closed before the answer (its own timeout): asyncssh
    raises BrokenPipeError on a write (channel.py, ``write``)."""

    closed = False

    def write(self, data: bytes) -> None:
        raise BrokenPipeError("Channel not open for sending")

    def write_eof(self) -> None:
        raise BrokenPipeError("Channel not open for sending")

    def close(self) -> None:
        self.closed = True


class _Server:
    def __init__(self) -> None:
        self.replies: list[Callable[[str], None]] = []

    def answer_later(self, line: str, reply: Callable[[str], None]) -> None:
        self.replies.append(reply)


async def test_an_answer_to_a_hook_that_gave_up_is_dropped_not_logged_as_a_bug() -> None:
    """The reply raised, and the task set logged an error with a traceback, which relay
    keeps for its own bugs (found by a review)."""
    server: Any = _Server()
    chan: Any = _Closed()
    session = hookserver._HookSession(server)
    session.connection_made(chan)
    session.data_received(b"request\n", None)
    (reply,) = server.replies
    with structlog.testing.capture_logs() as logs:
        reply("0 ok\n")  # raises nothing
    assert chan.closed and logs == []
    session.connection_lost(None)
