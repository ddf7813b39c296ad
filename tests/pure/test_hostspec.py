from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.hostspec import HostSpec, HostSpecError, shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login.example.org", HostSpec("login.example.org")),
        ("alice@login", HostSpec("login", "alice")),
        ("alice@login:2222", HostSpec("login", "alice", 2222)),
        ("login:22", HostSpec("login", None, 22)),
        ("[::1]", HostSpec("::1")),
        ("[2001:db8::1]:2222", HostSpec("2001:db8::1", None, 2222)),
        ("bob@[2001:db8::1]:2222", HostSpec("2001:db8::1", "bob", 2222)),
        ("ssh://alice@host:2200", HostSpec("host", "alice", 2200)),
        ("SSH://host/", HostSpec("host")),
        ("ssh://[::1]:22", HostSpec("::1", None, 22)),
        ("first.last@host", HostSpec("host", "first.last")),
        ("a@b@host", None),
    ],
)
def test_parses(text: str, expected: HostSpec | None) -> None:
    if expected is None:
        with pytest.raises(HostSpecError):
            HostSpec.parse(text)
    else:
        assert HostSpec.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty host spec"),
        ("::1", "brackets"),
        ("2001:db8::1:22", "brackets"),
        ("[::1", "without ']'"),
        ("[::1]x", "expected ':PORT'"),
        ("[host]", "IPv6 addresses only"),
        ("host:0", "outside 1-65535"),
        ("host:ssh", "not a number"),
        ("@host", "user name"),
        ("alice@", "names no host"),
        ("ssh://host/path", "no path"),
        ("ssh://host?x=1", "no path or query"),
        ("ssh://host#top", "no path or query"),
        ("bad host", "not a host name"),
    ],
)
def test_rejects(text: str, says: str) -> None:
    with pytest.raises(HostSpecError) as info:
        HostSpec.parse(text)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "alice:hunter2@host",
        "ssh://alice:hunter2@host:22",
        "alice:hunter2@[::1]:22",
        # characters a URL's path, query or fragment begin with, which a generated password
        # may hold: the URL's check repeated the spec, password and all (a review found it)
        "ssh://alice:hunter2/x@host",
        "ssh://alice:hunter2?x@host",
        "ssh://alice:hunter2#x@host",
        "ssh://alice:hunter2#x@host/path",
        "alice:hunter2/x@host:bad",
    ],
)
def test_password_is_refused_and_never_repeated(text: str) -> None:
    with pytest.raises(HostSpecError) as info:
        HostSpec.parse(text)
    message = str(info.value)
    assert "password" in message and "ssh-agent" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("alice:hunter2@host", "alice:***@host"),
        ("ssh://alice:hunter2@host:22", "ssh://alice:***@host:22"),
        ("alice:hun:ter@2@[::1]:22", "alice:***@[::1]:22"),
        ("alice@host:22", "alice@host:22"),
        ("[::1]:22", "[::1]:22"),
        # the scheme's own ":" is no password's (a review found "ssh://alice:***@host")
        ("ssh://alice@host", "ssh://alice@host"),
        ("SSH://bob@h:22", "SSH://bob@h:22"),
        ("ssh://host", "ssh://host"),
    ],
)
def test_a_spec_repeated_in_a_message_has_its_password_hidden(text: str, said: str) -> None:
    """``relay check`` names the spec it checked (its header, its JSON): a review found the
    password there, where step 1 had refused it."""
    assert shown(text) == said


@given(
    st.sampled_from(["alice", "bob_2", None]),
    st.sampled_from(["host", "10.0.0.1", "::1", "a.b.c"]),
    st.one_of(st.none(), st.integers(1, 65535)),
)
def test_str_round_trips(user: str | None, host: str, port: int | None) -> None:
    spec = HostSpec(host, user, port)
    assert HostSpec.parse(str(spec)) == spec
    assert HostSpec.parse("ssh://" + str(spec)) == spec
