"""Hosts that differ from the rig in what a login finds there, each through a real sshd
(``own_sshd``): relay's agent and supervisor work as they would on the rig, and its kernels
start as ``ssh host math`` would have started them.

- /proc mounted with subset=pid (hardened hosts, containers): no /proc/net, but the
  kernel's own answer (sock_diag) tells who connects;
- a login's umask other than relay's own (077, for its private files): a kernel gets the
  login's, on both paths (the agent's, and supervisor.sh's: resume_window_s = 0);
- a login with no locale (LANG, LC_*): a kernel gets none, though the agent's python3
  (3.7 and later) sets LC_CTYPE=C.UTF-8 in its own environment;
- a long TMPDIR, too long for the agent's socket path (107 bytes at most): said as the
  setting to change, and the host keeps the old path;
- a python3 that is a wrapper and prints first, without a newline."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RelayHome
from tests.e2e.helpers import controller
from tests.e2e.test_dynamic import finish
from tests.e2e.test_faults import connected, served
from tests.e2e.test_login_shell import own_sshd
from tests.e2e.test_resume import status_of


async def test_a_proc_without_net_still_tells_who_connects(home: RelayHome) -> None:
    """/proc with its processes but no net/: the agent said CHECK none though its sock_diag
    probe answered, and every launch failed as on a host that cannot tell (a review's
    finding). Its kernels now resume."""
    with own_sshd(home, proc_pids_only=True):
        async with served(home), controller(home) as fe:
            main, _ = await connected(fe)
            assert (await status_of(home))["resume"]["state"] == "on"
            await finish(fe, main)


def status_field(pid: int, name: str) -> str:
    """A field of /proc/PID/status (``Umask``: four octal digits)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split()[1]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


@pytest.mark.parametrize("resume", ["on", "off"])
async def test_a_kernel_gets_the_logins_umask(home: RelayHome, resume: str) -> None:
    """The installer, the agent and supervisor.sh make relay's files with umask 077, and
    kernels inherited it: files a kernel wrote were private to the user, whatever the
    login's umask (a review's finding). A login's 0002 (a group's shared files) is the
    kernel's."""
    with own_sshd(home) as running:
        (running.home / ".bashrc").write_text("umask 0002\n")
        if resume == "off":
            home.add_host("local", resume_window_s=0)
        async with served(home), controller(home) as fe:
            main, pid = await connected(fe)
            umask = status_field(pid, "Umask")
            assert (await status_of(home))["resume"]["state"] == resume
            await finish(fe, main)
    assert umask == "0002"


@pytest.mark.parametrize("resume", ["on", "off"])
async def test_a_login_without_a_locale_gives_a_kernel_none(home: RelayHome, resume: str) -> None:
    """Python 3.7 and later coerce a C locale (PEP 538): the agent's environment has
    LC_CTYPE=C.UTF-8, and its kernels got it where the login had none (a review's finding).
    A kernel's environment is the login's."""
    with own_sshd(home) as running:
        (running.home / ".bashrc").write_text(
            "unset LANG LANGUAGE LC_ALL LC_CTYPE LC_MESSAGES LC_COLLATE LC_NUMERIC LC_TIME\n"
        )
        if resume == "off":
            home.add_host("local", resume_window_s=0)
        async with served(home), controller(home) as fe:
            main, pid = await connected(fe)
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert (await status_of(home))["resume"]["state"] == resume
            await finish(fe, main)
    assert [v for v in environ if v.startswith((b"LANG", b"LC_"))] == []
    assert b"HOME=" + bytes(running.home) in environ  # the login's environment it is


async def resume_of_a_launch(home: RelayHome) -> dict[str, Any]:
    """``relay status``'s resume of the host, read while a controller launched there runs."""
    async with served(home), controller(home) as fe:
        main, _ = await connected(fe)
        resume: dict[str, Any] = (await status_of(home))["resume"]
        await finish(fe, main)
    return resume


async def resume_with_tmpdir(home: RelayHome, tmpdir: Path) -> dict[str, Any]:
    """``resume_of_a_launch`` on a host whose sessions have ``tmpdir`` (made for it, then
    removed) as their TMPDIR."""
    tmpdir.mkdir(mode=0o700)
    try:
        with own_sshd(home, options={"SetEnv": f"TMPDIR={tmpdir}"}):
            return await resume_of_a_launch(home)
    finally:
        shutil.rmtree(tmpdir)


async def test_a_tmpdir_too_long_for_a_socket_path_says_so(home: RelayHome) -> None:
    """The agent's socket is TMPDIR/relay-agent-UID/TAG.sock, and a socket's address holds
    108 bytes: its start crashed, and relay status said "relay's agent did not start (exit 1,
    said 'OSError: AF_UNIX path too long')" (a review's finding). It says what to change,
    and kernels run on the old path meanwhile."""
    tmpdir = Path("/tmp", "relay-long-" + "t" * 90)
    resume = await resume_with_tmpdir(home, tmpdir)
    assert resume["state"] == "off", resume
    assert resume["reason"].startswith(f"{tmpdir}/relay-agent-{os.getuid()}/"), resume
    assert resume["reason"].endswith(
        ".sock is too long for a socket path (set a shorter TMPDIR on the host)"
    ), resume


def tmpdir_for_socket_path(size: int) -> Path:
    """A TMPDIR that makes the agent's socket path (TMPDIR/relay-agent-UID/TAG.sock, TAG 16
    hex digits) ``size`` bytes long."""
    rest = len(f"/relay-agent-{os.getuid()}/{'0' * 16}.sock")
    prefix = "/tmp/relay-edge-"
    return Path(prefix + "t" * (size - rest - len(prefix)))


@pytest.mark.parametrize(("size", "state"), [(107, "on"), (108, "off")])
async def test_a_socket_path_at_the_limit(home: RelayHome, size: int, state: str) -> None:
    """A socket's address holds 108 bytes, its path's ending NUL among them: the agent took a
    path of 108 bytes for one that fits, and its bind crashed ("relay's agent did not start
    (exit 1, said 'OSError: AF_UNIX path too long')"; a Python that binds it unended leaves
    one sshd cannot reach, as it copies the name with strlcpy; a review's finding). 107 is
    the longest that works; 108 is said as the setting to change."""
    resume = await resume_with_tmpdir(home, tmpdir_for_socket_path(size))
    assert resume["state"] == state, resume
    if state == "off":
        assert resume["reason"].endswith(
            ".sock is too long for a socket path (set a shorter TMPDIR on the host)"
        ), resume


async def test_a_python3_wrapper_that_prints_first_hides_no_start_line(
    home: RelayHome, tmp_path: Path
) -> None:
    """A python3 that is a module system's wrapper may print before it runs the agent, and
    not a whole line: the start line was glued to it, found by no line's start, and the
    host took the old path ("relay's agent did not start"; a review's finding)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "python3"
    wrapper.write_text("#!/bin/sh\nprintf 'loading python... '\nexec /usr/bin/python3 \"$@\"\n")
    wrapper.chmod(0o755)
    with own_sshd(home, options={"SetEnv": f"PATH={bindir}:/usr/local/bin:/usr/bin:/bin"}):
        async with served(home), controller(home) as fe:
            main, _ = await connected(fe)
            resume = (await status_of(home))["resume"]
            await finish(fe, main)
    assert resume["state"] == "on", resume
