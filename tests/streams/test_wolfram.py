"""relay's Wolfram Language files under Mathics3: they parse, and their pure parts agree with
the Python they mirror (relay.hook for the kernel hook, relay.frontendconfig for RelayTools).

Mathics3 has no MathLink, sockets or Parallel package, so the functions that use those are only
syntax-checked here (see the README's limits)."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from relay import frontendconfig as fc
from relay import hook
from relay.linkname import LinkName

mathics = pytest.importorskip("mathics.session")

WL = files("relay.wolfram")
KERNEL_INIT = Path(str(WL.joinpath("RelayKernelInit.wl")))
RELAYTOOLS = Path(str(WL.joinpath("RelayTools", "RelayTools.wl")))
INIT_M = Path(str(WL.joinpath("RelayTools", "Kernel", "init.m")))


class Session:
    def __init__(self) -> None:
        from mathics.core.load_builtin import import_and_load_builtins

        import_and_load_builtins()
        self.s = mathics.MathicsSession()

    def __call__(self, expr: str) -> Any:
        return self.s.evaluate(expr).to_python(string_quotes=False)


@pytest.fixture(scope="module")
def wl() -> Session:
    session = Session()
    for path in (KERNEL_INIT, RELAYTOOLS):
        session(f"Get[{json.dumps(str(path))}]")
    return session


def s(text: str) -> str:
    """A Wolfram Language string literal (JSON's escapes are the language's)."""
    return json.dumps(text)


@pytest.mark.parametrize("path", [KERNEL_INIT, RELAYTOOLS, INIT_M], ids=lambda p: p.name)
def test_files_parse_and_a_broken_copy_does_not(wl: Session, path: Path) -> None:
    text = path.read_text()
    assert wl(f"SyntaxQ[{s(text)}]") is True
    cut = text.rindex("]")
    assert wl(f"SyntaxQ[{s(text[:cut] + text[cut + 1 :])}]") is False


@pytest.mark.parametrize(
    ("token", "op", "argument"),
    [
        ("tok_EN-123", "callback", "53994@127.0.0.1,39359@127.0.0.1"),
        ("x" * 43, "listen-pair", "-"),
        ("abc", "release", "1@127.0.0.1,2@127.0.0.1"),
        ("abc", "listen-pair", ""),
    ],
)
def test_hook_request_lines_are_the_same_in_wl_and_python(
    wl: Session, token: str, op: str, argument: str
) -> None:
    got = wl(f"RelayHook`requestLine[{s(token)}, {s(op)}, {s(argument)}]")
    assert got == hook.request_line(token, op, argument)
    assert hook.parse_request(got).argument == (argument or "-")


@pytest.mark.parametrize(
    "line",
    [
        hook.format_reply(True, "next-token", "1@127.0.0.1,2@127.0.0.1"),
        hook.format_reply(False, "next-token", "callback to  10.0.0.1 refused:\\n only loopback"),
        hook.format_reply(False, None, "token refused"),
        hook.format_reply(True, "t", "released"),
        "garbage\n",
    ],
)
def test_hook_replies_parse_the_same(wl: Session, line: str) -> None:
    ok, token, text = wl(f"RelayHook`parseReply[{s(line)}]")
    try:
        expected = hook.parse_reply(line)
    except hook.HookError:
        expected = (False, None, "malformed reply")
    assert (ok, None if token == "System`None" else token, text) == expected


@pytest.mark.parametrize(
    ("version", "override"),
    [
        (10.4, "auto"),
        (11.0, "auto"),
        (11.1, "auto"),
        (14.1, "auto"),
        (14.1, "old"),
        (9.0, "new"),
    ],
)
def test_method_choice_is_the_same(wl: Session, version: float, override: str) -> None:
    got = wl(f"RelayHook`chooseMethod[{version}, {s(override)}]")
    assert got == hook.choose_method(version, override)


@pytest.mark.parametrize(
    ("host", "kernel", "relay"),
    [
        ("myhost", "/usr/local/Wolfram/Mathematica/14.1/Executables/WolframKernel", "relay"),
        ("alice@[2001:db8::1]:2222", "/opt/My Kernel/WolframKernel", "/home/a b/.local/bin/relay"),
        ("ssh://bob@login.example.org", "", "relay"),
        (
            'odd"host',
            "C:\\Program Files\\Wolfram Research\\Mathematica\\14.1\\WolframKernel.exe",
            "relay",
        ),
    ],
)
def test_launch_commands_are_the_same(wl: Session, host: str, kernel: str, relay: str) -> None:
    got = wl(f"RelayTools`RelayLaunchCommand[{s(host)}, {s(kernel)}, {s(relay)}]")
    assert got == fc.launch_command(host, kernel, relay)
    for os_name in ("Unix", "MacOSX", "Windows"):
        got = wl(f"RelayTools`RelayRemoteCommand[{s(kernel)}, {s(relay)}, {s(os_name)}]")
        assert got == fc.remote_command(kernel, relay, os_name)


@pytest.mark.parametrize("os_name", ["Unix", "MacOSX", "Windows"])
@pytest.mark.parametrize("version", [10.0, 11.3, 13.0, 14.1])
def test_kernel_paths_and_user_base_are_the_same(wl: Session, os_name: str, version: float) -> None:
    assert wl(f"RelayTools`RelayKernelPath[{s(os_name)}, {version}]") == fc.default_kernel_path(
        os_name, version
    )
    home, appdata = "/home/alice", "C:\\Users\\alice\\AppData\\Roaming"
    assert wl(
        f"RelayTools`RelayUserBaseDirectory[{s(os_name)}, {s(home)}, {s(appdata)}]"
    ) == fc.user_base_directory(os_name, home, appdata)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ((53994, "127.0.0.1"), (39359, "127.0.0.1")),
        ((1, "::1"), (65535, "::1")),
        ((5000, "login.example.org"), (5001, "login.example.org")),
    ],
)
def test_link_names_are_the_same(
    wl: Session, data: tuple[int, str], message: tuple[int, str]
) -> None:
    got = wl(
        f"RelayTools`RelayLinkName[{{{data[0]}, {s(data[1])}}}, {{{message[0]}, {s(message[1])}}}]"
    )
    assert got == fc.link_name(data, message)
    assert str(LinkName.parse(got)) == got


def test_front_end_name_check(wl: Session) -> None:
    assert wl('RelayHook`frontEndNameQ["5@127.0.0.1,6@127.0.0.1", "127.0.0.1"]') is True
    assert wl('RelayHook`frontEndNameQ["5@10.1.1.1,6@127.0.0.1", "127.0.0.1"]') is False
    assert wl('RelayHook`frontEndNameQ["x@127.0.0.1,6@127.0.0.1", "127.0.0.1"]') is False


def test_hook_installs_nothing_without_relay(wl: Session) -> None:
    """Outside relay (no token in the environment) the init file changes no definitions."""
    assert wl("Length[DownValues[LinkCreate]]") == 0


def test_relay_machine_passes_remote_machine_options_through(wl: Session) -> None:
    """As Tunnel's RemoteMachineTunnel did: KernelSpeed (or any RemoteMachine option) reaches
    RemoteMachine; RelayMachine's own options do not; a user's LinkHost comes first."""
    kernel, relay = "/opt/k/WolframKernel", "/usr/bin/relay"
    template = fc.remote_command(kernel, relay, "Unix")
    wl(
        f'args = RelayTools`RelayMachineArguments["h", 4, {s(kernel)}, {s(relay)}, "Unix", '
        f'KernelSpeed -> 2, "KernelPath" -> "/x", "Connect" -> False]'
    )
    assert wl("Length[args]") == 5
    assert wl(f'args[[1 ;; 3]] === {{"h", {s(template)}, 4}}') is True
    assert wl("args[[4]] === (KernelSpeed -> 2)") is True
    assert wl('args[[5]] === (LinkHost -> "127.0.0.1")') is True
    wl('args = RelayTools`RelayMachineArguments["h", 1, "k", "r", "Unix", LinkHost -> "10.0.0.2"]')
    assert wl('args[[4 ;;]] === {LinkHost -> "10.0.0.2", LinkHost -> "127.0.0.1"}') is True
