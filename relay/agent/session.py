"""The daemon's side of a host's agent (``docs/agent.md``): its streams, and the channel that
carries them, attached on each SSH connection and replayed across outages.

An ``AgentSession`` outlives connections: it is made when the agent is started and ends
when the agent does (its window ran out, relay said goodbye, or the agent could not be
reached again). Between connections it is detached: what front ends write is kept, up to
``mux.LIMIT`` per stream (then their reading pauses), and sent when a connection attaches.
``ControlPort`` is stream 0 shaped like the SSH process ``relay.ssh.supervisor`` drives, so
kernels on an agent are started and reaped by the same code as on ``supervisor.sh``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncssh
import structlog

from relay import wake
from relay.agent import mux
from relay.agent.mux import Frame
from relay.errors import ConnectFailed, ConnectionLost, RelayError
from relay.ssh.packets import write_packets
from relay.tasks import retrieved

__all__ = ["AgentGone", "AgentInfo", "AgentSession", "ControlPort", "Sink", "Stream"]

WINDOW = 8 << 20  # the channel's receive window, as a forward's (relay.ssh.forwards)
PKTSIZE = 128 << 10
ATTACH_TIMEOUT_S = 15.0
# channels closed for what the agent sent on them: this many within this long, and the agent
# is given up (each reattach follows at once, and would meet the same agent)
REFUSALS_KEPT = 3
REFUSALS_WINDOW_S = 60.0
OUTAGES = 8  # resumed outages remembered, to tell a kernel's end during one
# Link streams kept ready, each with its listener open on the host, so that a launch needs
# no round trip before the kernel's start line (as relay.ssh.forwards' spare pool does for
# sshd's listeners): the host's ``spare_forwards``, refilled after each launch; more for a
# while after ``relay connect --kernels N`` (``reserve``). This is its default.
SPARE = 8
# and one hook stream (``serve``), so that a controller launch, whose kernel's Dynamic
# requests come back on one, needs no round trip either: front ends launch controllers one
# at a time.
SPARE_SERVE = 1


class AgentGone(RelayError):
    """The agent cannot be attached again, so its kernels are lost to relay. ``what``, when
    known, says why without the host, for a line that begins with its own account of the
    host; None: its socket was not there (the usual case, the host's own account)."""

    code = "connection_lost"

    def __init__(self, message: str, what: str | None = None) -> None:
        super().__init__(message)
        self.what = what


class AgentImpostor(AgentGone):
    """What answered at the agent's socket is not the agent (``NotTheAgent``)."""

    def __init__(self, host: str, what: str) -> None:
        super().__init__(f"{host}: {what}", what)


class NotTheAgent(Exception):
    """What answered at the agent's socket did not prove that it holds the secret (or sent
    something other than the attach's frames): not relay's agent."""


# asyncssh's reason for a channel that could not open, or was lost, because its connection
# closed (asyncssh.channel); the connection's is_closed() says so only a turn later
CONNECTION_CLOSED = "SSH connection closed"


def _going(conn: asyncssh.SSHClientConnection, reason: str) -> bool:
    """Whether a channel failed with its connection, not because of what it was opened to."""
    return conn.is_closed() or reason == CONNECTION_CLOSED


@dataclass(frozen=True)
class AgentInfo:
    """What the agent's start line said."""

    pid: int
    socket: str
    uid: int
    owner_check: bool  # /proc/net/tcp readable: the agent can tell who connects
    ended: int  # predecessors ended
    # the host has an old-path supervisor's record of this tag (supervisor.sh's
    # relay-TAG.XXXXXX): a session a silent loss may have left, with kernels, for a sweep
    supervised: bool = False


class Sink(Protocol):
    """Where a stream's incoming bytes go: a front end's TCP transport, or the control port."""

    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


# A sink whose transport has closed raises (uvloop: RuntimeError, "the handler is closed"); it
# must never reach asyncssh's data_received, which would end the whole SSH connection.
_SINK_GONE = contextlib.suppress(OSError, RuntimeError, asyncssh.Error)


class Stream:
    """One stream: what we sent and not yet had acknowledged, what we took in, and its sink."""

    def __init__(self, session: AgentSession, sid: int) -> None:
        self.sid = sid
        self._session = session
        self.out = mux.Outbox()
        self.inbox = mux.Inbox()
        self.sink: Sink | None = None
        self._early: list[Frame] = []  # arrived before the sink did
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.opened.add_done_callback(retrieved)
        # the agent refused a connection to this stream's listener that closed before it could
        # be checked (a closing socket is nobody's): its kernel's, if that kernel then exited
        self.closed_unchecked = False
        self._finished = False  # both directions over: forgotten by the session
        # the agent's socket will send no more (EOF or CLOSE came): everything it read is here
        self.drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._paused = False  # our sink's reading paused: too much unacknowledged
        self.eof_sent = False

    # -- from the sink, to the agent ---------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.out.closed:
            return
        self._session._send(self, self.out.push(Frame(mux.DATA, self.sid, data)))
        if self.out.load > mux.LIMIT and not self._paused and self.sink is not None:
            self._paused = True
            with _SINK_GONE:
                self.sink.pause_reading()

    def send_eof(self) -> None:
        if not self.out.closed and not self.eof_sent:
            self.eof_sent = True
            self._session._send(self, self.out.push(Frame(mux.EOF, self.sid)))

    def send_close(self) -> None:
        if not self.out.closed:
            self._session._send(self, self.out.push(Frame(mux.CLOSE, self.sid)))
        self._check_finished()

    def attach(self, sink: Sink) -> None:
        """The sink is there: what arrived before it is delivered now."""
        self.sink = sink
        early, self._early = self._early, []
        for frame in early:
            self._deliver(frame)
        self._session._ack_soon(self)

    # -- from the agent ------------------------------------------------------------------------
    def received(self, frame: Frame) -> None:
        self.inbox.take(frame)
        if frame.type in (mux.EOF, mux.CLOSE) and not self.drained.done():
            self.drained.set_result(None)
        if frame.type == mux.OPEN:
            if not self.opened.done():
                self.opened.set_result(None)
            return
        if self.sink is None:
            self._early.append(frame)
            return
        self._deliver(frame)

    def _deliver(self, frame: Frame) -> None:
        assert self.sink is not None
        if frame.type == mux.DATA:
            with _SINK_GONE:  # the front end closed: what was on its way has nowhere to go
                self.sink.write(frame.payload)
        elif frame.type == mux.EOF:
            with _SINK_GONE:
                self.sink.write_eof()
        elif frame.type == mux.CLOSE:
            self.sink.close()
            self._check_finished()

    def acked(self, position: int) -> None:
        self.out.acked(position)
        self._flow()
        self._check_finished()

    def _flow(self) -> None:
        if self._paused and self.out.load <= mux.LIMIT // 2 and self.sink is not None:
            self._paused = False
            with _SINK_GONE:
                self.sink.resume_reading()

    def resume_from(self, position: int, handed: int | None = None) -> list[bytes]:
        """What to send again on attach, the agent having received up to ``position`` and
        handed on (to the kernel's socket) up to ``handed``. That is an acknowledgement too
        (its ACK may have been lost with the old connection), so a sink paused for too much
        unacknowledged reads again once the agent holds no more than half of LIMIT. A
        position below what we kept: the agent forgot a stream that is over for it (it
        remembers the last few thousand); nothing it lacks can be sent."""
        position = max(self.out.base, position)
        wire = self.out.replay(position, handed)
        self._flow()
        self._check_finished()
        return wire

    def handed(self) -> int:
        """The position up to which what came in is out of our hands (in the sink's socket)."""
        waiting = sum(len(f.payload) + (f.type != mux.DATA) for f in self._early)
        if self.sink is not None:
            with contextlib.suppress(Exception):
                waiting += self.sink.get_write_buffer_size()
        return max(self.inbox.acked, self.inbox.position - waiting)

    def motion(self) -> tuple[int, int, float]:
        """What has come in, and what of it is out of our hands: a reading that changes while
        the stream's bytes still move toward its sink. While the session is resuming it
        changes at each reading: what the agent keeps comes once the connection is back (or
        the window's end drops the stream), so an outage is not a peer that stopped."""
        resuming = 0.0 if self._session.attached else time.monotonic()
        return self.inbox.position, self.handed(), resuming

    def _check_finished(self) -> None:
        if self.out.done and self.inbox.closed and not self._finished:
            self._finished = True
            self._session._forget(self)

    def drop(self) -> None:
        """Give up on the stream (its kernel is gone, or the agent is): the sink closed."""
        if self.sink is not None:
            self.sink.close()
        if not self.opened.done():
            self.opened.cancel()
        self._finished = True
        if not self.drained.done():
            self.drained.set_result(None)

    def snapshot(self) -> dict[str, Any]:
        return {"stream": self.sid, "unacked": self.out.unacked, "received": self.inbox.position}


class _Channel(asyncssh.SSHUNIXSession[bytes]):
    """The SSH channel to the agent's socket: frames in, to the session."""

    def __init__(self, session: AgentSession) -> None:
        self._session = session
        self._reader = mux.FrameReader()
        self.chan: asyncssh.SSHUNIXChannel[bytes] | None = None
        loop = asyncio.get_running_loop()
        # the agent's random bytes, sent as it accepts: the daemon's proof covers them
        self.challenge: asyncio.Future[bytes] = loop.create_future()
        self.challenge.add_done_callback(retrieved)
        self.nonce: bytes | None = None  # ours, in the HELLO: the agent's proof covers it
        self.welcome: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.welcome.add_done_callback(retrieved)
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.refused: str | None = None  # closed by us for what the agent sent on it

    def connection_made(self, chan: asyncssh.SSHUNIXChannel[bytes]) -> None:
        self.chan = chan

    def write(self, *pieces: bytes) -> None:
        """Send, unless the channel is already closing (the agent ended, or the connection
        is going): what is lost then is kept and replayed, or no longer wanted."""
        if self.chan is not None:
            with contextlib.suppress(OSError, asyncssh.Error):
                write_packets(self.chan, *pieces)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        # Nothing may escape to asyncssh, which would end the whole SSH connection (every
        # forward on it) for what is this channel's fault alone: garbage, or an ACK beyond
        # what was sent, closes this channel, and the session resumes or ends as for a loss.
        try:
            self._frames(self._reader.feed(data))
        except mux.FrameError as exc:
            self._session._log.warning("agent sent garbage; channel closed", error=str(exc)[:200])
            self._refuse(NotTheAgent(f"garbage: {str(exc)[:200]}"), "a frame relay cannot read")
        except Exception as exc:
            self._session._log.exception("agent's frames not understood; channel closed")
            why = ConnectionError(f"relay closed it: {exc!r}"[:300])
            self._refuse(why, "frames relay failed on")

    def _refuse(self, why: Exception, what: str) -> None:
        """Close the channel for what came on it: an attach waiting on it ends with ``why``
        (not as if the agent had closed it), and the session counts it (``_lost``)."""
        self.refused = what
        for waiting in (self.challenge, self.welcome):
            if not waiting.done():
                waiting.set_exception(why)
        if self.chan is not None:
            self.chan.close()

    def _frames(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.type == mux.CHALLENGE:
                if not self.challenge.done():
                    self.challenge.set_result(frame.payload)
            elif frame.type == mux.WELCOME:
                if not self.welcome.done():
                    try:
                        welcome = self._proven(frame.payload)
                    except (ValueError, NotTheAgent) as exc:
                        self.welcome.set_exception(exc)
                    else:
                        # before the replay behind it is read: a kernel's exit in it is
                        # told against this outage and the agent's clock (``outage_around``)
                        self._session._welcomed(welcome)
                        self.welcome.set_result(welcome)
            elif not self.welcome.done():  # nothing else before the agent has proved itself
                if not self.challenge.done():
                    self.challenge.set_exception(NotTheAgent(f"a frame of type {frame.type}"))
                self.welcome.set_exception(NotTheAgent(f"a frame of type {frame.type}"))
            else:
                self._session._frame(self, frame)
        self._session._flush_acks()

    def _proven(self, payload: bytes) -> dict[str, Any]:
        """The WELCOME, once its proof shows the agent holds the secret: over our nonce and
        its challenge, so it was made for this attach (docs/agent.md)."""
        try:
            welcome = json.loads(payload)
        except (ValueError, RecursionError):  # too deep, too many digits: not the agent's
            raise NotTheAgent("a WELCOME that is not the agent's JSON") from None
        if not isinstance(welcome, dict):
            raise NotTheAgent("a WELCOME that is not a JSON object")
        challenge = self.challenge.result() if self.challenge.done() else None
        if self.nonce is None or challenge is None:
            raise NotTheAgent("a WELCOME before relay's HELLO")
        wanted = mux.proof(self._session._secret.encode(), mux.AGENT, self.nonce, challenge)
        if not hmac.compare_digest(str(welcome.get("proof", "")).encode(), wanted.encode()):
            raise NotTheAgent("a WELCOME without the secret's proof")
        return welcome

    def connection_lost(self, exc: Exception | None) -> None:
        why = str(exc) if exc else "closed by the agent"
        if not self.challenge.done():
            self.challenge.set_exception(ConnectionError(why))
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(why))
        if not self.gone.done():
            self.gone.set_result(None)
        self._session._lost(self)


class ControlPort:
    """Stream 0 as the SSH process ``relay.ssh.supervisor.Supervisor`` drives: ``stdin``
    takes lines, ``stdout`` gives the agent's lines, until the agent is gone for good."""

    def __init__(self, session: AgentSession) -> None:
        self._session = session
        self._lines: asyncio.StreamReader = asyncio.StreamReader(limit=1 << 20)
        self.stdin = _ControlIn(session)
        self.exit_status: int | None = None
        self.exit_signal: str | None = None

    # the stream's sink: the agent's lines
    def write(self, data: bytes) -> None:
        self._lines.feed_data(data)

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        if not self._lines.at_eof():
            self._lines.feed_eof()

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass  # lines from the daemon are few and small: never paused

    def resume_reading(self) -> None:
        pass

    @property
    def stdout(self) -> AsyncIterator[str]:
        return self._read()

    async def _read(self) -> AsyncIterator[str]:
        while True:
            raw = await self._lines.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace")
            if not self._session._control_line(line):
                yield line

    @property
    def stderr(self) -> AsyncIterator[str]:
        return self._none()

    async def _none(self) -> AsyncIterator[str]:
        return
        yield  # an empty async generator

    async def wait_closed(self) -> None:
        await self._session.ended


class _ControlIn:
    def __init__(self, session: AgentSession) -> None:
        self._session = session
        self._eof = False

    def write(self, text: str) -> None:
        self._session.control.send(text.encode())

    def write_eof(self) -> None:
        """The supervisor's end of input: relay says goodbye, the agent ends its kernels."""
        self._eof = True
        self._session.goodbye()

    def is_closing(self) -> bool:
        return self._eof


class AgentSession:
    """One host's agent, as the daemon sees it (see the module)."""

    def __init__(
        self,
        host: str,
        info: AgentInfo,
        secret: str,
        *,
        window_s: float,
        silence_s: float,
        spares: int = SPARE,
        serve_spares: int = SPARE_SERVE,
    ) -> None:
        self.host = host
        self.spares = spares  # link streams kept spare, as the host's spare_forwards
        self.serve_spares = serve_spares
        self._want = spares  # more while a reserve lingers
        self._shrink_timer: asyncio.TimerHandle | None = None
        self.info = info
        self._secret = secret
        self.window_s = window_s  # as the agent has it: what a resume counts down
        # relay.toml's new window, until the agent has it: said on attaching if detached;
        # if attached, sent as a control line and the agent's once it acknowledges the line
        # (``_window_at``): on a path that died silently it never arrives (a review's
        # finding: a window raised then was shown as the kernels', and the agent kept 5 s)
        self._window_next: float | None = None
        self._window_at: int | None = None  # the control stream's position past that line
        self._hello_window: float | None = None  # the window the last HELLO told the agent
        self.silence_s = silence_s
        self._log = structlog.get_logger("relay.agent").bind(host=host)
        self._streams: dict[int, Stream] = {}
        self._next_sid = 1
        self._channel: _Channel | None = None  # attached and replayed
        self._attaching: _Channel | None = None
        self._acks: set[Stream] = set()
        self._ack_handle: asyncio.Handle | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self.port = ControlPort(self)
        self.control = self._new_stream(0)
        self.control.attach(self.port)
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.end_reason: str | None = None
        # the last word before a detach: when, on the wall clock (said to people, placed
        # against the agent's clock) and on the steady one (the window's: relay.wake.steady)
        self.lost_at: float | None = None
        self.lost_clock: float | None = None
        # the last outages resumed, (lost_at, back, back on the agent's clock), and the
        # agent's clock against ours (its WELCOME says its time): ``outage_around``
        self.outages: collections.deque[tuple[float, float, float]] = collections.deque(
            maxlen=OUTAGES
        )
        self._clock_offset = 0.0
        self._refusals: collections.deque[float] = collections.deque(maxlen=REFUSALS_KEPT)
        # why the agent ends its kernels, as its last WELCOME said ("window over": the window
        # ran out on the host first), or None
        self.ending_on_host: str | None = None
        self.heard_at, self.heard_clock = time.time(), wake.steady()
        self.attaches = 0
        self._listens: dict[int, asyncio.Future[int]] = {}
        # ``confirmed``'s waiters: the control stream's position each waits to be acknowledged
        self._confirming: list[tuple[int, asyncio.Future[None]]] = []
        self._spare: list[tuple[Stream, int]] = []
        self._spare_serve: list[tuple[Stream, int]] = []
        self._refilling: asyncio.Future[None] | None = None
        self.refused: Callable[[int, str], None] = lambda sid, uid: None
        # the channel closed on the agent's side, not ours (the host session looks why)
        self.channel_closed: Callable[[], None] = lambda: None
        self._said_bye = False
        self._bye = mux.encode(mux.BYE, 0)
        self.bye_heard: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- streams ---------------------------------------------------------------------------
    def _new_stream(self, sid: int) -> Stream:
        stream = Stream(self, sid)
        self._streams[sid] = stream
        return stream

    def _forget(self, stream: Stream) -> None:
        if stream.sid:
            self._streams.pop(stream.sid, None)
            self._acks.discard(stream)
            # its last ACK (of the agent's CLOSE) now: left to the batch, it went with the
            # stream, and the agent kept its end (and waited on it) until the next attach
            channel = self._channel
            position = stream.inbox.position
            if channel is not None and channel.chan is not None and position > stream.inbox.acked:
                stream.inbox.acked = position
                channel.write(mux.ack(stream.sid, position))

    async def listen(self, n: int) -> list[tuple[Stream, int]]:
        """``n`` new link streams, each with a listener on the host: (stream, port). Spares
        if there are enough (no round trip), else one round trip through the control stream
        (queued while detached); the spares are refilled after."""
        # a spare something connected to already is not a fresh listener: dropped
        for stream, port in [sp for sp in self._spare if sp[0].opened.done()]:
            self._spare.remove((stream, port))
            self.drop(stream)
        if len(self._spare) >= n:
            taken = self._spare[:n]
            del self._spare[:n]
        else:
            taken = await self._listeners("listen", n)
        if taken:  # the agent waits for them across an outage, as we do (it lets a spare go)
            self.control.send("".join(f"take {stream.sid}\n" for stream, _ in taken).encode())
        self._refill()
        return taken

    def _refill(self) -> None:
        if self._refilling is None or self._refilling.done():
            self._refilling = asyncio.ensure_future(self._refill_spares())

    async def _refill_spares(self) -> None:
        with contextlib.suppress(ConnectFailed):  # the agent is gone: no spares to keep
            while not self.ended.done():
                # the lists are read again after each await (`+=` would extend the one read
                # before it, with the spares a launch took meanwhile back in it)
                if len(self._spare) < self._want:
                    got = await self._listeners("listen", self._want - len(self._spare))
                    self._spare.extend(got)
                elif len(self._spare_serve) < self.serve_spares:
                    missing = self.serve_spares - len(self._spare_serve)
                    got = await self._listeners("serve", missing)
                    self._spare_serve.extend(got)
                else:
                    return

    @property
    def spare_links(self) -> int:
        """Link streams kept spare now (their listeners open on the host)."""
        return len(self._spare)

    async def reserve(self, n: int, linger_s: float) -> None:
        """At least ``n`` spare link streams, for a burst announced ahead (``relay connect
        --kernels``): returns once they are there (one round trip), so that launches one
        after another (the Parallel package's Runs) spend none each. Spares beyond the
        host's own number that are still unused after ``linger_s`` are dropped."""
        self._want = max(self.spares, n)
        self._refill()
        if self._refilling is not None:
            await asyncio.wait([self._refilling])  # ends when they are there, or the agent is
        if self.ended.done():
            raise ConnectFailed(f"{self.host}: {self.end_reason or 'the agent is gone'}")
        if self._shrink_timer is not None:
            self._shrink_timer.cancel()
        self._shrink_timer = asyncio.get_running_loop().call_later(linger_s, self._shrink)

    def _shrink(self) -> None:
        self._shrink_timer = None
        self._want = self.spares
        while len(self._spare) > self._want:
            stream, _ = self._spare.pop()
            self.drop(stream)

    async def serve(self) -> tuple[Stream, int]:
        """A stream for a kernel's hook requests (``relay.ssh.hookserver``), with the
        listener on the host they come to: (stream, port). A spare if there is one (no round
        trip), refilled after."""
        # a spare that already carried a request (a process of the user's own found its
        # listener before any kernel was given it) is not a fresh one: dropped
        for stream, port in [sp for sp in self._spare_serve if sp[0].inbox.position]:
            self._spare_serve.remove((stream, port))
            self.drop(stream)
        if self._spare_serve:
            made = self._spare_serve.pop(0)
        else:
            (made,) = await self._listeners("serve", 1)
        self._refill()
        return made

    def connect(self, port: int) -> Stream:
        """A new link stream that the agent carries to the kernel's listener on the host's
        127.0.0.1:``port``. Its ``opened`` is set once connected, or fails with why not (the
        agent closes the stream then); what is sent meanwhile waits in the agent."""
        if self.ended.done():
            raise ConnectFailed(f"{self.host}: {self.end_reason or 'the agent is gone'}")
        stream = self._new_stream(self._next_sid)
        self._next_sid += 1
        self.control.send(f"connect {stream.sid} {port}\n".encode())
        return stream

    async def _listeners(self, op: str, n: int) -> list[tuple[Stream, int]]:
        if self.ended.done():
            raise ConnectFailed(f"{self.host}: {self.end_reason or 'the agent is gone'}")
        loop = asyncio.get_running_loop()
        made: list[tuple[Stream, asyncio.Future[int]]] = []
        for _ in range(n):
            sid = self._next_sid
            self._next_sid += 1
            fut: asyncio.Future[int] = loop.create_future()
            fut.add_done_callback(retrieved)  # the first to fail is raised; not the others
            self._listens[sid] = fut
            made.append((self._new_stream(sid), fut))
            self.control.send(f"{op} {sid}\n".encode())
        try:
            ports = [await fut for _, fut in made]
        except BaseException:
            for stream, _ in made:
                self.drop(stream)
            raise
        finally:
            for stream, _ in made:
                self._listens.pop(stream.sid, None)
        return [(stream, port) for (stream, _), port in zip(made, ports, strict=True)]

    def drop(self, stream: Stream) -> None:
        """The stream is over for us (its kernel is gone): the agent closes its side."""
        if stream.sid in self._streams:
            self._forget(stream)
            if not self.ended.done():
                self.control.send(f"drop {stream.sid}\n".encode())
        stream.drop()

    def _control_line(self, line: str) -> bool:
        """Lines of the agent's own about streams; True if taken here (not the supervisor's)."""
        kind, _, rest = line.rstrip("\n").partition(" ")
        if kind not in {"port", "noport", "refused", "noconnect"}:
            return False
        sid_text, _, value = rest.partition(" ")
        sid = int(sid_text) if sid_text.isdigit() else -1
        if kind == "refused":
            refused = self._streams.get(sid)
            if refused is not None and value.partition(" ")[0] == "c":
                refused.closed_unchecked = True
            self.refused(sid, value)
            return True
        if kind == "noconnect":
            stream = self._streams.get(sid)
            if stream is not None and not stream.opened.done():
                stream.opened.set_exception(
                    ConnectFailed(f"{self.host}: the kernel's link cannot be reached: {value}")
                )
            return True
        fut = self._listens.get(sid)
        if fut is not None and not fut.done():
            if kind == "port" and value.isdigit():
                fut.set_result(int(value))
            else:
                fut.set_exception(
                    ConnectFailed(f"{self.host}: relay's agent could not listen: {value}")
                )
        return True

    # -- the channel -------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._channel is not None

    async def attach(self, conn: asyncssh.SSHClientConnection) -> None:
        """Attach over ``conn``: HELLO, WELCOME, then both sides replay what the other lacks.
        Raises ``AgentGone`` only where the agent is not there any more: sshd, on a live
        connection, could not reach its socket, or the agent closed the channel. A connection
        that fails meanwhile (a flapping path, a stall) raises ``ConnectionLost``: the agent
        and its kernels are as they were, and the next connection tries again."""
        if self.ended.done():
            raise AgentGone(f"{self.host}: {self.end_reason}")
        try:
            _, channel = await conn.create_unix_connection(
                lambda: _Channel(self),
                self.info.socket,
                window=WINDOW,
                max_pktsize=PKTSIZE,
            )
        except asyncssh.ChannelOpenError as exc:
            if _going(conn, exc.reason):
                raise ConnectionLost(
                    f"{self.host}: the connection ended as relay's agent was reached again"
                ) from None
            raise AgentGone(
                f"{self.host}: relay's agent is not there any more ({exc.reason})"
            ) from None
        assert isinstance(channel, _Channel)
        assert channel.chan is not None
        self._attaching = channel
        try:
            welcome = await self._welcome(conn, channel)
        finally:  # taken (below), or given up, however it ends (a resume's window: cancelled)
            self._attaching = None
        if self.ended.done():  # ended while it answered (relay stops): it can be told now
            channel.write(self._bye)
            channel.chan.close()
            raise AgentGone(f"{self.host}: {self.end_reason}")
        try:
            replay = self._replay(welcome)
        except (ValueError, mux.FrameError) as exc:
            channel.chan.close()
            self._log.warning("agent's positions refused", error=str(exc)[:200])
            what = (
                "relay's agent resumed its links at positions relay never sent (a bug, or "
                "another release of relay's agent): its kernels are lost to relay"
            )
            raise AgentGone(f"{self.host}: {what}", what) from None
        for wire in replay:
            channel.write(*wire)
        self._channel = channel
        if self._window_next is not None:
            self.window_s, self._window_next = self._window_next, None
        if self._window_at is not None or (
            self._hello_window is not None and self.window_s != self._hello_window
        ):
            # relay.toml changed between our HELLO and the agent's WELCOME, or a window line
            # was on its way when the connection went (replayed just now, after the HELLO
            # that carried the window since): the window it has now, told last
            self._window_at = None
            self.control.send(f"window w {self.window_s:g}\n".encode())
        self.attaches += 1
        self._heard()
        self._control_heard()  # the WELCOME said how far it had the control lines
        if self.lost_clock is not None:
            self._log.info("resumed", outage_s=round(self.heard_clock - self.lost_clock, 1))
        self.lost_at = self.lost_clock = None
        for stream in list(self._streams.values()):
            self._acks.add(stream)
        self._flush_acks(force=True)
        if self._said_bye:
            channel.write(self._bye)
        elif self.attaches == 1:
            self._refill()  # spare listeners for the first launches

    def _replay(self, welcome: dict[str, Any]) -> list[list[bytes]]:
        """What to send again on each stream, from where the WELCOME says the agent is
        (``recv``, ``handed``: {SID: position}); ValueError or FrameError if a position is
        not one (not a whole number, or outside what the stream sent)."""
        recv, handed = welcome.get("recv", {}), welcome.get("handed", {})
        for name, positions in (("recv", recv), ("handed", handed)):
            if not isinstance(positions, dict) or not all(
                type(p) is int and p >= 0 for p in positions.values()
            ):
                raise ValueError(f"a WELCOME's {name} that is not positions")
        return [
            stream.resume_from(recv.get(str(sid), 0), handed.get(str(sid), recv.get(str(sid), 0)))
            for sid, stream in list(self._streams.items())
        ]

    async def _welcome(
        self, conn: asyncssh.SSHClientConnection, channel: _Channel
    ) -> dict[str, Any]:
        """The agent's CHALLENGE, our HELLO (what the daemon has received of each stream, and
        its proof of the secret), and the agent's WELCOME with its own proof; the channel is
        closed if none comes, or if what answers does not prove it holds the secret."""
        assert channel.chan is not None
        try:
            async with asyncio.timeout(ATTACH_TIMEOUT_S):
                challenge = await asyncio.shield(channel.challenge)
                channel.write(self._hello(channel, challenge))
                return await asyncio.shield(channel.welcome)
        except NotTheAgent as exc:
            channel.chan.close()
            self._log.warning("not relay's agent at its socket", what=str(exc))
            raise AgentImpostor(
                self.host,
                f"what answered at relay's agent's socket ({self.info.socket}) did not prove "
                f"it holds relay's secret, so it is not relay's agent (another user may have "
                f"replaced its directory): nothing of the kernels' links was sent to it, and the "
                f"kernels there are lost to relay",
            ) from None
        except TimeoutError:
            channel.chan.close()  # a stalled path (or a stopped agent): tried again later
            raise ConnectionLost(
                f"{self.host}: relay's agent did not answer within {ATTACH_TIMEOUT_S:g} s"
            ) from None
        except (ConnectionError, ValueError) as exc:
            channel.chan.close()
            if isinstance(exc, ConnectionError) and _going(conn, str(exc)):
                raise ConnectionLost(
                    f"{self.host}: the connection ended as relay's agent was reached again"
                ) from None
            what = f"relay's agent did not take the connection back ({exc})"
            # relay closed the channel for what came on it: said as that, not as a channel
            # sshd refused (``what`` keeps a first attach's from turning the agent off)
            raise AgentGone(
                f"{self.host}: {what}", what if channel.refused is not None else None
            ) from None
        except BaseException:
            channel.chan.close()
            raise

    def _hello(self, channel: _Channel, challenge: bytes) -> bytes:
        """HELLO: what the daemon has of each stream, and its proof of the secret over the
        agent's challenge and a nonce of its own (the secret itself is never sent: what
        answers at the socket may not be the agent)."""
        if len(challenge) < 32:
            raise NotTheAgent(f"a challenge of {len(challenge)} bytes")
        channel.nonce = secrets.token_bytes(32)
        self._hello_window = self._window_next if self._window_next is not None else self.window_s
        hello = {
            "nonce": channel.nonce.hex(),
            "proof": mux.proof(self._secret.encode(), mux.DAEMON, challenge, channel.nonce),
            "recv": {str(sid): s.inbox.position for sid, s in self._streams.items()},
            "handed": {str(sid): s.handed() for sid, s in self._streams.items()},
            "silence_s": self.silence_s,
            "window_s": self._hello_window,
        }
        return mux.encode(mux.HELLO, 0, json.dumps(hello).encode())

    def _welcomed(self, welcome: dict[str, Any]) -> None:
        ending = welcome.get("ending")
        self.ending_on_host = ending if isinstance(ending, str) else None
        now = time.time()
        agent_now = welcome.get("now")
        if isinstance(agent_now, int):  # a whole number past a float's range: no clock
            agent_now = float(agent_now) if abs(agent_now) < 2**1023 else None
        if isinstance(agent_now, float) and math.isfinite(agent_now):
            self._clock_offset = now - agent_now
        else:  # a clock it did not say: the last one it did
            agent_now = now - self._clock_offset
        if self.lost_at is not None:
            self.outages.append((self.lost_at, now, agent_now))

    def local_time(self, host_time: float) -> float:
        """A wall time on the agent's clock (as its ``exit`` lines give it) on ours, to about
        the WELCOME's one-way trip (it is in the offset)."""
        return host_time + self._clock_offset

    def outage_around(self, host_time: float) -> tuple[float, float] | None:
        """The resumed outage (lost_at, back: our clock) during which something the agent
        timed at ``host_time`` (its clock) happened, if one was. Whether it came before the
        agent's WELCOME is told on the agent's own clock, exactly: a kernel that quits as the
        connection comes back is not taken for one that ended while it was down."""
        when = self.local_time(host_time)
        for lost, back, back_on_agent in self.outages:
            if lost <= when and host_time < back_on_agent:
                return lost, back
        return None

    def set_window(self, window_s: float) -> bool:
        """The host's resume_window_s changed (relay.toml): the running kernels take it too.
        Sent at once if attached (a control line, replayed like any other), and the
        kernels' once the agent acknowledges it; else with the next attach's HELLO. Until
        then the agent's window stands, as ``window_s`` says. True if it was sent now."""
        if self._channel is None:
            self._window_next = window_s if window_s != self.window_s else None
            return False
        if window_s != (self._window_next if self._window_next is not None else self.window_s):
            self.control.send(f"window w {window_s:g}\n".encode())
            self._window_next, self._window_at = window_s, self.control.out.end
        return True

    def _window_heard(self) -> None:
        """The agent acknowledged control lines: the window line among them is its now."""
        if self._window_at is not None and self.control.out.acked_at >= self._window_at:
            assert self._window_next is not None
            self.window_s, self._window_next, self._window_at = self._window_next, None, None

    def _control_heard(self) -> None:
        """The agent acknowledged control lines (an ACK, or a resume's WELCOME)."""
        self._window_heard()
        acked = self.control.out.acked_at
        waiting = []
        for position, fut in self._confirming:
            if fut.done():
                continue
            if acked >= position:
                fut.set_result(None)
            else:
                waiting.append((position, fut))
        self._confirming = waiting

    async def confirmed(self) -> None:
        """Returns once the agent has every control line sent until now (acknowledged within
        ACK_DELAY_S of its arrival, or by a resume's WELCOME): what it was told to keep (a
        ``take``) it keeps through an outage. ConnectFailed if the agent is gone first. A
        requested forward was answered with its ``take`` still on a path that had just gone
        silent; the agent, holding nothing it had been told to keep, ended, and the name the
        user was given led nowhere (a review's reproduction)."""
        position = self.control.out.end
        if self.control.out.acked_at >= position:
            return
        if self.ended.done():
            raise ConnectFailed(f"{self.host}: {self.end_reason or 'the agent is gone'}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirming.append((position, fut))
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()

    def detach(self) -> None:
        """The connection is gone (or declared so): keep everything, send nothing."""
        channel, self._channel = self._channel, None
        if channel is not None:
            self.lost_at, self.lost_clock = self.heard_at, self.heard_clock
            if channel.chan is not None:
                channel.chan.close()

    def _lost(self, channel: _Channel) -> None:
        if channel is self._channel:
            self.detach()
            if self._said_bye:  # the agent ended its kernels and exited, as it was told
                self.end("relay ended the host's kernels")
            elif channel.refused is not None and self._refused_again():
                self.end(
                    f"relay's agent on {self.host} sent {channel.refused} on every channel "
                    f"relay opened to it ({REFUSALS_KEPT} within {REFUSALS_WINDOW_S:g} s: "
                    f"another release of relay's agent?): its kernels are lost to relay"
                )
            else:
                self.channel_closed()

    def _refused_again(self) -> bool:
        """A channel we closed for what the agent sent: whether that is the last straw (the
        attach that follows meets the same agent, at once, with no backoff)."""
        now = time.monotonic()
        self._refusals.append(now)
        return len(self._refusals) == REFUSALS_KEPT and now - self._refusals[0] < REFUSALS_WINDOW_S

    def _send(self, stream: Stream, wires: list[bytes]) -> None:
        channel = self._channel
        if channel is not None and channel.chan is not None:
            channel.write(*wires)

    def _frame(self, channel: _Channel, frame: Frame) -> None:
        if channel is not self._channel and channel is not self._attaching:
            return  # an old channel's last gasp: its frames are replayed on the new one
        self._heard()
        if frame.type == mux.BYE:  # the agent's answer to ours: it is ending its kernels
            if not self.bye_heard.done():
                self.bye_heard.set_result(None)
            return
        stream = self._streams.get(frame.stream)
        if stream is None:
            return  # dropped by us: the agent learns it from the drop line
        if frame.type == mux.ACK:
            stream.acked(mux.ack_position(frame.payload))
            if stream is self.control:
                self._control_heard()
        elif frame.type in (mux.DATA, mux.EOF, mux.CLOSE, mux.OPEN):
            stream.received(frame)
            self._acks.add(stream)

    def _ack_soon(self, stream: Stream) -> None:
        self._acks.add(stream)
        if self._ack_handle is None:
            self._ack_handle = asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self, force: bool = False) -> None:
        """ACK each stream that has taken in ``mux.ACK_EVERY`` since its last ACK, and the
        control stream; the rest ``mux.ACK_DELAY_S`` later (``force``), batched: one ACK for
        many small messages."""
        self._ack_handle = None
        if force:
            self._ack_timer = None
        channel = self._channel
        if channel is None or channel.chan is None:
            return
        waiting = set()
        for stream in self._acks:
            position = stream.handed()
            if position <= stream.inbox.acked:
                continue
            # the control stream's at once: its lines are few, and the agent waits across an
            # outage for a kernel's end it told until it is acknowledged (its ``links``)
            if force or not stream.sid or position - stream.inbox.acked >= mux.ACK_EVERY:
                stream.inbox.acked = position
                channel.write(mux.ack(stream.sid, position))
            else:
                waiting.add(stream)
        self._acks = waiting
        if waiting and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                mux.ACK_DELAY_S, self._flush_acks, True
            )

    # -- the end -----------------------------------------------------------------------------
    def goodbye(self, grace_s: float | None = None) -> None:
        """relay stops (or closes the idle host): the agent ends every kernel (SIGTERM, then
        SIGKILL ``grace_s`` later: its own 5 s if not given) and exits. Said again, it can
        only bring the SIGKILL closer."""
        self._said_bye = True
        if grace_s is not None:
            self._bye = mux.encode(mux.BYE, 0, f"{max(0.0, grace_s):g}".encode())
        channel = self._channel
        if channel is not None and channel.chan is not None:
            channel.write(self._bye)
        else:
            self.end("relay said goodbye while the connection was down")

    def let_go(self, reason: str) -> None:
        """relay lets the agent go with nothing to say to it (its connection lost with
        nothing on it): relay's own doing, as a goodbye, not news. The agent, with nothing to
        keep and no daemon, exits by itself."""
        self._said_bye = True
        self.end(reason)

    def end(self, reason: str) -> None:
        """The agent is gone for us: every stream's sink closed, the supervisor told."""
        if self.ended.done():
            return
        self.end_reason = reason
        self.ended.set_result(None)
        if self._refilling is not None:
            self._refilling.cancel()
        if self._shrink_timer is not None:
            self._shrink_timer.cancel()
        self._spare.clear()
        self._spare_serve.clear()
        for fut in self._listens.values():
            if not fut.done():
                fut.set_exception(ConnectFailed(f"{self.host}: {reason}"))
        for _, confirming in self._confirming:
            if not confirming.done():
                confirming.set_exception(ConnectFailed(f"{self.host}: {reason}"))
        self._confirming = []
        for stream in list(self._streams.values()):
            stream.drop()
        self._streams.clear()
        self.port.close()
        self.detach()

    def _heard(self) -> None:
        self.heard_at, self.heard_clock = time.time(), wake.steady()

    def window_left(self) -> float | None:
        """Seconds of the window left while detached (on the steady clock: a sleep counts,
        an NTP step does not); None while attached."""
        if self.lost_clock is None:
            return None
        return max(0.0, self.lost_clock + self.window_s - wake.steady())

    def snapshot(self) -> dict[str, Any]:
        left = self.window_left()
        return {
            "pid": self.info.pid,
            "attached": self.attached,
            "window_s": self.window_s,
            # a new window relay.toml gave while detached: the kernels take it on attaching
            "window_next_s": self._window_next,
            "lost_at": self.lost_at,
            "window_left_s": round(left, 1) if left is not None else None,
            "attaches": self.attaches,
            # what the links hold, as their rows in relay status add up: relay's own lines
            # to the agent (the control stream) are a few bytes no link shows
            "unacked": sum(s.out.unacked for s in self._streams.values() if s is not self.control),
            # link streams: not the control stream, not the spares no kernel has been given
            "streams": len(self._streams) - 1 - len(self._spare) - len(self._spare_serve),
            "spares": len(self._spare) + len(self._spare_serve),
        }

    @property
    def window_next(self) -> float | None:
        """A window relay.toml gave that the agent does not have yet: while detached, which
        the kernels take on attaching; while attached, until the agent acknowledges it."""
        return self._window_next

    @property
    def said_bye(self) -> bool:
        """relay told the agent to end its kernels (a stop, an idle close): their end is
        relay's doing, not news."""
        return self._said_bye

    def channel_gone(self) -> asyncio.Future[None] | None:
        return self._channel.gone if self._channel is not None else None
