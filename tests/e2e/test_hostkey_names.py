"""Host keys are looked up by the host's name, as OpenSSH looks them up (issue 23).

The test sshd is reached as ``localhost`` (or through a HostKeyAlias) while known_hosts has
entries for its address (``[127.0.0.1]:P``), its name with and without the port, or both.
OpenSSH's ``ssh`` is the oracle: whatever it makes of the same known_hosts, a launch,
``relay connect``, ``relay login``, ``relay check`` and ``relay trust`` say too.

What ``ssh`` does (sshconnect.c ``check_host_key``, and OpenSSH 9.2 here): the entries for the
name decide, ``[name]:port`` off port 22, or the HostKeyAlias as it is written; an entry for
the address never vouches for the name; only where nothing at all is recorded for
``[name]:port`` (and there is no HostKeyAlias) does a matching key for the bare name do, and
a different one there leaves the host unknown, not changed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from relay.sim.sshd import ThrowawaySSHD, _keygen
from tests.conftest import SIM_KERNEL, RelayHome, run_shim, start_daemon
from tests.e2e.helpers import launch_and_quit, relay_cli, request

pytestmark = pytest.mark.sshd

LINK = "1@127.0.0.1,2@127.0.0.1"


def public(path: Path) -> str:
    """``TYPE BASE64`` of a public key file."""
    kind, data = path.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {data}"


@pytest.fixture
def keys(home: RelayHome, tmp_path: Path) -> dict[str, str]:
    """The test sshd's host key (``right``), another key (``other``) and its port."""
    assert home.sshd is not None
    other = tmp_path / "other_host_key"
    _keygen(other, "another host")
    return {
        "right": public(home.sshd.host_key),
        "other": public(other),
        "port": str(home.sshd.port),
    }


def ssh_says(sshd: ThrowawaySSHD, known: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """What OpenSSH makes of the same known_hosts, reaching the same server by the same name
    (no ssh_config, no other known_hosts file, strict checking, no prompt)."""
    argv = ["ssh", "-F", "/dev/null", "-i", str(sshd.client_key), "-p", str(sshd.port)]
    for option in (
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        f"UserKnownHostsFile={known}",
        "GlobalKnownHostsFile=/dev/null",
        "CheckHostIP=no",
        "IdentitiesOnly=yes",
        *options,
    ):
        argv += ["-o", option]
    return subprocess.run(
        [*argv, f"{sshd.user}@localhost", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def host_key_step(out: str) -> dict[str, Any]:
    results = json.loads(out)["results"]
    step: dict[str, Any] = next(r for r in results if r["name"] == "host key")
    return step


async def relay_refuses(home: RelayHome, entry: str, known: Path, verdict: str) -> None:
    """A launch, the hostkey request (``relay trust``'s) and ``relay check`` all say
    ``verdict`` (``unknown`` or ``changed``) of host ``local``, whose entry is ``entry``; and
    ``relay trust`` records nothing over a changed key."""
    before = known.read_text()
    async with start_daemon(home):
        launched = await run_shim(home, "local", SIM_KERNEL, LINK)
        answer = await request(home, {"op": "hostkey", "host": "local"})
        _, checked, _ = await relay_cli(home, "check", "local", "--json")
        if verdict == "changed":
            trusted = await relay_cli(home, "trust", "local", "--yes")
            assert trusted[0] == 1 and "a DIFFERENT key is recorded" in trusted[2]
    assert launched.status != 0
    line = one_line(launched.stderr)
    step = host_key_step(checked)
    assert answer["state"] == verdict and step["state"] == "fail"
    if verdict == "unknown":
        assert f"host key for {entry} is not in {known}" in line
        assert "which no known_hosts file records" in step["summary"]
    else:
        assert f"host key for {entry} has CHANGED from the one in {known}" in line
        assert "a DIFFERENT key is recorded" in step["summary"]
    assert known.read_text() == before


@pytest.mark.parametrize(
    ("lines", "verdict"),
    [
        pytest.param(["[127.0.0.1]:{port} {right}"], "unknown", id="address-only"),
        pytest.param(
            ["[127.0.0.1]:{port} {right}", "[localhost]:{port} {other}"],
            "changed",
            id="address-right-name-other",
        ),
        pytest.param(
            ["[localhost]:{port} {other}", "localhost {right}"],
            "changed",
            id="no-bare-name-past-an-entry-for-the-port",
        ),
        pytest.param(["localhost {other}"], "unknown", id="bare-name-other-is-unknown"),
        pytest.param(
            ["[127.0.0.1]:{port} {other}", "[localhost]:{port} {right}"],
            "known",
            id="name-right-address-other",
        ),
        pytest.param(["localhost {right}"], "known", id="bare-name-right"),
    ],
)
async def test_relay_says_what_ssh_says_of_a_host_reached_by_name(
    home: RelayHome, tmp_path: Path, keys: dict[str, str], lines: list[str], verdict: str
) -> None:
    assert home.sshd is not None
    known = tmp_path / "known_hosts"
    known.write_text("".join(line.format(**keys) + "\n" for line in lines))
    home.add_host("local", hostname="localhost", known_hosts=str(known))
    said = ssh_says(home.sshd, known)
    entry = f"[localhost]:{home.sshd.port}"
    if verdict == "known":
        assert said.returncode == 0, said.stderr
        async with start_daemon(home):
            await launch_and_quit(home, "local")
            answer = await request(home, {"op": "hostkey", "host": "local"})
        assert answer["state"] == "known"
        return
    assert said.returncode != 0
    if verdict == "unknown":
        assert f"No ED25519 host key is known for {entry}" in said.stderr
    else:
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in said.stderr
    await relay_refuses(home, entry, known, verdict)


async def test_connect_and_login_refuse_an_address_entry_too(
    home: RelayHome, tmp_path: Path, keys: dict[str, str]
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("[127.0.0.1]:{port} {right}\n".format(**keys))
    home.add_host("local", hostname="localhost", known_hosts=str(known))
    async with start_daemon(home):
        connected = await relay_cli(home, "connect", "local")
        logged_in = await relay_cli(home, "login", "local")
    unknown = f"host key for [localhost]:{keys['port']} is not in {known}"
    assert connected[0] != 0 and unknown in connected[2]
    assert logged_in[0] != 0 and unknown in logged_in[2]


async def test_a_jump_hosts_key_is_looked_up_by_its_name_too(
    home: RelayHome, tmp_path: Path, keys: dict[str, str]
) -> None:
    """The bastion is a host session of its own: its connection takes the same path."""
    assert home.sshd is not None
    known = tmp_path / "known_hosts"
    known.write_text("[127.0.0.1]:{port} {right}\n".format(**keys))
    home.add_host("gate", hostname="localhost", known_hosts=str(known))
    home.add_host("inner", jump="gate", known_hosts=str(known))  # 127.0.0.1:P, known
    async with start_daemon(home):
        launched = await run_shim(home, "inner", SIM_KERNEL, LINK)
    assert launched.status != 0
    assert f"host key for [localhost]:{keys['port']} is not in {known}" in launched.stderr


async def test_a_host_key_alias_is_its_entry_as_written_without_a_port(
    home: RelayHome, tmp_path: Path, keys: dict[str, str]
) -> None:
    """OpenSSH looks a HostKeyAlias up as written, whatever the port (never ``[alias]:P``),
    and with no fallback: so relay refuses ``[alias]:P``, and ``relay trust`` records
    ``alias``, which ``ssh`` then accepts."""
    assert home.sshd is not None
    known = tmp_path / "known_hosts"
    known.write_text("[gateway.alias]:{port} {right}\n".format(**keys))
    home.ssh_config.write_text(
        f"Host work\n    HostName localhost\n    Port {home.sshd.port}\n"
        f"    User {home.sshd.user}\n    IdentityFile {home.sshd.client_key}\n"
        f"    IdentitiesOnly yes\n    HostKeyAlias gateway.alias\n"
        f"    UserKnownHostsFile {known}\n"
    )
    said = ssh_says(home.sshd, known, "HostKeyAlias=gateway.alias")
    assert said.returncode != 0 and "No ED25519 host key is known for gateway.alias" in said.stderr
    async with start_daemon(home):
        launched = await run_shim(home, "work", SIM_KERNEL, LINK)
        assert launched.status != 0
        assert f"host key for gateway.alias is not in {known}" in one_line(launched.stderr)
        status, out, err = await relay_cli(home, "trust", "work", "--yes")
        assert status == 0, err
        assert "work (gateway.alias) offers the host key" in out
        assert known.read_text().splitlines()[-1] == "gateway.alias {right}".format(**keys)
        await launch_and_quit(home, "work")
    assert ssh_says(home.sshd, known, "HostKeyAlias=gateway.alias").returncode == 0


async def test_a_revoked_key_is_refused_by_every_path(
    home: RelayHome, tmp_path: Path, keys: dict[str, str]
) -> None:
    assert home.sshd is not None
    known = tmp_path / "known_hosts"
    lines = ["[localhost]:{port} {right}".format(**keys), "@revoked * {right}".format(**keys)]
    known.write_text("".join(f"{line}\n" for line in lines))
    home.add_host("local", hostname="localhost", known_hosts=str(known))
    said = ssh_says(home.sshd, known)
    assert said.returncode != 0 and "REVOKED HOST KEY DETECTED" in said.stderr
    async with start_daemon(home):
        launched = await run_shim(home, "local", SIM_KERNEL, LINK)
        answer = await request(home, {"op": "hostkey", "host": "local"})
        _, checked, _ = await relay_cli(home, "check", "local", "--json")
        trusted = await relay_cli(home, "trust", "local", "--yes")
    revoked = f"host key for [localhost]:{keys['port']} is marked @revoked in known_hosts"
    assert launched.status != 0 and revoked in one_line(launched.stderr)
    assert answer["event"] == "error" and revoked in str(answer["message"])
    step = host_key_step(checked)
    assert step["state"] == "fail" and revoked in step["summary"]
    assert "administrator" in step["advice"]
    assert trusted[0] == 1 and revoked in trusted[2]
    assert known.read_text().splitlines() == lines


async def test_a_host_certificate_from_a_ca_recorded_for_the_name(
    home: RelayHome, tmp_path: Path
) -> None:
    """``@cert-authority`` entries are looked up by the name too: the CA recorded for
    ``[localhost]:P`` vouches for a server whose certificate names ``localhost``; the same CA
    recorded for the address alone does not. Launches, ``relay check`` and ``relay trust``
    agree with ssh either way."""
    ca = tmp_path / "host_ca"
    _keygen(ca, "host CA")
    server = ThrowawaySSHD(tmp_path / "certified")
    server.prepare()
    sign = ["ssh-keygen", "-q", "-s", str(ca), "-I", "test-host", "-h", "-n", "localhost"]
    subprocess.run(
        [*sign, str(server.host_key.with_suffix(".pub"))], check=True, stdin=subprocess.DEVNULL
    )
    cert = server.dir / f"{server.host_key.name}-cert.pub"
    server.options["HostCertificate"] = str(cert)
    with server:
        home.sshd = server
        known = tmp_path / "known_hosts"
        home.hosts.clear()
        home.add_host("local", hostname="localhost", known_hosts=str(known))
        for recorded, verdict in (("[127.0.0.1]", "unknown"), ("[localhost]", "known")):
            known.write_text(f"@cert-authority {recorded}:{server.port} {public(ca)}\n")
            said = ssh_says(server, known)
            if verdict == "unknown":
                assert said.returncode != 0 and "No ED25519 host key is known" in said.stderr
                await relay_refuses(home, f"[localhost]:{server.port}", known, "unknown")
                continue
            assert said.returncode == 0, said.stderr
            async with start_daemon(home):
                await launch_and_quit(home, "local")
                answer = await request(home, {"op": "hostkey", "host": "local"})
                _, checked, _ = await relay_cli(home, "check", "local", "--json")
                trusted = await relay_cli(home, "trust", "local", "--yes")
            assert answer["state"] == "known"
            assert host_key_step(checked)["state"] == "ok"
            assert trusted[0] == 0 and "already recorded" in trusted[1]
