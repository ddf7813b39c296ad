"""The ways to a host that ssh_config gives, honoured on every connection: a ``ProxyCommand``,
``ProxyJump`` with several hops (asyncssh follows the chain), ``AddressFamily``. relay connects
directly through a resolver of its own (relay.ssh.resolver), and for a while did so for these
hosts too, ignoring all three (a review's finding)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from relay.errors import RelayError
from relay.settings import HostConfig
from relay.sim.sshd import ThrowawaySSHD
from relay.ssh.connector import ConnectionStatus, Connector
from tests.conftest import RelayHome, start_daemon
from tests.e2e.helpers import launch_and_quit

pytestmark = pytest.mark.sshd
BRIDGE = Path(__file__).with_name("proxybridge.py")


async def test_a_proxycommand_in_ssh_config_is_the_way_there(
    home: RelayHome, tmp_path: Path
) -> None:
    mark = tmp_path / "ran"
    home.ssh_config.write_text(
        f"Host 127.0.0.1\n  ProxyCommand {sys.executable} {BRIDGE} %h %p {mark}\n"
    )
    async with start_daemon(home):
        await launch_and_quit(home, "local")
    assert mark.read_text() == "ran\n"


def connector(sshd: ThrowawaySSHD, tmp_path: Path, name: str, ssh_config: str) -> Connector:
    path = tmp_path / "ssh_config"
    path.write_text(ssh_config)
    config = HostConfig(
        hostname=name,
        user=sshd.user,
        identity_files=[str(sshd.client_key)],
        known_hosts=str(sshd.known_hosts),
        connect_timeout_s=10.0,
    )
    return Connector(
        name, config, status=ConnectionStatus(), ssh_files=(str(path),), agent=lambda: None
    )


async def test_proxyjump_of_several_hops_is_followed(sshd: ThrowawaySSHD, tmp_path: Path) -> None:
    hop = (
        f"  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key}\n  UserKnownHostsFile {sshd.known_hosts}\n"
    )
    c = connector(
        sshd,
        tmp_path,
        "target",
        f"Host hop1 hop2\n{hop}Host target\n  HostName 127.0.0.1\n  Port {sshd.port}\n"
        "  ProxyJump hop1,hop2\n",
    )
    conn, _ = await c.connect_once(time.monotonic() + 60)
    try:
        assert conn._tunnel is not None  # through the hops, not straight to 127.0.0.1
    finally:
        conn.close()
        await conn.wait_closed()


async def test_address_family_is_kept(sshd: ThrowawaySSHD, tmp_path: Path) -> None:
    """``AddressFamily inet6`` for a host with an IPv4 address: ssh says it cannot resolve
    it; connecting over IPv4 instead is not what was asked."""
    c = connector(
        sshd,
        tmp_path,
        "v6only",
        f"Host v6only\n  HostName 127.0.0.1\n  Port {sshd.port}\n  AddressFamily inet6\n",
    )
    with pytest.raises(RelayError, match=r"127\.0\.0\.1"):
        await c.connect_once(time.monotonic() + 60)
