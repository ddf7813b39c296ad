"""A full disk, on a real full file system (a small tmpfs, or /dev/full): relay's own files that
cannot be written are said once, in one line, where a person sees it, and logging never
takes relay down: launches go on while the log cannot be written."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.lite import shim
from relay.sim import frontend
from tests.conftest import RELAY, SIM_KERNEL, RelayHome, fill, run_shim
from tests.e2e.helpers import controller, relay_cli

NO_SPACE = "no space left on its file system"


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "64k", inodes: int = 0) -> Iterator[Path]:
    """A tmpfs of ``size`` (and ``inodes`` files, if given) mounted at ``where`` (0700, as
    relay's socket directory must be)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full file system) needs root")
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    options = f"size={size},mode=0700" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def use_up_inodes(where: Path, inodes: int) -> None:
    """Files made in ``where``, a ``small_tmpfs`` of ``inodes`` files, until none is left."""
    for n in range(inodes):  # bounded: the mount has no more
        try:
            (where / f"inode-{n}").touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return


def fill_up_to_the_page(log_file: Path) -> None:
    """tmpfs counts whole pages: the last one of a file has room left however full the file
    system is. A blank line fills it (the daemon is idle meanwhile: nothing else writes)."""
    left = -os.path.getsize(log_file) % os.sysconf("SC_PAGE_SIZE")
    if left:
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND)
        try:
            assert os.write(fd, b" " * (left - 1) + b"\n") == left
        finally:
            os.close(fd)


@dataclass
class Served:
    proc: asyncio.subprocess.Process

    async def stop(self, home: RelayHome) -> str:
        """``relay stop``; the daemon's whole stderr."""
        status, _, err = await relay_cli(home, "stop")
        assert status == 0, err
        assert self.proc.stderr is not None
        said = await asyncio.wait_for(self.proc.stderr.read(), 60)
        assert await asyncio.wait_for(self.proc.wait(), 60) == 0
        return said.decode()


@contextlib.asynccontextmanager
async def relay_serve(home: RelayHome, log_file: Path) -> AsyncIterator[Served]:
    """``relay serve --log-file LOG`` as a person runs it, its stderr kept; ready when it
    says so on its ready pipe."""
    home.write()
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            RELAY,
            "serve",
            "--socket",
            str(home.socket),
            "--log-file",
            str(log_file),
            "--ready-fd",
            str(write_fd),
            env=home.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        write_fd = -1
        loop = asyncio.get_running_loop()
        said = await loop.run_in_executor(None, shim._first_line, read_fd, 30.0)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    served = Served(proc)
    try:
        assert said == "ready", said
        yield served
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_full_socket_directory_is_the_autostarting_shims_one_line(
    home: RelayHome,
) -> None:
    """The daemon cannot write its lock (pid) file: the shim that started it says why, at
    once, instead of waiting out AUTOSTART_WAIT_S for an empty log."""
    home.write()
    with small_tmpfs(home.socket.parent) as run:
        fill(run)
        result = await run_shim(home, "--compute", "local", SIM_KERNEL, "1@127.0.0.1,2@127.0.0.1")
    assert result.status == shim.EXIT_DAEMON
    said = result.stderr.splitlines()
    assert len(said) == 1, result.stderr
    assert said[0].startswith("relay: the relay daemon could not start: cannot write")
    assert f"{home.socket}.lock" in said[0] and NO_SPACE in said[0], said[0]


async def test_a_socket_directory_without_a_free_inode_is_the_shims_one_line(
    home: RelayHome,
) -> None:
    """Not even the shim's start lock can be made: one line, not a traceback."""
    home.write()
    with small_tmpfs(home.socket.parent, inodes=2) as run:  # the directory and one file
        (run / "filler").touch()
        result = await run_shim(home, "--compute", "local", SIM_KERNEL, "1@127.0.0.1,2@127.0.0.1")
    assert result.status == shim.EXIT_DAEMON
    assert result.stderr.splitlines() == [
        f"relay: cannot create the start lock {run}/relay.start.lock: No space left on device; "
        "free some space there (or choose another socket directory with RELAY_SOCKET)"
    ], result.stderr


async def test_a_log_file_on_a_full_file_system_is_one_line_on_stderr(home: RelayHome) -> None:
    """``relay serve --log-file /dev/full``: it serves, says once why it logs nothing."""
    async with relay_serve(home, Path("/dev/full")) as served:
        status, _, err = await relay_cli(home, "status")  # requests log; none fails for it
        assert status == 0, err
        said = (await served.stop(home)).splitlines()
    assert said == [f"relay: cannot write the log /dev/full: {NO_SPACE}; " + RUNS_ON], said


RUNS_ON = "relay runs on without logging, and the log resumes once there is room"


async def test_a_log_that_fills_up_mid_run_takes_no_launch_down(home: RelayHome) -> None:
    """The log's file system fills while the daemon runs: a controller and a compute launch
    go on, the controller's shim exits with its kernel's status (not 3), the daemon says so
    once on stderr, and once there is room the log says how many lines were lost."""
    with small_tmpfs(home.dir / "logs") as logs:
        log_file = logs / "relay.log"
        async with relay_serve(home, log_file) as served:
            # the daemon logged "serving" before it said ready, and logs nothing more until
            # asked something: the file system fills with nothing else writing to it
            filler = fill(logs)
            fill_up_to_the_page(log_file)
            async with controller(home) as fe:
                main = await fe.link.accept(60)
                link = await frontend.ListeningLink.create()
                compute = await run_shim(home, "--compute", "local", SIM_KERNEL, str(link.name))
                assert compute.status == 0, compute.stderr
                worker = await link.accept(60)
                assert await worker.echo(b"full disk") == b"full disk"
                await worker.quit(0)
                await worker.aclose()
                link.close()
                assert await main.echo(b"still here") == b"still here"
                # the log cannot say the disk is full: relay status says it instead
                shown, table, err = await relay_cli(home, "status")
                assert shown == 0, err
                assert f"LOG NOT WRITTEN: cannot write the log {log_file}: {NO_SPACE}" in table
                await main.quit(0)
                status, _, err = await fe.result()
                await main.aclose()
            assert (status, err) == (0, "")
            filler.unlink()
            said = (await served.stop(home)).splitlines()
        assert said == [f"relay: cannot write the log {log_file}: {NO_SPACE}; {RUNS_ON}"], said
        lines = log_file.read_text().splitlines()
        events = [json.loads(line) for line in lines if line.strip()]
        lost = [e for e in events if e["event"] == "log lines lost"]
        assert len(lost) == 1 and int(lost[0]["lost_lines"]) > 0, lost
        names = [e["event"] for e in events]
        assert names.index("log lines lost") < names.index("shutting down"), names
        assert names[-1] == "stopped"
