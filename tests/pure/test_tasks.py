"""relay.tasks: the flag every kernel and link holds, and the shared done callback."""

from __future__ import annotations

import asyncio

import pytest

from relay.tasks import Flag, retrieved


def test_a_flag_wakes_every_waiter_and_one_cancelled_leaves_the_rest() -> None:
    async def main() -> None:
        flag = Flag()
        waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
        await asyncio.sleep(0)  # each is waiting now
        waiters[0].cancel()
        await asyncio.gather(waiters[0], return_exceptions=True)
        assert not flag.is_set() and not any(w.done() for w in waiters[1:])
        flag.set()
        await asyncio.wait_for(asyncio.gather(*waiters[1:]), 5)
        assert flag.is_set()
        await asyncio.wait_for(flag.wait(), 5)  # set already: at once

    asyncio.run(main())


def test_retrieved_keeps_a_failure_nobody_awaits_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.add_done_callback(retrieved)
        failed.set_exception(RuntimeError("nobody awaits this"))
        cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        cancelled.add_done_callback(retrieved)
        cancelled.cancel()
        await asyncio.sleep(0)

    import gc

    asyncio.run(main())
    gc.collect()
    assert "never retrieved" not in caplog.text
