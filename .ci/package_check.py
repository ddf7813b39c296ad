"""CI: relay as a user installs it, not as the tests see it (an editable checkout).

Builds the sdist and, from it, the wheel (``python -m build``: a file the sdist lacks fails
the wheel's build), checks that both hold every file of relay's the checkout tracks (the
modules, ``supervisor.sh``, ``hookinstall.sh``, the ``.wl`` files, the two scripts), then
installs the wheel, not editable, in a fresh virtualenv and runs ``make demo``'s main job
with that virtualenv's interpreter from outside the checkout: its ``relay serve``, its
``relay launch`` and its ``relay-sim-kernel`` through a throwaway sshd, one controller (whose
kernel hook the daemon installs from the wheel's ``.wl``) and 8 compute kernels.

Usage: ``python .ci/package_check.py [--source DIR]`` (DIR: a checkout; the default is this
one). Needs ``build`` (the dev extras) and the network or a package index for the
virtualenv's dependencies. About a minute.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_TIMEOUT_S = 300
INSTALL_TIMEOUT_S = 600


def run(argv: list[str | Path], *, timeout_s: float, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"package check: {' '.join(map(str, argv))} exited {proc.returncode}\n"
            f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc.stdout


def tracked(source: Path, *paths: str) -> set[str]:
    out = run(["git", "-C", source, "ls-files", "--", *paths], timeout_s=60)
    return {line for line in out.splitlines() if line}


def version_of(source: Path) -> str:
    text = (source / "relay" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise SystemExit("package check: relay/__init__.py has no __version__ line")
    return match.group(1)


def check_contents(source: Path, wheel: Path, sdist: Path) -> None:
    package = tracked(source, "relay")
    scripts = tracked(source, "bin")
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = set(zf.namelist())
    data = next(n.split("/")[0] for n in in_wheel if n.split("/")[0].endswith(".data"))
    wanted = package | {f"{data}/scripts/{Path(s).name}" for s in scripts}
    missing = sorted(wanted - in_wheel)
    if missing:
        raise SystemExit(f"package check: the wheel lacks {', '.join(missing)}")
    with tarfile.open(sdist) as tf:
        in_sdist = {name.split("/", 1)[1] for name in tf.getnames() if "/" in name}
    wanted = package | scripts | {"pyproject.toml", "README.md", "CHANGELOG.md"}
    missing = sorted(wanted - in_sdist)
    if missing:
        raise SystemExit(f"package check: the sdist lacks {', '.join(missing)}")
    print(f"package check: {wheel.name} and {sdist.name} hold all {len(package)} files of relay")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout to build")
    source = parser.parse_args(argv).source.resolve()
    version = version_of(source)
    with tempfile.TemporaryDirectory(prefix="relay-package-") as scratch:
        work = Path(scratch)
        dist = work / "dist"
        run([sys.executable, "-m", "build", "--outdir", dist, source], timeout_s=INSTALL_TIMEOUT_S)
        (wheel,) = dist.glob("*.whl")
        (sdist,) = dist.glob("*.tar.gz")
        if not wheel.name.startswith(f"relay_wstp-{version}-"):
            raise SystemExit(f"package check: built {wheel.name}, not relay-wstp {version}")
        check_contents(source, wheel, sdist)

        venv = work / "venv"
        python = venv / "bin" / "python"
        run([sys.executable, "-m", "venv", venv], timeout_s=120)
        run([python, "-m", "pip", "install", "-q", wheel], timeout_s=INSTALL_TIMEOUT_S)
        said = run([venv / "bin" / "relay", "--version"], timeout_s=60, cwd=work).strip()
        if said != f"relay {version}":
            raise SystemExit(f"package check: relay --version said {said!r}, not {version}")
        # -I: neither the current directory nor PYTHONPATH can put the checkout's relay first
        where = run([python, "-I", "-c", "import relay; print(relay.__file__)"], timeout_s=60)
        if not Path(where.strip()).is_relative_to(venv):
            raise SystemExit(f"package check: relay was imported from {where.strip()}")
        print(f"package check: {wheel.name} installed in a fresh virtualenv; its relay runs")
        out = run([python, "-I", "-m", "relay.sim.demo"], timeout_s=DEMO_TIMEOUT_S, cwd=work)
        print(out.rstrip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
