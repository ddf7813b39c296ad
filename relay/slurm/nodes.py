"""The daemon's Slurm hosts: an allocation per login node, a connection per compute node.

A kernel for a Slurm host is placed by the host's ``Allocation`` (a job and a node), then
launched as on any host, on the node's own ``HostSession`` (reached through the login node as
jump host, ``[hosts.NAME.slurm] node_hostname``/``node_port``), with ``srun`` before its argv.
When it ends, Slurm is asked once why, so a time limit or an outside ``scancel`` reaches the
shim and ``relay status`` as such rather than as a bare exit status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from relay.errors import AuthenticationFailed, ConnectFailed, HostKeyUnknown, RelayError
from relay.kernels import Kernel, Mode, launch
from relay.lite.linkname import LinkName
from relay.settings import HostConfig
from relay.slurm.allocation import Allocation, Placement
from relay.ssh.host import HostSession
from relay.tasks import TaskSet

__all__ = ["Clusters"]

EXPLAIN_TRIES = 6  # squeue asked at most this often, EXPLAIN_PAUSE_S apart, after a kernel ends
EXPLAIN_PAUSE_S = 0.5

log = structlog.get_logger("relay.slurm")


def _on_node(exc: RelayError, cluster: HostSession, placement: Placement) -> RelayError:
    """``exc`` said of the compute node, and, when relay could not get onto the node at
    all, what the site must allow."""
    where = f"on compute node {placement.node} of {cluster.key} (Slurm job {placement.job.id})"
    message = f"{where}: {exc.message}"
    if isinstance(exc, ConnectFailed | AuthenticationFailed | HostKeyUnknown):
        message += (
            "; relay reaches a node by SSH through the login node: the site must allow that "
            "where you have a job (pam_slurm_adopt), with your key (README: Slurm clusters)"
        )
    return type(exc)(message)


def node_config(cluster: HostSession, node: str) -> HostConfig:
    """A compute node's settings: its cluster's, reached through the login node, closed
    when idle as long as the allocation would be."""
    slurm = cluster.config.slurm
    assert slurm is not None
    return cluster.config.model_copy(
        update={
            "hostname": slurm.node_hostname.replace("{node}", node),
            "port": slurm.node_port,
            "jump": cluster.key,
            "proxy_command": None,
            "slurm": None,
            "idle_timeout_s": max(1.0, slurm.idle_timeout_s),
        }
    )


class Clusters:
    def __init__(
        self,
        hosts: dict[str, HostSession],
        new_session: Callable[[str, HostConfig], HostSession],
        tag: str,
    ) -> None:
        self._hosts = hosts  # the daemon's registry: node sessions live there too
        self._new_session = new_session
        self._tag = tag
        self.allocations: dict[str, Allocation] = {}
        self._placements: dict[str, Placement] = {}  # kernel id -> its slot
        self._tasks = TaskSet(log)

    def allocation(self, host: HostSession) -> Allocation:
        alloc = self.allocations.get(host.key)
        if alloc is None:
            assert host.config.slurm is not None
            alloc = self.allocations[host.key] = Allocation(
                host, host.config.slurm, self._tag, on_running=self._warm_nodes
            )
        return alloc

    def node(self, cluster: HostSession, node: str) -> HostSession:
        """The compute node's session: the cluster's settings, reached through the login
        node, closed when idle as long as the allocation would be."""
        key = f"{cluster.key}/{node}"
        session = self._hosts.get(key)
        if session is None:
            session = self._hosts[key] = self._new_session(key, node_config(cluster, node))
        session.asked_at = time.time()  # not forgotten under its launch (Daemon._forget_unused)
        return session

    def reconfigure(self) -> list[str]:
        """relay.toml was read again: each compute node's session takes its cluster's
        settings as they now are (``HostSession.reconfigure``), as every host does; what
        they say for ``relay reload``."""
        notes = []
        for key, alloc in self.allocations.items():
            cluster = self._hosts.get(key)
            new = cluster.config.slurm if cluster is not None else None
            if new is None:
                if alloc.jobs:
                    notes.append(
                        f"{key}: no [slurm] table now; its allocation keeps the one it had and "
                        f"is released when idle"
                    )
            elif new != alloc.cfg:
                alloc.reconfigure(new)
        for key, session in list(self._hosts.items()):
            cluster_key, slash, node = key.partition("/")
            cluster = self._hosts.get(cluster_key)
            if not (slash and cluster is not None and cluster.config.slurm is not None):
                continue
            if note := session.reconfigure(node_config(cluster, node)):
                notes.append(note)
        return notes

    def _warm_nodes(self, cluster: HostSession, nodes: list[str]) -> None:
        """A job started: connect to its nodes now, so its first kernels start warm."""
        for node in nodes:
            session = self.node(cluster, node)
            self._tasks.spawn(self._warm(session), name=f"warm:{session.key}")

    async def _warm(self, session: HostSession) -> None:
        hold = session.hold()
        try:
            await session.live()
        except Exception as exc:  # the launch that needs it will say why
            log.info("compute node not reachable yet", host=session.key, error=str(exc))
        finally:
            hold.release()

    async def launch(
        self,
        cluster: HostSession,
        *,
        kernel: str,
        link: LinkName,
        mode: Mode,
        extra_args: list[str],
        kernel_id: str,
    ) -> Kernel:
        placement = await self.allocation(cluster).place(cluster.config.launch_timeout_s)
        try:
            k = await launch(
                self.node(cluster, placement.node),
                kernel=kernel,
                link=link,
                mode=mode,
                extra_args=extra_args,
                kernel_id=kernel_id,
                wrapper=placement.srun,
            )
        except RelayError as exc:
            placement.release()
            raise _on_node(exc, cluster, placement) from None
        except BaseException:
            placement.release()
            raise
        k.slurm_job = placement.job.id
        k.named_host = cluster  # failures are listed where the user looks: the cluster
        self._placements[k.id] = placement
        return k

    async def explain(self, k: Kernel) -> str | None:
        """After ``k`` ended or failed: why, if its Slurm job ended (asked of squeue until
        the job has left COMPLETING, bounded)."""
        placement = self._placements.get(k.id)
        if placement is None:
            return None
        alloc = placement.allocation
        for _ in range(EXPLAIN_TRIES):
            if placement.ended is not None or alloc.closing:
                break
            try:
                await alloc.refresh()
            except Exception as exc:
                log.info("squeue failed", error=str(exc))
                break
            if placement.ended is None and not placement.job.settling:
                break
            await asyncio.sleep(EXPLAIN_PAUSE_S)
        k.end_reason = placement.ended
        return placement.ended

    def release(self, k: Kernel) -> None:
        placement = self._placements.pop(k.id, None)
        if placement is not None:
            placement.release()

    def snapshot(self, host: HostSession) -> dict[str, Any] | None:
        alloc = self.allocations.get(host.key)
        return alloc.snapshot() if alloc is not None else None

    async def aclose(self) -> None:
        """Shutdown: every allocation cancelled (its kernels were ended before)."""
        await self._tasks.aclose()
        await asyncio.gather(*(a.aclose() for a in self.allocations.values()))
