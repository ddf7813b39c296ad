"""relay.ssh.holds: who keeps a host's connection, and which of them end with it."""

from __future__ import annotations

import asyncio

from relay.ssh.holds import Holds


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
        await asyncio.sleep(0.05)
        assert not idle.is_set()  # an allocation keeps the connection as any hold does
        allocation.release()
        assert (len(holds), holds.fragile) == (0, 0)
        await asyncio.wait_for(idle.wait(), 5)

    asyncio.run(main())


def test_rearm_gives_a_connection_made_again_its_idle_period_once_more() -> None:
    """The idle period that ran out while a resume was reconnecting found no connection to
    close; the resumed one, held by nothing, is given the period again, from now (it stayed
    open for good: found by a new-user pass). With a hold, nothing; never a second timer."""

    async def main() -> None:
        fired: list[float] = []
        holds = Holds(lambda: 0.01, lambda: fired.append(0))
        holds.hold().release()
        for _ in range(500):  # bounded: the 10 ms timer, on a loaded machine
            if fired:
                break
            await asyncio.sleep(0.01)
        assert fired == [0]
        held = holds.hold()
        holds.rearm()  # held: no idle period
        await asyncio.sleep(0.05)
        assert fired == [0]
        held.release()
        holds.rearm()  # the release's timer, started again from now: still one
        for _ in range(500):
            if len(fired) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert fired == [0, 0]
        holds.rearm()  # nothing holds it, no timer: the period again
        for _ in range(500):
            if len(fired) == 3:
                break
            await asyncio.sleep(0.01)
        assert fired == [0, 0, 0]
        holds.stop()
        holds.rearm()  # closing: never
        await asyncio.sleep(0.05)
        assert fired == [0, 0, 0]

    asyncio.run(main())
