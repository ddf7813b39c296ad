"""relay.daemontag: a daemon's tag is the same across its restarts on one machine and differs
between two machines that share a host name, a uid and a socket path."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from relay.daemontag import ID_FILE, daemon_tag, state_dir

SOCKET = Path("/run/user/501/relay/relay.sock")


def machine(state: Path) -> dict[str, str]:
    return {"HOME": str(state.parent), "XDG_STATE_HOME": str(state)}


def test_a_restarted_daemon_has_its_predecessors_tag(tmp_path: Path) -> None:
    first, problem = daemon_tag(SOCKET, machine(tmp_path / "state"))
    again, _ = daemon_tag(SOCKET, machine(tmp_path / "state"))
    assert problem is None
    assert first == again and len(first) == 16 and int(first, 16) >= 0
    kept = tmp_path / "state" / "relay" / ID_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(kept.parent.stat().st_mode) == 0o700
    assert [p.name for p in kept.parent.iterdir()] == [ID_FILE]  # no .part left behind


def test_two_machines_alike_in_name_uid_and_socket_have_two_tags(tmp_path: Path) -> None:
    """Two laptops both called Alices-MacBook-Pro, uid 501, one home layout: the id each
    keeps on its own disk tells them apart (the tag alone decides whose agent is whose)."""
    laptop, _ = daemon_tag(SOCKET, machine(tmp_path / "laptop"))
    desktop, _ = daemon_tag(SOCKET, machine(tmp_path / "desktop"))
    assert laptop != desktop
    assert daemon_tag(SOCKET, machine(tmp_path / "laptop"))[0] == laptop


def test_another_socket_on_the_same_machine_is_another_daemon(tmp_path: Path) -> None:
    env = machine(tmp_path / "state")
    assert daemon_tag(SOCKET, env)[0] != daemon_tag(Path("/tmp/other.sock"), env)[0]


def test_where_the_id_is_kept() -> None:
    assert state_dir({"HOME": "/h", "XDG_STATE_HOME": "/s"}, "linux") == Path("/s/relay")
    assert state_dir({"HOME": "/h"}, "linux") == Path("/h/.local/state/relay")
    assert state_dir({"HOME": "/h"}, "darwin") == Path("/h/Library/Application Support/relay")


def test_an_id_that_is_not_one_is_replaced_and_a_symlink_not_followed(tmp_path: Path) -> None:
    kept = tmp_path / "state" / "relay" / ID_FILE
    kept.parent.mkdir(parents=True)
    kept.write_text("edited by hand\n")
    tag, problem = daemon_tag(SOCKET, machine(tmp_path / "state"))
    assert problem is None and len(kept.read_text().strip()) == 32
    assert daemon_tag(SOCKET, machine(tmp_path / "state"))[0] == tag

    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("0123456789abcdef0123456789abcdef\n")
    kept.unlink()
    kept.symlink_to(elsewhere)
    daemon_tag(SOCKET, machine(tmp_path / "state"))
    assert not kept.is_symlink()  # a file of its own now
    assert kept.read_text() != elsewhere.read_text()
    assert elsewhere.read_text() == "0123456789abcdef0123456789abcdef\n"  # untouched


def test_a_state_directory_that_cannot_be_written_is_said_and_the_tag_still_made(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    tag, problem = daemon_tag(SOCKET, machine(blocker / "state"))
    assert problem is not None and str(blocker) in problem, problem
    assert len(tag) == 16 and tag == daemon_tag(SOCKET, machine(blocker / "state"))[0]


def test_daemons_starting_at_once_agree_on_the_id(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code = (
        "import sys; from pathlib import Path; from relay.daemontag import daemon_tag; "
        "print(daemon_tag(Path('/s'), {'HOME': '/h', 'XDG_STATE_HOME': sys.argv[1]})[0])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(state)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        for _ in range(8)
    ]
    tags = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(tags) == 1, tags
    assert [p.name for p in (state / "relay").iterdir()] == [ID_FILE]


def test_a_socket_path_not_utf8_has_a_tag(tmp_path: Path) -> None:
    """A socket below a Latin-1 HOME or XDG_RUNTIME_DIR (its bytes read as surrogates): the
    daemon died at start on encoding it. A UTF-8 path keeps the tag it had."""
    latin = Path(os.fsdecode(b"/run/user/501/lat\xe9n/relay.sock"))
    tag, _ = daemon_tag(latin, machine(tmp_path / "state"))
    assert len(tag) == 16 and tag != daemon_tag(SOCKET, machine(tmp_path / "state"))[0]
