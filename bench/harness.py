"""``make bench``: relay against Tunnel's way and OpenSSH ControlMaster, side by side.

Everything runs on this machine against a real OpenSSH sshd: on loopback, and through a
user-space delay relay (bench.delayproxy) for emulated round-trip times. The three ways are
interleaved in every round so that drifting machine load hits them alike. Results go to
BENCHMARKS.md and a plot of launch latency against RTT.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import importlib.metadata
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import lookup, memory
from bench.delayproxy import DelayProxy, calibrate
from bench.ways import (
    NO_STARTUP,
    ControlMasterWay,
    Launched,
    PlainAsyncsshWay,
    RelayWay,
    TunnelWay,
)
from relay import lean, wake
from relay.agent import mux
from relay.lite import client
from relay.lite.linkname import LinkName
from relay.sim import frontend
from relay.sim.sshd import ThrowawaySSHD

BIN = Path(sys.executable).parent
RELAY = str(BIN / "relay")
KERNEL = str(BIN / "relay-sim-kernel")
# the dev extra installs py-spy beside the interpreter, which `make bench` does not put on PATH
PY_SPY = shutil.which("py-spy", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
ROOT = Path(__file__).resolve().parents[1]
POOL_WAIT_S = 30.0  # LaunchKernels: after the last Run, how long the kernels may take


@dataclass
class Config:
    rtts_ms: list[int]
    repeats: int
    concurrent: int
    concurrent_repeats: int
    pingpongs: int
    bulk_bytes: int
    daemon_kernels: int
    shim_runs: int
    write_report: bool = True
    out: Path = ROOT
    link_rounds: int = 1  # interleaved rounds of ping-pong and bulk over every path
    pool_sizes: tuple[int, ...] = (2,)  # LaunchKernels as the Parallel package runs it
    # emulated RTTs (ms, each one of rtts_ms) at which links are measured too: a remote host
    # is never on the front end's loopback (the table on loopback models no user's network)
    link_rtts_ms: tuple[int, ...] = ()
    net_bulk_bytes: int = 64 << 20  # bulk each way per round at an emulated RTT
    # rounds of relay's LaunchKernels cells (the other ways' take up to 90 s and run once)
    pool_relay_rounds: int = 1
    # a scratch run of one table (``--only pool``): printed, never written to BENCHMARKS.md
    only: str | None = None
    pool_ways: tuple[str, ...] = ("relay", "tunnel", "controlmaster")
    lookup_repeats: int = 300  # look-ups timed each way (bench/lookup.py)
    lookup_fill: int = 100_000  # connections that fill the table with TIME_WAIT sockets
    lookup_filled_repeats: int = 20  # fewer there: /proc's way is slow, and TIME_WAIT ends

    @classmethod
    def full(cls) -> Config:
        return cls(
            [0, 10, 50, 150], 7, 32, 3, 2000, 256 << 20, 100, 30,
            link_rounds=5, pool_sizes=(8, 16, 32, 64), pool_relay_rounds=3,
            link_rtts_ms=(10, 50),
        )  # fmt: skip

    @classmethod
    def quick(cls) -> Config:
        return cls(
            [0, 50], 3, 32, 1, 300, 16 << 20, 20, 10, link_rounds=2, pool_sizes=(8, 16),
            link_rtts_ms=(50,), net_bulk_bytes=16 << 20,
        )  # fmt: skip

    @classmethod
    def tiny(cls) -> Config:
        return cls(
            [0, 10], 1, 3, 1, 20, 1 << 20, 3, 2, write_report=False, pool_relay_rounds=2,
            lookup_repeats=10, lookup_fill=500, lookup_filled_repeats=5,
            link_rtts_ms=(10,), net_bulk_bytes=1 << 20,
        )  # fmt: skip


@dataclass
class Sample:
    values: list[float] = field(default_factory=list)
    failures: int = 0
    reasons: list[str] = field(default_factory=list)  # why, one line per failure

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def cell(self, unit: str = "ms", scale: float = 1000.0, digits: int = 0) -> str:
        if not self.values:
            return f"failed ({self.failures})"
        med, lo, hi = (v * scale for v in (self.median, min(self.values), max(self.values)))
        fail = f", {self.failures} failed" if self.failures else ""
        return f"{med:.{digits}f} {unit} ({lo:.{digits}f}-{hi:.{digits}f}{fail})"


@dataclass
class Results:
    calibration: dict[int, dict[str, float]] = field(default_factory=dict)
    single: dict[tuple[str, int], Sample] = field(default_factory=dict)
    single_controller: dict[int, Sample] = field(default_factory=dict)
    unchecked: dict[int, Sample] = field(default_factory=dict)  # relay with peer_check off
    today: dict[int, Sample] = field(default_factory=dict)  # relay with resume_window_s = 0
    pools: dict[tuple[str, int, int], Sample] = field(default_factory=dict)  # (way, rtt, n)
    wrong_bytes: dict[tuple[str, int], int] = field(default_factory=dict)  # links cross-wired
    concurrent: dict[tuple[str, int], Sample] = field(default_factory=dict)
    pingpong: dict[str, Sample] = field(default_factory=dict)
    # the same at an emulated RTT: (rtt, way) and (rtt, way, direction)
    net_pingpong: dict[tuple[int, str], Sample] = field(default_factory=dict)
    net_bulk: dict[tuple[int, str, str], Sample] = field(default_factory=dict)
    bulk: dict[tuple[str, str], Sample] = field(default_factory=dict)
    # CPU seconds the SSH client side (relay's daemon, ssh, the plain asyncssh process) spent
    # per GiB moved: a measure of the data path that the machine's other load moves less
    bulk_cpu: dict[tuple[str, str], Sample] = field(default_factory=dict)
    # the same for relay's agent on the host, per direction: the process the agent's path adds
    agent_cpu: dict[str, Sample] = field(default_factory=dict)
    # the whole machine's busy CPU seconds per GiB moved (every process on the path, and the
    # kernel's own work for them): on two cores, what a path's throughput here goes by
    bulk_machine: dict[tuple[str, str], Sample] = field(default_factory=dict)
    # the daemon's minor page faults per MiB moved: pages its heap gave back and took again
    bulk_faults: dict[tuple[str, str], Sample] = field(default_factory=dict)
    agent_faults: dict[str, Sample] = field(default_factory=dict)  # the same, of the agent
    shim_wall: Sample = field(default_factory=Sample)
    shim_cpu: Sample = field(default_factory=Sample)
    # RSS MB at rest (two ticks of the daemon's after nothing is unacknowledged), fds; and the
    # RSS at once (as nothing is unacknowledged): the daemon gives its heap back at its tick
    daemon: dict[str, tuple[float, int]] = field(default_factory=dict)
    daemon_at_once: dict[str, float] = field(default_factory=dict)
    # the host's agent (kernels that outlive the network) beside it: RSS MB, fds
    agent: dict[str, tuple[float, int]] = field(default_factory=dict)
    # the idle daemon's RSS by what holds it (bench/memory.py), and relay's own modules' MB
    daemon_holders: dict[str, float] = field(default_factory=dict)
    relay_modules_mb: float = 0.0
    # whether the footprint's daemon ran on relay.lean's flags, as relay serve starts itself
    daemon_lean: bool = False
    daemon_scaffold: tuple[float, int] = (0.0, 0)
    floor_python: Sample = field(default_factory=Sample)
    floor_direct: Sample = field(default_factory=Sample)
    # py-spy's self time in the daemon, per direction of bulk transfer
    profile: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    # CPU seconds the virtual machine's host took from it (steal) while relay's pool cell ran
    pool_stolen: dict[tuple[int, int], list[float]] = field(default_factory=dict)  # (rtt, n)
    # the peer check's cost (bench/lookup.py): per table, its rows and the median us per way
    lookups: dict[str, tuple[int, dict[str, float]]] = field(default_factory=dict)
    seconds: float = 0.0
    stolen: float = 0.0  # over the whole run
    commit: str = ""  # the code measured, taken when the run starts


class Bench:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.results = Results()
        self.dir = Path(tempfile.mkdtemp(prefix="relay-bench-", dir="/tmp"))
        # MaxStartups raised so that Tunnel's way, 32 fresh connections at once, is not cut
        # short by sshd's default 10:30:100 (relay needs one connection; it is Tunnel's
        # benefit). MaxSessions stays at its default 10.
        self.sshd = ThrowawaySSHD(self.dir / "sshd", options={"MaxStartups": "100"})
        self.proxies: dict[int, DelayProxy] = {}
        self.masters: dict[int, ControlMasterWay] = {}
        self.daemon: asyncio.subprocess.Process | None = None
        self.launched = Launched()  # what the latest timed launch started
        self.why = ""  # why the latest timed launch that failed failed
        self.env = dict(
            os.environ,
            RELAY_CONFIG=str(self.dir / "relay.toml"),
            RELAY_SOCKET=str(self.dir / "run" / "relay.sock"),
        )

    # -- set-up ----------------------------------------------------------------------------
    def port(self, rtt: int) -> int:
        return self.sshd.port if rtt == 0 else self.proxies[rtt].port

    async def start(self) -> None:
        self.sshd.start()
        for rtt in self.config.rtts_ms:
            if rtt:
                self.proxies[rtt] = await DelayProxy(self.sshd.port, rtt / 1000).start()
                self.sshd.trust_port(self.proxies[rtt].port)
        fast = {
            "kernel": KERNEL,
            "compute_args": ["-subkernel", "-noinit", *NO_STARTUP],
            "controller_args": NO_STARTUP,
        }
        toml = "".join(
            self.sshd.host_toml(f"rtt{rtt}", port=self.port(rtt), **fast)
            # the same host with the check of who connects turned off (which keeps it off the
            # agent): what the check costs beside rtt{N}-today
            + self.sshd.host_toml(
                f"rtt{rtt}-nocheck", port=self.port(rtt), peer_check="off", **fast
            )
            # without relay's agent (kernels end with their connection): what resuming costs
            + self.sshd.host_toml(f"rtt{rtt}-today", port=self.port(rtt), resume_window_s=0, **fast)
            # kernels that take a second to start, as real ones do: the Parallel pattern
            + self.sshd.host_toml(f"pool{rtt}", port=self.port(rtt), kernel=KERNEL)
            for rtt in self.config.rtts_ms
        )
        (self.dir / "relay.toml").write_text(toml)
        self.daemon = await serve_ready(self.env)
        for rtt in self.config.rtts_ms:
            master = ControlMasterWay(self.sshd, self.port(rtt), KERNEL, self.dir / f"cm{rtt}")
            await master.start()
            self.masters[rtt] = master

    async def stop(self) -> None:
        for master in self.masters.values():
            await master.stop()
        if self.daemon is not None and self.daemon.returncode is None:
            self.daemon.terminate()
            await self.daemon.wait()
        for proxy in self.proxies.values():
            await proxy.aclose()
        self.sshd.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def ways(self, rtt: int) -> list[Any]:
        return [
            TunnelWay(self.sshd, self.port(rtt), KERNEL),
            self.masters[rtt],
            RelayWay(RELAY, f"rtt{rtt}", KERNEL, self.env),
        ]

    # -- one launch, timed -----------------------------------------------------------------
    async def timed_launch(
        self,
        way: Any,
        compute: bool = True,
        then: Callable[[frontend.KernelLink], Awaitable[None]] | None = None,
        write_first: bool = True,
    ) -> float | None:
        """Seconds from starting the launch command to both channels at the front end (a
        front end that writes the instant it accepts, unless ``write_first`` is false)."""
        link = await frontend.ListeningLink.create(write_first=write_first)
        launched = Launched()
        failed: Exception | None = None
        try:
            started = time.perf_counter()
            launched = self.launched = await way.launch(link.name, compute=compute)
            await _connected_or_gave_up(link, launched)  # a launch that gave up fails now
            elapsed = time.perf_counter() - started
            kl = await link.accept(60)
            if then is not None:
                await then(kl)
            await kl.quit(0)
            await kl.closed()
            await kl.aclose()
            return elapsed
        except (TimeoutError, RuntimeError, OSError, frontend.LostBytes) as exc:
            failed = exc
            return None
        finally:
            link.close()
            await way.finish(launched)
            if failed is not None:  # once finished: the launch's stderr has been read to its end
                self.why = _why(failed, launched)

    # -- the figures -----------------------------------------------------------------------
    async def run(self) -> Results:
        started, stolen = time.perf_counter(), _stolen_s()
        self.results.commit = _commit()
        for rtt in self.config.rtts_ms:
            self.results.calibration[rtt] = await calibrate(rtt / 1000, 10)
        await self.start()
        try:
            if self.config.only == "pool":
                for rtt in self.config.rtts_ms:
                    await self.pool_launches(rtt)
                return self.results
            if self.config.only == "link":
                await self.pingpong_and_bulk()
                for rtt in self.config.link_rtts_ms:
                    await self.links_at_rtt(rtt)
                return self.results
            if self.config.only == "footprint":
                await self.daemon_footprint()
                return self.results
            if self.config.only == "lookup":
                self.peer_lookups()
                return self.results
            if self.config.only == "single":
                for rtt in self.config.rtts_ms:  # warm every way on every path once
                    for way in self.ways(rtt):
                        await self.timed_launch(way)
                for rtt in self.config.rtts_ms:
                    await self.single_launches(rtt)
                return self.results
            for rtt in self.config.rtts_ms:  # warm every way on every path once
                for way in self.ways(rtt):
                    await self.timed_launch(way)
            for rtt in self.config.rtts_ms:
                await self.single_launches(rtt)
            for rtt in self.config.rtts_ms:
                await self.concurrent_launches(rtt)
            for rtt in self.config.rtts_ms:
                await self.pool_launches(rtt)
            await self.pingpong_and_bulk()
            for rtt in self.config.link_rtts_ms:
                await self.links_at_rtt(rtt)
            await self.shim_cost()
            await self.daemon_footprint()
            self.peer_lookups()  # last: the TIME_WAIT sockets it makes stay for a minute
        finally:
            await self.stop()
            self.results.stolen = _stolen_s() - stolen
        self.results.seconds = time.perf_counter() - started
        return self.results

    async def single_launches(self, rtt: int) -> None:
        for _ in range(self.config.repeats):
            for way in self.ways(rtt):
                sample = self.results.single.setdefault((way.key, rtt), Sample())
                elapsed = await self.timed_launch(way)
                if elapsed is None:
                    sample.failures += 1
                    sample.reasons.append(self.why)
                else:
                    sample.values.append(elapsed)
            if rtt == self.config.rtts_ms[0]:
                direct = await self.timed_launch(_DirectWay())
                if direct is not None:
                    self.results.floor_direct.values.append(direct)
            unchecked = self.results.unchecked.setdefault(rtt, Sample())
            elapsed = await self.timed_launch(
                RelayWay(RELAY, f"rtt{rtt}-nocheck", KERNEL, self.env)
            )
            if elapsed is None:
                unchecked.failures += 1
                unchecked.reasons.append(self.why)
            else:
                unchecked.values.append(elapsed)
            today = self.results.today.setdefault(rtt, Sample())
            elapsed = await self.timed_launch(RelayWay(RELAY, f"rtt{rtt}-today", KERNEL, self.env))
            if elapsed is None:
                today.failures += 1
                today.reasons.append(self.why)
            else:
                today.values.append(elapsed)
            controller = self.results.single_controller.setdefault(rtt, Sample())
            elapsed = await self.timed_launch(
                RelayWay(RELAY, f"rtt{rtt}", KERNEL, self.env), compute=False
            )
            if elapsed is None:
                controller.failures += 1
                controller.reasons.append(self.why)
            else:
                controller.values.append(elapsed)

    async def pool_launches(self, rtt: int) -> None:
        """``LaunchKernels[RemoteMachine[host, n]]`` as the Parallel package runs it
        (docs/topology.md §4): n listening links, then each way's ``Run`` once per link, one
        after another, then a wait for all n kernels, which take 1 s each to start. Timed from
        the first Run to the last kernel's two connections."""
        ways = [
            way
            for key, way in (
                ("relay", RelayWay(RELAY, f"pool{rtt}", KERNEL, self.env)),
                ("tunnel", TunnelWay(self.sshd, self.port(rtt), KERNEL, kernel_args=[])),
                ("controlmaster", self.masters[rtt].with_kernel_args([])),
            )
            if key in self.config.pool_ways
        ]
        # The host has been used before (as the ControlMaster is started ahead)
        warm = await asyncio.create_subprocess_exec(
            RELAY, "connect", f"pool{rtt}", env=self.env, stdout=asyncio.subprocess.DEVNULL
        )
        await warm.wait()
        for n in self.config.pool_sizes:
            # relay's short cells are repeated (their median is the figure) so that a burst of
            # the host's steal does not decide them: relay, the others once, relay again
            for round_ in range(self.config.pool_relay_rounds):
                for way in ways:
                    if round_ == 0 or way.key == "relay":
                        await self.pool_cell(way, rtt, n)

    async def pool_cell(
        self, way: RelayWay | TunnelWay | ControlMasterWay, rtt: int, n: int
    ) -> None:
        """One way's LaunchKernels of n kernels, timed into its sample."""
        sample = self.results.pools.setdefault((way.key, rtt, n), Sample())
        links = [await frontend.ListeningLink.create() for _ in range(n)]
        launched: list[Launched] = []
        announce: asyncio.subprocess.Process | None = None
        failed: Exception | None = None
        try:
            started, stolen = time.perf_counter(), _stolen_s()
            if way.key == "relay":
                # LaunchKernels[RelayMachine[host, n]]: evaluating RelayMachine starts
                # `relay connect host --kernels n` in the background, and the Runs
                # follow at once, without waiting for it
                announce = await asyncio.create_subprocess_exec(
                    RELAY, "connect", f"pool{rtt}", "--kernels", str(n),
                    env=self.env, stdout=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
            for link in links:
                launched.append(await way.run(link.name))
            # every kernel was started by the time the last Run returned, and takes
            # 1 s to start: one not connected POOL_WAIT_S later has failed
            async with asyncio.timeout(POOL_WAIT_S):
                await asyncio.gather(
                    *(
                        _connected_unless_failed(link, done, POOL_WAIT_S)
                        for link, done in zip(links, launched, strict=True)
                    )
                )
            sample.values.append(time.perf_counter() - started)
            if way.key == "relay":
                took = self.results.pool_stolen.setdefault((rtt, n), [])
                took.append(_stolen_s() - stolen)
            kernels = [await link.accept(60) for link in links]
            for kl in kernels:
                await kl.quit(0)
            for kl in kernels:
                await kl.closed()
                await kl.aclose()
        except (TimeoutError, RuntimeError, OSError, frontend.LostBytes) as exc:
            failed = exc
        finally:
            if announce is not None:
                await announce.wait()
            for link in links:
                link.close()
            for done in launched:
                await way.finish(done)
        if failed is not None:  # once finished: the launches' stderr has been read to its end
            sample.failures += 1
            said = [f"launch {i}: {d.explain()}" for i, d in enumerate(launched, 1) if d.said]
            why = _why(failed, Launched())
            sample.reasons.append("; ".join([f"{len(launched)}/{n} Run done; {why}", *said])[:600])

    async def concurrent_launches(self, rtt: int) -> None:
        n = self.config.concurrent
        for _ in range(self.config.concurrent_repeats):
            for way in self.ways(rtt):
                sample = self.results.concurrent.setdefault((way.key, rtt), Sample())
                links = [await frontend.ListeningLink.create() for _ in range(n)]
                started = time.perf_counter()
                launches = await asyncio.gather(
                    *(way.launch(link.name) for link in links), return_exceptions=True
                )
                connected = await asyncio.gather(
                    *(
                        _connected_or_gave_up(link, launched)
                        for link, launched in zip(links, launches, strict=True)
                    ),
                    return_exceptions=True,
                )
                elapsed = time.perf_counter() - started
                failed = sum(isinstance(c, BaseException) for c in connected)
                if failed:
                    sample.failures += failed
                else:
                    sample.values.append(elapsed)
                lost = 0
                for link, ok in zip(links, connected, strict=True):
                    if not isinstance(ok, BaseException):
                        try:
                            kl = await link.accept(60)
                            await kl.quit(0)
                            await kl.closed()
                            await kl.aclose()
                        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                            lost += 1  # connected, then its session was cut under it
                        except frontend.LostBytes:
                            lost += 1  # its link carried bytes that were not its own
                            self.results.wrong_bytes[(way.key, rtt)] = (
                                self.results.wrong_bytes.get((way.key, rtt), 0) + 1
                            )
                    link.close()
                if lost and not failed:  # a kernel that did not survive did not launch
                    sample.values.pop()
                    sample.failures += lost
                for launched in launches:
                    if isinstance(launched, Launched):
                        await way.finish(launched)

    async def pingpong_and_bulk(self) -> None:
        """Every path carries the same traffic between the same two Python endpoints, in
        interleaved rounds: relay, plain asyncssh forwarding (the stack relay stands on),
        OpenSSH with its default cipher and with relay's, and raw TCP (the floor)."""
        rtt = 0
        ways = {
            "relay": RelayWay(RELAY, f"rtt{rtt}", KERNEL, self.env),
            "relay-today": RelayWay(RELAY, f"rtt{rtt}-today", KERNEL, self.env),
            "asyncssh": PlainAsyncsshWay(self.sshd, self.port(rtt), KERNEL),
            "openssh": TunnelWay(self.sshd, self.port(rtt), KERNEL),
            "openssh-aes128-gcm": TunnelWay(
                self.sshd, self.port(rtt), KERNEL, ["-c", "aes128-gcm@openssh.com"]
            ),
            "direct": _DirectWay(),
        }
        payload = bytes(100)
        n, size = self.config.pingpongs, self.config.bulk_bytes

        async def measure(key: str, kl: frontend.KernelLink) -> None:
            rounds = self.results.pingpong.setdefault(key, Sample())
            for _ in range(n):
                started = time.perf_counter()
                await kl.echo(payload)
                rounds.values.append(time.perf_counter() - started)
            client_pid = self._client_side(key)
            agent_pid = (
                _agent_pid(Path(self.env["RELAY_SOCKET"]), f"rtt{rtt}") if key == "relay" else None
            )
            for direction, move in (("to kernel", kl.sink), ("from kernel", kl.source)):
                cpu = _cpu_s(client_pid) if client_pid else 0.0
                faults = _minor_faults(client_pid) if client_pid else 0
                agent_cpu = _cpu_s(agent_pid) if agent_pid else 0.0
                agent_faults = _minor_faults(agent_pid) if agent_pid else 0
                busy = _machine_busy_s()
                started = time.perf_counter()
                moved = await move(size)
                elapsed = time.perf_counter() - started
                self.results.bulk_machine.setdefault((key, direction), Sample()).values.append(
                    (_machine_busy_s() - busy) * (1 << 30) / size
                )
                if agent_pid:
                    self.results.agent_cpu.setdefault(direction, Sample()).values.append(
                        (_cpu_s(agent_pid) - agent_cpu) * (1 << 30) / size
                    )
                    self.results.agent_faults.setdefault(direction, Sample()).values.append(
                        (_minor_faults(agent_pid) - agent_faults) * (1 << 20) / size
                    )
                assert moved == size, (key, direction, moved)
                self.results.bulk.setdefault((key, direction), Sample()).values.append(
                    size / elapsed
                )
                if client_pid and key.startswith("relay"):
                    self.results.bulk_faults.setdefault((key, direction), Sample()).values.append(
                        (_minor_faults(client_pid) - faults) * (1 << 20) / size
                    )
                if client_pid:
                    per_gib = (_cpu_s(client_pid) - cpu) * (1 << 30) / size
                    self.results.bulk_cpu.setdefault((key, direction), Sample()).values.append(
                        per_gib
                    )

        # The front end waits for the kernel to speak first here: asyncssh's own forwarder
        # (the plain asyncssh path) loses what a front end writes the instant it accepts,
        # and every path must carry the same traffic.
        for _ in range(self.config.link_rounds):
            for key, way in ways.items():
                await self.timed_launch(
                    way, then=functools.partial(measure, key), write_first=False
                )
        if self.config.write_report and PY_SPY:
            for direction in DIRECTIONS:
                profile = functools.partial(self.profile_bulk, direction=direction)
                await self.timed_launch(ways["relay"], then=profile, write_first=False)

    async def links_at_rtt(self, rtt: int) -> None:
        """Ping-pong and bulk between the same two programs through relay (with and without
        its agent) and OpenSSH, each over the emulated RTT (bench/delayproxy.py), in
        interleaved rounds: where a user's remote host is. Every path crosses the same proxy,
        a Python process on the same two cores: it costs every path the same CPU per byte,
        which brings bulk ratios towards 1 where the cores are the bound, as they are on
        loopback (there bulk is measured on loopback, without it)."""
        ways = {
            "relay": RelayWay(RELAY, f"rtt{rtt}", KERNEL, self.env),
            "relay-today": RelayWay(RELAY, f"rtt{rtt}-today", KERNEL, self.env),
            "openssh": TunnelWay(self.sshd, self.port(rtt), KERNEL),
        }
        payload = bytes(100)
        # about two seconds of round trips per way and round, and at least 20
        n = max(20, min(self.config.pingpongs, 2000 // rtt))
        size = self.config.net_bulk_bytes

        async def measure(key: str, kl: frontend.KernelLink) -> None:
            rounds = self.results.net_pingpong.setdefault((rtt, key), Sample())
            for _ in range(n):
                started = time.perf_counter()
                await kl.echo(payload)
                rounds.values.append(time.perf_counter() - started)
            for direction, move in (("to kernel", kl.sink), ("from kernel", kl.source)):
                started = time.perf_counter()
                moved = await move(size)
                elapsed = time.perf_counter() - started
                assert moved == size, (key, direction, moved)
                self.results.net_bulk.setdefault((rtt, key, direction), Sample()).values.append(
                    size / elapsed
                )

        for _ in range(self.config.link_rounds):
            for key, way in ways.items():
                await self.timed_launch(
                    way, then=functools.partial(measure, key), write_first=False
                )

    def _client_side(self, key: str) -> int | None:
        """The process that is the SSH client of the latest launch's link."""
        if key in ("relay", "relay-today"):
            return self.daemon.pid if self.daemon is not None else None
        if key == "direct" or not self.launched.procs:
            return None
        return self.launched.procs[0].pid  # ssh, or the plain asyncssh forwarder

    async def profile_bulk(self, kl: frontend.KernelLink, direction: str) -> None:
        """Where the daemon's time goes while a link carries bulk data one way."""
        assert self.daemon is not None and PY_SPY is not None
        out = self.dir / f"profile-{direction.replace(' ', '-')}.txt"
        move = kl.sink if direction == "to kernel" else kl.source
        spy = await asyncio.create_subprocess_exec(
            PY_SPY,
            "record",
            "-p",
            str(self.daemon.pid),
            "-d",
            "4",
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.perf_counter() + 4.5
        while time.perf_counter() < deadline:
            await move(32 << 20)
        await spy.wait()
        if out.exists():
            self.results.profile[direction] = _leaf_profile(out.read_text())

    async def shim_cost(self) -> None:
        """``relay launch`` on a warm daemon, without a kernel: a request the daemon refuses
        at once, so the process's own start, imports, socket round trip and exit are timed."""
        for _ in range(self.config.shim_runs):
            started = time.perf_counter()
            bare = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
            await bare.wait()
            self.results.floor_python.values.append(time.perf_counter() - started)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                RELAY,
                "launch",
                "--no-autostart",
                "rtt0",
                KERNEL,
                "1@127.0.0.1",
                env=self.env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await proc.wait()
            self.results.shim_wall.values.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.results.shim_cpu.values.append(
                after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            )

    def peer_lookups(self) -> None:
        """The peer check's cost per connection (bench/lookup.py), with the table as the
        bench left it and filled. Synchronous: nothing else of the bench's runs by now."""
        self.results.lookups["as the bench left it"] = lookup.measure(self.config.lookup_repeats)
        lookup.fill(self.config.lookup_fill)
        label = (
            f"after {self.config.lookup_fill:,} connections closed by their accepting end "
            "(TIME_WAIT: a model of a busy login node, or of another user filling the table)"
        )
        self.results.lookups[label] = lookup.measure(self.config.lookup_filled_repeats)

    async def daemon_footprint(self) -> None:
        """A daemon of its own serving one host, as the target describes it (the bench's main
        daemon also holds a connection per emulated RTT; its figure is reported beside)."""
        assert self.daemon is not None
        self.results.daemon_scaffold = _proc_stats(self.daemon.pid)
        run = self.dir / "footprint"
        (run / "relay.toml").parent.mkdir()
        (run / "relay.toml").write_text(
            self.sshd.host_toml(
                "one", kernel=KERNEL, compute_args=["-subkernel", "-noinit", *NO_STARTUP]
            )
        )
        env = dict(
            self.env,
            RELAY_CONFIG=str(run / "relay.toml"),
            RELAY_SOCKET=str(run / "run" / "relay.sock"),
        )
        daemon = await serve_ready(env)
        try:
            await self._footprint(daemon, env)
        finally:
            daemon.terminate()
            await daemon.wait()

    async def _footprint(self, daemon: asyncio.subprocess.Process, env: dict[str, str]) -> None:
        """Idle; 100 kernels whose links are quiet (the front ends wrote nothing first); the
        same number again after each front end wrote 1-64 KB the instant it accepted and the
        kernel echoed it (the simulator's rude front end: a burst, not an idle pool); and
        after. Each measured once nothing is unacknowledged on the agent's channel, as
        ``relay status`` shows it (the bytes in flight are not the kernels' cost)."""
        way = RelayWay(RELAY, "one", KERNEL, env)
        sock = Path(env["RELAY_SOCKET"])
        await self.timed_launch(way)  # connected and warm: that is its idle state
        agent = _agent_pid(sock)  # started by the first launch; idle with no kernel now
        await self._at_rest("idle", daemon.pid)
        self.results.daemon_holders = memory.resident_by_holder(daemon.pid)
        self.results.daemon_lean = memory.runs_lean(daemon.pid)
        self.results.relay_modules_mb = memory.relay_modules_mb(lean_flags=self.results.daemon_lean)
        if agent is not None:
            self.results.agent["idle"] = _proc_stats(agent)
        n = self.config.daemon_kernels
        for label, write_first in ((QUIET, False), (GREETED, True)):
            links = [await frontend.ListeningLink.create(write_first=write_first) for _ in range(n)]
            launches = []
            for chunk in range(0, len(links), 25):
                batch = links[chunk : chunk + 25]
                launches += await asyncio.gather(*(way.launch(link.name) for link in batch))
                await asyncio.gather(*(link.connected(60) for link in batch))
            kernels = [await link.accept(60) for link in links]  # greetings checked there
            await _until_nothing_unacknowledged(sock)
            await self._at_rest(f"{len(kernels)} kernels, {label}", daemon.pid)
            if agent is not None and not write_first:  # every link idle: its cost per link
                self.results.agent[f"{len(kernels)} kernels"] = _proc_stats(agent)
            for kl in kernels:
                await kl.quit(0)
            for kl in kernels:
                await kl.closed()
                await kl.aclose()
            for launched, link in zip(launches, links, strict=True):
                await way.finish(launched)
                link.close()
            await _until_kernels_gone(sock)
        await self._at_rest("after", daemon.pid)

    async def _at_rest(self, label: str, pid: int) -> None:
        """The daemon's RSS at once, and at rest: two ticks and a half later. The first
        tick may still count the CPU of what came before; at the next the daemon finds
        itself at rest and gives its heap's free pages back (``relay.heap``). The agent
        looks at its own as often."""
        self.results.daemon_at_once[label] = _proc_stats(pid)[0]
        await asyncio.sleep(wake.TICK_S * 2.5)
        self.results.daemon[label] = _proc_stats(pid)


# the two directions of a link's bulk, as the results key them
DIRECTIONS = ("to kernel", "from kernel")
QUIET = "quiet links (the front ends wrote nothing first)"
GREETED = (
    "after a burst (each front end wrote 1-64 KB the instant it accepted, echoed back: the "
    "simulator's rude front end)"
)


async def serve_ready(env: dict[str, str]) -> asyncio.subprocess.Process:
    """``relay serve``, returned once it says it is ready on its readiness pipe (as an
    autostarting shim waits for it): no polling of the socket. ``RELAY_BENCH_DAEMON_LOG=PATH``
    keeps its info-level log there, to see where a cell's time goes (it costs the daemon a
    little: not for the figures that go in BENCHMARKS.md)."""
    read_fd, write_fd = os.pipe()
    log_path = os.environ.get("RELAY_BENCH_DAEMON_LOG")
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 (the daemon's, while it runs)
    try:
        daemon = await asyncio.create_subprocess_exec(
            *(RELAY, "serve", "--log-level", "info" if log else "warning"),
            *("--ready-fd", str(write_fd)),
            env=env,
            stderr=log or asyncio.subprocess.DEVNULL,
            pass_fds=(write_fd,),
        )
    finally:
        os.close(write_fd)
        if log is not None:
            log.close()
    loop = asyncio.get_running_loop()
    with open(read_fd, "rb", buffering=0) as pipe:
        said = await asyncio.wait_for(loop.run_in_executor(None, pipe.readline), 30)
    if said.strip() != b"ready":
        raise RuntimeError(f"relay serve did not start: {said.decode(errors='replace')}")
    return daemon


def _why(failed: Exception, launched: Launched) -> str:
    """A failed launch in one line: the error, and what its processes said on stderr."""
    why = f"{type(failed).__name__}: {failed}".strip().rstrip(":")
    if launched.said:
        why += f"; stderr: {launched.explain()}"
    return why[:400]


async def _connected_or_gave_up(link: frontend.ListeningLink, launched: object) -> None:
    """Both channels arrived; or raise as soon as the launch command has given up (it exited
    non-zero) rather than waiting out the timeout."""
    if not isinstance(launched, Launched):
        raise RuntimeError(f"launch failed: {launched!r}")
    waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(link.connected(60))}
    waits |= {asyncio.ensure_future(proc.wait()) for proc in launched.procs}
    try:
        while waits:
            done, waits = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                result = task.result()
                if result is None:
                    return  # connected
                if result != 0:
                    raise RuntimeError(f"launch command exited {result}")
        raise RuntimeError("launch command exited before the kernel connected")
    finally:
        for task in waits:
            task.cancel()


async def _connected_unless_failed(
    link: frontend.ListeningLink, launched: Launched, timeout_s: float
) -> None:
    """Both channels arrived; or raise as soon as a process of the launch exits non-zero
    (ControlMaster's exec refused past MaxSessions, say) instead of waiting out the timeout.
    A process that exits 0 (``ssh -f`` going to the background) is waited past."""
    connected: asyncio.Future[Any] = asyncio.ensure_future(link.connected(timeout_s))
    exits: set[asyncio.Future[Any]] = {asyncio.ensure_future(p.wait()) for p in launched.procs}
    try:
        waits: set[asyncio.Future[Any]] = {connected, *exits}
        while not connected.done():
            done, waits = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {connected}:
                if task.result() != 0:
                    raise RuntimeError(f"launch command exited {task.result()}")
        connected.result()
    finally:
        for task in (connected, *exits):
            task.cancel()


class _DirectWay:
    """The kernel connects straight to the front end: raw loopback TCP, the floor."""

    key = "direct"

    async def launch(self, link: LinkName, compute: bool = True) -> Launched:
        proc = await asyncio.create_subprocess_exec(
            KERNEL, "-wstp", "-LinkMode", "Connect", "-LinkName", str(link), *NO_STARTUP
        )
        return Launched([proc])

    async def finish(self, launched: Launched) -> None:
        for proc in launched.procs:
            await proc.wait()


def _leaf_profile(raw: str, top: int = 12) -> list[tuple[float, str]]:
    """Self time by function from py-spy's raw (collapsed-stack) output."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        leaf = stack.split(";")[-1]
        name, _, where = leaf.partition(" (")
        if "concurrent/futures/thread.py" in where:  # an idle executor thread
            continue
        key = f"{name} ({where.rstrip(')').split('site-packages/')[-1]})"
        counts[key] = counts.get(key, 0) + int(n)
        total += int(n)
    return [(100 * n / total, k) for k, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds all cores have been busy since boot (/proc/stat: user, nice, system, irq
    and softirq; not idle, iowait or what the host stole)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7)) / os.sysconf("SC_CLK_TCK")


def _minor_faults(pid: int) -> int:
    """Minor page faults of a process so far: pages it touched for the first time."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def _proc_stats(pid: int) -> tuple[float, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def _agent_pid(sock: Path, name: str | None = None) -> int | None:
    """The pid of the daemon's one host's agent (or host ``name``'s), if it has one
    (``relay status``)."""
    for host in client.request(sock, {"op": "status"})["hosts"]:
        if name is not None and host["name"] != name:
            continue
        pid = (host.get("resume") or {}).get("pid")
        if pid:
            return int(pid)
    return None


async def _until_nothing_unacknowledged(sock: Path) -> None:
    """Until the daemon holds nothing its host's agent has not acknowledged (ACKs come
    within mux.ACK_DELAY_S), then as long again for the agent's side of the same."""
    for _ in range(600):  # bounded: 30 s
        hosts = client.request(sock, {"op": "status"})["hosts"]
        if all(not (h.get("resume") or {}).get("unacked") for h in hosts):
            await asyncio.sleep(2 * mux.ACK_DELAY_S)
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the daemon still holds unacknowledged bytes after 30 s")


async def _until_kernels_gone(sock: Path) -> None:
    for _ in range(600):  # bounded: 30 s
        if not client.request(sock, {"op": "status"})["kernels"]:
            return
        await asyncio.sleep(0.05)


# -- the report -------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import asyncssh

    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "machine": f"{os.cpu_count()} cores, {cpu}, {platform.platform()}",
        "python": platform.python_version(),
        "asyncssh": asyncssh.__version__,
        "uvloop": importlib.metadata.version("uvloop"),
        "openssh": ssh,
    }


def _commit() -> str:
    """The commit measured (with "+changes" when the tree differs from it; the bench's own
    outputs, which a run rewrites, do not count)."""
    root = str(Path(__file__).resolve().parents[1])

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, check=True, timeout=10
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git(
            "status", "--porcelain", "--untracked-files=no",
            "--", ".", ":!BENCHMARKS.md", ":!bench/*.png",
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+changes" if dirty else head


def _stolen_s() -> float:
    """CPU seconds the host of this (virtual) machine has taken from it since boot, all cores
    together: /proc/stat's steal. A figure measured while the host took much is slower than
    the code it measures; the report says how much it took. 0 where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def render(config: Config, r: Results, plot_name: str) -> str:
    v = _versions()
    lines = [
        "# relay benchmarks",
        "",
        f"Generated by `make bench` on {datetime.date.today().isoformat()} at commit "
        f"{r.commit or _commit()} in {r.seconds:.0f} s. Machine: {v['machine']}. "
        f"Python {v['python']}, asyncssh {v['asyncssh']}, uvloop {v['uvloop']}, {v['openssh']}. "
        f"The machine is a virtual one: its host took {r.stolen:.0f} s of its "
        f"{r.seconds * (os.cpu_count() or 1):.0f} CPU-seconds during the run (steal), and "
        "the LaunchKernels table says how much it took during each of relay's cells.",
        "",
        "Medians, with (min-max) of the repeats beside them; every launch starts the simulator "
        "kernel (`relay-sim-kernel`, a Python program) and is timed from starting the launch "
        "command to both of the kernel's TCP connections arriving at the front end's listening "
        "link. The three ways are interleaved in every round. The single-launch and "
        "at-once tables time the launch path itself, so their kernels start at once "
        "(`-simstartup 0`); in the `LaunchKernels` table they take a second to start, as a "
        "real WolframKernel does.",
        "",
        "## Emulated round-trip time (the check)",
        "",
        "| RTT asked | TCP connect + first byte back | 100-byte ping-pong |",
        "|---|---|---|",
    ]
    for rtt, cal in r.calibration.items():
        lines.append(f"| {rtt} ms | {cal['connect_ms']:.1f} ms | {cal['pingpong_ms']:.2f} ms |")
    keys = [
        ("tunnel", "Tunnel's way (fresh `ssh -R 127.0.0.1:0 -R 127.0.0.1:0` per kernel)"),
        ("controlmaster", "OpenSSH ControlMaster (`-O forward` x2 + exec)"),
        ("relay", "relay launch (warm daemon)"),
    ]
    lines += [
        "",
        "## Single launch latency (warm, compute kernel)",
        "",
        "| RTT | " + " | ".join(name for _, name in keys) + " | relay vs Tunnel | "
        "relay vs ControlMaster | target: RTT + 40 ms |",
        "|---" * 7 + "|",
    ]
    for rtt in config.rtts_ms:
        cells = [r.single[(k, rtt)] for k, _ in keys]
        relay = cells[2].median
        target = rtt / 1000 + 0.040
        lines.append(
            f"| {rtt} ms | "
            + " | ".join(c.cell() for c in cells)
            + f" | {cells[0].median / relay:.1f}x faster | "
            f"{cells[1].median / relay:.1f}x faster | "
            f"{'met' if relay <= target else 'missed'} ({target * 1000:.0f} ms) |"
        )
    failed = [
        (key, rtt, why) for (key, rtt), sample in sorted(r.single.items()) for why in sample.reasons
    ]
    if failed:
        lines += ["", "Why the failed launches failed:", ""]
        lines += [f"- {key}, {rtt} ms: {why}" for key, rtt, why in failed]
    lines += [
        "",
        f"Floors on this machine: a bare `python -c pass` takes {r.floor_python.cell()}; the "
        f"simulator kernel started locally and connecting straight to the front end (no SSH "
        f"at all) takes {r.floor_direct.cell()}. The shim and the kernel are both Python "
        f"programs, so on this machine those two starts alone use up most of the 40 ms the "
        f"target allows; relay's own share is what the 0 ms row adds beyond them, and each "
        f"RTT row adds one round trip to it.",
        "",
    ]
    lines += _controller_rows(r)
    lines += [
        "",
        "What the check of who connects (`peer_check`) costs a launch where it takes a round "
        "trip: on the path without relay's agent (`resume_window_s = 0`), one supervisor round "
        "trip while the kernel's two connections are admitted in parallel; the same host with "
        '`peer_check = "off"` beside it, interleaved (a host with the check off is kept off '
        "the agent, whose listeners admit only the user's own). Through the agent the check "
        "is made on the host, with no round trip.",
        "",
        "| RTT | relay, resume_window_s = 0 (peer_check uid) | relay (peer_check off) | cost |",
        "|---|---|---|---|",
    ]
    for rtt, unchecked in r.unchecked.items():
        checked = r.today[rtt]
        lines.append(
            f"| {rtt} ms | {checked.cell()} | {unchecked.cell()} | "
            f"{(checked.median - unchecked.median) * 1000:+.0f} ms |"
        )
    lines += _agent_rows(r)
    lines += [
        "",
        f"## {config.concurrent} compute kernels launched at once",
        "",
        "| RTT | " + " | ".join(name for _, name in keys) + " | relay vs Tunnel | "
        "target: 3 x RTT + 600 ms |",
        "|---" * 6 + "|",
    ]
    for rtt in config.rtts_ms:
        cells = [r.concurrent[(k, rtt)] for k, _ in keys]
        relay = cells[2].median
        target = 3 * rtt / 1000 + 0.600
        versus = (
            f"{cells[0].median / relay:.1f}x faster"
            if cells[0].values
            else f"Tunnel lost kernels in every round ({cells[0].failures})"
        )
        lines.append(
            f"| {rtt} ms | " + " | ".join(c.cell() for c in cells) + f" | {versus} | "
            f"{'met' if relay <= target else 'missed'} ({target * 1000:.0f} ms) |"
        )
    lines += [
        "",
        "A failed cell counts the kernels that never connected. The bench's sshd keeps "
        "the default `MaxSessions 10` and has `MaxStartups 100`, so that Tunnel's 32 fresh "
        "connections are not dropped as sshd's default `10:30:100` would drop some. "
        + (
            "Links that carried bytes not their own (the front end's first message did "
            "not come back as sent), counted as failed: "
            + ", ".join(f"{k} at {rtt} ms: {n}" for (k, rtt), n in r.wrong_bytes.items())
            + ". "
            if r.wrong_bytes
            else ""
        )
        + "This table models launches that all start at once (several front ends or "
        "scripts at the same time); the Parallel package never launches this way: see "
        "the next table for what `LaunchKernels` does.",
        "",
        *_pool_section(config, r),
    ]
    lines += _link_section(config, r)
    lines += _net_link_section(config, r)
    shim_ok = r.shim_wall.median <= 0.040
    lines += [
        "",
        "## The shim and the daemon",
        "",
        f"- `relay launch` process on a warm daemon, no kernel: wall "
        f"{r.shim_wall.cell()}, CPU {r.shim_cpu.cell()} (target at most 40 ms wall: "
        f"{'met' if shim_ok else 'missed'})",
    ]
    idle = r.daemon.get("idle")
    k = config.daemon_kernels
    lines += _daemon_footprint(r)
    lines.append(
        f"- (the bench's own daemon, holding one connection per emulated RTT: "
        f"{r.daemon_scaffold[0]:.1f} MB RSS, {r.daemon_scaffold[1]} fds)"
    )
    lines += _agent_footprint(r)
    quiet, burst = (r.daemon.get(f"{k} kernels, {label}") for label in (QUIET, GREETED))
    if idle and quiet and burst and "after" in r.daemon:
        after_ok = "met" if r.daemon["after"][0] <= idle[0] * 1.1 else "missed"
        lines.append(
            f"- target: at most 60 MB with {k} kernels: with quiet links "
            f"{'met' if quiet[0] <= 60 else 'missed'}, after the burst "
            f"{'met' if burst[0] <= 60 else 'missed'} (at rest); back within 10% of idle "
            f"after ({after_ok})"
        )
    if r.lookups:
        lines += ["", *_lookup_section(r)]
    for direction, profile in r.profile.items():
        lines += [
            "",
            f"## Where the daemon's time goes during bulk transfer {direction} (py-spy, self time)",
            "",
            "| share | function |",
            "|---|---|",
        ]
        lines += [f"| {share:.1f}% | `{name}` |" for share, name in profile]
    if r.profile:
        lines += [
            "",
            "The daemon's data path is asyncssh's. Through the agent, one channel to its "
            "socket carries every link's frames (`relay/agent/mux.py`), and each link's "
            "stream (`relay/agent/session.py`) writes a frame's bytes to the front end's "
            "socket as they arrive, uncopied, and keeps what it sends until the agent "
            "acknowledges it; without the agent, relay's pipe (`relay/ssh/pipe.py`) sits "
            "between a forwarded channel and the socket. From the kernel, sshd's packets are "
            "decrypted (AES-GCM, in C) and parsed in Python (`_recv_packet`, "
            "`_recv_pkthdr`). relay invites packets of up to 128 KiB, but sshd sends what "
            "it has read from its socket by the time it can send: a count of "
            "the packets in one run (not part of this bench) found 28 KiB on average "
            "through the agent and 36 KiB without it. Towards the kernel sshd sets the "
            "packet size (32 KiB for forwarded and streamlocal channels): each 32 KiB is "
            "built, encrypted and written on its own. Both directions pay asyncssh's "
            "per-packet cost in Python. asyncssh would also send an empty `SSH_MSG_IGNORE` "
            "before each packet; relay leaves that out (`relay/ssh/ignorepad.py`).",
        ]
    lines += ["", f"![launch latency against RTT]({plot_name})", ""]
    return "\n".join(lines)


POOL_WAYS = [
    ("relay", "relay"),
    ("tunnel", "Tunnel's way"),
    ("controlmaster", "ControlMaster"),
]


def _controller_rows(r: Results) -> list[str]:
    """A warm controller launch (through the agent, the default): its link and Dynamic's
    hook stream, both from the spares the daemon keeps on the host."""
    floor = r.floor_direct.median if r.floor_direct.values else 0.0
    return [
        "relay controller launch (with the Dynamic hook: a control channel and the "
        "kernel init file), through the agent:",
        "",
        *(
            f"- {rtt} ms RTT: {s.cell()}, "
            f"{(s.median - rtt / 1000 - floor) * 1000:.0f} ms beyond RTT + the kernel's start"
            for rtt, s in r.single_controller.items()
            if s.values
        ),
    ]


def _agent_rows(r: Results) -> list[str]:
    """A warm launch through relay's agent beside today's path, and the agent's target: one
    round trip plus 40 ms beyond the kernel's own start (the floor: the simulator kernel
    started here, connecting straight to the front end)."""
    floor = r.floor_direct.median if r.floor_direct.values else 0.0
    lines = [
        "",
        "What kernels that outlive the network cost a launch: relay's agent (the default) "
        "beside the same host with `resume_window_s = 0` (sshd's listeners and the shell "
        "supervisor), interleaved. Target: one round trip plus 40 ms beyond the kernel's own "
        f"start (its floor here: {r.floor_direct.cell()}).",
        "",
        "| RTT | relay (agent) | relay (resume_window_s = 0) | cost | agent beyond RTT + the "
        "kernel's start | target (40 ms) | literally within RTT + 40 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for rtt, today in r.today.items():
        agent = r.single[("relay", rtt)]
        beyond = agent.median - rtt / 1000 - floor
        lines.append(
            f"| {rtt} ms | {agent.cell()} | {today.cell()} | "
            f"{(agent.median - today.median) * 1000:+.0f} ms | {beyond * 1000:.0f} ms | "
            f"{'met' if beyond <= 0.040 else 'missed'} | "
            f"{'yes' if agent.median <= (rtt + 40) / 1000 else 'no'} ({rtt + 40} ms) |"
        )
    return lines


def _link_section(config: Config, r: Results) -> list[str]:
    lines = [
        "## Through a link, on loopback",
        "",
        "| path | 100-byte ping-pong | bulk to kernel | bulk from kernel | "
        "SSH client's CPU per GiB, to / from | the machine's CPU per GiB, to / from |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "direct": "raw TCP (kernel connects directly)",
        "openssh": "OpenSSH -R (default cipher)",
        "openssh-aes128-gcm": "OpenSSH -R, aes128-gcm",
        "asyncssh": "plain asyncssh remote forward (uvloop, AES-GCM, its own forwarder)",
        "relay": "relay (through its agent, the default)",
        "relay-today": "relay, resume_window_s = 0 (sshd's listeners)",
    }
    for key, label in names.items():
        if key not in r.pingpong:
            continue
        cells = []
        for per_gib in (r.bulk_cpu, r.bulk_machine):
            cpu = [per_gib.get((key, d)) for d in DIRECTIONS]
            cells.append(
                " / ".join(f"{c.median:.2f} s" for c in cpu if c is not None)
                if all(c is not None and c.values for c in cpu)
                else "-"
            )
        lines.append(
            f"| {label} | {r.pingpong[key].cell('us', 1e6)} | "
            f"{r.bulk[(key, 'to kernel')].cell('MB/s', 1e-6)} | "
            f"{r.bulk[(key, 'from kernel')].cell('MB/s', 1e-6)} | {cells[0]} | {cells[1]} |"
        )
    if "relay" in r.pingpong and "openssh" in r.pingpong:
        rel_rtt = r.pingpong["relay"].median / r.pingpong["openssh"].median
        tput = [r.bulk[("relay", d)].median / r.bulk[("openssh", d)].median for d in DIRECTIONS]
        same = [
            r.bulk[("relay", d)].median / r.bulk[("openssh-aes128-gcm", d)].median
            for d in DIRECTIONS
        ]
        bound = ""
        if "asyncssh" in r.pingpong:
            stack = [
                r.bulk[("relay", d)].median / r.bulk[("asyncssh", d)].median for d in DIRECTIONS
            ]
            plain_rtt = r.pingpong["asyncssh"].median / r.pingpong["openssh"].median
            plain_tput = [
                r.bulk[("asyncssh", d)].median / r.bulk[("openssh", d)].median for d in DIRECTIONS
            ]
            bound = (
                f"- relay / plain asyncssh (the stack relay stands on, without relay): "
                f"ping-pong {r.pingpong['relay'].median / r.pingpong['asyncssh'].median:.2f}x, "
                f"bulk {stack[0]:.2f}x to and {stack[1]:.2f}x from the kernel. Plain asyncssh "
                f"/ OpenSSH default: ping-pong {plain_rtt:.2f}x, bulk {plain_tput[0]:.2f}x to "
                f"and {plain_tput[1]:.2f}x from the kernel: where relay misses a target and "
                f"plain asyncssh misses it too, that figure is the bound of the Python stack "
                f"on this machine, and relay reaches it."
            )
        lines += [
            "",
            f"- ping-pong: relay / OpenSSH = {rel_rtt:.2f}x",
            f"- bulk: relay / OpenSSH default = {tput[0]:.2f}x to, {tput[1]:.2f}x from "
            f"the kernel; against OpenSSH with the same cipher: {same[0]:.2f}x, {same[1]:.2f}x",
            *([bound] if bound else []),
            "- here the front end waits for the kernel's first frame (plain asyncssh's "
            "forwarder drops what a front end writes the instant it accepts; relay's link "
            "tests cover that case).",
            f"- bulk size: {config.bulk_bytes >> 20} MiB each way, {config.link_rounds} "
            f"interleaved rounds; ping-pong: {config.pingpongs} round trips per round",
            "- every path joins the same two Python programs (the simulator's front end and "
            "kernel), which share the machine's two cores with sshd and relay or ssh.",
        ]
        busy = [
            r.bulk[(key, d)].median * r.bulk_machine[(key, d)].median / (1 << 30)
            for key in names
            for d in DIRECTIONS
            if key != "direct" and (key, d) in r.bulk_machine and (key, d) in r.bulk
        ]
        if busy:
            lines.append(
                f"- while a path over SSH carried bulk, {min(busy):.2f}-{max(busy):.2f} of the "
                f"machine's {os.cpu_count()} cores were busy (throughput x the machine's CPU "
                f"per GiB), whichever the path: near saturation, so here a path's pace is set "
                f"largely by its CPU per GiB, all of its processes counted, the far side's "
                f"(sshd, relay's agent) included, which on a real host would have cores of "
                f"their own."
            )
        if all(d in r.agent_cpu for d in DIRECTIONS):
            to_a, from_a = (r.agent_cpu[d].median for d in DIRECTIONS)
            lines.append(
                f"- relay's agent, the process its path adds on the host, spent {to_a:.2f} s "
                f"/ {from_a:.2f} s of CPU per GiB to / from the kernel: on this machine the "
                f"same two cores as everything else on the path."
            )
        faults = [
            f"{what} {' / '.join(f'{r.bulk_faults[(key, d)].median:.1f}' for d in DIRECTIONS)}"
            for key, what in (("relay", "through its agent"), ("relay-today", "without it"))
            if all((key, d) in r.bulk_faults for d in DIRECTIONS)
        ]
        if faults:
            lines.append(
                "- the daemon's minor page faults per MiB carried, to / from the kernel: "
                f"{'; '.join(faults)} (pages the C heap gave back to the system and took "
                "again: to the kernel through the agent, the buffers a stream keeps until "
                "they are acknowledged)."
            )
        if all(d in r.agent_faults for d in DIRECTIONS):
            to_f, from_f = (r.agent_faults[d].median for d in DIRECTIONS)
            lines.append(
                f"- the agent's minor page faults per MiB carried, to / from the kernel: "
                f"{to_f:.1f} / {from_f:.1f}."
            )
    if "relay" in r.pingpong and "openssh" in r.pingpong:
        rows = [("relay", "through its agent")]
        if "relay-today" in r.pingpong:
            rows.append(("relay-today", "resume_window_s = 0"))
        for key, what in rows:
            ping = r.pingpong[key].median / r.pingpong["openssh"].median
            to_k, from_k = (
                r.bulk[(key, d)].median / r.bulk[("openssh", d)].median for d in DIRECTIONS
            )
            # three decimals, so that a ratio just under its target does not print as it
            lines.append(
                f"- relay {what} / OpenSSH default: ping-pong {ping:.3f}x (target at most "
                f"1.5x: {'met' if ping <= 1.5 else 'missed'}), bulk {to_k:.3f}x to and "
                f"{from_k:.3f}x from the kernel (target at least 0.95x both ways: "
                f"{'met' if min(to_k, from_k) >= 0.95 else 'missed'})."
            )
    return lines


def _net_link_section(config: Config, r: Results) -> list[str]:
    """The link table at emulated RTTs, and the targets' verdicts there."""
    rtts = sorted({rtt for rtt, _ in r.net_pingpong})
    if not rtts:
        return []
    names = {
        "openssh": "OpenSSH -R (default cipher)",
        "relay": "relay (through its agent, the default)",
        "relay-today": "relay, resume_window_s = 0 (sshd's listeners)",
    }
    lines = [
        "",
        "## Through a link, over an emulated network",
        "",
        "| RTT | path | 100-byte ping-pong | bulk to kernel | bulk from kernel |",
        "|---|---|---|---|---|",
    ]
    for rtt in rtts:
        for key, label in names.items():
            if (rtt, key) not in r.net_pingpong:
                continue
            bulk = [r.net_bulk.get((rtt, key, d), Sample()) for d in DIRECTIONS]
            lines.append(
                f"| {rtt} ms | {label} | {r.net_pingpong[(rtt, key)].cell('ms', 1e3, 2)} | "
                f"{bulk[0].cell('MB/s', 1e-6)} | {bulk[1].cell('MB/s', 1e-6)} |"
            )
    lines += [
        "",
        f"- the same two programs as on loopback, through bench/delayproxy.py (the RTT check "
        f"above), which every path crosses: a Python process on the same two cores. "
        f"{config.net_bulk_bytes >> 20} MiB each way, {config.link_rounds} interleaved "
        f"rounds; about two seconds of round trips per path and round.",
    ]
    for rtt in rtts:
        if (rtt, "openssh") not in r.net_pingpong:
            continue
        for key, what in (("relay", "through its agent"), ("relay-today", "resume_window_s = 0")):
            if (rtt, key) not in r.net_pingpong:
                continue
            ping = r.net_pingpong[(rtt, key)].median / r.net_pingpong[(rtt, "openssh")].median
            to_k, from_k = (
                r.net_bulk.get((rtt, key, d), Sample()).median
                / r.net_bulk.get((rtt, "openssh", d), Sample()).median
                for d in DIRECTIONS
            )
            lines.append(
                f"- at {rtt} ms, relay {what} / OpenSSH default: ping-pong {ping:.3f}x "
                f"(target at most 1.5x: {'met' if ping <= 1.5 else 'missed'}), bulk "
                f"{to_k:.3f}x to and {from_k:.3f}x from the kernel (target at least 0.95x both "
                f"ways: {'met' if min(to_k, from_k) >= 0.95 else 'missed'})."
            )
    return lines


def _pool_section(config: Config, r: Results) -> list[str]:
    if not r.pools:
        return []
    lines = [
        "",
        "## LaunchKernels as the Parallel package runs it (kernels take 1 s to start)",
        "",
        "`LaunchRemote` creates all n links, runs `Run[$RemoteCommand]` once per kernel, one "
        "after another, and only then waits for all of them (docs/topology.md §4). "
        "Timed from the first `Run` to the last kernel's two connections. "
        + (
            f"relay's cells are the median of {config.pool_relay_rounds} rounds (relay, the "
            "other ways once, then relay again), as they are short enough for a burst of the "
            "host's steal to decide one; the other ways' cells, which take up to 90 s, run once. "
            if config.pool_relay_rounds > 1
            else "One round each. "
        )
        + "relay's `Run` returns once the kernel is started; Tunnel's once both of its "
        "forwards are allocated (where `ssh -f` goes to the background); ControlMaster's once "
        "its two `-O forward` are done and the exec is started. relay's cell starts "
        "`relay connect HOST --kernels n` in the background just before the first `Run`, "
        "as evaluating `RelayMachine[host, n]` does. A cell fails when a launch "
        f"command exits non-zero or a kernel has not connected {POOL_WAIT_S:g} s after the "
        "last `Run`. The simulated kernel's 1 s counts from its exec, its own Python start "
        "included. Everything shares this machine's two cores: the front end, the launch "
        "commands, sshd, relay or ssh, and the n kernels, whose CPU a real remote host would "
        "spend instead. The simulated kernel sleeps through its second and imports only C "
        "modules for its sockets and threads, so that its start costs little more than a bare "
        "Python start (the floors above). A 64-kernel cell keeps both cores busy, so CPU "
        "that the virtual machine's host takes meanwhile (steal: the last column, for each of "
        "relay's rounds, over both cores) lengthens it.",
        "",
        "| RTT | n | " + " | ".join(name for _, name in POOL_WAYS) + " | relay vs Tunnel | "
        "target: 1 s + n x 60 ms + 2 RTT | CPU the host took during relay's cell |",
        "|---" * 8 + "|",
    ]
    for rtt in config.rtts_ms:
        for n in config.pool_sizes:
            cells = [r.pools.get((key, rtt, n), Sample()) for key, _ in POOL_WAYS]
            relay = cells[0].median
            target = 1.0 + n * 0.060 + 2 * rtt / 1000
            versus = (
                f"{cells[1].median / relay:.1f}x faster"
                if cells[1].values and cells[0].values
                else "-"
            )
            verdict = "met" if cells[0].values and relay <= target else "missed"
            took = r.pool_stolen.get((rtt, n))
            stolen = " / ".join(f"{t:.1f}" for t in took) + " s" if took else "-"
            lines.append(
                f"| {rtt} ms | {n} | "
                + " | ".join(c.cell("s", 1.0, 2) for c in cells)
                + f" | {versus} | {verdict} ({target:.2f} s) | {stolen} |"
            )
    key = ("relay", 50, 16), ("tunnel", 50, 16)
    if all(k in r.pools and r.pools[k].values for k in key):
        ratio = r.pools[key[1]].median / r.pools[key[0]].median
        lines += [
            "",
            f"- n = 16 at 50 ms RTT: relay is {ratio:.1f}x faster than Tunnel's way "
            f"(target at least 4x: {'met' if ratio >= 4 else 'missed'})",
        ]
    failed = [
        (key, rtt, n, why)
        for (key, rtt, n), sample in sorted(r.pools.items())
        for why in sample.reasons
    ]
    if failed:
        lines += ["", "Why the failed cells failed:", ""]
        lines += [f"- {key}, {rtt} ms, n = {n}: {why}" for key, rtt, n, why in failed]
    lines += ["", "![LaunchKernels total against n](bench/pool-launch.png)", ""]
    return lines


def plot_pools(config: Config, r: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(config.rtts_ms), figsize=(3.2 * len(config.rtts_ms), 3.6),
                             sharey=True)  # fmt: skip
    for ax, rtt in zip(axes if len(config.rtts_ms) > 1 else [axes], config.rtts_ms, strict=True):
        for key, label in POOL_WAYS:
            ns = [n for n in config.pool_sizes if r.pools.get((key, rtt, n), Sample()).values]
            ax.plot(ns, [r.pools[(key, rtt, n)].median for n in ns], marker="o", label=label)
        ax.set_title(f"{rtt} ms RTT")
        ax.set_xlabel("kernels (n)")
        ax.grid(alpha=0.3)
    first = axes[0] if len(config.rtts_ms) > 1 else axes
    first.set_ylabel("LaunchKernels total (s)")
    first.legend(fontsize=8)
    fig.suptitle("LaunchKernels as the Parallel package runs it (1 s kernel start-up)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(config: Config, r: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (
        ("tunnel", "Tunnel's way"),
        ("controlmaster", "ControlMaster"),
        ("relay", "relay"),
    ):
        xs, med, lo, hi = [], [], [], []
        for rtt in config.rtts_ms:
            s = r.single[(key, rtt)]
            if s.values:
                xs.append(rtt)
                med.append(s.median * 1000)
                lo.append((s.median - min(s.values)) * 1000)
                hi.append((max(s.values) - s.median) * 1000)
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.plot(
        config.rtts_ms,
        [rtt + 40 for rtt in config.rtts_ms],
        "k--",
        lw=1,
        label="target: RTT + 40 ms",
    )
    ax.set_xlabel("emulated round-trip time (ms)")
    ax.set_ylabel("single launch latency (ms)")
    ax.set_title("Warm single launch, until both channels reach the front end")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _daemon_footprint(r: Results) -> list[str]:
    lines = [
        f"- daemon serving one host, {label}: {rss:.1f} MB RSS at rest "
        f"({r.daemon_at_once.get(label, rss):.1f} MB at once), {fds} fds"
        for label, (rss, fds) in r.daemon.items()
    ]
    if r.daemon_holders:
        held = ", ".join(f"{mb:.1f} {who}" for who, mb in r.daemon_holders.items())
        lines.append(
            f"- where the idle daemon's RSS is (its smaps, MB): {held}. relay's own modules "
            f"add {r.relay_modules_mb:.1f} MB of it, at import, to a process that has "
            f"imported the rest of what the daemon does: the rest is Python, asyncssh with "
            f"cryptography, pydantic, uvloop and structlog"
        )
    lines.append(
        "- the daemon ran as `relay serve` starts itself: "
        + (
            f"lean (`{' '.join(lean.BASE_FLAGS)}`: no docstrings, asserts or column tables in the "
            f"code it loads; relay/lean.py)"
            if r.daemon_lean
            else "not lean (its log says why: relay/lean.py)"
        )
    )
    return lines


def _lookup_section(r: Results) -> list[str]:
    """The peer check's look-up, per connection, each way (bench/lookup.py)."""
    lines = [
        "## The peer check's cost per connection",
        "",
        "Who made a connection to a link's listener (the agent's, on the host; relay's own "
        "on this machine), and who took relay's own connection to the front end, is one "
        "look-up per connection: the kernel asked for that one socket (netlink's sock_diag, "
        "`relay/sockdiag.py`), or where it gives no answer `/proc/net/tcp` read whole. "
        "Medians of one look-up of a live connection, in this Python (the agent's code "
        "under it too).",
        "",
        "| the machine's TCP table | " + " | ".join(lookup.WAYS) + " |",
        "|---|" + "---|" * len(lookup.WAYS),
    ]
    for label, (rows, timings) in r.lookups.items():
        cells = " | ".join(f"{timings[way]:,.0f} us" for way in lookup.WAYS)
        lines.append(f"| {rows:,} rows, {label} | {cells} |")
    return lines


def _agent_footprint(r: Results) -> list[str]:
    """The host's agent beside the daemon: its RSS idle and with every kernel's two links
    connected and idle, and what one idle link costs it."""
    lines = [
        f"- relay's agent on the host, {label}: {rss:.1f} MB RSS, {fds} fds"
        for label, (rss, fds) in r.agent.items()
    ]
    if "idle" in r.agent and len(r.agent) == 2:
        (label, (busy, _)) = list(r.agent.items())[1]
        kernels = int(label.split()[0])
        per_link = (busy - r.agent["idle"][0]) * 1024 / (2 * kernels)
        lines.append(
            f"- the agent's memory per idle link: {per_link:.1f} KB "
            f"(({busy:.1f} - {r.agent['idle'][0]:.1f}) MB over {2 * kernels} links: its kernels' "
            "processes are their own; the agent holds a socket, a stream and its bookkeeping)"
        )
    return lines


async def main(config: Config) -> Results:
    results = await Bench(config).run()
    if config.only == "pool":
        print("\n".join(_pool_section(config, results)[:-2]))
    elif config.only == "link":
        print("\n".join([*_link_section(config, results), *_net_link_section(config, results)]))
    elif config.only == "single":
        print("\n".join([*_agent_rows(results), "", *_controller_rows(results)]))
    elif config.only == "footprint":
        print("\n".join([*_daemon_footprint(results), *_agent_footprint(results)]))
    elif config.only == "lookup":
        print("\n".join(_lookup_section(results)))
    elif config.write_report:
        plot_path = config.out / "bench" / "launch-latency.png"
        plot(config, results, plot_path)
        if results.pools:
            plot_pools(config, results, config.out / "bench" / "pool-launch.png")
        text = render(config, results, "bench/launch-latency.png")
        (config.out / "BENCHMARKS.md").write_text(text)
        print(text)
    return results
