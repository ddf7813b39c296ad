"""relay's Wolfram Language files under Mathics3: they parse, and their pure parts agree with
the Python they mirror (relay.lite.hook for the kernel hook, relay.frontendconfig for RelayTools).

Mathics3 has no MathLink, sockets or Parallel package, so the functions that use those are only
syntax-checked here (see the README's limits)."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from relay import frontendconfig as fc
from relay.lite import hook
from relay.lite.linkname import Endpoint, LinkName

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

    def messages(self, expr: str) -> list[str]:
        """The messages evaluating ``expr`` printed."""
        self.s.evaluate(expr)
        return [str(out.text) for out in self.s.evaluation.out]


@pytest.fixture(scope="module")
def wl() -> Session:
    session = Session()
    for path in (KERNEL_INIT, RELAYTOOLS):
        session(f"Get[{json.dumps(str(path))}]")
    return session


def s(text: str) -> str:
    """A Wolfram Language string literal (not JSON's: WL has no \\u escape)."""
    return fc.wl_string(text)


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
    got = wl(f"RelayHook`Private`requestLine[{s(token)}, {s(op)}, {s(argument)}]")
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
    ok, token, text = wl(f"RelayHook`Private`parseReply[{s(line)}]")
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
    got = wl(f"RelayHook`Private`chooseMethod[{version}, {s(override)}]")
    assert got == hook.choose_method(version, override)


@pytest.mark.parametrize(
    ("host", "kernel", "relay"),
    [
        ("myhost", "/usr/local/Wolfram/Wolfram/14.1/Executables/WolframKernel", "relay"),
        ("alice@[2001:db8::1]:2222", "/opt/My Kernel/WolframKernel", "/home/a b/.local/bin/relay"),
        ("ssh://bob@login.example.org", "", "relay"),
        ('odd"host', "/opt/k", "relay"),
    ],
)
def test_launch_commands_are_the_same(wl: Session, host: str, kernel: str, relay: str) -> None:
    got = wl(f"RelayTools`RelayLaunchCommand[{s(host)}, {s(kernel)}, {s(relay)}]")
    assert got == fc.launch_command(host, kernel, relay)
    got = wl(f"RelayTools`RelayRemoteCommand[{s(kernel)}, {s(relay)}]")
    assert got == fc.remote_command(kernel, relay)


@pytest.mark.parametrize("os_name", ["Unix", "MacOSX"])
@pytest.mark.parametrize("version", [10.0, 11.3, 13.0, 14.0, 14.1, 14.3])
def test_kernel_paths_are_the_same(wl: Session, os_name: str, version: float) -> None:
    got = wl(f"RelayTools`RelayKernelPath[{s(os_name)}, {version}]")
    assert got == fc.default_kernel_path(os_name, version)
    assert ("Wolfram.app" in got or "/Wolfram/Wolfram/" in got) == (version >= 14.1)


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
    assert got == str(LinkName(Endpoint(*data), Endpoint(*message)))
    assert str(LinkName.parse(got)) == got


NAMES = [
    "5@127.0.0.1,6@127.0.0.1",
    "5@127.1.2.3,6@localhost",
    "5@::1,6@::1",
    "5@10.0.0.7,6@10.0.0.7",  # the front end's own host in these cases
    "5@10.0.0.8,6@10.0.0.7",
    "5@10.0.0.7",
    "x@127.0.0.1,6@127.0.0.1",
    "5@127.0.0.1,,6@127.0.0.1",
    "5@@127.0.0.1,6@127.0.0.1",
    "5@127.0.0.1,6@127.0.0.1,7@127.0.0.1",
    "5@127.0.0.1.5,6@127.0.0.1",
    "5@128.0.0.1,6@127.0.0.1",
    "5@0:0:0:0:0:0:0:1,6@::1",
    " 5@127.0.0.1,6@127.0.0.1",
    "linkname",
    "",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("frontend_host", ["10.0.0.7", "127.0.0.1"])
def test_one_rule_for_the_front_ends_names(wl: Session, name: str, frontend_host: str) -> None:
    """The hook redirects exactly the names the daemon accepts callbacks to (relay.lite.hook)."""
    got = wl(f"RelayHook`Private`frontEndNameQ[{s(name)}, {s(frontend_host)}]")
    assert got is hook.front_end_name(name, frontend_host)


def test_the_rule_accepts_and_refuses_what_it_says() -> None:
    assert hook.front_end_name("5@10.0.0.7,6@10.0.0.7", "10.0.0.7")
    assert hook.front_end_name("5@127.9.9.9,6@localhost", "10.0.0.7")
    assert not hook.front_end_name("5@10.0.0.8,6@10.0.0.7", "10.0.0.7")
    assert not hook.front_end_name("5@192.168.1.1,6@127.0.0.1", "127.0.0.1")


@pytest.mark.parametrize("name", ["5@127.0.0.1,6@127.0.0.1", "a b\tc\u00e9", "", "x" * 300])
def test_skipped_names_become_one_word_the_same_way(wl: Session, name: str) -> None:
    got = wl(f"RelayHook`Private`oneWord[{s(name)}]")
    assert got == hook.loggable_name(name)
    assert hook.parse_request(hook.request_line("t", "skipped", got)).argument == got


@pytest.mark.parametrize("text", ["10", "1", "600", "601", "0", "1.5", "ten", None])
def test_time_limits_read_the_same(wl: Session, text: str | None) -> None:
    from relay.sim.kernel import _timeout_s

    arg = "$Failed" if text is None else s(text)
    assert wl(f"RelayHook`Private`timeoutSeconds[{arg}]") == _timeout_s(text)


def test_bash_transport_is_the_same_text(wl: Session) -> None:
    assert wl("RelayHook`Private`$bashTransport") == hook.BASH_TRANSPORT


def test_the_hook_leaves_no_names_about(wl: Session) -> None:
    """Nothing of the hook is on $ContextPath or in Global`, so no user definition meets it."""
    assert "RelayHook`" not in wl("$ContextPath")
    assert wl('Names["RelayHook`*"]') == ("$Method",)
    assert wl('Names["Global`*"]') == ()
    assert wl("Length[DownValues[LinkCreate]]") == 0  # outside relay: nothing installed


# -- the hook's behaviour, with its transport replaced (Mathics3 has no sockets or links) ---


@pytest.fixture
def hooked(monkeypatch: pytest.MonkeyPatch) -> Session:
    """A kernel as relay starts it: the hook loaded with a control channel in the environment,
    after the kernel's own MathLink`CreateFrontEndLinks is defined; replies are scripted."""
    for name, value in {
        "RELAY_HOOK_TOKEN": "t0",
        "RELAY_HOOK_PORT": "4000",
        "RELAY_FRONTEND_HOST": "127.0.0.1",
        "RELAY_DYNAMIC_METHOD": "new",  # Mathics3's $VersionNumber is 10.0
        "RELAY_HOOK_TIMEOUT": "3",
    }.items():
        monkeypatch.setenv(name, value)
    session = Session()
    # Mathics3 lacks MathLink: make the System symbols so the file's names are the real ones
    session(
        "{System`LinkCreate, System`LinkMode, System`Connect, System`Listen, "
        "System`LinkProtocol, System`LinkObject}"
    )
    session(
        "MathLink`CreateFrontEndLinks[] := {"
        'LinkCreate[front$service, LinkMode -> Connect, LinkProtocol -> "TCPIP"], '
        'LinkCreate[front$preemptive, LinkMode -> Connect, LinkProtocol -> "TCPIP"]}'
    )
    session(f"Get[{s(str(KERNEL_INIT))}]")
    session(
        "sent = {}; replies = {}; RelayHook`Private`send[line_String] := "
        "(AppendTo[sent, line]; If[replies === {}, $Failed, "
        "With[{r = First[replies]}, replies = Rest[replies]; r]])"
    )
    return session


def ok(result: str, token: str = "next-token-000000000") -> str:
    return hook.format_reply(True, token, result)


def test_the_front_ends_set_up_is_redirected_and_user_links_are_not(hooked: Session) -> None:
    wl = hooked
    wl('front$service = "5@127.0.0.1,6@127.0.0.1"; front$preemptive = "7@127.0.0.1,8@127.0.0.1"')
    wl(f"replies = {{{s(ok('41@127.0.0.1,42@127.0.0.1'))}, {s(ok('43@127.0.0.1,44@127.0.0.1'))}}}")
    assert wl("MathLink`CreateFrontEndLinks[] /. LinkCreate[n_, ___] :> n") == (
        "41@127.0.0.1,42@127.0.0.1",
        "43@127.0.0.1,44@127.0.0.1",
    )
    assert wl("sent") == (
        hook.request_line("t0", "callback", "5@127.0.0.1,6@127.0.0.1"),
        hook.request_line("next-token-000000000", "callback", "7@127.0.0.1,8@127.0.0.1"),
    )
    # later, user code connects to a link on the kernel host's own loopback: left alone
    got = wl(
        'LinkCreate["9@127.0.0.1,10@127.0.0.1", LinkMode -> Connect] /. LinkCreate[n_, ___] :> n'
    )
    assert got == "9@127.0.0.1,10@127.0.0.1"
    assert len(wl("sent")) == 2
    # the front end sets its links up again (a new session of Dynamic): the window reopens
    wl(f"replies = {{{s(ok('45@127.0.0.1,46@127.0.0.1'))}, {s(ok('47@127.0.0.1,48@127.0.0.1'))}}}")
    assert wl("MathLink`CreateFrontEndLinks[] /. LinkCreate[n_, ___] :> n")[0] == (
        "45@127.0.0.1,46@127.0.0.1"
    )


def test_other_names_in_the_set_up_are_reported_and_left_alone(hooked: Session) -> None:
    wl = hooked
    wl('front$service = "5@10.9.9.9,6@10.9.9.9"; front$preemptive = "7@127.0.0.1,8@127.0.0.1"')
    wl(f"replies = {{{s(ok('noted'))}, {s(ok('43@127.0.0.1,44@127.0.0.1'))}}}")
    assert wl("MathLink`CreateFrontEndLinks[] /. LinkCreate[n_, ___] :> n") == (
        "5@10.9.9.9,6@10.9.9.9",
        "43@127.0.0.1,44@127.0.0.1",
    )
    assert wl("sent")[0] == hook.request_line("t0", "skipped", "5@10.9.9.9,6@10.9.9.9")


def test_an_unreachable_relay_fails_the_link_with_one_message(hooked: Session) -> None:
    wl = hooked
    wl('front$service = "5@127.0.0.1,6@127.0.0.1"; front$preemptive = "7@127.0.0.1,8@127.0.0.1"')
    messages = wl.messages("result = MathLink`CreateFrontEndLinks[]")
    assert tuple(wl("result")) == ("System`$Failed", "System`$Failed")  # never the same name here
    assert len(messages) == 1
    assert "did not answer on 127.0.0.1:4000 within 3 s" in messages[0]
    assert "Dynamic and palettes will not work" in messages[0]
    assert len(wl("sent")) == 2  # each link asked, each bounded


def test_a_refusal_is_said_with_relays_reason(hooked: Session) -> None:
    wl = hooked
    wl('front$service = "5@127.0.0.1,6@127.0.0.1"; front$preemptive = "7@127.0.0.1,8@127.0.0.1"')
    refused = hook.format_reply(False, "t1-000000000000000000", "no forwarding: refused")
    wl(f"replies = {{{s(refused)}, {s(ok('43@127.0.0.1,44@127.0.0.1', 't2'))}}}")
    messages = wl.messages("result = MathLink`CreateFrontEndLinks[]")
    assert wl("result[[1]]") == "System`$Failed"
    assert messages == ["relay's Dynamic hook: no forwarding: refused"]
    assert wl("sent")[1].startswith("RELAY1 t1-000000000000000000 callback ")


def test_the_socket_transport_falls_back_to_bash(hooked: Session) -> None:
    wl = hooked
    wl("Clear[RelayHook`Private`send]; Get[" + s(str(KERNEL_INIT)) + "]")
    wl(
        "Clear[RelayHook`Private`socketsQ, RelayHook`Private`socketSend, "
        "RelayHook`Private`bashSend]; "
        "tried = {}; RelayHook`Private`socketsQ[] := True; "
        'RelayHook`Private`socketSend[line_] := (AppendTo[tried, "socket"]; $Failed); '
        'RelayHook`Private`bashSend[line_] := (AppendTo[tried, "bash"]; $Failed)'
    )
    assert wl('RelayHook`Private`request["listen-pair", "-"]') == "System`$Failed"
    assert wl("tried") == ("socket", "bash")
    wl("tried = {}; RelayHook`Private`socketsQ[] := False")  # an old kernel: bash alone
    wl('RelayHook`Private`request["listen-pair", "-"]')
    assert wl("tried") == ("bash",)


def test_old_method_falls_back_to_a_listening_link(hooked: Session) -> None:
    """Up to 11.0, with relay unreachable, CreateFrontEndLink listens as a kernel without
    relay would (tunnel.m's fallback) instead of returning $Failed."""
    wl = hooked
    got = wl("RelayHook`Private`oldFrontEndLink[]")
    assert got != "System`$Failed"
    assert wl("Head[RelayHook`Private`oldFrontEndLink[]] === LinkCreate") is True
    assert wl("Cases[RelayHook`Private`oldFrontEndLink[], _Rule]") is not None
    assert wl("MemberQ[RelayHook`Private`oldFrontEndLink[], LinkMode -> Listen]") is True


def test_relay_machine_passes_remote_machine_options_through(wl: Session) -> None:
    """As Tunnel's RemoteMachineTunnel did: KernelSpeed (or any RemoteMachine option) reaches
    RemoteMachine; RelayMachine's own options do not; a user's LinkHost comes first."""
    kernel, relay = "/opt/k/WolframKernel", "/usr/bin/relay"
    template = fc.remote_command(kernel, relay)
    wl(
        f'args = RelayTools`RelayMachineArguments["h", 4, {s(kernel)}, {s(relay)}, '
        f'KernelSpeed -> 2, "KernelPath" -> "/x", "Connect" -> False]'
    )
    assert wl("Length[args]") == 5
    assert wl(f'args[[1 ;; 3]] === {{"h", {s(template)}, 4}}') is True
    assert wl("args[[4]] === (KernelSpeed -> 2)") is True
    assert wl('args[[5]] === (LinkHost -> "127.0.0.1")') is True
    wl('args = RelayTools`RelayMachineArguments["h", 1, "k", "r", LinkHost -> "10.0.0.2"]')
    assert wl('args[[4 ;;]] === {LinkHost -> "10.0.0.2", LinkHost -> "127.0.0.1"}') is True


def test_relay_connect_asks_for_room_for_the_machines_kernels(wl: Session) -> None:
    """RelayMachine[host, n] runs relay connect host --kernels n: on a Slurm host, one job
    for all n kernels (relay.slurm), not a job per Run; and its KernelPath is looked for
    ahead (--kernel), unless it is the host's own ("")."""
    assert wl('RelayTools`RelayConnectArguments["cluster", 64]') == (
        "connect", "cluster", "--kernels", "64",
    )  # fmt: skip
    assert wl('RelayTools`RelayConnectArguments["h"]') == ("connect", "h")
    assert wl('RelayTools`RelayConnectArguments["h", 8, "/opt/W/WolframKernel"]') == (
        "connect", "h", "--kernels", "8", "--kernel", "/opt/W/WolframKernel",
    )  # fmt: skip
    assert wl('RelayTools`RelayConnectArguments["h", 8, ""]') == (
        "connect", "h", "--kernels", "8",
    )  # fmt: skip


def test_kernel_path_defaults_to_the_hosts_configured_kernel(wl: Session) -> None:
    assert wl('OptionValue[RelayTools`RelayMachine, "KernelPath"]') == ""
    assert wl('OptionValue[RelayTools`RelaySetupKernelConfiguration, "KernelPath"]') == ""


def test_removing_relays_kernel_configurations(wl: Session) -> None:
    ours = fc.launch_command("myhost", "", "/home/a/.local/bin/relay")
    other = '"/usr/bin/ssh" -x host math -mathlink -LinkName "`linkname`"'
    wl(
        f'names = {{"Local" -> {{}}, "a" -> {{"LoginScript" -> {s(ours)}}}, '
        f'"b" -> {{"LoginScript" -> {s(other)}}}, "c" -> {{"RemoteMachine" -> True, '
        f'"LoginScript" -> {s(fc.launch_command("h2", "/k"))}}}}}'
    )
    kept, removed = wl('RelayTools`RelayDropKernelConfigurations[names, "a"]')
    assert removed == ("a",) and len(kept) == 3
    kept, removed = wl("RelayTools`RelayDropKernelConfigurations[names, All]")
    assert removed == ("a", "c") and wl(
        "First /@ First[RelayTools`RelayDropKernelConfigurations[names, All]]"
    ) == ("Local", "b")
    _, removed = wl('RelayTools`RelayDropKernelConfigurations[names, "b"]')
    assert removed == ()  # not relay's: never touched


@pytest.mark.parametrize(
    "text",
    ["/Users/zoë/.local/bin/relay", "C:\\Users\\x", 'a"b', "日本/😀/relay", "tab\there", ""],
)
def test_wolfram_strings_read_back_the_same(wl: Session, text: str) -> None:
    literal = fc.wl_string(text)
    assert literal.isascii()
    assert wl(f"ToExpression[{s(literal)}] === {s(text)}") is True
