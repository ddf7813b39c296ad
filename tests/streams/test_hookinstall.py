"""hookinstall.sh, run locally under each POSIX shell it may meet, with a HOME of the test's own;
and ``parse_answer``, which proves what it wrote by its hash."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, cast

import asyncssh
import pytest
import structlog

from relay.agent.session import AgentInfo
from relay.agent.start import Unavailable, agent_file, parse_install_and_start
from relay.errors import ConnectFailed, HookInstallFailed
from relay.ssh import hookfile
from relay.ssh.hookfile import HookFile, parse_answer
from relay.ssh.remote_scripts import (
    BOOTSTRAP,
    CUT_CHATTER,
    HOOK_KEEP_DAYS,
    hook_install_command,
    installer,
)
from relay.tasks import TaskSet
from tests.conftest import fill
from tests.pure.test_safepath import acl_naming

SHELLS = [s for s in ("dash", "bash", "busybox") if shutil.which(s)]
HOOK = HookFile("RelayKernelInit.wl", b'(* relay\'s hook *)\nBeginPackage["x`"];\n' * 40)
OLD = time.time() - (HOOK_KEEP_DAYS + 5) * 86400


def run(
    shell: str,
    home: Path,
    hook: HookFile = HOOK,
    keep_days: int = HOOK_KEEP_DAYS,
    then: tuple[str, ...] = (),
    spare: str = "-",
    data: bytes | None = None,
    tmpdir: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``data``: what comes on standard input, if not the whole file (an upload cut short);
    ``tmpdir``: the session's TMPDIR (none: /tmp)."""
    script = [shell, "sh", "-c"] if shell == "busybox" else [shell, "-c"]
    argv = [*script, installer(), "relay", hook.version, hook.name, str(keep_days)]
    argv += [spare, str(len(hook.data)), *then]
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    given = hook.data if data is None else data
    return subprocess.run(argv, input=given, capture_output=True, env=env, timeout=60)


def install(shell: str, home: Path, hook: HookFile = HOOK) -> Path:
    done = run(shell, home, hook)
    return Path(parse_answer("h", hook, done.returncode, done.stdout))


def refusal(shell: str, home: Path) -> str:
    done = run(shell, home)
    assert done.returncode == 1, done
    with pytest.raises(HookInstallFailed) as caught:
        parse_answer("h", HOOK, done.returncode, done.stdout)
    message = str(caught.value)
    assert "\n" not in message and "dynamic = false in [hosts.h]" in message
    return message


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_installs_private_and_proven(shell: str, tmp_path: Path) -> None:
    path = install(shell, tmp_path)
    assert path == tmp_path / ".cache" / "relay" / HOOK.version / HOOK.name
    assert path.read_bytes() == HOOK.data
    for private in (path.parent, path.parent.parent):
        assert private.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o077 == 0
    assert [p.name for p in path.parent.iterdir()] == [HOOK.name], "a .part was left behind"
    first = path.stat().st_ino
    assert install(shell, tmp_path) == path  # once more: the same content is left alone
    assert path.stat().st_ino == first


def test_the_agent_is_started_from_what_was_installed_or_not_at_all(
    shell: str, tmp_path: Path
) -> None:
    """``agent TAG WINDOW_S GENERATION``: the file installed is started (python3 -I FILE
    start TAG WINDOW_S GENERATION), in the same session; a refusal starts nothing, and says
    why."""
    line = "agent 1 %s 7 /run/a b.sock 1000 proc 0" % ("cd" * 32)
    agent = dataclasses.replace(
        agent_file(),
        data=b"import sys\n"
        b"assert sys.flags.isolated and sys.argv[1:] == ['start', '00ff', '900', '17'], sys.argv\n"
        + f"print({line!r})\n".encode(),
    )
    # a TMPDIR of its own: not /tmp, where another test's old-path session of tag 00ff
    # would make it "supervised"
    done = run(shell, tmp_path, agent, then=("agent", "00ff", "900", "17"), tmpdir=tmp_path)
    started = parse_install_and_start("h", done.returncode, done.stdout, done.stderr, agent)
    assert started == (AgentInfo(7, "/run/a b.sock", 1000, True, 0), "cd" * 32), done
    (tmp_path / ".cache" / "relay").chmod(0o777)
    done = run(shell, tmp_path, agent, then=("agent", "00ff", "900", "17"))
    refused = parse_install_and_start("h", done.returncode, done.stdout, done.stderr, agent)
    assert refused == Unavailable(
        f"cannot install relay's agent on h: {tmp_path}/.cache/relay is writable by others "
        f"(chmod go-w {tmp_path}/.cache/relay); kernels there end with their connection (set "
        "resume_window_s = 0 in [hosts.h] to say so and not try)"
    ), done
    assert b"agent 1" not in done.stdout
    assert run(shell, tmp_path, agent, then=("agent", "0x", "900", "17")).returncode == 96
    assert run(shell, tmp_path, agent, then=("agent", "00ff", "900")).returncode == 96
    assert run(shell, tmp_path, agent, then=("agent", "00ff", "900", "1;")).returncode == 96
    assert run(shell, tmp_path, agent, then=("start",)).returncode == 96


def test_an_old_path_sessions_record_of_the_tag_is_said_before_the_agent_starts(
    shell: str, tmp_path: Path
) -> None:
    """A supervisor of the old path registers in TMPDIR/relay-TAG.XXXXXX (supervisor.sh)
    and removes it when it ends: one there is a session that may outlive a silent loss, with
    kernels, which the daemon then sweeps once the agent runs. The installer says so
    before the agent's start, so that a daemon sweeps only where there is one (a sweep on
    every daemon's start cost MaxSessions 1 hosts their `relay check`: a review's finding).
    Another tag's record, a file by that name, or a symlink (another user's, perhaps) is
    not one."""
    line = "agent 1 %s 7 /run/a.sock 1000 proc 0" % ("cd" * 32)
    agent = dataclasses.replace(agent_file(), data=f"print({line!r})\n".encode())
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / "relay-00ffee.Q1w2e3").mkdir()  # another tag's
    (tmp / "relay-00ff.file").write_text("")  # not a directory
    (tmp / "relay-00ff.Link").symlink_to(tmp / "relay-00ffee.Q1w2e3")  # not a record
    then = ("agent", "00ff", "900", "17")

    def started() -> AgentInfo:
        done = run(shell, tmp_path, agent, then=then, tmpdir=tmp)
        said = parse_install_and_start("h", done.returncode, done.stdout, done.stderr, agent)
        assert isinstance(said, tuple), done
        return said[0]

    assert not started().supervised
    (tmp / "relay-00ff.Ab12Cd").mkdir()
    assert started().supervised


def test_an_upload_cut_short_is_never_installed(shell: str, tmp_path: Path) -> None:
    """A session whose connection was lost gets the end of its input only when sshd lets it
    go, which may be long after, with part of the file: it was installed so, over the whole
    one a later connection had proven, and a kernel loaded it. Now refused, the whole one
    kept, no .part left."""
    path = install(shell, tmp_path)
    done = run(shell, tmp_path, data=HOOK.data[:100])
    assert done.returncode == 1, done
    with pytest.raises(HookInstallFailed, match=r"upload of .* was cut short"):
        parse_answer("h", HOOK, done.returncode, done.stdout)
    assert path.read_bytes() == HOOK.data
    assert [p.name for p in path.parent.iterdir()] == [HOOK.name]
    long = run(shell, tmp_path, data=HOOK.data + b"more")
    assert long.returncode == 1 and b"refuse short" in long.stdout, long
    assert path.read_bytes() == HOOK.data


def test_a_damaged_copy_is_replaced(shell: str, tmp_path: Path) -> None:
    path = install(shell, tmp_path)
    path.write_bytes(b"truncated")
    assert install(shell, tmp_path).read_bytes() == HOOK.data


def test_a_symlinked_cache_is_not_written_through(shell: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "relay").symlink_to(elsewhere)
    assert "is a symlink" in refusal(shell, tmp_path)
    assert not list(elsewhere.iterdir())
    version = tmp_path / ".cache" / "relay-real"
    version.mkdir()
    (tmp_path / ".cache" / "relay").unlink()
    (tmp_path / ".cache" / "relay").mkdir(mode=0o700)
    (tmp_path / ".cache" / "relay" / HOOK.version).symlink_to(version)
    assert "is a symlink" in refusal(shell, tmp_path)
    assert not list(version.iterdir())


def test_a_cache_others_can_write_is_refused(shell: str, tmp_path: Path) -> None:
    cache = tmp_path / ".cache" / "relay"
    cache.mkdir(parents=True)
    cache.chmod(0o777)
    message = refusal(shell, tmp_path)
    assert f"chmod go-w {cache}" in message
    cache.chmod(0o755)  # readable by others is fine; writable is not
    assert install(shell, tmp_path).read_bytes() == HOOK.data


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another uid needs root")
def test_a_cache_of_another_user_is_refused(shell: str, tmp_path: Path) -> None:
    cache = tmp_path / ".cache" / "relay"
    cache.mkdir(parents=True, mode=0o700)
    os.chown(cache, 65534, 65534)
    assert "is not owned by you" in refusal(shell, tmp_path)
    assert not list(cache.iterdir())


NOGROUP = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another uid needs root")
@pytest.mark.parametrize(
    "case",
    [
        "cache-777",
        "cache-group",
        "cache-theirs",
        "home-777",
        "link-out",
        "link-sticky",
        "upg",
        "acl",
    ],
)
def test_a_directory_above_the_cache_that_another_user_could_change_is_refused(
    shell: str, tmp_path: Path, case: str
) -> None:
    """Whoever may write ~/.cache, or a directory above it, could swap ~/.cache/relay after
    the installer's checks: the agent is run, and the hook loaded by every later kernel, from
    there by name (a review ran its own code as the user so). Refused, naming the directory,
    unless its sticky bit or the user's private group keeps others out (safedirs.sh)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    cache = home / ".cache"
    fault: Path | None = cache
    if case.startswith("link"):  # ~/.cache elsewhere (a cluster's /scratch, say)
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o1777 if case == "link-sticky" else 0o777)
        shared.chmod(0o1777 if case == "link-sticky" else 0o777)  # past the umask
        (shared / "mine").mkdir(mode=0o700)
        cache.symlink_to(shared / "mine")
        fault = None if case == "link-sticky" else shared
    else:
        cache.mkdir(mode=0o700)
    if case == "cache-777":
        cache.chmod(0o777)
    elif case == "cache-group":
        os.chown(cache, 0, NOGROUP)
        cache.chmod(0o775)
    elif case == "cache-theirs":
        os.chown(cache, NOGROUP, NOGROUP)
        cache.chmod(0o755)
    elif case == "home-777":
        home.chmod(0o777)
        fault = home
    elif case == "upg":  # group-writable, the group root's own (Debian's umask 002)
        cache.chmod(0o775)
        fault = None
    elif case == "acl":  # the same, but the group bits are an ACL's mask naming another uid
        cache.chmod(0o770)
        acl_naming(cache, NOGROUP)
    if fault is None:
        assert install(shell, home).read_bytes() == HOOK.data
        return
    message = refusal(shell, home)
    said = "is not owned by you" if case == "cache-theirs" else f"chmod go-w {fault}"
    assert f"{fault} " in message and said in message, message
    assert not (home / ".cache" / "relay").exists()


def test_old_versions_and_stale_parts_are_pruned(shell: str, tmp_path: Path) -> None:
    cache = tmp_path / ".cache" / "relay"
    old, recent = cache / "00000000000000aa", cache / "00000000000000bb"
    for version in (old, recent):
        version.mkdir(parents=True)
        (version / HOOK.name).write_text("an earlier relay's hook")
    os.utime(old, (OLD, OLD))
    outside = tmp_path / "not-relays"
    outside.mkdir()
    os.utime(outside, (OLD, OLD))
    (cache / "link").symlink_to(outside)  # never followed, never removed through
    ours = cache / HOOK.version
    ours.mkdir()
    stale, fresh = ours / f"{HOOK.name}.1.part", ours / f"{HOOK.name}.2.part"
    stale.write_text("killed upload")
    fresh.write_text("an upload under way now")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    install(shell, tmp_path)
    assert not old.exists() and recent.exists() and outside.exists()
    assert (cache / "link").is_symlink()
    assert not stale.exists() and fresh.exists()
    assert ours.stat().st_mtime > time.time() - 3600  # in use: touched, never pruned


def test_the_other_files_of_this_relay_are_never_pruned(shell: str, tmp_path: Path) -> None:
    """A new connection installs two files at once (the kernel hook beside the agent's
    start). Where both went unused for the days kept, each install took the other's
    directory for an old release's: one ``rm -rf`` between the other's checks and its write
    failed it (a review's finding). Each spares the versions it is given."""
    cache = tmp_path / ".cache" / "relay"
    sibling, old = cache / "00000000000000cc", cache / "00000000000000aa"
    for version in (sibling, old):
        version.mkdir(parents=True)
        (version / "relayagent.py").write_text("this relay's agent")
        os.utime(version, (OLD, OLD))
    done = run(shell, tmp_path, spare="00000000000000cc,00000000000000dd")
    assert parse_answer("h", HOOK, done.returncode, done.stdout).endswith(HOOK.name)
    assert sibling.exists() and not old.exists()
    # nor anything whose name is not a version: the daemon's own bytecode, where the host is
    # its machine or shares its home (a review's finding: pruned after 30 days unchanged)
    bytecode = cache / "bytecode"
    (bytecode / "usr").mkdir(parents=True)
    os.utime(bytecode, (OLD, OLD))
    assert run(shell, tmp_path).returncode == 0 and (bytecode / "usr").exists()
    for bad in ("", "0a;", "*", "00 aa"):
        assert run(shell, tmp_path, spare=bad).returncode == 96, bad


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_a_full_home_leaves_no_part_and_says_so(shell: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(home)], check=True)
    try:
        (home / ".cache" / "relay" / HOOK.version).mkdir(parents=True, mode=0o700)
        (home / ".cache" / "relay").chmod(0o700)
        big = HookFile(HOOK.name, HOOK.data * 100)  # larger than the whole filesystem
        done = run(shell, home, big)
        with pytest.raises(HookInstallFailed, match="cannot be written"):
            parse_answer("h", big, done.returncode, done.stdout)
        leftovers = [p for p in (home / ".cache" / "relay").rglob("*") if p.is_file()]
        assert leftovers == []
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_home_that_cannot_be_written_uses_the_files_already_installed(
    shell: str, tmp_path: Path, how: str
) -> None:
    """A home full, over quota or read-only after relay's files were installed: the .part
    was written before comparing, so every new connection failed though the installed files
    were whole and right (a review's finding). The upload is read to its end and the one
    installed is used (the daemon proves it by its hash); where none of the right size is
    there, it cannot be written, as before."""
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(home)], check=True)
    try:
        path = install(shell, home)
        line = "agent 1 %s 7 /run/a.sock 1000 proc 0" % ("cd" * 32)
        agent = dataclasses.replace(agent_file(), data=f"print({line!r})\n".encode())
        then = ("agent", "00ff", "900", "17")
        done = run(shell, home, agent, then=then)
        assert isinstance(
            parse_install_and_start("h", done.returncode, done.stdout, done.stderr, agent), tuple
        ), done
        other = HookFile(HOOK.name, HOOK.data + b"(* another release *)\n")
        stale = home / ".cache" / "relay" / other.version
        stale.mkdir(mode=0o700)
        (stale / other.name).write_bytes(HOOK.data)  # not the size of the upload
        if how == "full":
            fill(home)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True)
        assert install(shell, home) == path
        assert path.read_bytes() == HOOK.data
        done = run(shell, home, agent, then=then)
        said = parse_install_and_start("h", done.returncode, done.stdout, done.stderr, agent)
        assert isinstance(said, tuple) and said[1] == "cd" * 32, done
        assert b"refuse" not in done.stdout
        done = run(shell, home, other)
        with pytest.raises(HookInstallFailed, match="cannot be written"):
            parse_answer("h", other, done.returncode, done.stdout)
        leftovers = [p for p in (home / ".cache" / "relay").rglob("*.part")]
        assert leftovers == []
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_what_the_installer_says_is_checked() -> None:
    path = f"/home/u/.cache/relay/{HOOK.version}/{HOOK.name}"
    assert parse_answer("h", HOOK, 0, f"ok {path}\n".encode() + HOOK.data) == path
    with pytest.raises(HookInstallFailed, match="sha256 differs"):
        parse_answer("h", HOOK, 0, f"ok {path}\n".encode() + HOOK.data[:-1])
    with pytest.raises(HookInstallFailed, match="unexpected path"):
        parse_answer("h", HOOK, 0, b"ok /etc/passwd\n" + HOOK.data)
    with pytest.raises(HookInstallFailed, match="could not be run"):
        parse_answer("h", HOOK, 127, b"")
    with pytest.raises(HookInstallFailed, match="status 96"):
        parse_answer("h", HOOK, 96, b"")
    with pytest.raises(HookInstallFailed, match="HOME is unset"):
        parse_answer("h", HOOK, 1, b"refuse nohome -\n")
    # a login shell that talks before the command runs (~/.bashrc's echo, a module system)
    chatter = b"Welcome to the cluster\nok, modules loaded\n\n"
    assert parse_answer("h", HOOK, 0, chatter + f"ok {path}\n".encode() + HOOK.data) == path
    with pytest.raises(HookInstallFailed, match="HOME is unset"):
        parse_answer("h", HOOK, 1, chatter + b"refuse nohome -\n")
    with pytest.raises(HookInstallFailed, match="said b'Welcome to the cluster'"):
        parse_answer("h", HOOK, 0, chatter)
    # chatter that begins as the answer does: the answer is the line with this file's path
    # (or a reason of the installer's), which a login shell does not print
    loud = b"ok\nok 3 modules loaded\nrefuse to guess\n"
    assert parse_answer("h", HOOK, 0, loud + f"ok {path}\n".encode() + HOOK.data) == path
    with pytest.raises(HookInstallFailed, match="HOME is unset"):
        parse_answer("h", HOOK, 1, loud + b"refuse nohome -\n")
    with pytest.raises(HookInstallFailed, match="status 0 and said b'ok'"):
        parse_answer("h", HOOK, 0, loud)  # none is it: the first that looks like it, said
    # no exit status and no signal: the session was cut off with its connection; not the
    # host's doing, so no advice to launch without Dynamic
    with pytest.raises(ConnectFailed) as lost:
        parse_answer("h", HOOK, None, b"")
    assert lost.value.message == "the SSH connection to h was lost while relay installed " + (
        "relay's kernel hook"
    )


def test_the_command_is_the_bootstrap_and_checks_its_words() -> None:
    remote = hook_install_command(HOOK.version, HOOK.name, size=len(HOOK.data))
    assert remote.command == (
        f"{BOOTSTRAP} {HOOK.version} {HOOK.name} {HOOK_KEEP_DAYS} - {len(HOOK.data)}"
    )
    assert remote.preamble == (CUT_CHATTER + installer() + "\n").encode()
    with pytest.raises(ValueError, match="hex"):
        hook_install_command("x; rm -rf ~", HOOK.name, size=1)
    with pytest.raises(ValueError, match="letters"):
        hook_install_command(HOOK.version, "../x y", size=1)
    starting = hook_install_command(
        HOOK.version, HOOK.name, size=len(HOOK.data), agent=("00ff", 899.6, 7)
    )
    assert starting.command == f"{remote.command} agent 00ff 900 7"
    assert starting.preamble == remote.preamble  # one script: the words say what it does
    with pytest.raises(ValueError, match="hex"):
        hook_install_command(
            HOOK.version, HOOK.name, size=len(HOOK.data), agent=("00ff; rm -rf ~", 900, 7)
        )
    spared = hook_install_command(
        HOOK.version, HOOK.name, size=len(HOOK.data), spare=["00aa", "00bb"]
    )
    assert spared.command == (
        f"{BOOTSTRAP} {HOOK.version} {HOOK.name} {HOOK_KEEP_DAYS} 00aa,00bb {len(HOOK.data)}"
    )
    with pytest.raises(ValueError, match="hex"):
        hook_install_command(HOOK.version, HOOK.name, size=len(HOOK.data), spare=["*"])
    # what the daemon's installs spare: each other's version, never their own
    agent, packaged = agent_file(), HookFile.packaged()
    assert hookfile.spared(agent) == [packaged.version]
    assert hookfile.spared(packaged) == [agent.version]


class _Conn:
    """What the Installer asks of a connection: whether it has ended."""

    def __init__(self, closed: bool) -> None:
        self.closed = closed

    def is_closed(self) -> bool:
        return self.closed


@pytest.mark.parametrize("closed", [False, True], ids=["live", "ended"])
def test_a_failed_install_is_said_once_and_only_as_news_for_an_ended_connection(
    closed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The install its prefetch began fails: on a live connection, one warning (the
    prefetch's; the task that ran it does not log it again); on a connection that ended
    (a stop right after a reconnect, another outage) no warning, its end being the news, but
    one info line, so that every install's end is in the log (a test that waits for each
    connection's install counts them). A launch that awaits the install gets the error
    itself."""

    async def lost(*_: object) -> str:
        raise ConnectFailed("the SSH connection to hpc was lost while relay installed the hook")

    monkeypatch.setattr(hookfile, "install", lost)

    async def main() -> list[MutableMapping[str, Any]]:
        with structlog.testing.capture_logs() as logs:
            tasks = TaskSet()
            installer = hookfile.Installer("hpc", tasks)
            conn = cast("asyncssh.SSHClientConnection", _Conn(closed))
            prefetched = installer.prefetch(conn)
            with pytest.raises(ConnectFailed, match="was lost"):
                await installer.path(conn)  # a launch: the same install, its own error
            await prefetched
            await tasks.aclose()
        return logs

    logs = asyncio.run(main())
    said = [(e["log_level"], e["event"]) for e in logs if e["log_level"] != "debug"]
    cut_off = ("info", "kernel hook not installed: its connection ended first")
    assert said == ([cut_off] if closed else [("warning", "kernel hook not installed")]), logs


def test_a_connection_up_for_days_installs_its_hook_again_each_day(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another front end of the account (another relay version) prunes a version directory
    unused for HOOK_KEEP_DAYS; a connection up that long kept its install's path, and its
    later controllers started with an -initfile that was gone (a review's finding). A
    launch a day after the install installs again, which touches the directory."""
    installs: list[object] = []

    async def install(conn: object, *_: object) -> str:
        installs.append(conn)
        return "/home/u/.cache/relay/v/RelayKernelInit.wl"

    now = [1000.0]
    monkeypatch.setattr(hookfile, "install", install)
    monkeypatch.setattr(hookfile, "_clock", lambda: now[0])

    async def main() -> None:
        tasks = TaskSet()
        installer = hookfile.Installer("hpc", tasks)
        conn = cast("asyncssh.SSHClientConnection", _Conn(False))
        for step_s in (0, 3600, hookfile.REINSTALL_AFTER_S - 3600, 1, 60):
            now[0] += step_s
            await installer.path(conn)
        await tasks.aclose()

    asyncio.run(main())
    assert len(installs) == 2  # the first, and one past a day since it


def test_an_install_again_that_fails_leaves_the_one_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A day's install again that fails (a home over quota, a refusal) failed every launch on
    a connection whose hook was in place (a review's finding): the one in place is used, it
    is said once, and tried again a day later. A new connection's first install that fails
    is the launch's error, as before."""
    fails = [False]
    installs: list[object] = []

    async def install(conn: object, *_: object) -> str:
        installs.append(conn)
        if fails[0]:
            raise HookInstallFailed("cannot install relay's kernel hook on hpc: quota")
        return "/home/u/.cache/relay/v/RelayKernelInit.wl"

    now = [1000.0]
    monkeypatch.setattr(hookfile, "install", install)
    monkeypatch.setattr(hookfile, "_clock", lambda: now[0])

    async def main() -> list[MutableMapping[str, Any]]:
        with structlog.testing.capture_logs() as logs:
            tasks = TaskSet()
            installer = hookfile.Installer("hpc", tasks)
            conn = cast("asyncssh.SSHClientConnection", _Conn(False))
            await installer.path(conn)
            fails[0] = True
            now[0] += hookfile.REINSTALL_AFTER_S + 1
            for _ in range(3):  # launches that day: the hook in place, one try
                assert await installer.path(conn) == "/home/u/.cache/relay/v/RelayKernelInit.wl"
            assert len(installs) == 2
            now[0] += hookfile.REINSTALL_AFTER_S + 1
            await installer.path(conn)
            assert len(installs) == 3  # a day later, tried again
            with pytest.raises(HookInstallFailed):  # a new connection: nothing in place
                await installer.path(cast("asyncssh.SSHClientConnection", _Conn(False)))
            await tasks.aclose()
        return logs

    logs = asyncio.run(main())
    said = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert said.count("kernel hook not installed again; the one in place is used") == 2


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a host of its own with the same pid needs root's namespaces (unshare)",
)
def test_two_hosts_installing_into_one_home_with_the_same_pid_both_install(
    tmp_path: Path,
) -> None:
    """An NFS home shared by a login node and its compute nodes, which relay connects to at
    once: two installs whose shells have the same pid wrote one .part, each into the
    other's, and one said its upload was cut short (or installed a damaged file; a review's
    reproduction). Each host here is a namespace of its own (its own name, its shell pid 1)."""
    inner = 'echo "$1" > /proc/sys/kernel/hostname && shift && exec dash -c "$0" "$@"'

    def argv(name: str) -> list[str]:
        words = [installer(), name, "relay", HOOK.version, HOOK.name]
        words += [str(HOOK_KEEP_DAYS), "-", str(len(HOOK.data))]
        return ["unshare", "--uts", "--pid", "--fork", "sh", "-c", inner, *words]

    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    half = len(HOOK.data) // 2
    first = subprocess.Popen(argv("login"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert first.stdin is not None
    try:
        first.stdin.write(HOOK.data[:half])
        first.stdin.flush()
        version = tmp_path / ".cache" / "relay" / HOOK.version
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size == half for p in version.glob("*.part")):
            assert time.monotonic() < deadline, "the first upload never began"
            time.sleep(0.02)
        second = subprocess.run(argv("node1"), input=HOOK.data, capture_output=True, env=env)
        first.stdin.write(HOOK.data[half:])
        first.stdin.close()
        assert first.stdout is not None
        said = first.stdout.read()
        first.wait(60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if first.stdout is not None:
            first.stdout.close()
    for done, out in ((first.returncode, said), (second.returncode, second.stdout)):
        path = Path(parse_answer("h", HOOK, done, out))
    assert path.read_bytes() == HOOK.data
    assert [p.name for p in path.parent.iterdir()] == [HOOK.name]


def test_a_home_with_backslashes_and_quotes_in_its_name(shell: str, tmp_path: Path) -> None:
    """dash's echo read "\\n" in a HOME's name as a newline: the answer was cut in two, and
    every launch said "the installer reported an unexpected path" (a review's finding)."""
    home = tmp_path / "a b\\n 'q' \"d\" $x Jü日"
    home.mkdir()
    path = install(shell, home)
    assert path == home / ".cache" / "relay" / HOOK.version / HOOK.name
    assert path.read_bytes() == HOOK.data


def test_a_home_not_in_utf8_is_refused_for_the_hook(shell: str, tmp_path: Path) -> None:
    """A HOME named in Latin-1: the hook's path was read with U+FFFD in it and given to
    kernels, which could not load it, and Dynamic was lost without a word (a review's
    finding)."""
    home = Path(os.fsdecode(os.fsencode(tmp_path) + b"/J\xfcrgen"))
    home.mkdir()
    done = run(shell, home)
    assert done.returncode == 0, done
    with pytest.raises(HookInstallFailed) as caught:
        parse_answer("h", HOOK, done.returncode, done.stdout)
    message = str(caught.value)
    assert message.startswith(f"cannot install relay's kernel hook on h: its path {tmp_path}/J"), (
        message
    )
    assert "is not UTF-8 (the home directory's name is in another encoding)" in message, message
    assert message.endswith("set dynamic = false in [hosts.h] to launch without Dynamic support")
