"""The daemon's relay.toml, read again: a rejected file refuses the names it may be adding, and
nothing else; a host takes its entry as it now is. No sockets: ``Daemon`` without serving."""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay import settings
from relay.daemon import CONFIG_SETTLE_S, Daemon
from relay.errors import ConfigError
from relay.settings import HostConfig
from relay.ssh import sshconfig


def daemon(tmp_path: Path, text: str) -> tuple[Daemon, Path]:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    config, _ = settings.load(path)
    return Daemon(config, str(path)), path


async def test_a_rejected_file_refuses_the_host_it_breaks_and_no_other(tmp_path: Path) -> None:
    d, path = daemon(tmp_path, "[hosts.old]\nhostname = 'o'\n")
    path.write_text("[hosts.old]\nhostname = 'o'\n[hosts.new]\nhostname = 'n'\nkernal = 'k'\n")
    assert "error" in d.reload()
    with pytest.raises(ConfigError) as refused:
        d.host("new")
    assert refused.value.message == f"{path}: hosts.new.kernal: unknown key (did you mean kernel?)"
    assert d.host("old").config.hostname == "o"  # the running configuration stays
    assert d.host("alice@elsewhere").config.hostname == "elsewhere"  # not what it breaks


async def test_a_file_that_is_not_toml_refuses_unknown_names_but_not_jump_hosts(
    tmp_path: Path,
) -> None:
    d, path = daemon(tmp_path, "[hosts.old]\nhostname = 'o'\n")
    path.write_text("[hosts.new\n")
    d.reload()
    with pytest.raises(ConfigError, match="not valid TOML"):
        d.host("new")  # it may be the host the file adds
    # a ProxyJump of ssh_config's, on the way to a host of the running configuration
    assert d.host("bastion", adhoc=True).key == "bastion"


@pytest.fixture
def digits_bounded() -> Iterator[None]:
    """The interpreter's bound on a number's digits (4300), as relay runs: Mathics, which
    the suite's Wolfram Language tests load, lifts it for the whole process."""
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(4300)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(previous)


@pytest.mark.parametrize(
    ("text", "says"),
    [  # an editor that saved in a local encoding; TOML nested past the parser's recursion
        (
            b"[hosts.old]\nhostname = 'o'\n# caf\xe9\n",
            "not UTF-8 (byte 0xe9 on line 3): save it as UTF-8",
        ),
        (b"[hosts.old]\nhostname = " + b"[" * 5000, "nested too deeply"),
        (b"[hosts.old]\nhostname = 'o'\nport = " + b"1" * 5000, "a number too long to read"),
    ],
)
async def test_a_file_toml_cannot_be_is_reported_in_one_line_and_the_running_one_stays(
    tmp_path: Path, text: bytes, says: str, digits_bounded: None
) -> None:
    """A review found UnicodeDecodeError and RecursionError escaping ``settings.load``: the
    request that read the file was never answered, ``relay reload`` neither, and ``relay
    status`` said nothing; ``relay serve`` printed a traceback."""
    d, path = daemon(tmp_path, "[hosts.old]\nhostname = 'o'\n")
    path.write_bytes(text)
    said = f"{path}: not valid TOML: {says}"
    assert d.reload()["error"] == said
    assert d.config_error == said  # relay status shows it
    with pytest.raises(ConfigError, match=re.escape(says)) as refused:
        d.reload(force=True)
    assert "\n" not in str(refused.value)
    assert d.host("old").config.hostname == "o"  # the running configuration stays
    with pytest.raises(ConfigError, match=re.escape(said)):
        settings.load(path)


async def test_a_host_takes_its_entry_as_it_now_is(tmp_path: Path) -> None:
    d, path = daemon(tmp_path, "")
    first = d.host("later")  # ad-hoc: no kernel, relay's defaults
    assert first.config.kernel is None
    path.write_text("[hosts.later]\nhostname = 'l'\nkernel = '/k'\nlaunch_timeout_s = 9\n")
    d.reload()
    assert d.host("later") is first
    now = first.config  # read anew: the reload replaced it
    assert (now.kernel, now.launch_timeout_s) == ("/k", 9)


async def test_a_compute_nodes_session_takes_its_clusters_entry_as_it_now_is(
    tmp_path: Path,
) -> None:
    """A Slurm host's compute nodes have sessions of their own, named ``HOST/NODE``, with
    the cluster's settings: a reload gives them the cluster's as they now are (the resume
    window of the kernels running there, the connection settings of their next connection),
    each still reached through the login node."""
    entry = "[hosts.hpc]\nhostname = 'login'\nresume_window_s = {}\n[hosts.hpc.slurm]\n"
    entry += "node_hostname = '{{node}}.cluster'\n"
    d, path = daemon(tmp_path, entry.format(900))
    cluster = d.host("hpc")
    node = d.clusters.node(cluster, "n1")
    assert (node.config.resume_window_s, node.config.jump) == (900, "hpc")
    path.write_text(entry.format(3600))
    d.reload()
    assert d.hosts["hpc/n1"] is node
    now = node.config
    assert (now.resume_window_s, now.hostname, now.jump, now.slurm) == (
        3600,
        "n1.cluster",
        "hpc",
        None,
    )


async def test_what_compute_nodes_sessions_say_of_a_reload_reaches_relay_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's session says when a new resume_window_s waits (``HostSession.reconfigure``:
    resuming, or a connection made with 0); ``relay reload`` prints what every session says,
    its compute nodes' too."""
    entry = "[hosts.hpc]\nhostname = 'login'\nresume_window_s = {}\n[hosts.hpc.slurm]\n"
    entry += "node_hostname = '{{node}}.cluster'\n"
    d, path = daemon(tmp_path, entry.format(900))
    node = d.clusters.node(d.host("hpc"), "n1")
    reconfigure = node.reconfigure

    def says(config: HostConfig) -> str | None:
        said = reconfigure(config)
        assert said is None  # not connected: nothing waits
        return f"hpc/n1: window {config.resume_window_s:g} waits"

    monkeypatch.setattr(node, "reconfigure", says)
    path.write_text(entry.format(3600))
    assert d.reload()["notes"] == ["hpc/n1: window 3600 waits"]


OLD = "[hosts.old]\nhostname = 'o'\n"
BOTH = OLD + "[hosts.new]\nhostname = 'n'\nkernel = '/k'\n"


async def test_a_save_while_the_daemon_starts_is_taken_by_the_first_request(
    tmp_path: Path,
) -> None:
    """relay serve reads relay.toml, then waits for its locks and makes the daemon: a save
    in between (even one written aside and renamed) was stamped as read when the daemon was
    made, and never taken until the next save (a review's reproduction through relay serve)."""
    path = tmp_path / "relay.toml"
    path.write_text(OLD)
    config, _ = settings.load(path)  # relay serve, before its locks
    aside = tmp_path / "relay.toml.new"
    aside.write_text(BOTH)
    aside.replace(path)  # an editor's save meanwhile
    d = Daemon(config, str(path))
    assert "new" not in d.config.hosts
    d.reload()  # the first request's look
    assert d.host("new").config.hostname == "n"


async def test_a_file_saved_a_moment_ago_is_given_time_to_be_whole(tmp_path: Path) -> None:
    """An editor that saves in place empties the file, then writes it; an empty file is
    valid TOML with no [hosts], and a launch read in between ran without its host's entry.
    A request waits until a changed file is CONFIG_SETTLE_S old; a file read already, or
    saved long enough ago, costs no wait."""
    d, path = daemon(tmp_path, BOTH)
    d.reload()
    assert d.config_settle_s() == 0.0  # read, unchanged since
    path.write_text("")  # emptied: the editor's write comes next
    saved_s = path.stat().st_mtime_ns / 1e9
    assert d.config_settle_s(now=saved_s + 0.05) == pytest.approx(CONFIG_SETTLE_S - 0.05)
    assert d.config_settle_s(now=saved_s + CONFIG_SETTLE_S) == 0.0
    path.write_text(BOTH)  # written within the wait: the request reads the whole file
    d.reload()
    assert d.host("new").config.hostname == "n"


async def test_a_file_saved_again_while_it_is_read_is_not_taken_half(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save in chunks (a larger file, ``cat > relay.toml``): what was read is a valid
    prefix with fewer hosts while the rest lands. The running configuration stays, and the
    next request reads the file whole; `relay reload` says to run it again."""
    d, path = daemon(tmp_path, BOTH)
    d.reload()
    load = settings.load

    def read_while_the_rest_lands(*args: Any, **kwargs: Any) -> Any:
        got = load(*args, **kwargs)
        with path.open("a") as rest:
            rest.write(BOTH[len(OLD) :])
        return got

    for force in (False, True):
        path.write_text(OLD)  # the first chunk
        monkeypatch.setattr(settings, "load", read_while_the_rest_lands)
        if force:
            with pytest.raises(ConfigError, match=r"changed while relay read it.*run `relay"):
                d.reload(force=True)
        else:
            assert d.reload()["changed"] is False
        monkeypatch.setattr(settings, "load", load)
        assert d.host("new").config.hostname == "n"  # the running one, with both
        d.reload()
        assert d.host("new").config.hostname == "n"  # read again, whole


class _Unused:
    """A host session with nothing to do for an hour."""

    closed = False

    def unused_since(self) -> float:
        return time.time() - 3600

    async def aclose(self) -> None:
        self.closed = True


async def test_a_live_allocations_nodes_and_named_hosts_are_not_forgotten(tmp_path: Path) -> None:
    """Daemon._forget_unused drops a host relay.toml does not name once unused: not a host
    it names, not a node of a cluster whose allocation lives (its key is cluster/node; a
    review found only the cluster's own key looked for), not a host another goes through,
    and nothing while the daemon stops."""
    d, _ = daemon(tmp_path, "[hosts.named]\nhostname = 'n'\n")
    for key in ("named", "cluster/node1", "other/node1", "adhoc", "bastion"):
        d.hosts[key] = _Unused()  # type: ignore[assignment]
    d.clusters.allocations["cluster"] = object()  # type: ignore[assignment]
    d.stopping = True
    d._forget_unused({})
    assert len(d.hosts) == 5  # stopping: nothing
    d.stopping = False
    d._forget_unused({"bastion": []})
    assert sorted(d.hosts) == ["bastion", "cluster/node1", "named"]
    await asyncio.sleep(0)  # the dropped sessions' closes


async def test_a_removed_entry_keeps_what_runs_there_and_an_unused_one_goes(
    tmp_path: Path,
) -> None:
    """An entry removed (or renamed) while something runs there keeps its settings until it
    ends: it was taken for the ad-hoc host of its name (port 22, no keys), whose settings the
    live connection's next reconnect then used, losing its kernels (a review's finding). An
    unused one goes at once: the name means the ad-hoc host from then on."""
    d, path = daemon(tmp_path, "[hosts.busy]\nhostname = 'b'\nport = 2222\n" + OLD)
    busy, old = d.host("busy"), d.host("old")
    hold = busy.hold()  # a kernel's, a launch's
    try:
        path.write_text("")
        said = d.reload()
        assert said["notes"] == [
            "busy: removed from relay.toml; what runs there keeps the entry as it was until it ends"
        ]
        assert d.hosts["busy"] is busy and (busy.config.hostname, busy.config.port) == ("b", 2222)
        assert "old" not in d.hosts
        assert d.host("old") is not old and d.host("old").config.hostname == "old"
        path.write_text("[hosts.other]\nhostname = 'x'\n")  # any later save, or reload
        assert d.reload()["notes"] == []  # said once
        assert d.hosts["busy"] is busy and (busy.config.hostname, busy.config.port) == ("b", 2222)
    finally:
        hold.release()
    path.write_text("")  # nothing runs there now: the next reload lets it go
    d.reload()
    assert "busy" not in d.hosts
    await asyncio.sleep(0)  # the dropped sessions' close


async def test_a_reload_while_a_connect_reads_ssh_config_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh_config is read in a thread (a ``Match exec`` takes its time): a reload meanwhile
    was undone when the read came back, the old entry's kernel and timeouts standing until
    the next connect (a review's finding)."""
    d, path = daemon(tmp_path, "[hosts.h]\nhostname = 'h'\nkernel = '/old'\n")
    session = d.host("h")
    entered, gate = threading.Event(), threading.Event()
    resolve = sshconfig.resolve

    def slow(*args: Any, **kwargs: Any) -> Any:
        if not entered.is_set():
            entered.set()
            assert gate.wait(30)
        return resolve(*args, **kwargs)

    monkeypatch.setattr(sshconfig, "resolve", slow)
    planning = asyncio.ensure_future(session.plan())
    assert await asyncio.to_thread(entered.wait, 30)
    path.write_text("[hosts.h]\nhostname = 'h'\nkernel = '/new'\n")
    d.reload()
    assert session.config.kernel == "/new"
    gate.set()
    _, plan = await asyncio.wait_for(planning, 30)
    assert session.config.kernel == plan.config.kernel == "/new"


async def test_what_a_running_daemon_cannot_change_is_said_and_ssh_config_is_taken(
    tmp_path: Path,
) -> None:
    d, path = daemon(tmp_path, OLD)
    session = d.host("old")
    extra = tmp_path / "more_config"
    path.write_text(
        f"[daemon]\nsocket = '{tmp_path}/s.sock'\nlog_level = 'debug'\n"
        f"ssh_config = ['{extra}']\n" + BOTH
    )
    said = d.reload()
    assert said["notes"] == [
        f"[daemon] socket applies from the next start: this daemon listens on "
        f"{d.socket_path} until it stops (stop it with RELAY_SOCKET={d.socket_path} relay "
        f"stop; commands that read the new path do not find it)",
        "[daemon] log_level applies from the next start (`relay restart`)",
    ]
    # the next connect reads the new list (the session kept the one it was made with)
    assert session.connector.ssh_files == (str(extra),)
    extra.write_text("Host o\n  Port 2200\n")
    view, _ = await session.plan()
    assert view.port == 2200


async def test_a_live_allocation_takes_its_clusters_new_slurm_table(tmp_path: Path) -> None:
    """Its next job is asked for with the table as it now is, and its idle clock restarts
    with the new timeout (it kept the first table for the daemon's life)."""
    entry = "[hosts.hpc]\nhostname = 'login'\n[hosts.hpc.slurm]\ntime = '{}'\n"
    d, path = daemon(tmp_path, entry.format("10"))
    alloc = d.clusters.allocation(d.host("hpc"))
    assert alloc.cfg.time == "10"
    path.write_text(entry.format("25"))
    d.reload()
    assert d.clusters.allocations["hpc"] is alloc and alloc.cfg.time == "25"
