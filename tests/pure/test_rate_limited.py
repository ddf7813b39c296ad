"""relay.log.RateLimited: a warning anyone can provoke, logged once per key per window, each
line saying how many were not logged since the last; and counts given by a source that
counted them itself (relay's agent says "refused ... COUNT" once a second)."""

from __future__ import annotations

from typing import Any

from relay.log import RateLimited


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **facts: Any) -> None:
        self.lines.append((event, facts))


def test_once_per_key_per_window_and_the_rest_counted() -> None:
    log = _Log()
    limited = RateLimited(log, "refused", window_s=3600)
    for _ in range(3):
        limited.warn("1000", listener=1)
    limited.warn("@127.0.0.2", listener=1)
    assert [facts["not_logged_since_last"] for _, facts in log.lines] == [0, 0]
    assert limited.total == 4


def test_a_count_given_is_counted_whole() -> None:
    """One line of the agent's for five strangers: the total says five, and the line logged
    for them says four more were not logged; the next batch within the window, none logged,
    is counted for the line after the window."""
    log = _Log()
    limited = RateLimited(log, "refused", window_s=0)
    limited.warn("1000", count=5)
    assert limited.total == 5
    assert log.lines[-1][1]["not_logged_since_last"] == 4
    limited = RateLimited(log, "refused", window_s=3600)
    limited.warn("1000", count=2)
    limited.warn("1000", count=3)
    assert limited.total == 5 and len(log.lines) == 2
    assert limited._last["1000"][1] == 3


def test_keys_past_the_bound_are_counted_together() -> None:
    """A caller whose keys a stranger could pick (an address, say) gets MAX_KEYS of them and
    then one more for the rest: the table and the log stay bounded, and the total is whole."""
    log = _Log()
    limited = RateLimited(log, "refused", window_s=3600)
    for i in range(1000):
        limited.warn(f"key {i}")
    assert len(log.lines) == RateLimited.MAX_KEYS + 1
    assert len(limited._last) == RateLimited.MAX_KEYS + 1
    assert limited.total == 1000
