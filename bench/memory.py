"""Where the daemon's resident memory is: its ``/proc/PID/smaps`` summed by what holds each
page (the parser is pure), and how much of it relay's own modules take.

The daemon's figure is mostly not relay's: a Python process that has imported asyncssh (with
cryptography's Rust library and OpenSSL), pydantic and uvloop is most of it before relay's
first module. This says how much, so that the memory target's verdict can be read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from relay import lean

__all__ = ["HOLDERS", "by_holder", "relay_modules_mb", "resident_by_holder", "runs_lean"]

# a mapping's path (its last part) -> who it is; anything else file-backed is "other libraries"
HOLDERS = (
    ("_rust.abi3.so", "cryptography's Rust library"),
    ("libpython3", "the interpreter"),
    ("_pydantic_core", "pydantic-core"),
    ("libcrypto.so", "OpenSSL's libcrypto"),
    ("uvloop", "uvloop"),
)
ANONYMOUS = "anonymous (Python's objects and code, the C heap)"
OTHER = "other libraries"

_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+ *(.*)$")


def by_holder(smaps: str) -> dict[str, float]:
    """MB resident per holder, largest first, from the text of ``/proc/PID/smaps``."""
    kb: dict[str, int] = {}
    holder = OTHER
    for line in smaps.splitlines():
        mapping = _MAPPING.match(line)
        if mapping is not None:
            path = mapping.group(1)
            if not path.startswith("/"):  # [heap], [stack], [anon:...] or nothing at all
                holder = ANONYMOUS
            else:
                holder = next((who for part, who in HOLDERS if part in path), OTHER)
        elif line.startswith("Rss:"):
            kb[holder] = kb.get(holder, 0) + int(line.split()[1])
    return {who: n / 1024 for who, n in sorted(kb.items(), key=lambda item: -item[1])}


def resident_by_holder(pid: int) -> dict[str, float]:
    return by_holder(Path(f"/proc/{pid}/smaps").read_text())


# The daemon's imports before relay's, then relay's: the resident growth of the second.
_RELAY_SHARE = """
import re, warnings
warnings.simplefilter("ignore")
def rss():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmRSS:\\s+(\\d+)", status).group(1))
import asyncio, ctypes, tomllib, argparse, json, asyncssh, uvloop, pydantic, pydantic_settings
import structlog
before = rss()
import relay.daemon, relay.cli
print((rss() - before) / 1024)
"""


def runs_lean(pid: int) -> bool:
    """Whether the process runs on ``relay.lean``'s flags (``relay serve`` starts itself
    again on them)."""
    return lean.runs_lean(Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"))


def relay_modules_mb(*, lean_flags: bool) -> float:
    """MB that importing relay's own modules (the daemon's and the CLI's) adds to a process
    that has imported everything else the daemon does: their code and objects at import, on
    the interpreter flags the daemon ran on (its bytecode cache included)."""
    flags = lean.flags(lean.cache_dir()) if lean_flags else []
    done = subprocess.run(
        [sys.executable, *flags, "-c", _RELAY_SHARE], capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    return float(done.stdout.strip())
