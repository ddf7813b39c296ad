"""What relay puts on its SSH connection per MathLink message, against a real sshd.

asyncssh sends an empty SSH_MSG_IGNORE before every packet; relay leaves it out unless the
cipher is CBC (``relay.ssh.ignorepad``). Counted with the connection's send sequence number,
which SSH increments once per packet sent (RFC 4253 §6.4)."""

from __future__ import annotations

import secrets

import asyncssh

from relay.sim.sshd import ThrowawaySSHD
from tests.conftest import SIM_KERNEL, RelayHome, RunningDaemon, start_daemon
from tests.e2e.helpers import controller

MESSAGES = 200


async def packets_per_message(running: RunningDaemon, host: str) -> float:
    """Packets relay's connection to ``host`` sent per 100-byte echo through a kernel's link."""
    async with controller(running.home, host=host, kernel=SIM_KERNEL) as fe:
        kl = await fe.link.accept(60)
        assert await kl.echo(b"warm") == b"warm"
        conn: asyncssh.SSHClientConnection = await running.daemon.hosts[host].connection()
        before = conn._send_seq
        for _ in range(MESSAGES):
            payload = secrets.token_bytes(100)
            assert await kl.echo(payload) == payload
        sent = (conn._send_seq - before) % (1 << 32)
        await kl.quit(0)
        status, _, err = await fe.result()
        assert status == 0, err
        await kl.aclose()
    return sent / MESSAGES


async def test_a_message_to_the_kernel_is_one_ssh_packet(daemon: RunningDaemon) -> None:
    # one CHANNEL_DATA per echo; a keepalive or window adjust may add a few
    assert await packets_per_message(daemon, "local") < 1.2


async def test_under_a_cbc_cipher_the_ignore_packet_stays(home: RelayHome) -> None:
    """CBC is the cipher the ignore packet protects (RFC 4251 §9.3.1): there it is kept."""
    with ThrowawaySSHD(home.dir / "cbc-sshd", options={"Ciphers": "aes128-cbc"}) as cbc:
        home.write()
        with home.config.open("a") as toml:
            toml.write(cbc.host_toml("cbc", kernel=SIM_KERNEL, ciphers=["aes128-cbc"]))
        async with start_daemon(home, write=False) as running:
            assert await packets_per_message(running, "cbc") >= 2.0
            conn = await running.daemon.hosts["cbc"].connection()
            assert conn._enc_alg_cs == b"aes128-cbc"
