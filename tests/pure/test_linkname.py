from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.lite.linkname import Endpoint, LinkName, LinkNameError


@pytest.mark.parametrize(
    ("text", "data", "message"),
    [
        (
            "53994@127.0.0.1,39359@127.0.0.1",
            Endpoint(53994, "127.0.0.1"),
            Endpoint(39359, "127.0.0.1"),
        ),
        (" 1@a,65535@b.example.org ", Endpoint(1, "a"), Endpoint(65535, "b.example.org")),
        ("5000@::1,5001@::1", Endpoint(5000, "::1"), Endpoint(5001, "::1")),
        ("5000@[fe80::1%eth0],5001@[::1]", Endpoint(5000, "fe80::1%eth0"), Endpoint(5001, "::1")),
        ("5000@my_host,5001@other-host.", Endpoint(5000, "my_host"), Endpoint(5001, "other-host.")),
        ("1@a , 2@b", Endpoint(1, "a"), Endpoint(2, "b")),  # each endpoint stripped too
        (f"1@{'a' * 253},2@b", Endpoint(1, "a" * 253), Endpoint(2, "b")),  # DNS's longest
        (f"1@[::1%{'e' * 64}],2@b", Endpoint(1, f"::1%{'e' * 64}"), Endpoint(2, "b")),
    ],
)
def test_parses(text: str, data: Endpoint, message: Endpoint) -> None:
    link = LinkName.parse(text)
    assert (link.data, link.message) == (data, message)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty link name"),
        ("   ", "empty link name"),
        ("5000@127.0.0.1", "deprecated TCP protocol"),
        ("1@a,2@b,3@c", "has 3 endpoints"),
        ("x@a,2@b", "not a number"),
        ("0@a,2@b", "outside 1-65535"),
        ("70000@a,2@b", "outside 1-65535"),
        ("5000,5001", "has no '@'"),
        ("notalink", "no ','"),
        ("5000@,5001@a", "not a host name"),
        ("5000@a b,5001@a", "not a host name"),
        ("5000@::g,5001@a", "not a valid IPv6"),
        ("５０@a,2@b", "not a number"),
        # a host that starts with '-' is an option to whatever it reaches (ssh, a shell)
        ("5000@-oProxyJump,5001@a", "not a host name"),
        ("5000@a-,5001@a", "not a host name"),
        ("5000@.a,5001@a", "not a host name"),
        (f"5000@{'a' * 254},5001@a", "not a host name"),
        ("5000@[::1,5001@a", "not a valid IPv6"),  # an open bracket alone is not stripped
        (f"5000@[::1%{'e' * 65}],5001@a", "invalid IPv6 scope id"),
    ],
)
def test_rejects_with_one_line(text: str, says: str) -> None:
    with pytest.raises(LinkNameError) as info:
        LinkName.parse(text)
    message = str(info.value)
    assert says in message
    assert "\n" not in message
    assert len(message) < 400


@pytest.mark.parametrize("port", ["9" * 5000, "0" * 5000 + "1" * 10, "99999"])
def test_long_garbage_is_shortened_in_the_message(port: str) -> None:
    with pytest.raises(LinkNameError, match="outside 1-65535") as info:
        LinkName.parse(port + "@a,1@b")
    assert len(str(info.value)) < 400


def test_leading_zeros_are_a_port() -> None:
    assert LinkName.parse("000080@a,1@b").data.port == 80


def test_a_rewritten_name_is_both_ports_on_loopback() -> None:
    assert str(LinkName.loopback(40001, 40002)) == "40001@127.0.0.1,40002@127.0.0.1"


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
)
ports = st.integers(1, 65535)


@given(ports, hosts, ports, hosts)
def test_format_parse_round_trip(p1: int, h1: str, p2: int, h2: str) -> None:
    link = LinkName(Endpoint(p1, h1), Endpoint(p2, h2))
    assert LinkName.parse(str(link)) == link


@given(st.text(max_size=200))
def test_never_raises_anything_but_link_name_error(text: str) -> None:
    try:
        link = LinkName.parse(text)
    except LinkNameError as exc:
        assert "\n" not in str(exc)
    else:
        assert LinkName.parse(str(link)) == link
