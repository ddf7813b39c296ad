"""Every command's help, as a person new to relay reads it first: ``relay -h``, then
``relay COMMAND -h``. argparse formats each help text only when it is shown (a stray "%"
raises then, not when the parser is built), so each is shown here."""

from __future__ import annotations

import pytest

from relay import cli

COMMANDS = [
    "serve", "connect", "status", "service", "frontend-config", "wolfram", "version", "stop",
    "restart", "reload", "trust", "login", "check",
]  # fmt: skip


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as ended:
        cli.main(argv)
    assert ended.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_the_top_level_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["-h"], capsys)
    listed = out.split("{", 1)[1].split("}", 1)[0].split(",")
    assert sorted(listed) == sorted(["launch", *COMMANDS])


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_is_shown(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = _help([command, "-h"], capsys)
    assert out.startswith(f"usage: relay {command}"), out


def test_the_launch_commands_help_is_the_shims(capsys: pytest.CaptureFixture[str]) -> None:
    """``relay launch`` is the shim the front end runs (relay.lite.shim), not the daemon's
    parser: its help names Tunnel's argument order."""
    out = _help(["launch", "-h"], capsys)
    assert out.startswith("usage: relay launch"), out
    assert "HOST KERNEL LINKNAME" in out, out


def test_the_help_says_what_stop_and_status_do_to_kernels_in_an_outage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the README says of resuming, said where a person looks before stopping relay."""
    out = " ".join(_help(["-h"], capsys).split())
    assert "a host's in an outage end when its resume_window_s runs out" in out, out
    assert "RESUME: on, resuming and the time left, off and why" in out, out
