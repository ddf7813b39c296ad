"""relay.wake: a sleep seen by either clock, and the watch that says so."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import IO

from relay.wake import address_gone, late_by, watch


def test_a_machine_that_slept_is_seen_by_the_wall_clock() -> None:
    # CLOCK_MONOTONIC stood still for the hour the lid was closed
    assert late_by(wall_elapsed=3602.0, monotonic_elapsed=2.0, tick_s=2.0) == 3600.0


def test_a_stopped_daemon_is_seen_by_both_clocks() -> None:
    assert late_by(wall_elapsed=12.0, monotonic_elapsed=12.0, tick_s=2.0) == 10.0


def test_a_wall_clock_stepped_back_is_no_sleep() -> None:
    assert late_by(wall_elapsed=-30.0, monotonic_elapsed=2.0, tick_s=2.0) == 0.0


def test_the_watch_says_how_long_the_loop_stood_still() -> None:
    """The event loop blocked (as a stopped process's is) for 0.3 s: a call at least that
    late (a loaded machine may add others, shorter)."""

    async def main() -> list[float]:
        woke: list[float] = []

        def tick(late_s: float) -> None:
            if late_s > 0.2:
                woke.append(late_s)

        task = asyncio.ensure_future(watch(tick, tick_s=0.01))
        await asyncio.sleep(0.05)  # the watch is ticking
        time.sleep(0.3)  # the subject: nothing on the loop runs meanwhile
        for _ in range(100):  # bounded: the late tick comes first thing after
            if woke:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        return woke

    woke = asyncio.run(main())
    assert woke and max(woke) >= 0.3 - 0.01


def test_an_address_this_machine_has_is_not_gone() -> None:
    assert not address_gone(("127.0.0.1", 40000))
    assert not address_gone(("::1", 40000, 0, 0))


def test_an_address_this_machine_does_not_have_is_gone() -> None:
    assert address_gone(("192.0.2.1", 40000))  # TEST-NET-1: nobody's


def test_no_socket_to_spare_is_no_address_gone() -> None:
    """Out of file descriptors: the check cannot tell, and must not end the watch."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[IO[str]] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        try:
            while len(held) < 64:  # bounded: the limit is 64
                held.append(open("/dev/null"))  # noqa: SIM115 (held open on purpose)
        except OSError:
            pass
        assert not address_gone(("192.0.2.1", 40000))
    finally:
        for f in held:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
