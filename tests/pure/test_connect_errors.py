"""A connect attempt's timeout, said against the bound it really had."""

from __future__ import annotations

import pytest

from relay.ssh.errors import translate_connect_error
from relay.ssh.sshconfig import SSHView

VIEW = SSHView(name="hpc", hostname="login.example.org", port=2222, user="ada", files=())


def said(reached: str, *, cut_short: bool) -> str:
    return translate_connect_error(
        TimeoutError(),
        alias="hpc",
        view=VIEW,
        known_hosts=[],
        configured=["hpc"],
        config_source="relay.toml",
        timeout_s=2.46,
        elapsed_s=2.5,
        reached=reached,
        cut_short=cut_short,
    ).message


@pytest.mark.parametrize("reached", ["none", "tcp", "ssh"])
def test_a_bound_cut_short_by_the_rounds_deadline_is_not_called_the_setting(
    reached: str,
) -> None:
    """What was left of launch_timeout_s is not connect_timeout_s: a person reading 2.46 s as
    the setting would look for it in relay.toml and not find it (a resume's late attempt)."""
    short = said(reached, cut_short=True)
    assert "what was left of launch_timeout_s" in short, short
    assert "connect_timeout_s" not in short, short
    whole = said(reached, cut_short=False)
    assert "ConnectTimeout, or connect_timeout_s in relay.toml" in whole, whole
    assert "what was left" not in whole, whole
