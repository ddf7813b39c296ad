"""The simulator's framing on the two channels of a link. Stdlib only.

Data channel: frames of ``!BI`` (type, payload length) followed by the payload.
Message channel: fixed 8-byte frames ``!II`` (code, argument). The codes are MathLink's urgent
message numbers from the public ``mathlink.h``/``wstp.h`` headers (MLTerminateMessage 1,
MLInterruptMessage 2, MLAbortMessage 3); the 8-byte encoding is the simulator's own.
"""

from __future__ import annotations

import struct

__all__ = [
    "ABORT",
    "ECHO",
    "HELLO",
    "INTERRUPT",
    "MESSAGE",
    "OPEN_PARALLEL_LINKS",
    "PARALLEL_LINK_NAMES",
    "QUIT",
    "RETURN",
    "SINK",
    "SLEEP",
    "SOURCE",
    "TERMINATE",
    "USER_LINK",
]

# data-channel frame types
ECHO = 1  # front end -> kernel: return the payload unchanged
RETURN = 2  # kernel -> front end: a result
SLEEP = 3  # front end -> kernel: be busy for N ms (ASCII), then return b"done" (or b"$Aborted")
QUIT = 4  # front end -> kernel: exit with status N (ASCII), like Quit[N]
HELLO = 5  # kernel -> front end, first frame: JSON facts about the kernel (pid, flags)
# The service and preemptive links (docs/topology.md §3), payload JSON
# [serviceName, preemptiveName, protocol]:
SINK = 8  # front end -> kernel: payload discarded; after the last (empty) one, RETURN total
SOURCE = 9  # front end -> kernel: send N (ASCII) bytes back as RETURN frames, then an empty one
OPEN_PARALLEL_LINKS = 6  # kernel -> front end, old method: FrontEnd`OpenParallelLinksPacket
PARALLEL_LINK_NAMES = 7  # front end -> kernel, new method: the code naming the front end's links
# kernel -> front end, UTF-8 text: a message the kernel printed (Message[...] reaches the front
# end as a packet on the main link); the simulator's hook says here why Dynamic cannot work
MESSAGE = 10
# front end -> kernel: user code after start-up connecting to a link on the kernel's own host
# (LinkMode -> Connect); RETURN "direct NAME", "redirected NAME" or "$Failed: ..."
USER_LINK = 11

# message-channel codes (mathlink.h)
TERMINATE = 1
INTERRUPT = 2
ABORT = 3

_DATA = struct.Struct("!BI")
_MSG = struct.Struct("!II")
MAX_FRAME = 64 * 1024 * 1024


def data_frame(kind: int, payload: bytes = b"") -> bytes:
    return _DATA.pack(kind, len(payload)) + payload


def data_header(header: bytes) -> tuple[int, int]:
    """(type, payload length) of a data frame's 5-byte header."""
    kind, length = _DATA.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes")
    return kind, length


def message_frame(code: int, arg: int = 0) -> bytes:
    return _MSG.pack(code, arg)


def message(frame: bytes) -> tuple[int, int]:
    code, arg = _MSG.unpack(frame)
    return code, arg


DATA_HEADER = _DATA.size
MESSAGE_SIZE = _MSG.size
