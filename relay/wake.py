"""Noticing that this machine slept (a laptop's lid) or the daemon was stopped.

A connection that lived through a sleep may be dead without a word: its NAT entry expired,
the laptop woke on another network. Keepalive says so only after ``keepalive_interval_s`` x
``keepalive_count_max`` (45 s by default), all of which the kernels would sit still after the
lid is opened. So the daemon looks at the clocks every ``TICK_S``: CLOCK_MONOTONIC stands
still while the machine sleeps (Linux and macOS both) and the wall clock does not, while a
stopped process sees both run on, late. Either way, past ``LATE_S`` the hosts are told
(``HostSession.woke``), and each whose kernels resume pings its connection at once.

A wall clock stepped forward (NTP) looks like a sleep: it costs one ping per host.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["LATE_S", "TICK_S", "late_by", "watch"]

TICK_S = 2.0
LATE_S = 4.0  # a tick this much late: the machine slept or the daemon was stopped


def late_by(wall_elapsed: float, monotonic_elapsed: float, tick_s: float) -> float:
    """How much longer than ``tick_s`` went by, by whichever clock saw more of it."""
    return max(wall_elapsed, monotonic_elapsed) - tick_s


async def watch(
    woke: Callable[[float], None], tick_s: float = TICK_S, late_s: float = LATE_S
) -> None:
    """Call ``woke(seconds asleep)`` after each tick more than ``late_s`` late; until
    cancelled."""
    wall, mono = time.time(), time.monotonic()
    while True:
        await asyncio.sleep(tick_s)
        now_wall, now_mono = time.time(), time.monotonic()
        late = late_by(now_wall - wall, now_mono - mono, tick_s)
        wall, mono = now_wall, now_mono
        if late > late_s:
            woke(late)
