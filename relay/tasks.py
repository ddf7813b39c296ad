"""Supervised tasks: every task has an owner that keeps a reference and logs its failure once.
Beside them, what every kernel and link holds of asyncio, kept small: a ``Flag`` (an Event
without its up-front deque) and ``retrieved``, the one done callback for futures nobody awaits."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, TypeVar

import structlog

from relay.errors import RelayError

__all__ = ["Flag", "TaskSet", "in_thread", "retrieved", "while_moving"]

T = TypeVar("T")


class TaskSet:
    """The tasks one object owns: spawned with a name, cancelled together by ``aclose``."""

    def __init__(self, log: Any = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._log = log or structlog.get_logger("relay.tasks")

    def spawn(
        self, coro: Coroutine[Any, Any, T], *, name: str, awaited: bool = False
    ) -> asyncio.Task[T]:
        """Run ``coro`` in an empty context: the log context a request bound (its host and
        kernel) must not stick to a task that outlives the request. ``awaited``: whoever
        awaits it reports its failure, so it is not logged here too."""
        task = asyncio.get_running_loop().create_task(
            coro, name=name, context=contextvars.Context()
        )
        self._tasks.add(task)
        task.add_done_callback(self._awaited if awaited else self._done)
        return task

    def _awaited(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        retrieved(task)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, RelayError):  # an expected failure, already one line for a person
            self._log.warning("task failed", task=task.get_name(), error=exc.message)
        elif exc is not None:  # a bug: its traceback, once
            self._log.error("task failed", task=task.get_name(), error=repr(exc), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel("owner closed")
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def in_thread(name: str, work: Callable[[], T]) -> asyncio.Future[T]:
    """``work()`` in a daemon thread of its own, its result (or exception) the future's. For
    calls that may block for long (a ``Match exec``, a name whose DNS server is gone): not
    the loop's default executor, whose threads the daemon's exit waits for (a review found a
    stopped daemon lingering behind a `Match exec "sleep 25"`), nor a shared pool that one
    host's stuck calls fill for every other host."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def run() -> None:
        try:
            outcome: tuple[bool, Any] = (True, work())
        except Exception as exc:  # handed to the awaiting coroutine
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def retrieved(future: asyncio.Future[Any]) -> None:
    """A done callback for a future whose failure nobody may await (a launch that failed
    early, a stream given up): its exception is retrieved, so asyncio does not log it as
    never retrieved. One function for all of them, not a lambda made per future."""
    if not future.cancelled():
        future.exception()


class Flag:
    """``asyncio.Event``'s set, is_set and wait, for the flags every kernel and link holds:
    a waiter's future is made only when someone waits (an Event makes a 600-byte deque up
    front, several per kernel)."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)  # one waiter cancelled leaves the others waiting


async def while_moving(
    done: asyncio.Future[Any], motion: Callable[[], Hashable], still_s: float
) -> bool:
    """Wait for ``done`` for as long as something moves: True once it is done, False once
    ``motion()`` (a reading of progress: bytes taken in, bytes handed on) has read the same
    for ``still_s``. A fixed bound would cut off a slow path's last megabytes; no bound would
    let a stuck peer hold on for ever. ``done`` is shielded: it is not cancelled here."""
    last = motion()
    while True:
        try:
            async with asyncio.timeout(still_s):
                await asyncio.shield(done)
            return True
        except TimeoutError:
            now = motion()
            if now == last:
                return False
            last = now
