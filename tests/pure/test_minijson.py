"""relay.minijson against the standard library's json, both ways."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import minijson

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)


@given(values)
def test_dumps_is_read_back_by_json(value: object) -> None:
    assert json.loads(minijson.dumps(value)) == value


@given(values)
def test_loads_reads_what_json_writes(value: object) -> None:
    for text in (
        json.dumps(value),
        json.dumps(value, ensure_ascii=False),
        json.dumps(value, indent=2),
    ):
        assert minijson.loads(text) == value


@given(st.text(max_size=60))
def test_loads_accepts_exactly_what_json_accepts(text: str) -> None:
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        with pytest.raises(ValueError, match="invalid JSON"):
            minijson.loads(text)
    else:
        if any(word in text for word in ("NaN", "Infinity")):
            with pytest.raises(
                ValueError, match="invalid JSON"
            ):  # json's extensions; RFC 8259 has neither
                minijson.loads(text)
        else:
            assert minijson.loads(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"a":}',
        "[1,]",
        "01",
        "1.",
        "1e",
        '"\\x"',
        '"\\ud83d"x',
        "tru",
        "[1] 2",
        '"a\nb"',
        "-",
        "NaN",
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        minijson.loads(text)


def test_surrogate_pairs_and_escapes() -> None:
    assert minijson.loads('"\\ud83d\\ude00 \\u00e9\\n"') == "\U0001f600 \u00e9\n"
    assert minijson.dumps('\x01"\\') == '"\\u0001\\"\\\\"'


def test_depth_is_bounded() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        minijson.loads("[" * 1000 + "]" * 1000)
