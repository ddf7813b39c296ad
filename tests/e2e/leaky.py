"""Not collected by the suite (not ``test_*``): run on its own by test_failing_runs_end.py. A
test that fails on purpose and leaves a server and a connection open on the e2e tier's event
loop, as a failing e2e test leaves its front end's listeners and kernel links."""

from __future__ import annotations

import asyncio
import os

import pytest


async def test_fails_leaving_a_server_and_a_connection_open() -> None:
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # not kept in this frame: pytest keeps a failed test's traceback to the end of the run,
    # and a StreamWriter collected only then warns where nothing can report it (when it is
    # collected was a matter of the garbage collector's timing)
    await asyncio.open_connection("127.0.0.1", port)
    raise AssertionError("fails on purpose, closing nothing")


async def test_hangs() -> None:
    if not os.environ.get("RELAY_LEAKY_HANG"):
        pytest.skip("only when asked for (RELAY_LEAKY_HANG)")
    await asyncio.Event().wait()
