"""``make demo`` as the README's first command runs it (``python -m relay.sim.demo``): its
own sshd, daemon and simulator, an outage and its resume. Each line it prints is a claim, so
each is checked against what happened; and where the kernels could not outlive the outage,
it says the outage was skipped and fails, rather than claim a resume it did not show."""

from __future__ import annotations

import os
import subprocess
import sys

DEMO_BOUND_S = 300  # about 10 s here; a loaded machine takes longer

# the demo with its host's kernels told to end with their connection (the old path)
WINDOW_0 = """
import sys
from relay.sim import demo, sshd
made = sshd.ThrowawaySSHD.host_toml
sshd.ThrowawaySSHD.host_toml = lambda self, name, **kw: made(self, name, resume_window_s=0, **kw)
sys.exit(demo.main())
"""


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=DEMO_BOUND_S, env=env
    )


def test_the_demo_shows_an_outage_resumed_and_every_kernel_after_it() -> None:
    done = run("-m", "relay.sim.demo")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "one SSH connection, one agent on the host" in out, out
    assert "relay status, RESUME: resuming, 14m" in out, out  # as `relay status` words it
    assert "the echo intact" in out, out
    assert "8 of 8 compute kernels after the outage, data+urgent: ok" in out, out
    assert "before and after a network outage they outlived" in out, out


def test_a_demo_whose_kernels_cannot_outlive_the_outage_says_so_and_fails() -> None:
    done = run("-c", WINDOW_0)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "outage skipped: the kernels would not survive it here" in done.stderr, done.stderr
    assert "resume_window_s = 0" in done.stderr, done.stderr
    assert "one supervisor session" in done.stdout, done.stdout
    assert "network outage" not in done.stdout, done.stdout
