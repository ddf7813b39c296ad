"""relay check against real OpenSSH servers, each broken in one way: the failing line names it,
says what to do, and the checks after it are not run; a healthy host passes every line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.sim.sshd import ThrowawaySSHD, _free_port, _keygen
from tests.conftest import RELAY, SIM_KERNEL, RelayHome, start_daemon
from tests.e2e.helpers import controller, launch_and_quit
from tests.e2e.test_full_disk import small_tmpfs, use_up_inodes
from tests.e2e.test_openssh import alias
from tests.e2e.test_resume import status_of, without_python3

pytestmark = pytest.mark.sshd

STEPS = [
    "configuration",
    "reach",
    "host key",
    "authentication",
    "server",
    "remote host",
    "resume",
    "kernel",
    "round trip",
    "connection",
]


def check_json(home: RelayHome, host: str = "local", *args: str) -> tuple[int, dict[str, Any], str]:
    """``relay check --json``: its status, its answer, and the answer as text (for messages)."""
    home.write()
    done = subprocess.run(
        [RELAY, "check", host, "--json", *args],
        env=home.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout, done.stderr
    answer = json.loads(done.stdout)
    assert [r["name"] for r in answer["results"]] == STEPS
    return done.returncode, answer, done.stdout


def check(home: RelayHome, host: str = "local", *args: str) -> tuple[int, dict[str, Any], str]:
    """``relay check``, both ways: its JSON (status, answer) and its text."""
    status, answer, _ = check_json(home, host, *args)
    text = subprocess.run(
        [RELAY, "check", host, *args], env=home.env, capture_output=True, text=True, timeout=300
    ).stdout
    return status, answer, text


def by_name(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in answer["results"]}


def first_failure(answer: dict[str, Any]) -> dict[str, Any]:
    failed: list[dict[str, Any]] = [r for r in answer["results"] if r["state"] == "fail"]
    assert failed, answer
    later = answer["results"][failed[0]["step"] : -1]
    assert all(r["state"] == "skip" for r in later)  # nothing after the first failure ran
    return failed[0]


@pytest.fixture
def server(home: RelayHome, request: pytest.FixtureRequest) -> Iterator[ThrowawaySSHD]:
    """A throwaway sshd with the options the test's ``sshd_options`` marker gives."""
    marker = request.node.get_closest_marker("sshd_options")
    kwargs = dict(marker.kwargs) if marker else {}
    with ThrowawaySSHD(home.dir / "sshd", **kwargs) as running:
        home.sshd = running
        home.hosts.clear()
        home.add_host("local")
        yield running


def test_a_healthy_host_passes_every_line(home: RelayHome, agent_or_not: str | None) -> None:
    status, answer, text = check(home)
    states = {r["name"]: r["state"] for r in answer["results"]}
    assert status == 0, text
    assert set(states.values()) == {"ok"}, text
    results = by_name(answer)
    assert "IPv4" in results["reach"]["summary"]
    assert results["authentication"]["summary"].startswith("publickey with ")
    assert results["kernel"]["summary"].endswith(": 14.1.0")
    assert "both channels answered" in results["round trip"]["summary"]
    assert "not running" in results["connection"]["data"]["show"]["daemon"]
    assert text.splitlines()[0] == "relay check local"
    assert text.rstrip().endswith("every check passed")
    assert all(line[:4] in ("ok  ", "    ", "    ") for line in text.splitlines()[1:-1]), text


async def test_through_the_running_daemon(home: RelayHome, agent_or_not: str | None) -> None:
    async with start_daemon(home) as running:
        loop = asyncio.get_running_loop()
        status, answer, _ = await loop.run_in_executor(None, check, home)
        assert status == 0
        assert running.daemon.environ_agent == agent_or_not  # the check's agent, if any
        assert "running" in by_name(answer)["connection"]["data"]["show"]["daemon"]
        assert running.daemon.hosts["local"].state == "connected"  # the daemon's own connection
        assert not running.daemon.kernels  # the probe is gone


async def test_a_hosts_recent_failure_is_shown_whole(home: RelayHome) -> None:
    """The connection step shows the host's last failure as relay said it (one line, with
    what to do): cut at 120 characters, it ended mid-sentence (a new-user pass's finding)."""
    said = (
        "the connection to local was lost at 12:03:07 UTC and did not come back within "
        "resume_window_s (900 s); relay's agent there ends its kernels: restart the kernel "
        "from the front end"
    )
    async with start_daemon(home) as running:
        loop = asyncio.get_running_loop()
        status, _, _ = await loop.run_in_executor(None, check, home)
        assert status == 0
        running.daemon.hosts["local"].record_failure("k7", "math", said)
        status, answer, text = await loop.run_in_executor(None, check, home)
        assert by_name(answer)["connection"]["data"]["show"]["recent failure"] == said, text
        assert said.rsplit(" ", 3)[-1] in text, text


def test_wrong_port(home: RelayHome) -> None:
    home.add_host("local", port=_free_port())
    status, answer, text = check(home)
    failed = first_failure(answer)
    assert status == 1 and failed["name"] == "reach"
    assert "cannot reach 127.0.0.1 port" in failed["summary"]
    assert "that sshd runs there" in failed["advice"]
    assert "FAIL 2. reach" in text and "first failure: reach" in text


def test_unknown_host_key(home: RelayHome) -> None:
    empty = home.dir / "empty_known_hosts"
    empty.write_text("")
    home.add_host("local", known_hosts=str(empty))
    _, answer, _ = check(home)
    failed = first_failure(answer)
    assert failed["name"] == "host key" and "SHA256:" in failed["summary"]
    assert "relay trust local" in failed["advice"]


def test_changed_host_key(home: RelayHome) -> None:
    assert home.sshd is not None
    other = home.dir / "other_key"
    _keygen(other, "other")
    pub = Path(f"{other}.pub").read_text().split()
    changed = home.dir / "changed_known_hosts"
    changed.write_text(f"[127.0.0.1]:{home.sshd.port} {pub[0]} {pub[1]}\n")
    home.add_host("local", known_hosts=str(changed))
    _, answer, _ = check(home)
    failed = first_failure(answer)
    assert failed["name"] == "host key" and "DIFFERENT key" in failed["summary"]
    assert f"ssh-keygen -R '[127.0.0.1]:{home.sshd.port}' -f {changed}" in failed["advice"]


def test_no_key_the_server_takes(home: RelayHome) -> None:
    stranger = home.dir / "stranger_key"
    _keygen(stranger, "stranger")
    home.add_host("local", identity_files=[str(stranger)])
    _, answer, _ = check(home)
    failed = first_failure(answer)
    assert failed["name"] == "authentication"
    assert "server offers: publickey" in failed["summary"]
    assert "authorized_keys" in failed["advice"]


def test_the_key_an_ssh_config_alias_names_is_the_one_found(home: RelayHome) -> None:
    """An ssh_config alias whose IdentityFile the server takes (no ssh-agent): step 4 said
    "not with one key alone: relay login, or several factors", having tried only ssh's
    default key files; it tries the ones the connection offers."""
    assert home.sshd is not None
    home.agent = None
    home.hosts.clear()
    alias(home, "work", home.sshd.port, UserKnownHostsFile=home.sshd.known_hosts)
    _, answer, text = check(home, "work")
    auth = by_name(answer)["authentication"]
    assert auth["state"] == "ok", text
    assert f"publickey with {home.sshd.client_key}" in auth["summary"], text


@pytest.mark.sshd_options(
    options={
        "UsePAM": "yes",
        "KbdInteractiveAuthentication": "yes",
        "AuthenticationMethods": "keyboard-interactive",
        "PermitRootLogin": "yes",
    }
)
def test_a_keyboard_interactive_only_host_needs_relay_login(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    _, answer, _ = check(home)
    failed = first_failure(answer)
    assert failed["name"] == "authentication"
    assert "server offers: keyboard-interactive" in failed["summary"]
    assert "relay login local" in failed["advice"]


@pytest.mark.parametrize(
    ("step", "summary", "advice"),
    [
        pytest.param(
            "server",
            "remote port forwarding",
            "AllowTcpForwarding",
            marks=pytest.mark.sshd_options(options={"AllowTcpForwarding": "no"}),
            id="no-forwarding-today",
        ),
        pytest.param(
            "resume",  # no forwarding at all: neither the agent's channel nor today's path
            "no kernel can launch here",
            "AllowTcpForwarding yes",
            marks=pytest.mark.sshd_options(options={"AllowTcpForwarding": "no"}),
            id="no-forwarding",
        ),
        pytest.param(
            "server",
            "refuses a session",
            "MaxSessions",
            marks=pytest.mark.sshd_options(options={"MaxSessions": "0"}),
            id="no-sessions",
        ),
    ],
)
def test_server_limits(
    home: RelayHome, server: ThrowawaySSHD, step: str, summary: str, advice: str
) -> None:
    if step == "server" and "forwarding" in summary:
        home.add_host("local", resume_window_s=0)  # today's path alone: it needs them
    _, answer, text = check(home)
    failed = first_failure(answer)
    assert failed["name"] == step and summary in failed["summary"], text
    assert advice in failed["advice"], text


def test_what_only_todays_path_needs_is_a_warning_where_the_agent_runs(home: RelayHome) -> None:
    """A server that refuses remote forwards (AllowTcpForwarding local): relay's agent needs
    none, and launches worked, while check failed step 5 and skipped the rest (a new-user
    review's finding). A warning, and step 7 says the agent runs."""
    with ThrowawaySSHD(home.dir / "sshd", options={"AllowTcpForwarding": "local"}) as srv:
        home.sshd = srv
        home.hosts.clear()
        home.add_host("local")
        status, answer, text = check(home)
    assert status == 0, text
    results = by_name(answer)
    assert results["server"]["state"] == "warn", text
    assert "kernels here can launch only through relay's agent" in results["server"]["summary"]
    assert results["resume"]["state"] == "ok" and results["round trip"]["state"] == "ok", text


@pytest.mark.sshd_options(options={"MaxSessions": "1"})
async def test_a_server_of_one_session_at_a_time_launches_through_the_agent_and_check_says_so(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    """MaxSessions 1: relay's agent needs one session at a time (its channel is none), today's
    path holds one and opens more. Check failed step 5 there while launches worked (a
    review's finding); then its steps 6 and 9 were refused a session: sshd frees one a loop
    turn after its end (``remote_scripts.session``), and the hook's install, which the
    probe's launch sets off, holds the only one. A warning, every step through, and check
    runs so beside the running daemon's launches, on its connection."""
    status, answer, text = check(home)
    assert status == 0, text
    results = by_name(answer)
    assert results["server"]["state"] == "warn", text
    assert "allows one session at a time" in results["server"]["summary"], text
    assert "MaxSessions 2 or more" in results["server"]["advice"], text
    assert {r["name"] for r in answer["results"] if r["state"] == "ok"} == set(STEPS) - {
        "server"
    }, text
    async with start_daemon(home), controller(home) as fe:
        kl = await fe.link.accept(60)
        assert await kl.echo(b"one session") == b"one session"
        # the agent's session given first, the kernel hook's install, begun beside it and
        # refused, made once the agent ran (a controller loads the hook: its -initfile)
        assert (await status_of(home))["resume"]["state"] == "on"
        assert kl.hello["initfile"], kl.hello
        loop = asyncio.get_running_loop()
        status, answer, text = await loop.run_in_executor(None, check, home)
        assert status == 0, text
        assert "running" in by_name(answer)["connection"]["data"]["show"]["daemon"], text
        assert await kl.echo(b"after the check") == b"after the check"
        await kl.quit(0)
        assert (await fe.result())[0] == 0
        await kl.aclose()


@pytest.mark.sshd_options(options={"MaxSessions": "1"})
def test_one_session_at_a_time_fails_where_the_agent_is_not_wanted(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    home.add_host("local", resume_window_s=0)  # today's path: a session held, more opened
    _, answer, text = check(home)
    failed = first_failure(answer)
    assert failed["name"] == "server", text
    assert "refuses a second session at once" in failed["summary"], text
    assert "MaxSessions" in failed["advice"], text


def test_one_session_at_a_time_where_the_agent_cannot_run_launches_nothing(
    home: RelayHome,
) -> None:
    """The agent wanted (step 5 warns) but no python3 on the host's PATH (step 7): nothing
    can launch, and step 7 says what would let either path run."""
    path = without_python3(home.dir / "bin")
    options = {"MaxSessions": "1", "SetEnv": f"PATH={path}"}
    with ThrowawaySSHD(home.dir / "sshd", options=options) as srv:
        home.sshd = srv
        home.hosts.clear()
        home.add_host("local")
        _, answer, text = check(home)
    failed = first_failure(answer)
    assert by_name(answer)["server"]["state"] == "warn", text
    assert failed["name"] == "resume", text
    assert "no python3" in failed["summary"], text
    assert "no kernel can launch here" in failed["summary"], text
    assert "MaxSessions 2 or more in the host's sshd_config" in failed["advice"], text


def check_with_a_start_up_that_never_ends(
    home: RelayHome, server: ThrowawaySSHD
) -> tuple[dict[str, Any], str]:
    """``check`` with a ~/.bashrc that waits longer than the check (2 s a wait), not
    longer than the run (its sleep outlives the server)."""
    (server.home / ".bashrc").write_text("sleep 60\n")
    home.add_host("local", connect_timeout_s=2)
    try:
        _, answer, text = check(home)
    finally:
        (server.home / ".bashrc").unlink()
    return answer, text


def test_a_login_shell_whose_start_up_never_ends_is_named_not_maxsessions(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    """~/.bashrc that waits (or execs another shell that does): the session opens and its
    command never ends. A timeout is an OSError too, so check said "the server refuses a
    session ()" and sent the person to MaxSessions (a review's finding)."""
    answer, _ = check_with_a_start_up_that_never_ends(home, server)
    failed = first_failure(answer)
    assert failed["name"] == "server", failed
    assert "did not finish within 2 s" in failed["summary"], failed
    assert "start-up files" in failed["advice"] and "MaxSessions" not in failed["advice"]


def test_a_slow_login_is_said_with_what_it_costs(home: RelayHome, server: ThrowawaySSHD) -> None:
    """A ~/.bashrc that takes 3 s (module loads on a login node): every step passes, and the
    remote host's says what the login costs and where to move what is slow. Measured on the
    host from the session's process start, so this run's 3 s is 3 s at least."""
    (server.home / ".bashrc").write_text("sleep 3\n")
    try:  # the JSON alone: each of check's sessions pays the 3 s
        status, answer, text = check_json(home)
    finally:
        (server.home / ".bashrc").unlink()
    assert status == 0, text
    remote = by_name(answer)["remote host"]
    assert remote["state"] == "warn", text
    assert re.search(r"the login takes [3-9]\.\d s before each command", remote["summary"]), text
    assert "relay connect local" in remote["advice"], text
    assert "[[ $- == *i* ]] || return" in remote["advice"], text
    _, answer, text = check(home)
    remote = by_name(answer)["remote host"]
    assert remote["state"] == "ok" and "login" in remote["data"]["show"], text


@pytest.mark.sshd_options(sftp=False)
def test_no_sftp_is_a_warning_with_the_fallback(home: RelayHome, server: ThrowawaySSHD) -> None:
    status, answer, text = check(home)
    results = by_name(answer)
    assert status == 0
    assert results["server"]["state"] == "warn"
    assert "no SFTP subsystem: relay uses its exec-session fallback" in results["server"]["summary"]
    assert results["round trip"]["state"] == "ok"
    assert "warn 5. server" in text


def _mounted(home: RelayHome, name: str, options: str) -> Iterator[Path]:
    """A tmpfs of the test's own, mounted with ``options`` (root only: root writes through
    file modes, so only a mount makes a directory it cannot write or run from)."""
    if os.geteuid() != 0:
        pytest.skip(f"a {options} mount needs root")
    target = home.dir / name
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True)
    yield target
    subprocess.run(["umount", str(target)], check=False)


@pytest.fixture
def read_only_dir(home: RelayHome) -> Iterator[Path]:
    yield from _mounted(home, "ro-tmp", "ro,size=1m")


@pytest.fixture
def noexec_dir(home: RelayHome) -> Iterator[Path]:
    yield from _mounted(home, "noexec-tmp", "noexec,size=4m")


def check_with_tmpdir(home: RelayHome, tmpdir: Path) -> tuple[int, dict[str, Any], str]:
    """``check`` of a host whose TMPDIR is ``tmpdir``."""
    with ThrowawaySSHD(home.dir / "sshd", options={"SetEnv": f"TMPDIR={tmpdir}"}) as srv:
        home.sshd = srv
        home.hosts.clear()
        home.add_host("local")
        return check(home)


def test_a_noexec_tmpdir_does_not_fail_the_round_trip(home: RelayHome, noexec_dir: Path) -> None:
    """TMPDIR mounted noexec (hardened hosts): check's probe, put there, could not run, and
    step 9 blamed the kernel while launches worked (a new-user review's finding). It goes
    beside relay's own files."""
    status, answer, text = check_with_tmpdir(home, noexec_dir)
    assert status == 0, text
    assert by_name(answer)["round trip"]["state"] == "ok", text


def test_a_read_only_home_is_said_before_a_launch_meets_it(
    home: RelayHome, read_only_dir: Path
) -> None:
    """HOME on a read-only mount: every step passed (the round trip launches a compute
    kernel, which needs no hook) and then a controller launch failed to install the hook,
    and resuming was off (a new-user review's finding). Step 6 says it, and with Dynamic off
    step 7 says the agent cannot go there either."""
    with ThrowawaySSHD(home.dir / "sshd", options={"SetEnv": f"HOME={read_only_dir}"}) as srv:
        home.sshd = srv
        home.hosts.clear()
        home.add_host("local")
        _, answer, _ = check(home)
        home.add_host("local", dynamic=False)
        status, without, text = check(home)
    failed = first_failure(answer)
    assert failed["name"] == "remote host", failed
    assert f"{read_only_dir} cannot be written" in failed["summary"], failed
    assert "dynamic = false" in failed["advice"], failed
    assert status == 0, text
    resume = by_name(without)["resume"]
    assert resume["state"] == "warn" and "where relay's agent goes" in resume["summary"], text


def test_read_only_tmpdir(home: RelayHome, read_only_dir: Path) -> None:
    _, answer, _ = check_with_tmpdir(home, read_only_dir)
    failed = first_failure(answer)
    assert failed["name"] == "remote host"
    assert f"TMPDIR {read_only_dir} is not writable" in failed["summary"]
    assert "set TMPDIR for your account" in failed["advice"]


@pytest.fixture
def full_dir(home: RelayHome) -> Iterator[Path]:
    for target in _mounted(home, "full-tmp", "size=64k"):
        with contextlib.suppress(OSError), (target / "filler").open("wb") as filler:
            for _ in range(64):  # bounded: 64 x 4 KB fills it, ENOSPC ends it sooner
                filler.write(b"\0" * 4096)
                filler.flush()
        yield target


def test_a_full_tmpdir_is_said_at_step_6(home: RelayHome, full_dir: Path) -> None:
    """A TMPDIR on a tmpfs that is full: mktemp -d still makes a directory there, so step 6
    passed and step 9 failed (a new-user review's finding). Step 6 writes a file too."""
    _, answer, text = check_with_tmpdir(home, full_dir)
    failed = first_failure(answer)
    assert failed["name"] == "remote host", text
    assert f"TMPDIR {full_dir} is full" in failed["summary"], text
    assert "free some space there" in failed["advice"], text


def test_a_tmpdir_with_no_inode_left_is_said_full_at_step_6(home: RelayHome) -> None:
    """A TMPDIR with blocks but no inode left (or at the user's quota): mktemp -d fails
    there, and step 6 said the TMPDIR was "not writable" and to make it writable. mktemp
    says why: it is full."""
    with small_tmpfs(home.dir / "inodes-tmp", "1m", inodes=16) as tmp:
        use_up_inodes(tmp, 16)
        _, answer, text = check_with_tmpdir(home, tmp)
    failed = first_failure(answer)
    assert failed["name"] == "remote host", text
    assert (
        f"TMPDIR {tmp} is full: a directory with 4 KB in it could not be made"
        in (failed["summary"])
    ), text
    assert "free some space there" in failed["advice"], text


async def failed_launch_line(home: RelayHome, tmpdir: Path) -> str:
    """The one line a controller launch fails with on a host whose TMPDIR is ``tmpdir``."""
    with ThrowawaySSHD(home.dir / "sshd", options={"SetEnv": f"TMPDIR={tmpdir}"}) as srv:
        home.sshd = srv
        home.hosts.clear()
        home.add_host("local")
        async with start_daemon(home), controller(home) as fe:
            status, _, err = await fe.result(120)
    assert status != 0
    (line,) = err.strip().splitlines()
    return line


async def test_a_launch_where_tmpdir_is_full_says_so(home: RelayHome, full_dir: Path) -> None:
    """A full TMPDIR at launch: mktemp made the supervisor's directory, its first file could
    not be written, and the line said "cannot make its directory" with the shell's "I/O
    error"; the directory was left there. It says the files could not be written, and
    removes the directory."""
    line = await failed_launch_line(home, full_dir)
    assert "cannot write its files in the host's TMPDIR (" in line, line
    assert "free some space there" in line, line
    # the supervisor's relay-TAG.XXXXXX went (the agent's own directory stays, for its next)
    assert [p.name for p in full_dir.iterdir() if not p.name.startswith("relay-agent-")] == [
        "filler"
    ]


@pytest.mark.parametrize("agent_ran", [False, True])
async def test_a_launch_where_tmpdir_has_no_inode_left_says_it_is_full(
    home: RelayHome, agent_ran: bool
) -> None:
    """A TMPDIR with blocks but no inode left (as ext4 with no block: a directory cannot be
    made there): the agent's start ended in a traceback ('OSError: [Errno 28] No space left
    on device', where an earlier agent's directory and lock were there) or said "is TMPDIR a
    directory you can write to?", and the supervisor's line after it said to set TMPDIR to
    a directory you can write to. Both say the TMPDIR is full."""
    with (
        small_tmpfs(home.dir / "inodes-tmp", "1m", inodes=64) as tmp,
        ThrowawaySSHD(home.dir / "sshd", options={"SetEnv": f"TMPDIR={tmp}"}) as srv,
    ):
        home.sshd = srv
        home.hosts.clear()
        home.add_host("local")
        if agent_ran:  # its directory and the start lock stay when it ends
            async with start_daemon(home):
                await launch_and_quit(home, "local")
            assert [p.name for p in tmp.iterdir()] == [f"relay-agent-{os.getuid()}"]
        use_up_inodes(tmp, 64)
        async with start_daemon(home):
            async with controller(home) as fe:
                status, _, err = await fe.result(120)
            resume = (await status_of(home))["resume"]
    assert status != 0
    (line,) = err.strip().splitlines()
    assert "cannot write its files in the host's TMPDIR (mktemp: " in line, line
    assert "No space left on device" in line and "free some space there" in line, line
    assert resume["state"] == "off", resume
    assert "the host's TMPDIR has no space left (free some space there" in str(resume), resume


async def test_a_launch_where_tmpdir_is_missing_names_it(home: RelayHome) -> None:
    """A TMPDIR that is not there (or a full one): the launch blamed "/bin/sh and mktemp" and
    dropped mktemp's own message (a new-user review's finding). It names TMPDIR, with what
    mktemp said. (The agent cannot run there either: today's path's supervisor says it.)"""
    line = await failed_launch_line(home, home.dir / "no-such-tmp")
    assert "cannot make its directory in the host's TMPDIR (mktemp: " in line, line
    assert "set TMPDIR there to a directory you can write to" in line, line


@pytest.mark.sshd_options(
    options={"ForceCommand": "echo 'This account is for file transfers only.'; exit 1"}
)
def test_a_forcecommand_is_said_with_what_it_printed(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    """A ForceCommand runs instead of relay's commands: check said "/bin/sh did not run the
    probe (exit 1):" with nothing after it (the notice was on stdout) and blamed /bin/sh (a
    new-user review's finding)."""
    _, answer, text = check(home)
    failed = first_failure(answer)
    assert failed["name"] == "remote host", text
    assert "This account is for file transfers only." in failed["summary"], text
    assert "ForceCommand" in failed["advice"], text


def test_missing_kernel(home: RelayHome) -> None:
    _, answer, _ = check(home, "local", "--kernel", "/opt/nowhere/WolframKernel")
    failed = first_failure(answer)
    assert failed["name"] == "kernel"
    assert failed["summary"] == "no kernel at /opt/nowhere/WolframKernel on the host"
    assert "Executables" in failed["advice"]


def test_a_kernel_that_exits_with_a_message(home: RelayHome) -> None:
    early = home.dir / "early-kernel"
    early.write_text("#!/bin/sh\necho 'License expired: no valid password found' >&2\nexit 4\n")
    early.chmod(0o755)
    _, answer, text = check(home, "local", "--kernel", str(early))
    failed = first_failure(answer)
    assert failed["name"] == "kernel"
    assert "exited 4: License expired: no valid password found" in failed["summary"]
    assert "licence" in failed["advice"]
    assert "FAIL 8. kernel" in text


def shared_defaults(home: RelayHome) -> ThrowawaySSHD:
    """relay.toml's [defaults] with the test sshd's key, known_hosts and the kernel, and no
    user or port: those come from the spec or ssh_config."""
    assert home.sshd is not None
    home.defaults.update(
        identity_files=[str(home.sshd.client_key)],
        known_hosts=str(home.sshd.known_hosts),
        kernel=SIM_KERNEL,
    )
    return home.sshd


def test_an_ssh_config_alias_is_checked_at_its_port(home: RelayHome) -> None:
    """Port and User from an ssh_config Host block, none in relay.toml: every step reaches
    that port (nothing listens on 22 here), and says where the port and user came from."""
    sshd = shared_defaults(home)
    home.ssh_config.write_text(
        f"Host viaconfig\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
    )
    status, answer, text = check(home, "viaconfig")
    results = by_name(answer)
    assert status == 0, text
    shown = results["configuration"]["data"]["show"]
    assert shown["target"] == (
        f"{sshd.user}@127.0.0.1:{sshd.port} (user and port from ssh_config)"
    ), text
    assert f"port {sshd.port} (from ssh_config)" in results["reach"]["summary"], text
    assert results["host key"]["state"] == "ok", text
    assert results["authentication"]["summary"].startswith("publickey with "), text
    assert f"as {sshd.user} (from ssh_config)" in results["authentication"]["summary"], text
    assert results["round trip"]["state"] == "ok", text


def test_a_spec_says_its_user_and_port_are_the_specs(home: RelayHome) -> None:
    sshd = shared_defaults(home)
    spec = f"{sshd.user}@127.0.0.1:{sshd.port}"
    status, answer, text = check(home, spec)
    results = by_name(answer)
    assert status == 0, text
    target = results["configuration"]["data"]["show"]["target"]
    assert target == f"{spec} (user and port from the host spec {spec})", text
    assert "ssh_config" not in target
    assert f"port {sshd.port} (from the host spec)" in results["reach"]["summary"], text


def test_relay_toml_says_its_user_and_port_are_relay_tomls(home: RelayHome) -> None:
    _, answer, text = check(home)
    target = by_name(answer)["configuration"]["data"]["show"]["target"]
    assert target.endswith("(user and port from relay.toml)"), text


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP (the kernel completes the handshake for the listen queue)
    and never says a word: no SSH banner, ever."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield int(listener.getsockname()[1])
    listener.close()


def test_a_port_that_never_speaks_ssh(home: RelayHome, silent_port: int) -> None:
    home.add_host("local", port=silent_port, connect_timeout_s=1)
    status, answer, text = check(home)
    failed = first_failure(answer)
    assert status == 1 and failed["name"] == "reach", text
    assert failed["summary"].startswith(
        f"127.0.0.1:{silent_port} accepted TCP but sent no SSH banner in 1."
    ), text
    assert f"port {silent_port} (from relay.toml)" in failed["advice"], text
    assert "step 2" not in failed["advice"]


@pytest.mark.sshd_options(hide_proc=True)
def test_the_resume_line_says_off_where_the_daemon_keeps_sshds_path(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    """The resume line says what the daemon will do (``relay.agent.start.unwanted``): on a
    host with no /proc/net/tcp, or with peer_check = "off", kernels end with their
    connection. It once told both that their kernels would wait for it."""
    _, answer, _ = check(home)
    resume = by_name(answer)["resume"]
    assert resume["state"] == "warn", resume
    assert resume["summary"].startswith("the host cannot tell who connects (no /proc/net/tcp)")
    home.add_host("local", peer_check="off")
    _, answer, _ = check(home)
    resume = by_name(answer)["resume"]
    assert resume["state"] == "ok", resume
    assert resume["summary"] == (
        "off: peer_check = off (the agent admits only the user's own); "
        "kernels end with their connection"
    )


SOCK_DIAG = "/proc (no net/: relay's agent tells who connects by sock_diag)"


@pytest.mark.sshd_options(proc_pids_only=True)
def test_a_proc_without_net_passes_where_the_agent_asks_sock_diag(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    """/proc mounted subset=pid has no net/, but relay's agent asks the kernel (sock_diag)
    and launches through it work: step 6 said "no /proc/net/tcp: relay cannot tell who
    connects to a link; launches fail", and step 7 that kernels end with their connection
    (a review's finding). Every step passes, the probe's launch through the agent too."""
    status, answer, text = check(home)
    results = by_name(answer)
    assert status == 0, text
    assert {r["state"] for r in answer["results"]} == {"ok"}, text
    assert results["remote host"]["summary"] == f"POSIX sh, mktemp, writable TMPDIR, {SOCK_DIAG}"
    assert "sock_diag" in results["remote host"]["data"]["show"]["who connects"], text
    assert results["resume"]["summary"].endswith("for their connection to come back"), text


@pytest.mark.sshd_options(proc_pids_only=True)
def test_a_proc_without_net_with_a_window_of_0_says_launches_fail(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    """resume_window_s = 0 keeps today's path, whose supervisor.sh reads /proc/net/tcp alone:
    step 6 says launches fail there, and what lets them run; the round trip meets it."""
    home.add_host("local", resume_window_s=0)
    _, answer, text = check(home)
    results = by_name(answer)
    remote = results["remote host"]
    assert remote["state"] == "warn", text
    assert remote["summary"].endswith(
        "no /proc/net/tcp: with resume_window_s = 0 relay cannot tell who connects to a link "
        "(the kernel answers here by sock_diag, but only relay's agent asks it); launches fail "
        'unless peer_check = "off" for local, or set resume_window_s above 0 for local (900 '
        "unless set) to launch through the agent"
    ), text
    assert "who connects" not in remote["data"]["show"], text
    assert first_failure(answer)["name"] == "round trip", text


@pytest.mark.sshd_options(proc_pids_only=True, options={"AllowStreamLocalForwarding": "no"})
def test_a_proc_without_net_where_the_agent_cannot_run_launches_nothing(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    """sock_diag answers, but sshd will not reach the agent's socket: kernels take today's
    path, which cannot tell who connects there, so nothing launches; step 7 says so."""
    _, answer, text = check(home)
    results = by_name(answer)
    assert results["remote host"]["state"] == "ok", text
    failed = first_failure(answer)
    assert failed["name"] == "resume", text
    assert failed["summary"].startswith("sshd refuses Unix socket forwarding"), text
    assert "without relay's agent relay cannot tell who connects" in failed["summary"], text
    assert failed["summary"].endswith("no kernel can launch here"), text
    assert 'or peer_check = "off" for local' in failed["advice"], text


@pytest.mark.sshd_options(hide_proc=True)
def test_a_host_that_cannot_tell_who_connects_says_launches_fail(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    """No /proc at all: neither /proc/net/tcp nor the agent's sock_diag (which needs the
    processes' /proc too) tells who connects. Step 6 says launches fail, and they do; with
    peer_check = "off" nothing asks, and it does not say so (it did)."""
    _, answer, text = check(home)
    results = by_name(answer)
    remote = results["remote host"]
    assert remote["state"] == "warn", text
    assert remote["summary"].endswith(
        "no /proc/net/tcp: relay cannot tell who connects to a link (nor does the kernel "
        'answer relay\'s agent by sock_diag); launches fail unless peer_check = "off" for local'
    ), text
    assert first_failure(answer)["name"] == "round trip", text
    home.add_host("local", peer_check="off")
    status, answer, text = check(home)
    remote = by_name(answer)["remote host"]
    assert status == 0 and remote["state"] == "ok", text
    assert remote["summary"].endswith("peer_check = off, who connects is not asked)"), text


def test_the_owner_check_switched_off_where_it_could_run_is_a_warning(home: RelayHome) -> None:
    """peer_check = "off" on a host with /proc/net/tcp takes resuming with it and lets
    another user of the host connect first, for no need of the host's: said as a warning,
    with the setting that keeps both."""
    home.add_host("local", peer_check="off")
    _, answer, _ = check(home)
    resume = by_name(answer)["resume"]
    assert resume["state"] == "warn", resume
    assert resume["summary"].startswith("off: peer_check = off"), resume
    assert 'set peer_check = "uid" (the default) for local' in resume["advice"], resume


def test_a_window_keepalive_outlasts_is_a_warning(home: RelayHome) -> None:
    """The window counts from the last word heard; a connection that goes silent is found
    lost only keepalive_interval_s x keepalive_count_max later: a window no longer than that
    ends the kernels before relay can resume them."""
    home.add_host("local", resume_window_s=10, keepalive_interval_s=5, keepalive_count_max=3)
    _, answer, _ = check(home)
    resume = by_name(answer)["resume"]
    assert resume["state"] == "warn", resume
    assert (
        "kernels wait 10 s, but a connection that goes silent is found lost only after 15 s"
        in (resume["summary"])
    ), resume
    assert "raise resume_window_s for local well above 15 s" in resume["advice"], resume


def test_a_slurm_hosts_resume_line_is_its_compute_nodes(home: RelayHome) -> None:
    """A Slurm host runs no kernel on its login node: each compute node's connection has its
    own agent, so the resume line is the nodes' (python3 here stands for theirs). A window of
    0 is said off, as for any host: the nodes' kernels end with their connections. (Its
    later steps need a Slurm cluster; the resume step does not.)"""
    slurm = {"partition": "debug", "time": "10"}
    home.add_host("local", resume_window_s=0, slurm=slurm)
    _, answer, text = check(home)
    resume = by_name(answer)["resume"]
    assert resume["state"] == "ok", text
    assert resume["summary"] == ("off: resume_window_s = 0; kernels end with their connection"), (
        text
    )
    home.add_host("local", resume_window_s=600, slurm=slurm)
    _, answer, text = check(home)
    resume = by_name(answer)["resume"]
    assert resume["state"] == "ok", text
    assert resume["summary"].startswith("python3 3."), text
    assert resume["summary"].endswith("kernels wait 600 s for their connection to come back")


# a TMPDIR whose Unix sockets' paths pass the 108 bytes sockaddr_un holds
LONG_TMPDIR = "/tmp/relay-test-" + "t" * 100


@pytest.mark.sshd_options(options={"SetEnv": f"TMPDIR={LONG_TMPDIR}"})
def test_the_resume_line_says_when_the_host_cannot_listen_on_a_unix_socket(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    """The resume line's probe listens on a Unix socket under TMPDIR, as the agent does; where
    it cannot, the line says why instead of blaming sshd."""
    Path(LONG_TMPDIR).mkdir(exist_ok=True)
    try:
        _, answer, _ = check(home)
        left = [p.name for p in Path(LONG_TMPDIR).iterdir() if p.name.startswith("relay-check")]
    finally:
        shutil.rmtree(LONG_TMPDIR)
    assert not left  # the probe removed its directory
    resume = by_name(answer)["resume"]
    assert resume["state"] == "warn", resume
    assert resume["summary"].startswith("cannot test Unix socket forwarding: python3 said"), resume
    assert "AF_UNIX path too long" in resume["summary"], resume
    assert "under the host's TMPDIR too (step 6 shows it)" in resume["advice"], resume
    assert "set a shorter TMPDIR for your account on the host" in resume["advice"], resume


@pytest.mark.sshd_options(options={"MaxSessions": "1"})
def test_one_session_at_a_time_and_a_start_up_that_never_ends_names_the_start_up(
    home: RelayHome, server: ThrowawaySSHD
) -> None:
    """MaxSessions 1 and a ~/.bashrc that waits: the second session was refused, the first
    never ended, and the one tried alone was refused too, said as an error check does not
    know (a review's finding). It is the start-up that never ends."""
    answer, text = check_with_a_start_up_that_never_ends(home, server)
    failed = first_failure(answer)
    assert failed["name"] == "server", text
    assert "did not finish within 2 s" in failed["summary"], text
    assert "start-up files" in failed["advice"], text
