"""The README's set-up commands do what it says: ``make demo`` and ``make test`` install the
Debian packages README's "Set-up" names and no others (Slurm only by ``make
system-packages``). Read from ``make -n`` on a machine pretended bare: nothing is run."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

import relay

ROOT = Path(__file__).parents[2]
SLURM = {"slurmctld", "slurmd", "slurm-client", "munge"}
BARE = ["SSHD=/nonexistent", "SLURMCTLD=/nonexistent", "SOCKET_ACTIVATE="]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def installs(target: str) -> set[str]:
    """The packages ``make TARGET`` would ``apt-get install`` on a machine with none."""
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, *BARE],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.replace("\\\n", " ")
    packages: set[str] = set()
    for args in re.findall(r"apt-get install ([^>\n]*)>/dev/null", out):
        packages |= {word for word in args.split() if not word.startswith("-")}
    return packages


def setup_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Set-up", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("target", ["demo", "test"])
def test_demo_and_test_install_what_the_readme_says_and_nothing_else(target: str) -> None:
    packages = installs(target)
    assert packages == {"openssh-server", "systemd"}
    named = set(re.findall(r"`([a-z0-9.+-]+)`", setup_section()))
    assert packages <= named, f"README's Set-up does not name {packages - named}"


def test_system_packages_installs_slurm_too() -> None:
    """What ``.ci/run`` runs before the tests, so the tests marked slurm run there."""
    assert installs("system-packages") == {"openssh-server", "systemd", *SLURM}
    assert "make system-packages" in (ROOT / ".ci" / "run").read_text()


def test_the_distribution_is_relay_wstp_and_its_version_is_written_once() -> None:
    """``relay`` on PyPI is another project; the version is relay.__version__ alone."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert project["name"] == "relay-wstp"
    assert "version" not in project and "version" in project["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "relay.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", relay.__version__)
    assert f"pipx install {project['name']}" in (ROOT / "README.md").read_text()


def test_ci_launches_from_the_built_wheel() -> None:
    assert "make package-check" in (ROOT / ".ci" / "run").read_text()
    assert (ROOT / ".ci" / "package_check.py").exists()
