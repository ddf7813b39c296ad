"""known_hosts as ssh keeps it: entries by name and port, recorded privately, compared by key."""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import asyncssh
import pytest

from relay.ssh import hostkeys, sshconfig
from tests.conftest import fill


def test_record_then_state_and_entry_names(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    known = tmp_path / "dir" / "known_hosts"
    assert hostkeys.state([known], "h.example", 2222, key) == "unknown"
    line = hostkeys.record(known, "h.example", 2222, key)
    assert line.startswith("[h.example]:2222 ssh-ed25519 ")
    assert known.stat().st_mode & 0o777 == 0o600 and known.parent.stat().st_mode & 0o777 == 0o700
    assert hostkeys.state([known], "h.example", 2222, key) == "known"
    assert hostkeys.state([known], "h.example", 2222, other) == "changed"
    assert hostkeys.state([known], "h.example", 22, key) == "unknown"  # another port
    hostkeys.record(known, "plain", 22, key)
    assert known.read_text().splitlines()[1].startswith("plain ssh-ed25519 ")
    assert hostkeys.has_entry([tmp_path / "missing", known], "plain", 22)


def test_a_file_without_a_final_newline_is_appended_to_cleanly(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    known = tmp_path / "known_hosts"
    known.write_text("# mine, no newline at the end")
    hostkeys.record(known, "h", 22, key)
    assert known.read_text().splitlines()[1].startswith("h ssh-ed25519 ")


def test_fingerprint_reads_as_ssh_prints_it() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    kind, digest = hostkeys.fingerprint(key).split(" ")
    assert kind == "ED25519" and digest.startswith("SHA256:")
    assert hostkeys.fingerprint(asyncssh.generate_private_key("ecdsa-sha2-nistp256")).startswith(
        "ECDSA "
    )


def test_a_symlinked_known_hosts_is_followed_as_ssh_follows_it(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    real = tmp_path / "dotfiles" / "known_hosts"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "ssh" / "known_hosts"
    link.parent.mkdir()
    link.symlink_to(real)
    hostkeys.record(link, "h", 22, key)
    assert link.is_symlink() and real.read_text().startswith("h ssh-ed25519 ")


# -- the look-up: OpenSSH's rule (sshconnect.c check_host_key), not asyncssh's ----------------
def _line(entry: str, key: asyncssh.SSHKey, marker: str = "") -> str:
    public = key.export_public_key("openssh").decode().split()[:2]
    return " ".join([*([f"@{marker}"] if marker else []), entry, *public])


def _known(tmp_path: Path, *lines: str) -> Path:
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"{line}\n" for line in lines))
    return known


def _hashed(name: str) -> str:
    """``name`` as ``ssh-keygen -H`` writes it: |1|salt|HMAC-SHA1(salt, name)."""
    salt = secrets.token_bytes(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def test_an_address_entry_never_vouches_for_the_name(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    known = _known(tmp_path, _line("[127.0.0.1]:2222", key), _line("127.0.0.1", key))
    recorded = hostkeys.lookup([known], "localhost", 2222)
    assert recorded.state(key) == "unknown" and not recorded.has_entry
    # what asyncssh is given: it checks, trusts nothing, and asks for no address of its own
    given = recorded.known_hosts()
    matched = asyncssh.match_known_hosts(cast(Any, given), "x", "127.0.0.1", 2222)
    assert given and matched[:3] == ([], [], [])
    assert hostkeys.state([known], "127.0.0.1", 2222, key) == "known"  # its own name: yes


def test_a_different_key_for_the_name_is_changed_whatever_the_address_has(tmp_path: Path) -> None:
    right = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    known = _known(tmp_path, _line("[127.0.0.1]:2222", right), _line("[localhost]:2222", other))
    recorded = hostkeys.lookup([known], "localhost", 2222)
    assert recorded.state(right) == "changed" and recorded.where == known
    keys, ca_keys, revoked = recorded.known_hosts()
    assert [k.public_data for k in keys] == [other.public_data] and not ca_keys and not revoked


def test_the_bare_name_only_where_nothing_is_recorded_for_its_port(tmp_path: Path) -> None:
    """ssh: "checking without port identifier", only for HOST_NEW, and only a match counts."""
    right = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    bare_right = _known(tmp_path, _line("h.example", right))
    assert hostkeys.state([bare_right], "h.example", 2222, right) == "known"
    assert hostkeys.state([bare_right], "h.example", 2222, other) == "unknown"  # not changed
    assert not hostkeys.has_entry([bare_right], "h.example", 2222)  # accept-new may record
    past_an_entry = _known(tmp_path, _line("[h.example]:2222", other), _line("h.example", right))
    assert hostkeys.state([past_an_entry], "h.example", 2222, right) == "changed"
    assert hostkeys.state([past_an_entry], "h.example", 2222, other) == "known"
    # and never the other way: a key for [name]:port says nothing of port 22
    port_only = _known(tmp_path, _line("[h.example]:2222", other))
    assert hostkeys.state([port_only], "h.example", 22, other) == "unknown"


def test_a_host_key_alias_is_looked_up_as_written(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    config = tmp_path / "ssh_config"
    config.write_text("Host work\n  HostName 10.1.2.3\n  Port 2222\n  HostKeyAlias gw.alias\n")
    view = sshconfig.resolve("work", files=[str(config)])
    assert hostkeys.known_as(view) == ("gw.alias", 22)
    name, port = hostkeys.known_as(view)
    as_written = _known(tmp_path, _line("gw.alias", key))
    assert hostkeys.state([as_written], name, port, key) == "known"
    with_port = _known(tmp_path, _line("[gw.alias]:2222", key), _line("[10.1.2.3]:2222", key))
    assert hostkeys.state([with_port], name, port, key) == "unknown"
    hostkeys.record(as_written, name, port, key)
    assert as_written.read_text().splitlines()[-1].startswith("gw.alias ssh-ed25519 ")
    plain = sshconfig.resolve("h.example", port=2222, files=[])
    assert hostkeys.known_as(plain) == ("h.example", 2222)


def test_a_revoked_key_is_refused_wherever_else_it_is_recorded(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    known = _known(tmp_path, _line("[h]:2222", key), _line("*", key, "revoked"))
    recorded = hostkeys.lookup([known], "h", 2222)
    assert recorded.state(key) == "revoked" and recorded.state(other) == "changed"
    assert [k.public_data for k in recorded.known_hosts()[2]] == [key.public_data]
    bare = _known(tmp_path, _line("h", key), _line("h", key, "revoked"))
    assert hostkeys.state([bare], "h", 2222, key) == "revoked"


def test_hashed_entries_match_their_name_only(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    known = _known(tmp_path, _line(_hashed("[h.example]:2222"), key))
    assert hostkeys.state([known], "h.example", 2222, key) == "known"
    assert hostkeys.state([known], "h.example", 22, key) == "unknown"
    address = _known(tmp_path, _line(_hashed("[127.0.0.1]:2222"), key))
    assert hostkeys.state([address], "localhost", 2222, key) == "unknown"


def test_cert_authorities_are_looked_up_by_name_and_vouch_for_no_plain_key(
    tmp_path: Path,
) -> None:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    key = asyncssh.generate_private_key("ssh-ed25519")
    known = _known(
        tmp_path, _line("[h]:2222", ca, "cert-authority"), _line("[127.0.0.1]:2222", key)
    )
    recorded = hostkeys.lookup([known], "h", 2222)
    assert [k.public_data for k in recorded.known_hosts()[1]] == [ca.public_data]
    assert recorded.state(key) == "unknown"  # ssh: a plain key is HOST_NEW beside a CA


def test_several_files_and_lines_no_ssh_reads(tmp_path: Path) -> None:
    """Every file consulted counts, in order; a line ssh cannot read is skipped, not the file
    (and a host list's empty name matches nothing)."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    first = tmp_path / "first"
    first.write_text(f"@bogus h {_line('h', other)}\nnot-a-line\n{_line('a,,b', other)}\n")
    second = tmp_path / "second"
    second.write_text(_line("[h]:2222", key) + "\n")
    recorded = hostkeys.lookup([tmp_path / "missing", first, second], "h", 2222)
    assert recorded.state(key) == "known" and recorded.where == second
    assert recorded.skipped == (f"{first}:1", f"{first}:2")
    assert hostkeys.lookup([first], "", 22).state(other) == "unknown"


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs (root only), left with no free page."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full file system) needs root")
    where = tmp_path / "full"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_leaves_no_torn_line(full_tmpfs: Path) -> None:
    """A known_hosts whose last page has room for part of the line, on a file system with
    no other: the write puts out that part, then fails; the file is as it was, so a later
    `relay trust` (or ssh) appends to a whole file, and no bad line is read ever after."""
    known = full_tmpfs / "known_hosts"
    before = b"# mine\n" + b"#" * (os.sysconf("SC_PAGE_SIZE") - 7 - 21) + b"\n"  # 20 left
    known.write_bytes(before)
    fill(full_tmpfs)
    key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(OSError, match="No space left") as failed:
        hostkeys.record(known, "h.example", 22, key)
    assert failed.value.errno == errno.ENOSPC
    assert known.read_bytes() == before
    assert hostkeys.lookup([known], "h.example", 22).skipped == ()
