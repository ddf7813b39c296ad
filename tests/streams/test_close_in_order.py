"""``close_in_order``: a host closes after every host whose connection goes through it."""

from __future__ import annotations

import asyncio
from typing import cast

from relay.ssh.host import HostSession, close_in_order


class FakeHost:
    def __init__(self, key: str, via: str | None, log: list[str]) -> None:
        self.key, self.via, self._log = key, via, log

    async def aclose(self) -> None:
        self._log.append(f"start {self.key}")
        await asyncio.sleep(0)  # let whatever runs beside it run
        self._log.append(f"end {self.key}")


async def order(*hosts: tuple[str, str | None]) -> list[str]:
    log: list[str] = []
    fakes = [FakeHost(key, via, log) for key, via in hosts]
    await asyncio.wait_for(close_in_order(cast(list[HostSession], fakes)), 10)
    return log


def closed_before(log: list[str], first: str, then: str) -> bool:
    return log.index(f"end {first}") < log.index(f"start {then}")


async def test_a_chain_closes_from_its_far_end_and_others_meanwhile() -> None:
    # gate <- login <- node1, node2 (a Slurm cluster behind a bastion); "other" on its own
    log = await order(
        ("gate", None),
        ("login", "gate"),
        ("node1", "login"),
        ("node2", "login"),
        ("other", None),
    )
    assert sorted(e for e in log if e.startswith("end")) == [
        f"end {k}" for k in sorted(("gate", "login", "node1", "node2", "other"))
    ]
    assert closed_before(log, "node1", "login") and closed_before(log, "node2", "login")
    assert closed_before(log, "login", "gate")
    assert log.index("start other") < log.index("end node1")  # not held up by the chain


async def test_a_jump_host_not_among_them_and_a_loop_still_close_once_each() -> None:
    log = await order(("a", "b"), ("b", "a"), ("c", "gone"), ("d", "d"))
    assert sorted(e for e in log if e.startswith("end")) == ["end a", "end b", "end c", "end d"]
