"""relay check's report: one line per check, the fix for the first failure, the exit status."""

from __future__ import annotations

import re

from relay.check import HOST_PROBE
from relay.checkview import (
    Result,
    after_chatter,
    chatter,
    login_seconds,
    origin_words,
    parse_probe,
    render,
    verdict,
)


def results() -> list[Result]:
    return [
        Result(1, "configuration", "ok", "bob@h:22", ms=2.0, data={"show": {"jump host": "none"}}),
        Result(2, "reach", "fail", "cannot reach h port 22: refused", "check that sshd runs"),
        Result(3, "host key", "skip", "not checked: reach failed first"),
    ]


def test_render_marks_every_line_and_names_the_first_failure() -> None:
    text = render("h", results())
    lines = text.splitlines()
    assert lines[0] == "relay check h"
    assert lines[1].startswith("ok   1. configuration    bob@h:22 (2 ms)")
    assert lines[2].strip() == "jump host: none"
    assert lines[3].startswith("FAIL 2. reach")
    assert lines[4].strip() == "-> check that sshd runs"
    assert lines[5].startswith("--   3. host key")
    assert lines[-1] == "first failure: reach: check that sshd runs"
    assert verdict(results()) == 1


def test_step_10s_summary_lines_up_under_step_9s() -> None:
    lines = render(
        "h",
        [
            Result(9, "round trip", "ok", "both channels answered"),
            Result(10, "connection", "ok", "connected, RTT 1.0 ms"),
        ],
    ).splitlines()
    assert lines[1].index("both channels") == lines[2].index("connected, RTT"), lines


def test_all_passed_and_warnings() -> None:
    ok = [Result(1, "configuration", "ok", "x"), Result(5, "server", "warn", "no SFTP", "fine")]
    assert render("h", ok).splitlines()[-1] == "every check passed (with warnings)"
    assert verdict(ok) == 0


def test_probe_lines_parse_and_junk_is_ignored() -> None:
    out = "sh=ok\nmotd: welcome!\ntmpdir=/tmp/a b\nfree_kb=123\n=x\nnot a pair\n"
    assert parse_probe(out) == {"sh": "ok", "tmpdir": "/tmp/a b", "free_kb": "123"}
    keys = set(re.findall(r"(?:echo |printf '|printf \")(\w+)=", HOST_PROBE))
    assert {"sh", "mktemp", "bash", "tmpdir", "proc", "cache_dir", "free_kb"} <= keys


def test_what_the_login_shell_printed_first_is_told_apart() -> None:
    out = "Welcome to the cluster\n\nrelay-check: running\nMathematica 14.1.0 Kernel\n"
    assert after_chatter(out, "relay-check: ") == [
        "relay-check: running",
        "Mathematica 14.1.0 Kernel",
    ]
    assert after_chatter("14.1.0\n", "relay-check: ") == ["14.1.0"]  # no marker: all of it
    assert chatter("Welcome\n\nLmod: 3 modules\nsh=ok\nmktemp=ok\n", "sh=ok") == [
        "Welcome",
        "Lmod: 3 modules",
    ]
    assert chatter("sh=ok\nmotd: later\n", "sh=ok") == []
    assert chatter("sh: not found\n", "sh=ok") == []


def test_where_the_user_and_port_came_from() -> None:
    spec = {"user": "the host spec bob@h:2222", "port": "the host spec bob@h:2222"}
    assert origin_words(spec) == "user and port from the host spec bob@h:2222"
    assert origin_words(spec, "port") == "from the host spec"
    mixed = {"user": "relay.toml", "port": "ssh_config"}
    assert origin_words(mixed) == "user from relay.toml, port from ssh_config"
    assert origin_words(mixed, "port") == "from ssh_config"
    assert origin_words({"user": "ssh's defaults", "port": "ssh's defaults"}) == (
        "user and port from ssh's defaults"
    )
    assert "login" in set(re.findall(r'echo "(\w+)=', HOST_PROBE))


def test_the_login_is_the_time_from_the_sessions_start_to_the_probe() -> None:
    """Started at tick 123400 (100 a second), the probe's own process at tick 123750."""
    assert login_seconds({"login": "123400 123750 100"}) == 3.5
    assert login_seconds({"login": "123400 123400 100"}) == 0.0
    assert login_seconds({"login": "123400 123750 250"}) == 1.4
    # two clocks that disagree: said as nothing rather than as a quick login (/proc/uptime,
    # which lxcfs makes a container's own, against a start counted from the host's boot
    # read 0 ms where the login took 3.5 s: a review's finding)
    assert login_seconds({"login": "123450 123400 100"}) is None
    for said in ("", "123400 123750", "123400 123750 0", "x 123750 100", "1 12.5 100"):
        assert login_seconds({"login": said}) is None, said
    assert login_seconds({}) is None  # no /proc on the host: nothing said
