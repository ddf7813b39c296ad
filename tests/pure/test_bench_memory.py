"""The bench's account of where the daemon's memory is (bench/memory.py): smaps summed by
what holds each page."""

from __future__ import annotations

import pytest

from bench.memory import ANONYMOUS, OTHER, by_holder

SMAPS = """\
55d0c0a00000-55d0c1400000 rw-p 00000000 00:00 0                          [heap]
Size:              10240 kB
Rss:               10012 kB
7f00a0000000-7f00a0600000 rw-p 00000000 00:00 0
Size:               6144 kB
Rss:                6144 kB
7f00b0000000-7f00b0800000 r-xp 00001000 08:01 123 /venv/cryptography/_rust.abi3.so
Size:               7908 kB
Rss:                6184 kB
7f00b1000000-7f00b1100000 r--p 00000000 08:01 124 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                1024 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  36 kB
"""


def test_pages_are_summed_by_what_holds_them_largest_first() -> None:
    held = by_holder(SMAPS)
    assert list(held) == [ANONYMOUS, "cryptography's Rust library", OTHER]
    assert held[ANONYMOUS] == pytest.approx((10012 + 6144 + 36) / 1024)
    assert held["cryptography's Rust library"] == pytest.approx(6184 / 1024)
    assert held[OTHER] == pytest.approx(1.0)


def test_nothing_mapped_is_nothing_held() -> None:
    assert by_holder("") == {}
