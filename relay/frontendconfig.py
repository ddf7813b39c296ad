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
    "link_name",
    "remote_command",
    "user_base_directory",
]

MLOPEN_ARGUMENTS = (
    "-LinkMode Listen -LinkProtocol TCPIP -LinkOptions MLDontInteract -LinkHost 127.0.0.1"
)


def _q(word: str) -> str:
    return '"' + word.replace('"', '\\"') + '"'


def launch_command(host: str, kernel: str, relay: str = "relay") -> str:
    """The Launch command (``LoginScript``): Tunnel's argument order, HOST KERNEL LINKNAME."""
    return f'{_q(relay)} launch {_q(host)} {_q(kernel)} "`linkname`"'


def remote_command(kernel: str, relay: str = "relay", operating_system: str = "Unix") -> str:
    """``$RemoteCommand`` for ``RemoteMachine[host, ...]``: slot `1` is the host, `2` the link.
    On Windows, ``Run`` hands the line to cmd.exe, which strips one outer pair of quotes."""
    command = f'{_q(relay)} launch --compute "`1`" {_q(kernel)} "`2`"'
    return f'"{command}"' if operating_system == "Windows" else command


def default_kernel_path(operating_system: str, version: float) -> str:
    """Where the kernel lives by default (docs/topology.md §2)."""
    v = f"{version:.1f}"
    if operating_system == "MacOSX":
        return "/Applications/Mathematica.app/Contents/MacOS/WolframKernel"
    if operating_system == "Windows":
        return str(
            PureWindowsPath("C:/Program Files/Wolfram Research/Mathematica", v, "WolframKernel.exe")
        )
    return str(PurePosixPath("/usr/local/Wolfram/Mathematica", v, "Executables", "WolframKernel"))


def link_name(data: tuple[int, str], message: tuple[int, str]) -> str:
    return f"{data[0]}@{data[1]},{message[0]}@{message[1]}"


def user_base_directory(operating_system: str, home: str, appdata: str = "") -> str:
    """``$UserBaseDirectory``'s default on each system."""
    if operating_system == "MacOSX":
        return str(PurePosixPath(home, "Library", "Mathematica"))
    if operating_system == "Windows":
        return str(
            PureWindowsPath(appdata or PureWindowsPath(home, "AppData", "Roaming"), "Mathematica")
        )
    return str(PurePosixPath(home, ".Mathematica"))
