"""What to paste into the front end: kernel configuration and ``$RemoteCommand``. Pure.

``RelayTools`` (relay/wolfram/RelayTools/RelayTools.wl) builds the same strings in the Wolfram
Language; a test evaluates both under Mathics3 and compares them. The configuration keys are
the front end's own (``EvaluatorNames``): the Launch command is ``LoginScript``.
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

__all__ = [
    "MLOPEN_ARGUMENTS",
    "default_kernel_path",
    "launch_command",
    "remote_command",
    "user_base_directories",
    "wl_string",
]

MLOPEN_ARGUMENTS = (
    "-LinkMode Listen -LinkProtocol TCPIP -LinkOptions MLDontInteract -LinkHost 127.0.0.1"
)


def _q(word: str) -> str:
    return '"' + word.replace('"', '\\"') + '"'


def launch_command(host: str, kernel: str, relay: str = "relay") -> str:
    """The Launch command (``LoginScript``): Tunnel's argument order, HOST KERNEL LINKNAME."""
    return f'{_q(relay)} launch {_q(host)} {_q(kernel)} "`linkname`"'


def remote_command(kernel: str, relay: str = "relay") -> str:
    """``$RemoteCommand`` for ``RemoteMachine[host, ...]``: slot `1` is the host, `2` the link.
    (No Windows form: the front end's side runs on macOS and Linux only.)"""
    return f'{_q(relay)} launch --compute "`1`" {_q(kernel)} "`2`"'


def default_kernel_path(operating_system: str, version: float) -> str:
    """Where a default install puts the kernel on a host running ``operating_system``
    ("Unix" or "MacOSX"; docs/topology.md §2, §6: from 14.1 the product is Wolfram)."""
    product = "Wolfram" if round(version * 10) >= 141 else "Mathematica"
    if operating_system == "MacOSX":
        return f"/Applications/{product}.app/Contents/MacOS/WolframKernel"
    v = f"{version:.1f}"
    return str(PurePosixPath("/usr/local/Wolfram", product, v, "Executables", "WolframKernel"))


def user_base_directories(operating_system: str, home: str, appdata: str = "") -> list[str]:
    """Where ``$UserBaseDirectory`` is by default, newest first: from 14.1 ``Wolfram``, up to
    14.0 ``Mathematica`` (docs/topology.md §6). People with several versions have both."""
    if operating_system == "MacOSX":
        return [str(PurePosixPath(home, "Library", name)) for name in ("Wolfram", "Mathematica")]
    if operating_system == "Windows":
        roaming = appdata or str(PureWindowsPath(home, "AppData", "Roaming"))
        return [str(PureWindowsPath(roaming, name)) for name in ("Wolfram", "Mathematica")]
    return [str(PurePosixPath(home, name)) for name in (".Wolfram", ".Mathematica")]


def wl_string(text: str) -> str:
    """A Wolfram Language string literal for ``text``: ``\\`` and ``\"`` escaped, anything
    outside printable ASCII as ``\\:XXXX`` (or ``\\|XXXXXX`` beyond 16 bits), the language's own
    escapes, so a file of it reads back the same whatever encoding the kernel assumes."""
    out = []
    for c in text:
        code = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif 32 <= code < 127:
            out.append(c)
        elif code <= 0xFFFF:
            out.append(f"\\:{code:04x}")
        else:
            out.append(f"\\|{code:06x}")
    return '"' + "".join(out) + '"'
