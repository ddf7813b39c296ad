"""Names and paths real users have on a kernel's host, through a real sshd: a HOME and a
TMPDIR with spaces, quotes, ``$``, backslashes, non-ASCII (UTF-8) and a word that begins
with ``-``. Relay's agent and supervisor.sh install, start and carry a kernel there as
anywhere else."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RelayHome
from tests.e2e.helpers import controller
from tests.e2e.test_check import by_name, check
from tests.e2e.test_dynamic import finish
from tests.e2e.test_faults import connected, served
from tests.e2e.test_host_kinds import resume_of_a_launch
from tests.e2e.test_login_shell import own_sshd
from tests.e2e.test_resume import status_of

# every kind of character at once: a space, both quotes, $ and a command substitution, a
# backslash before n (which dash's echo turns into a newline), UTF-8, a word led by "-"; short
# enough that the agent's socket path in it fits (107 bytes)
ODD = "a 'q\" $x `y` b\\n Jü日 -x"


def sshd_word(value: str) -> str:
    """``value`` as one word of sshd_config (a quoted string: \\ and " escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture
def odd() -> Iterator[tuple[Path, Path]]:
    """A HOME and a TMPDIR with every odd character in their names, as the host's login has
    them."""
    base = Path(tempfile.mkdtemp(prefix="relay-odd-"))
    home, tmpdir = base / ("h " + ODD), base / ("t " + ODD)
    for made in (home, tmpdir):
        made.mkdir(mode=0o700)
    try:
        yield home, tmpdir
    finally:
        shutil.rmtree(base)


@contextlib.contextmanager
def latin1_tmpdir(home: RelayHome) -> Iterator[Path]:
    """A host (``own_sshd``) whose login, in the C locale, has a TMPDIR named in Latin-1
    (``BASE/J\\xfcrgen``): BASE, removed after."""
    base = Path(tempfile.mkdtemp(prefix="relay-odd-"))
    latin1 = os.fsencode(base) + b"/J\xfcrgen"
    os.mkdir(latin1, 0o700)
    try:
        with own_sshd(home, options={"SetEnv": "LC_ALL=C"}) as running:
            (running.home / ".bashrc").write_bytes(b"export TMPDIR='" + latin1 + b"'\n")
            yield base
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("resume", ["on", "off"])
async def test_a_home_and_tmpdir_with_odd_names(
    home: RelayHome, odd: tuple[Path, Path], resume: str
) -> None:
    """Through relay's agent and supervisor.sh (resume_window_s = 0): the kernel hook's
    installer said its path with dash's echo, which read "\\n" in a HOME as a newline (and
    "the installer reported an unexpected path"); supervisor.sh's hello, whose DIR is in
    TMPDIR, was read by counting words, and a space there refused every launch as on a host
    that cannot tell who connects (a review's findings)."""
    remote_home, tmpdir = odd
    setenv = f"{sshd_word(f'HOME={remote_home}')} {sshd_word(f'TMPDIR={tmpdir}')}"
    with own_sshd(home, options={"SetEnv": setenv}):
        if resume == "off":
            home.add_host("local", resume_window_s=0)
        async with served(home), controller(home) as fe:
            main, _ = await connected(fe)
            (initfile,) = main.hello["initfile"]  # the hook, installed and loaded
            assert (await status_of(home))["resume"]["state"] == resume
            await finish(fe, main)
    assert initfile.startswith(f"{remote_home}/.cache/relay/"), initfile


async def test_a_tmpdir_not_in_utf8_is_said_and_keeps_the_old_path(home: RelayHome) -> None:
    """A TMPDIR named in Latin-1 (``J\\xfcrgen``, on a host whose locale is C): the agent's
    socket was made there, and the daemon, which names it to sshd in UTF-8, asked for
    another: the host took the old path, said as "sshd refused the channel to relay's agent
    (AllowStreamLocalForwarding ...)", a setting that was fine (a review's finding). The
    agent says so before it starts, and kernels run on the old path meanwhile."""
    with latin1_tmpdir(home):
        resume = await resume_of_a_launch(home)
    assert resume["state"] == "off", resume
    assert resume["reason"].endswith(
        ".sock is not UTF-8, and relay can name a socket to sshd only in UTF-8 (set TMPDIR "
        "on the host to a directory whose path is)"
    ), resume


def test_relay_check_shows_an_odd_tmpdir_as_it_is(home: RelayHome, odd: tuple[Path, Path]) -> None:
    """Step 6 said TMPDIR with echo, unquoted: its spaces collapsed and, under dash, what
    followed a "\\n" was lost."""
    _, tmpdir = odd
    with own_sshd(home, options={"SetEnv": sshd_word(f"TMPDIR={tmpdir}")}):
        status, answer, text = check(home)
    assert status == 0, text
    assert f"TMPDIR: {tmpdir}\n" in text, text
    assert by_name(answer)["resume"]["state"] == "ok", text


def test_relay_check_says_a_tmpdir_not_in_utf8_keeps_no_kernels(home: RelayHome) -> None:
    """A TMPDIR named in Latin-1: step 6 read the probe's output as missing from that line
    on ("TMPDIR None is not writable", a failure), and step 7 failed with "ProtocolError:
    'utf-8' codec can't decode byte 0xfc" (a review's findings). Kernels launch there, on
    the old path: step 7 says why they do not resume."""
    with latin1_tmpdir(home) as base:
        status, answer, text = check(home)
    results = by_name(answer)
    assert status == 0, text
    assert results["remote host"]["state"] == "ok", text
    assert f"TMPDIR: {base}/J\ufffdrgen\n" in text, text
    assert results["resume"]["state"] == "warn", text
    assert results["resume"]["summary"].startswith(
        f"the host's TMPDIR {base}/J\ufffdrgen is not named in UTF-8"
    ), text
    assert results["round trip"]["state"] == "ok", text
