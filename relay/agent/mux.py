"""The agent's wire format (``docs/agent.md``), the daemon's half: frames and what each side
keeps until the other acknowledges it. Pure: no I/O, no event loop.

``encode`` and ``FrameReader`` are the framing; ``Outbox`` is one direction of one stream as
its sender keeps it (numbered items, trimmed by ACKs, replayed from any position the
receiver names); ``Inbox`` is the same direction as its receiver counts it.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import struct
from dataclasses import dataclass

__all__ = [
    "ACK",
    "ACK_DELAY_S",
    "ACK_EVERY",
    "AGENT",
    "BYE",
    "CHALLENGE",
    "CLOSE",
    "DAEMON",
    "DATA",
    "EOF",
    "GATHER",
    "HELLO",
    "LIMIT",
    "MAX_PAYLOAD",
    "OPEN",
    "WELCOME",
    "Frame",
    "FrameError",
    "FrameReader",
    "Inbox",
    "Outbox",
    "encode",
    "pieces",
    "proof",
]

HELLO, WELCOME, DATA, EOF, CLOSE, OPEN, ACK, BYE, CHALLENGE = range(1, 10)
MARKERS = frozenset({EOF, CLOSE, OPEN})  # sequenced, one position each
_HEADER = struct.Struct("!BII")
_POS = struct.Struct("!Q")
MAX_PAYLOAD = 1 << 20
GATHER = 4096  # a payload this large is sent apart from its header (``pieces``)
# DATA kept for a resume: small pieces are joined into one item up to this, so that what a
# stream keeps costs about what LIMIT counts, whatever the size of the writes behind it
MERGE = 4096
LIMIT = 4 << 20  # unacknowledged bytes a stream keeps before its sender stops reading
CHUNK = 256 << 10  # DATA frames are cut to this, so that one stream cannot hog the channel
# ACKs only let the sender forget what it keeps, so they are not sent per frame (that would
# double the packets of a ping-pong): once this much is unacknowledged, or ACK_DELAY_S after
# the first byte that is. Well under LIMIT, so a sender is never held back waiting for one.
ACK_EVERY = 1 << 20
ACK_DELAY_S = 0.2


class FrameError(ValueError):
    """The peer sent something that is not a frame of this protocol."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    stream: int
    payload: bytes = b""

    @property
    def size(self) -> int:
        """Positions it takes in its stream (0: not sequenced)."""
        if self.type == DATA:
            return len(self.payload)
        return 1 if self.type in MARKERS else 0


def encode(ftype: int, stream: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(ftype, stream, len(payload)) + payload


def pieces(ftype: int, stream: int, payload: bytes = b"") -> list[bytes]:
    """A frame as the pieces to send: its header and a large payload apart, so that the
    payload is not copied behind the header (the writer cuts the bytes into packets anyway:
    ``relay.ssh.packets``); a small frame in one piece."""
    if len(payload) < GATHER:
        return [encode(ftype, stream, payload)]
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return [_HEADER.pack(ftype, stream, len(payload)), payload]


# The attach's proofs (docs/agent.md): each side shows it holds the secret without sending it,
# over both sides' random bytes, so neither proof can be replayed or turned round
DAEMON = b"relay daemon\n"
AGENT = b"relay agent\n"


def proof(secret: bytes, who: bytes, first: bytes, second: bytes) -> str:
    """HMAC-SHA256 of ``who`` (DAEMON: over the agent's challenge, then the daemon's nonce;
    AGENT: the other way round), in hex."""
    return hmac.new(secret, who + first + second, hashlib.sha256).hexdigest()


def ack(stream: int, position: int) -> bytes:
    return encode(ACK, stream, _POS.pack(position))


def ack_position(payload: bytes) -> int:
    if len(payload) != _POS.size:
        raise FrameError(f"an ACK carries {_POS.size} bytes, not {len(payload)}")
    value: int = _POS.unpack(payload)[0]
    return value


class FrameReader:
    """Frames out of a byte stream cut anywhere.

    A DATA frame's payload comes out as it arrives, each piece a DATA frame of the same
    stream: positions count bytes, so the pieces are the frame to everything downstream, and a
    link's bulk is never gathered and copied here (most pieces are the very bytes the channel
    delivered). Every other frame comes out whole."""

    def __init__(self) -> None:
        self._head = b""  # a header cut by the channel
        self._type = 0
        self._stream = 0
        self._left = 0  # the current frame's payload bytes still to come
        self._body = bytearray()  # a non-DATA frame's payload so far

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        at, end = 0, len(data)
        while at < end:
            if not self._left:  # a header
                if self._head or end - at < _HEADER.size:
                    need = _HEADER.size - len(self._head)
                    self._head += data[at : at + need]
                    at += need
                    if len(self._head) < _HEADER.size:
                        break
                    ftype, stream, length = _HEADER.unpack(self._head)
                    self._head = b""
                else:
                    ftype, stream, length = _HEADER.unpack_from(data, at)
                    at += _HEADER.size
                if not HELLO <= ftype <= CHALLENGE:
                    raise FrameError(f"unknown frame type {ftype}")
                if length > MAX_PAYLOAD:
                    raise FrameError(f"frame of {length} bytes exceeds {MAX_PAYLOAD}")
                if not length:
                    out.append(Frame(ftype, stream))
                    continue
                self._type, self._stream, self._left = ftype, stream, length
            take = min(self._left, end - at)
            piece = data if take == end else data[at : at + take]
            at += take
            self._left -= take
            if self._type == DATA:
                out.append(Frame(DATA, self._stream, piece))
            elif not self._left and not self._body:
                out.append(Frame(self._type, self._stream, piece))
            else:
                self._body += piece
                if not self._left:
                    out.append(Frame(self._type, self._stream, bytes(self._body)))
                    self._body = bytearray()
        return out


class Outbox:
    """One direction of one stream, as its sender keeps it: every sequenced frame from the
    first the receiver has not acknowledged, with the position it starts at."""

    def __init__(self) -> None:
        # made when something is kept, dropped when all is acknowledged: an idle link's
        # outboxes (two per link, on each side) hold no 600-byte deque
        self._items: collections.deque[Frame] | None = None
        self.base = 0  # position of the first kept item
        self.end = 0  # position after the last item
        self.unacked = 0  # bytes kept (DATA payloads)
        self.closed = False  # a CLOSE was queued: nothing more can follow
        # At an attach the receiver says what it took in (``owed``: forgotten here) and what
        # of it it has handed on; until its ACKs pass ``owed``, the rest is still in its
        # hands and counts against LIMIT (``load``), as if unacknowledged: else each outage
        # would let another LIMIT pile up behind a reader that has stopped.
        self.owed = 0
        self.acked_at = 0  # the furthest position acknowledged (an ACK, or the attach's)

    def push(self, frame: Frame) -> list[bytes]:
        """Keep ``frame`` (cut into chunks if it is large DATA); returns its wire form, as
        ``pieces``."""
        if self.closed:
            raise ValueError("nothing follows a CLOSE")
        if frame.type == DATA and len(frame.payload) > CHUNK:
            view = frame.payload
            parts = [
                Frame(DATA, frame.stream, view[i : i + CHUNK]) for i in range(0, len(view), CHUNK)
            ]
        else:
            parts = [frame]
        wire: list[bytes] = []
        if self._items is None:
            self._items = collections.deque()
        items = self._items
        for part in parts:
            last = items[-1] if items else None
            if (
                part.type == DATA
                and last is not None
                and last.type == DATA
                and len(last.payload) + len(part.payload) <= MERGE
            ):  # small writes kept as one item: what an item costs stays bounded by LIMIT
                items[-1] = Frame(DATA, part.stream, b"".join((last.payload, part.payload)))
            else:
                items.append(part)
            self.end += part.size
            if part.type == DATA:
                self.unacked += len(part.payload)
            wire += pieces(part.type, part.stream, part.payload)
        if frame.type == CLOSE:
            self.closed = True
        return wire

    def acked(self, position: int) -> None:
        """The receiver has everything before ``position``: forget it."""
        if position > self.end:
            raise FrameError(f"ACK for position {position} beyond what was sent ({self.end})")
        if position > self.acked_at:
            self.acked_at = position
        items = self._items
        if items is None:
            return
        while items and self.base + items[0].size <= position:
            item = items.popleft()
            self.base += item.size
            if item.type == DATA:
                self.unacked -= len(item.payload)
        if not items:
            self._items = None
        elif position > self.base:  # within a DATA item: keep its tail only
            item = items[0]
            cut = position - self.base
            items[0] = Frame(DATA, item.stream, item.payload[cut:])
            self.base += cut
            self.unacked -= cut

    @property
    def load(self) -> int:
        """What LIMIT bounds: kept here, and taken in by the receiver but not yet handed on
        since the last attach."""
        return self.unacked + max(0, self.owed - self.acked_at)

    def replay(self, position: int, handed: int | None = None) -> list[bytes]:
        """An attach: the receiver has everything before ``position`` (forgotten here) and
        has handed on what is before ``handed`` (all of it, if None). The wire form of
        everything from ``position`` on (what the receiver lacks), as ``pieces``."""
        if not self.base <= position <= self.end:
            raise FrameError(
                f"the peer resumes at {position}, outside what is kept ({self.base}-{self.end})"
            )
        self.acked(position)
        self.owed = position
        self.acked_at = position if handed is None else min(max(0, handed), position)
        return [piece for f in self._items or () for piece in pieces(f.type, f.stream, f.payload)]

    @property
    def done(self) -> bool:
        """A CLOSE was sent and acknowledged: this direction is over."""
        return self.closed and not self._items


class Inbox:
    """One direction of one stream, as its receiver counts it."""

    def __init__(self) -> None:
        self.position = 0  # taken in: whole frames
        self.acked = 0  # what our last ACK said
        self.closed = False  # a CLOSE came

    def take(self, frame: Frame) -> None:
        self.position += frame.size
        if frame.type == CLOSE:
            self.closed = True
