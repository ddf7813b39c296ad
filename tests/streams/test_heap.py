"""The C heap under what the daemon and its agent keep for a resume (``relay/heap.py``, and
its twin ``Heap`` in ``relay/agent/remote.py``): kept while links carry bulk, given back at
rest. Each case runs in a process of its own, as the policy is a process's; the agent's
under every Python here, as it runs on hosts.

What a stream keeps is modelled as the daemon and the agent meet it: 256 KiB reads (uvloop's,
a kernel's bulk), a stream's LIMIT of them held until the other side's ACK, then freed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relay import heap
from relay.agent import remote as _remote
from tests.conftest import RelayHome, start_daemon
from tests.streams.test_agent_local import AGENT, interpreters

remote: Any = _remote  # untyped: one Python 3.6 file

pytestmark = pytest.mark.skipif(not heap.glibc(), reason="the policy tunes glibc's malloc")

ROOT = Path(__file__).parents[2]
ROUNDS = 20
PAGES = (4 << 20) // os.sysconf("SC_PAGE_SIZE")  # what one round holds

PROBE = r"""
import json, os, resource, sys, time

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10

pins = []

def hold(pin):
    kept = [b"x" * (256 << 10) for _ in range(16)]  # LIMIT (4 MiB) of reads, unacknowledged
    if pin:  # a block taken after them: the 4 MiB cannot go back by the top of the heap
        pins.append(b"p" * (64 << 10))
    return len(kept)  # then acknowledged: all freed

def spin(cpu_s):  # carrying: CPU spent between two looks
    cpu, wall = time.process_time(), time.monotonic()
    while time.process_time() - cpu < cpu_s and time.monotonic() - wall < 60:
        pass

which, agent_path = sys.argv[1], sys.argv[2]
rest = None
if which == "daemon":
    from relay import heap
    assert heap.keep()
    rest = heap.Rest().tick
    busy_cpu = 3 * heap.REST_CPU_S
elif which == "agent":
    import importlib.util
    spec = importlib.util.spec_from_file_location("relayagent", agent_path)
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    agent.HEAP_EVERY_S = 0.0  # every call looks (the agent's loop calls it every turn)
    kept_heap = agent.Heap()
    assert kept_heap.libc is not None
    busy_cpu = 3 * agent.HEAP_REST_CPU_S

    def rest(stir=True):
        if stir:
            kept_heap.stirred = True  # a read came (the agent's recv says so)
        return kept_heap.rest()
out = {}
hold(False)  # the heap grows to hold a stream once
before = faults()
for _ in range(int(sys.argv[3])):
    hold(False)
out["faults"] = faults() - before
if rest is not None:
    rest()
    rest()  # the rounds above were no rest; now it is, and what they left is given back
    hold(True)
    held = rss()
    out["trimmed"] = rest()
    out["again"] = rest()  # nothing new came in since
    out["freed"] = held - rss()
    hold(True)  # the same pages used and freed again: resident once more
    held = rss()
    out["after_more"] = rest()
    out["freed_again"] = held - rss()
    hold(True)
    spin(busy_cpu)
    out["busy"] = rest()
    if which == "agent":
        out["still_stirred"] = kept_heap.stirred  # so its loop looks again
        out["then"] = rest(stir=False)
        hold(True)
        out["unstirred"] = kept_heap.rest()  # no read since: the agent's loop sleeps on
    else:
        out["then"] = rest()
print(json.dumps(out))
"""


def probe(python: str, which: str, rounds: int = ROUNDS) -> dict[str, int | bool]:
    out = subprocess.run(
        [python, "-c", PROBE, which, str(AGENT), str(rounds)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))},
            "PYTHONWARNINGS": "ignore",
        },
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, int | bool] = json.loads(out.stdout)
    return result


def test_glibc_left_alone_gives_the_heap_back_and_takes_it_again_every_round() -> None:
    """The cost ``keep`` removes, shown where it is not applied: each round's 4 MiB comes
    back from the system as fresh pages, a fault each."""
    faults = probe(sys.executable, "bare")["faults"]
    assert faults >= ROUNDS * PAGES // 2, faults


@pytest.mark.parametrize("which", ["daemon", "agent"])
def test_a_kept_heap_reuses_its_pages_round_after_round(which: str) -> None:
    faults = probe(sys.executable, which)["faults"]
    assert faults < PAGES // 4, faults  # not one round's worth over all twenty


@pytest.mark.parametrize("which", ["daemon", "agent"])
def test_at_rest_the_heap_gives_back_what_it_took_in(which: str) -> None:
    """Pages given back, then used and freed again, are given back again (they count as
    free bytes throughout); and nothing is trimmed while the process carries."""
    out = probe(sys.executable, which, rounds=1)
    assert out["trimmed"] is True
    assert out["again"] is False  # what was given back is not trimmed at every tick
    assert int(out["freed"]) >= (3 << 20), out  # most of the 4 MiB a stream held
    assert out["after_more"] is True
    assert int(out["freed_again"]) >= (3 << 20), out
    assert out["busy"] is False, out  # carrying: the next look, not this one
    assert out["then"] is True, out
    if which == "agent":
        assert out["still_stirred"] is True and out["unstirred"] is False, out


@pytest.mark.parametrize("python", interpreters())
def test_the_agents_heap_under_every_python(python: str) -> None:
    out = probe(python, "agent", rounds=4)
    assert int(out["faults"]) < PAGES // 4, out
    assert out["trimmed"] is True and out["again"] is False and out["after_more"] is True, out
    assert int(out["freed_again"]) >= (3 << 20), out


NO_CTYPES = r"""
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("relayagent", sys.argv[1])
agent = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agent)
if sys.argv[2] == "musl":
    def confstr(name):
        raise ValueError("unrecognized configuration name")
    os.confstr = confstr  # as where the C library is not glibc
elif sys.argv[2] == "unnamed":
    os.confstr = lambda name: None  # a C library that answers, but not as glibc
else:
    sys.modules["ctypes"] = None  # a Python built without libffi
h = agent.Heap()
print(h.libc is None, h.rest())
"""


@pytest.mark.parametrize("where", ["musl", "unnamed", "no-ctypes"])
def test_the_agent_leaves_a_heap_it_cannot_tune_alone(where: str) -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-c", NO_CTYPES, str(AGENT), where],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


@pytest.mark.parametrize("answer", [ValueError("unrecognized"), None, "", "musl 1.2"])
def test_the_daemon_leaves_a_heap_it_cannot_tune_alone(
    monkeypatch: pytest.MonkeyPatch, answer: object
) -> None:
    def confstr(name: str) -> object:
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(os, "confstr", confstr)
    assert heap._glibc() is None
    monkeypatch.setattr(heap, "_LIBC", None)
    assert heap.keep() is False
    assert heap.Rest().tick() is False


async def test_relay_serve_keeps_the_heap_and_looks_at_it_at_its_tick(
    home: RelayHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's part: ``serve`` applies the policy before it accepts a request, and its
    tick (``relay.wake``) looks at the heap. (What a look does is the subprocess probes'
    part: this process's heap is shaped by every test before.)"""
    kept: list[bool] = []
    keep = heap.keep

    def recorded() -> bool:
        kept.append(keep())
        return kept[-1]

    monkeypatch.setattr(heap, "keep", recorded)
    async with start_daemon(home) as running:
        assert kept == [True]
        looks = running.daemon.heap.looks
        running.daemon._tick(0.0)  # called here rather than waited for
        assert running.daemon.heap.looks == looks + 1


def test_the_agents_reads_stir_its_heap_and_its_loop_wakes_for_it(tmp_path: Path) -> None:
    """The agent's wiring: a read stirs the heap, counting from the read (not from a look
    an idle hour ago, which would find the burst's start at rest), and the idle loop sleeps
    HEAP_EVERY_S, not 5 s, until a look finds the agent at rest."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    agent = remote.Agent(str(tmp_path), "t", "s" * 64, server, 900.0, 0)
    ours, theirs = socket.socketpair()
    try:
        agent.chan = ours  # attached, no kernels: the loop's idle sleep
        assert agent.timeout() == 5.0
        agent.heap.at -= 3600.0  # its last look, an idle hour ago
        theirs.sendall(b"a result")
        assert agent.recv(ours, False) == b"a result"
        assert agent.heap.stirred
        assert agent.timeout() == remote.HEAP_EVERY_S
        assert agent.heap.rest() is False  # not due: HEAP_EVERY_S from the read
        assert agent.heap.stirred
        agent.heap.at -= remote.HEAP_EVERY_S  # due now, and nothing was spent since
        agent.heap.rest()
        assert not agent.heap.stirred
        assert agent.timeout() == 5.0
    finally:
        agent.chan = None
        for sock in (ours, theirs, server):
            sock.close()
        agent.sel.close()
        os.close(agent.wake_r)
        os.close(agent.wake_w)
