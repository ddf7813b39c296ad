"""relay.safepath: OpenSSH's rule for the files it trusts, on relay's own machine (relay.toml,
ssh_config, the lean start's bytecode): a file, or a directory above it up to the home
directory, that another user could change is named, with what to do."""

from __future__ import annotations

import grp
import os
import pwd
import struct
from pathlib import Path

import pytest

from relay import safepath
from relay.errors import ConfigError
from relay.settings import load
from relay.ssh.sshconfig import resolve

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    return home


def mine(path: Path, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[daemon]\n")
    path.chmod(mode)
    return path


def test_a_private_file_and_a_readable_one_are_sound(home: Path) -> None:
    assert safepath.unsafe(mine(home / ".config" / "relay" / "relay.toml")) is None
    assert safepath.unsafe(mine(home / "r.toml", 0o644)) is None
    assert safepath.unsafe(home / "not-made-yet" / "r.toml") is None  # its holders decide


def test_a_file_or_directory_others_may_write_is_named(home: Path) -> None:
    f = mine(home / "d" / "relay.toml", 0o666)
    assert safepath.unsafe(f) == f"{f} is writable by others (chmod go-w {f})"
    f.chmod(0o600)
    (home / "d").chmod(0o777)
    assert safepath.unsafe(f) == f"{home / 'd'} is writable by others (chmod go-w {home / 'd'})"
    (home / "d").chmod(0o1777)  # sticky: others may add, not swap what is there
    assert safepath.unsafe(f) is None
    home.chmod(0o777)
    assert f"{home} is writable by others" in str(safepath.unsafe(f))


def test_a_symlink_out_of_home_is_followed_and_its_holder_checked(
    home: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    mine(shared / "cfg" / "relay.toml")
    (home / ".config").symlink_to(shared / "cfg")
    assert f"{shared} is writable by others" in str(
        safepath.unsafe(home / ".config" / "relay.toml")
    )
    shared.chmod(0o755)
    assert safepath.unsafe(home / ".config" / "relay.toml") is None


@as_root
def test_another_users_file_and_a_shared_group_are_named_a_private_group_is_not(
    home: Path,
) -> None:
    f = mine(home / "relay.toml")
    os.chown(f, NOBODY, NOBODY)
    assert safepath.unsafe(f) == f"{f} is owned by nobody (uid {NOBODY}), not by you or root"
    os.chown(f, 0, NOBODY)
    f.chmod(0o660)
    assert safepath.unsafe(f) == f"{f} is writable by group nogroup (chmod go-w {f})"
    os.chown(f, 0, 0)  # root's own group: its one member (Debian's user private groups)
    assert safepath.unsafe(f) is None
    assert safepath.unsafe_file(f) is None


def test_relay_toml_others_could_change_is_not_read(home: Path) -> None:
    f = mine(home / "relay.toml", 0o666)
    with pytest.raises(ConfigError) as caught:
        load(f)
    assert str(caught.value) == (
        f"{f}: not read, another user could change it: {f} is writable by others (chmod go-w {f})"
    )
    f.chmod(0o644)
    load(f)


@as_root
def test_an_ssh_config_of_another_user_is_refused_as_ssh_refuses_it(home: Path) -> None:
    """ssh: "Bad owner or permissions on ~/.ssh/config", fatal; it can name ProxyCommand,
    which relay would run (a review ran its own code as the user so). Included files too."""
    config = home / "config"
    config.write_text(f"Include {home}/extra\n")
    extra = home / "extra"
    extra.write_text("Host h\n  ProxyCommand touch /tmp/pwned\n")
    assert resolve("h", files=[str(config)]).get("ProxyCommand")
    os.chown(extra, NOBODY, NOBODY)
    with pytest.raises(ValueError, match=f"bad owner or permissions on {extra}: .* nobody"):
        resolve("h", files=[str(config)])
    os.chown(extra, 0, 0)
    config.chmod(0o666)
    with pytest.raises(ValueError, match=f"bad owner or permissions on {config}: "):
        resolve("h", files=[str(config)])


def acl_naming(path: Path, uid: int) -> None:
    """A POSIX ACL on ``path`` that lets ``uid`` write it (``setfacl -m u:UID:rwx``)."""

    def entry(tag: int, perm: int, qualifier: int = 0xFFFFFFFF) -> bytes:
        return struct.pack("<HHI", tag, perm, qualifier)

    user_obj, user, group_obj, mask, other = 0x01, 0x02, 0x04, 0x10, 0x20
    value = struct.pack("<I", 2) + entry(user_obj, 7) + entry(user, 7, uid)
    value += entry(group_obj, 7) + entry(mask, 7) + entry(other, 0)
    os.setxattr(path, "system.posix_acl_access", value)


@as_root
@pytest.mark.skipif(not hasattr(os, "setxattr"), reason="POSIX ACLs: Linux")
def test_an_acl_naming_another_user_is_not_a_private_group(home: Path) -> None:
    """With an ACL the group bits are its mask: ``rwx`` there may be another user's (a review
    got past the private-group rule so)."""
    d = home / "d"
    d.mkdir(mode=0o770)
    d.chmod(0o770)
    assert safepath.unsafe(d) is None  # root's own group: private
    acl_naming(d, NOBODY)
    assert safepath.unsafe(d) == f"{d} is writable by group root (chmod go-w {d})"


def test_a_private_group_counts_though_passwd_is_not_listed(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSSD and LDAP sites do not list their users (`getent passwd` shows the local ones):
    the user's own primary group is still theirs alone (a review found relay.toml refused
    under FreeIPA's private groups and a umask of 002)."""
    me = pwd.getpwuid(os.geteuid())
    f = mine(home / "relay.toml", 0o660)
    os.chown(f, me.pw_uid, me.pw_gid)
    if grp.getgrgid(me.pw_gid).gr_mem not in ([], [me.pw_name]):
        pytest.skip("this user's primary group has other members")
    monkeypatch.setattr(pwd, "getpwall", lambda: [])
    safepath._private_group.cache_clear()
    try:
        assert safepath.unsafe(f) is None
    finally:
        safepath._private_group.cache_clear()


def test_a_shared_primary_group_is_not_taken_for_a_private_one(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """passwd not listed (SSSD, LDAP): only a primary group named as the user counts as the
    user's own, not a shared ``users`` that lists nobody (a second review's finding)."""
    me = pwd.getpwuid(os.geteuid())
    shared = grp.struct_group(("users", "x", me.pw_gid, []))
    monkeypatch.setattr(pwd, "getpwall", lambda: [])
    monkeypatch.setattr(grp, "getgrgid", lambda gid: shared)
    safepath._private_group.cache_clear()
    try:
        assert not safepath._private_group(me.pw_gid, me.pw_uid)
    finally:
        safepath._private_group.cache_clear()
