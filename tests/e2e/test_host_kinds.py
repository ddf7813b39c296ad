"""Hosts that differ from the rig in what a login finds there, each through a real sshd
(``own_sshd``): relay's agent and supervisor work as they would on the rig, and its kernels
start as ``ssh host math`` would have started them.

- /proc mounted with subset=pid (hardened hosts, containers): no /proc/net, but the
  kernel's own answer (sock_diag) tells who connects."""

from __future__ import annotations

from tests.conftest import RelayHome
from tests.e2e.helpers import controller
from tests.e2e.test_dynamic import finish
from tests.e2e.test_faults import connected, served
from tests.e2e.test_login_shell import own_sshd
from tests.e2e.test_resume import status_of


async def test_a_proc_without_net_still_tells_who_connects(home: RelayHome) -> None:
    """/proc with its processes but no net/: the agent said CHECK none though its sock_diag
    probe answered, and every launch failed as on a host that cannot tell (a review's
    finding). Its kernels now resume."""
    with own_sshd(home, proc_pids_only=True):
        async with served(home), controller(home) as fe:
            main, _ = await connected(fe)
            assert (await status_of(home))["resume"]["state"] == "on"
            await finish(fe, main)
