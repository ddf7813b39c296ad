"""The control socket's own files and answers at their edges (relay.control, relay.lite.locks):
a socket directory or a lock file planted as a symlink is refused without touching what it
points at; an answer too large to send is said as an error, not a silent close; a controller
whose forwards are slow to be released still hears its kernel's exit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from relay import control
from relay.control import Conversation, DaemonLock, prepare_socket_dir
from relay.errors import ConfigError, LocalFileError
from relay.lite import framing, locks


def test_a_socket_directory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(real)
    with pytest.raises(ConfigError, match="is a symlink"):
        prepare_socket_dir(tmp_path / "run" / "relay.sock")


def test_lock_files_planted_as_symlinks_touch_nothing(tmp_path: Path) -> None:
    """Another user who could plant a link where relay's lock files go (a socket directory
    in /tmp before relay made it): relay's open does not follow it, so the file it points at
    is neither created nor truncated."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    sock = run / "relay.sock"
    daemon_lock = Path(locks.daemon_lock_path(str(sock)))
    daemon_lock.symlink_to(victim)
    with pytest.raises(LocalFileError, match="the lock file"):
        DaemonLock(daemon_lock)
    start_lock = Path(locks.start_lock_path(str(sock)))
    start_lock.symlink_to(tmp_path / "created")
    with pytest.raises(OSError, match="symbolic links"):
        locks.StartLock(str(sock))
    assert victim.read_text() == "precious"
    assert not (tmp_path / "created").exists()


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass


async def test_an_answer_too_large_to_send_is_said_as_an_error() -> None:
    """A bounded answer over framing's limit (a kernel's long output quoted in it) raised in
    _send: the client saw the connection close without a word."""
    writer = _Writer()
    too_long = "x" * (framing.MAX_MESSAGE_BYTES + 1)
    await control._send(writer, {"event": "checked", "lines": [too_long]})  # type: ignore[arg-type]
    answer = framing.decode(bytes(writer.data))
    assert answer["event"] == "error" and "too large" in answer["message"]


async def test_a_controller_hears_its_exit_when_the_release_is_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel exited, and its forwards are not released within RELEASE_WAIT_S (a
    connection slow to close them): the shim hears the exit all the same. The TimeoutError
    ended the conversation, and the shim said the daemon closed the connection."""
    monkeypatch.setattr(control, "RELEASE_WAIT_S", 0.01)
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int | None] = loop.create_future()
    exited.set_result(7)
    kernel: Any = SimpleNamespace(
        id="k1",
        exited=exited,
        released=asyncio.Event(),  # never set
        end_reason=None,
        host=SimpleNamespace(kernels_waiting=False),  # connected: not resuming
        log=SimpleNamespace(warning=lambda *a, **k: None, info=lambda *a, **k: None),
    )
    writer = _Writer()
    conversation = Conversation(SimpleNamespace(stopping=False), None, writer)  # type: ignore[arg-type]
    client_said: asyncio.Future[bytes] = loop.create_future()
    await conversation._follow_controller(kernel, client_said)
    client_said.cancel()
    answer = framing.decode(bytes(writer.data))
    assert answer["event"] == "exited" and answer["status"] == 7, answer
