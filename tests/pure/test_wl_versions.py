"""Every System symbol relay's Wolfram Language files use exists in the oldest version the README
claims (Mathematica 10.0): a kernel of that version must load the hook and RelayTools without a
missing function (issue: StringRiffle, 10.1, broke 10.0 kernels on the old method).

The first versions come from Wolfram's reference pages (the "History" section, "Introduced in
2014 (10.0)", or the citation year where only that was stored), checked for this project; those
marked "memory" are from before 10.0 by any account and were not looked up one by one.
Functions newer than 10.0 may be used only by name, through ``Symbol["System`..."]``, behind a
check that they exist: the hook's socket transport (``$socketFunctions``).
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import pytest

OLDEST = 10.0  # README: "Mathematica 10.0 and later"

WL = files("relay.wolfram")
FILES = {
    "RelayKernelInit.wl": Path(str(WL.joinpath("RelayKernelInit.wl"))),
    "RelayTools.wl": Path(str(WL.joinpath("RelayTools", "RelayTools.wl"))),
    "init.m": Path(str(WL.joinpath("RelayTools", "Kernel", "init.m"))),
}

HISTORY, YEAR, GUIDE, MEMORY = "History line", "citation year", "new-features guide", "memory"

LONG_BEFORE = """
All And Attributes Automatic Break Cases Connect DeleteCases Environment False Flatten Fold
FromDigits Get Head HoldPattern If Infinity Integer Join Last LinkHost LinkMode LinkProtocol
List ListQ Listen MatchQ MemberQ Message Min Mod Needs None Normal OptionQ Options Position
Protect Protected Quotient RegularExpression Replace ReplacePart Round Rule Select Sequence
SetOptions String StringJoin StringLength StringMatchQ StringReplace StringSplit StringTake
Symbol Take ToString True TrueQ Unprotect While With $Failed $FrontEnd
"""

# symbol: (first version, how it was established)
FIRST_VERSION: dict[str, tuple[float, str]] = {
    # from reference.wolfram.com (History line, citation year, or the 10.x feature summaries)
    "AbsoluteTime": (2.0, HISTORY),
    "Append": (1.0, HISTORY),
    "Association": (10.0, GUIDE),
    "AssociationQ": (10.1, GUIDE),
    "Begin": (1.0, HISTORY),
    "BeginPackage": (1.0, HISTORY),
    "Block": (1.0, HISTORY),
    "ByteArray": (10.1, GUIDE),
    "Check": (1.0, HISTORY),
    "Close": (1.0, HISTORY),  # sockets: updated 11.2, used only on the socket path
    "DigitCharacter": (5.1, HISTORY),
    "DirectoryName": (3.0, HISTORY),  # the 2-argument form's version is not stated: unused
    "DownValues": (2.0, HISTORY),
    "Drop": (1.0, HISTORY),
    "End": (1.0, HISTORY),
    "EndPackage": (1.0, HISTORY),
    "EvaluatorNames": (4.0, HISTORY),
    "Except": (5.1, HISTORY),
    "FileNameJoin": (7.0, YEAR),
    "First": (1.0, HISTORY),
    "FromCharacterCode": (2.0, HISTORY),
    "General": (1.0, HISTORY),
    "ImportString": (4.0, HISTORY),  # with "JSON"; "RawJSON" (10.2?) is avoided
    "LinkCreate": (3.0, HISTORY),
    "LinkObject": (3.0, HISTORY),
    "Length": (1.0, YEAR),
    "Module": (2.0, HISTORY),
    "Names": (1.0, HISTORY),
    "OptionValue": (6.0, YEAR),
    "OptionsPattern": (6.0, YEAR),
    "Prepend": (1.0, HISTORY),
    "Quiet": (6.0, YEAR),
    "Rest": (1.0, HISTORY),
    "Return": (1.0, HISTORY),
    "RunProcess": (10.0, MEMORY),  # its neighbours KillProcess, ProcessConnection: 2014 (10.0)
    "SocketConnect": (10.1, MEMORY),  # 2015, as SocketObject
    "SocketObject": (10.1, YEAR),  # 2015: 10.1-10.3
    "SocketReadMessage": (11.1, YEAR),  # 2017: 11.1 or 11.2
    "SocketReadyQ": (11.1, YEAR),  # 2017: 11.1 or 11.2
    "StartProcess": (10.0, MEMORY),
    "StringQ": (2.0, HISTORY),
    "StringRiffle": (10.1, GUIDE),
    "StringTrim": (7.0, YEAR),
    "SystemInformation": (6.0, YEAR),
    "ToCharacterCode": (2.0, YEAR),
    "Which": (1.0, HISTORY),
    "WriteString": (1.0, HISTORY),  # sockets: per the SocketObject page, socket path only
    "$ContextPath": (1.0, HISTORY),
    "$InputFileName": (8.0, YEAR),
    "$OperatingSystem": (2.0, HISTORY),
    "$VersionNumber": (2.0, HISTORY),
    # long before 10.0 by any account
    **dict.fromkeys(LONG_BEFORE.split(), (9.0, MEMORY)),
}

SYMBOL = re.compile(r"[$A-Za-z][$A-Za-z0-9]*(?:`[$A-Za-z][$A-Za-z0-9]*)*")


def code_only(text: str) -> tuple[str, list[str]]:
    """The text without comments and string literals, and the string literals."""
    code, strings, i, depth = [], [], 0, 0
    while i < len(text):
        if text.startswith("(*", i):
            depth, i = depth + 1, i + 2
        elif depth and text.startswith("*)", i):
            depth, i = depth - 1, i + 2
        elif depth:
            i += 1
        elif text[i] == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            strings.append(text[i + 1 : j])
            code.append(' "" ')
            i = j + 1
        else:
            code.append(text[i])
            i += 1
    return "".join(code), strings


def system_symbols(text: str) -> set[str]:
    """Capitalized symbols that are not relay's own, nor in another package's context."""
    code, _ = code_only(text)
    found = set()
    for word in SYMBOL.findall(code):
        word = word.removeprefix("System`")
        bare = word.lstrip("$")
        if "`" in word or not bare[:1].isupper() or bare.startswith("Relay"):
            continue
        found.add(word)
    return found


@pytest.mark.parametrize("name", FILES)
def test_every_system_symbol_is_in_the_oldest_claimed_version(name: str) -> None:
    used = system_symbols(FILES[name].read_text())
    unknown = sorted(used - FIRST_VERSION.keys())
    assert not unknown, f"{name}: look up the first version of {unknown} and add it here"
    newer = sorted(s for s in used if FIRST_VERSION[s][0] > OLDEST)
    assert not newer, f"{name} uses {newer}, newer than {OLDEST}: guard them as the sockets are"


def test_the_socket_transport_is_only_named_and_guarded() -> None:
    text = FILES["RelayKernelInit.wl"].read_text()
    code, strings = code_only(text)
    listed = re.search(r"\$socketFunctions = \{([^}]*)\}", text)
    assert listed
    guarded = re.findall(r'"(\w+)"', listed.group(1))
    assert "SocketReadyQ" in guarded and "SocketConnect" in guarded
    for name in guarded:
        assert name not in SYMBOL.findall(code)  # never a symbol an old kernel would create
    called = {s.removeprefix("System`") for s in strings if s.startswith("System`Socket")}
    assert called <= set(guarded)  # every one called through Symbol is checked first
    assert "socketsQ[]" in code


def test_the_scanner_sees_what_it_must() -> None:
    """The check above can fail: a newer function in code is found, one in a string is not."""
    sample = 'f[x_] := StringRiffle[{x}, " "] (* StringContainsQ *); g = "AssociationQ"'
    assert system_symbols(sample) == {"StringRiffle"}
    assert FIRST_VERSION["StringRiffle"][0] > OLDEST
