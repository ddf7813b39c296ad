from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.kernelcmd import build_argv, shell_join
from relay.lite.linkname import LinkName
from relay.sim.flags import parse_flags, parse_link_options
from relay.sim.templates import FRONT_END_WORDS, fill, fill_remote_command

FE_LAUNCH = (
    'relay launch "myhost" "/usr/local/Wolfram/Mathematica/14.1/Executables/'
    'WolframKernel" "`linkname`"'
)


def test_fills_the_front_ends_launch_command() -> None:
    out = fill(FE_LAUNCH, {"linkname": "59000@127.0.0.1,59001@127.0.0.1"})
    assert out.endswith('"59000@127.0.0.1,59001@127.0.0.1"')
    assert shlex.split(out)[2:] == [
        "myhost",
        "/usr/local/Wolfram/Mathematica/14.1/Executables/WolframKernel",
        "59000@127.0.0.1,59001@127.0.0.1",
    ]


def test_unknown_words_and_lone_backquotes_are_left_alone() -> None:
    assert fill("`nosuch` ` `linkname`x`", {"linkname": "L"}) == "`nosuch` ` Lx`"


def test_all_documented_front_end_words_are_known() -> None:
    for word in (
        "linkname",
        "dataport",
        "messageport",
        "ipaddress",
        "username",
        "machinename",
        "userbaseDirectory",
        "wolframkernel",
        "mathssh",
        "wolframssh",
    ):
        assert word in FRONT_END_WORDS


def test_remote_command_slots_as_the_parallel_package_fills_them() -> None:
    template = 'relay launch --compute "`1`" "/opt/WolframKernel" "`2`" `4` # user `3`'
    out = fill_remote_command(template, host="myhost", linkname="1@h,2@h", user="alice")
    assert out == (
        'relay launch --compute "myhost" "/opt/WolframKernel" "1@h,2@h" '
        "-linkprotocol TCPIP # user alice"
    )


def test_values_are_inserted_literally() -> None:
    assert fill("`1`", {"1": r"\g<0> `2`"}) == r"\g<0> `2`"


def test_kernel_argv() -> None:
    argv = build_argv(
        "/opt/k", LinkName.parse("5@127.0.0.1,6@127.0.0.1"), ["-subkernel", "-noinit"]
    )
    assert argv == [
        "/opt/k",
        "-wstp",
        "-LinkMode",
        "Connect",
        "-LinkProtocol",
        "TCPIP",
        "-LinkName",
        "5@127.0.0.1,6@127.0.0.1",
        "-subkernel",
        "-noinit",
    ]


def test_flags_are_case_insensitive_and_unknown_ones_ignored() -> None:
    flags = parse_flags(
        [
            "-WSTP",
            "-linkmode",
            "Listen",
            "-LINKPROTOCOL",
            "tcpip",
            "-linkhost",
            "127.0.0.1",
            "-LinkOptions",
            "MLDontInteract",
            "-subkernel",
            "-NoInit",
            "-pacletreadonly",
            "-initfile",
            "a.m",
            "-lmverbose",
        ]
    )
    assert flags.link_startup and flags.link_mode == "listen" and flags.link_protocol == "TCPIP"
    assert flags.dont_interact and flags.subkernel and flags.noinit
    assert flags.initfile == ["a.m"]
    assert flags.ignored == ["-pacletreadonly", "-lmverbose"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("256", 256),
        ("3", 3),
        ("MLDontInteract", 256),
        ("3|256", 259),
        ("wsdontinteract+1", 257),
    ],
)
def test_link_options(value: str, expected: int) -> None:
    assert parse_link_options(value) == expected


def test_flag_errors() -> None:
    with pytest.raises(ValueError, match="needs a value"):
        parse_flags(["-linkname"])
    with pytest.raises(ValueError, match="unknown -LinkOptions"):
        parse_flags(["-linkoptions", "bogus"])


words = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)


@given(st.dictionaries(st.sampled_from(sorted(FRONT_END_WORDS)), words, max_size=5), words)
def test_fill_replaces_exactly_the_named_words(values: dict[str, str], tail: str) -> None:
    template = " ".join(f"`{w}`" for w in values) + " `unknownword` " + tail.replace("`", "")
    out = fill(template, values)
    expected = " ".join(values.values()) + " `unknownword` " + tail.replace("`", "")
    assert out == expected


@given(
    st.integers(1, 65535),
    st.integers(1, 65535),
    st.lists(st.sampled_from(["-subkernel", "-noinit", "-pacletreadonly", "-x"]), max_size=4),
)
def test_built_argv_parses_back(p1: int, p2: int, extra: list[str]) -> None:
    link = LinkName.parse(f"{p1}@127.0.0.1,{p2}@127.0.0.1")
    flags = parse_flags(build_argv("/k", link, extra)[1:])
    assert flags.link_startup and flags.link_mode == "connect" and flags.link_protocol == "TCPIP"
    assert LinkName.parse(flags.link_name or "") == link
    assert flags.subkernel == ("-subkernel" in extra) and flags.noinit == ("-noinit" in extra)


@given(st.lists(st.text(min_size=0, max_size=20), min_size=1, max_size=6))
def test_shell_join_round_trips(argv: list[str]) -> None:
    argv = [a.replace("\x00", "") for a in argv]
    assert shlex.split(shell_join(argv)) == argv


def test_shim_arguments_without_argparse() -> None:
    from relay.lite.shim import _parse

    args = _parse(["--compute", "--timeout", "5", "h", "", "1@a,2@a"])
    assert (args.host, args.kernel, args.linkname) == ("h", "", "1@a,2@a")
    assert args.compute and not args.no_autostart and args.timeout == 5.0
    assert _parse(["--", "-odd-host", "k", "n"]).host == "-odd-host"
    with pytest.raises(SystemExit):
        _parse(["--bogus", "h", "k", "n"])
    with pytest.raises(SystemExit):
        _parse(["h", "k"])
