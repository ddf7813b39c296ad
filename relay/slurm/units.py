"""Slurm's units, as sbatch(1) takes them: time limits and memory sizes (pure).

A module of their own so that relay.toml's validation (``relay.settings``) and the command
builders (``relay.slurm.spec``, which takes a ``SlurmConfig``) do not import each other.
"""

from __future__ import annotations

import re

__all__ = ["megabytes", "parse_time"]

_MEMORY = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
# sbatch(1) --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds
_TIME = re.compile(r"^(?:\d+|\d+:\d+|\d+:\d+:\d+|\d+-\d+|\d+-\d+:\d+|\d+-\d+:\d+:\d+)$")


def parse_time(text: str) -> str:
    """A time limit as sbatch takes it (validated; returned as given)."""
    if not _TIME.match(text.strip()):
        raise ValueError(
            f"not a Slurm time limit: {text!r} (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM "
            f"or D-HH:MM:SS)"
        )
    return text.strip()


def megabytes(text: str) -> int:
    """A memory size as Slurm writes it (``4000``, ``4000M``, ``4G``) in megabytes."""
    match = _MEMORY.match(text.strip())
    if match is None:
        raise ValueError(f"not a memory size: {text!r} (e.g. 4000M or 4G)")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2).upper()]
    return max(1, int(int(match.group(1)) * scale))
