"""relay.lite.minijson against the standard library's json, both ways."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.lite import framing, minijson

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


def _refuse_twice(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json's object hook that does what minijson does with a key given twice."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


@given(st.text(max_size=60))
def test_loads_accepts_exactly_what_json_accepts(text: str) -> None:
    try:
        expected = json.loads(text, object_pairs_hook=_refuse_twice)
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


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"op":"ping","op":"stop"}', "op"),
        ('{"a":1,"b":2,"a":1}', "a"),  # the same value twice is refused too
        ('{"a":1,"\\u0061":2}', "a"),  # the same key, written another way
        ('{"v":1,"x":{"h":1,"h":2}}', "h"),
        ('[0,{"x":[{"k":null,"k":null}]}]', "k"),
        ('{"":1,"":2}', ""),
    ],
)
def test_a_key_given_twice_is_refused(text: str, key: str) -> None:
    """``{"op":"ping","op":"stop"}`` is not ``{"op":"stop"}``: whoever reads the message
    first (a log, a proxy, another JSON library) may have taken the other value."""
    with pytest.raises(minijson.DuplicateKey, match="invalid JSON") as caught:
        minijson.loads(text)
    assert caught.value.key == key


@pytest.mark.parametrize("text", ['{"a":{"a":1}}', '[{"a":1},{"a":2}]', '{"a":1,"A":2}'])
def test_the_same_key_in_different_objects_is_fine(text: str) -> None:
    assert minijson.loads(text) == json.loads(text)


@given(
    st.lists(st.tuples(st.text(max_size=2), values), max_size=6),
    st.integers(min_value=0, max_value=4),
)
def test_a_key_twice_is_refused_at_any_depth(pairs: list[tuple[str, object]], depth: int) -> None:
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"
    for _ in range(depth):
        text = f'{{"w":[1,{text}]}}'
    keys = [k for k, _ in pairs]
    twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    if twice is None:
        assert minijson.loads(text) == json.loads(text)
    else:
        with pytest.raises(minijson.DuplicateKey) as caught:
            minijson.loads(text)
        assert caught.value.key == twice


def test_a_lone_surrogate_is_escaped_and_read_back() -> None:
    """A path with a byte that is not UTF-8 (a Latin-1 socket directory, as ``os.fsdecode``
    gives it) in a status answer: the daemon could not encode it, and `relay status` failed."""
    path = os.fsdecode(b"/home/lat\xe9n/relay.sock")
    data = framing.encode({"socket": path})
    assert b"\\udce9" in data
    assert framing.decode(data)["socket"] == path
