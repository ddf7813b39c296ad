"""Supervised tasks: every task has an owner that keeps a reference and logs its failure once."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

from relay.errors import RelayError

__all__ = ["TaskSet"]

T = TypeVar("T")


class TaskSet:
    """The tasks one object owns: spawned with a name, cancelled together by ``aclose``."""

    def __init__(self, log: Any = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._log = log or structlog.get_logger("relay.tasks")

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run ``coro`` in an empty context: the log context a request bound (its host and
        kernel) must not stick to a task that outlives the request."""
        task = asyncio.get_running_loop().create_task(
            coro, name=name, context=contextvars.Context()
        )
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

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
