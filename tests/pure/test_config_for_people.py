"""relay.toml for a new user: [defaults] under every host, suggested [hosts.NAME] headers that
are TOML, and a client's agent welcome on every request that may connect."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import __version__, protocol
from relay.errors import ConfigError, UnknownHost, host_header
from relay.settings import load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_every_request_that_may_connect_carries_the_clients_agent() -> None:
    """relay trust sends its SSH_AUTH_SOCK as launch, connect, login and check do (README,
    "The agent"): a shell with an ssh-agent must not make it a bad request."""
    for op in ("hostkey", "login", "connect", "check"):
        req = protocol.parse_request({"v": 1, "op": op, "host": "h", "ssh_auth_sock": "/a.sock"})
        assert req.model_dump()["ssh_auth_sock"] == "/a.sock"


@given(st.text(min_size=1, max_size=40))
def test_a_suggested_host_header_is_valid_toml_naming_that_host(name: str) -> None:
    text = f"{host_header(name)}\nhostname = 'x'\n"
    assert tomllib.loads(text) == {"hosts": {name: {"hostname": "x"}}}
    assert "\n" not in host_header(name)


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("myhost", "[hosts.myhost]"),
        ("my_host-2", "[hosts.my_host-2]"),
        ("root@127.0.0.1:1", '[hosts."root@127.0.0.1:1"]'),
        ("nosuchhost.invalid", '[hosts."nosuchhost.invalid"]'),
        ('a"b\\c', '[hosts."a\\"b\\\\c"]'),
    ],
)
def test_host_headers_quote_only_keys_that_need_it(name: str, header: str) -> None:
    assert host_header(name) == header
    assert host_header(name, "slurm") == header[:-1] + ".slurm]"


def test_an_unknown_alias_suggests_a_header_that_parses(tmp_path: Path) -> None:
    config, _ = load(write(tmp_path, "[daemon]\nallow_adhoc_hosts = false\n"))
    with pytest.raises(UnknownHost) as info:
        config.resolve("nosuchhost.invalid")
    assert '[hosts."nosuchhost.invalid"]' in info.value.message


def test_defaults_are_every_hosts_defaults_and_a_hosts_own_keys_win(tmp_path: Path) -> None:
    config, _ = load(
        write(
            tmp_path,
            "[defaults]\nlaunch_timeout_s = 7\nuser = 'd'\nspare_forwards = 2\n"
            "[hosts.a]\nhostname = 'x'\nuser = 'u'\n"
            "[hosts.b]\nhostname = 'y'\nspare_forwards = 0\n",
        )
    )
    a, b = config.resolve("a")[1], config.resolve("b")[1]
    assert (a.launch_timeout_s, a.user, a.spare_forwards) == (7, "u", 2)
    assert (b.launch_timeout_s, b.user, b.spare_forwards) == (7, "d", 0)
    assert "launch_timeout_s" in a.model_fields_set  # set in relay.toml: wins over ssh_config
    adhoc = config.resolve("bob@z")[1]
    assert (adhoc.launch_timeout_s, adhoc.user, adhoc.hostname) == (7, "bob", "z")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "[defaults]\nlaunch_timeout_s = -1\n[hosts.a]\nhostname = 'x'\n",
            "defaults.launch_timeout_s",
        ),
        ("[defaults]\nkernal = 'k'\n", "defaults.kernal: unknown key (did you mean kernel?)"),
        ("[defaults]\nhostname = 'x'\n", "defaults.hostname: "),
    ],
)
def test_defaults_errors_name_the_defaults_key(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert f"{tmp_path / 'relay.toml'}: {says}" in str(info.value)


@pytest.mark.parametrize(
    ("value", "hinted"),
    [("'900'", True), ("'8.5'", True), ("'15m'", False), ("-5", False)],
)
def test_a_number_in_quotes_is_said_to_be_one(tmp_path: Path, value: str, hinted: bool) -> None:
    """TOML's quotes make a string: said so, where the string is a number."""
    for key in ("resume_window_s", "spare_forwards"):
        with pytest.raises(ConfigError) as info:
            load(write(tmp_path, f"[hosts.a]\nhostname = 'x'\n{key} = {value}\n"))
        said = str(info.value)
        assert f"hosts.a.{key}: " in said and "\n" not in said, said
        assert ("(a number: write it without the quotes)" in said) == hinted, said


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[hosts.a]\nhostname = 'x'\nresume_window = 60\n",
         "hosts.a.resume_window: unknown key (did you mean resume_window_s?)"),
        ("[defaults]\nkeepalive_count = 3\n",
         "defaults.keepalive_count: unknown key (did you mean keepalive_count_max?)"),
        ("[daemon]\nlog_levl = 'debug'\n",
         "daemon.log_levl: unknown key (did you mean log_level?)"),
        ("[hosts.a]\nhostname = 'x'\nzzzz = 1\n",
         f"hosts.a.zzzz: unknown key (relay {__version__} has none such: written for a newer "
         "relay?)"),
        # taken, and logged at info: the example file names the four
        ("[daemon]\nlog_level = 'verbose'\n",
         "daemon.log_level: Input should be 'debug', 'info', 'warning' or 'error', got 'verbose'"),
    ],
)  # fmt: skip
def test_a_mistyped_key_or_value_is_said_with_the_ones_meant(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert str(info.value) == f"{tmp_path / 'relay.toml'}: {says}"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("nan", "Input should be a finite number, got nan"),
        ("inf", "Input should be a finite number, got inf"),
        ("0.4", "must be 0 (kernels end with their connection) or at least 1 second, got 0.4"),
        ("0.999", "must be 0 (kernels end with their connection) or at least 1 second, got 0.999"),
        ("'15m'", "Input should be a valid number, got '15m' (a number of seconds, e.g. 900)"),
    ],
)
def test_a_window_is_none_or_a_finite_number_of_seconds(
    tmp_path: Path, value: str, says: str
) -> None:
    """A window of 0.4 s was taken, shown as "0s" (read as off) and gone before keepalive
    could find the connection lost; nan was said to be above the week allowed."""
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, f"[hosts.a]\nhostname = 'x'\nresume_window_s = {value}\n"))
    assert str(info.value) == f"{tmp_path / 'relay.toml'}: hosts.a.resume_window_s: {says}"


def test_windows_of_zero_and_of_a_second_are_taken(tmp_path: Path) -> None:
    for value in (0, 1, 1.5, 604800):
        config, _ = load(write(tmp_path, f"[hosts.a]\nhostname = 'x'\nresume_window_s = {value}\n"))
        assert config.hosts["a"].resume_window_s == value


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("hostname = 'root:hunter2@10.0.0.1'", "hostname: a password in a host spec is refused"),
        ("hostname = 'root@10.0.0.1'", "hostname: a host name or address only: give the login"),
        ("hostname = 'a b'", "hostname: not a host name or address (it has spaces"),
        ("hostname = ''", "hostname: not a host name or address"),
        ("hostname = 'h'\nuser = ''", "user: not a user name"),
        ("hostname = 'h'\nuser = 'root:hunter2'", "user: a password in a host spec is refused"),
        ("hostname = 'h'\njump = 'ssh://bob:hunter2#x@j'", "jump: a password in a host spec"),
    ],
)
def test_a_hostname_or_user_holding_more_is_refused_unrepeated(
    tmp_path: Path, line: str, says: str
) -> None:
    """A review found ``hostname = "root:pw@host"`` taken, and the password then in a
    launch's error, ``relay status`` and the log; and ``user = ""`` taken as a login name."""
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, f"[hosts.a]\n{line}\n"))
    said = str(info.value)
    assert said.startswith(f"{tmp_path / 'relay.toml'}: hosts.a.{says}"), said
    assert "hunter2" not in said and "got" not in said, said


def test_host_names_addresses_and_aliases_are_taken(tmp_path: Path) -> None:
    for hostname in ("login.example.org", "10.0.0.1", "::1", "my-alias", "h_1"):
        config, _ = load(write(tmp_path, f"[hosts.a]\nhostname = '{hostname}'\nuser = 'a.b-c'\n"))
        assert config.hosts["a"].hostname == hostname


def _chain(hops: int) -> str:
    """Host h0 reached through h1, h1 through h2, ..., h``hops`` directly."""
    return "".join(
        f"[hosts.h{i}]\nhostname = 'x{i}'\n" + (f"jump = 'h{i + 1}'\n" if i < hops else "")
        for i in range(hops + 1)
    )


def test_jump_hosts_that_lead_back_are_refused_naming_the_loop(tmp_path: Path) -> None:
    """Else the connect would go round until something timed out, saying nothing useful."""
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, _chain(2) + "[hosts.h3]\nhostname = 'x'\njump = 'h3'\n"))
    assert str(info.value).endswith("hosts.h3.jump: jump hosts form a loop (h3 -> h3)")
    assert info.value.host == "h3"
    looped = _chain(2).replace(
        "[hosts.h2]\nhostname = 'x2'\n", "[hosts.h2]\nhostname = 'x2'\njump = 'h0'\n"
    )
    with pytest.raises(ConfigError, match=r"jump hosts form a loop \(h0 -> h1 -> h2 -> h0\)"):
        load(write(tmp_path, looped))


def test_eight_jump_hosts_are_taken_and_a_ninth_refused(tmp_path: Path) -> None:
    config, _ = load(write(tmp_path, _chain(8)))
    assert config.hosts["h0"].jump == "h1"
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, _chain(9)))
    assert str(info.value).endswith("hosts.h0.jump: more than 8 jump hosts")
    assert info.value.host == "h0"


def test_a_jump_host_that_is_no_host_spec_is_refused_as_the_jump(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "[hosts.a]\nhostname = 'x'\njump = 'b:ssh'\n"))
    assert "hosts.a.jump: host spec 'b:ssh': port 'ssh' is not a number" in str(info.value)
    assert info.value.host == "a"


def test_a_default_jump_host_does_not_jump_through_itself(tmp_path: Path) -> None:
    config, _ = load(
        write(
            tmp_path,
            "[defaults]\njump = 'bastion'\n"
            "[hosts.bastion]\nhostname = 'b'\n[hosts.a]\nhostname = 'x'\n",
        )
    )
    assert config.resolve("a")[1].jump == "bastion"
    assert config.resolve("bastion")[1].jump is None


def test_a_hosts_own_way_there_replaces_the_default_one(tmp_path: Path) -> None:
    """jump and proxy_command are one setting: a host's own jump is not overridden by a
    proxy_command it inherits (proxy_command wins over jump in one table)."""
    config, _ = load(
        write(
            tmp_path,
            "[defaults]\nproxy_command = 'nc %h %p'\n"
            "[hosts.a]\nhostname = 'x'\njump = 'j@b'\n[hosts.c]\nhostname = 'y'\n",
        )
    )
    a, c = config.resolve("a")[1], config.resolve("c")[1]
    assert (a.jump, a.proxy_command) == ("j@b", None)
    assert (c.jump, c.proxy_command) == (None, "nc %h %p")


def test_a_long_value_is_cut_short_in_its_error(tmp_path: Path) -> None:
    """The error repeats what was given: a port of 4000 digits was a line of 4000
    characters in the launch's error, `relay status` and the log."""
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "[hosts.a]\nhostname = 'h'\nport = " + "1" * 4000 + "\n"))
    said = str(info.value)
    assert "hosts.a.port" in said and "(4000 characters)" in said and len(said) < 300, said
