"""The commands against a daemon older than themselves (an upgrade while it runs): a field it
does not know is not sent where it is not needed, and where it is, the refusal says why and
what to do. The stand-in daemon refuses unknown fields as relay 0.1.0's did (pydantic's
"Extra inputs are not permitted")."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import relay
from relay import protocol
from relay.errors import BadRequest
from relay.lite import framing

# the fields relay 0.1.0's daemon took, per request (what later relays added is refused)
KNOWN = {"stop": {"op", "v"}, "hostkey": {"op", "v", "host"}}


@pytest.fixture
def older(tmp_path: Path) -> Iterator[tuple[dict[str, str], list[dict[str, Any]]]]:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    path = directory / "relay.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(30)
    seen: list[dict[str, Any]] = []

    def serve() -> None:
        for _ in range(4):  # bounded: each test sends at most this many
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                message = framing.decode(conn.makefile("rb").readline())
                seen.append(message)
                extra = sorted(set(message) - KNOWN.get(message["op"], set(message)))
                if extra:
                    op, field = message["op"], extra[0]
                    said = f"bad request: {op}.{field}: Extra inputs are not permitted"
                    reply: dict[str, Any] = {
                        "event": "error",
                        "code": "bad_request",
                        "message": said,
                    }
                else:
                    reply = {"event": "stopping", "pid": os.getpid(), "left": []}
                conn.sendall(framing.encode(reply))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    env = dict(
        os.environ,
        RELAY_SOCKET=str(path),
        RELAY_CONFIG=str(tmp_path / "none.toml"),
        PYTHONPATH=str(Path(relay.__file__).parent.parent),
    )
    try:
        yield env, seen
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes its accept (a close alone does not)
        server.close()
        thread.join(timeout=30)


def relay_cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "relay", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_relay_stop_asks_an_older_daemon_in_its_own_words(
    older: tuple[dict[str, str], list[dict[str, Any]]],
) -> None:
    env, seen = older
    done = relay_cli(env, "stop")
    assert done.returncode == 0 and "stopping the daemon" in done.stderr, done
    assert [m for m in seen if m["op"] == "stop"] == [{"op": "stop", "v": 1}]


def test_a_field_an_older_daemon_refuses_is_said_with_what_to_do(
    older: tuple[dict[str, str], list[dict[str, Any]]], tmp_path: Path
) -> None:
    env, _ = older
    env["SSH_AUTH_SOCK"] = str(tmp_path / "agent.sock")  # sent with the request: a new field
    done = relay_cli(env, "trust", "somehost")
    assert done.returncode == 1, done
    (line,) = done.stderr.splitlines()
    assert line.endswith(
        "(the running relay daemon is older than this relay: `relay restart` starts this one)"
    ), line


def test_this_daemon_says_a_field_it_does_not_know_may_be_a_newer_relays() -> None:
    with pytest.raises(BadRequest) as caught:
        protocol.parse_request({"op": "stop", "v": 1, "later": True})
    assert str(caught.value) == (
        f"bad request: stop.later: not known to this daemon (relay {relay.__version__}); if "
        "the relay that asked is newer, `relay restart` starts it"
    )
