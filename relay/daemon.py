"""The daemon: the control socket, request dispatch, kernel bookkeeping, scripted shutdown.

``serve(config, ...)`` runs until ``shutdown_trigger`` completes (SIGTERM/SIGINT by default).
Shutdown is scripted and bounded:

1. new launches are refused with a clear message (the socket stays open meanwhile, so a shim
   gets that message instead of starting a second daemon);
2. every kernel the daemon owns is terminated (SIGTERM, then SIGKILL after the host's
   ``terminate_grace_s``) and its controller shim told the exit status; compute kernels end
   too: they live in the daemon's care and their links run through its connections;
3. the listener is closed, remaining clients are cancelled, supervisors and SSH connections
   are closed (releasing every forward), the socket is removed.

Steps 2-3 are bounded by ``SHUTDOWN_GRACE_S``; a second signal exits at once.

The socket lives in a 0700 directory, is 0600 itself, and every peer's uid is checked
(SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS). Under systemd or launchd the socket may be
handed over by the service manager (``relay.activation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
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

import asyncssh
import structlog

from relay import __version__, framing, protocol
from relay.activation import Notifier, activated_socket
from relay.errors import BadRequest, ConfigError, ConnectFailed, RelayError, ShuttingDown
from relay.framing import FramingError
from relay.kernels import Kernel, launch, new_kernel_id
from relay.linkname import LinkName, LinkNameError
from relay.settings import RelayConfig
from relay.ssh.exposed import LocalLinkForward
from relay.ssh.forwards import LinkForward
from relay.ssh.hookserver import hold_until_connected
from relay.ssh.host import HostSession
from relay.tasks import TaskSet

__all__ = ["Daemon", "DaemonRunning", "serve"]

REQUEST_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 20.0
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


def daemon_tag(socket_path: Path) -> str:
    """Who this daemon is, to the remote hosts: its machine, user and socket."""
    who = f"{socket.gethostname()}:{os.getuid()}:{socket_path}"
    return hashlib.sha256(who.encode()).hexdigest()[:16]


def process_stats() -> dict[str, Any]:
    rss_kb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    return {"rss_kb": rss_kb, "fds": len(os.listdir(fd_dir)), "tasks": len(asyncio.all_tasks())}


class Daemon:
    def __init__(
        self,
        config: RelayConfig,
        config_source: str = "relay.toml",
        socket_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_source = config_source
        self.socket_path = socket_path
        self.tag = daemon_tag(socket_path or Path("relay.sock"))
        self.hosts: dict[str, HostSession] = {}
        self.kernels: dict[str, Kernel] = {}
        self.forwards: dict[str, tuple[str, str, LinkForward | LocalLinkForward]] = {}
        self._tasks = TaskSet(log)
        self._clients: set[asyncio.Task[Any]] = set()
        self.stopping = False
        self.started_at = time.time()

    # -- hosts -----------------------------------------------------------------------------
    def host(self, name: str) -> HostSession:
        key, cfg = self.config.resolve(name, self.config_source)
        session = self.hosts.get(key)
        if session is None:
            session = self.hosts[key] = HostSession(
                key,
                cfg,
                tag=self.tag,
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
                "retry once it has stopped (it restarts on the next launch)"
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
        kernel_id = new_kernel_id()
        structlog.contextvars.bind_contextvars(host=host.key, kernel=kernel_id)
        host.hold()
        try:
            k = await launch(
                host,
                kernel=kernel,
                link=link,
                mode=req.mode,
                extra_args=list(args),
                kernel_id=kernel_id,
            )
        except BaseException:
            host.release()
            raise
        self.kernels[k.id] = k
        self._tasks.spawn(self._reap(k, kernel), name=f"reap:{k.id}")
        return k

    async def _reap(self, k: Kernel, kernel: str) -> None:
        """Everything about a launched kernel until it is gone. A compute kernel's shim had
        its answer before the link was connected: one that exits first, or does not call
        back within launch_timeout_s, is recorded (the Parallel package will only say that
        its link never connected) and ended. ``released`` is set last."""
        status: int | None = None
        try:
            try:
                await asyncio.shield(k.callback)
            except RelayError as exc:
                k.log.warning("compute kernel failed after launch", error=exc.message)
                k.host.record_failure(k.id, kernel, exc.message)
                await k.terminate(grace_s=1.0)
            status = await asyncio.shield(k.exited)
        finally:
            self.kernels.pop(k.id, None)
            await k.release()
            k.host.release()
            k.released.set()
        k.log.info("kernel exited", status=status, output=k.output or None)

    async def forward(self, req: protocol.ForwardRequest) -> str:
        """Open a link across a host's connection on a local client's request."""
        if self.stopping:
            raise ShuttingDown("relay is shutting down and opens no new links")
        target = LinkName.parse(req.linkname)
        host = self.host(req.host)
        connected = await host.ready()
        fwd: LinkForward | LocalLinkForward
        if req.direction == "callback":
            fwd = await LinkForward.open(
                connected.connection, target, host.key, connected.guard, connected.pool
            )
            name = fwd.remote_name
        else:
            fwd = await LocalLinkForward.to(connected.connection, target, host.local_guard)
            name = fwd.local_name
        assert name is not None
        self.forwards[str(name)] = (req.direction, host.key, fwd)
        host.hold()  # no idle close while the link is being connected

        async def hold() -> None:
            try:
                await hold_until_connected(fwd, host.config.launch_timeout_s)
            finally:
                host.release()
                self.forwards.pop(str(name), None)

        self._tasks.spawn(hold(), name=f"forward:{name}")
        log.info(
            "link forwarded on request",
            host=host.key,
            direction=req.direction,
            link=str(target),
            rewritten=str(name),
        )
        return str(name)

    async def connect(self, req: protocol.ConnectRequest) -> dict[str, Any]:
        """Open a host's connection, supervisor and spare forwards ahead of any launch, so
        that the first kernel does not pay connect and authentication."""
        if self.stopping:
            raise ShuttingDown("relay is shutting down and opens no new connections")
        host = self.host(req.host)
        started = time.monotonic()
        try:
            await host.ready()
        except (asyncssh.Error, OSError) as exc:
            raise ConnectFailed(f"the SSH connection to {host.key} failed: {exc}") from None
        log.info("host warmed", host=host.key)
        return {
            "event": "connected",
            "host": host.key,
            "connect_ms": round((time.monotonic() - started) * 1000, 1),
            "rtt_ms": host.snapshot()["rtt_ms"],
        }

    def status(self) -> dict[str, Any]:
        return {
            "event": "status",
            "daemon": {
                "pid": os.getpid(),
                "version": __version__,
                "uptime_s": round(time.time() - self.started_at, 1),
                "socket": str(self.socket_path),
                "stopping": self.stopping,
                **process_stats(),
            },
            "hosts": [h.snapshot() for h in self.hosts.values()],
            "kernels": [k.snapshot() for k in self.kernels.values()],
            "forwards": [
                {"name": name, "direction": direction, "host": host, "channels": fwd.snapshot()}
                for name, (direction, host, fwd) in self.forwards.items()
            ],
        }

    # -- the control socket ----------------------------------------------------------------
    async def handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        structlog.contextvars.clear_contextvars()
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
            await _send(writer, {"event": "pong", "pid": os.getpid(), "version": __version__})
        elif isinstance(req, protocol.StatusRequest):
            await _send(writer, self.status())
        elif isinstance(req, protocol.ForwardRequest):
            try:
                name = await self.forward(req)
            except RelayError as exc:
                await _send(writer, protocol.error(exc.code, exc.message))
            except (LinkNameError, asyncssh.Error, OSError) as exc:
                await _send(writer, protocol.error("forward_failed", str(exc)))
            else:
                await _send(writer, {"event": "forwarded", "host": req.host, "linkname": name})
        elif isinstance(req, protocol.LaunchRequest):
            await self._serve_launch(req, reader, writer)
        elif isinstance(req, protocol.ConnectRequest):
            try:
                answer = await self.connect(req)
            except RelayError as exc:
                await _send(writer, protocol.error(exc.code, exc.message))
            else:
                await _send(writer, answer)
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
        client_said = asyncio.ensure_future(reader.read(framing.MAX_MESSAGE_BYTES))
        try:
            try:
                await asyncio.wait({launching, client_said}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                if self.stopping:  # cancelled by the shutdown: say so rather than vanish
                    await _send(
                        writer,
                        protocol.error(
                            ShuttingDown.code, "relay shut down during this launch; launch again"
                        ),
                    )
                raise
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
            except Exception as exc:  # a bug: say so once, keep serving everyone else
                log.exception("launch failed unexpectedly", host=req.host)
                await _send(
                    writer,
                    protocol.error(
                        "internal", f"relay failed unexpectedly: {exc!r} (see the daemon's log)"
                    ),
                )
                return
            launch_ms = (time.monotonic() - started) * 1000
            await _send(
                writer,
                protocol.launched(
                    kernel_id=k.id,
                    host=k.host.key,
                    linkname=str(k.remote_link),
                    remote_pid=k.remote_pid,
                    launch_ms=launch_ms,
                ),
            )
            k.log.info("launched", remote_pid=k.remote_pid, launch_ms=round(launch_ms, 1))
            if req.mode == "compute":
                return
            await self._follow_controller(k, client_said, writer)
        finally:
            client_said.cancel()
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
        async with asyncio.timeout(SHUTDOWN_GRACE_S):
            await k.released.wait()  # the shim learns of the exit once forwards are released
        if status is None:
            reason = k.host.last_error or "connection lost"
            await _send(
                writer,
                protocol.error(
                    "connection_lost",
                    f"the SSH connection to {k.host.key} ended ({reason}); "
                    f"the kernel ended with it: restart it from the front end",
                ),
            )
            return
        await _send(writer, protocol.exited(kernel_id=k.id, status=status))

    # -- shutdown --------------------------------------------------------------------------
    async def terminate_kernels(self) -> None:
        kernels = list(self.kernels.values())
        if kernels:
            log.info("terminating kernels", count=len(kernels))
            await asyncio.gather(*(k.terminate() for k in kernels), return_exceptions=True)

    async def aclose(self) -> None:
        self.stopping = True
        await self.terminate_kernels()
        for task in list(self._clients):
            task.cancel("daemon shutting down")
        await asyncio.gather(*self._clients, return_exceptions=True)
        await asyncio.gather(*(h.aclose() for h in self.hosts.values()), return_exceptions=True)
        await self._tasks.aclose()


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionError):
        # The status answer grows with the kernels; only requests are size-bounded.
        writer.write(framing.encode(message, bounded=message.get("event") != "status"))
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
            log.warning("second signal: exiting now", signal=signal.Signals(signum).name)
            os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop


async def _listen(
    daemon: Daemon, socket_path: Path, inherited: socket.socket | None
) -> asyncio.Server:
    limit = framing.MAX_MESSAGE_BYTES + 1
    if inherited is not None:
        return await asyncio.start_unix_server(daemon.handle_client, sock=inherited, limit=limit)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)  # stale: we hold the lock, so no live daemon owns it
    old_umask = os.umask(0o177)
    try:
        return await asyncio.start_unix_server(
            daemon.handle_client, path=str(socket_path), limit=limit
        )
    finally:
        os.umask(old_umask)


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
    notifier = Notifier()
    inherited = activated_socket()
    if inherited is not None:
        socket_path = Path(inherited.getsockname())
    prepare_socket_dir(socket_path)
    lock = _Lock(socket_path.with_name(socket_path.name + ".lock"))
    daemon = Daemon(config, config_source, socket_path)
    server: asyncio.Server | None = None
    try:
        server = await _listen(daemon, socket_path, inherited)
        log.info(
            "serving", socket=str(socket_path), pid=os.getpid(), activated=inherited is not None
        )
        notifier.notify(ready="1", status=f"serving {socket_path}")
        if ready is not None:
            ready.set_result(daemon)
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
            ready_fd = None
        await (shutdown_trigger if shutdown_trigger is not None else _default_trigger())
    finally:
        notifier.notify(stopping="1", status="terminating kernels and closing connections")
        daemon.stopping = True
        try:
            async with asyncio.timeout(SHUTDOWN_GRACE_S):
                await daemon.terminate_kernels()
                if server is not None:
                    server.close()
                await daemon.aclose()
        except TimeoutError:
            log.warning("shutdown grace exceeded; closing connections anyway")
        if server is not None:
            server.close()
        if inherited is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
        lock.release()
        log.info("stopped")
