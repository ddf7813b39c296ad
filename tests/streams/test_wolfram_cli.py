"""relay frontend-config and relay wolfram install."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from relay import frontendconfig as fc
from tests.conftest import RELAY, fill
from tests.e2e.test_full_disk import small_tmpfs


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
    assert config == f"RelayTools`$RelayCommand = {fc.wl_string(RELAY)};\n"
    assert os.path.isabs(RELAY)  # the front end may not have our PATH (macOS Dock)
    again = run("wolfram", "install", "--user-base-directory", str(tmp_path))
    assert again.returncode == 0  # reinstalling replaces the old copy


def test_a_user_base_directory_that_is_not_there_is_refused_not_made(tmp_path: Path) -> None:
    typo = tmp_path / ".Wolfarm"
    for action in ("install", "uninstall"):
        done = run("wolfram", action, "--user-base-directory", str(typo))
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr == (
            f"relay: {typo} is not a directory: give $UserBaseDirectory as a notebook of the "
            "front end shows it (on Linux ~/.Wolfram, or ~/.Mathematica before 14.1)\n"
        )
        assert not typo.exists()
    home = run(
        "wolfram",
        "install",
        "--user-base-directory",
        "~/b",
        env=dict(os.environ, HOME=str(tmp_path)),
    )
    assert home.returncode == 1 and f"{tmp_path}/b is not a directory" in home.stderr


def test_install_and_uninstall_every_user_base_directory_found(tmp_path: Path) -> None:
    """14.1 moved $UserBaseDirectory to ~/.Wolfram; people with older versions too have both."""
    env = dict(os.environ, HOME=str(tmp_path))
    none = run("wolfram", "install", env=env)
    assert none.returncode == 1
    assert none.stderr.count("\n") == 1
    assert ".Wolfram and " in none.stderr and "--user-base-directory" in none.stderr
    (tmp_path / ".Wolfram").mkdir()
    (tmp_path / ".Mathematica").mkdir()
    done = run("wolfram", "install", env=env)
    assert done.returncode == 0, done.stderr
    for base in (".Wolfram", ".Mathematica"):
        target = tmp_path / base / "Applications" / "RelayTools"
        assert (target / "RelayTools.wl").is_file()
        assert f"installed RelayTools` in {target}" in done.stdout
    gone = run("wolfram", "uninstall", env=env)
    assert gone.returncode == 0, gone.stderr
    for base in (".Wolfram", ".Mathematica"):
        target = tmp_path / base / "Applications" / "RelayTools"
        assert f"removed {target}" in gone.stdout and not target.exists()
        assert (tmp_path / base / "Applications").is_dir()  # nothing else of the user's
    assert "RelayRemoveKernelConfiguration[All]" in gone.stdout
    again = run("wolfram", "uninstall", env=env)
    assert again.returncode == 0 and "is not installed" in again.stdout


def test_uninstall_leaves_a_directory_that_is_not_relaytools(tmp_path: Path) -> None:
    own = tmp_path / "Applications" / "RelayTools"
    own.mkdir(parents=True)
    (own / "mine.wl").write_text("x")
    done = run("wolfram", "uninstall", "--user-base-directory", str(tmp_path))
    assert done.returncode == 0 and (own / "mine.wl").exists()


def test_user_base_directories_newest_first() -> None:
    assert fc.user_base_directories("Unix", "/home/a") == [
        "/home/a/.Wolfram",
        "/home/a/.Mathematica",
    ]
    assert fc.user_base_directories("MacOSX", "/Users/a") == [
        "/Users/a/Library/Wolfram",
        "/Users/a/Library/Mathematica",
    ]
    assert fc.user_base_directories("Windows", "C:\\Users\\a", "D:\\Roaming") == [
        "D:\\Roaming\\Wolfram",
        "D:\\Roaming\\Mathematica",
    ]


def test_frontend_config_warns_about_a_host_that_exists_nowhere(tmp_path: Path) -> None:
    env = dict(os.environ, RELAY_CONFIG=str(tmp_path / "relay.toml"))
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        "Host hpc\n  HostName login.cluster.invalid\nHost node*\n  ProxyJump hpc\n"
    )
    (tmp_path / "relay.toml").write_text(
        f"[daemon]\nssh_config = [{str(ssh_config)!r}]\n[hosts.lab]\nhostname = 'lab.invalid'\n"
    )
    typo = run("frontend-config", "hcp.invalid", "--relay", "relay", env=env)
    assert typo.returncode == 0  # a warning: the configuration is still printed
    assert "Launch command:" in typo.stdout
    (warning,) = typo.stderr.splitlines()
    assert warning.startswith("relay: warning: 'hcp.invalid' is not a [hosts] entry")
    assert "does not resolve: check the spelling" in warning
    for known in ("lab", "hpc", "node7", "127.0.0.1", "[::1]", "localhost"):
        done = run("frontend-config", known, "--relay", "relay", env=env)
        assert done.returncode == 0 and done.stderr == "", (known, done.stderr)


def test_a_full_disk_is_one_line_and_keeps_the_installed_copy(tmp_path: Path) -> None:
    """``relay wolfram install`` on a full file system left a half copy (an empty
    RelayConfig.wl: RelayTools` without its relay command) and a traceback. One line now,
    with nothing left; a copy installed already stays as it was where a new one cannot be
    made, and one already as it should be needs no room."""
    with small_tmpfs(tmp_path / "base") as base:
        target = base / "Applications" / "RelayTools"
        filler = fill(base)
        done = run("wolfram", "install", "--user-base-directory", str(base))
        left = sorted(str(p.relative_to(base)) for p in base.rglob("*"))
        filler.unlink()
        first = run("wolfram", "install", "--user-base-directory", str(base))
        config = target / "RelayConfig.wl"
        installed = config.read_bytes()
        config.write_text('RelayTools`$RelayCommand = "/old/relay";\n')  # an older install's
        before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
        fill(base)
        older = run("wolfram", "install", "--user-base-directory", str(base))
        after = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
        siblings = sorted(p.name for p in target.parent.iterdir())
        config.write_bytes(installed)
        again = run("wolfram", "install", "--user-base-directory", str(base))
    assert (done.returncode, done.stdout) == (1, ""), done
    assert done.stderr.splitlines() == [
        f"relay: cannot write {target}: no space left on its file system; free some space "
        "there; nothing there was changed"
    ], done.stderr
    assert left == ["Applications", "filler"], left  # no half copy, nothing staged
    assert first.returncode == 0, first.stderr
    assert older.returncode == 1 and older.stderr == done.stderr, older
    assert after == before and siblings == ["RelayTools"], siblings
    assert again.returncode == 0 and f"installed RelayTools` in {target}" in again.stdout, again
