"""Every command relay runs on a host goes through the account's login shell: sshd runs
``$SHELL -c COMMAND``. Each of relay's remote scripts, run here exactly so under every login
shell this machine has (tcsh and fish are the ones that differ: tcsh substitutes history at a
``!`` inside single quotes and refuses newlines there; fish has no ``x=$(...)``), with its
standard input as relay writes it: the script's line, then what the script reads.
(tests/e2e/test_login_shell.py logs in through sshd as such an account.)"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from relay.agent.session import AgentInfo
from relay.agent.start import parse_install_and_start
from relay.check import (
    HOST_PROBE,
    OWNERS_LINE,
    OWNERS_PROBE,
    PLACE_PROBE,
    ROUND_TRIP_PROBE,
    SOCKET_LINE,
    SOCKET_PROBE,
)
from relay.checkview import login_seconds, parse_probe
from relay.ssh import remote_scripts
from relay.ssh.hookfile import HookFile, agent_file, parse_answer
from relay.ssh.remote_scripts import BOOTSTRAP, Remote, hook_install_command, remote_command
from relay.ssh.supervisor import parse_line
from tests.conftest import installed
from tests.streams.test_agent_local import Agent, interpreters

SHELLS = ["sh", "dash", "bash", "zsh", "csh", "tcsh", "fish"]
# tcsh and fish are what .ci/run installs for this test; a developer's machine may lack them
REQUIRED = {"sh", "bash", "tcsh", "fish"} if os.environ.get("CI") else {"sh"}


@pytest.fixture(params=SHELLS)
def login_shell(request: pytest.FixtureRequest) -> str:
    return installed(request.param, REQUIRED)


def run(shell: str, remote: Remote, data: bytes = b"", env: dict[str, str] | None = None) -> bytes:
    """As sshd runs a session's command: the login shell with -c, stdin a pipe."""
    done = subprocess.run(
        [shell, "-c", remote.command],
        input=remote.preamble + data,
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.startswith(b"\n"), done.stdout  # CUT_CHATTER's, before the script's own
    return done.stdout[1:]


def test_the_bootstrap_hands_the_script_its_arguments_and_the_rest_of_stdin(
    login_shell: str,
) -> None:
    rest = bytes(range(256)) * 64  # binary, with newlines and quotes: not for the shell
    remote = remote_scripts.script(
        'printf "%s|%s|%s\\n" "$0" "$1" "$2"; cat | sha256sum', "one", "two words"
    )
    out = run(login_shell, remote, rest).decode()
    assert out.splitlines() == ["relay|one|two words", hashlib.sha256(rest).hexdigest() + "  -"]
    assert set(BOOTSTRAP) & set("!\\\n") == set()


def test_the_hook_installer(login_shell: str, tmp_path: Path) -> None:
    hook = HookFile("T.wl", b"(* a hook *)\n'!' \\ $HOME\n")
    env = {**os.environ, "HOME": str(tmp_path)}
    remote = hook_install_command(hook.version, hook.name, size=len(hook.data))
    path = parse_answer("h", hook, 0, run(login_shell, remote, hook.data, env))
    assert Path(path).read_bytes() == hook.data


def test_the_hook_installer_in_a_home_with_a_space(tmp_path: Path) -> None:
    """hookinstall.sh answers "ok PATH"; relay split the line at every space and refused its
    own success where HOME had one (a review's finding: /home/John Smith)."""
    hook = HookFile("T.wl", b"(* a hook *)\n")
    home = tmp_path / "John Smith"
    home.mkdir()
    remote = hook_install_command(hook.version, hook.name, size=len(hook.data))
    path = parse_answer(
        "h", hook, 0, run("sh", remote, hook.data, {**os.environ, "HOME": str(home)})
    )
    assert path.startswith(f"{home}/") and Path(path).read_bytes() == hook.data


# An xterm title in ~/.bashrc, with no newline after it: what the login shell prints before
# every command (a review's finding: every launch failed, and `relay check` blamed /bin/sh)
TITLE = "printf '\\033]0;%s\\007' cluster-login; "


def run_after_a_title(remote: Remote, data: bytes = b"", env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["sh", "-c", TITLE + remote.command],
        input=remote.preamble + data,
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.startswith(b"\x1b]0;cluster-login\x07\n"), done.stdout
    return done.stdout.decode()


def test_what_reads_a_scripts_output_gets_past_a_title_with_no_newline(tmp_path: Path) -> None:
    hook = HookFile("T.wl", b"(* a hook *)\n")
    remote = hook_install_command(hook.version, hook.name, size=len(hook.data))
    out = run_after_a_title(remote, hook.data, {**os.environ, "HOME": str(tmp_path)})
    assert Path(parse_answer("h", hook, 0, out.encode())).read_bytes() == hook.data
    assert parse_probe(run_after_a_title(remote_scripts.script(HOST_PROBE)))["sh"] == "ok"
    out = run_after_a_title(remote_command("00ff", stale_after_s=3600), b"ping p1\n")
    events = [event for line in out.splitlines() if (event := parse_line(line))]
    assert [event.kind for event in events] == ["hello", "pong"], out
    agent = HookFile("relayagent.py", STAND_IN)
    remote = hook_install_command(
        agent.version, agent.name, size=len(agent.data), agent=("00ff", 900, 7)
    )
    out = run_after_a_title(remote, agent.data, {**os.environ, "HOME": str(tmp_path)})
    started = parse_install_and_start("h", 0, out.encode(), file=agent)
    assert isinstance(started, tuple) and started[0].pid == 42, (started, out)


# relayagent.py's stand-in: its start line, if its words are the ones relay gives it
STAND_IN = (
    b"import sys\n"
    b"ok = sys.argv[1:] == ['start', '00ff', '900', '7'] and sys.flags.isolated\n"
    b"line = 'agent 1 %s 42 /tmp/x.sock 0 proc 0' % ('ab' * 32)\n"
    b"print(line if ok else 'agent wrong %r' % sys.argv)\n"
)


def test_the_supervisor_says_hello_and_answers(login_shell: str) -> None:
    remote = remote_command("00ff", stale_after_s=3600)
    done = subprocess.run(
        [login_shell, "-c", remote.command],
        input=remote.preamble + b"ping p1\n",
        capture_output=True,
        timeout=60,
    )
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "" and lines[1].startswith("hello "), (lines, done.stderr)
    assert "pong p1" in lines, (lines, done.stderr)


def test_the_agents_start_where_there_is_no_python3(login_shell: str, tmp_path: Path) -> None:
    """The command and the agent's file, with python3 off the PATH: nothing installed, and
    the input read to its end (the agent itself is started through sshd in
    tests/e2e/test_login_shell.py)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cat", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    env = {**os.environ, "PATH": str(bin_dir), "HOME": str(tmp_path)}
    agent = HookFile("relayagent.py", STAND_IN)
    remote = hook_install_command(
        agent.version, agent.name, size=len(agent.data), agent=("00ff", 900, 7)
    )
    out = run(login_shell, remote, agent.data, env)
    assert "no python3" in str(parse_install_and_start("h", 0, out, file=agent))
    assert not (tmp_path / ".cache").exists()


def test_the_agent_is_installed_and_started_in_one_session(
    login_shell: str, tmp_path: Path
) -> None:
    """The installer starts the file it installed, with its words (and -I), where the login
    shell would not read the home's name back from a command line: the path is the
    installer's, which only /bin/sh reads. A slow login is paid once, not twice."""
    home = tmp_path / "it's a home!"
    home.mkdir()
    agent = HookFile("relayagent.py", STAND_IN)
    remote = hook_install_command(
        agent.version, agent.name, size=len(agent.data), agent=("00ff", 900, 7)
    )
    # a TMPDIR of its own: an old-path session of tag 00ff there (another test's, running
    # beside it) would be said as "supervised"
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp_path)}
    out = run(login_shell, remote, agent.data, env)
    started = parse_install_and_start("h", 0, out, file=agent)
    assert isinstance(started, tuple), (started, out)
    assert started == (AgentInfo(42, "/tmp/x.sock", 0, True, 0), "ab" * 32)
    assert (home / ".cache" / "relay" / agent.version / agent.name).read_bytes() == STAND_IN


def test_relay_checks_probes(login_shell: str, tmp_path: Path) -> None:
    probe = parse_probe(run(login_shell, remote_scripts.script(HOST_PROBE)).decode())
    assert probe["sh"] == "ok" and probe["tmpdir_writable"] == "ok", probe
    assert login_seconds(probe) is not None, probe  # the process kept through every exec
    env = {**os.environ, "HOME": str(tmp_path)}
    placed = run(login_shell, remote_scripts.script(PLACE_PROBE), ROUND_TRIP_PROBE.encode(), env)
    path = Path(placed.decode())
    assert path.parent == tmp_path / ".cache" / "relay", path  # not TMPDIR, often noexec
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    try:
        assert path.read_text() == ROUND_TRIP_PROBE and os.access(path, os.X_OK)
    finally:
        run(login_shell, remote_scripts.script(f"rm -f {path}"))
    assert not path.exists()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp_path / ".cache").chmod(0o777)  # another user could swap ~/.cache/relay under it
    env["TMPDIR"] = str(tmp)
    placed = run(login_shell, remote_scripts.script(PLACE_PROBE), ROUND_TRIP_PROBE.encode(), env)
    assert Path(placed.decode()).parent == tmp, placed  # mktemp's private name instead


def socket_probe(shell: str, env: dict[str, str] | None = None, connect: bool = True) -> None:
    """relay check's Unix socket probe as sshd runs it: it says its socket's path, takes the
    connection sshd's forward would make, and goes, with its directory, when its input ends."""
    remote = remote_scripts.script(SOCKET_PROBE)
    with subprocess.Popen(
        [shell, "-c", remote.command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(remote.preamble)
        proc.stdin.flush()
        assert proc.stdout.readline() == b"\n"  # CUT_CHATTER's
        said = proc.stdout.readline().decode()
        assert said.startswith(SOCKET_LINE), said
        path = Path(said.removeprefix(SOCKET_LINE).rstrip("\n"))
        assert path.is_socket() and (path.parent.stat().st_mode & 0o777) == 0o700, path
        if connect:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert not path.parent.exists()


def test_relay_checks_socket_probe(login_shell: str) -> None:
    socket_probe(login_shell)
    socket_probe(login_shell, connect=False)  # sshd refused: nothing connects


@pytest.mark.parametrize("python", interpreters())
def test_relay_checks_socket_probe_runs_on_every_python(python: str, tmp_path: Path) -> None:
    (tmp_path / "python3").symlink_to(python)
    socket_probe("sh", {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})


@pytest.mark.parametrize("too_long", [False, True])
def test_relay_checks_socket_probe_binds_where_the_agent_binds(
    short_tmp: Path, too_long: bool
) -> None:
    """The probe's socket path is as long as the agent's ($TMPDIR/relay-agent-UID/TAG.sock),
    so a TMPDIR that leaves the agent's one byte too many for a socket (sockaddr_un holds
    107 and a NUL) fails both, and one a byte shorter neither."""
    agents_path = len(f"/relay-agent-{os.getuid()}/{'0' * 16}.sock")
    tmpdir = short_tmp / "t"
    tmpdir = Path(f"{tmpdir}{'x' * (107 + too_long - agents_path - len(str(tmpdir)))}")
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    remote = remote_scripts.script(SOCKET_PROBE)
    done = subprocess.run(
        ["sh", "-c", remote.command],
        input=remote.preamble,
        capture_output=True,
        timeout=60,
        env=env,
    )
    agent = Agent(sys.executable, tmpdir, "0123456789abcdef")
    if too_long:
        assert b"AF_UNIX path too long" in done.stderr, done
        # the agent says it before it binds: a setting to change, not a crash
        assert "is too long for a socket path (set a shorter TMPDIR" in str(agent.info), agent.info
    else:
        assert done.returncode == 0 and done.stdout.startswith(b"\n" + SOCKET_LINE.encode()), done
        assert len(done.stdout.decode().strip().removeprefix(SOCKET_LINE)) == 107
        assert isinstance(agent.info, AgentInfo) and len(agent.info.socket) == 107, agent.info
        agent.goodbye()


def test_relay_checks_owners_probe_runs_the_agents_own(login_shell: str) -> None:
    """relay check's question to a host with no /proc/net/tcp: the agent's file, on the
    probe's input, says what its start line would (this machine has /proc/net/tcp)."""
    out = run(login_shell, remote_scripts.script(OWNERS_PROBE), agent_file().data)
    assert out == (OWNERS_LINE + "proc\n").encode(), out


@pytest.mark.parametrize("python", interpreters())
def test_relay_checks_owners_probe_runs_on_every_python(python: str, tmp_path: Path) -> None:
    (tmp_path / "python3").symlink_to(python)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    out = run("sh", remote_scripts.script(OWNERS_PROBE), agent_file().data, env)
    assert out == (OWNERS_LINE + "proc\n").encode(), out


def test_arguments_every_shell_reads_back_or_a_clear_refusal() -> None:
    assert remote_scripts.script("true", "/h/a b/x.py").command.endswith(" '/h/a b/x.py'")
    # zsh reads a bare =word as a command's path, old fish a bare %word as a process
    assert remote_scripts.script("true", "=x", "%self").command.endswith(" '=x' '%self'")
    for bad in ("it's", "a!b", "a\\b", ""):
        with pytest.raises(ValueError, match="every login shell"):
            remote_scripts.script("true", bad)
    with pytest.raises(ValueError, match="one line"):
        remote_scripts.script("echo a\necho b")
