"""What a controller's shim says of a kernel relay did not end (relay.kernels.ended_line)."""

from __future__ import annotations

import time

from relay.kernels import ended_line

T = time.mktime((2026, 12, 4, 12, 30, 2, 0, 0, -1))  # 12:30:02 local time


def test_a_kernel_that_quit_while_connected_needs_no_line() -> None:
    assert ended_line("gpu1", 0, at=None, outage=None) is None
    assert ended_line("gpu1", 1, at=T, outage=None) is None
    assert ended_line("gpu1", 128, at=None, outage=None) is None  # not a signal's 128+N


def test_killed_by_sigkill_names_it_and_where_to_look() -> None:
    line = ended_line("gpu1", 137, at=None, outage=None)
    assert line == (
        "the kernel on gpu1 was killed by SIGKILL; not by relay: "
        "if the host ran out of memory, `dmesg` there says so"
    )


def test_another_signal_says_something_on_the_host_ended_it() -> None:
    assert ended_line("gpu1", 143, at=None, outage=None) == (
        "the kernel on gpu1 was killed by SIGTERM; not by relay: something on the host ended it"
    )
    assert "killed by signal 33;" in str(ended_line("gpu1", 161, at=None, outage=None))


def test_the_agent_says_which_signal_so_an_exit_of_137_is_no_sigkill() -> None:
    """supervisor.sh (sh) says only a STATUS, and 128+N is read as signal N; the agent says
    the signal too (0: none), so a kernel's own exit(137) is not taken for the OOM killer."""
    assert ended_line("gpu1", 137, at=None, outage=None, signum=0) is None
    assert ended_line("gpu1", 137, at=None, outage=None, signum=9) == ended_line(
        "gpu1", 137, at=None, outage=None
    )
    assert "killed by SIGTERM;" in str(ended_line("gpu1", 143, at=None, outage=None, signum=15))


def test_an_end_during_an_outage_says_when_and_which_outage() -> None:
    outage = (T, T + 2135)  # 12:30:02 to 13:05:37
    line = ended_line("gpu1", 137, at=T + 665, outage=outage, now=T + 2200)
    assert line is not None
    zone = time.strftime("%Z", time.localtime(T))
    assert line.startswith(
        f"the kernel on gpu1 was killed by SIGKILL at 12:41:07 {zone}, while the connection "
        f"was down (12:30:02 to 13:05:37 {zone}); not by relay"
    )
    assert ended_line("gpu1", 0, at=T + 665, outage=outage, now=T + 2200) == (
        f"the kernel on gpu1 exited with status 0 at 12:41:07 {zone}, while the connection "
        f"was down (12:30:02 to 13:05:37 {zone})"
    )
    later = ended_line("gpu1", 137, at=T + 665, outage=outage, now=T + 86400)
    assert f"at Fri 4 Dec 12:41:07 {zone}, " in str(later), later
    assert f"(Fri 4 Dec 12:30:02 to 13:05:37 {zone})" in str(later), later
