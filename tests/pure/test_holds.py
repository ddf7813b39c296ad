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
