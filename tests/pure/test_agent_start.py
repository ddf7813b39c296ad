"""The agent's start line read (``relay.agent.start``), and the numbers a daemon gives its
starts: pure, no host."""

from __future__ import annotations

from relay.agent.start import Generations, Superseded, Unavailable, parse_start


def test_each_start_is_numbered_above_the_last_whatever_the_clock_does() -> None:
    """The wall clock's nanoseconds, so that a new daemon's starts outnumber a dead one's;
    where the clock is stepped back (or stands still), one more than the last."""
    clock = iter([1_000, 2_000, 500, 500, 9_000])
    numbers = Generations(lambda: next(clock))
    assert [numbers.next() for _ in range(5)] == [1_000, 2_000, 2_001, 2_002, 9_000]


def test_a_number_heard_from_the_host_is_outnumbered() -> None:
    """``agent newer N``: a start is tried again above N, and the ones after stay above it."""
    numbers = Generations(lambda: 1_000)
    assert numbers.next(above=50_000) == 50_001
    assert numbers.next() == 50_002


def test_a_later_starts_agent_is_said_as_its_number() -> None:
    assert parse_start("h", 1, "agent newer 1765000000000000000\n") == Superseded(
        1765000000000000000
    )
    for said in ("agent newer", "agent newer 12x", "agent newer ١٢", "agent newer " + "9" * 20):
        started = parse_start("h", 1, said + "\n")
        assert isinstance(started, Unavailable), said
        assert started.reason.startswith("relay's agent did not start (exit 1, said "), said


def test_a_start_that_waited_too_long_for_another_says_so() -> None:
    assert parse_start("h", 1, "agent refuse busy /tmp/relay-agent-7/ab.lock\n") == Unavailable(
        "another start of relay's agent held /tmp/relay-agent-7/ab.lock too long (is one stuck "
        "on the host?)"
    )
    assert parse_start("h", 1, "agent refuse lockfile /tmp/relay-agent-7/ab.lock\n") == (
        Unavailable("cannot create /tmp/relay-agent-7/ab.lock (is the disk full?)")
    )


def test_a_tmpdir_with_no_room_says_so() -> None:
    """No block or inode for the agent's directory or socket: the start said "is TMPDIR a
    directory you can write to?", or crashed ("OSError: [Errno 28] ...")."""
    assert parse_start("h", 1, "agent refuse full /tmp/relay-agent-7/ab.sock\n") == Unavailable(
        "cannot create /tmp/relay-agent-7/ab.sock: the host's TMPDIR has no space left (free "
        "some space there, or set TMPDIR there to a directory that has it)"
    )


def test_a_socket_path_too_long_says_which_setting_shortens_it() -> None:
    """A long TMPDIR on the host made the agent's socket path longer than a socket's
    address holds: its start crashed, said as "OSError: AF_UNIX path too long" (a review's
    finding)."""
    path = "/scratch/" + "t" * 100 + "/relay-agent-7/00ff.sock"
    assert parse_start("h", 1, f"agent refuse toolong {path}\n") == Unavailable(
        f"{path} is too long for a socket path (set a shorter TMPDIR on the host)"
    )


def test_a_socket_path_not_in_utf8_says_which_setting_changes_it() -> None:
    """A TMPDIR named in Latin-1: sshd is asked for the socket by a name in UTF-8, and the
    host's refusal was said as sshd's configuration (a review's finding)."""
    path = "/tmp/J\ufffdrgen/relay-agent-7/00ff.sock"
    assert parse_start("h", 1, f"agent refuse notutf8 {path}\n") == Unavailable(
        f"{path} is not UTF-8, and relay can name a socket to sshd only in UTF-8 (set TMPDIR "
        "on the host to a directory whose path is)"
    )
