"""Noticing what a laptop does to its connections: it sleeps, and it changes networks.

A connection that lived through either may be dead without a word (its NAT entry expired,
the laptop woke or moved to another network), and keepalive says so only after
``keepalive_interval_s`` x ``keepalive_count_max`` (45 s by default), all of which the kernels
would sit still. So the daemon looks every ``TICK_S`` (``watch``):

- at the clocks: CLOCK_MONOTONIC stands still while the machine sleeps (Linux and macOS
  both) and the wall clock does not, while a stopped process sees both run on, late. Past
  ``LATE_S`` the hosts are told (``HostSession.woke``), and each whose kernels resume pings
  its connection at once. A wall clock stepped forward (NTP) looks like a sleep: it costs
  one ping per host;
- at each connection's own address (``address_gone``): once the machine no longer has it
  (the Wi-Fi switched, a VPN reconnected with another address), nothing can arrive on it
  again (``HostSession.check_address``).

And it keeps the clock windows are counted on (``steady``): one a sleep does not stop and
nothing steps.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LATE_S", "TICK_S", "address_gone", "late_by", "steady", "watch"]

TICK_S = 2.0
LATE_S = 4.0  # a tick this much late: the machine slept or the daemon was stopped


# A clock that runs on while the machine sleeps and that nothing sets (NTP, `date`): Linux's
# CLOCK_BOOTTIME; on macOS clock_gettime's CLOCK_MONOTONIC, which counts sleep there (its
# manual page), where time.monotonic does not. Elsewhere the wall clock, as before.
_STEADY = (
    getattr(time, "CLOCK_BOOTTIME", None)
    if sys.platform.startswith("linux")
    else getattr(time, "CLOCK_MONOTONIC", None)
    if sys.platform == "darwin"
    else None
)


def steady() -> float:
    """Seconds on a clock that counts a sleep and no step of the wall clock: what windows a
    user sets in seconds (``resume_window_s``) are counted on. A laptop's clock drifts while
    it sleeps and NTP steps it as it wakes, in the middle of the outage the sleep caused."""
    return time.clock_gettime(_STEADY) if _STEADY is not None else time.time()


def late_by(wall_elapsed: float, monotonic_elapsed: float, tick_s: float) -> float:
    """How much longer than ``tick_s`` went by, by whichever clock saw more of it."""
    return max(wall_elapsed, monotonic_elapsed) - tick_s


def address_gone(sockname: tuple[Any, ...]) -> bool:
    """Whether this machine no longer has the address of ``sockname`` (a connection's own
    end, as ``getsockname`` gives it): a socket bound to it fails with EADDRNOTAVAIL."""
    family = socket.AF_INET6 if ":" in str(sockname[0]) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((sockname[0], 0, *sockname[2:]))  # an IPv6 one keeps its scope
    except OSError as exc:  # not this one (EMFILE, say): cannot tell, so not gone
        return exc.errno == errno.EADDRNOTAVAIL
    return False


async def watch(tick: Callable[[float], None], tick_s: float = TICK_S) -> None:
    """Call ``tick(seconds late)`` every ``tick_s`` (late: asleep or stopped, if more than
    ``LATE_S``); until cancelled."""
    wall, mono = time.time(), time.monotonic()
    while True:
        await asyncio.sleep(tick_s)
        now_wall, now_mono = time.time(), time.monotonic()
        late = late_by(now_wall - wall, now_mono - mono, tick_s)
        wall, mono = now_wall, now_mono
        tick(late)
