"""``relay-sim-kernel``: a fake Wolfram kernel executable. Standard library only.

Behaviour, with its source in ``docs/topology.md``:
- accepts the kernel flags of §2, case-insensitively, ignoring unknown ones
  (``-subkernel``, ``-noinit``, ``-initfile``, ``-pacletreadonly``, ...);
- ``-LinkMode Connect``: opens both TCP connections of ``-LinkName P1@H1,P2@H2`` (§1).
  The order of the two connects is not documented, so the simulator varies it: data first,
  message first, or both at once (``RELAY_SIM_CONNECT_ORDER`` = data|message|parallel|random,
  default random), and a relay must work with all three;
- ``-LinkMode Listen``: binds both ports on ``-LinkHost`` (default 127.0.0.1) and prints
  ``Link created on: NAME`` unless ``-LinkOptions`` has MLDontInteract (256) (§1);
- serves evaluations on the data channel (``relay.sim.wire``) and answers urgent messages on
  the message channel while the data channel may be busy: Interrupt is acknowledged, Abort
  cuts the evaluation in progress (or, arriving first, the next one) short, Terminate ends
  the kernel (§1);
- exits when its main link closes (§5), with the status a ``QUIT`` frame asked for;
- acts out the service and preemptive links of §3 when relay's hook is in its
  environment (``RELAY_HOOK_PORT``/``RELAY_HOOK_TOKEN``), doing exactly the requests
  RelayKernelInit.wl does (protocol: ``relay.hook``). ``-simversion V`` sets the simulated
  ``$VersionNumber`` (default 14.1): up to 11.0 the kernel creates two listening links at
  start-up through ``listen-pair`` and sends their names (``OPEN_PARALLEL_LINKS``, the old
  method); from 11.1 it waits for the front end's ``PARALLEL_LINK_NAMES`` and connects to
  them through ``callback`` (the new method). Every channel has a thread of its own, so a busy
  main link does not hold up the preemptive link (Dynamic).

- takes ``-simstartup SECONDS`` (default 1) before connecting or listening, as a real
  WolframKernel takes on the order of a second to start (licence check, paclets; §4).

It is written with blocking sockets and threads rather than asyncio, and imports little: a
kernel starts on every launch, and importing asyncio alone takes longer here than the whole
launch budget (BENCHMARKS.md).
"""

from __future__ import annotations

import errno
import os
import random
import socket
import sys
import threading

from relay import hook, minijson
from relay.linkname import LinkName
from relay.sim import wire
from relay.sim.flags import KernelFlags, parse_flags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["HookClient", "main"]


class HookRefused(Exception):
    pass


class LinkClosed(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise LinkClosed
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_data(sock: socket.socket) -> tuple[int, bytes]:
    try:
        kind, length = wire.data_header(_recv_exact(sock, wire.DATA_HEADER))
    except ValueError:  # a frame over wire.MAX_FRAME
        raise LinkClosed from None
    return kind, _recv_exact(sock, length) if length else b""


class HookClient:
    """The kernel's side of relay's hook protocol (``relay.hook``)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token

    def request(self, op: str, argument: str = "-") -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(hook.request_line(self.token, op, argument).encode())
            chunks = []
            while chunk := sock.recv(4096):  # relay closes after its one reply line
                chunks.append(chunk)
        ok, next_token, text = hook.parse_reply(b"".join(chunks).decode())
        if next_token is not None:
            self.token = next_token
        if not ok:
            raise HookRefused(text)
        return text


def _connect_one(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect(link: LinkName, order: str) -> tuple[socket.socket, socket.socket]:
    if order == "random":
        order = random.choice(["data", "message", "parallel"])  # noqa: S311
    if order == "parallel":
        got: dict[str, socket.socket | BaseException] = {}

        def one(role: str, host: str, port: int) -> None:
            try:
                got[role] = _connect_one(host, port)
            except OSError as exc:
                got[role] = exc

        threads = [
            threading.Thread(target=one, args=("message", link.message.host, link.message.port))
        ]
        threads[0].start()
        one("data", link.data.host, link.data.port)
        threads[0].join()
        data, message = got["data"], got["message"]
        for sock in (data, message):
            if isinstance(sock, BaseException):
                for other in (data, message):
                    if isinstance(other, socket.socket):
                        other.close()
                raise sock
        assert isinstance(data, socket.socket)
        assert isinstance(message, socket.socket)
        return data, message
    if order == "message":
        message = _connect_one(link.message.host, link.message.port)
        return _connect_one(link.data.host, link.data.port), message
    data = _connect_one(link.data.host, link.data.port)
    return data, _connect_one(link.message.host, link.message.port)


class _Listening:
    """A link this kernel created in Listen mode: two ports, one connection each."""

    def __init__(self, host: str, ports: tuple[int, int]) -> None:
        self.servers: list[socket.socket] = []
        try:
            for port in ports:
                server = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                self.servers.append(server)
                server.bind((host, port))
                server.listen(1)
        except OSError:
            self.close()
            raise

    @property
    def name(self) -> str:
        (h1, p1, *_), (h2, p2, *_) = (s.getsockname() for s in self.servers)
        return f"{p1}@{h1},{p2}@{h2}"

    def accepted(self) -> tuple[socket.socket, socket.socket]:
        data, _ = self.servers[0].accept()
        message, _ = self.servers[1].accept()
        self.close()
        return data, message

    def close(self) -> None:
        for server in self.servers:
            server.close()


class SimKernel:
    def __init__(self, flags: KernelFlags, version: float) -> None:
        self.flags = flags
        self.version = version
        self.exit_status = 0
        self.order = os.environ.get("RELAY_SIM_CONNECT_ORDER", "random")
        self.hook: HookClient | None = None
        if os.environ.get("RELAY_HOOK_PORT") and os.environ.get("RELAY_HOOK_TOKEN"):
            self.hook = HookClient(
                int(os.environ["RELAY_HOOK_PORT"]), os.environ["RELAY_HOOK_TOKEN"]
            )
        self.method = hook.choose_method(version, os.environ.get("RELAY_DYNAMIC_METHOD", "auto"))
        self.links: list[_Link] = []

    def hello(self, role: str, name: str | None) -> bytes:
        return minijson.dumps(
            {
                "pid": os.getpid(),
                "role": role,
                "subkernel": self.flags.subkernel,
                "noinit": self.flags.noinit,
                "link_name": name,
                "initfile": self.flags.initfile,
                "ignored": self.flags.ignored,
                "version": self.version,
                "method": self.method,
                "hook": self.hook is not None,
            }
        ).encode()

    def listen(self) -> tuple[socket.socket, socket.socket]:
        listening = _Listening(self.flags.link_host or "127.0.0.1", (0, 0))
        if not self.flags.dont_interact:
            print(f"Link created on: {listening.name}", flush=True)
        return listening.accepted()

    def old_method_links(self, main: _Link) -> None:
        """Up to 11.0: CreateFrontEndLink twice, through relay's listen-pair, then tell the
        front end (OpenParallelLinksPacket); it connects to the service link first."""
        assert self.hook is not None
        pairs: list[tuple[str, _Listening]] = []
        for _role in ("service", "preemptive"):
            for _attempt in range(5):
                pair = LinkName.parse(self.hook.request("listen-pair"))
                try:
                    listening = _Listening("127.0.0.1", (pair.data.port, pair.message.port))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    self.hook.request("release", str(pair))  # taken here: ask again
                    continue
                pairs.append((str(pair), listening))
                break
            else:
                raise HookRefused("no free pair of ports after 5 tries")
        names = [name for name, _ in pairs]
        main.send(wire.OPEN_PARALLEL_LINKS, minijson.dumps([*names, "TCPIP"]).encode())
        for role, (name, listening) in zip(("service", "preemptive"), pairs, strict=True):
            self.start_link(role, name, *listening.accepted())

    def new_method_links(self, payload: bytes) -> bytes:
        """From 11.1: the front end named its two listening links; connect through relay."""
        names = minijson.loads(payload.decode())
        assert isinstance(names, list)
        for role, name in (("service", names[0]), ("preemptive", names[1])):
            target = self.hook.request("callback", name) if self.hook else name
            self.start_link(role, target, *connect(LinkName.parse(target), self.order))
        return b"linked"

    def start_link(self, role: str, name: str, data: socket.socket, message: socket.socket) -> None:
        link = _Link(self, role, name, data, message)
        self.links.append(link)
        threading.Thread(target=link.serve, daemon=True, name=role).start()

    def serve(self, data: socket.socket, message: socket.socket) -> int:
        main = _Link(self, "main", self.flags.link_name, data, message)
        main.serve()
        for link in self.links:  # the main link closed: the kernel exits
            link.close()
        return self.exit_status


class _Link:
    """One link's two channels: the data channel in the serving thread, the message channel
    in a thread of its own, so urgent messages are answered while an evaluation runs."""

    def __init__(
        self,
        kernel: SimKernel,
        role: str,
        name: str | None,
        data: socket.socket,
        message: socket.socket,
    ) -> None:
        self.kernel, self.role, self.name = kernel, role, name
        self.data, self.message = data, message
        self.abort = threading.Event()

    def send(self, kind: int, payload: bytes = b"") -> None:
        self.data.sendall(wire.data_frame(kind, payload))

    def serve(self) -> None:
        try:
            self.send(wire.HELLO, self.kernel.hello(self.role, self.name))
            threading.Thread(target=self.urgent, daemon=True, name=f"{self.role}-urgent").start()
            if self.role == "main" and self.kernel.hook is not None and self.kernel.method == "old":
                self.kernel.old_method_links(self)
            self.evaluate()
        except (LinkClosed, OSError, HookRefused) as exc:
            if isinstance(exc, HookRefused):
                print(f"relay-sim-kernel: relay's hook refused: {exc}", file=sys.stderr)
                self.kernel.exit_status = 1
        finally:
            self.close()

    def evaluate(self) -> None:
        sunk = 0
        while True:
            kind, payload = read_data(self.data)
            if kind == wire.ECHO:
                self.send(wire.RETURN, payload)
            elif kind == wire.SLEEP:
                # An Abort arriving just before the evaluation starts (the message channel
                # races the data channel) aborts it, as it would a real kernel's next one.
                aborted = self.abort.wait(int(payload) / 1000)
                self.abort.clear()
                self.send(wire.RETURN, b"$Aborted" if aborted else b"done")
            elif kind == wire.SINK:  # bulk towards the kernel (benchmarks)
                sunk += len(payload)
                if not payload:
                    self.send(wire.RETURN, str(sunk).encode())
                    sunk = 0
            elif kind == wire.SOURCE:  # bulk from the kernel (benchmarks)
                left, block = int(payload), bytes(1 << 20)
                while left > 0:
                    self.send(wire.RETURN, block[: min(left, len(block))])
                    left -= len(block)
                self.send(wire.RETURN)
            elif kind == wire.PARALLEL_LINK_NAMES:
                try:
                    result = self.kernel.new_method_links(payload)
                except (HookRefused, OSError, ValueError) as exc:
                    result = f"$Failed: {exc}".encode()
                self.send(wire.RETURN, result)
            elif kind == wire.QUIT and self.role == "main":
                self.kernel.exit_status = int(payload or b"0")
                return

    def urgent(self) -> None:
        try:
            while True:
                code, arg = wire.message(_recv_exact(self.message, wire.MESSAGE_SIZE))
                if code == wire.TERMINATE:
                    self.close()
                    return
                if code == wire.ABORT:
                    self.abort.set()  # the evaluation in progress, or the next one
                self.message.sendall(wire.message_frame(code, arg))  # acknowledged here
        except (LinkClosed, OSError):
            return

    def close(self) -> None:
        for sock in (self.data, self.message):
            try:  # noqa: SIM105 (contextlib would be one more import per kernel start)
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


STARTUP_S = 1.0  # a real kernel's start-up, on the order of a second (§4)


def _sim_option(flags: KernelFlags, name: str, default: float) -> float:
    """A simulator-only flag (``-simversion V``, ``-simstartup S``) among the ignored ones."""
    ignored = [word.lower() for word in flags.ignored]
    if name in ignored:
        i = ignored.index(name)
        if i + 1 < len(ignored):
            return float(flags.ignored[i + 1])
    return default


def _sim_version(flags: KernelFlags) -> float:
    return _sim_option(flags, "-simversion", 14.1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        flags = parse_flags(argv)
        version = _sim_version(flags)
        _sim_option(flags, "-simstartup", STARTUP_S)
    except ValueError as exc:
        print(f"relay-sim-kernel: {exc}", file=sys.stderr)
        return 2
    if not flags.link_startup and flags.link_mode is None:
        print("relay-sim-kernel: no -wstp/-mathlink or -LinkMode: nothing to do", file=sys.stderr)
        return 2
    if flags.link_protocol not in (None, "TCPIP"):
        print(
            f"relay-sim-kernel: only -LinkProtocol TCPIP is simulated, not {flags.link_protocol}",
            file=sys.stderr,
        )
        return 2
    kernel = SimKernel(flags, version)
    startup = _sim_option(flags, "-simstartup", STARTUP_S)
    if startup > 0:
        threading.Event().wait(startup)  # starting up: licence, paclets, init files
    mode = flags.link_mode or "connect"
    if mode == "connect":
        if not flags.link_name:
            print("relay-sim-kernel: -LinkMode Connect needs -LinkName", file=sys.stderr)
            return 2
        try:
            data, message = connect(LinkName.parse(flags.link_name), kernel.order)
        except (ValueError, OSError) as exc:
            print(f"relay-sim-kernel: cannot connect to {flags.link_name}: {exc}", file=sys.stderr)
            return 1
    elif mode == "listen":
        data, message = kernel.listen()
    else:
        print(f"relay-sim-kernel: -LinkMode {mode} is not simulated", file=sys.stderr)
        return 2
    return kernel.serve(data, message)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
