"""relay's keepalive settings as asyncssh is given them: asyncssh closes a connection after
``keepalive_interval x (keepalive_count_max + 1)`` of silence (its timer counts past the
maximum), relay promises ``keepalive_interval_s x keepalive_count_max``."""

from __future__ import annotations

import pytest

from relay.ssh.options import asyncssh_keepalive


def asyncssh_closes_after(interval: float, count_max: int) -> float:
    """asyncssh's keepalive timer: a request every interval, closed once the count of
    unanswered ones exceeds count_max (connection.py, _keepalive_timer_callback)."""
    return interval * (count_max + 1)


@pytest.mark.parametrize(("interval_s", "count"), [(15.0, 3), (1.0, 2), (0.5, 1), (7.0, 1)])
def test_the_loss_is_declared_after_interval_times_count(interval_s: float, count: int) -> None:
    interval, count_max = asyncssh_keepalive(interval_s, count)
    assert count_max >= 1  # asyncssh refuses 0
    assert asyncssh_closes_after(interval, count_max) == interval_s * count
