"""``relay-sim-kernel``: a fake Wolfram kernel executable. Standard library only.

Behaviour, with its source in ``docs/topology.md``:
- accepts the kernel flags of §2, case-insensitively, ignoring unknown ones
  (``-subkernel``, ``-noinit``, ``-initfile``, ``-pacletreadonly``, ...);
- ``-LinkMode Connect``: opens both TCP connections of ``-LinkName P1@H1,P2@H2`` (§1).
  The order of the two connects is not documented, so the simulator varies it: data first,
  message first, or both at once (``RELAY_SIM_CONNECT_ORDER`` = data|message|parallel|random,
  default random; ``-simorder`` on the command line wins over it), and a relay must work with
  all three;
- ``-LinkMode Listen``: binds both ports on ``-LinkHost`` (default 127.0.0.1) and prints
  ``Link created on: NAME`` unless ``-LinkOptions`` has MLDontInteract (256) (§1);
- serves evaluations on the data channel (``relay.sim.wire``) and answers urgent messages on
  the message channel while the data channel may be busy: Interrupt is acknowledged, Abort
  cuts the evaluation in progress (or, arriving first, the next one) short, Terminate ends
  the kernel (§1);
- exits when its main link closes (§5), with the status a ``QUIT`` frame asked for;
- acts out the service and preemptive links of §3 when relay's hook is in its
  environment (``RELAY_HOOK_PORT``/``RELAY_HOOK_TOKEN``), doing what RelayKernelInit.wl does
  (protocol and rules: ``relay.lite.hook``). ``-simversion V`` sets the simulated
  ``$VersionNumber`` (default 14.1): up to 11.0 the kernel creates two listening links at
  start-up through ``listen-pair`` and sends their names (``OPEN_PARALLEL_LINKS``, the old
  method); from 11.1 it waits for the front end's ``PARALLEL_LINK_NAMES`` and connects to
  them through ``callback`` (the new method), redirecting only inside that set-up (or before
  its two links exist), so a user's link made later (``USER_LINK``) is left alone. Every
  channel has a thread of its own, so a busy main link does not hold up the preemptive link
  (Dynamic). As the hook does, it bounds every request by ``$RELAY_HOOK_TIMEOUT``, uses
  sockets from 11.2 (``SocketReadyQ``) and bash's ``/dev/tcp`` (``relay.lite.hook.BASH_TRANSPORT``)
  before that or when the socket fails, and when relay cannot be reached says so once on the
  main link (``MESSAGE``, as a kernel's ``Message`` reaches the front end) and goes on: the old
  method listens on ports of its own choosing (tunnel.m's fallback), the new one gives
  ``$Failed``. The old method's links are accepted in the background: the main link is served
  meanwhile, so a front end that cannot reach a fallback link still has its kernel (whether a
  real kernel waits there is not documented).

- is, by option, as rude as the reference allows (tests pick each behaviour, or leave it to
  chance where the reference leaves an order open):
  ``-simhello early|linked|random`` (default random): when a link's first frame (HELLO) is
  written. ``early``: the moment its data channel exists, before the message channel is
  connected (Connect) or accepted (Listen); ``linked``: once both are. Topology §1: "Which
  side writes first after the TCP connections are made is not documented either: the
  listening side (the front end) may write the moment it accepts", and "The order of the two
  connects is not documented: a relay must not depend on it";
  ``-simgap SECONDS`` (default 0): a pause between a link's two connects, or its two
  accepts (§1, the same two sentences: nothing says the second follows the first at once);
  ``-simexit STATUS``: the kernel ends its link on its own, at once: it connects, writes its
  HELLO and a message, closes both channels and exits with STATUS, as a kernel does whose
  licence check fails once its link is up (§1: the message channel carries ImDying, a kernel
  may die on its own; §4: a non-zero exit status is a failed launch, and start-up is the
  licence check);
  ``-simclose fin|reset`` (default fin): how a link's channels end, with a FIN or, as a
  crashed process with unread bytes does, a RST (§5 has the kernel exit when its link
  closes; the reference says nothing of how a TCP connection closes, and a relay must take
  both);
- ``-version`` prints the product version and exits, as ``wolfram -version`` does (its
  reference page; ``relay check`` runs it);
- takes ``-simstartup SECONDS`` (default 1) before connecting or listening, as a real
  WolframKernel takes on the order of a second to start (licence check, paclets; §4). The
  seconds count from the process's exec, as a real kernel's do: this Python program's own
  start (tens of milliseconds) is part of them, not added on top;
- takes ``-simgate PATH`` (tests only; no real kernel has it): after its start-up, before
  connecting or listening, it waits until whoever listens on the Unix socket PATH closes its
  connection or writes to it. A test orders "the kernels connect" after an event of its own
  with it, instead of betting that its steps take less than a start-up.

It is written with blocking sockets and threads rather than asyncio, and imports little: a
kernel starts on every launch, and importing asyncio alone takes longer here than the whole
launch budget (BENCHMARKS.md). For the same reason it uses ``_socket`` and ``_thread``, not
``socket`` and ``threading``: their imports (enum, functools, collections) cost each kernel
start about 20 ms of CPU on the benchmark machine, and ``make bench`` starts 64 kernels in a
row on two cores beside the launches it measures (``relay.lite.client`` does the same for the shim).
"""

from __future__ import annotations

import _socket
import _thread
import errno
import os
import sys
import time

from relay.lite import hook, minijson
from relay.lite.linkname import LinkName
from relay.sim import wire
from relay.sim.flags import KernelFlags, parse_flags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["HookClient", "main"]


class HookRefused(Exception):
    """relay answered ERR."""


class HookUnreachable(HookRefused):
    """No reply within the time limit on either transport."""


class LinkClosed(Exception):
    pass


Socket = _socket.socket


def _recv_exact(sock: Socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise LinkClosed
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_data(sock: Socket) -> tuple[int, bytes]:
    try:
        kind, length = wire.data_header(_recv_exact(sock, wire.DATA_HEADER))
    except ValueError:  # a frame over wire.MAX_FRAME
        raise LinkClosed from None
    return kind, _recv_exact(sock, length) if length else b""


class HookClient:
    """The kernel's side of relay's hook protocol (``relay.lite.hook``), as RelayKernelInit.wl's
    ``request``: a socket (kernels from 11.2) and then bash's ``/dev/tcp``, each bounded."""

    def __init__(self, port: int, token: str, timeout_s: float, sockets: bool) -> None:
        self.port = port
        self.token = token
        self.timeout_s = timeout_s
        self.sockets = sockets

    def request(self, op: str, argument: str = "-") -> str:
        line = hook.request_line(self.token, op, argument)
        reply = (self._socket(line) if self.sockets else None) or self._bash(line)
        if reply is None:
            raise HookUnreachable(
                f"the relay daemon did not answer on 127.0.0.1:{self.port} within "
                f"{self.timeout_s:g} s; Dynamic and palettes will not work in this kernel "
                f"(run relay status on the front end's machine)"
            )
        ok, next_token, text = hook.parse_reply(reply)
        if next_token is not None:
            self.token = next_token
        if not ok:
            raise HookRefused(text)
        return text

    def _socket(self, line: str) -> str | None:
        """Up to the reply's newline, within the time limit (SocketReadyQ's bound)."""
        deadline = time.monotonic() + self.timeout_s
        buf = b""
        try:
            s = _connect_one("127.0.0.1", self.port, self.timeout_s)
            try:
                s.sendall(line.encode())
                while b"\n" not in buf and (left := deadline - time.monotonic()) > 0:
                    s.settimeout(left)
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
            finally:
                s.close()
        except OSError:
            pass
        end = buf.find(b"\n")
        return buf[: end + 1].decode() if end >= 0 else None

    def _bash(self, line: str) -> str | None:
        import subprocess  # noqa: PLC0415

        argv = ["/bin/bash", "-c", hook.BASH_TRANSPORT, "relay-hook"]
        argv += [str(self.port), f"{self.timeout_s:g}"]
        try:
            done = subprocess.run(
                argv, input=line, capture_output=True, text=True, timeout=self.timeout_s + 5
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None


def _timeout_s(text: str | None) -> float:
    """RelayKernelInit.wl's ``timeoutSeconds``: whole seconds, 1-600, else 10."""
    if text and text.isascii() and text.isdigit() and 0 < int(text) <= 600:
        return float(text)
    return hook.REQUEST_TIMEOUT_S


def _connect_one(host: str, port: int, timeout_s: float | None = None) -> Socket:
    """``socket.create_connection``: each address the host resolves to, in turn (a bytes host:
    a str one would import the idna codec)."""
    last: OSError = OSError(f"{host} resolves to no address")
    for family, kind, proto, _, address in _socket.getaddrinfo(
        host.encode(), port, 0, _socket.SOCK_STREAM
    ):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout_s)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return sock
    raise last


def _start_thread(target: Callable[..., object], *args: object) -> None:
    """``threading.Thread(target=..., daemon=True).start()``: the thread ends with the
    process."""
    _thread.start_new_thread(target, args)


class _Event:
    """``threading.Event``'s ``set``, ``clear`` and ``wait`` on two ``_thread`` locks:
    ``_unset`` is held exactly while the event is not set."""

    def __init__(self) -> None:
        self._guard = _thread.allocate_lock()
        self._unset = _thread.allocate_lock()
        self._unset.acquire()
        self._set = False

    def set(self) -> None:
        with self._guard:
            if not self._set:
                self._set = True
                self._unset.release()

    def clear(self) -> None:
        with self._guard:
            if self._set:
                self._set = False
                self._unset.acquire()

    def wait(self, timeout_s: float) -> bool:
        if self._unset.acquire(timeout=timeout_s):
            self._unset.release()
            return True
        return False


def _pick(choices: tuple[str, ...]) -> str:
    """One of ``choices`` at random (os.urandom: the random module is an import more)."""
    return choices[os.urandom(1)[0] % len(choices)]


def connect(
    link: LinkName, order: str, first: bytes = b"", gap_s: float = 0.0
) -> tuple[Socket, Socket]:
    """Both channels of ``link``, in ``order``. ``first`` is written on the data channel the
    moment it is connected, before the message channel may be (``-simhello early``);
    ``gap_s`` separates the two connects (``-simgap``)."""
    if order == "random":
        order = _pick(("data", "message", "parallel"))
    if order == "parallel":
        got: dict[str, Socket | BaseException] = {}
        message_done = _Event()

        def one(role: str, host: str, port: int) -> None:
            try:
                sock = _connect_one(host, port)
            except OSError as exc:
                got[role] = exc
                return
            try:
                if role == "data" and first:
                    sock.sendall(first)
            except OSError as exc:
                sock.close()
                got[role] = exc
                return
            got[role] = sock

        def message_one() -> None:
            try:
                one("message", link.message.host, link.message.port)
            finally:
                message_done.set()

        _start_thread(message_one)
        one("data", link.data.host, link.data.port)
        message_done.wait(CONNECT_JOIN_S)
        data, message = got["data"], got.get("message", TimeoutError("message channel"))
        for sock in (data, message):
            if isinstance(sock, BaseException):
                for other in (data, message):
                    if isinstance(other, Socket):
                        other.close()
                raise sock
        assert isinstance(data, Socket)
        assert isinstance(message, Socket)
        return data, message
    if order == "message":
        message = _connect_one(link.message.host, link.message.port)
        try:
            time.sleep(gap_s)
            data = _connect_one(link.data.host, link.data.port)
        except OSError:
            message.close()
            raise
        if first:
            data.sendall(first)
        return data, message
    data = _connect_one(link.data.host, link.data.port)
    try:
        if first:
            data.sendall(first)
        time.sleep(gap_s)
        return data, _connect_one(link.message.host, link.message.port)
    except OSError:
        data.close()
        raise


class _Listening:
    """A link this kernel created in Listen mode: two ports, one connection each."""

    def __init__(self, host: str, ports: tuple[int, int]) -> None:
        self.servers: list[Socket] = []
        try:
            for port in ports:
                family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
                server = _socket.socket(family, _socket.SOCK_STREAM)
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

    def accepted(self, first: bytes = b"", gap_s: float = 0.0) -> tuple[Socket, Socket]:
        """The two connections, data first. ``first`` is written on the data channel the
        moment it is accepted, before the message channel is (``-simhello early``: the
        listening side "may write the moment it accepts", topology §1); ``gap_s`` separates
        the two accepts (``-simgap``)."""
        data = _accept(self.servers[0])
        try:
            if first:
                data.sendall(first)
            time.sleep(gap_s)
            message = _accept(self.servers[1])
        except OSError:
            data.close()
            raise
        finally:
            self.close()
        return data, message

    def close(self) -> None:
        for server in self.servers:
            server.close()


def _accept(server: Socket) -> Socket:
    """``socket.socket.accept``'s connection (a blocking socket, as the server is)."""
    # _accept is the _socket method that socket.accept wraps; typeshed leaves it out
    fd, _ = server._accept()  # type: ignore[attr-defined]
    return _socket.socket(server.family, _socket.SOCK_STREAM, 0, fd)


class SimKernel:
    def __init__(self, flags: KernelFlags, version: float) -> None:
        self.flags = flags
        self.version = version
        self.exit_status = 0
        self.order = os.environ.get("RELAY_SIM_CONNECT_ORDER", "random")
        # the rude options (the module's docstring): set by main() from the command line
        self.hello_when = "random"
        self.gap_s = 0.0
        self.exit_now: int | None = None
        self.close_how = "fin"
        self.hook: HookClient | None = None
        port, token = os.environ.get("RELAY_HOOK_PORT", ""), os.environ.get("RELAY_HOOK_TOKEN")
        if token:
            self.hook = HookClient(
                int(port) if port.isascii() and port.isdigit() else 0,
                token,
                _timeout_s(os.environ.get("RELAY_HOOK_TIMEOUT")),
                sockets=version >= SOCKETS_VERSION,
            )
        self.frontend_host = os.environ.get("RELAY_FRONTEND_HOST")
        self.method = hook.choose_method(version, os.environ.get("RELAY_DYNAMIC_METHOD", "auto"))
        self.links: list[_Link] = []
        self.main: _Link | None = None
        self.reported = False
        self.setting_up = False  # inside MathLink`CreateFrontEndLinks
        self.linked = 0  # the front end's links made through relay

    def report(self, exc: HookRefused) -> None:
        """The hook's messages reach the front end on the main link; "unreachable" once."""
        if isinstance(exc, HookUnreachable):
            if self.reported:
                return
            self.reported = True
        if self.main is not None:  # the hook runs in the main link's thread
            self.main.send(wire.MESSAGE, f"relay's Dynamic hook: {exc}".encode())

    def first(self, role: str, name: str | None) -> bytes:
        """What a link writes before its second channel exists: its HELLO frame under
        ``-simhello early`` (or, under ``random``, by chance), else nothing."""
        when = _pick(("early", "linked")) if self.hello_when == "random" else self.hello_when
        return wire.data_frame(wire.HELLO, self.hello(role, name)) if when == "early" else b""

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
                # a kernel started as a Slurm job step has the job's environment, as a real
                # one has it in Environment["SLURM_JOB_ID"]
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            }
        ).encode()

    def listen(self) -> tuple[Socket, Socket, bytes]:
        listening = _Listening(self.flags.link_host or "127.0.0.1", (0, 0))
        if not self.flags.dont_interact:
            print(f"Link created on: {listening.name}", flush=True)
        first = self.first("main", self.flags.link_name)
        return (*listening.accepted(first, self.gap_s), first)

    def old_method_links(self, main: _Link) -> None:
        """Up to 11.0: CreateFrontEndLink twice, through relay's listen-pair, then tell the
        front end (OpenParallelLinksPacket); it connects to the service link first."""
        pairs = [self.create_front_end_link() for _role in ("service", "preemptive")]
        names = [name for name, _ in pairs]
        main.send(wire.OPEN_PARALLEL_LINKS, minijson.dumps([*names, "TCPIP"]).encode())

        def accept_all() -> None:
            for role, (name, listening) in zip(("service", "preemptive"), pairs, strict=True):
                first = self.first(role, name)
                try:
                    data, message = listening.accepted(first, self.gap_s)
                except OSError:
                    return
                self.start_link(role, name, data, message, hello_sent=bool(first))

        _start_thread(accept_all)

    def create_front_end_link(self) -> tuple[str, _Listening]:
        """RelayKernelInit.wl's ``oldFrontEndLink``: a pair relay reserved, else, when relay
        cannot help, ports of the kernel's own choosing (as tunnel.m fell back)."""
        assert self.hook is not None
        try:
            for _attempt in range(5):
                pair = LinkName.parse(self.hook.request("listen-pair"))
                try:
                    listening = _Listening("127.0.0.1", (pair.data.port, pair.message.port))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    self.hook.request("release", str(pair))  # taken here: ask again
                    continue
                return str(pair), listening
        except HookRefused as exc:
            self.report(exc)
        listening = _Listening("127.0.0.1", (0, 0))
        return listening.name, listening

    def link_create_connect(
        self, name: str, role: str | None = None
    ) -> tuple[str, Socket, Socket, bool] | str:
        """``LinkCreate[name, LinkMode -> Connect]`` with the hook's rule in place: the linked
        name, its two sockets and whether the link's HELLO went out already (the front end's
        links, ``role`` given: see ``first``), or a ``$Failed`` reason."""
        target = name
        if self.hook and self.frontend_host and (self.setting_up or self.linked < 2):
            try:
                if hook.front_end_name(name, self.frontend_host):
                    target = self.hook.request("callback", name)
                    self.linked += 1
                else:
                    self.hook.request("skipped", hook.loggable_name(name))
            except HookRefused as exc:
                self.report(exc)
                if target == name and hook.front_end_name(name, self.frontend_host):
                    return f"$Failed: {exc}"
        try:
            first = self.first(role, target) if role is not None else b""
            data, message = connect(LinkName.parse(target), self.order, first, self.gap_s)
            return target, data, message, bool(first)
        except (OSError, ValueError) as exc:
            return f"$Failed: {exc}"

    def new_method_links(self, payload: bytes) -> bytes:
        """From 11.1: the front end named its two listening links and runs
        ``MathLink`CreateFrontEndLinks[]``, whose LinkCreates the hook redirects."""
        names = minijson.loads(payload.decode())
        assert isinstance(names, list)
        failed = []
        self.setting_up = True
        try:
            for role, name in (("service", names[0]), ("preemptive", names[1])):
                made = self.link_create_connect(name, role)
                if isinstance(made, str):
                    failed.append(made)
                else:
                    target, data, message, hello_sent = made
                    self.start_link(role, target, data, message, hello_sent=hello_sent)
        finally:
            self.setting_up = False
        return failed[0].encode() if failed else b"linked"

    def user_link(self) -> bytes:
        """User code after start-up: a link the kernel's own host serves on 127.0.0.1 (here the
        kernel listens itself), connected to with ``LinkMode -> Connect``."""
        listening = _Listening("127.0.0.1", (0, 0))
        name = listening.name
        try:
            made = self.link_create_connect(name)
            if isinstance(made, str):
                return made.encode()
            target, data, message, _ = made
            served = listening.accepted()
            for sock in (data, message, *served):
                sock.close()
        finally:
            listening.close()
        return f"{'direct' if target == name else 'redirected'} {target}".encode()

    def start_link(
        self, role: str, name: str, data: Socket, message: Socket, *, hello_sent: bool = False
    ) -> None:
        link = _Link(self, role, name, data, message, hello_sent)
        self.links.append(link)
        _start_thread(link.serve)

    def serve(self, data: Socket, message: Socket, *, hello_sent: bool = False) -> int:
        main = self.main = _Link(self, "main", self.flags.link_name, data, message, hello_sent)
        if self.exit_now is not None:
            return self.exit_at_once(main)
        main.serve()
        for link in self.links:  # the main link closed: the kernel exits
            link.close()
        return self.exit_status

    def exit_at_once(self, main: _Link) -> int:
        """``-simexit STATUS``: the link is up; say HELLO and why, end it, exit with STATUS
        (whatever the front end wrote stays unread: the channels may end with a RST)."""
        assert self.exit_now is not None
        try:
            if not main.hello_sent:
                main.send(wire.HELLO, self.hello("main", main.name))
            main.send(wire.MESSAGE, b"simulated: the kernel ends its link on its own")
        except OSError:
            pass
        main.close()
        return self.exit_now


class _Link:
    """One link's two channels: the data channel in the serving thread, the message channel
    in a thread of its own, so urgent messages are answered while an evaluation runs."""

    def __init__(
        self,
        kernel: SimKernel,
        role: str,
        name: str | None,
        data: Socket,
        message: Socket,
        hello_sent: bool = False,
    ) -> None:
        self.kernel, self.role, self.name = kernel, role, name
        self.data, self.message = data, message
        self.hello_sent = hello_sent  # written before the message channel existed
        self.abort = _Event()

    def send(self, kind: int, payload: bytes = b"") -> None:
        self.data.sendall(wire.data_frame(kind, payload))

    def serve(self) -> None:
        try:
            if not self.hello_sent:
                self.send(wire.HELLO, self.kernel.hello(self.role, self.name))
            _start_thread(self.urgent)
            if self.role == "main" and self.kernel.hook is not None and self.kernel.method == "old":
                self.kernel.old_method_links(self)
            self.evaluate()
        except (LinkClosed, OSError):
            pass
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
                self.send(wire.RETURN, self.kernel.new_method_links(payload))
            elif kind == wire.USER_LINK:
                self.send(wire.RETURN, self.kernel.user_link())
            elif kind == wire.QUIT and self.role == "main":
                self.kernel.exit_status = int(payload or b"0")
                return

    def urgent(self) -> None:
        try:
            while True:
                code, arg = wire.message(_recv_exact(self.message, wire.MESSAGE_SIZE))
                if code == wire.TERMINATE:
                    break
                if code == wire.ABORT:
                    self.abort.set()  # the evaluation in progress, or the next one
                self.message.sendall(wire.message_frame(code, arg))  # acknowledged here
        except (LinkClosed, OSError):
            pass
        # A link is its two channels: when the message channel ends the link is dead, and a
        # kernel exits when its link closes (§5). Closing both wakes the data channel's read.
        self.close()

    def close(self) -> None:
        for sock in (self.data, self.message):
            try:
                if self.kernel.close_how == "reset":  # SO_LINGER on, 0 s: close sends a RST
                    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_0)
                else:
                    sock.shutdown(_socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


STARTUP_S = 1.0  # a real kernel's start-up, on the order of a second (§4)
CONNECT_JOIN_S = 300.0  # bounds the wait for the message channel's connect (a blocking connect
# gives up on its own well before: the kernel's TCP SYN retries)
SOCKETS_VERSION = 11.2  # SocketReadyQ, which the hook's socket transport needs
_LINGER_0 = (1).to_bytes(4, sys.byteorder) + bytes(4)  # struct linger {1, 0} (no struct import)
_CHOICES = {
    "-simhello": ("early", "linked", "random"),
    "-simclose": ("fin", "reset"),
    "-simorder": ("data", "message", "parallel", "random"),
}


def _sim_option(flags: KernelFlags, name: str, default: float) -> float:
    """A simulator-only flag (``-simversion V``, ``-simstartup S``) among the ignored ones."""
    word = _sim_word(flags, name, needs_value=False)
    return default if word is None else float(word)


def _sim_word(flags: KernelFlags, name: str, *, needs_value: bool = True) -> str | None:
    """The word after a simulator-only flag among the ignored ones (``-simgate PATH``), as
    given; None when the flag is absent (or, unless ``needs_value``, is the last word)."""
    ignored = [word.lower() for word in flags.ignored]
    if name in ignored:
        i = ignored.index(name)
        if i + 1 < len(ignored):
            return flags.ignored[i + 1]
        if needs_value:
            raise ValueError(f"{name} needs a value")
    return None


GATE_TIMEOUT_S = 120.0  # bounds the wait at a test's gate


def _wait_at_gate(path: str) -> None:
    """``-simgate PATH``: hold the start-up until the gate's owner writes or hangs up."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(GATE_TIMEOUT_S)
        sock.connect(path)
        sock.recv(1)
    finally:
        sock.close()


def _age_s() -> float:
    """Seconds since this process was exec'd (Linux: /proc/self/stat's start time against
    the boot clock, 10 ms ticks); 0 where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def _sim_version(flags: KernelFlags) -> float:
    return _sim_option(flags, "-simversion", 14.1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        flags = parse_flags(argv)
        version = _sim_version(flags)
        _sim_option(flags, "-simstartup", STARTUP_S)
        gate = _sim_word(flags, "-simgate")
        rude = {name: _sim_word(flags, name) for name in _CHOICES}
        for name, word in rude.items():
            if word is not None and word.lower() not in _CHOICES[name]:
                raise ValueError(f"{name} takes one of {', '.join(_CHOICES[name])}, not {word!r}")
        gap_s = _sim_option(flags, "-simgap", 0.0)
        exit_word = _sim_word(flags, "-simexit")
        exit_now = None if exit_word is None else int(exit_word)
    except ValueError as exc:
        print(f"relay-sim-kernel: {exc}", file=sys.stderr)
        return 2
    if "-version" in (word.lower() for word in flags.ignored):
        print(f"{version:g}.0")
        return 0
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
    kernel.hello_when = (rude["-simhello"] or "random").lower()
    kernel.close_how = (rude["-simclose"] or "fin").lower()
    kernel.order = (rude["-simorder"] or kernel.order).lower()
    kernel.gap_s, kernel.exit_now = gap_s, exit_now
    startup = _sim_option(flags, "-simstartup", STARTUP_S) - _age_s()
    if startup > 0:
        time.sleep(startup)  # starting up: licence, paclets, init files
    if gate is not None:
        try:
            _wait_at_gate(gate)
        except OSError as exc:
            print(f"relay-sim-kernel: cannot wait at the gate {gate}: {exc}", file=sys.stderr)
            return 1
    mode = flags.link_mode or "connect"
    if mode == "connect":
        if not flags.link_name:
            print("relay-sim-kernel: -LinkMode Connect needs -LinkName", file=sys.stderr)
            return 2
        first = kernel.first("main", flags.link_name)
        try:
            data, message = connect(LinkName.parse(flags.link_name), kernel.order, first, gap_s)
        except (ValueError, OSError) as exc:
            print(f"relay-sim-kernel: cannot connect to {flags.link_name}: {exc}", file=sys.stderr)
            return 1
    elif mode == "listen":
        data, message, first = kernel.listen()
    else:
        print(f"relay-sim-kernel: -LinkMode {mode} is not simulated", file=sys.stderr)
        return 2
    return kernel.serve(data, message, hello_sent=bool(first))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
