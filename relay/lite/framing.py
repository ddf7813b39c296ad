"""Control-socket framing: one JSON object per line, versioned and size-bounded. Pure, stdlib.

Shared by the daemon and by the ``relay launch`` shim, which must import nothing outside the
standard library, and as little of it as it can (JSON is ``relay.lite.minijson``).
``relay.protocol`` adds pydantic validation on the daemon side.

Every message is a UTF-8 JSON object on one line, at most ``MAX_MESSAGE_BYTES`` including the
newline, carrying ``"v": PROTOCOL_VERSION``, with no key twice in any of its objects (a
message must mean one thing to every reader; see ``relay.lite.minijson``). A connection carries
requests from the client and events from the daemon; see ``relay.protocol`` for the messages
themselves.
"""

from __future__ import annotations

from relay.lite import minijson

TYPE_CHECKING = False  # typing is not imported at run time: the shim's start-up is measured
if TYPE_CHECKING:
    from typing import Any

__all__ = ["MAX_MESSAGE_BYTES", "PROTOCOL_VERSION", "FramingError", "decode", "encode"]

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024


class FramingError(ValueError):
    """Bytes on the control socket that are not one valid message."""


def encode(message: dict[str, Any], *, bounded: bool = True) -> bytes:
    data = minijson.dumps({"v": PROTOCOL_VERSION, **message}).encode() + b"\n"
    if bounded and len(data) > MAX_MESSAGE_BYTES:
        raise FramingError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def decode(line: bytes) -> dict[str, Any]:
    """One newline-terminated line into a message object."""
    if len(line) > MAX_MESSAGE_BYTES:
        raise FramingError(f"message exceeds {MAX_MESSAGE_BYTES} bytes")
    return decode_unbounded(line)


def decode_unbounded(line: bytes) -> dict[str, Any]:
    """``decode`` without the size bound: for the daemon's status answer, which grows with
    the number of kernels. Requests are always decoded with the bound."""
    if not line.endswith(b"\n"):
        raise FramingError("message is not terminated by a newline (half-written?)")
    try:
        obj = minijson.loads(line.decode())
    except minijson.DuplicateKey as exc:  # refused like any garbage, but naming the key
        raise FramingError(f"message has the key {exc.key[:40]!r} twice") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FramingError("message is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise FramingError("message is not a JSON object")
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise FramingError(
            f"protocol version {repr(version)[:40]} is not supported (this side speaks "
            f"{PROTOCOL_VERSION}); restart the daemon after upgrading relay"
        )
    return obj
