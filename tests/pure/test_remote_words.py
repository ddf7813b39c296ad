"""Nothing with a control character reaches the remote host: each field that would is refused
where it enters relay, in one line (the supervisor reads one command per line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import protocol
from relay.errors import BadRequest, ConfigError
from relay.kernelcmd import no_control_characters
from relay.lite.linkname import LinkName, LinkNameError
from relay.settings import RelayConfig, load

CONTROL = ["\n", "\r", "\x00", "\t", "\x1b", "\x7f"]


@pytest.mark.parametrize("char", CONTROL)
def test_kernel_paths_in_requests(char: str) -> None:
    with pytest.raises(BadRequest) as err:
        protocol.parse_request(
            {"op": "launch", "host": "h", "kernel": f"/k{char}kill -9 -1", "linkname": "1@a,2@a"}
        )
    assert "\n" not in err.value.message and "control character" in err.value.message


@pytest.mark.parametrize("char", CONTROL)
@pytest.mark.parametrize("key", ["kernel", "controller_args", "compute_args"])
def test_host_config(tmp_path: Path, char: str, key: str) -> None:
    # JSON's string escapes are TOML's too: the file itself is valid, the value is not
    value = json.dumps(f"/k{char}x" if key == "kernel" else ["-a", f"b{char}c"])
    config = tmp_path / "relay.toml"
    config.write_text(f'[hosts.h]\nhostname = "example.org"\n{key} = {value}\n')
    with pytest.raises(ConfigError) as err:
        load(config)
    assert f"hosts.h.{key}" in err.value.message and "\n" not in err.value.message


@pytest.mark.parametrize(
    "name",
    [
        "1@[fe80::1%eth0\nkill -9 -1],2@[::1]",
        "1@[fe80::1%],2@[::1]",
        "1@[fe80::1%a b],2@[::1]",
        "1@[fe80::1%$(id)],2@[::1]",
        "1@a\nb,2@a",
        "1@exa\rmple.org,2@a",
    ],
)
def test_link_names_and_ipv6_scope_ids(name: str) -> None:
    with pytest.raises(LinkNameError) as err:
        LinkName.parse(name)
    assert "\n" not in str(err.value)


def test_a_plain_scope_id_is_fine() -> None:
    assert LinkName.parse("1@[fe80::1%eth0],2@[fe80::1%3]").data.host == "fe80::1%eth0"


@given(st.text(max_size=40))
def test_the_check_refuses_exactly_control_characters(text: str) -> None:
    bad = any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
    try:
        no_control_characters(text)
    except ValueError:
        assert bad
    else:
        assert not bad


def test_the_default_config_has_no_such_words() -> None:
    RelayConfig()  # the defaults themselves pass the check
