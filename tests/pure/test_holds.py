"""relay.ssh.holds: who keeps a host's connection, and which of them end with it."""

from __future__ import annotations

import asyncio

from relay.ssh.holds import Holds


def _armed(holds: Holds) -> asyncio.TimerHandle | None:
    """The idle timer ``holds`` has running, if any: what a test looks at to say that no
    idle close is coming (waiting to see none come could pass on a loaded machine however
    the code behaved)."""
    return holds._timer


async def _fired(fired: list[int], count: int) -> None:
    """Until the idle callback has run ``count`` times in all (bounded)."""
    for _ in range(500):  # bounded: a 10 ms timer, on a loaded machine
        if len(fired) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the idle callback ran {len(fired)} times, not {count}")


def test_holds_that_outlive_the_connection_are_counted_apart_and_still_keep_it() -> None:
    async def main() -> None:
        idle = asyncio.Event()
        holds = Holds(lambda: 0.01, idle.set)
        kernel = holds.hold()
        allocation = holds.hold(outlives_connection=True)
        assert (len(holds), holds.fragile) == (2, 1)
        kernel.release()
        kernel.release()  # idempotent: counted once
        assert (len(holds), holds.fragile) == (1, 0)
        assert _armed(holds) is None  # an allocation keeps the connection as any hold does
        allocation.release()
        assert (len(holds), holds.fragile) == (0, 0)
        await asyncio.wait_for(idle.wait(), 5)

    asyncio.run(main())


def test_rearm_gives_a_connection_made_again_its_idle_period_once_more() -> None:
    """The idle period that ran out while a resume was reconnecting found no connection to
    close; the resumed one, held by nothing, is given the period again, from now (it stayed
    open for good: found by a new-user pass). With a hold, nothing; never a second timer."""

    async def main() -> None:
        fired: list[int] = []
        holds = Holds(lambda: 0.01, lambda: fired.append(0))
        holds.hold().release()
        await _fired(fired, 1)
        assert _armed(holds) is None
        held = holds.hold()
        holds.rearm()  # held: no idle period
        assert _armed(holds) is None
        held.release()
        released = _armed(holds)
        assert released is not None
        holds.rearm()  # the release's timer, started again from now: still one
        again = _armed(holds)
        assert released.cancelled() and again is not None and not again.cancelled()
        await _fired(fired, 2)
        assert fired == [0, 0] and _armed(holds) is None
        holds.rearm()  # nothing holds it, no timer: the period again
        await _fired(fired, 3)
        holds.stop()
        holds.rearm()  # closing: never
        assert _armed(holds) is None
        assert fired == [0, 0, 0]

    asyncio.run(main())


def test_the_last_hold_released_says_so_at_once_each_time_and_not_once_stopped() -> None:
    """``on_free``: a connection made with resume_window_s = 0, the window raised since, is
    closed when its last kernel ends (``HostSession._free``), whatever the idle timer says."""

    async def main() -> None:
        freed: list[int] = []
        holds = Holds(lambda: 0, lambda: None, lambda: freed.append(len(holds)))
        first, second = holds.hold(), holds.hold()
        first.release()
        assert freed == []
        second.release()
        second.release()  # idempotent: said once
        assert freed == [0] and _armed(holds) is None  # idle_timeout_s = 0: no timer
        third = holds.hold()
        holds.stop()
        third.release()
        assert freed == [0]

    asyncio.run(main())


def test_a_connection_carried_keeps_the_host_but_is_no_user_of_its_own() -> None:
    """A connection made through this host (its jump host): kept open while it lives (no idle
    timer, no ``on_free``), but not one of the host's own users (``own``): a jump host whose
    own kernels are gone lets its agent go when it is lost (``HostSession._watch``)."""

    async def main() -> None:
        freed: list[int] = []
        holds = Holds(lambda: 0.01, lambda: None, lambda: freed.append(1))
        through = holds.hold(outlives_connection=True, carried=True)
        kernel = holds.hold()
        assert (len(holds), holds.own, holds.carried, holds.fragile) == (2, 1, 1, 1)
        kernel.release()
        assert (len(holds), holds.own) == (1, 0) and freed == [] and _armed(holds) is None
        through.release()
        assert (len(holds), holds.own, holds.carried) == (0, 0, 0) and freed == [1]
        holds.stop()

    asyncio.run(main())
