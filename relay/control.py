"""The control socket: where clients reach the daemon, and one conversation per client.

- ``prepare_socket_dir``, ``DaemonLock``, ``peer_uid``: the socket lives in a 0700 directory,
  is 0600 itself, one daemon holds an exclusive lock per socket, and every peer's uid is
  checked (SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS).
- ``ControlServer`` listens (or takes the socket a service manager handed over) and runs one
  ``Conversation`` per client; it owns their tasks and ends them at shutdown.
- ``Conversation``: one request line in, its answer out (``relay.protocol``); a controller
  launch stays until its kernel exits, and the client going away ends the kernel.

The operations themselves (launch, forward, connect, status) are the daemon's; this module
only talks. It knows the daemon as ``Operations``, what a conversation asks of it: the daemon
(``relay.daemon``) imports this module, never the other way round. ``relay check`` runs here,
on the daemon's state (``relay.check.run``), not inside the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from relay import __version__, hostspec, protocol
from relay.daemonstate import DaemonState
from relay.errors import (
    BadRequest,
    ConfigError,
    LoginAbandoned,
    RelayError,
    ShuttingDown,
    Upgraded,
    cannot_write,
    error_event,
)
from relay.lite import framing
from relay.lite.client import open_directory, peer_uid, too_long
from relay.lite.framing import FramingError

if TYPE_CHECKING:
    from relay.kernels import Kernel
    from relay.ssh.host import Prompter

__all__ = [
    "ControlServer",
    "DaemonLock",
    "DaemonRunning",
    "Operations",
    "peer_uid",
    "prepare_socket_dir",
]

REQUEST_TIMEOUT_S = 10.0


def _fingerprint() -> tuple[tuple[int, int], ...]:
    """relay check's files as they are on disk (inode, mtime): an upgrade replaces them."""
    here = Path(__file__).parent
    marks = []
    for name in ("check.py", "checkview.py", "__init__.py"):
        try:
            st = os.stat(here / name)
        except OSError:
            marks.append((0, 0))
        else:
            marks.append((st.st_ino, st.st_mtime_ns))
    return tuple(marks)


_STARTED_WITH = _fingerprint()  # as the daemon found them, importing this module at its start
LOGIN_ANSWER_TIMEOUT_S = 300.0  # a person reading a one-time code off a phone
RELEASE_WAIT_S = 20.0  # a controller's shim hears of the exit once its forwards are released
SAY_WAIT_S = 2.0  # a client told that the daemon shuts down has this long to take the line
log = structlog.get_logger("relay.control")


class DaemonRunning(RelayError):
    code = "daemon_running"


class Operations(DaemonState, Protocol):
    """What a conversation asks of the daemon (``relay.daemon.Daemon`` is the one)."""

    stopping: bool
    stop_reason: str | None

    def status(self) -> dict[str, Any]: ...
    def reload(self, *, force: bool = False) -> dict[str, Any]: ...
    def config_settle_s(self, now: float | None = None) -> float: ...
    def config_warning(self) -> str | None: ...
    def request_stop(self, why: str) -> None: ...
    def left_to_agents(self) -> list[str]: ...
    def shutdown_line(self, k: Kernel) -> str | None: ...
    def note_client(self, ssh_auth_sock: str | None) -> None: ...
    def refuse_if_stopping(self, what: str) -> None: ...
    async def launch(self, req: protocol.LaunchRequest) -> Kernel: ...
    async def forward(self, req: protocol.ForwardRequest) -> str: ...
    async def connect(self, req: protocol.ConnectRequest) -> dict[str, Any]: ...
    async def login(self, req: protocol.LoginRequest, ask: Prompter) -> dict[str, Any]: ...
    async def host_key(self, name: str) -> dict[str, Any]: ...


ELSEWHERE = "(or choose another socket directory with RELAY_SOCKET)"


def prepare_socket_dir(path: Path) -> None:
    problem = too_long(path)
    if problem is not None:
        raise ConfigError(problem)
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(f"the socket directory {directory}", exc, ELSEWHERE) from None
    st = directory.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(
            f"socket directory {directory} is a symlink: choose another path with RELAY_SOCKET"
        )
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"socket directory {directory} belongs to uid {st.st_uid}, not you: "
            f"choose another path with RELAY_SOCKET"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(open_directory(directory, "refusing the socket directory", st.st_mode))


class DaemonLock:
    """One daemon per socket: an exclusive flock held for the daemon's life, on a file that
    holds its pid. A lock that cannot be written (a full disk) is one line, for the shim that
    started this daemon to quote."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise cannot_write(f"the lock file {path}", exc, ELSEWHERE) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DaemonRunning(f"another relay daemon is already serving {path.parent}") from None
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            os.close(self._fd)
            raise cannot_write(f"the lock file {path}", exc, ELSEWHERE) from None

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    if writer.is_closing():  # the client reset its end: uvloop raises on a write then
        return
    with contextlib.suppress(ConnectionError):
        # The status answer grows with the kernels; only requests are size-bounded.
        try:
            data = framing.encode(message, bounded=message.get("event") != "status")
        except FramingError as exc:  # (a kernel's long output quoted): said, not lost
            log.warning("answer too large", answer=message.get("event"), error=str(exc))
            data = framing.encode(
                error_event(RelayError(f"relay's answer was too large to send ({exc})"))
            )
        writer.write(data)
        await writer.drain()


class Conversation:
    """One client of the control socket, from its request to its answer (or, for a
    controller launch, to its kernel's exit)."""

    def __init__(
        self, daemon: Operations, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._daemon = daemon
        self._reader = reader
        self._writer = writer
        self.following: Kernel | None = None  # a controller's kernel, until its shim is told
        self.request: protocol.AnyRequest | None = None

    async def run(self) -> None:
        """The conversation, to its end; cancelled by the shutdown, the client is told so."""
        structlog.contextvars.clear_contextvars()  # log context is per conversation
        try:
            await self._serve()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # a bug: the client is told in one line, not left waiting
            log.exception("control request failed unexpectedly")
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(SAY_WAIT_S):
                    await _send(self._writer, error_event(exc))
        except asyncio.CancelledError:
            if self._daemon.stopping:  # say so rather than vanish
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SAY_WAIT_S):
                        await _send(self._writer, error_event(self._shutdown_error()))
            raise
        finally:
            self._writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(SAY_WAIT_S):
                    await self._writer.wait_closed()

    def _shutdown_error(self) -> ShuttingDown:
        """What the client of a conversation the shutdown ended is told, in one line."""
        line = self._daemon.shutdown_line(self.following) if self.following is not None else None
        if line:
            return ShuttingDown(line)
        why = self._daemon.stop_reason
        shut = f"relay shut down ({why})" if why else "relay shut down"
        if isinstance(self.request, protocol.LaunchRequest):
            return ShuttingDown(f"{shut} during this launch; launch again")
        return ShuttingDown(f"{shut} before it could answer; run the command again")

    async def _serve(self) -> None:
        sock = self._writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else None
        if uid is not None and uid != os.getuid():
            log.warning("refused peer of another user", peer_uid=uid)
            return
        try:
            req = self.request = await self._request()
            if not isinstance(req, protocol.ReloadRequest):
                if settle := self._daemon.config_settle_s():
                    await asyncio.sleep(settle)  # saved a moment ago: perhaps not whole yet
                self._daemon.reload()  # relay.toml changed on disk: read it first (one stat)
        except BadRequest as exc:
            log.info("bad message on control socket", error=exc.message)
            await _send(self._writer, error_event(exc))
            return
        if isinstance(req, protocol.LaunchRequest):
            await self._launch(req)
            return
        if isinstance(req, protocol.LoginRequest):
            await self._login(req)
            return
        try:
            answer = await self._answer(req)
        except RelayError as exc:
            answer = error_event(exc)
        await _send(self._writer, answer)

    async def _request(self) -> protocol.AnyRequest:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                line = await self._reader.readline()
            return protocol.parse_request(framing.decode(line))
        except TimeoutError:
            raise BadRequest(f"no complete request within {REQUEST_TIMEOUT_S:g} s") from None
        except FramingError as exc:
            raise BadRequest(str(exc)) from None
        except ValueError:  # readline's limit overrun
            raise BadRequest(f"message exceeds {framing.MAX_MESSAGE_BYTES} bytes") from None

    async def _answer(self, req: protocol.AnyRequest) -> dict[str, Any]:
        daemon = self._daemon
        if isinstance(req, protocol.PingRequest):
            return {"event": "pong", "pid": os.getpid(), "version": __version__}
        if isinstance(req, protocol.StatusRequest):
            return daemon.status()
        if isinstance(req, protocol.ForwardRequest):
            name = await daemon.forward(req)
            return {"event": "forwarded", "host": req.host, "linkname": name}
        if isinstance(req, protocol.ConnectRequest):
            return await daemon.connect(req)
        if isinstance(req, protocol.StopRequest):
            left = daemon.left_to_agents()  # before the stop lets go of them
            daemon.request_stop("relay restart" if req.restart else "relay stop")
            return {"event": "stopping", "pid": os.getpid(), "left": left}
        if isinstance(req, protocol.ReloadRequest):
            return daemon.reload(force=True)
        if isinstance(req, protocol.HostKeyRequest):
            daemon.note_client(req.ssh_auth_sock)
            return await daemon.host_key(req.host)
        if isinstance(req, protocol.CheckRequest):
            daemon.refuse_if_stopping("checks")
            daemon.note_client(req.ssh_auth_sock)
            # loaded when asked for, not with the daemon: about 1 MB (relay.daemonstate); so
            # only if it is the release the daemon started with (an upgrade while it ran
            # mixed two: a review's check failed with an ImportError and no answer)
            if _fingerprint() != _STARTED_WITH:
                raise Upgraded(
                    f"relay was upgraded while this daemon (pid {os.getpid()}) ran: `relay "
                    f"restart` runs the new one, then `relay check` again"
                )
            from relay import check  # noqa: PLC0415

            results = await check.run(daemon, req.host, req.kernel, running=True)
            return {"event": "checked", "host": hostspec.shown(req.host), "results": results}
        if isinstance(req, protocol.AnswersRequest):
            raise BadRequest("answers outside a login")
        raise BadRequest("terminate outside a launch")

    async def _login(self, req: protocol.LoginRequest) -> None:
        """``relay login``: the server's prompts go to the client, a person answers them."""

        async def ask(name: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
            await _send(
                self._writer,
                {
                    "event": "prompt",
                    "name": name,
                    "instructions": instructions,
                    "prompts": [{"text": text, "echo": echo} for text, echo in prompts],
                },
            )
            try:
                async with asyncio.timeout(LOGIN_ANSWER_TIMEOUT_S):
                    line = await self._reader.readline()
            except TimeoutError:
                raise LoginAbandoned("no answer to the server's prompt in time") from None
            except ConnectionError:  # went away with the prompt unread: a reset, not an end
                raise LoginAbandoned("the login client went away") from None
            if not line:
                raise LoginAbandoned("the login client went away")
            try:
                answer = protocol.parse_request(framing.decode(line))
            except (FramingError, BadRequest):
                raise LoginAbandoned("the login client sent something else than answers") from None
            if not isinstance(answer, protocol.AnswersRequest) or len(answer.answers) != len(
                prompts
            ):
                raise LoginAbandoned("the login client sent something else than answers")
            return answer.answers

        try:
            answer = await self._daemon.login(req, ask)
        except RelayError as exc:
            answer = error_event(exc)
        await _send(self._writer, answer)

    async def _launch(self, req: protocol.LaunchRequest) -> None:
        started = time.monotonic()
        launching = asyncio.ensure_future(self._daemon.launch(req))
        client_said = asyncio.ensure_future(self._reader.read(framing.MAX_MESSAGE_BYTES))
        try:
            await asyncio.wait({launching, client_said}, return_when=asyncio.FIRST_COMPLETED)
            if not launching.done():  # the shim went away (killed, or Run[] gave up)
                launching.cancel("its client went away")
                await asyncio.gather(launching, return_exceptions=True)
                log.info("launch abandoned by its client", host=req.host)
                return
            try:
                k = launching.result()
            except Exception as exc:
                if not isinstance(exc, RelayError):  # a bug: say so once, serve on
                    log.exception("launch failed unexpectedly", host=req.host)
                await _send(self._writer, error_event(exc))
                return
            launch_ms = (time.monotonic() - started) * 1000
            await _send(
                self._writer,
                protocol.launched(
                    kernel_id=k.id,
                    host=k.host.key,
                    linkname=str(k.remote_link),
                    remote_pid=k.remote_pid,
                    launch_ms=launch_ms,
                    warning=self._daemon.config_warning(),
                ),
            )
            k.log.info(
                "launched",
                remote_pid=k.remote_pid,
                launch_ms=round(launch_ms, 1),
                answered_on=k.answered_on,
            )
            if req.mode == "controller":
                await self._follow_controller(k, client_said)
        finally:
            client_said.cancel()
            if not launching.done():  # the shutdown cancelled this conversation
                launching.cancel("relay shut down")
            await asyncio.gather(launching, client_said, return_exceptions=True)

    async def _follow_controller(self, k: Kernel, client_said: asyncio.Future[bytes]) -> None:
        """Until the kernel exits: a terminate request or a closed client ends the kernel."""
        self.following = k
        pending: set[asyncio.Future[Any]] = {k.exited, client_said}
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        waiting = k.host.kernels_waiting  # resuming: nothing can come back before the resume
        if not k.exited.done():
            k.log.info("terminating kernel", why=_why_ending(client_said))
            await k.terminate()
        if not (waiting and not k.exited.done()):
            try:
                async with asyncio.timeout(RELEASE_WAIT_S):
                    await k.released.wait()  # the shim learns of the exit once they are released
            except TimeoutError:  # a connection slow to close them: the shim hears all the same
                k.log.warning("forwards not released in time", waited_s=RELEASE_WAIT_S)
        status = k.exited.result() if k.exited.done() else None
        if status is None:  # no exit status came back: the connection went first
            lost: RelayError = k.connection_lost()
            line = self._daemon.shutdown_line(k) if self._daemon.stopping else None
            if line:  # ended by the shutdown, all the same (or left to the agent's window)
                lost = ShuttingDown(line)
            await _send(self._writer, error_event(lost))
            return
        await _send(
            self._writer, protocol.exited(kernel_id=k.id, status=status, reason=k.end_reason)
        )


def _why_ending(client_said: asyncio.Future[bytes]) -> str:
    """What a controller's shim did: asked, or went away. A shim killed with the launch's
    answer unread resets the socket: its read fails (ECONNRESET) rather than ending."""
    if client_said.exception() is None and client_said.result():
        return "shim asked"
    return "shim went away"


class ControlServer:
    """The listening control socket and the conversations on it."""

    def __init__(self, daemon: Operations) -> None:
        self._daemon = daemon
        self._server: asyncio.Server | None = None
        self._conversations: dict[asyncio.Task[None], Conversation] = {}
        self._closing = False

    async def start(self, socket_path: Path, inherited: socket.socket | None) -> None:
        limit = framing.MAX_MESSAGE_BYTES + 1
        if inherited is not None:
            self._server = await asyncio.start_unix_server(
                self._accept, sock=inherited, limit=limit
            )
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)  # stale: we hold the lock, so no live daemon owns it
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._accept, path=str(socket_path), limit=limit
            )
        finally:
            os.umask(old_umask)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conversation = self._conversations[task] = Conversation(self._daemon, reader, writer)
        try:
            await conversation.run()
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # Ended by aclose, its client told: the conversation ends as any other does. (A
            # task asyncio's streams started that ends cancelled is reported as an error,
            # with a traceback, by Python 3.11's asyncio.)
            task.uncancel()
        finally:
            self._conversations.pop(task, None)

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def aclose(self, *, force: bool = False) -> None:
        """Stop listening and end the conversations: those telling a controller's shim that
        its kernel ended finish doing so (the daemon has ended the kernels first) unless
        ``force``; the rest are cancelled, saying why if they can."""
        self.stop_listening()
        self._closing = True
        for task, conversation in list(self._conversations.items()):
            if force or conversation.following is None:
                task.cancel("daemon shutting down")
        await asyncio.gather(*self._conversations, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
