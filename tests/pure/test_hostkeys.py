"""known_hosts as ssh keeps it: entries by name and port, recorded privately, compared by key."""

from __future__ import annotations

from pathlib import Path

import asyncssh

from relay.ssh import hostkeys


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
