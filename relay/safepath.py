"""Whether a file relay reads or runs could be changed by another user: OpenSSH's rule for
the files it trusts (``secure_permissions`` and ``safe_path`` in its misc.c), with Debian's
relaxation for a user's private group, so that relay refuses what ssh refuses and trusts
what ssh trusts.

A path is safe when it, and every directory above it (its real path, up to and including
the user's home directory, else up to ``/``), is owned by the user or by root and writable
by nobody else. A directory with the sticky bit (``/tmp``, a cluster's ``/scratch``) may be
writable by others: they can add entries there, but not rename or remove the user's. A
group-writable one is safe where the group is the user's alone (Debian's and Ubuntu's
"user private groups", where a umask of 002 makes every file group-writable).

Standard library only: the daemon's lean start (relay.lean) uses it before anything else.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import stat

__all__ = ["unsafe", "unsafe_file"]


def unsafe(path: str | os.PathLike[str], *, uid: int | None = None) -> str | None:
    """None if ``path`` and every directory above it could be changed only by ``uid`` (the
    effective user's, by default) or root; else a line naming the first that could be, and
    what to do. A missing ``path`` is judged by the directories that would hold it."""
    uid = os.geteuid() if uid is None else uid
    named = os.path.abspath(_home_named(uid))
    homes = (named, os.path.realpath(named))
    # the real path's directories, and the path's own as written: each holds an entry (a
    # symlink, perhaps) that whoever may write it could swap; each checked once, in order
    chain = dict.fromkeys(_up(os.path.realpath(path), homes) + _up(os.path.abspath(path), homes))
    for where in chain:
        try:
            st = os.stat(where)
        except FileNotFoundError:
            continue  # not made yet: its directory decides who could make it
        except OSError as exc:
            return f"{where}: cannot be checked ({exc.strerror or exc})"
        why = _why(where, st, uid)
        if why is not None:
            return why
    return None


def unsafe_file(path: str | os.PathLike[str], *, uid: int | None = None) -> str | None:
    """OpenSSH's check of the user's ssh_config (the file alone, by its ``stat``): None if
    it could be changed only by ``uid`` or root, else a line saying why."""
    uid = os.geteuid() if uid is None else uid
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: cannot be checked ({exc.strerror or exc})"
    return _why(os.fspath(path), st, uid)


def _why(where: str, st: os.stat_result, uid: int) -> str | None:
    if st.st_uid not in (uid, 0):
        return f"{where} is owned by {_user(st.st_uid)}, not by you or root"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not writable or (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        return None
    # with an ACL the group bits are its mask: another user may be named in it (a review's)
    if writable == stat.S_IWGRP and _private_group(st.st_gid, st.st_uid) and not _acl(where):
        return None
    who = "others" if st.st_mode & stat.S_IWOTH else f"group {_group(st.st_gid)}"
    return f"{where} is writable by {who} (chmod go-w {where})"


@functools.lru_cache(maxsize=16)
def _private_group(gid: int, uid: int) -> bool:
    """Whether group ``gid`` has one member, ``uid`` (as its primary group or as a listed
    member): Debian's rule (its OpenSSH patch "user-group-modes"). Where the passwd database
    does not list the user (SSSD and LDAP sites do not enumerate it: a review found
    FreeIPA's private groups refused so), the user's primary group counts if it is named as
    the user (not a shared ``users``: a second review's finding)."""
    try:
        group = grp.getgrgid(gid)
        owner = pwd.getpwuid(uid)
    except KeyError:
        return False
    members = 0
    for entry in pwd.getpwall():
        if entry.pw_gid == gid:
            if entry.pw_uid != uid:
                return False
            members += 1
    if not members and owner.pw_gid == gid and group.gr_name == owner.pw_name:
        members = 1  # passwd not listed: a group named as the user, as safedirs.sh asks
    if group.gr_mem:
        if group.gr_mem != [owner.pw_name]:
            return False
        members += 1
    return members > 0


def _acl(path: str) -> bool:
    """Whether ``path`` has a POSIX ACL (Linux; elsewhere, none is seen)."""
    listxattr = getattr(os, "listxattr", None)
    if listxattr is None:
        return False
    try:
        return "system.posix_acl_access" in listxattr(path)
    except OSError:
        return False


def _up(path: str, homes: tuple[str, ...]) -> list[str]:
    """``path`` and the directories above it, up to a home directory or the root."""
    chain = [path]
    while chain[-1] not in homes:
        parent = os.path.dirname(chain[-1])
        if parent == chain[-1]:
            break
        chain.append(parent)
    return chain


def _home_named(uid: int) -> str:
    if uid == os.geteuid() and os.environ.get("HOME"):
        return os.environ["HOME"]
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return os.sep


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
