"""The daemon's relay.toml, read again: a rejected file refuses the names it may be adding, and
nothing else; a host takes its entry as it now is. No sockets: ``Daemon`` without serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay import settings
from relay.daemon import Daemon
from relay.errors import ConfigError


def daemon(tmp_path: Path, text: str) -> tuple[Daemon, Path]:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    config, _ = settings.load(path)
    return Daemon(config, str(path)), path


async def test_a_rejected_file_refuses_the_host_it_breaks_and_no_other(tmp_path: Path) -> None:
    d, path = daemon(tmp_path, "[hosts.old]\nhostname = 'o'\n")
    path.write_text("[hosts.old]\nhostname = 'o'\n[hosts.new]\nhostname = 'n'\nkernal = 'k'\n")
    assert "error" in d.reload()
    with pytest.raises(ConfigError) as refused:
        d.host("new")
    assert refused.value.message == f"{path}: hosts.new.kernal: unknown key"
    assert d.host("old").config.hostname == "o"  # the running configuration stays
    assert d.host("alice@elsewhere").config.hostname == "elsewhere"  # not what it breaks


async def test_a_file_that_is_not_toml_refuses_unknown_names_but_not_jump_hosts(
    tmp_path: Path,
) -> None:
    d, path = daemon(tmp_path, "[hosts.old]\nhostname = 'o'\n")
    path.write_text("[hosts.new\n")
    d.reload()
    with pytest.raises(ConfigError, match="not valid TOML"):
        d.host("new")  # it may be the host the file adds
    # a ProxyJump of ssh_config's, on the way to a host of the running configuration
    assert d.host("bastion", adhoc=True).key == "bastion"


async def test_a_host_takes_its_entry_as_it_now_is(tmp_path: Path) -> None:
    d, path = daemon(tmp_path, "")
    first = d.host("later")  # ad-hoc: no kernel, relay's defaults
    assert first.config.kernel is None
    path.write_text("[hosts.later]\nhostname = 'l'\nkernel = '/k'\nlaunch_timeout_s = 9\n")
    d.reload()
    assert d.host("later") is first
    now = first.config  # read anew: the reload replaced it
    assert (now.kernel, now.launch_timeout_s) == ("/k", 9)
