"""Another user on either machine races a link's listeners: nothing gets through, the launch
still succeeds. The stranger is a real second uid (``nobody`` through ``setpriv``), on the
remote host before a slow kernel connects, and on the front end's machine before the front
end connects to an exposed link."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.sim import frontend, wire
from relay.sim.frontend import read_data
from relay.sim.sshd import ThrowawaySSHD
from tests.conftest import (
    SIM_KERNEL,
    KernelGate,
    RelayHome,
    RunningDaemon,
    run_shim,
    start_daemon,
)
from tests.e2e.helpers import controller, expose_listening_kernel, request

STRANGER = Path(__file__).with_name("stranger.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody, unlike a venv under /root
NOBODY = 65534

pytestmark = [
    pytest.mark.second_uid,
    # one worker (make test runs pytest-xdist): peer_login makes and removes PEER_USER, a
    # name this machine has once
    pytest.mark.xdist_group("relaypeer"),
    pytest.mark.skipif(
        os.getuid() != 0 or not shutil.which("setpriv") or not os.path.exists(SYSTEM_PYTHON),
        reason="acting as a second user (or hiding /proc) needs root, setpriv, /usr/bin/python3",
    ),
]

AS_NOBODY = f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups {SYSTEM_PYTHON} {STRANGER}"


def refusals(daemon_log: io.StringIO, *, closing: bool = False) -> list[dict[str, object]]:
    """The daemon's log lines of refusals: of another user's process; and with ``closing``,
    of a socket that closed before it was checked too (a stranger that writes and closes at
    once may be checked while its socket is live, or after), which is not said as anyone's."""
    events = [json.loads(line) for line in daemon_log.getvalue().splitlines() if line.strip()]
    found = [e for e in events if e.get("event") == STRANGER_LINE]
    if closing:
        found += [
            e for e in events if e.get("event") == UNCHECKED_LINE and e.get("reason") == CLOSED
        ]
    return found


STRANGER_LINE = "refused a connection from another user's process"
UNCHECKED_LINE = "refused a connection relay could not check the owner of"
CLOSED = "closed before it could be checked (a closing socket is nobody's)"


def kernel_after(directory: Path, stranger: str, name: str = "stranger") -> tuple[str, Path]:
    """A kernel that first runs ``stranger PORT1 PORT2`` against both of its link's ports,
    then starts (a real kernel is slow to start: the stranger has all the time it needs)."""
    result = directory / f"{name}.json"
    script = directory / f"{name}-kernel.sh"
    script.write_text(
        "#!/bin/sh\n"
        'prev=; for a; do [ "$prev" = -LinkName ] && name=$a; prev=$a; done\n'
        "p1=${name%%@*}; rest=${name#*,}; p2=${rest%%@*}\n"
        f'{stranger} "$p1" "$p2" >{result}\n'
        f'exec {SIM_KERNEL} "$@"\n'
    )
    script.chmod(0o755)
    return str(script), result


def kernel_racing_a_stranger(directory: Path) -> tuple[str, Path]:
    """Another user connects to both ports and waits to be given bytes."""
    return kernel_after(directory, AS_NOBODY)


Seen = dict[str, dict[str, object]]


async def controller_gets_its_kernel(home: RelayHome, kernel: str, result: Path) -> Seen:
    """A controller launched with ``kernel`` (which lets a stranger at its ports first) gets
    the real kernel, greeted with intact bytes, and nothing of the stranger; what the
    stranger saw."""
    async with controller(home, kernel=kernel) as fe:
        assert fe.link.greetings is not None  # the front end writes the instant it accepts
        kl = await fe.link.accept(60)
        assert await kl.echo(b"mine") == b"mine"
        seen: Seen = json.loads(result.read_text())
        assert all(s["connected"] for s in seen.values()), seen
        assert fe.link.extra_connections == 0, "the front end saw the stranger"
        await kl.quit(0)
        status, _, err = await fe.result()
        assert status == 0, err
        await kl.aclose()
    return seen


async def exposed_link_survives(home: RelayHome, stranger: str) -> Seen:
    """A kernel listening on the remote host (it writes its HELLO the moment it accepts),
    exposed locally; ``stranger PORT1 PORT2`` races its local listeners first, then the
    user's own front end connects and gets the link. What the stranger saw."""
    listener, local = await expose_listening_kernel(home, "local")
    racer = await asyncio.create_subprocess_shell(
        f"{stranger} {local.data.port} {local.message.port}", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(racer.communicate(), 60)
    seen: Seen = json.loads(out)
    assert all(s["connected"] for s in seen.values()), seen
    streams = [
        await asyncio.open_connection(ep.host, ep.port) for ep in (local.data, local.message)
    ]
    kind, _hello = await read_data(streams[0][0])
    assert kind == wire.HELLO
    streams[0][1].write(wire.data_frame(wire.QUIT, b"0"))
    assert await asyncio.wait_for(listener.wait(), 30) == 0
    for _, w in streams:
        w.close()
        await w.wait_closed()
    return seen


def given_nothing(seen: Seen) -> bool:
    """The stranger's connections were closed unread, with no byte given."""
    return all(s["bytes"] == 0 and s["eof"] for s in seen.values())


async def test_a_stranger_on_the_remote_host_gets_nothing_and_the_kernel_its_link(
    daemon: RunningDaemon, daemon_log: io.StringIO
) -> None:
    kernel, result = kernel_racing_a_stranger(daemon.home.dir)
    assert given_nothing(await controller_gets_its_kernel(daemon.home, kernel, result))
    found = refusals(daemon_log)
    assert found and {e["foreign_uid"] for e in found} == {NOBODY}
    assert {e["side"] for e in found} == {"remote"}


async def test_a_stranger_on_the_front_ends_machine_gets_nothing_from_an_exposed_link(
    daemon: RunningDaemon, daemon_log: io.StringIO
) -> None:
    assert given_nothing(await exposed_link_survives(daemon.home, AS_NOBODY))
    found = refusals(daemon_log)
    assert found and {e["foreign_uid"] for e in found} == {NOBODY}
    assert {e["side"] for e in found} == {"local"}


def kernel_behind_a_closing_stranger(directory: Path, junk: int) -> tuple[str, Path]:
    """Issue 23's attack on both ports (junk connections queued first, then a write, a
    half-close and a close at once), by another user."""
    return kernel_after(directory, f"{AS_NOBODY} --closing {junk}", "closing")


CLOSING_ROUNDS = 5  # the attack won 3 times out of 3 before the fix (issue 23)


async def test_a_strangers_closing_socket_is_nobodys_on_the_remote_host(
    daemon: RunningDaemon, daemon_log: io.StringIO
) -> None:
    """Logged in as root: a socket the stranger already closed reads uid 0 in /proc/net/tcp.
    It must never pass for the login's; the real kernel still gets its link, every time."""
    assert daemon.home.sshd is not None and daemon.home.sshd.user == "root"
    for _ in range(CLOSING_ROUNDS):
        kernel, result = kernel_behind_a_closing_stranger(daemon.home.dir, junk=8)
        await controller_gets_its_kernel(daemon.home, kernel, result)
    found = refusals(daemon_log, closing=True)
    assert found and {e["side"] for e in found} == {"remote"}


async def test_a_strangers_closing_socket_is_nobodys_on_the_front_ends_machine(
    daemon: RunningDaemon, daemon_log: io.StringIO
) -> None:
    """The daemon runs as root: the same attack on an exposed link's local listeners."""
    assert os.getuid() == 0
    for _ in range(CLOSING_ROUNDS):
        await exposed_link_survives(daemon.home, f"{AS_NOBODY} --closing 8")
    found = refusals(daemon_log, closing=True)
    assert found and {e["side"] for e in found} == {"local"}


FROM_ELSEWHERE = f"{SYSTEM_PYTHON} {STRANGER} --from 127.0.0.2"
ELSEWHERE = "from 127.0.0.2, not 127.0.0.1"


async def test_the_users_own_process_from_another_local_address_is_refused_remotely(
    daemon: RunningDaemon, daemon_log: io.StringIO
) -> None:
    """A connection to a 127.0.0.1 listener from 127.0.0.2 is not looked up by port alone:
    the originating address must be the listener's own loopback address."""
    kernel, result = kernel_after(daemon.home.dir, FROM_ELSEWHERE, "elsewhere")
    assert given_nothing(await controller_gets_its_kernel(daemon.home, kernel, result))
    assert {e["foreign_uid"] for e in refusals(daemon_log)} == {ELSEWHERE}


async def test_the_users_own_process_from_another_local_address_is_refused_locally(
    daemon: RunningDaemon, daemon_log: io.StringIO
) -> None:
    assert given_nothing(await exposed_link_survives(daemon.home, FROM_ELSEWHERE))
    found = refusals(daemon_log)
    assert {e["foreign_uid"] for e in found} == {ELSEWHERE}
    assert {e["side"] for e in found} == {"local"}


PEER_USER = "relaypeer"  # a login that is not root: its kernels run as another uid than ours


@dataclass
class PeerLogin:
    """A real non-root account on the "remote host", and an sshd that lets relay log in as it."""

    name: str
    uid: int
    home: Path
    sshd: ThrowawaySSHD


@pytest.fixture(scope="module")
def peer_login(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerLogin]:
    home = Path(tempfile.mkdtemp(prefix="relaypeer-", dir="/tmp"))
    created = False
    try:
        pwd.getpwnam(PEER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh",
             "--no-user-group", "--gid", str(NOBODY), PEER_USER],
            check=True,
        )  # fmt: skip
        created = True
    entry = pwd.getpwnam(PEER_USER)
    server = ThrowawaySSHD(
        tmp_path_factory.mktemp("peersshd"),
        options={"AuthorizedKeysFile": str(home / "authorized_keys")},
    )
    server.prepare()
    (home / "authorized_keys").write_text(server.authorized_keys.read_text())
    home.chmod(0o755)
    # the kernel simulator, where the user can run it (the venv's interpreter may sit in a
    # home only root can enter): the system's Python 3 with relay's own package beside it
    shutil.copytree(Path(__file__).parents[2] / "relay", home / "relay")
    # sshd reads authorized_keys as the user; its home must be the one passwd gives it
    # (and with UsePAM no, sshd refuses a locked account: useradd's "!" password is locked,
    # "*" is merely no password, which key authentication does not need)
    subprocess.run(["usermod", "--home", str(home), "--password", "*", PEER_USER], check=True)
    for path in (home, home / "authorized_keys"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    server.user = PEER_USER
    try:
        with server:
            yield PeerLogin(PEER_USER, entry.pw_uid, home, server)
    finally:
        if created:
            subprocess.run(["userdel", "--force", PEER_USER], check=False)  # sessions may linger
        shutil.rmtree(home, ignore_errors=True)


async def test_a_strangers_closing_socket_is_refused_for_a_non_root_login(
    home: RelayHome, peer_login: PeerLogin, daemon_log: io.StringIO
) -> None:
    """The same attack when relay logs in as an ordinary user: the kernel runs as that user,
    which cannot become the stranger itself, so the test runs the stranger while the kernel
    waits at a gate, its ports written down."""
    home.sshd = peer_login.sshd
    async with KernelGate(peer_login.home / "gate") as gate:
        gate.path.chmod(0o777)
        ports = peer_login.home / "ports"
        script = peer_login.home / "gated-kernel.sh"
        script.write_text(
            "#!/bin/sh\n"
            'prev=; for a; do [ "$prev" = -LinkName ] && name=$a; prev=$a; done\n'
            "p1=${name%%@*}; rest=${name#*,}; p2=${rest%%@*}\n"
            f'echo "$p1 $p2" >{ports}.new && mv {ports}.new {ports}\n'
            f"PYTHONPATH={peer_login.home} exec {SYSTEM_PYTHON} -c "
            '"import sys; from relay.sim.kernel import main; sys.exit(main())" '
            f'-simgate {gate.path} "$@"\n'
        )
        script.chmod(0o755)
        home.add_host("peer", user=peer_login.name, kernel=str(script), dynamic=False)
        async with start_daemon(home):
            for _ in range(CLOSING_ROUNDS):
                gate.arrived.clear()
                async with controller(home, host="peer", kernel=str(script)) as fe:
                    # the kernel reaches its gate, or the shim says why it could not
                    arrived = asyncio.ensure_future(gate.arrived.wait())
                    ended = asyncio.ensure_future(fe.proc.wait())
                    await asyncio.wait({arrived, ended}, timeout=60, return_when="FIRST_COMPLETED")
                    ended.cancel()
                    assert arrived.done(), await fe.result()
                    p1, p2 = ports.read_text().split()
                    stranger = await asyncio.create_subprocess_shell(
                        f"{AS_NOBODY} --closing 8 {p1} {p2}", stdout=asyncio.subprocess.PIPE
                    )
                    out, _ = await asyncio.wait_for(stranger.communicate(), 60)
                    assert all(s["connected"] for s in json.loads(out).values()), out
                    gate.open()
                    kl = await fe.link.accept(60)
                    assert await kl.echo(b"mine") == b"mine"
                    assert fe.link.extra_connections == 0, "the front end saw the stranger"
                    await kl.quit(0)
                    status, _, err = await fe.result()
                    assert status == 0, err
                    await kl.aclose()
                gate.opened = False
    found = refusals(daemon_log, closing=True)
    assert found and {e["side"] for e in found} == {"remote"}


@pytest.fixture(scope="module")
def no_proc_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawaySSHD]:
    """A host with no /proc (as a Mac or a BSD): it cannot tell who owns a socket."""
    with ThrowawaySSHD(tmp_path_factory.mktemp("noproc"), hide_proc=True) as server:
        yield server


async def test_a_host_that_cannot_tell_fails_launches_at_once_unless_peer_check_is_off(
    home: RelayHome, no_proc_sshd: ThrowawaySSHD
) -> None:
    home.sshd = no_proc_sshd
    home.hosts = {"blind": {}, "trusting": {"peer_check": "off"}}
    async with start_daemon(home):
        link = await frontend.ListeningLink.create()
        blind = await run_shim(home, "--compute", "blind", SIM_KERNEL, str(link.name))
        assert blind.status == 1
        assert blind.stderr.count("\n") == 1
        assert "cannot tell which user connects" in blind.stderr
        assert 'peer_check = "off" in [hosts.blind]' in blind.stderr
        assert link.extra_connections == 0
        trusting = await run_shim(home, "--compute", "trusting", SIM_KERNEL, str(link.name))
        assert trusting.status == 0, trusting.stderr
        kl = await link.accept(60)
        await kl.quit(0)
        await kl.aclose()
        link.close()
        answer = await request(home, {"op": "status"})
        hosts = answer["hosts"]
        assert isinstance(hosts, list)
        checks = {h["name"]: h["peer_check"] for h in hosts}
        assert checks["blind"]["remote"] == "unavailable"
        assert checks["trusting"]["remote"] == "off"


# Another user's listener on a port the front end gave up: ready once listening, then how
# many bytes the one connection it takes brought before it ended (-1: none came)
TAKE_PORT = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); s.settimeout(60)
print("ready", flush=True)
try:
    c, _ = s.accept()
except OSError:
    print(-1, flush=True); sys.exit()
c.settimeout(20); n = 0
try:
    while True:
        d = c.recv(4096)
        if not d: break
        n += len(d)
except OSError:
    pass
print(n, flush=True)
"""


async def _taken_by_nobody(port: int) -> asyncio.subprocess.Process:
    """Another user's listener on ``port`` (TAKE_PORT), once it listens."""
    squat = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        SYSTEM_PYTHON, "-c", TAKE_PORT, str(port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert squat.stdout is not None
    assert (await asyncio.wait_for(squat.stdout.readline(), 60)).strip() == b"ready"
    return squat


async def _given(squat: asyncio.subprocess.Process) -> list[bytes]:
    """What a TAKE_PORT listener said (the bytes its connection brought), or nothing if no
    connection came to it within a few seconds (it is killed then)."""
    try:
        out, _ = await asyncio.wait_for(squat.communicate(), 10)
    except TimeoutError:
        squat.kill()
        out, _ = await squat.communicate()
    return out.split()


@pytest.mark.parametrize("path", ["agent", "sshd"])
async def test_a_front_end_port_another_user_took_is_not_given_the_kernel(
    home: RelayHome, path: str
) -> None:
    """The front end gives a launch up (its listeners closed) while the kernel starts, and
    another user takes both ports. When the kernel calls back, relay's connections reach the
    stranger's listeners: each is closed with no byte of the kernel's given, and the launch
    fails with a line saying whose listener it was (not the kernel's link handed to another
    user, who could then run code as the user on the remote host)."""
    async with KernelGate(home.dir / "gate") as gate:
        home.add_host(
            "local",
            controller_args=["-simgate", str(gate.path)],
            resume_window_s=900 if path == "agent" else 0,  # 0: sshd's listeners
        )
        async with start_daemon(home), controller(home) as fe:
            await asyncio.wait_for(gate.arrived.wait(), 60)  # the kernel waits to call back
            name = fe.link.name
            fe.link.close()  # the front end gave up
            squats = [await _taken_by_nobody(ep.port) for ep in (name.data, name.message)]
            try:
                gate.open()
                status, _, err = await fe.result(60)
                given = [await _given(squat) for squat in squats]
            finally:
                for squat in squats:
                    if squat.returncode is None:
                        squat.kill()
                        await squat.wait()
        assert status != 0 and len(err.strip().splitlines()) == 1, err
        assert "the front end's port" in err and "another user's listener" in err, err
        assert any(given) and all(g in ([], [b"0"]) for g in given), given  # given nothing
