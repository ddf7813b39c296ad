"""relay frontend-config and relay wolfram install."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from relay import frontendconfig as fc
from tests.conftest import RELAY


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RELAY, *args], capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )


def test_frontend_config_prints_what_to_paste(tmp_path: Path) -> None:
    env = dict(os.environ, RELAY_CONFIG=str(tmp_path / "relay.toml"))
    (tmp_path / "relay.toml").write_text(
        "[hosts.hpc]\nhostname = 'login'\nkernel = '/opt/wolfram/WolframKernel'\n"
    )
    done = run("frontend-config", "hpc", "--relay", "relay", env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"Arguments to MLOpen: {fc.MLOPEN_ARGUMENTS}" in out
    assert 'Launch command:      "relay" launch "hpc" "" "`linkname`"' in out
    assert "uses the host's configured /opt/wolfram/WolframKernel" in out
    assert '$RemoteCommand = "\\"relay\\" launch --compute \\"`1`\\" \\"\\" \\"`2`\\"";' in out
    assert 'RelayMachine["hpc", 8]' in out
    explicit = run("frontend-config", "ssh://bob@x", "--kernel", "/k", "--relay", "relay", env=env)
    assert '"relay" launch "ssh://bob@x" "/k" "`linkname`"' in explicit.stdout
    bad = run("frontend-config", "bob:pw@x", env=env)
    assert (
        bad.returncode == 1
        and "password" in bad.stderr
        and "pw" not in bad.stderr.split("refused")[0]
    )


def test_wolfram_install_places_relaytools_and_says_where(tmp_path: Path) -> None:
    done = run("wolfram", "install", "--user-base-directory", str(tmp_path))
    assert done.returncode == 0, done.stderr
    target = tmp_path / "Applications" / "RelayTools"
    assert f"installed RelayTools` in {target}" in done.stdout
    assert (target / "RelayTools.wl").is_file() and (target / "Kernel" / "init.m").is_file()
    config = (target / "RelayConfig.wl").read_text()
    assert config.startswith('RelayTools`$RelayCommand = "') and RELAY in config
    again = run("wolfram", "install", "--user-base-directory", str(tmp_path))
    assert again.returncode == 0  # reinstalling replaces the old copy


def test_default_user_base_directory(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path))
    done = run("wolfram", "install", env=env)
    assert done.returncode == 0
    assert (tmp_path / ".Mathematica" / "Applications" / "RelayTools" / "RelayTools.wl").exists()
