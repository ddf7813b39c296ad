"""The C heap under the daemon's buffers: kept while links carry, given back at rest.

glibc's malloc hands an allocation of ``M_MMAP_THRESHOLD`` or more a mapping of its own,
unmapped when it is freed, and gives the top of its heap back to the system once more than
``M_TRIM_THRESHOLD`` is free there. Both start at 128 KiB and follow the largest block freed
(the trim threshold at twice the other). A link through the agent keeps what it sends until
the agent acknowledges it (``relay.agent.mux``: up to ``LIMIT``, acknowledged every
``ACK_EVERY``), so under bulk the heap grows by a MiB, frees it at the ACK, and the system
takes those pages back and hands over fresh zeroed ones for the next MiB: the bench counted
about 100 minor page faults per MiB the daemon carried to a kernel. (What they cost in CPU
is within the bench machine's noise; what a burst leaves in the heap is not.)

- ``keep`` (``relay serve``, once): no frame is a mapping of its own, and the heap keeps
  what one stream can hold, twice over, free at its top; so under bulk it reuses its pages.
- ``Rest`` (the daemon's tick, every ``relay.wake.TICK_S``): once more than ``REST_FREE``
  has come free, ``malloc_trim`` gives it back, the middle of the heap as well as its
  top. A daemon at rest holds what it uses, not what its last burst used; under bulk
  this costs a few thousand faults a tick, where the thresholds alone would cost a hundred
  per MiB.

Elsewhere (macOS, musl) neither does anything: those allocators keep to their own policies.
"""

from __future__ import annotations

import ctypes
import os

from relay.agent.mux import LIMIT, MAX_PAYLOAD

__all__ = ["KEEP_TOP", "MAP_AT", "REST_FREE", "Rest", "free_bytes", "glibc", "keep"]

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MAP_AT = 2 * MAX_PAYLOAD  # a frame, its header, and a read of the same size beside it
KEEP_TOP = 2 * LIMIT
REST_FREE = 128 << 10  # glibc's own default trim threshold: as it would give back, but at rest


_FIELDS = (
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
)


class _Mallinfo2(ctypes.Structure):  # struct mallinfo2: glibc 2.33 and later
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


class _Mallinfo(ctypes.Structure):  # struct mallinfo: its int fields wrap past 4 GiB
    _fields_ = [(name, ctypes.c_uint) for name in _FIELDS]


def _glibc() -> ctypes.CDLL | None:
    try:
        os.confstr("CS_GNU_LIBC_VERSION")  # raises where the C library is not glibc
    except (ValueError, OSError):
        return None
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.mallinfo.restype = _Mallinfo
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _Mallinfo2
    return libc


_LIBC = _glibc()


def glibc() -> bool:
    """Whether this process's heap is glibc's, which ``keep`` and ``Rest`` tune."""
    return _LIBC is not None


def keep() -> bool:
    """Have the heap keep its pages under bulk (see the module); whether it could."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MAP_AT)) and bool(
        _LIBC.mallopt(M_TRIM_THRESHOLD, KEEP_TOP)
    )


def free_bytes() -> int | None:
    """Bytes the heap holds free (all arenas; not the mappings of large blocks)."""
    if _LIBC is None:
        return None
    info = _LIBC.mallinfo2() if hasattr(_LIBC, "mallinfo2") else _LIBC.mallinfo()
    return int(info.fordblks)


class Rest:
    """Gives the heap's free pages back at the daemon's tick, once more than ``REST_FREE``
    lies free beyond the least the heap held free since its last trim. (What
    ``malloc_trim`` gives back still counts as free in the heap, so free bytes alone would
    have it trim the same pages at every tick.)"""

    def __init__(self) -> None:
        self.floor = 0  # the least free since the last trim (none yet: nothing trimmed)
        self.trims = 0

    def tick(self) -> bool:
        """Trim if due; whether it did."""
        free = free_bytes()
        if _LIBC is None or free is None:
            return False
        if free <= self.floor + REST_FREE:
            self.floor = min(self.floor, free)
            return False
        _LIBC.malloc_trim(0)
        self.floor = free_bytes() or 0
        self.trims += 1
        return True
