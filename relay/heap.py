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
- ``Rest`` (the daemon's tick, every ``relay.wake.TICK_S``): at a tick that finds the
  process at rest (under ``REST_CPU_S`` of CPU since the last) after it took in new pages
  (resident ``REST_NEW`` beyond what it was after the last trim, or the least since: page
  faults would undercount where transparent huge pages map 2 MiB at one), ``malloc_trim``
  gives the heap's free pages back, the middle of the heap as well as its top. So a daemon
  at rest holds what it uses, not what its last burst used, and one carrying bulk is left
  alone. (Free bytes do not say when to trim: the pages a trim gives back still count as
  free, and used and freed again they count the same, resident once more.)

Elsewhere (macOS, musl) neither does anything: those allocators keep to their own policies.
"""

from __future__ import annotations

import ctypes
import os
import time

import structlog

from relay.agent.mux import LIMIT, MAX_PAYLOAD

__all__ = ["KEEP_TOP", "MAP_AT", "REST_CPU_S", "REST_NEW", "Rest", "glibc", "keep", "resident"]

log = structlog.get_logger("relay.heap")

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MAP_AT = 2 * MAX_PAYLOAD  # a frame, its header, and a read of the same size beside it
KEEP_TOP = 2 * LIMIT
# glibc's own default trim threshold: what it would give back at a free
REST_NEW = 128 << 10
_PAGE = os.sysconf("SC_PAGE_SIZE")
REST_CPU_S = 0.05  # CPU between two ticks (2 s) that is rest: an idle daemon, not a transfer


def _glibc() -> ctypes.CDLL | None:
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (ValueError, OSError, AttributeError):  # not glibc, whatever it says it is
        return None
    return libc


_LIBC = _glibc()


def glibc() -> bool:
    """Whether this process's heap is glibc's, which ``keep`` and ``Rest`` tune."""
    return _LIBC is not None


def keep() -> bool:
    """Have the heap keep its pages under bulk (see the module); whether it could."""
    if _LIBC is None:
        return False
    mapped = _LIBC.mallopt(M_MMAP_THRESHOLD, MAP_AT)
    trimmed = _LIBC.mallopt(M_TRIM_THRESHOLD, KEEP_TOP)
    if not (mapped and trimmed):  # glibc refuses a threshold past its limit (32-bit: 512 KiB)
        log.info("heap left as it is", mmap_threshold=bool(mapped), trim_threshold=bool(trimmed))
    return bool(mapped and trimmed)


def resident() -> int | None:
    """This process's resident bytes (``/proc/self/statm``), or None where it cannot say."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class Rest:
    """Gives the heap's free pages back at the daemon's tick, when it finds the process at
    rest after it took in new pages (see the module)."""

    def __init__(self) -> None:
        self.cpu_at = time.process_time()
        self.resident_at = 0  # resident bytes after the last trim, or the least since
        self.looks = 0
        self.trims = 0

    def tick(self) -> bool:
        """Trim if due; whether it did."""
        self.looks += 1
        cpu, self.cpu_at = self.cpu_at, time.process_time()
        if _LIBC is None or self.cpu_at - cpu > REST_CPU_S:
            return False  # carrying, or launching: looked at again at the next tick
        now = resident()
        if now is None:
            return False
        if now - self.resident_at < REST_NEW:
            self.resident_at = min(self.resident_at, now)
            return False  # nothing new came in since the last trim
        _LIBC.malloc_trim(0)
        self.resident_at = resident() or 0
        self.trims += 1
        return True
