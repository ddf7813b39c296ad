"""Shutdown in dependency order: a host reached through a jump host (ProxyJump, or a Slurm
login node for its compute nodes) is closed before the jump host its connection goes through,
so its supervisor hears its end of input and ends its kernels while the tunnel still carries it."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import RelayHome, start_daemon


async def test_a_host_behind_a_jump_host_closes_before_the_jump_host(
    home: RelayHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.add_host("viajump", jump="local")
    async with start_daemon(home) as running:
        behind = running.daemon.host("viajump")
        await asyncio.wait_for(behind.live(), 60)  # connects "local" too, as its jump host
        gate = running.daemon.hosts["local"]
        tunnel = await gate.connection()
        gate_open_after: list[bool] = []
        close_behind = behind.aclose

        async def aclose() -> None:
            await close_behind()
            gate_open_after.append(not tunnel.is_closed())

        monkeypatch.setattr(behind, "aclose", aclose)
        running.stop.set_result(None)
        await asyncio.wait_for(running.task, 60)
    assert gate_open_after == [True], "the jump host stayed open until its dependent closed"
    assert tunnel.is_closed() and gate.state == "disconnected"
