"""Times and durations in relay's messages about an outage (``relay.clock``): a window's end
days away names its day, and every time its zone."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from relay.clock import duration, moment, span

# New York's rules, written out so that no tz database is needed
NEW_YORK = "EST5EDT,M3.2.0,M11.1.0"
LOST = 1796650378.0  # 2026-12-07 13:32:58 UTC: 08:32:58 in New York, a Monday


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", NEW_YORK)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york")
def test_a_time_today_is_its_clock_and_zone() -> None:
    assert moment(LOST, now=LOST + 3600) == "08:32:58 EST"


@pytest.mark.usefixtures("new_york")
def test_a_window_that_ends_two_days_later_names_its_day() -> None:
    """The helper's report: a 2-day window's end read "08:32:58", the very time the
    connection was lost, as if the window had run out already."""
    assert moment(LOST + 2 * 86400, now=LOST) == "Wed 9 Dec 08:32:58 EST"
    assert moment(LOST, now=LOST + 2 * 86400) == "Mon 7 Dec 08:32:58 EST"


@pytest.mark.usefixtures("new_york")
def test_another_year_is_named() -> None:
    assert moment(LOST, now=LOST + 40 * 86400) == "Mon 7 Dec 2026 08:32:58 EST"


@pytest.mark.usefixtures("new_york")
def test_summer_time_is_named_as_such() -> None:
    assert moment(LOST - 180 * 86400, now=LOST - 180 * 86400).endswith(" EDT")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-3, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m00s"), (897.9, "14m57s"), (3599, "59m59s"),
     (3600, "1h00m"), (172788, "1d23h"), (604800, "7d00h")],
)  # fmt: skip
def test_durations(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


@pytest.mark.usefixtures("new_york")
def test_a_span_says_its_day_and_zone_once_where_both_share_them() -> None:
    assert span(LOST, LOST + 2135, now=LOST) == "08:32:58 to 09:08:33 EST"
    assert span(LOST, LOST + 2135, now=LOST + 86400) == "Mon 7 Dec 08:32:58 to 09:08:33 EST"
    assert span(LOST, LOST + 86400, now=LOST + 86400) == "Mon 7 Dec 08:32:58 EST to 08:32:58 EST"
