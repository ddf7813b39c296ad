"""The daemon: the control socket, request dispatch, kernel bookkeeping, scripted shutdown.

``serve(config, ...)`` runs until ``shutdown_trigger`` completes (SIGTERM/SIGINT by default):
stop accepting, refuse new launches, terminate the kernels it owns (bounded), close the
supervisors and connections, remove the socket.

The socket lives in a 0700 directory, is 0600 itself, and every peer's uid is checked
(SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS): another local user can never launch through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import structlog

from relay import framing, protocol
from relay.errors import BadRequest, ConfigError, RelayError, ShuttingDown
from relay.framing import FramingError
from relay.kernels import Kernel, launch, new_kernel_id
from relay.linkname import LinkName, LinkNameError
from relay.settings import RelayConfig
from relay.ssh.host import HostSession
from relay.tasks import TaskSet

__all__ = ["Daemon", "DaemonRunning", "serve"]

REQUEST_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 10.0
log = structlog.get_logger("relay.daemon")


class DaemonRunning(RelayError):
    code = "daemon_running"


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket."""
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    if sys.platform == "darwin":  # LOCAL_PEERCRED (SOL_LOCAL=0, option 1): struct xucred
        creds = sock.getsockopt(0, 1, struct.calcsize("IIh16I"))
        return int(struct.unpack_from("IIh", creds)[1])
    return None


def prepare_socket_dir(path: Path) -> None:
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"socket directory {directory} belongs to uid {st.st_uid}, not you: "
            f"choose another path with RELAY_SOCKET"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            f"socket directory {directory} is open to other users: run `chmod 700 {directory}`"
        )


class Daemon:
    def __init__(self, config: RelayConfig, config_source: str = "relay.toml") -> None:
        self.config = config
        self.config_source = config_source
        self.hosts: dict[str, HostSession] = {}
        self.kernels: dict[str, Kernel] = {}
        self._tasks = TaskSet(log)
        self._clients: set[asyncio.Task[Any]] = set()
        self.stopping = False

    # -- hosts -----------------------------------------------------------------------------
    def host(self, name: str) -> HostSession:
        key, cfg = self.config.resolve(name, self.config_source)
        session = self.hosts.get(key)
        if session is None:
            session = self.hosts[key] = HostSession(
                key,
                cfg,
                jump=self._jump,
                configured=sorted(self.config.hosts),
                config_source=self.config_source,
            )
        return session

    async def _jump(self, name: str) -> Any:
        return await self.host(name).connection()

    # -- kernels ---------------------------------------------------------------------------
    async def launch(self, req: protocol.LaunchRequest) -> Kernel:
        if self.stopping:
            raise ShuttingDown(
                "relay is shutting down and takes no new launches; "
                "start it again (relay serve) and retry"
            )
        try:
            link = LinkName.parse(req.linkname)
        except LinkNameError as exc:
            raise BadRequest(str(exc)) from None
        host = self.host(req.host)
        kernel = req.kernel or host.config.kernel
        if not kernel:
            raise BadRequest(
                f"no kernel given: pass the kernel path as KERNEL or set 'kernel' "
                f"in [hosts.{host.key}] of {self.config_source}"
            )
        args = host.config.compute_args if req.mode == "compute" else host.config.controller_args
        k = await launch(
            host,
            kernel=kernel,
            link=link,
            mode=req.mode,
            extra_args=list(args),
            kernel_id=new_kernel_id(),
        )
        self.kernels[k.id] = k
        self._tasks.spawn(self._reap(k), name=f"reap:{k.id}")
        return k

    async def _reap(self, k: Kernel) -> None:
        try:
            status = await asyncio.shield(k.exited)
        finally:
            self.kernels.pop(k.id, None)
            await k.forward.aclose()
        k.log.info("kernel exited", status=status, output=k.output or None)

    # -- the control socket ----------------------------------------------------------------
    async def handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._serve_client(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else None
        if uid is not None and uid != os.getuid():
            log.warning("refused peer of another user", peer_uid=uid)
            return
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                line = await reader.readline()
            req = protocol.parse_request(framing.decode(line))
        except TimeoutError:
            await _send(
                writer,
                protocol.error(
                    "bad_request", f"no complete request within {REQUEST_TIMEOUT_S:g} s"
                ),
            )
            return
        except ValueError as exc:  # FramingError, or readline's limit overrun
            message = (
                str(exc)
                if isinstance(exc, FramingError)
                else f"message exceeds {framing.MAX_MESSAGE_BYTES} bytes"
            )
            log.info("bad message on control socket", error=message)
            await _send(writer, protocol.error("bad_request", message))
            return
        except BadRequest as exc:
            await _send(writer, protocol.error(exc.code, exc.message))
            return
        if isinstance(req, protocol.PingRequest):
            await _send(writer, {"event": "pong", "pid": os.getpid(), "version": "0.1.0"})
        elif isinstance(req, protocol.LaunchRequest):
            await self._serve_launch(req, reader, writer)
        else:
            await _send(writer, protocol.error("bad_request", "terminate outside a launch"))

    async def _serve_launch(
        self,
        req: protocol.LaunchRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        started = time.monotonic()
        launching = asyncio.ensure_future(self.launch(req))
        client_gone = asyncio.ensure_future(reader.read(framing.MAX_MESSAGE_BYTES))
        try:
            await asyncio.wait({launching, client_gone}, return_when=asyncio.FIRST_COMPLETED)
            if not launching.done():  # the shim went away (killed, or Run[] gave up)
                launching.cancel()
                await asyncio.gather(launching, return_exceptions=True)
                log.info("launch abandoned by its client", host=req.host)
                return
            try:
                k = launching.result()
            except RelayError as exc:
                await _send(writer, protocol.error(exc.code, exc.message))
                return
            await _send(
                writer,
                protocol.launched(
                    kernel_id=k.id,
                    host=k.host.key,
                    linkname=str(k.remote_link),
                    remote_pid=k.remote_pid,
                    launch_ms=(time.monotonic() - started) * 1000,
                ),
            )
            k.log.info(
                "launched",
                remote_pid=k.remote_pid,
                launch_ms=round((time.monotonic() - started) * 1000, 1),
            )
            if req.mode == "compute":
                return
            await self._follow_controller(k, client_gone, writer)
        finally:
            client_gone.cancel()
            if not launching.done():
                launching.cancel()

    async def _follow_controller(
        self, k: Kernel, client_said: asyncio.Future[bytes], writer: asyncio.StreamWriter
    ) -> None:
        """Until the kernel exits: a terminate request or a closed client ends the kernel."""
        pending: set[asyncio.Future[Any]] = {k.exited, client_said}
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if not k.exited.done():
            k.log.info(
                "terminating kernel", why="shim asked" if client_said.result() else "shim went away"
            )
            await k.terminate()
        status = k.exited.result() if k.exited.done() else None
        await _send(
            writer, protocol.exited(kernel_id=k.id, status=255 if status is None else status)
        )

    # -- shutdown --------------------------------------------------------------------------
    async def aclose(self) -> None:
        self.stopping = True
        kernels = list(self.kernels.values())
        if kernels:
            log.info("terminating kernels", count=len(kernels))
            await asyncio.gather(*(k.terminate() for k in kernels), return_exceptions=True)
        for task in list(self._clients):
            task.cancel("daemon shutting down")
        await asyncio.gather(*self._clients, return_exceptions=True)
        await asyncio.gather(*(h.aclose() for h in self.hosts.values()), return_exceptions=True)
        await self._tasks.aclose()


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionError):
        writer.write(framing.encode(message))
        await writer.drain()


class _Lock:
    """One daemon per socket: an exclusive flock held for the daemon's life."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DaemonRunning(f"another relay daemon is already serving {path.parent}") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        os.close(self._fd)


def _default_trigger() -> Awaitable[None]:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def on_signal(signum: int) -> None:
        if not stop.done():
            log.info("shutting down", signal=signal.Signals(signum).name)
            stop.set_result(None)
        else:  # a second signal forces exit
            os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop


async def serve(
    config: RelayConfig,
    socket_path: Path,
    *,
    config_source: str = "relay.toml",
    shutdown_trigger: Awaitable[None] | None = None,
    ready: asyncio.Future[Daemon] | None = None,
    ready_fd: int | None = None,
) -> None:
    """Serve the control socket until ``shutdown_trigger`` completes."""
    prepare_socket_dir(socket_path)
    lock = _Lock(socket_path.with_name(socket_path.name + ".lock"))
    daemon = Daemon(config, config_source)
    server: asyncio.AbstractServer | None = None
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)  # stale: we hold the lock, so no live daemon owns it
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(
                daemon.handle_client, path=str(socket_path), limit=framing.MAX_MESSAGE_BYTES + 1
            )
        finally:
            os.umask(old_umask)
        log.info("serving", socket=str(socket_path), pid=os.getpid())
        if ready is not None:
            ready.set_result(daemon)
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
            ready_fd = None
        await (shutdown_trigger if shutdown_trigger is not None else _default_trigger())
    finally:
        if server is not None:
            server.close()
        daemon.stopping = True
        try:
            async with asyncio.timeout(SHUTDOWN_GRACE_S):
                await daemon.aclose()
        except TimeoutError:
            log.warning("shutdown grace exceeded; closing connections anyway")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        lock.release()
        log.info("stopped")
