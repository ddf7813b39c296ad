"""The daemon's side of an agent's streams (relay.agent.session), without a connection."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import asyncssh
import pytest
import structlog

from relay import wake
from relay.agent import mux
from relay.agent import session as session_module
from relay.agent.expose import AgentExpose
from relay.agent.session import (
    CONNECTION_CLOSED,
    SPARE,
    SPARE_SERVE,
    AgentGone,
    AgentInfo,
    AgentSession,
    Stream,
)
from relay.errors import ConnectFailed, ConnectionLost
from relay.lite.linkname import LinkName
from relay.peerowner import CLOSING, GONE
from relay.settings import HostConfig
from relay.ssh.guard import STRANGER, UNCHECKED, WHY
from relay.ssh.host import HostSession

INFO = AgentInfo(pid=1, socket="/nonexistent", uid=0, owner_check=True, ended=0)


class Sink:
    """A front end's transport as a stream sees it: reading paused or not."""

    def __init__(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def paused_stream(session: AgentSession) -> tuple[Stream, Sink]:
    """Stream 1 with a front end that wrote past mux.LIMIT, nothing acknowledged: paused."""
    stream = session._new_stream(1)
    sink = Sink()
    stream.attach(sink)
    chunk = b"x" * (1 << 20)
    for _ in range(mux.LIMIT // len(chunk) + 1):
        stream.send(chunk)
    assert sink.paused
    return stream, sink


async def test_a_front_end_paused_before_an_outage_reads_again_after_it() -> None:
    """Past mux.LIMIT unacknowledged the front end's reading pauses; the ACK that would
    resume it is lost with the connection. The agent's WELCOME position, on the next attach,
    acknowledges as much: the front end reads again (found by the random outage schedules in
    tests/e2e/test_link_integrity.py, which then stalled for good)."""
    session = AgentSession("host", INFO, "0" * 64, window_s=60, silence_s=1)
    stream, sink = paused_stream(session)
    chunk = b"x" * (1 << 20)
    sent = stream.out.unacked
    resent = stream.resume_from(sent)  # all of it arrived; its ACK did not
    assert resent == []
    assert stream.out.unacked == 0 and not sink.paused
    # a position short of what was sent: the rest is sent again, and while more than half
    # of LIMIT is still unacknowledged, reading waits on
    stream.send(chunk * 5)
    assert sink.paused
    again = mux.FrameReader().feed(b"".join(stream.resume_from(sent + len(chunk))))
    assert sum(len(f.payload) for f in again) == 4 * len(chunk)
    assert sink.paused
    stream.resume_from(sent + 5 * len(chunk))
    assert not sink.paused


async def _asked(session: AgentSession) -> None:
    """Let the session's tasks run until they wait for the agent's ``port`` lines (bounded)."""
    for _ in range(100):
        if session._listens:
            return
        await asyncio.sleep(0)  # a turn of the loop, not a wait for time
    raise AssertionError("nothing asked the agent for a listener")


async def _answered(session: AgentSession) -> None:
    """Answer each listener asked for, as the agent would (``port SID PORT``)."""
    await _asked(session)
    for sid in list(session._listens):
        session._control_line(f"port {sid} {20000 + sid}\n")
    await asyncio.sleep(0)


async def test_spare_listeners_are_each_given_to_one_launch_only() -> None:
    """Launches take spare streams while the spares are being refilled: the refill must not
    put back the ones a launch took (it did: found by the pool benchmark at 50 ms RTT, where
    two kernels were given one listener)."""
    session = AgentSession("host", INFO, "0" * 64, window_s=60, silence_s=1)
    session._refill()
    await _answered(session)
    await _answered(session)  # the hook streams, asked for once the link spares are there
    assert (len(session._spare), len(session._spare_serve)) == (SPARE, SPARE_SERVE)
    first = await session.listen(2)
    await _asked(session)  # the refill for them is asked, not yet answered
    second = await session.listen(2)
    await _answered(session)
    await _answered(session)  # and the refill for the second
    given = [stream.sid for stream, _ in first + second]
    spare = [stream.sid for stream, _ in session._spare]
    assert len(set(given)) == 4 and not set(given) & set(spare)
    assert len(spare) == SPARE
    # relay status counts the links given out, not the spares beside them
    assert (session.snapshot()["streams"], session.snapshot()["spares"]) == (
        4,
        SPARE + SPARE_SERVE,
    )
    session.end("test over")


async def test_a_controllers_hook_stream_is_a_spare_and_needs_no_round_trip() -> None:
    """A controller launch asks for its hook's stream beside its link's: from the spares,
    with nothing asked of the agent, and the spare is made again after. One that carried a
    request before any kernel was given it is not handed out."""
    session = AgentSession("host", INFO, "0" * 64, window_s=60, silence_s=1)
    session._refill()
    await _answered(session)
    await _answered(session)
    (spare,) = session._spare_serve
    # answered with nothing said by the agent: the spare itself
    assert await asyncio.wait_for(session.serve(), 1) == spare
    await _answered(session)  # the refill
    (fresh,) = session._spare_serve
    fresh[0].received(mux.Frame(mux.DATA, fresh[0].sid, b"1 hello\n"))  # used by someone
    task = asyncio.ensure_future(session.serve())
    await _answered(session)
    stream, _ = await asyncio.wait_for(task, 1)
    assert stream is not fresh[0] and fresh[0].sid not in session._streams
    session.end("test over")


async def test_a_burst_announced_ahead_gets_its_spares_and_they_shrink_back_after() -> None:
    """relay connect --kernels N asks for 2N link streams at once and answers once they are
    there, so that the Parallel package's Runs, one after another, each find two; what is
    left unused goes once the burst's time is over (the host's own number stays)."""
    session = AgentSession("host", INFO, "0" * 64, window_s=60, silence_s=1, spares=2)
    session._refill()
    await _answered(session)
    await _answered(session)  # and the hook's
    assert len(session._spare) == 2
    reserved = asyncio.ensure_future(session.reserve(6, linger_s=60))
    await _answered(session)
    await asyncio.wait_for(reserved, 1)
    assert len(session._spare) == 6
    for _ in range(2):  # two launches, each given two of them without a round trip
        await asyncio.wait_for(session.listen(2), 1)
    assert len(session._spare) == 2
    await _answered(session)  # the refill for the first launch, asked while the second took
    await _answered(session)  # and for the second: back up to the burst's number
    assert len(session._spare) == 6 and session._shrink_timer is not None
    session._shrink()  # the burst's time is over (its timer, run now)
    assert len(session._spare) == 2
    session.end("test over")


async def test_a_time_the_agent_gives_is_placed_against_the_outages_on_our_clock() -> None:
    """The agent's clock may be off ours by minutes; its WELCOME says its time, so an exit
    it timed during an outage is placed in that outage, and one after it is not, even a
    millisecond after: the WELCOME's own time on the agent's clock is the outage's end
    (found by a kernel told to quit in the same moment as the resume)."""
    session = AgentSession("host", INFO, "0" * 64, window_s=60, silence_s=1)
    skew = 300.0  # the host's clock runs five minutes ahead
    now = time.time()
    session.lost_at = now - 40
    welcomed_on_host = now + skew
    session._welcomed({"recv": {}, "now": welcomed_on_host})
    ((lost, back, back_on_agent),) = session.outages
    assert lost == now - 40 and back == pytest.approx(now, abs=5)
    assert back_on_agent == welcomed_on_host
    during = now - 20 + skew
    assert session.local_time(during) == pytest.approx(now - 20, abs=5)
    assert session.outage_around(during) == (lost, back)
    assert session.outage_around(welcomed_on_host + 0.001) is None
    assert session.outage_around(welcomed_on_host + 30) is None
    assert session.outage_around(now - 60 + skew) is None  # before the connection was lost
    session._welcomed({"recv": {}, "now": "garbage"})  # a clock it cannot read: kept as was
    assert session.local_time(during) == pytest.approx(now - 20, abs=5)


class _Chan:
    """An SSH channel as the session's ``_Channel`` uses it: what was written, and closed."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


class _Conn:
    """An SSH connection for ``AgentSession.attach``: the channel open fails with
    ``open_fails`` (a reason), or gives a channel whose end ``then`` scripts."""

    def __init__(self, open_fails: str | None = None) -> None:
        self.open_fails = open_fails
        self.closed = False
        self.channel: Any = None

    def is_closed(self) -> bool:
        return self.closed

    @property
    def ssh(self) -> Any:
        """Itself, where an asyncssh connection is expected."""
        return self

    async def create_unix_connection(self, factory: Any, path: str, **_: Any) -> Any:
        if self.open_fails is not None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, self.open_fails)
        self.channel = factory()
        self.channel.connection_made(_Chan())
        # the agent's challenge, sent as it accepts (relay/agent/remote.py: on_server)
        self.channel.data_received(mux.encode(mux.CHALLENGE, 0, CHALLENGE), None)
        return self.channel.chan, self.channel

    async def hello(self) -> Any:
        """The channel, once the session has written its HELLO on it (bounded)."""
        for _ in range(100):
            if self.channel is not None and self.channel.chan.written:
                return self.channel
            await asyncio.sleep(0)
        raise AssertionError("no HELLO written")


SECRET = "0" * 64
CHALLENGE = b"c" * 32


def _session() -> AgentSession:
    return AgentSession("host", INFO, SECRET, window_s=60, silence_s=1)


def _hello(channel: Any) -> dict[str, Any]:
    """The HELLO the session wrote on ``channel``: its first frame."""
    (first, *_) = mux.FrameReader().feed(bytes(channel.chan.written))
    assert first.type == mux.HELLO, first
    hello: dict[str, Any] = json.loads(first.payload)
    return hello


def _welcome(channel: Any, **fields: Any) -> bytes:
    """The agent's WELCOME to the HELLO on ``channel``, with the proof the real agent makes
    (``recv`` empty unless given)."""
    nonce = bytes.fromhex(_hello(channel)["nonce"])
    shown = mux.proof(SECRET.encode(), mux.AGENT, nonce, CHALLENGE)
    return mux.encode(mux.WELCOME, 0, json.dumps({"recv": {}, **fields, "proof": shown}).encode())


async def test_a_channel_open_cut_by_its_connection_is_tried_again_not_the_agent_gone() -> None:
    """A flapping path closes the new connection as the channel to the agent opens: asyncssh
    says "SSH connection closed". The agent is as it was: ConnectionLost (the resume tries
    again), not AgentGone (which ended every kernel on the host)."""
    with pytest.raises(ConnectionLost):
        await _session().attach(_Conn(open_fails=CONNECTION_CLOSED).ssh)
    # sshd, on a connection that lives on, could not reach the agent's socket: gone
    with pytest.raises(AgentGone, match="not there any more"):
        await _session().attach(_Conn(open_fails="open failed").ssh)


async def test_a_connection_lost_before_the_welcome_is_tried_again() -> None:
    session = _session()
    conn = _Conn()
    attach = asyncio.ensure_future(session.attach(conn.ssh))
    channel = await conn.hello()
    conn.closed = True  # the connection ends, and its channels with it
    channel.connection_lost(ConnectionResetError("reset by peer"))
    with pytest.raises(ConnectionLost):
        await attach
    assert session._attaching is None and not session.attached
    # the agent closes the channel on a connection that lives on: it is gone
    conn = _Conn()
    attach = asyncio.ensure_future(session.attach(conn.ssh))
    (await conn.hello()).connection_lost(None)
    with pytest.raises(AgentGone, match="did not take the connection back"):
        await attach


async def test_no_welcome_in_time_is_tried_again_and_its_channel_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A path that stalls after the handshake: the channel is given up and the attach tried
    again later (the window bounds it), not the kernels ended."""
    monkeypatch.setattr(session_module, "ATTACH_TIMEOUT_S", 0.01)
    session = _session()
    conn = _Conn()
    with pytest.raises(ConnectionLost, match="did not answer"):
        await session.attach(conn.ssh)
    assert conn.channel.chan.closed and session._attaching is None


async def test_what_answers_at_the_agents_socket_is_shown_no_secret_and_sent_nothing() -> None:
    """The agent's socket may lead to another user's (its directory replaced while the
    agent lived): the HELLO shows the secret without sending it, and a WELCOME that does
    not prove it, or anything else in its place, ends the attach as not the agent, with no
    byte of the streams' kept data sent: what went out is the HELLO alone."""
    for answer in (
        mux.encode(mux.WELCOME, 0, b'{"recv": {}, "proof": "00"}'),
        mux.encode(mux.WELCOME, 0, b'{"recv": {}}'),
        mux.encode(mux.DATA, 0, b"pid k1 1\n"),
        # JSON that costs its parser: too deep (RecursionError, which reached asyncssh and
        # ended the whole connection, taken for an outage), too many digits, or none at all
        mux.encode(mux.WELCOME, 0, b"[" * 100_000),
        mux.encode(mux.WELCOME, 0, b'{"recv": ' + b"1" * 5000 + b"}"),
        mux.encode(mux.WELCOME, 0, b"not json"),
        mux.encode(mux.WELCOME, 0, b"[1, 2]"),
    ):
        session = _session()
        paused_stream(session)  # 4 MiB and more kept for the agent
        conn = _Conn()
        attach = asyncio.ensure_future(session.attach(conn.ssh))
        channel = await conn.hello()
        hello = _hello(channel)
        assert SECRET not in json.dumps(hello) and SECRET.encode() not in channel.chan.written
        assert len(bytes.fromhex(hello["nonce"])) == 32
        written = len(channel.chan.written)
        channel.data_received(answer, None)
        with pytest.raises(AgentGone, match="did not prove it holds relay's secret"):
            await attach
        assert len(channel.chan.written) == written and channel.chan.closed
        assert not session.attached


async def _attach(session: AgentSession, **welcome: Any) -> Any:
    """``session`` attached through a ``_Conn`` whose agent answers with a WELCOME
    (``welcome``: fields of its own): the channel."""
    conn = _Conn()
    attach = asyncio.ensure_future(session.attach(conn.ssh))
    channel = await conn.hello()
    channel.data_received(_welcome(channel, **welcome), None)
    await attach
    return channel


async def _attached() -> tuple[AgentSession, Any, Sink]:
    """A session attached through ``_Conn``, with stream 1 at a front end."""
    session = _session()
    channel = await _attach(session)
    sink = Sink()
    session._new_stream(1).attach(sink)
    return session, channel, sink


async def test_a_proven_agents_bad_frame_closes_its_channel_never_the_connection() -> None:
    """An ACK beyond what was sent, or of the wrong size (a bug, another release): the
    FrameError escaped data_received into asyncssh, which ended the whole SSH connection
    with every forward on it. It closes the channel to the agent alone."""
    for frame in (mux.ack(1, 10**6), mux.encode(mux.ACK, 1, b"abc"), mux.ack(0, 10**9)):
        session, channel, _ = await _attached()
        channel.data_received(frame, None)  # raises nothing
        assert channel.chan.closed, frame
        session.end("test over")


async def test_an_agent_that_sends_garbage_on_every_attach_is_given_up() -> None:
    """Each channel relay closes for what the agent sent is followed by an attach at once
    (no backoff), which meets the same agent: a loop at the speed of a round trip, a
    traceback each time (a review's finding). The third within a minute ends the session."""
    session = _session()
    for attempt in range(3):
        channel = await _attach(session)
        channel.data_received(mux.ack(0, 10**9), None)  # an ACK beyond what was sent
        assert channel.chan.closed
        channel.connection_lost(None)  # as asyncssh says it, once closed
        assert session.ended.done() == (attempt == 2), attempt
    assert "sent a frame relay cannot read on every channel" in str(session.end_reason)


async def test_a_welcome_whose_clock_is_past_a_floats_range_is_taken_without_it() -> None:
    """A proven WELCOME's "now" of 10**400: converting it raised OverflowError in the middle
    of the frames, and the attach ended as if the agent had closed the channel."""
    session = _session()
    await _attach(session, now=10**400)
    assert session.attached
    session.end("test over")


async def test_a_welcome_at_positions_never_sent_ends_the_attach_in_one_line() -> None:
    """A proven WELCOME whose positions are not whole numbers, or beyond what the daemon
    sent: the attach raised ValueError, AttributeError or a FrameError with a number of
    300 digits, which the resume does not catch. It is AgentGone, saying why in one line."""
    recv: Any
    for recv in ({"0": 99}, {"1": 5}, {"0": "x"}, [], {"0": 1e300}, {"0": -1}, {"0": True}):
        session = _session()
        session._new_stream(1).attach(Sink())
        conn = _Conn()
        attach = asyncio.ensure_future(session.attach(conn.ssh))
        channel = await conn.hello()
        channel.data_received(_welcome(channel, recv=recv), None)
        with pytest.raises(AgentGone, match="at positions relay never sent") as caught:
            await attach
        assert caught.value.what is not None and "\n" not in str(caught.value)
        assert len(str(caught.value)) < 200, caught.value
        assert channel.chan.closed and not session.attached
    for handed in ({"0": "x"}, {"0": -3}, "x"):
        session = _session()
        conn = _Conn()
        attach = asyncio.ensure_future(session.attach(conn.ssh))
        channel = await conn.hello()
        channel.data_received(_welcome(channel, handed=handed), None)
        with pytest.raises(AgentGone, match="at positions relay never sent"):
            await attach


async def test_an_attach_cancelled_while_waiting_leaves_no_channel_half_taken() -> None:
    """A resume's window runs out while the agent has not answered: the channel is closed
    and a WELCOME that comes after is not taken (nor frames behind it)."""
    session = _session()
    conn = _Conn()
    attach = asyncio.ensure_future(session.attach(conn.ssh))
    channel = await conn.hello()
    attach.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attach
    assert channel.chan.closed and session._attaching is None and not session.attached


async def test_a_session_ended_while_the_agent_answers_tells_it_goodbye() -> None:
    """relay stops while an attach waits for the WELCOME (its links ended at once, the host
    stranded): the agent answers after all, so it is told to end its kernels now, not left
    to its window, and the ended session stays detached."""
    session = _session()
    conn = _Conn()
    attach = asyncio.ensure_future(session.attach(conn.ssh))
    channel = await conn.hello()
    session.end("relay stopped while the connection was down")
    hello_len = len(channel.chan.written)
    channel.data_received(_welcome(channel), None)
    with pytest.raises(AgentGone):
        await attach
    frames = mux.FrameReader().feed(bytes(channel.chan.written[hello_len:]))
    assert [f.type for f in frames] == [mux.BYE]
    assert channel.chan.closed and not session.attached


async def test_a_stream_over_both_ways_acknowledges_the_agents_close_as_it_goes() -> None:
    """The front end closes first: our CLOSE, then the agent's CLOSE and its ACK of ours
    in one read. The ACK that finishes the stream came before ours of the agent's CLOSE was
    sent (they are batched), and forgetting the stream dropped it: the agent kept its end
    until the next attach, and a detached agent with no kernels waited out its window."""
    session = _session()
    channel = await _attach(session)
    stream = session._new_stream(1)
    stream.attach(Sink())
    channel.data_received(mux.encode(mux.OPEN, 1), None)
    stream.send_close()
    before = len(channel.chan.written)
    channel.data_received(mux.encode(mux.CLOSE, 1) + mux.ack(1, 1), None)
    assert 1 not in session._streams  # over both ways
    written = mux.FrameReader().feed(bytes(channel.chan.written[before:]))
    acks = [mux.ack_position(f.payload) for f in written if (f.type, f.stream) == (mux.ACK, 1)]
    assert acks == [2], written  # its OPEN and its CLOSE
    session.end("test over")


async def test_a_front_end_admitted_after_the_agent_ended_is_closed_not_kept() -> None:
    """A front end connects to a mirrored listener just as the agent ends (its window, a
    stop): there is no stream to give it. Its connection is closed and the expose fails;
    it was left open, and the admit's error went nowhere."""
    session = _session()
    session.end("the window ran out")

    class Guard:
        async def admit(self, *_: Any) -> bool:
            return True

    class Transport:
        aborted = False

        def get_extra_info(self, name: str) -> Any:
            return ("127.0.0.1", 40000) if name == "peername" else None

        def abort(self) -> None:
            self.aborted = True

    expose = AgentExpose(session, Guard())  # type: ignore[arg-type]
    expose._name = LinkName.parse("40001@127.0.0.1,40002@127.0.0.1")  # as if it listened
    frontend: Any = SimpleNamespace(transport=Transport(), join=lambda stream: None)
    await expose._listeners[0].admit(frontend)
    assert frontend.transport.aborted
    with pytest.raises(ConnectFailed, match="the window ran out"):
        await expose.connected


async def test_what_the_agent_holds_unhanded_at_an_attach_keeps_the_front_end_paused() -> None:
    """The kernel stopped reading, then an outage: the agent took in all we sent (its
    WELCOME's recv) and handed none of it to the kernel (its ``handed``). Our front end
    stays paused until the agent's ACKs say that no more than half of LIMIT waits there:
    it read again at once, and each outage piled another LIMIT up in the agent."""
    stream, sink = paused_stream(_session())
    sent = stream.out.end
    assert stream.resume_from(sent, handed=0) == []  # nothing to send again
    assert stream.out.unacked == 0 and sink.paused
    stream.acked(sent - mux.LIMIT // 2 - 1)
    assert sink.paused
    stream.acked(sent - mux.LIMIT // 2)
    assert not sink.paused


async def test_a_window_changed_between_hello_and_welcome_is_told_after_the_attach() -> None:
    """relay.toml's resume_window_s changes while the agent has our HELLO (with the old
    window) but has not answered: the session takes the new one on attaching, and so must
    the agent, or the two count down different windows. An attach with nothing changed
    says nothing more."""
    session = _session()
    conn = _Conn()
    attach = asyncio.ensure_future(session.attach(conn.ssh))
    channel = await conn.hello()
    assert not session.set_window(120)  # not attached yet: kept for the attach
    assert session.snapshot()["window_next_s"] == 120  # relay status: "window once back"
    assert not session.set_window(60)  # changed back: nothing waits
    assert session.snapshot()["window_next_s"] is None
    assert not session.set_window(120)
    hello_len = len(channel.chan.written)
    channel.data_received(_welcome(channel), None)
    await attach
    assert session.window_s == 120
    frames = mux.FrameReader().feed(bytes(channel.chan.written[hello_len:]))
    control = b"".join(f.payload for f in frames if f.type == mux.DATA and f.stream == 0)
    assert b"window w 120\n" in control, frames
    # detached again with the window unchanged: the next HELLO has it, nothing follows it
    session.detach()
    conn = _Conn()
    attach = asyncio.ensure_future(session.attach(conn.ssh))
    channel = await conn.hello()
    hello_len = len(channel.chan.written)
    took = {"recv": {"0": session.control.out.end}}  # all of it: nothing to send again
    channel.data_received(_welcome(channel, **took), None)
    await attach
    frames = mux.FrameReader().feed(bytes(channel.chan.written[hello_len:]))
    control = b"".join(f.payload for f in frames if f.type == mux.DATA and f.stream == 0)
    assert b"window w" not in control, frames


async def test_a_window_sent_is_the_kernels_once_the_agent_acknowledges_that_line() -> None:
    """A window changed while attached is sent at once, and counted as the agent's only once
    its ACKs reach the line: an ACK of an earlier line does not make it so (the line may be
    lost with the path, and the two sides would count down different windows)."""
    session = _session()
    channel = await _attach(session)
    session.control.send(b"ping p1\n")
    before = session.control.out.end
    assert session.set_window(120)  # sent now
    assert session.window_s == 60
    channel.data_received(mux.ack(0, before), None)  # the ping, not the window line
    assert session.window_s == 60
    channel.data_received(mux.ack(0, session.control.out.end), None)
    assert session.window_s == 120
    assert session.set_window(120)  # as it is: nothing sent
    assert session.control.out.end == session.control.out.acked_at
    session.end("test over")


async def test_a_control_line_is_confirmed_once_the_agent_acknowledges_it() -> None:
    """``confirmed`` (a requested forward's ``take``) returns once the agent has the lines
    sent until then, not on an ACK of earlier ones: answered at once, the line could be lost
    on a path just gone silent and the agent end holding nothing it was told to keep."""
    session = _session()
    channel = await _attach(session)
    session.control.send(b"ping p1\n")
    first = session.control.out.end
    session.control.send(b"take 5\n")
    confirmed = asyncio.ensure_future(session.confirmed())
    await asyncio.sleep(0)
    assert not confirmed.done()
    channel.data_received(mux.ack(0, first), None)
    await asyncio.sleep(0)
    assert not confirmed.done()
    channel.data_received(mux.ack(0, session.control.out.end), None)
    await asyncio.wait_for(confirmed, 5)
    session.end("test over")


async def test_strangers_from_other_local_addresses_are_one_key_of_the_refusal_log() -> None:
    """The agent's "refused" lines name the stranger's address when it is another local one;
    127.0.0.0/8 has millions, so the once-a-minute log of refusals keys them as one, or each
    address was a warning of its own (and an entry kept for good)."""
    host = HostSession("h", HostConfig(hostname="h"), tag="00", ssh_files=())
    with structlog.testing.capture_logs() as logs:
        for i in range(50):
            host._agent_refused(2, f"@127.0.0.{2 + i} 5000 1")
        host._agent_refused(2, "1001 5000 1")  # another user's uid: a key of its own
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert [e["foreign_uid"] for e in warned] == ["from 127.0.0.2, not 127.0.0.1", 1001], warned
    assert host.agent_refusals.total == 51


async def test_what_the_agent_could_not_check_is_not_said_as_another_users() -> None:
    """The agent's "refused" lines for a socket that closed or went before it was checked
    (``c``, ``-``: often the user's own kernel, exiting as it connects) and for one it had
    no file to check (``?``) are said as not checked, each with its reason; a uid as
    another user's. ``relay status`` counts them all."""
    host = HostSession("h", HostConfig(hostname="h"), tag="00", ssh_files=())
    with structlog.testing.capture_logs() as logs:
        for mark in ("c", "-", "?", "1001"):
            host._agent_refused(2, f"{mark} 5000 1")
    warned = [(e["event"], e.get("reason", e.get("foreign_uid"))) for e in logs]
    assert warned == [
        (UNCHECKED, WHY[CLOSING]),
        (UNCHECKED, WHY[GONE]),
        (UNCHECKED, "not checked: relay's agent is out of open files there (ulimit -n)"),
        (STRANGER, 1001),
    ], warned
    assert host.snapshot()["peer_check"]["refused"] == 4
    assert (UNCHECKED, STRANGER) == (
        "refused a connection relay could not check the owner of",
        "refused a connection from another user's process",
    )


async def test_a_resume_into_an_agent_whose_window_ran_out_first_says_so() -> None:
    """Each side counts the window from the last word it heard, so the agent's can run out
    first: it ends its kernels, and a daemon back just inside its own window attached to it,
    logged "resumed", and told the kernels' ends as plain signals (a review's finding). The
    WELCOME says the agent is ending; the host says the window ran out, as at its own."""
    host = HostSession("h", HostConfig(hostname="h"), tag="00", ssh_files=())
    agent = AgentSession("h", INFO, SECRET, window_s=60, silence_s=1)
    agent.lost_at, agent.lost_clock = time.time() - 55, wake.steady() - 55  # 5 s left here

    async def live() -> None:  # the connection back, and the attach: the agent was ending
        agent._welcomed({"recv": {}, "now": time.time(), "ending": "window over"})

    host.live = live  # type: ignore[method-assign,assignment]
    await asyncio.wait_for(host._resume(agent), 10)
    assert agent.ended.done()
    assert (
        agent.end_reason is not None
        and ("did not come back within resume_window_s (60 s) as the agent there counted it")
        in agent.end_reason
    )
    assert host.status.last_error == agent.end_reason
    await host.aclose()


async def test_a_resume_into_an_agent_that_waited_is_a_resume() -> None:
    host = HostSession("h", HostConfig(hostname="h"), tag="00", ssh_files=())
    agent = AgentSession("h", INFO, SECRET, window_s=60, silence_s=1)
    agent.lost_at, agent.lost_clock = time.time() - 5, wake.steady() - 5

    async def live() -> None:
        agent._welcomed({"recv": {}, "now": time.time(), "ending": None})

    host.live = live  # type: ignore[method-assign,assignment]
    await asyncio.wait_for(host._resume(agent), 10)
    assert not agent.ended.done() and agent.ending_on_host is None
    agent.end("done")
    await host.aclose()
