"""ssh_config read as ssh reads it (user file, then system file, first value wins), and merged
with relay.toml keyword by keyword (relay.toml's explicit keys win)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.settings import HostConfig
from relay.ssh.options import plan
from relay.ssh.sshconfig import SSHView, resolve

USER = """\
Include {dir}/conf.d/*
Host typoport
    HostName 127.0.0.1
    Port 42299
    User ada
    ControlMaster auto
    FooBarFeature yes
    StrictHostKeyChecking accept-new
    UserKnownHostsFile {dir}/kh1 {dir}/kh2
Host other
    SomethingElse yes
Host *
    ServerAliveInterval 7
"""
SYSTEM = """\
Host *
    Port 1
    ConnectTimeout 4
    GlobalKnownHostsFile {dir}/global
"""
INCLUDED = """\
Host bastioned
    ProxyJump jumper
Host chained
    ProxyJump a,b
Host cautious
    Ciphers aes256-ctr
    Compression yes
    StrictHostKeyChecking no
    ForwardAgent yes
    ServerAliveInterval 0
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "extra").write_text(INCLUDED)
    user, system = tmp_path / "config", tmp_path / "ssh_config"
    user.write_text(USER.format(dir=tmp_path))
    system.write_text(SYSTEM.format(dir=tmp_path))
    return str(user), str(system)


def view(name: str, files: tuple[str, str], **kw: object) -> SSHView:
    return resolve(name, files=files, **kw)  # type: ignore[arg-type]


def test_an_alias_resolves_as_ssh_resolves_it(files: tuple[str, str], tmp_path: Path) -> None:
    v = view("typoport", files)
    assert (v.hostname, v.port, v.user) == ("127.0.0.1", 42299, "ada")
    assert v.get("ConnectTimeout") == 4  # from the system file
    assert v.get("ServerAliveInterval") == 7  # Host * in the user file
    assert v.strict_host_key_checking == "accept-new"
    assert v.user_known_hosts == [f"{tmp_path}/kh1", f"{tmp_path}/kh2"]
    assert v.global_known_hosts == [f"{tmp_path}/global"]
    assert v.files == files


def test_the_first_value_wins_and_relay_toml_port_and_user_win_over_both(
    files: tuple[str, str],
) -> None:
    assert view("plain", files).port == 1  # only the system file names one
    v = view("typoport", files, port=2200, user="bob")
    assert (v.port, v.user) == (2200, "bob")


def test_unsupported_keywords_are_noted_only_where_they_apply(files: tuple[str, str]) -> None:
    assert view("typoport", files).unsupported == ("foobarfeature",)  # ControlMaster: no matter
    assert view("other", files).unsupported == ("somethingelse",)
    assert view("plain", files).unsupported == ()


def test_missing_files_are_skipped_and_a_broken_one_is_an_error(tmp_path: Path) -> None:
    assert resolve("h", files=[str(tmp_path / "none")]).files == ()
    broken = tmp_path / "broken"
    broken.write_text("Host h\n  Port notanumber\n")
    with pytest.raises(ValueError, match="line 2"):
        resolve("h", files=[str(broken)])


def test_relay_toml_keys_win_then_ssh_config_then_relay_defaults(files: tuple[str, str]) -> None:
    v = view("typoport", files)
    quiet = plan(HostConfig(hostname="typoport"), v)
    assert quiet.config.keepalive_interval_s == 7.0 and quiet.config.connect_timeout_s == 4.0
    assert quiet.kwargs["keepalive_interval"] == 7.0 and quiet.kwargs["connect_timeout"] == 4.0
    assert quiet.kwargs["encryption_algs"] == HostConfig(hostname="x").ciphers  # relay default
    assert quiet.kwargs["config"] == list(files)
    assert [str(p) for p in quiet.known_hosts] == [*v.user_known_hosts, *v.global_known_hosts]
    told = plan(
        HostConfig(
            hostname="typoport", keepalive_interval_s=30, connect_timeout_s=9, known_hosts="/k"
        ),
        v,
    )
    assert told.config.keepalive_interval_s == 30.0 and told.kwargs["connect_timeout"] == 9.0
    assert told.known_hosts == [Path("/k")]
    assert any("foobarfeature" in note for note in quiet.notes)


def test_ciphers_and_compression_come_from_ssh_config_when_relay_toml_is_silent(
    files: tuple[str, str],
) -> None:
    v = view("cautious", files)
    p = plan(HostConfig(hostname="cautious"), v)
    assert "encryption_algs" not in p.kwargs and "compression_algs" not in p.kwargs
    assert p.config.keepalive_interval_s == 15.0  # ServerAliveInterval 0: relay keeps its own
    said = " ".join(p.notes)
    assert "StrictHostKeyChecking no is not honoured" in said
    assert "ForwardAgent is not honoured" in said and "ServerAliveInterval 0" in said
    explicit = plan(HostConfig(hostname="cautious", ciphers=["aes128-ctr"], compression=False), v)
    assert explicit.kwargs["encryption_algs"] == ["aes128-ctr"]
    assert explicit.kwargs["compression_algs"] is None


def test_one_proxyjump_hop_is_a_shared_jump_host(files: tuple[str, str]) -> None:
    assert plan(HostConfig(hostname="bastioned"), view("bastioned", files)).jump == "jumper"
    chained = plan(HostConfig(hostname="chained"), view("chained", files))
    assert chained.jump is None and "tunnel" not in chained.kwargs  # asyncssh follows the chain
    told = plan(HostConfig(hostname="bastioned", jump="mine"), view("bastioned", files))
    assert told.jump == "mine"


def test_a_match_final_block_applies_as_ssh_and_asyncssh_apply_it(tmp_path: Path) -> None:
    """``Match final`` asks for a second reading of the files (ssh's, and asyncssh's own when
    it connects): relay's view took only the first, so a ProxyJump or Port set there was
    missing from it, and relay's direct tunnel then went around the bastion ssh uses."""
    config = tmp_path / "config"
    config.write_text(
        "Host *.internal\n    User ada\nMatch final host *.internal\n"
        "    ProxyJump bastion\n    Port 2022\n"
    )
    seen = resolve("db.internal", files=[str(config)])
    assert (seen.user, seen.port, seen.get("ProxyJump")) == ("ada", 2022, "bastion")
    assert plan(HostConfig(hostname="db.internal"), seen).jump == "bastion"
    plain = resolve("db.example", files=[str(config)])
    assert (plain.port, plain.get("ProxyJump")) == (22, None)
