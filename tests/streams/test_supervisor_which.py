"""Supervisor.check_kernel: a kernel looked for ahead of any launch (``relay connect HOST
--kernels N --kernel PATH``), answered over a scripted supervisor session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import structlog

from relay.errors import SupervisorFailed
from relay.ssh.supervisor import Supervisor


class _Input:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.written = asyncio.Event()

    def write(self, data: str) -> None:
        self.lines.append(data)
        self.written.set()

    def write_eof(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


class _Lines:
    """A session stream that yields what the test puts, until None."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        while (line := await self.queue.get()) is not None:
            yield line


class _Process:
    def __init__(self) -> None:
        self.stdin = _Input()
        self.stdout = _Lines()
        self.stderr = _Lines()

    def close(self) -> None:
        self.stdout.queue.put_nowait(None)
        self.stderr.queue.put_nowait(None)

    async def wait_closed(self) -> None:
        pass


async def asked(process: _Process) -> str:
    """The ident of the next ``which`` the supervisor writes."""
    await asyncio.wait_for(process.stdin.written.wait(), 5)
    process.stdin.written.clear()
    kind, ident, _ = process.stdin.lines[-1].split(" ", 2)
    assert kind == "which"
    return ident


async def test_a_miss_is_kept_by_the_caller_though_the_supervisor_forgets_it() -> None:
    """The answer can arrive while the caller still waits for something else (the spares it
    reserves): the future it holds still says the kernel is missing, while the supervisor
    forgets the miss so that a later look asks again (it may be installed by then)."""
    process = _Process()
    s = Supervisor(cast(Any, process), "h", 1, structlog.get_logger("test"))
    try:
        answer = s.check_kernel("/nonexistent/WolframKernel")
        assert answer is not None and not answer.done()
        process.stdout.queue.put_nowait(f"nokernel {await asked(process)}\n")
        assert await asyncio.wait_for(asyncio.shield(answer), 5) is False
        assert s.kernel_known("/nonexistent/WolframKernel") is None  # forgotten
        again = s.check_kernel("/nonexistent/WolframKernel")  # so asked again
        assert again is not None and again is not answer
        process.stdout.queue.put_nowait(f"found {await asked(process)}\n")
        assert await asyncio.wait_for(asyncio.shield(again), 5) is True
        # a kernel found is known: asked no more, and the same answer given
        assert s.check_kernel("/nonexistent/WolframKernel") is again
        assert s.kernel_known("/nonexistent/WolframKernel") is again
        assert not process.stdin.written.is_set()
    finally:
        process.close()  # the session ends: its readers finish
        await s.wait_closed(timeout_s=5)
        assert s.closed.done()


async def test_a_host_out_of_processes_is_said_as_such_not_as_a_kernel_missing() -> None:
    """A which the host could not fork for (supervisor.sh's ``nofork``), or relay's agent
    could not run /bin/sh for (``nostart``), was "not found": the user was sent to check a
    kernel path that was right. Now the answer is the reason, in one line, and the kernel is
    asked about again next time; a start that could not fork says so too."""
    process = _Process()
    s = Supervisor(cast(Any, process), "h", 1, structlog.get_logger("test"))
    try:
        answer = s.check_kernel("/usr/bin/WolframKernel")
        assert answer is not None
        process.stdout.queue.put_nowait(f"nofork {await asked(process)}\n")
        with pytest.raises(SupervisorFailed) as failed:
            await asyncio.wait_for(asyncio.shield(answer), 5)
        assert str(failed.value) == (
            "relay's supervisor on h could not look for the kernel: its shell cannot fork (the "
            "user's process limit there, ulimit -u, is reached: end some processes)"
        )
        assert s.kernel_known("/usr/bin/WolframKernel") is None  # asked again next time
        again = s.check_kernel("/usr/bin/WolframKernel")
        assert again is not None
        said = "EAGAIN [Errno 11] Resource temporarily unavailable"
        process.stdout.queue.put_nowait(f"nostart {await asked(process)} {said}\n")
        with pytest.raises(SupervisorFailed) as failed:
            await asyncio.wait_for(asyncio.shield(again), 5)
        assert str(failed.value) == (
            "relay's agent on h could not look for the kernel: [Errno 11] Resource temporarily "
            "unavailable (the user's process limit there, ulimit -u, is reached: end some "
            "processes)"
        )
        started = s.start_kernel("k1", ["/usr/bin/WolframKernel"])
        process.stdout.queue.put_nowait("nofork k1\n")
        with pytest.raises(SupervisorFailed) as failed:
            await asyncio.wait_for(asyncio.shield(started.started), 5)
        assert "could not start the kernel: its shell cannot fork" in str(failed.value)
        assert "ulimit -u" in str(failed.value)
        assert await asyncio.wait_for(started.exited, 5) == 126
    finally:
        process.close()
        await s.wait_closed(timeout_s=5)
