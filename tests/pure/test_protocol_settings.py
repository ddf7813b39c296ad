from __future__ import annotations

import json
import os
import re
from pathlib import Path

import annotated_types as at
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import protocol
from relay.errors import BadRequest, ConfigError, UnknownHost
from relay.lite import framing
from relay.settings import HostConfig, SlurmConfig, load


def test_encode_decode() -> None:
    line = framing.encode({"op": "ping"})
    assert line.endswith(b"\n") and framing.decode(line) == {"v": 1, "op": "ping"}


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"hello\n", "not UTF-8 JSON"),
        (b"\xff\xfe\n", "not UTF-8 JSON"),
        (b"[1,2]\n", "not a JSON object"),
        (b'{"op":"ping"}\n', "version None is not supported"),
        (b'{"v":2,"op":"ping"}\n', "version 2 is not supported"),
        (b'{"v":1,"op":"ping"}', "not terminated"),
        (b"x" * (framing.MAX_MESSAGE_BYTES + 1), "exceeds"),
        (b'{"v":1,"op":"ping","op":"stop"}\n', "the key 'op' twice"),
        (b'{"v":1,"v":1,"op":"ping"}\n', "the key 'v' twice"),
        (b'{"v":1,"op":"connect","kernel":{"path":"a","path":"b"}}\n', "the key 'path' twice"),
        (b'{"v":1,"op":"answers","answers":[{"x":1,"x":2}]}\n', "the key 'x' twice"),
    ],
)
def test_framing_errors(line: bytes, says: str) -> None:
    with pytest.raises(framing.FramingError, match=says):
        framing.decode(line)


def test_a_long_version_is_cut_short_in_the_answer() -> None:
    """The daemon answers and logs this message: a version of 64,000 characters was repeated
    whole (a review found it)."""
    with pytest.raises(framing.FramingError) as caught:
        framing.decode(b'{"v":"' + b"x" * 60_000 + b'","op":"ping"}\n')
    assert "protocol version 'xxx" in str(caught.value) and len(str(caught.value)) < 200


@given(st.text(), st.sampled_from(["{K:1,K:2}", '{"o":[{K:1,"x":0,K:1}]}']))
def test_a_key_twice_is_named_in_one_short_line(key: str, shape: str) -> None:
    """The daemon answers with this message: the key quoted, control characters escaped,
    long keys cut short."""
    line = shape.replace("K", json.dumps(key)).replace("{", '{"v":1,', 1).encode() + b"\n"
    with pytest.raises(framing.FramingError) as caught:
        framing.decode_unbounded(line)
    message = str(caught.value)
    assert "twice" in message and "\n" not in message and len(message) < 200
    assert repr(key[:40]) in message


def test_oversized_messages_are_not_encoded() -> None:
    with pytest.raises(framing.FramingError):
        framing.encode({"op": "x" * framing.MAX_MESSAGE_BYTES})


def test_launch_request() -> None:
    req = protocol.parse_request(
        {
            "v": 1,
            "op": "launch",
            "host": "h",
            "kernel": "k",
            "linkname": "1@a,2@a",
            "mode": "compute",
        }
    )
    assert isinstance(req, protocol.LaunchRequest) and req.mode == "compute"


@pytest.mark.parametrize(
    ("obj", "says"),
    [
        ({"v": 1, "op": "launch", "host": "h", "linkname": "1@a,2@a", "mode": "x"}, "mode"),
        ({"v": 1, "op": "launch", "linkname": "1@a,2@a"}, "host"),
        ({"v": 1, "op": "launch", "host": "", "linkname": "1@a,2@a"}, "host"),
        ({"v": 1, "op": "fly"}, "bad request"),
        ({"v": 1, "op": "ping", "extra": 1}, "extra"),
    ],
)
def test_bad_requests(obj: dict[str, object], says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        protocol.parse_request(obj)


@given(
    st.dictionaries(
        st.sampled_from(["v", "op", "host", "kernel", "linkname", "mode", "x"]),
        st.one_of(st.text(max_size=10), st.integers(), st.none()),
    )
)
def test_any_object_is_a_request_or_bad_request(obj: dict[str, object]) -> None:
    try:
        protocol.parse_request(obj)
    except BadRequest as exc:
        assert "\n" not in exc.message


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_full_example_config_loads() -> None:
    config, _ = load(Path(__file__).parents[2] / "config" / "relay.example.toml")
    host = config.hosts["myhost"]
    assert host.hostname == "login.example.org" and host.port is None and host.jump == "bastion"
    assert host.compute_args == ["-subkernel", "-noinit"] and host.compression is False
    # what ssh_config can say is left to it: not set in the example, so not overriding it
    assert not {"port", "identity_files", "known_hosts", "keepalive_interval_s", "ciphers"} & (
        host.model_fields_set
    )
    assert config.daemon.ssh_config == ("~/.ssh/config", "/etc/ssh/ssh_config")


def _comments_of(lines: list[str], table: str, key: str) -> str:
    """What relay.example.toml says of ``key`` in ``[table]``: the comment block right above
    its line, its own comment, and the comment lines aligned under it."""
    at = lines.index(f"[{table}]") + 1
    while not re.match(rf"#? ?{key} = ", lines[at]):
        assert not lines[at].startswith("["), f"{table}.{key} is not in the example"
        at += 1
    said = [lines[at].partition("#")[2] if not lines[at].startswith("#") else lines[at]]
    above = at - 1
    while lines[above].startswith("# ") and " = " not in lines[above]:
        said.insert(0, lines[above])
        above -= 1
    below = at + 1
    while below < len(lines) and re.match(r" {20,}#", lines[below]):
        said.append(lines[below])
        below += 1
    return " ".join(said)


def test_the_example_says_each_numbers_range() -> None:
    """A key with bounds says them where it is set (``A to B`` or ``at most B``), or, for
    seconds above 0 up to a day, the header's rule for every key ending in _s."""
    text = (Path(__file__).parents[2] / "config" / "relay.example.toml").read_text()
    lines = text.splitlines()
    assert "Keys ending in _s are\n# seconds, above 0 and at most 86400 (a day)" in text
    for model, table in ((HostConfig, "hosts.myhost"), (SlurmConfig, "hosts.cluster.slurm")):
        for key, field in model.model_fields.items():
            low = next((m.ge for m in field.metadata if isinstance(m, at.Ge)), None)
            high = next((m.le for m in field.metadata if isinstance(m, at.Le)), None)
            above_0 = any(isinstance(m, at.Gt) and m.gt == 0 for m in field.metadata)
            if high is None or (above_0 and high == 86400 and key.endswith("_s")):
                continue  # no upper bound, or the header's rule
            said = _comments_of(lines, table, key)
            assert f"{low} to {high}" in said or f"at most {high}" in said, (table, key, said)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[hosts.a]\nhostname = 'x'\nport = 'abc'\n", "hosts.a.port: "),
        ("[hosts.a]\nport = 22\n", "hosts.a.hostname: Field required"),
        ("[hosts.a]\nhostname = 'x'\npassword = 'hunter2'\n", "relay takes no passwords"),
        ("[hosts.a]\nhostname = 'x'\nlaunch_timeout_s = -1\n", "hosts.a.launch_timeout_s"),
        ("[hosts.a]\nhostname = 'x'\njump = 'a'\n", "loop"),
        ("[hosts.a]\nhostname = 'x'\njump = 'alice:pw@b'\n", "password"),
        ("[daemon]\nsocket = 3\n", "daemon.socket"),
        # a switch for a number: not 1 s (pydantic's lax mode would take true as 1)
        (
            "[hosts.a]\nhostname = 'x'\nresume_window_s = true\n",
            "hosts.a.resume_window_s: Input should be a valid number, got true",
        ),
        ("[defaults]\nspare_forwards = false\n", "spare_forwards: Input should be a valid integer"),
        (
            "[hosts.a]\nhostname = 'x'\nslurm = {cpus_per_kernel = true}\n",
            "hosts.a.slurm.cpus_per_kernel",
        ),
        (
            "[hosts.a]\nhostname = 'x'\nport = '22'\n",
            "hosts.a.port: Input should be a valid integer",
        ),
        ("[hosts.a\n", "not valid TOML"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert str(info.value).startswith(str(tmp_path / "relay.toml"))
    assert says in str(info.value)
    assert "hunter2" not in str(info.value)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "nope.toml")


def test_resolution_of_aliases_and_specs(tmp_path: Path) -> None:
    config, _ = load(
        write(tmp_path, "[defaults]\nlaunch_timeout_s = 7\n[hosts.a]\nhostname = 'x'\nuser = 'u'\n")
    )
    assert config.resolve("a")[1].user == "u"
    key, adhoc = config.resolve("ssh://bob@10.0.0.9:2222")
    assert key == "bob@10.0.0.9:2222"
    assert (adhoc.hostname, adhoc.user, adhoc.port, adhoc.launch_timeout_s) == (
        "10.0.0.9",
        "bob",
        2222,
        7,
    )
    with pytest.raises(BadRequest, match="password"):
        config.resolve("bob:pw@10.0.0.9")


def test_strict_hosts_refuse_unknown_aliases(tmp_path: Path) -> None:
    config, _ = load(
        write(tmp_path, "[daemon]\nallow_adhoc_hosts = false\n[hosts.a]\nhostname = 'x'\n")
    )
    with pytest.raises(UnknownHost, match=r"unknown host alias 'b'.*configured: a"):
        config.resolve("b")


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relay.lite import paths
    from relay.settings import socket_path

    path = write(tmp_path, f"[daemon]\nsocket = '{tmp_path}/s.sock'\n")
    monkeypatch.setenv("RELAY_CONFIG", str(path))
    monkeypatch.delenv("RELAY_SOCKET", raising=False)
    config, used = load()
    assert used == path
    assert socket_path(config) == Path(paths.socket_path()) == tmp_path / "s.sock"
    monkeypatch.setenv("RELAY_SOCKET", "/x/y.sock")
    assert socket_path(config) == Path(paths.socket_path()) == Path("/x/y.sock")


def test_a_relay_toml_read_as_it_is_saved_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editor that saves in place (truncate, then write) leaves relay.toml half-written
    for a moment: a shim that read it then took the default socket for the one set there,
    and started a second daemon on it. It reads the file once more; a file still broken
    after that gives the default, as before (the daemon says what is wrong with it)."""
    from relay.lite import paths

    path = tmp_path / "relay.toml"
    whole = f"[daemon]\nsocket = '{tmp_path}/s.sock'\n"
    path.write_text(whole[:20])  # "[daemon]\nsocket = '/": an unterminated string
    env = {"RELAY_CONFIG": str(path), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    slept: list[float] = []

    def saved_meanwhile(seconds: float) -> None:
        slept.append(seconds)
        path.write_text(whole)

    monkeypatch.setattr("time.sleep", saved_meanwhile)
    assert paths.socket_path(env) == str(tmp_path / "s.sock")
    assert slept == [paths.HALF_SAVED_S]
    path.write_text(whole[:20])
    monkeypatch.setattr("time.sleep", slept.append)
    assert paths.socket_path(env) == str(tmp_path / "run" / "relay" / "relay.sock")
    assert len(slept) == 2  # read twice, no more
    path.write_text(whole)
    assert paths.socket_path(env) == str(tmp_path / "s.sock")
    assert len(slept) == 2  # a whole file is read once


@pytest.mark.parametrize("cut", [0, 9, 12])  # empty; "[daemon]\n"; "[daemon]\nsoc"
def test_a_relay_toml_cut_before_its_socket_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: int
) -> None:
    """A file caught truncated (empty, just now) or cut before the word "socket" has no
    "socket" in it, and was taken at once as setting none: the default socket, and a second
    daemon there. Cut in a line, or empty and just changed, it is read once more."""
    from relay.lite import paths

    path = tmp_path / "relay.toml"
    whole = f"[daemon]\nsocket = '{tmp_path}/s.sock'\n"
    path.write_text(whole[:cut])
    env = {"RELAY_CONFIG": str(path), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    monkeypatch.setattr("time.sleep", lambda _s: path.write_text(whole))
    if cut == 9:  # a whole line: indistinguishable from a file that sets no socket
        assert paths.socket_path(env) == str(tmp_path / "run" / "relay" / "relay.sock")
    else:
        assert paths.socket_path(env) == str(tmp_path / "s.sock")


def test_a_relay_toml_that_sets_no_socket_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old empty file, or a whole one without a socket (with its newline or without),
    costs the shim no second read."""
    from relay.lite import paths

    path = tmp_path / "relay.toml"
    env = {"RELAY_CONFIG": str(path), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    for text in ("[daemon]\nlog_level = 'info'\n", "[daemon]\nlog_level = 'info'"):
        path.write_text(text)
        assert paths.socket_path(env) == str(tmp_path / "run" / "relay" / "relay.sock")
    path.write_text("")
    os.utime(path, (0, 0))
    assert paths.socket_path(env) == str(tmp_path / "run" / "relay" / "relay.sock")
    assert slept == []


def test_protocol_messages_are_json_lines() -> None:
    event = protocol.launched(
        kernel_id="k1", host="h", linkname="1@a,2@a", remote_pid=3, launch_ms=1.234
    )
    assert json.loads(framing.encode(event))["launch_ms"] == 1.23
