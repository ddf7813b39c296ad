"""Who uses a host's connection, and the idle timer that runs while nobody does.

A kernel, a launch under way and a requested forward each hold the connection (``Hold``);
while any hold is out it is not closed as idle. When the last is released and the host has an
``idle_timeout_s`` > 0, a timer starts; a new hold stops it; when it fires, the host session
closes the connection (``on_idle``).

Most holds end with the connection (a kernel on sshd's path, a launch under way); some do not
(a Slurm allocation: its jobs are Slurm's, and squeue is asked again on the next one). Those
are counted apart (``fragile``): a connection nothing fragile holds may be declared lost on a
suspicion (``HostSession.woke``), as losing it costs only a reconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Hold", "Holds"]


class Hold:
    """A user of a host's connection (a kernel, a launch under way, a requested forward):
    while any hold is out, the connection is not closed as idle. ``release`` is idempotent."""

    def __init__(self, holds: Holds, *, fragile: bool, carried: bool = False) -> None:
        self._holds: Holds | None = holds
        self.fragile = fragile
        self.carried = carried

    def release(self) -> None:
        holds, self._holds = self._holds, None
        if holds is not None:
            holds._unhold(self)


class Holds:
    """The holds on one connection and its idle timer: ``on_idle`` runs once the connection
    has had no hold for ``idle_s()`` seconds (read when the last hold goes; 0 is never);
    ``on_free`` at once, when the last hold goes."""

    def __init__(
        self,
        idle_s: Callable[[], float],
        on_idle: Callable[[], None],
        on_free: Callable[[], None] | None = None,
    ) -> None:
        self._idle_s = idle_s
        self._on_idle = on_idle
        self._on_free = on_free
        self._count = 0
        self.fragile = 0  # of _count, those that end with the connection
        self.carried = 0  # of _count, connections through this one (it is their jump host)
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    def __len__(self) -> int:
        """How many kernels, launches and requested forwards use the connection now."""
        return self._count

    def hold(self, *, outlives_connection: bool = False, carried: bool = False) -> Hold:
        """No idle close until the returned hold is released. ``carried``: a connection made
        through this one, which keeps it open but is no user of its own (``own``)."""
        self._count += 1
        self.fragile += not outlives_connection
        self.carried += carried
        self._cancel_timer()
        return Hold(self, fragile=not outlives_connection, carried=carried)

    @property
    def own(self) -> int:
        """The holds of the host's own users (kernels, launches, forwards, allocations): not
        the connections it carries, which end with it and are made again through it."""
        return self._count - self.carried

    def _unhold(self, hold: Hold) -> None:
        self._count -= 1
        self.fragile -= hold.fragile
        self.carried -= hold.carried
        self._arm()
        if self._count == 0 and self._on_free is not None and not self._stopped:
            self._on_free()

    def rearm(self) -> None:
        """The connection is made again (a resume) with nothing holding it: its idle period
        begins now (one that ran out while it was down found nothing to close)."""
        self._cancel_timer()
        self._arm()

    def _arm(self) -> None:
        """The idle period from now, if nothing holds the connection."""
        idle = self._idle_s()
        if self._count == 0 and idle > 0 and not self._stopped:
            self._timer = asyncio.get_running_loop().call_later(idle, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._count == 0:
            self._on_idle()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stop(self) -> None:
        """The host is closing: no idle timer from now on."""
        self._stopped = True
        self._cancel_timer()
