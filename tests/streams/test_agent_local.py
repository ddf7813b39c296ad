"""relay's agent (relay/agent/remote.py) run here as sshd would run it, under every Python 3
this machine has: its minimum version checked by a tool, and its contract (docs/agent.md)
spoken to its socket directly, as sshd's direct-streamlocal channel does: the start line,
the secret, a link's bytes both ways, a detach and a resume with nothing lost or repeated,
kernels started and ended, the window, and its files shut to others.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import re
import resource
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import structlog

from relay.agent import mux, remote
from relay.agent.mux import Frame, FrameReader
from relay.agent.session import AgentInfo
from relay.agent.start import (
    Superseded,
    Unavailable,
    agent_file,
    parse_install_and_start,
    parse_start,
)
from relay.errors import ConnectFailed, KernelMissing
from relay.ssh.supervisor import Supervisor
from tests.conftest import pid_alive
from tests.strangers import (
    CLOSES_WHEN_TOLD,
    DEFERRED,
    NOBODY,
    SQUAT_DIR,
    SYSTEM_PYTHON,
    as_nobody,
    half_closed,
    needs_second_uid,
    stranger,
)
from tests.streams.test_supervisor_which import _Process as Scripted
from tests.tmpcleaner import NO_TMPFILES, TMPFILES, age, tmp_cleaner

AGENT = Path(__file__).parents[2] / "relay" / "agent" / "remote.py"
BOUND_S = 20.0


def interpreters() -> list[str]:
    """Every distinct Python 3 here that runs: on PATH (python3.6 ... python3.13, python3) and
    pyenv's versions (whose shims run only the selected one)."""
    found: dict[str, str] = {}
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python3.{minor}") for minor in range(6, 14)]
    candidates += [shutil.which("python3"), *map(str, sorted(pyenv.glob("3.*/bin/python3")))]
    for path in candidates:
        if path is None:
            continue
        try:
            real = subprocess.run(
                [path, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        except (subprocess.SubprocessError, OSError):
            continue
        found.setdefault(real, path)
    return sorted(found.values())


def test_minimum_python_is_3_6_by_vermin() -> None:
    vermin = Path(sys.executable).parent / "vermin"
    assert vermin.exists(), "vermin is in the dev extras: pip install -e '.[dev]'"
    out = subprocess.run(
        [str(vermin), "--no-tips", "--violations", "-t=3.6-", str(AGENT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    listed = subprocess.run(
        [str(vermin), "--no-tips", str(AGENT)], capture_output=True, text=True, timeout=120
    ).stdout
    found = re.search(r"Minimum required versions: (?:2\.\d+, )?3\.(\d+)", listed)
    assert found and int(found.group(1)) <= 6, listed


class Attached:
    """The daemon's end of a channel to the agent: frames out, frames in."""

    def __init__(
        self,
        path: str,
        secret: str,
        recv: dict[int, int],
        window_s: float,
        silence_s: float = 5,
        handed: dict[int, int] | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(BOUND_S)
        self.sock.connect(path)
        self.reader = FrameReader()
        self.pending: list[Frame] = []
        nonce = secrets.token_bytes(32)
        try:
            challenge = self.frame()  # sent by the agent as it accepts
            assert challenge.type == mux.CHALLENGE and len(challenge.payload) == 32, challenge
            hello = {
                "nonce": nonce.hex(),
                "proof": mux.proof(secret.encode(), mux.DAEMON, challenge.payload, nonce),
                "recv": {str(k): v for k, v in recv.items()},
                "handed": {str(k): v for k, v in (recv if handed is None else handed).items()},
                "silence_s": silence_s,
                "window_s": window_s,
            }
            self.sock.sendall(mux.encode(mux.HELLO, 0, json.dumps(hello).encode()))
            first = self.frame()
        except BaseException:
            self.sock.close()
            raise
        assert first.type == mux.WELCOME, first
        welcome = json.loads(first.payload)
        # the agent's own proof: over our nonce and its challenge, the other way round
        shown = mux.proof(secret.encode(), mux.AGENT, nonce, challenge.payload)
        assert welcome["proof"] == shown, welcome
        self.welcome: dict[str, int] = welcome["recv"]
        self.ending: str | None = welcome.get("ending")  # why the agent ends, if it does

    def frame(self) -> Frame:
        while not self.pending:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the agent closed the channel")
            self.pending += self.reader.feed(data)
        return self.pending.pop(0)

    def send(self, ftype: int, sid: int, payload: bytes = b"") -> None:
        self.sock.sendall(mux.encode(ftype, sid, payload))

    def close(self) -> None:
        self.sock.close()


class Agent:
    """One agent started here, and what the daemon keeps of its streams."""

    def __init__(
        self,
        python: str,
        run: Path,
        tag: str,
        window_s: float = 60,
        files: int | None = None,
        prelude: str | None = None,
        generation: int | None = None,
    ) -> None:
        """``files``: the agent's limit on open files, soft and hard (a host's ulimit -n).
        ``prelude``: Python run first in the agent's process (``start_patched``'s way).
        ``generation``: the daemon's number for the start (none: as an older daemon's)."""
        env = dict(os.environ, TMPDIR=str(run))

        def limited() -> None:
            if files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

        argv = [python, "-I", str(AGENT), "start", tag, str(window_s)]
        if generation is not None:
            argv.append(str(generation))
        if prelude is not None:
            argv[2:3] = ["-c", patched(prelude, tag, window_s, generation)]
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            preexec_fn=limited if files is not None else None,
        )
        self.said = done.stdout
        started = parse_start("here", done.returncode, done.stdout, done.stderr)
        self.info: AgentInfo | Unavailable | Superseded
        self.info, self.secret = started if isinstance(started, tuple) else (started, "")
        self.window_s = window_s
        self.recv: dict[int, int] = {0: 0}  # what this "daemon" took in, per stream
        self.lines: list[str] = []
        self.frames: list[Frame] = []
        self.chan: Attached | None = None

    @property
    def pid(self) -> int:
        assert isinstance(self.info, AgentInfo), self.said
        return self.info.pid

    def attach(self, silence_s: float = 5, handed: dict[int, int] | None = None) -> Attached:
        """``handed``: what of ``recv`` this daemon's front ends have taken (all, if None)."""
        assert isinstance(self.info, AgentInfo), self.said
        self.chan = Attached(
            self.info.socket, self.secret, self.recv, self.window_s, silence_s, handed
        )
        return self.chan

    def goodbye(self) -> None:
        """BYE (attached first if need be), and the agent gone."""
        chan = self.chan or self.attach()
        chan.send(mux.BYE, 0)
        wait_gone(self.pid)
        chan.close()

    def _read(self) -> None:
        """One frame from the agent: counted and acknowledged at once; a control line kept
        for ``line``, a link's frame for ``take``."""
        assert self.chan is not None
        frame = self.chan.frame()
        if frame.type in (mux.ACK, mux.BYE):
            return
        self.recv[frame.stream] = self.recv.get(frame.stream, 0) + frame.size
        self.chan.sock.sendall(mux.ack(frame.stream, self.recv[frame.stream]))
        if frame.stream == 0:
            self.lines += frame.payload.decode().splitlines()
        else:
            self.frames.append(frame)

    def take(self) -> Frame:
        """The next frame of a link's stream."""
        while not self.frames:
            self._read()
        return self.frames.pop(0)

    def kernel_link(self, sid: int = 1) -> socket.socket:
        """``listen SID``, and a kernel connected to that listener (its OPEN taken): the
        kernel's socket."""
        self.say(f"listen {sid}")
        port = int(self.line(f"port {sid} ").split()[2])
        kernel = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
        assert self.take().type == mux.OPEN
        return kernel

    def say(self, line: str) -> None:
        assert self.chan is not None
        self.chan.send(mux.DATA, 0, (line + "\n").encode())

    def line(self, prefix: str) -> str:
        """The first control line starting with ``prefix`` (reading frames until it comes)."""
        deadline = time.monotonic() + BOUND_S
        while True:
            for i, line in enumerate(self.lines):
                if line.startswith(prefix):
                    return self.lines.pop(i)
            assert time.monotonic() < deadline, (prefix, self.lines)
            self._read()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):  # reaped before either look
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, timeout_s: float = BOUND_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.05)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Path]:
    """A TMPDIR for agents, and every agent started in it ended afterwards."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    yield directory
    for pid_file in directory.glob("relay-agent-*/*.pid"):
        words = pid_file.read_text().split()
        if words and words[0].isdigit():
            pid = int(words[0])
            if not gone(pid):
                with contextlib.suppress(ProcessLookupError):  # it may end as we look
                    os.kill(pid, signal.SIGTERM)
                wait_gone(pid)


@pytest.mark.parametrize("python", interpreters())
def test_a_link_carries_bytes_and_resumes_with_nothing_lost_or_repeated(
    python: str, run: Path
) -> None:
    agent = Agent(python, run, "a1")
    assert isinstance(agent.info, AgentInfo), agent.said
    directory = Path(agent.info.socket).parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(agent.info.socket).stat().st_mode) == 0o600
    agent.attach()
    agent.say("ping p1")
    agent.line("pong p1")
    kernel = agent.kernel_link()
    port = kernel.getpeername()[1]
    with pytest.raises(ConnectionRefusedError):  # its listener closed once it was admitted
        socket.create_connection(("127.0.0.1", port), timeout=BOUND_S).recv(1)
    to_kernel, from_kernel = secrets.token_bytes(600_000), secrets.token_bytes(500_000)
    assert agent.chan is not None
    agent.chan.send(mux.DATA, 1, to_kernel[:300_000])
    got = b""
    while len(got) < 300_000:
        got += kernel.recv(1 << 20)
    kernel.sendall(from_kernel[:200_000])
    taken = b""
    while len(taken) < 200_000:
        frame = agent.take()
        taken += frame.payload
    # the channel dies: bytes from both sides meanwhile, none of the daemon's acknowledged
    agent.chan.send(mux.DATA, 1, to_kernel[300_000:400_000])  # may be lost with the channel
    agent.chan.close()
    kernel.sendall(from_kernel[200_000:])
    agent.attach()  # says what it received; the agent replays the rest
    assert agent.chan is not None
    sent_upto = int(agent.chan.welcome["1"])  # what reached it: the rest is resent
    assert sent_upto in (300_000, 400_000)
    agent.chan.send(mux.DATA, 1, to_kernel[sent_upto:])
    while len(taken) < len(from_kernel):
        taken += agent.take().payload
    assert taken == from_kernel
    while len(got) < len(to_kernel):
        got += kernel.recv(1 << 20)
    assert got == to_kernel
    kernel.close()
    assert agent.take().type == mux.EOF
    agent.say("start k1 set -- /bin/sh -c 'echo one; echo two; exit 3'")
    pid = int(agent.line("pid k1 ").split()[2])
    assert agent.line("out k1 ") == "out k1 one"
    assert agent.line("out k1 ") == "out k1 two"
    exit_line = agent.line("exit k1 ").split()
    assert exit_line[:3] == ["exit", "k1", "3"]
    assert abs(float(exit_line[3]) - time.time()) < BOUND_S  # when, on the host's clock
    assert exit_line[4] == "0"  # no signal ended it
    wait_gone(pid)
    # STATUS 137 either way; the signal says which (a kernel's own exit is no SIGKILL)
    agent.say("start k3 set -- /bin/sh -c 'exit 137'")
    agent.line("pid k3 ")
    assert agent.line("exit k3 ").split()[2::2] == ["137", "0"]
    agent.say("start k4 set -- /bin/sh -c 'kill -KILL $$'")
    agent.line("pid k4 ")
    assert agent.line("exit k4 ").split()[2::2] == ["137", "9"]
    agent.say("start k2 set -- /nonexistent/kernel")
    agent.line("nokernel k2")
    agent.chan.send(mux.BYE, 0)
    wait_gone(agent.pid)
    agent.chan.close()


def recv_until_eof(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(1 << 16):
        got += chunk
    return got


# the agent's reader of /proc/net/tcp (untyped, as all of its Python 3.6 file), typed here
TCP_TABLE: Callable[[int], Iterator[list[str]]] = remote.tcp_table


def taken_in(sock: socket.socket) -> None:
    """Until the agent has read everything ``sock`` sent: its end's receive queue is empty in
    /proc/net/tcp (the agent's own reader of it, ``remote.tcp_table``; bounded)."""
    here, there = sock.getsockname()[1], sock.getpeername()[1]
    ends = (f"0100007F:{there:04X}", f"0100007F:{here:04X}")
    deadline = time.monotonic() + BOUND_S
    while True:
        queues = [cols[4].split(":")[1] for cols in TCP_TABLE(there) if (cols[1], cols[2]) == ends]
        if queues == ["00000000"]:
            return
        assert time.monotonic() < deadline, queues
        time.sleep(0.01)


@pytest.mark.parametrize("python", interpreters())
def test_hook_requests_and_a_kernels_own_listener_go_through_and_resume(
    python: str, run: Path
) -> None:
    """``serve``: each connection's request line goes on as "N LINE" and the daemon's "N
    REPLY" comes back to it, also across a channel lost in between, and for a request made
    while no channel was attached. ``connect``: a stream
    to a listener of the kernel's, what the daemon sent first waiting for the connection;
    to a port nobody listens on, ``noconnect`` and CLOSE."""
    agent = Agent(python, run, "c1")
    chan = agent.attach()
    agent.say("serve 2")
    port = int(agent.line("port 2 ").split()[2])
    asker = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
    asker.sendall(b"relay-hook t1 callback 1@127.0.0.1,2@127.0.0.1\n")
    assert agent.take() == Frame(mux.DATA, 2, b"1 relay-hook t1 callback 1@127.0.0.1,2@127.0.0.1\n")
    chan.send(mux.DATA, 2, b"1 OK t2 5@127.0.0.1,6@127.0.0.1\n")
    assert recv_until_eof(asker) == b"OK t2 5@127.0.0.1,6@127.0.0.1\n"
    asker.close()
    # a request whose reply is on its way when the channel is lost
    later = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
    later.sendall(b"relay-hook t2 listen-pair -\n")
    assert agent.take() == Frame(mux.DATA, 2, b"2 relay-hook t2 listen-pair -\n")
    chan.close()
    chan = agent.attach()
    chan.send(mux.DATA, 2, b"2 OK t3 7@127.0.0.1,8@127.0.0.1\n")
    assert recv_until_eof(later) == b"OK t3 7@127.0.0.1,8@127.0.0.1\n"
    later.close()
    # a request made during an outage (no channel attached): the agent takes it in and
    # keeps it; it goes on at the next attach, and the reply to it comes back. The kernel's
    # main link keeps the agent (with no link and no daemon it would exit)
    main_link = agent.kernel_link(9)
    chan.close()
    during = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
    during.sendall(b"relay-hook t4 listen-pair -\n")
    taken_in(during)
    chan = agent.attach()
    assert agent.take() == Frame(mux.DATA, 2, b"3 relay-hook t4 listen-pair -\n")
    chan.send(mux.DATA, 2, b"3 OK t5 9@127.0.0.1,10@127.0.0.1\n")
    assert recv_until_eof(during) == b"OK t5 9@127.0.0.1,10@127.0.0.1\n"
    during.close()
    # a stream to a kernel's own listener; the front end's first bytes wait for it
    kernel = socket.create_server(("127.0.0.1", 0))
    kernel_port = kernel.getsockname()[1]
    agent.say(f"connect 3 {kernel_port}")
    chan.send(mux.DATA, 3, b"written the instant it accepted")
    conn, _ = kernel.accept()
    assert agent.take() == Frame(mux.OPEN, 3, b"")
    conn.settimeout(BOUND_S)
    assert conn.recv(100) == b"written the instant it accepted"
    conn.sendall(b"and back")
    assert agent.take() == Frame(mux.DATA, 3, b"and back")
    conn.close()
    kernel.close()
    assert agent.take() == Frame(mux.EOF, 3, b"")
    # nobody listens there now
    agent.say(f"connect 4 {kernel_port}")
    assert "nothing listens there" in agent.line("noconnect 4 ")
    assert agent.take() == Frame(mux.CLOSE, 4, b"")
    agent.say("drop 2")
    agent.say("ping d")
    agent.line("pong d")  # the drop is done
    with pytest.raises(ConnectionRefusedError):  # the hook's listener went with its stream
        socket.create_connection(("127.0.0.1", port), timeout=BOUND_S).recv(1)
    chan.send(mux.BYE, 0)
    wait_gone(agent.pid)
    chan.close()
    main_link.close()


def tcp_buffer_max(name: str) -> int:
    """The most a socket's ``name`` (rmem, wmem) buffer can grow to here."""
    return int(Path(f"/proc/sys/net/ipv4/tcp_{name}").read_text().split()[2])


def write_until_held_back(sock: socket.socket, payload: bytes, quiet_s: float = 2.0) -> int:
    """Write ``payload`` as fast as ``sock`` takes it, until it takes nothing for ``quiet_s``
    (the reader has stopped reading and every buffer between is full) or all is written;
    how much was written. (The one wait here for something not to happen: it only decides
    when to go on, and a reader that never stops lets the writer finish, which the caller
    sees.)"""
    sock.setblocking(False)
    view, at = memoryview(payload), 0
    deadline = time.monotonic() + 4 * BOUND_S
    try:
        while at < len(payload):
            assert time.monotonic() < deadline, f"{at} bytes written in {4 * BOUND_S:g} s"
            try:
                at += sock.send(view[at : at + (1 << 20)])
            except BlockingIOError:
                if not select.select([], [sock], [], quiet_s)[1]:
                    break
    finally:
        sock.settimeout(BOUND_S)
    return at


def test_a_kernel_writing_through_an_outage_is_held_back_and_loses_nothing(run: Path) -> None:
    """No daemon attached, a kernel writes more than the agent keeps: past mux.LIMIT
    unacknowledged (plus the one read that crossed it) the agent stops reading the link, so
    TCP holds the kernel back and the agent's memory stays bounded; re-attached, it replays
    what it kept and sends no more until acknowledged, then every byte arrives once, in
    order (docs/agent.md, Sequencing)."""
    agent = Agent(sys.executable, run, "e5")
    chan = agent.attach()
    kernel = agent.kernel_link()
    chan.close()  # the connection is lost: nobody acknowledges anything now
    one_read = remote.CHUNK
    kept_at_most = mux.LIMIT + one_read
    # more than the agent keeps and both sockets' buffers at their largest can hold
    payload = secrets.token_bytes(
        kept_at_most + tcp_buffer_max("rmem") + tcp_buffer_max("wmem") + (1 << 20)
    )
    written, total = write_until_held_back(kernel, payload), len(payload)
    assert written < total, "the agent read on past what it may keep"
    chan = agent.attach()
    agent.say("ping held")  # answered after the replay, which attaching queued first
    got = bytearray()
    while True:
        frame = chan.frame()
        if frame.stream == 0 and frame.type == mux.DATA:
            agent.recv[0] += frame.size
            if b"pong held" in frame.payload:
                break
        elif frame.stream == 1 and frame.type == mux.DATA:
            got += frame.payload
            assert len(got) <= kept_at_most, "sent on past LIMIT with nothing acknowledged"
    agent.recv[1] += len(got)
    chan.sock.sendall(mux.ack(1, agent.recv[1]))
    rest = threading.Thread(target=kernel.sendall, args=(payload[written:],))
    rest.start()
    while len(got) < total:
        frame = agent.take()
        assert frame.type == mux.DATA, frame
        got += frame.payload
    rest.join(BOUND_S)
    assert not rest.is_alive()
    assert got == payload
    kernel.close()
    assert agent.take() == Frame(mux.EOF, 1, b"")
    chan.send(mux.BYE, 0)
    wait_gone(agent.pid)
    chan.close()


def pings(agent: Agent, chan: Attached, label: str, n: int = 3) -> bytes:
    """``n`` pings, each sent once the one before was answered; what link 1 sent meanwhile.
    A barrier: the agent answers a ping in the loop turn that read it, so the last pong comes
    after every turn in which a readable link (its selector reports it at every turn) would
    have been read and its bytes queued ahead of that pong."""
    got = bytearray()
    for i in range(n):
        agent.say(f"ping {label}{i}")
        while True:
            frame = chan.frame()
            if frame.stream == 0 and frame.type == mux.DATA:
                agent.recv[0] += frame.size
                if f"pong {label}{i}".encode() in frame.payload:
                    break
            elif frame.stream == 1 and frame.type == mux.DATA:
                got += frame.payload
    return bytes(got)


def test_a_link_held_at_the_limit_is_read_again_only_once_half_is_acknowledged(
    run: Path,
) -> None:
    """A link stopped at mux.LIMIT unacknowledged is not read again at the next ACK but
    once no more than half of LIMIT is unacknowledged (remote.Agent.interest): a transfer
    is not taken off the selector and put back at every ACK. Then every byte arrives once."""
    agent = Agent(sys.executable, run, "e6")
    chan = agent.attach(silence_s=BOUND_S)  # not given up on while the kernel fills its buffers
    kernel = agent.kernel_link()
    payload = secrets.token_bytes(
        mux.LIMIT + remote.CHUNK + tcp_buffer_max("rmem") + tcp_buffer_max("wmem") + (4 << 20)
    )
    written = write_until_held_back(kernel, payload)  # nothing acknowledged: it stops
    assert written < len(payload), "the agent read on past what it may keep"
    got = pings(agent, chan, "full")
    assert mux.LIMIT <= len(got) <= mux.LIMIT + remote.CHUNK, len(got)
    assert len(pings(agent, chan, "still")) == 0, "read on with nothing acknowledged"
    sent = agent.recv[1] + len(got)  # the stream's position (its OPEN took one)
    # acknowledged down to between half of LIMIT and LIMIT: still held
    chan.sock.sendall(mux.ack(1, sent - (mux.LIMIT // 2 + mux.LIMIT // 4)))
    assert len(pings(agent, chan, "threequarters")) == 0, "read before half was acknowledged"
    # acknowledged down to half: read again
    chan.sock.sendall(mux.ack(1, sent - mux.LIMIT // 2))
    more = pings(agent, chan, "half")
    assert more, "not read again once half was acknowledged"
    got += more
    agent.recv[1] += len(got)
    chan.sock.sendall(mux.ack(1, agent.recv[1]))
    rest = threading.Thread(target=kernel.sendall, args=(payload[written:],))
    rest.start()
    while len(got) < len(payload):
        frame = agent.take()  # acknowledged as it comes from now on
        assert frame.type == mux.DATA, frame
        got += frame.payload
    rest.join(BOUND_S)
    assert not rest.is_alive()
    assert got == payload
    kernel.close()
    assert agent.take() == Frame(mux.EOF, 1, b"")
    agent.goodbye()


def test_the_secret_is_the_agents_own_said_once_on_its_start_line(run: Path) -> None:
    """The agent makes its secret (32 random bytes, one per start) and says it only on its
    start line, which the session's standard output carries to the daemon: not in argv, not
    in a file of its own, and no message of relay's quotes a start line it cannot read."""
    first, second = Agent(sys.executable, run, "c1"), Agent(sys.executable, run, "c2")
    try:
        for agent in (first, second):
            assert re.fullmatch("[0-9a-f]{64}", agent.secret), agent.said
            assert agent.secret not in Path(f"/proc/{agent.pid}/cmdline").read_text()
            assert isinstance(agent.info, AgentInfo), agent.said
            directory = Path(agent.info.socket).parent
            for path in directory.iterdir():
                if path.is_file():
                    assert agent.secret not in path.read_text(errors="replace"), path
        assert first.secret != second.secret
        first.goodbye()  # attached first: the daemon's side proves the secret it was told
    finally:
        for agent in (first, second):
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.pid, signal.SIGTERM)
            wait_gone(agent.pid)
    line = f"agent 1 {'ab' * 32} 42 /tmp/x.sock 0 proc"  # a field short
    refused = parse_start("h", 0, line + "\n")
    assert isinstance(refused, Unavailable) and "ab" * 4 not in refused.reason, refused
    assert refused.reason == "relay's agent did not start (exit 0, said 'agent 1 ...')"
    # glued to what a background job of ~/.bashrc printed, no line starts with it (a review's
    # finding: the 80 bytes quoted instead held most of the secret)
    glued = parse_start("h", 0, f"done agent 1 {'ab' * 32} 42 /tmp/x.sock 0 proc 0\n")
    assert glued == Unavailable("relay's agent did not start (exit 0, said 'done agent 1 ... 42')")


def test_a_start_cut_off_with_its_connection_is_a_lost_connection() -> None:
    """No exit status: the connection was lost while the agent started, which says nothing
    of the host (the next connection starts it), not a host where it cannot run. So too
    while the installer sent its file back (a review's finding: "sha256 differs; disk
    full?", the host then taken for one where the agent cannot run)."""
    with pytest.raises(ConnectFailed, match="lost while relay's agent started"):
        parse_start("h", None, "")
    agent = agent_file()
    answer = f"\nok /home/u/.cache/relay/{agent.version}/{agent.name}\n".encode()
    with pytest.raises(ConnectFailed, match="lost while relay installed relay's agent"):
        parse_install_and_start("h", None, answer + agent.data[:4096])
    with pytest.raises(ConnectFailed, match="lost while relay's agent started"):
        parse_install_and_start("h", None, answer + agent.data)
    assert parse_start("h", 0, "agent none\n") == Unavailable("no python3 on h's PATH")


def test_an_agent_that_crashed_at_its_start_says_why() -> None:
    """Any crash before its start line (a socket path too long for TMPDIR): the exception,
    from stderr, is the reason the host keeps the old path."""
    crashed = parse_start(
        "h",
        1,
        "",
        'Traceback (most recent call last):\n  File "relayagent.py", line 1310, in start\n'
        "OSError: AF_UNIX path too long\n",
    )
    assert crashed == Unavailable(
        "relay's agent did not start (exit 1, said 'OSError: AF_UNIX path too long')"
    )


def patched(prelude: str, tag: str, window_s: float = 60, generation: int | None = None) -> str:
    """Python that runs the agent's start as the daemon does, after ``prelude``: a stand-in
    for a host this machine is not (an older Python, a clock that is stepped)."""
    numbered = [] if generation is None else [str(generation)]
    return (
        f"{prelude}\nimport runpy, sys\n"
        f"sys.argv = {[str(AGENT), 'start', tag, str(window_s), *numbered]!r}\n"
        f"runpy.run_path({str(AGENT)!r}, run_name='__main__')"
    )


def info(started: tuple[AgentInfo, str] | Unavailable | Superseded, said: object) -> AgentInfo:
    """What a start that worked said (its secret aside)."""
    assert isinstance(started, tuple), said
    return started[0]


def start_patched(run: Path, tag: str, prelude: str) -> subprocess.CompletedProcess[str]:
    """The agent's start in this Python after ``prelude`` (``patched``)."""
    return subprocess.run(
        [sys.executable, "-I", "-c", patched(prelude, tag)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(os.environ, TMPDIR=str(run)),
        timeout=60,
    )


def test_a_python3_older_than_3_6_is_said_and_starts_nothing(run: Path) -> None:
    """vermin puts the agent's floor at 3.5, but it is written for and tested with 3.6 and
    later: a 3.5 says so (here, this Python reporting 3.5, as none older than 3.6 is here)
    instead of starting, or crashing once its start had been reported."""
    done = start_patched(run, "a7", "import sys; sys.version_info = (3, 5, 10, 'final', 0)")
    assert done.returncode == 0 and done.stdout == "\nagent old 3.5\n", done
    assert parse_start("h", 0, done.stdout) == Unavailable(
        "python3 on h is 3.5; relay's agent needs 3.6 or later"
    )
    assert not list(run.iterdir())  # not even its run directory


def test_a_crash_after_the_start_line_is_written_down(run: Path) -> None:
    """A crash once the start has been reported (here: os.set_blocking gone, as on 3.4) is
    written to TAG.err in the run directory, and the agent's socket and pid file go."""
    done = start_patched(run, "a8", "import os; del os.set_blocking")
    started = info(parse_start("h", done.returncode, done.stdout, done.stderr), done)
    err = Path(started.socket).with_suffix(".err")
    wait_gone(started.pid)  # its socket, then its pid file, go before it exits
    assert not Path(started.socket).exists()
    assert "AttributeError" in err.read_text() and "set_blocking" in err.read_text()
    assert not (err.parent / "a8.pid").exists()


def test_a_pid_file_it_cannot_write_is_named(run: Path) -> None:
    """Its pid file cannot be written (here a directory is in its way; a full disk or a
    quota on a host): said as such, and nothing is left running."""
    directory = run / f"relay-agent-{os.getuid()}"
    directory.mkdir(mode=0o700)
    (directory / "b1.pid").mkdir()
    done = start_patched(run, "b1", "pass")
    assert parse_start("h", done.returncode, done.stdout, done.stderr) == Unavailable(
        f"cannot write {directory}/b1.pid (is the disk full?)"
    ), done
    assert not (directory / "b1.sock").exists()
    (directory / "b1.pid").rmdir()


def test_a_socket_name_an_old_agent_takes_back_meanwhile_is_taken_again(run: Path) -> None:
    """Between a start's unlinking its socket's stale name and binding it, the agent a dead
    daemon left (whose pid file a cleaner took, so it was not ended) may bind the name again
    (``keep``): the start takes it back rather than crash. (The race: the first bind made to
    find the name taken.)"""
    prelude = (
        "import errno, socket\n"
        "_bind, _raced = socket.socket.bind, []\n"
        "def _bind_once_raced(self, address):\n"
        "    if self.family == socket.AF_UNIX and not _raced:\n"
        "        _raced.append(1)\n"
        "        raise OSError(errno.EADDRINUSE, 'Address already in use')\n"
        "    return _bind(self, address)\n"
        "socket.socket.bind = _bind_once_raced"
    )
    done = start_patched(run, "b3", prelude)
    started = info(parse_start("h", done.returncode, done.stdout, done.stderr), done)
    os.kill(started.pid, signal.SIGTERM)
    wait_gone(started.pid)


def test_a_crash_on_its_way_to_the_background_is_said(run: Path) -> None:
    """A fork or setsid that fails (a login node at its process limit; here setsid made to
    fail so) leaves its traceback on stderr, which is the reason the daemon gives."""
    prelude = (
        "import errno, os\n"
        "def _fail(): raise OSError(errno.EAGAIN, 'no processes')\n"
        "os.setsid = _fail"
    )
    done = start_patched(run, "b2", prelude)
    started = parse_start("h", done.returncode, done.stdout, done.stderr)
    assert started == Unavailable(
        "relay's agent did not start (exit 1, said 'BlockingIOError: [Errno 11] no processes')"
    ), done


def test_a_tmpdir_it_cannot_write_in_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    done = start_patched(missing, "a9", "pass")
    assert parse_start("h", done.returncode, done.stdout) == Unavailable(
        f"cannot create {missing}/relay-agent-{os.getuid()} (is TMPDIR a directory you can "
        "write to?)"
    ), done


def test_a_tmpdir_with_a_space_in_its_name(tmp_path: Path) -> None:
    run = tmp_path / "my tmp"
    run.mkdir()
    agent = Agent(sys.executable, run, "aa")
    assert isinstance(agent.info, AgentInfo), agent.said
    assert agent.info.socket == f"{run}/relay-agent-{os.getuid()}/aa.sock"
    agent.goodbye()


def test_a_wrong_secret_gets_nothing(run: Path) -> None:
    agent = Agent(sys.executable, run, "b2")
    assert isinstance(agent.info, AgentInfo)
    agent.secret = "0" * 64
    with pytest.raises(ConnectionError):
        agent.attach()


def _hello_answer(path: str, hello: bytes | Callable[[bytes], bytes]) -> bytes:
    """What the agent sends a connection at its socket that answers its challenge with a
    HELLO frame of ``hello`` (or of what ``hello`` makes of the challenge), up to its
    closing the connection (bounded)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(BOUND_S)
        sock.connect(path)
        reader = FrameReader()
        frames: list[Frame] = []
        while not frames:
            frames += reader.feed(sock.recv(4096))
        assert frames[0].type == mux.CHALLENGE, frames
        payload = hello(frames[0].payload) if callable(hello) else hello
        sock.sendall(mux.encode(mux.HELLO, 0, payload))
        got = b""
        while data := sock.recv(4096):
            got += data
        return got


def _refused(path: str, hello: Mapping[str, object]) -> bytes:
    return _hello_answer(path, json.dumps(hello).encode())


def test_a_hello_that_does_not_prove_the_secret_for_this_challenge_gets_nothing(
    run: Path,
) -> None:
    """The attach shows the secret, never sends it (what answers at the socket may be
    another user's, docs/agent.md): the secret itself in the HELLO, as before, is not
    taken, nor a proof made over another challenge (one an impostor saw on an attach of
    its own), nor one over a nonce of fewer than 32 bytes; each is closed with nothing sent.
    The right proof still attaches."""
    agent = Agent(sys.executable, run, "b3")
    assert isinstance(agent.info, AgentInfo)
    key = agent.secret.encode()
    nonce = secrets.token_bytes(32)
    other = secrets.token_bytes(32)
    for hello in (
        {"secret": agent.secret, "recv": {}},
        {"nonce": nonce.hex(), "proof": mux.proof(key, mux.DAEMON, other, nonce), "recv": {}},
        {"nonce": "ab", "proof": mux.proof(key, mux.DAEMON, other, b"\xab"), "recv": {}},
    ):
        assert _refused(agent.info.socket, hello) == b"", hello
    agent.attach()
    agent.goodbye()


def test_the_window_ends_kernels_and_the_agent(run: Path) -> None:
    agent = Agent(sys.executable, run, "c3", window_s=1)
    agent.attach()
    agent.say("start k1 set -- /bin/sleep 600")
    pid = int(agent.line("pid k1 ").split()[2])
    assert agent.chan is not None
    agent.chan.close()  # and no daemon comes back
    wait_gone(pid, 30)
    wait_gone(agent.pid, 30)


STEPPED = """
import os, time
_wall, _flag = time.time, os.environ["STEP_FLAG"]
time.time = lambda: _wall() + (7200 if os.path.exists(_flag) else 0)
"""


def test_a_wall_clock_stepped_past_the_window_ends_nothing(run: Path, tmp_path: Path) -> None:
    """The host's clock stepped (NTP, `date -s`) by two hours while no daemon is attached: the
    agent counts its window and its silence on a clock nothing sets, so it keeps its link
    and the daemon takes it back. (The step: its time.time, moved when a file appears.)"""
    flag = tmp_path / "stepped"
    os.environ["STEP_FLAG"] = str(flag)  # the agent's environment is this one's
    try:
        agent = Agent(sys.executable, run, "f1", window_s=60, prelude=STEPPED)
    finally:
        del os.environ["STEP_FLAG"]
    agent.attach()
    kernel = agent.kernel_link(1)
    assert agent.chan is not None
    agent.chan.close()
    flag.touch()  # two hours later, by the wall clock
    for word in (b"one", b"two"):  # the second is read a turn of its loop after the first:
        kernel.sendall(word)  # the turn's tick, with the stepped clock, has run
        taken_in(kernel)
    chan = agent.attach()
    got = b""
    while len(got) < len(b"onetwo"):  # replayed, in one frame or two
        frame = agent.take()
        assert frame.type == mux.DATA and frame.stream == 1, frame
        got += frame.payload
    assert got == b"onetwo"
    chan.send(mux.DATA, 1, b"and back")
    kernel.settimeout(BOUND_S)
    assert kernel.recv(100) == b"and back"
    # not ending: an agent whose window had run out would refuse a kernel ("exit k1 143")
    agent.say("start k1 set -- /bin/sleep 600")
    assert agent.line("pid k1 ") and not [ln for ln in agent.lines if ln.startswith("exit k1")]
    kernel.close()
    assert agent.take() == Frame(mux.EOF, 1, b"")
    agent.goodbye()


def test_the_next_agent_of_a_tag_ends_its_predecessor_and_its_kernels(run: Path) -> None:
    first = Agent(sys.executable, run, "d4")
    first.attach()
    first.say("start k1 set -- /bin/sleep 600")
    pid = int(first.line("pid k1 ").split()[2])
    second = Agent(sys.executable, run, "d4")
    assert isinstance(second.info, AgentInfo) and second.info.ended == 1, second.said
    wait_gone(pid)
    wait_gone(first.pid)
    second.attach()
    assert second.chan is not None
    second.chan.send(mux.BYE, 0)
    wait_gone(second.pid)
    second.chan.close()
    assert first.chan is not None
    first.chan.close()


def test_a_start_never_ends_the_agent_of_a_later_start(run: Path) -> None:
    """A start on a connection lost on the client's side alone is kept by sshd, and reaches
    the host after a later connection's start, whose agent carries the kernels (a slow
    login; a review's reproduction through sshd): it ends nothing and starts nothing, and
    says which start's agent runs. A later start than that agent's ends it as ever. A start
    that numbers none counts as 0, older than any numbered one (an agent from before the
    numbers is recorded as 0, and ended by any numbered start)."""
    first = Agent(sys.executable, run, "d5", generation=20)
    first.attach()
    first.say("start k1 set -- /bin/sleep 600")
    kernel = int(first.line("pid k1 ").split()[2])
    pid_file = Path(info(parse_start("h", 0, first.said), first.said).socket).with_suffix(".pid")
    recorded = pid_file.read_text()
    stale = Agent(sys.executable, run, "d5", generation=19)
    assert stale.info == Superseded(20), stale.said
    assert not gone(kernel) and not gone(first.pid) and pid_file.read_text() == recorded
    assert first.chan is not None
    pings(first, first.chan, "alive")  # still attached: answered
    later = Agent(sys.executable, run, "d5", generation=21)
    assert isinstance(later.info, AgentInfo) and later.info.ended == 1, later.said
    wait_gone(kernel)
    wait_gone(first.pid)
    first.chan.close()
    unnumbered = Agent(sys.executable, run, "d5")
    assert isinstance(unnumbered.info, Superseded), unnumbered.said
    later.goodbye()


# flock(2) refused, as a TMPDIR on NFS without lockd (ENOLCK) or on Lustre mounted noflock
NO_LOCKS = (
    "import errno, fcntl\n"
    "def refused(fd, how):\n"
    "    raise OSError(errno.ENOLCK, 'No locks available')\n"
    "fcntl.flock = refused\n"
)


def test_a_tmpdir_without_locks_starts_the_agent_and_still_reads_the_numbers(run: Path) -> None:
    """A file system that refuses flock (HPC scratch as TMPDIR) keeps the agent: its starts
    go on unlocked, and a start still leaves a later start's agent."""
    first = Agent(sys.executable, run, "d7", prelude=NO_LOCKS, generation=20)
    assert isinstance(first.info, AgentInfo), first.said
    stale = Agent(sys.executable, run, "d7", prelude=NO_LOCKS, generation=10)
    assert stale.info == Superseded(20), stale.said
    later = Agent(sys.executable, run, "d7", prelude=NO_LOCKS, generation=30)
    assert isinstance(later.info, AgentInfo) and later.info.ended == 1, later.said
    wait_gone(first.pid)
    later.goodbye()


def test_where_each_start_has_a_directory_of_its_own_a_later_starts_agent_is_left(
    run: Path,
) -> None:
    """The usual run directory is another user's (a shared /tmp): each start makes one of
    its own beside it, and their locks keep nothing apart. The number is read in each
    directory an agent may have run in, just before its signal, so the older start leaves
    the later one's agent."""
    (run / f"relay-agent-{os.getuid()}").write_text("planted\n")
    first = Agent(sys.executable, run, "d8", generation=20)
    assert isinstance(first.info, AgentInfo), first.said
    stale = Agent(sys.executable, run, "d8", generation=10)
    assert stale.info == Superseded(20), stale.said
    assert not gone(first.pid)
    first.goodbye()


# the number of flock(2) in /proc/PID/syscall, where a process blocked in it says so
FLOCK = {"x86_64": 73, "aarch64": 32}.get(os.uname().machine)


def blocked_in_flock(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] == str(FLOCK)
    return False


@pytest.mark.skipif(FLOCK is None, reason="flock's syscall number is known for x86_64, aarch64")
def test_a_start_waits_for_another_start_of_its_tag_to_write_its_pid_file(run: Path) -> None:
    """Two starts of one tag at once: the second looks at the pid file only once the first
    has written its own (a lock on TAG.lock), so it sees the first's agent, here one of a
    later start, and leaves it. Without the lock it would read the pid file before and
    end the agent it names."""
    first = Agent(sys.executable, run, "d6", generation=5)
    assert isinstance(first.info, AgentInfo), first.said
    directory = Path(first.info.socket).parent
    lock = os.open(directory / "d6.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a start of this tag in its turn
        second = subprocess.Popen(
            [sys.executable, "-I", str(AGENT), "start", "d6", "60", "10"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, TMPDIR=str(run)),
        )
        until(lambda: blocked_in_flock(second.pid), "the second start waits on the lock")
        # what the start in its turn does before it lets go: its agent's pid file written
        # (here the first agent's own, as a start later than the second had made it)
        pid_file = directory / "d6.pid"
        pid, started, _ = pid_file.read_text().split()
        pid_file.write_text(f"{pid} {started} 30\n")
    finally:
        os.close(lock)
    said, _ = second.communicate(timeout=BOUND_S)
    assert parse_start("h", second.returncode, said) == Superseded(30), said
    assert not gone(first.pid)
    first.goodbye()


def test_the_kernel_logs_a_killed_agent_left_go_with_the_next_agent_of_its_tag(
    run: Path,
) -> None:
    """An agent killed outright (SIGKILL: an OOM killer) cannot remove its kernels' logs; the
    next agent of its tag, numbering its kernels from k1 again, removes them. Another tag's
    are not its to touch. Nor can it remove a pid file it was putting in place (killed
    between writing TAG.pid.PID.new and linking it): that goes too."""
    first = Agent(sys.executable, run, "e5")
    first.attach()
    first.say("start k1 set -- /bin/sleep 600")
    kernel = int(first.line("pid k1 ").split()[2])
    assert isinstance(first.info, AgentInfo)
    directory = Path(first.info.socket).parent
    assert (directory / "e5-k1.log").exists()
    (directory / "e5-k40.log").write_text("a kernel of an agent before\n")
    (directory / "f6-k1.log").write_text("another tag's\n")
    (directory / f"e5.pid.{first.pid}.new").write_text("half put in place\n")
    (directory / "f6.pid.1.new").write_text("another tag's\n")
    os.kill(first.pid, signal.SIGKILL)
    os.kill(kernel, signal.SIGKILL)  # its own session: not ended with the agent
    wait_gone(first.pid)
    wait_gone(kernel)
    second = Agent(sys.executable, run, "e5")
    assert isinstance(second.info, AgentInfo), second.said
    assert sorted(p.name for p in directory.glob("*.log")) == ["f6-k1.log"]
    assert sorted(p.name for p in directory.glob("*.new")) == ["f6.pid.1.new"]
    second.goodbye()
    (directory / "f6-k1.log").unlink()
    (directory / "f6.pid.1.new").unlink()
    assert first.chan is not None
    first.chan.close()


def test_an_agents_files_stay_in_its_own_directory_when_its_name_is_taken_over(
    run: Path,
) -> None:
    """The run directory goes while the agent lives (a /tmp cleaner; here, moved away) and
    another is made under its name (another user's, where TMPDIR lets them; here, ours) with
    a kernel log's name waiting in it: the agent's next kernel logs into its own directory,
    opened once its checks passed, not into the new one, which it leaves as it found it; its
    pid file goes from its own when it ends."""
    agent = Agent(sys.executable, run, "d9")
    agent.attach()
    assert isinstance(agent.info, AgentInfo)
    directory = Path(agent.info.socket).parent
    moved = directory.with_name(directory.name + "-moved")
    directory.rename(moved)
    directory.mkdir()
    directory.chmod(0o777)  # the name taken over
    bait = directory / "d9-k1.log"
    bait.write_text("")
    agent.say("start k1 set -- /bin/sh -c 'echo said-by-the-kernel >&2; exec sleep 600'")
    kernel = int(agent.line("pid k1 ").split()[2])
    deadline = time.monotonic() + BOUND_S
    while b"said-by-the-kernel" not in (moved / "d9-k1.log").read_bytes():
        assert time.monotonic() < deadline, "the kernel's log was not in the agent's directory"
        time.sleep(0.05)
    assert (moved / "d9.pid").exists()
    agent.goodbye()
    wait_gone(kernel)
    assert not (moved / "d9.pid").exists()
    assert bait.read_text() == "" and sorted(os.listdir(directory)) == ["d9-k1.log"]


def test_with_no_kernel_and_no_daemon_the_agent_exits_before_its_window(run: Path) -> None:
    """Nothing to keep (no kernel, no link) and nobody attached: the agent does not wait out
    its window (an hour here) but exits, its socket and pid file gone with it."""
    agent = Agent(sys.executable, run, "a7", window_s=3600)
    chan = agent.attach()
    agent.say("listen 1")  # a spare listener nothing connected to is not a link
    agent.line("port 1 ")
    agent.say("start k1 set -- /bin/sh -c 'exit 0'")
    agent.line("exit k1 ")
    chan.close()
    wait_gone(agent.pid)
    assert isinstance(agent.info, AgentInfo)
    assert not Path(agent.info.socket).exists()
    assert not Path(agent.info.socket).with_suffix(".pid").exists()


def test_a_listener_given_to_a_kernel_or_forward_keeps_the_agent_through_an_outage(
    run: Path,
) -> None:
    """A requested forward's listeners, or a launch's before its start line came: the daemon
    holds the host for them and resumes, but the agent counted a listener nothing connected
    to as nothing and exited at the outage, and the resume found no agent ("its kernels are
    lost"; a review's finding). Once the daemon says ``take``, it waits; a spare does not
    (``test_with_no_kernel_and_no_daemon_the_agent_exits_before_its_window``). The detached
    agent looks at what it keeps at every turn of its loop, and it took the new HELLO in a
    later turn than its channel's end: a second attach is proof it stayed."""
    agent = Agent(sys.executable, run, "a8", window_s=3600)
    chan = agent.attach()
    agent.say("listen 1")
    port = int(agent.line("port 1 ").split()[2])
    agent.say("take 1")
    agent.say("ping taken")
    agent.line("pong taken")
    chan.close()
    agent.recv[1] = 0  # the daemon's HELLO names the streams it keeps: this one too
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND_S):  # the late kernel
        agent.attach()
        assert agent.take().type == mux.OPEN
    agent.goodbye()


def test_a_kernel_that_exits_during_an_outage_keeps_the_agent_until_its_exit_is_had(
    run: Path, tmp_path: Path
) -> None:
    """A kernel that gives up by itself during an outage (no licence, say) left the agent
    with no kernel and no link, so it exited, its exit line and last words unsent: the
    launch, once back, said the connection was lost during it (a review's finding). A
    kernel's end the daemon has not had keeps the agent, and the next attach gets it."""
    gate = tmp_path / "gate"
    agent = Agent(sys.executable, run, "a9", window_s=3600)
    chan = agent.attach()
    agent.say(
        f"start k1 set -- /bin/sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done; "
        "echo no license available; exit 4'"
    )
    kernel = int(agent.line("pid k1 ").split()[2])
    chan.close()
    gate.touch()
    wait_gone(kernel)
    agent.attach()
    assert agent.line("exit k1 ").split()[2] == "4"
    agent.goodbye()


def test_an_agent_whose_window_ran_out_says_so_to_a_daemon_back_late(
    run: Path, tmp_path: Path
) -> None:
    """The window ran out here (its kernel told to end, and ignoring it for the grace), and a
    daemon attaches: its WELCOME says the agent is ending and why, so the daemon does not take
    it for a resume (``HostSession._resume``; a review's finding)."""
    told = tmp_path / "told"
    kernel = tmp_path / "stubborn.sh"
    kernel.write_text(f"trap 'touch {told}' TERM\nwhile :; do sleep 0.05; done\n")
    agent = Agent(sys.executable, run, "b1", window_s=1)
    chan = agent.attach(silence_s=1)
    assert chan.ending is None
    agent.say(f"start k1 set -- /bin/sh {kernel}")
    pid = int(agent.line("pid k1 ").split()[2])
    chan.close()
    deadline = time.monotonic() + BOUND_S
    while not told.exists():  # the window over: SIGTERM
        assert time.monotonic() < deadline, "the window never ran out"
        time.sleep(0.05)
    late = agent.attach(silence_s=1)
    try:
        assert late.ending == "window over"
    finally:
        late.close()
    os.kill(pid, signal.SIGKILL)
    wait_gone(agent.pid)


def test_a_pid_file_naming_another_process_is_not_signalled(run: Path) -> None:
    """The pid a dead daemon's agent left in its pid file now names some other process of
    the user's (the pid was reused): its start time differs, so the next agent sends it no
    signal, and says it ended no predecessor. Nor when the start time is the same too (a
    pid file that outlived a reboot: start times count from the boot), as the process is no
    agent of the tag."""
    first = Agent(sys.executable, run, "b8")  # its run directory, made as an agent makes it
    assert isinstance(first.info, AgentInfo), first.said
    directory = Path(first.info.socket).parent
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        started = Path(f"/proc/{bystander.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        pid_file = directory / "c9.pid"
        pid_file.write_text(f"{bystander.pid} {int(started) + 1}\n")
        pid_file.chmod(0o600)
        second = Agent(sys.executable, run, "c9")
        assert isinstance(second.info, AgentInfo) and second.info.ended == 0, second.said
        assert bystander.poll() is None
        second.goodbye()
        pid_file.write_text(f"{bystander.pid} {started}\n")  # its pid and start time both
        third = Agent(sys.executable, run, "c9")
        assert isinstance(third.info, AgentInfo) and third.info.ended == 0, third.said
        assert bystander.poll() is None
        third.goodbye()
    finally:
        bystander.kill()
        bystander.wait()
    first.goodbye()


def test_a_run_directory_open_to_others_or_a_symlink_is_left_and_gone_around(run: Path) -> None:
    """Not used, never written through: the agent runs in a directory of its own beside it
    (``run_dir``), and that one goes with it."""
    directory = run / f"relay-agent-{os.getuid()}"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    target = run / "elsewhere"
    target.mkdir()
    for planted in ("open", "symlink"):
        if planted == "symlink":
            directory.rmdir()
            directory.symlink_to(target)
        agent = Agent(sys.executable, run, "e5")
        assert isinstance(agent.info, AgentInfo), agent.said
        made = Path(agent.info.socket).parent
        assert made.name.startswith(f"relay-agent-{os.getuid()}."), made
        assert made.stat().st_mode & 0o777 == 0o700
        agent.goodbye()
        assert not made.exists()
        assert list(target.iterdir()) == []
        if planted == "open":
            assert list(directory.iterdir()) == [] and directory.stat().st_mode & 0o777 == 0o755


def test_a_killed_agents_directory_beside_the_usual_one_goes_with_the_next_start(
    run: Path,
) -> None:
    """An agent that ran beside the usual name and was killed (SIGKILL, the OOM killer)
    left its pid file and socket there, and no later start removed them: each start makes a
    directory of its own, so they piled up, and every start listed them again (a review's
    finding). The next start of the tag, a while later, removes its files and the directory;
    another tag's files there are left, and with them the directory."""
    (run / f"relay-agent-{os.getuid()}").symlink_to(run / "elsewhere")  # not ours: gone around
    firsts = []
    for tag in ("e7", "e8"):
        agent = Agent(sys.executable, run, tag)
        assert isinstance(agent.info, AgentInfo), agent.said
        os.kill(agent.pid, signal.SIGKILL)
        wait_gone(agent.pid)
        firsts.append(Path(agent.info.socket).parent)
    killed, other_tags = firsts
    long_ago = time.time() - 7200
    for directory in firsts:
        os.utime(directory, (long_ago, long_ago))
    assert sorted(p.name for p in killed.iterdir()) == ["e7.lock", "e7.pid", "e7.sock"]
    again = Agent(sys.executable, run, "e7")
    assert isinstance(again.info, AgentInfo), again.said
    assert not killed.exists()
    assert sorted(p.name for p in other_tags.iterdir()) == ["e8.lock", "e8.pid", "e8.sock"]
    again.goodbye()
    assert not Path(again.info.socket).parent.exists()


# a stranger's listener: its port printed, then it waits (accepting nothing) to be killed
SQUAT = (
    "import socket,sys,time\n"
    "s=socket.socket();s.bind(('127.0.0.1',0));s.listen(1)\n"
    "print(s.getsockname()[1]);sys.stdout.flush();time.sleep(120)\n"
)


# a stranger's listener that takes one connection: its port printed, then how many bytes
# came before the connection closed
SQUAT_TAKE = (
    "import socket,sys\n"
    "s=socket.socket();s.bind(('127.0.0.1',0));s.listen(1)\n"
    "print(s.getsockname()[1]);sys.stdout.flush()\n"
    "c,_=s.accept();c.settimeout(20);n=0\n"
    "while True:\n d=c.recv(4096)\n if not d: break\n n+=len(d)\n"
    "print(n)\n"
)
# the race a connect can lose: the kernel's listener checked, then the port another user's
# by the time the agent connects (here its connect_ex is sent to RACE_TO for RACE_FROM)
RACED = """
import os, socket
_connect_ex = socket.socket.connect_ex
def _raced(self, address):
    if address == ("127.0.0.1", int(os.environ["RACE_FROM"])):
        address = ("127.0.0.1", int(os.environ["RACE_TO"]))
    return _connect_ex(self, address)
socket.socket.connect_ex = _raced
"""


@needs_second_uid
def test_a_connect_that_reaches_another_users_listener_sends_it_nothing(run: Path) -> None:
    """A stream to a kernel's listener: the listener is the user's when the agent looks,
    and another user's has the port by the time it connects. The end that accepted is
    looked at before a byte goes to it: nothing of what the front end wrote reaches the
    stranger, the stream is refused and closed, and the refusal is said."""
    squat = subprocess.Popen(
        as_nobody(SYSTEM_PYTHON, "-c", SQUAT_TAKE), stdout=subprocess.PIPE, text=True
    )
    kernel = socket.create_server(("127.0.0.1", 0))  # the user's, as the agent looks
    try:
        assert squat.stdout is not None
        squatted = int(squat.stdout.readline())
        kernel_port = kernel.getsockname()[1]
        os.environ.update(RACE_FROM=str(kernel_port), RACE_TO=str(squatted))
        try:
            agent = Agent(sys.executable, run, "e7", prelude=RACED)
        finally:
            del os.environ["RACE_FROM"], os.environ["RACE_TO"]
        chan = agent.attach()
        agent.say(f"connect 3 {kernel_port}")
        chan.send(mux.DATA, 3, b"written the instant it accepted")
        assert agent.line("refused 3 ") == f"refused 3 {NOBODY} {squatted} 1"
        assert "another user listens there" in agent.line("noconnect 3 ")
        assert agent.take() == Frame(mux.CLOSE, 3, b"")
        out, _ = squat.communicate(timeout=60)
        assert out.split() == ["0"], out  # connected, closed, and given nothing
        agent.goodbye()
    finally:
        kernel.close()
        squat.kill()
        squat.communicate()


@needs_second_uid
def test_a_stranger_gets_no_byte_from_a_listener_and_cannot_reach_the_socket(
    run: Path,
) -> None:
    run.chmod(0o755)  # a TMPDIR others can enter, as /tmp is
    agent = Agent(sys.executable, run, "f6")
    assert isinstance(agent.info, AgentInfo)
    agent.attach()
    agent.say("listen 1")
    port = int(agent.line("port 1 ").split()[2])
    probe = (
        "import socket,sys\n"
        f"s=socket.create_connection(('127.0.0.1',{port}));s.settimeout(10)\n"
        "print(len(s.recv(100)))\n"
        "u=socket.socket(socket.AF_UNIX)\n"
        f"try:\n u.connect({agent.info.socket!r});print('attached')\n"
        "except OSError as e:\n print(type(e).__name__)\n"
    )
    out = subprocess.run(
        as_nobody(SYSTEM_PYTHON, "-c", probe), capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["0", "PermissionError"], out
    assert agent.line("refused 1 ") == f"refused 1 {NOBODY} {port} 1"
    kernel = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)  # the real one
    assert agent.take().type == mux.OPEN
    kernel.close()
    assert agent.take() == Frame(mux.EOF, 1, b"")
    # the hook's listener: a stranger's request never reaches the daemon
    agent.say("serve 2")
    hook_port = int(agent.line("port 2 ").split()[2])
    ask = (
        "import socket\n"
        f"s=socket.create_connection(('127.0.0.1',{hook_port}));s.settimeout(10)\n"
        "s.sendall(b'relay-hook x callback 1@127.0.0.1,2@127.0.0.1\\n')\n"
        "try:\n print(len(s.recv(100)))\n"
        "except ConnectionResetError:\n print(0)\n"  # closed with its request unread
    )
    out = subprocess.run(
        as_nobody(SYSTEM_PYTHON, "-c", ask), capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["0"], out
    assert agent.line("refused 2 ") == f"refused 2 {NOBODY} {hook_port} 1"
    # a stranger's listener on the port a stream is to reach: not connected to
    squat = subprocess.Popen(
        as_nobody(SYSTEM_PYTHON, "-c", SQUAT), stdout=subprocess.PIPE, text=True
    )
    try:
        assert squat.stdout is not None
        squatted = int(squat.stdout.readline())
        agent.say(f"connect 3 {squatted}")
        assert agent.line("refused 3 ") == f"refused 3 {NOBODY} {squatted} 1"
        assert "another user listens there" in agent.line("noconnect 3 ")
        assert agent.take() == Frame(mux.CLOSE, 3, b"")
    finally:
        squat.kill()
        squat.communicate()
    assert agent.chan is not None
    agent.chan.send(mux.BYE, 0)
    wait_gone(agent.pid)
    agent.chan.close()


def read_until_quiet(sock: socket.socket, quiet_s: float) -> int:
    """Read until nothing comes for ``quiet_s`` (or the end); how much came. (A wait for
    something not to happen, as ``write_until_held_back``'s: it decides when to go on.)"""
    sock.settimeout(quiet_s)
    got = 0
    try:
        while data := sock.recv(1 << 20):
            got += len(data)
    except TimeoutError:
        pass
    finally:
        sock.settimeout(BOUND_S)
    return got


def test_a_link_dropped_in_the_turn_its_kernel_reads_again_does_not_end_the_agent(
    run: Path,
) -> None:
    """One select() reports both the daemon's ``drop`` of a link and that link's socket
    writable again (its kernel read what was waiting). The drop closes the socket first; the
    writable event that came with it is stale and must be let go. It was taken: a write to a
    socket that was no longer there raised, and the agent, exiting on an error it did not
    expect, killed every kernel on the host. The agent is stopped (SIGSTOP) while both
    happen, so that they are reported together, in that order (epoll's ready list)."""
    agent = Agent(sys.executable, run, "e7")
    chan = agent.attach(silence_s=BOUND_S)
    agent.say("listen 1")
    port = int(agent.line("port 1 ").split()[2])
    kernel = socket.socket()
    kernel.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a kernel slow to read
    kernel.settimeout(BOUND_S)
    kernel.connect(("127.0.0.1", port))
    assert agent.take().type == mux.OPEN
    payload = secrets.token_bytes(tcp_buffer_max("wmem") + (1 << 20))
    for at in range(0, len(payload), 1 << 16):
        chan.send(mux.DATA, 1, payload[at : at + (1 << 16)])
    pings(agent, chan, "held")  # every frame read: what the kernel has not taken is waiting
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        agent.say("drop 1")
        # the agent is stopped: nothing more comes until it goes on
        assert read_until_quiet(kernel, 0.5) > 0
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    pings(agent, chan, "after")
    assert not gone(agent.pid)
    kernel.close()
    agent.goodbye()


def test_a_link_over_both_ways_acknowledges_the_daemons_close_and_is_forgotten(
    run: Path,
) -> None:
    """The kernel closes first: the agent's CLOSE, acknowledged by the daemon; then the
    daemon's CLOSE, which finishes the stream. Its ACK was left to the batch and forgotten
    with the stream: the daemon kept its end until the kernel's. Now it is sent, and the
    agent, detached with no kernel, exits at once (it waited on the stream for its window)."""
    agent = Agent(sys.executable, run, "e8")
    chan = agent.attach()
    kernel = agent.kernel_link()
    kernel.close()
    assert agent.take().type == mux.EOF
    chan.send(mux.EOF, 1)  # the front end's end shut too: the agent's socket is closed
    assert agent.take().type == mux.CLOSE  # acknowledged by ``take`` at once
    chan.send(mux.CLOSE, 1)
    agent.say("ping closed")
    acks = []
    while True:
        frame = chan.frame()
        if (frame.type, frame.stream) == (mux.ACK, 1):
            acks.append(mux.ack_position(frame.payload))
        elif frame.stream == 0 and frame.type == mux.DATA:
            agent.recv[0] += frame.size
            if b"pong closed" in frame.payload:
                break
    assert acks and acks[-1] == 2, acks  # the daemon's EOF and CLOSE
    chan.close()  # detached, and no kernel: nothing to wait for
    wait_gone(agent.pid)


def test_an_agent_out_of_files_says_so_and_goes_on(run: Path) -> None:
    """A host's open-file limit reached (``ulimit -n``; a pool of hundreds of kernels, two
    links each): a listener, a connection or a kernel that needs a file is refused with a
    reason, and the agent goes on carrying what it has. os.pipe() and socket() were outside
    any try: the error ended the agent, which killed every kernel on the host."""
    agent = Agent(sys.executable, run, "e9", files=40)
    chan = agent.attach(silence_s=BOUND_S)
    kernel = agent.kernel_link()
    for sid in range(2, 60):  # more listeners than files
        agent.say(f"listen {sid}")
    refused = agent.line("noport ")
    assert "Too many open files" in refused, refused
    agent.say("start k1 set -- /bin/true")
    # said as what it is: "out k1 ...", then "nokernel k1", read as a kernel not found
    said = agent.line("nostart k1 ")
    assert said == "nostart k1 EMFILE [Errno 24] Too many open files", said
    assert not [line for line in agent.lines if " k1" in line], agent.lines
    why = asyncio.run(launch_failure(said))
    assert not isinstance(why, KernelMissing), why
    assert str(why) == (
        "relay's agent on h could not start the kernel: [Errno 24] Too many open files (the "
        "agent's open-file limit, ulimit -n, is reached: end some kernels or raise it)"
    ), why
    # a kernel that connects now waits in the listener's queue (its accept() has no file
    # to give: the listener is left alone a while, not polled in a busy loop) until files
    # are free again (here: two listeners dropped; its owner check reads /proc with one)
    second = int(agent.line("port 2 ").split()[2])
    waiting = socket.create_connection(("127.0.0.1", second), timeout=BOUND_S)
    agent.say("ping queued")  # a turn in which the accept failed
    agent.line("pong queued")
    agent.say("drop 3\ndrop 4")  # one frame: both in one turn
    assert agent.take() == Frame(mux.OPEN, 2, b"")
    # the link it had goes on, both ways
    kernel.sendall(b"still here")
    assert agent.take() == Frame(mux.DATA, 1, b"still here")
    chan.send(mux.DATA, 1, b"and you")
    assert kernel.recv(100) == b"and you"
    kernel.close()
    waiting.close()
    agent.goodbye()


def test_a_kernel_connecting_with_the_agents_last_file_is_admitted(run: Path) -> None:
    """One file left as the kernel connects: accept() took it, and the owner check had none
    to ask the kernel or read /proc/net/tcp with, so the kernel's own connection was closed
    as a stranger's ("refused 2 - PORT"). The agent keeps a spare file for the check."""
    agent = Agent(sys.executable, run, "d5", files=40)
    agent.attach(silence_s=BOUND_S)
    kernel = agent.kernel_link()
    for sid in range(2, 60):  # more listeners than files
        agent.say(f"listen {sid}")
    agent.line("noport ")
    port = int(agent.line("port 2 ").split()[2])
    agent.say("drop 3")  # exactly one file free
    agent.say("ping a")
    agent.line("pong a")
    mine = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
    assert agent.take() == Frame(mux.OPEN, 2, b"")
    mine.sendall(b"mine")
    assert agent.take() == Frame(mux.DATA, 2, b"mine")
    assert not [line for line in agent.lines if line.startswith("refused ")], agent.lines
    mine.close()
    kernel.close()
    agent.goodbye()


def test_a_which_the_agent_has_no_file_for_is_not_a_kernel_missing(run: Path) -> None:
    """Out of files (or processes), the agent cannot run /bin/sh to look for a kernel: it
    answered "nokernel", and `relay connect --kernels` told the user the kernel was missing
    when the host's limit was reached. It says why (``nostart``), as a start does."""
    agent = Agent(sys.executable, run, "e7", files=40)
    agent.attach(silence_s=BOUND_S)
    for sid in range(2, 60):  # more listeners than files
        agent.say(f"listen {sid}")
    agent.line("noport ")
    agent.say("which w1 set -- /bin/true")
    said = agent.line("nostart w1 ")
    assert said.startswith("nostart w1 EMFILE [Errno 24] Too many open files"), said
    assert not [line for line in agent.lines if line.startswith("nokernel w1")], agent.lines
    agent.goodbye()


def slow_which(tmp_path: Path) -> tuple[str, Path, Path]:
    """A look for a kernel whose shell waits (as a stat() on a hung NFS does) until its FIFO
    is written: the snippet, the FIFO and where the shell's pid is written."""
    fifo, pid_file = tmp_path / "slow", tmp_path / "which.pid"
    os.mkfifo(fifo)
    return f"echo $$ >{pid_file}; read x <{fifo}; set -- /bin/true", fifo, pid_file


def test_a_look_for_a_kernel_holds_up_no_link(run: Path, tmp_path: Path) -> None:
    """The agent ran the shell that looks for a kernel (``which``: every connection's first
    look, ``relay connect --kernels``) and waited for it, its one thread held, so a kernel
    on a shared file system that hangs held every link and control line up, for up to 10 s.
    Now a link carries bytes and a ping is answered while the look is on its way, and it is
    answered as its shell ends."""
    agent = Agent(sys.executable, run, "e8")
    agent.attach(silence_s=BOUND_S)
    kernel = agent.kernel_link(1)
    snippet, fifo, pid_file = slow_which(tmp_path)
    agent.say(f"which w1 {snippet}")
    _written_by(pid_file)  # the look is under way, in its shell
    agent.say("ping p1")
    assert agent.line("pong ") == "pong p1"
    kernel.sendall(b"meanwhile")
    assert agent.take().payload == b"meanwhile"
    # the look not answered yet (held up, the ping's answer came after the look's)
    assert not [line for line in agent.lines if re.search(r" w1\b", line)], agent.lines
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: its shell is gone
    os.write(writer, b"\n")
    os.close(writer)
    assert agent.line("found ") == "found w1"
    kernel.close()
    agent.goodbye()


def test_a_look_for_a_kernel_that_does_not_end_is_said_and_its_shell_ended(
    run: Path, tmp_path: Path
) -> None:
    """Past WHICH_WAIT_S the look is answered as not answered (``nostart``: the launch says
    the host did not answer, not that the kernel is missing), and its shell is killed."""
    agent = Agent(sys.executable, run, "e9")
    agent.attach(silence_s=BOUND_S)
    snippet, _, pid_file = slow_which(tmp_path)
    agent.say(f"which w1 {snippet}")
    shell = _written_by(pid_file)
    said = agent.line("nostart w1 ")
    assert said == f"nostart w1 - /bin/sh did not answer within {remote.WHICH_WAIT_S:g} s", said
    wait_gone(shell)
    agent.goodbye()


def _written_by(pid_file: Path) -> int:
    """The pid a shell wrote to ``pid_file`` (bounded: the shell has no event to wait on)."""
    deadline = time.monotonic() + BOUND_S
    while not pid_file.exists() or not pid_file.read_text().strip().isdigit():
        assert time.monotonic() < deadline, f"nothing written to {pid_file}"
        time.sleep(0.02)
    return int(pid_file.read_text())


async def launch_failure(*lines: str) -> BaseException | None:
    """What a launch fails with in the daemon once its supervisor session (here the agent's
    control stream, scripted) says ``lines`` for kernel k1."""
    process = Scripted()
    supervisor = Supervisor(cast(Any, process), "h", 1, structlog.get_logger("test"))
    try:
        proc = supervisor.start_kernel("k1", ["/bin/true"])
        for line in lines:
            process.stdout.queue.put_nowait(line + "\n")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(proc.started), BOUND_S)
        return proc.started.exception()
    finally:
        process.close()
        await supervisor.wait_closed(timeout_s=5)


def test_a_flood_of_strangers_during_an_outage_is_counted_not_kept_line_by_line(
    run: Path,
) -> None:
    """Connections turned away while no daemon is attached: each was a control line kept
    until acknowledged, so a local user connecting in a loop for an outage's window grew
    the agent without bound. They are counted, and said once a daemon is back: in one line,
    though each came from another local address (127.0.0.0/8 has millions, and each was a
    line of its own, here and in the daemon's log)."""
    agent = Agent(sys.executable, run, "f7")
    chan = agent.attach()
    kernel = agent.kernel_link()  # a link: the agent waits for the daemon
    agent.say("listen 2")
    port = int(agent.line("port 2 ").split()[2])
    chan.close()  # the connection is lost: nothing is acknowledged now
    flood = 300
    for i in range(flood):  # from other local addresses: not the listener's own
        if i and i % 100 == 0:  # three bursts, each past the once-a-second an attached agent says
            time.sleep(1.2 * remote.REFUSALS_EVERY_S)
        with socket.socket() as stranger:
            stranger.settimeout(BOUND_S)
            stranger.bind((f"127.0.{i // 200}.{2 + i % 200}", 0))
            stranger.connect(("127.0.0.1", port))
            # turned away before a byte (reset: closed unread, before our FIN: the same)
            with contextlib.suppress(ConnectionResetError):
                assert stranger.recv(1) == b""
    agent.attach()
    lines: list[list[str]] = []
    while sum(int(words[4]) for words in lines) < flood:
        lines.append(agent.line("refused 2 ").split())
    # all of them in one line (and the first, if it came before the agent saw the close)
    assert len(lines) <= 2, lines
    last = f"@127.0.{(flood - 1) // 200}.{2 + (flood - 1) % 200}"
    assert lines[-1][2:4] == [last, str(port)], lines
    kernel.close()
    agent.goodbye()


def test_kernels_take_signals_as_any_process_does(run: Path) -> None:
    """The agent lets SIGHUP go by (it has no terminal: someone's kill); its kernels must not
    inherit that: it ignored SIGHUP, and SIG_IGN survives exec."""
    agent = Agent(sys.executable, run, "f8")
    agent.attach()
    agent.say("start k1 set -- /bin/sh -c 'grep SigIgn /proc/$$/status'")
    ignored = int(agent.line("out k1 ").split()[-1], 16)
    agent.line("exit k1 ")
    assert not ignored & (1 << (signal.SIGHUP - 1)), hex(ignored)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), hex(ignored)
    agent.goodbye()


def test_what_the_daemon_holds_unhanded_at_an_attach_counts_against_the_limit(
    run: Path,
) -> None:
    """A front end that stopped reading, then an outage: the daemon took in LIMIT (its
    HELLO's recv) and handed none of it on (its ``handed``). The agent forgets what the
    daemon has, but reads no more from the kernel until the daemon's ACKs say that half of
    it was taken: it read another LIMIT at each attach, which piled up in the daemon."""
    agent = Agent(sys.executable, run, "f9")
    chan = agent.attach(silence_s=BOUND_S)
    kernel = agent.kernel_link()
    payload = secrets.token_bytes(
        mux.LIMIT + remote.CHUNK + tcp_buffer_max("rmem") + tcp_buffer_max("wmem") + (4 << 20)
    )
    written = write_until_held_back(kernel, payload)
    assert written < len(payload)
    got = pings(agent, chan, "full")  # read, not acknowledged: the front end took none
    assert mux.LIMIT <= len(got) <= mux.LIMIT + remote.CHUNK, len(got)
    chan.close()  # the connection is lost
    opened = agent.recv[1]
    agent.recv[1] += len(got)
    chan = agent.attach(silence_s=BOUND_S, handed={**agent.recv, 1: opened})
    assert pings(agent, chan, "after") == b"", "read on behind a front end that took nothing"
    chan.sock.sendall(mux.ack(1, agent.recv[1] - mux.LIMIT // 2 - 1))  # not yet half
    assert pings(agent, chan, "most") == b""
    chan.sock.sendall(mux.ack(1, agent.recv[1]))  # the front end took it all
    assert pings(agent, chan, "taken"), "not read again once it was taken"
    kernel.close()
    chan.close()  # what it reads now is not wanted: ended without the rest
    os.kill(agent.pid, signal.SIGTERM)
    wait_gone(agent.pid)


# The agent's look-ups (owner, listener_owner, accepting_owner) in this Python, each asked
# twice: of the kernel (its ``diag``), then of /proc alone (``diag`` answering nothing), as
# JSON: [did the kernel answer, [by the kernel...], [by /proc...]]
TABLES = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("agent", sys.argv[1])
agent = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agent)
asks = json.loads(sys.argv[2])
answered = agent.diag(int(sys.argv[3]), 0) is not None
by_kernel = [getattr(agent, ask[0])(*ask[1:]) for ask in asks]
agent.diag = lambda lport, rport: None
print(json.dumps([answered, by_kernel, [getattr(agent, ask[0])(*ask[1:]) for ask in asks]]))
"""


@needs_second_uid
# the closed listener's request socket lives until its first SYN-ACK timer (about 1 s): on a
# machine busy with other tests, /proc was read after it had gone, and the kernel before
@pytest.mark.alone
@pytest.mark.parametrize("python", interpreters())
def test_the_kernels_answer_and_procs_judge_alike(python: str) -> None:
    """The agent asks the kernel for one socket by its ends (NETLINK_SOCK_DIAG) and reads
    /proc/net/tcp only where no answer comes: both must judge alike, for the user's sockets
    (live, closing, gone, bound to the loopback device) and a second uid's (its listener,
    its connection, and the request socket its listener holds for ours, which the kernel
    reads as uid 0, that listener open or closed since; and its connection shut at once
    and held, its uid in the row, which is its own, not "c")."""
    me, them = str(os.getuid()), str(NOBODY)
    with contextlib.ExitStack() as stack:
        squat = stack.enter_context(stranger(DEFERRED))
        assert squat.stdout is not None
        their_port, their_client = map(int, squat.stdout.readline().split())
        to_them = stack.enter_context(socket.create_connection(("127.0.0.1", their_port)))
        closer = stack.enter_context(stranger(CLOSES_WHEN_TOLD, stdin=True))
        assert closer.stdout is not None and closer.stdin is not None
        closed_port = int(closer.stdout.readline())
        to_closed = stack.enter_context(socket.create_connection(("127.0.0.1", closed_port)))
        closer.stdin.write("\n")
        closer.stdin.flush()
        assert closer.stdout.readline().strip() == "closed"
        on_lo = stack.enter_context(socket.socket())
        on_lo.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        on_lo.bind(("127.0.0.1", 0))
        on_lo.listen()
        lo_port = on_lo.getsockname()[1]
        lo_client = stack.enter_context(socket.socket())
        lo_client.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        lo_client.connect(("127.0.0.1", lo_port))
        stack.enter_context(on_lo.accept()[0])
        server = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        port = server.getsockname()[1]
        live = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
        stack.enter_context(server.accept()[0])
        closing = socket.create_connection(("127.0.0.1", port))
        closing_port = closing.getsockname()[1]
        stack.enter_context(server.accept()[0])
        closing.close()
        shut = stack.enter_context(half_closed(port))  # a stranger's, shut at once, held
        stack.enter_context(server.accept()[0])
        asks = {
            ("owner", live.getsockname()[1], port): me,
            ("accepting_owner", port, live.getsockname()[1]): me,
            ("listener_owner", port): me,
            ("owner", closing_port, port): "c",
            ("owner", shut, port): them,
            ("owner", 1, 2): "-",
            ("listener_owner", their_port): them,
            ("owner", their_client, their_port): them,
            ("accepting_owner", their_port, to_them.getsockname()[1]): them,
            ("accepting_owner", closed_port, to_closed.getsockname()[1]): them,
            ("listener_owner", lo_port): me,
            ("owner", lo_client.getsockname()[1], lo_port): me,
            ("accepting_owner", lo_port, lo_client.getsockname()[1]): me,
        }
        out = subprocess.run(
            [python, "-I", "-c", TABLES, str(AGENT), json.dumps(list(asks)), str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    answered, by_kernel, by_proc = json.loads(out.stdout)
    assert answered, "the kernel gave no answer: both columns would be /proc's"
    assert dict(zip(asks, by_kernel, strict=True)) == asks
    assert dict(zip(asks, by_proc, strict=True)) == asks


def until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.skipif(TMPFILES is None, reason=NO_TMPFILES)
def test_a_tmp_cleaner_finds_the_agents_files_young(run: Path, tmp_path: Path) -> None:
    """Weeks into a computation the agent's pid file and a quiet kernel's log are old to a
    cleaner of /tmp, which would take them (its live socket it spares): the agent sets their
    times, and its socket's and directory's, to now once its socket's is an hour old, and
    the cleaner leaves them all."""
    agent = Agent(sys.executable, run, "c4")
    assert isinstance(agent.info, AgentInfo), agent.said
    sock = Path(agent.info.socket)
    agent.attach()
    agent.say("start k1 set -- /bin/sh -c 'sleep 60'")
    agent.line("pid k1 ")
    files = sorted(p.name for p in sock.parent.iterdir())
    assert files == ["c4-k1.log", "c4.lock", "c4.pid", "c4.sock"], files
    age(sock.parent)
    until(lambda: time.time() - sock.stat().st_mtime < 3600, "the agent's socket touched")
    until(lambda: time.time() - sock.parent.stat().st_mtime < 3600, "its directory touched")
    said = tmp_cleaner(sock.parent, tmp_path)
    assert "Removing" not in said, said
    assert sorted(p.name for p in sock.parent.iterdir()) == files
    agent.goodbye()


@pytest.mark.parametrize(
    "how", ["cleaner", "rm"] if TMPFILES else [pytest.param("cleaner", marks=pytest.mark.skip(
        reason=NO_TMPFILES)), "rm"],
)  # fmt: skip
@pytest.mark.parametrize("python", [sys.executable, *(p for p in interpreters() if "/3.6." in p)])
def test_files_taken_from_the_agent_are_made_again_and_the_daemon_attaches(
    python: str, how: str, run: Path, tmp_path: Path
) -> None:
    """The agent's files taken while it could not look (stopped): its pid file by the real
    cleaner of /tmp (which spares the live socket), or everything with their directory by
    a person's ``rm -r``. It makes them again (the directory with its checks, its socket
    bound afresh, its pid file), and the daemon attaches where it always looks: the link
    goes on with nothing lost."""
    agent = Agent(python, run, "c5")
    assert isinstance(agent.info, AgentInfo), agent.said
    sock = Path(agent.info.socket)
    pid_file = sock.with_suffix(".pid")
    agent.attach()
    kernel = agent.kernel_link()
    assert agent.chan is not None
    agent.chan.close()  # an outage
    kernel.sendall(b"written during the outage")
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        if how == "cleaner":
            age(sock.parent)
            said = tmp_cleaner(sock.parent, tmp_path)
            assert f'Skipping "{sock}": live socket' in said, said
        else:
            shutil.rmtree(sock.parent)
            assert not sock.exists()
        assert not pid_file.exists()
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    until(lambda: sock.exists() and pid_file.exists(), "the socket and pid file made again")
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert pid_file.read_text().split()[0] == str(agent.pid)
    agent.attach()
    got = b""
    while len(got) < len(b"written during the outage"):
        got += agent.take().payload
    assert got == b"written during the outage"
    assert agent.chan is not None
    agent.chan.send(mux.DATA, 1, b"and after it")
    assert kernel.recv(100) == b"and after it"
    kernel.close()
    agent.goodbye()
    assert not sock.exists() and not pid_file.exists()  # the new ones go with it


# the oldest Python the agent runs under, where there is one here, and this one
RUDE_PYTHONS = [sys.executable, *(p for p in interpreters() if "/3.6." in p)]


def _attached_with_a_kernel(agent: Agent) -> tuple[int, str]:
    """The agent attached to, and a kernel started (``sleep 600``): its pid; the agent's
    socket."""
    assert isinstance(agent.info, AgentInfo), agent.said
    agent.attach()
    agent.say("start k1 set -- /bin/sleep 600")
    return int(agent.line("pid k1 ").split()[2]), agent.info.socket


def _proved(agent: Agent, challenge: bytes, **fields: object) -> bytes:
    """A HELLO that proves the secret over ``challenge``, with ``fields`` besides."""
    nonce = secrets.token_bytes(32)
    proof = mux.proof(agent.secret.encode(), mux.DAEMON, challenge, nonce)
    return json.dumps({"nonce": nonce.hex(), "proof": proof, **fields}).encode()


@pytest.mark.parametrize("python", RUDE_PYTHONS)
def test_a_rude_hello_ends_its_connection_not_the_agent_and_its_kernels(
    run: Path, python: str
) -> None:
    """A review found one HELLO of deeply nested JSON, from a connection that never proved
    the secret, crash the agent, which then killed every kernel. Each rude HELLO now ends
    its own connection, nothing sent; the daemon attached meanwhile is served on, and its
    kernel lives."""
    agent = Agent(python, run, "e1a")
    kernel, sock = _attached_with_a_kernel(agent)
    for payload in (
        b"[" * 200_000,  # RecursionError
        b'{"nonce": ' + b"1" * 100_000 + b"}",  # seconds of CPU on 3.6, which has no limit
        b'{"nonce": NaN, "proof": Infinity}',
        b"[1, 2]",
        b"\xff\xfe",
        b'{"nonce": "' + b"ab" * 32 + b'", "proof": "x", "recv": {"\xc2\xb2": 1}}',
    ):
        assert _hello_answer(sock, payload) == b"", payload[:40]
    agent.say("ping p1")
    assert agent.line("pong ") == "pong p1"
    assert pid_alive(kernel) and pid_alive(agent.pid)
    agent.goodbye()


@pytest.mark.parametrize("python", RUDE_PYTHONS)
def test_a_proved_hello_with_positions_that_are_not_numbers_is_refused(
    run: Path, python: str
) -> None:
    """The daemon's own HELLO, its secret proved, with positions of the wrong type (a bug or
    another version on its side): the attach is refused, the agent and its kernel go on, and
    a right HELLO attaches. Each rude HELLO is a right one but for the field tested: one
    without the control stream's position was refused anyway (that position is past what
    the agent keeps), so the test passed whatever the agent made of the field."""
    agent = Agent(python, run, "e2a")
    kernel, sock = _attached_with_a_kernel(agent)
    assert agent.chan is not None
    agent.chan.close()
    right = {str(sid): position for sid, position in agent.recv.items()}
    assert right["0"] > 0  # the pid line: a HELLO without it is refused for that alone
    for fields in (
        {"recv": {**right, "0": "x"}},
        {"recv": [0]},
        {"recv": right, "handed": {"0": -1}},
        {"recv": {**right, "²": 0}},
        {"recv": {**right, str(1 << 32): 0}},  # past a frame's 4-byte stream id
    ):
        proved = functools.partial(_proved, agent, **fields)
        assert _hello_answer(sock, proved) == b"", fields
    agent.attach()
    agent.say("ping p2")
    assert agent.line("pong ") == "pong p2"
    assert pid_alive(kernel)
    agent.goodbye()


@pytest.mark.parametrize("python", RUDE_PYTHONS)
def test_control_lines_the_agent_cannot_use_are_let_go(run: Path, python: str) -> None:
    """Numbers ``isdigit`` takes and ``int`` refuses, ports past 65535, stream ids past 32
    bits: each crashed the agent, which killed every kernel (reviews' findings). Each is let
    go now, or answered as not known; the kernel lives."""
    agent = Agent(python, run, "e3a")
    kernel, _ = _attached_with_a_kernel(agent)
    for line in ("listen ²", "drop ³", "serve ²", "connect 5 99999", "connect ² 5", "connect 5 ²"):
        agent.say(line)
    agent.say("owner q1 FFFFF 1")
    assert agent.line("owner q1 ") == "owner q1 ?"
    # a stream id past the frame's 4 bytes: a listener was made for it, and the OPEN of the
    # user's own connection to it (or to a listener of the user's it was told to connect
    # to) could not be framed
    with socket.create_server(("127.0.0.1", 0)) as own:
        agent.say("listen 4294967297")
        agent.say(f"connect 4294967298 {own.getsockname()[1]}")
        agent.say("ping p3")
        assert agent.line("pong ") == "pong p3"
        assert not [line for line in agent.lines if "429496729" in line], agent.lines
    assert pid_alive(kernel) and pid_alive(agent.pid)
    agent.goodbye()


# json.dumps raises while a flag file is there: a fault the agent's code did not foresee,
# in the middle of an attach (the WELCOME is written with it)
FAULTY = """
import json, os
_dumps, _flag = json.dumps, os.environ["FAULT_FLAG"]
def dumps(*args, **kwargs):
    if os.path.exists(_flag):
        raise RuntimeError("a fault of the test's")
    return _dumps(*args, **kwargs)
json.dumps = dumps
"""


def test_a_fault_while_a_peer_is_served_ends_its_connection_not_the_kernels(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the agent's code did not foresee, met while serving the daemon's connection,
    ends that connection and is written to TAG.err; the agent and its kernels go on, and the
    daemon attaches again. (It ended the agent, and every kernel with it.)"""
    flag = tmp_path / "fault"
    monkeypatch.setenv("FAULT_FLAG", str(flag))
    agent = Agent(sys.executable, run, "e4a", prelude=FAULTY)
    kernel, sock = _attached_with_a_kernel(agent)
    assert agent.chan is not None
    agent.chan.close()
    flag.touch()
    with pytest.raises(ConnectionError):
        agent.attach()
    err = Path(sock).parent / "e4a.err"
    assert "RuntimeError: a fault of the test's" in err.read_text()
    flag.unlink()
    agent.attach()
    agent.say("ping p4")
    assert agent.line("pong ") == "pong p4"
    assert pid_alive(kernel)
    agent.goodbye()


@pytest.mark.parametrize("python", RUDE_PYTHONS)
def test_a_kernel_named_outside_ascii_starts_in_the_c_locale(
    run: Path, python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.6 in the C locale (no LANG over a plain ssh exec: RHEL 7's python3) encodes
    a child's environment in ASCII: a kernel path or argument outside it (a user's name)
    raised in Popen, the channel was closed with the start unanswered, the lines after it
    in the frame were lost, and the start's pipe and log were left (a review's finding). The
    snippet goes as bytes now; the kernel starts, and the next line is answered."""
    monkeypatch.setenv("LC_ALL", "C")
    monkeypatch.delenv("LANG", raising=False)
    agent = Agent(python, run, "e5a")
    assert isinstance(agent.info, AgentInfo), agent.said
    agent.attach()
    agent.say(
        "which w1 set -- /bin/sh -c jörg\nstart k1 set -- /bin/sh -c 'sleep 600' jörg\nping p1"
    )
    assert agent.line("found w1") == "found w1"
    kernel = int(agent.line("pid k1 ").split()[2])
    assert agent.line("pong ") == "pong p1"
    assert pid_alive(kernel)
    agent.goodbye()


# socket.bind raises while a flag file is there, for a link's listener (127.0.0.1 port 0):
# a fault the agent's code did not foresee, in the middle of a control line
FAULTY_BIND = """
import os, socket
_bind, _flag = socket.socket.bind, os.environ["FAULT_FLAG"]
def bind(self, *args):
    if os.path.exists(_flag) and args == (("127.0.0.1", 0),):
        raise RuntimeError("a fault of the test's")
    return _bind(self, *args)
socket.socket.bind = bind
"""


def test_a_control_line_that_faults_is_let_go_not_the_lines_after_it(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A control line whose handler meets what the agent's code did not foresee is let go
    (its traceback in TAG.err); the lines after it in the same frame, which the daemon
    will not send again, are still answered, and the channel stays."""
    flag = tmp_path / "fault"
    monkeypatch.setenv("FAULT_FLAG", str(flag))
    agent = Agent(sys.executable, run, "e6b", prelude=FAULTY_BIND)
    kernel, sock = _attached_with_a_kernel(agent)
    flag.touch()
    agent.say("listen 7\nping p1")
    assert agent.line("pong ") == "pong p1"
    assert "RuntimeError: a fault of the test's" in (Path(sock).parent / "e6b.err").read_text()
    flag.unlink()
    agent.say("listen 8")
    assert agent.line("port 8 ").startswith("port 8 ")
    assert pid_alive(kernel)
    agent.goodbye()


def _unique_sleep() -> str:
    """A sleep's argument no other process here has: the process found by it alone."""
    return f"{3000 + os.getpid() % 1000}.{secrets.randbelow(10**6):06d}"


def _running(duration: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"^sleep {duration}$"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


@pytest.mark.parametrize("python", RUDE_PYTHONS)
def test_what_a_kernel_started_ends_with_it(run: Path, python: str) -> None:
    """A kernel's children (subkernels, StartProcess's) outlived BYE and the window: only
    the kernel's pid was signalled (a review's finding). Each kernel has a process group of
    its own, and a signal that ends it goes to the group: here BYE's SIGTERM; then relay's
    own kill of a kernel whose child ignores SIGTERM, which goes with SIGKILL once the
    kernel has exited."""
    agent = Agent(python, run, "e5a")
    assert isinstance(agent.info, AgentInfo), agent.said
    agent.attach()
    child = _unique_sleep()
    agent.say(f"start k1 set -- /bin/sh -c 'sleep {child} & exec sleep 600'")
    kernel = int(agent.line("pid k1 ").split()[2])
    deadline = time.monotonic() + BOUND_S
    while not _running(child):  # the kernel's shell starts it
        assert time.monotonic() < deadline, "the kernel's child never started"
        time.sleep(0.05)
    stubborn = _unique_sleep()
    ignoring = f'(trap \\"\\" TERM; exec sleep {stubborn}) & exec sleep 600'
    agent.say(f'start k2 set -- /bin/sh -c "{ignoring}"')
    kernel2 = int(agent.line("pid k2 ").split()[2])
    while not _running(stubborn):
        assert time.monotonic() < deadline, "the second kernel's child never started"
        time.sleep(0.05)
    agent.say("kill k2 TERM")  # as relay ends a kernel: its child ignores SIGTERM
    assert agent.line("exit k2 ").startswith("exit k2 143 ")
    assert not _running(stubborn) and not pid_alive(kernel2)
    agent.goodbye()
    assert not pid_alive(kernel)
    assert not _running(child), "the kernel's child outlived BYE"


@needs_second_uid
def test_a_usual_directory_another_user_made_first_is_gone_around() -> None:
    """Another user of the host makes $TMPDIR/relay-agent-UID first (a sticky /tmp is
    everyone's): the agent refused to start, and the host's kernels lost resuming. It runs
    in a directory of its own beside it, with a name nobody can make first; the daemon
    reaches its socket by the path the start says; the next agent of the tag finds it
    there and ends it, with its kernels; and the directory goes with the last agent."""
    run = Path(tempfile.mkdtemp(prefix="relay-shared-", dir="/tmp"))  # a /tmp of its own
    run.chmod(0o1777)
    try:
        _gone_around(run)
    finally:
        for pid_file in run.glob("relay-agent-*/*.pid"):
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(run, ignore_errors=True)


def _gone_around(run: Path) -> None:
    usual = run / f"relay-agent-{os.getuid()}"
    subprocess.run(as_nobody(SYSTEM_PYTHON, "-c", SQUAT_DIR, str(usual)), check=True, timeout=60)
    assert usual.stat().st_uid == NOBODY
    first = Agent(sys.executable, run, "e6a")
    assert isinstance(first.info, AgentInfo), first.said
    made = Path(first.info.socket).parent
    assert made.parent == run and made.name.startswith(f"relay-agent-{os.getuid()}.")
    assert made.stat().st_mode & 0o777 == 0o700 and made.stat().st_uid == os.getuid()
    first.attach()
    first.say("start k1 set -- /bin/sleep 600")
    kernel = int(first.line("pid k1 ").split()[2])
    assert first.chan is not None
    first.chan.close()  # a daemon that died: the next one's agent ends this one's kernels
    second = Agent(sys.executable, run, "e6a")
    assert isinstance(second.info, AgentInfo), second.said
    assert second.info.ended == 1, second.said
    wait_gone(kernel)
    wait_gone(first.pid)
    assert Path(second.info.socket).parent != made
    second.goodbye()
    assert not made.exists() and not Path(second.info.socket).parent.exists()
    assert usual.exists()  # the other user's: left alone
