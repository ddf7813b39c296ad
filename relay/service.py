"""``relay service install|uninstall``: relay as a systemd or launchd user service.

systemd (Linux): ``relay.socket`` listens on ``%t/relay/relay.sock`` (``$XDG_RUNTIME_DIR``,
the default socket path, mode 0600 in a 0700 directory) and starts ``relay.service``
(``Type=notify``) on the first launch; the daemon takes the socket over (``relay.activation``).
launchd (macOS): a user agent with a ``Sockets`` entry ``Listeners`` at the default socket path.

The files are rendered here from one source; ``deploy/`` holds copies rendered for a
``~/.local/bin/relay`` (systemd) and ``/usr/local/bin/relay`` (launchd) install, and a test
keeps them equal to what this module renders.
"""

from __future__ import annotations

import contextlib
import os
import plistlib
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from relay.errors import LocalFileError, cannot_write
from relay.lite.paths import default_socket_path, socket_path

__all__ = ["install", "launchd_plist", "systemd_units", "uninstall"]

LAUNCHD_LABEL = "relay.daemon"

_SOCKET_UNIT = """\
[Unit]
Description=relay control socket (remote Mathematica kernels over SSH)
Documentation=man:systemd.socket(5)

[Socket]
ListenStream={socket}
SocketMode=0600
DirectoryMode=0700

[Install]
WantedBy=sockets.target
"""

_SERVICE_UNIT = """\
[Unit]
Description=relay: remote Mathematica kernels over persistent SSH connections
Requires=relay.socket
After=relay.socket network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={command} serve
ExecReload=/bin/kill -HUP $MAINPID
# The agent of the session that started the manager (desktop sessions import it; else run
# `systemctl --user import-environment SSH_AUTH_SOCK`). Every launch also brings its own.
PassEnvironment=SSH_AUTH_SOCK
Restart=on-failure
RestartSec=2
# On SIGTERM relay refuses new launches, terminates the kernels it owns (SIGTERM, then
# SIGKILL after each host's terminate_grace_s), closes its connections and exits, all within
# its own 20 s bound; a second SIGTERM exits at once.
TimeoutStopSec=30
KillMode=mixed

[Install]
WantedBy=default.target
Also=relay.socket
"""


DEFAULT_LISTEN = "%t/relay/relay.sock"  # $XDG_RUNTIME_DIR's: relay.lite.paths' default


def systemd_units(command: Sequence[str], socket: str = DEFAULT_LISTEN) -> dict[str, str]:
    """``socket``: where relay.socket listens (a unit file's specifiers, as ``%t``, taken)."""
    exec_start = " ".join(word if word.startswith("%h/") else shlex.quote(word) for word in command)
    return {
        "relay.socket": _SOCKET_UNIT.format(socket=socket),
        "relay.service": _SERVICE_UNIT.format(command=exec_start),
    }


def configured_socket(env: Mapping[str, str]) -> Path | None:
    """The socket relay's shims look for, where RELAY_SOCKET or relay.toml's [daemon] socket
    moves it from the default: the service must listen there, or each shim would start a
    daemon of its own beside it. None at the default."""
    chosen = socket_path(env)
    return None if chosen == default_socket_path(env) else Path(chosen)


def launchd_plist(command: Sequence[str], socket_path: Path, log_path: Path) -> bytes:
    return plistlib.dumps(
        {
            "Label": LAUNCHD_LABEL,
            "ProgramArguments": [*command, "serve"],
            "Sockets": {"Listeners": {"SockPathName": str(socket_path), "SockPathMode": 0o600}},
            "StandardErrorPath": str(log_path),
            "ProcessType": "Background",
        }
    )


def default_command() -> list[str]:
    """How this relay is started: its own ``relay`` script beside the interpreter it runs
    under (a venv or pipx install keeps working), else that interpreter isolated as the
    shim's autostart runs it. Never ``python -m relay``: a user service starts in ``$HOME``,
    and ``-m`` would import a ``relay`` checkout lying there ahead of the installed one."""
    script = Path(sys.executable).parent / "relay"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    from relay.lite.shim import isolated_command  # noqa: PLC0415 (the rare fallback)

    return isolated_command()


def _systemd_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "systemd" / "user"


def _launchd_paths(env: Mapping[str, str]) -> tuple[Path, Path, Path]:
    home = Path(env.get("HOME") or Path.home())
    return (
        home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist",
        Path(default_socket_path({"HOME": str(home)}, "darwin")),
        home / "Library" / "Logs" / "relay.log",
    )


def _run(argv: list[str]) -> str | None:
    """Run a service-manager command; the error line if it failed."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{' '.join(argv)}` failed: {exc}"
    if done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return f"`{' '.join(argv)}` failed: {why[-1] if why else f'exit {done.returncode}'}"
    return None


def _write_whole(files: Mapping[Path, bytes]) -> list[str]:
    """Each file written whole beside its place, then all put in place: a disk that is full
    (or a quota, or a read-only home) leaves the files as they were, and says so in one
    line (``LocalFileError``). ``path.write_bytes`` left an empty ``relay.socket``, which
    systemd reads as a masked unit, and a traceback. A file already as it should be is not
    written again (a second install on a full disk has nothing to write)."""
    parts: dict[Path, Path] = {}
    said = []
    path = next(iter(files))
    try:
        for path, data in files.items():
            with contextlib.suppress(OSError):
                if path.read_bytes() == data:
                    said.append(f"kept {path} (as it should be)")
                    continue
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(f".{path.name}.{os.getpid()}.part")
            parts[path] = part
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        for path, part in parts.items():
            os.replace(part, path)
            said.append(f"wrote {path}")
    except OSError as exc:
        raise cannot_write(str(path), exc) from None
    finally:
        for part in parts.values():
            with contextlib.suppress(OSError):
                part.unlink()
    return said


def install(
    *,
    print_only: bool = False,
    start: bool = True,
    platform: str = sys.platform,
    env: Mapping[str, str] = os.environ,
    command: Sequence[str] | None = None,
) -> tuple[int, list[str]]:
    """Write (and enable) the service files; returns (exit status, lines to print)."""
    command = list(command or default_command())
    said: list[str] = []
    moved = configured_socket(env)
    if moved is not None:
        said.append(
            f"the socket is {moved} (RELAY_SOCKET, or [daemon] socket in relay.toml), not "
            f"the default: the service listens there, and every shim must see the same "
            f"setting, the front end's too"
        )
    if platform == "darwin":
        plist_path, sock, log_path = _launchd_paths(env)
        sock = moved or sock
        files = {plist_path: launchd_plist(command, sock, log_path)}
        enable = [["launchctl", "bootstrap", f"gui/{os.getuid()}", str(plist_path)]]
        dirs = [sock.parent]
    elif platform.startswith("linux"):
        unit_dir = _systemd_dir(env)
        listen = str(moved).replace("%", "%%") if moved is not None else DEFAULT_LISTEN
        units = systemd_units(command, listen)
        files = {unit_dir / name: text.encode() for name, text in units.items()}
        enable = [
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", "relay.socket"],
        ]
        dirs = []
    else:
        return 1, [f"relay: no service support for {platform}; run `relay serve` yourself"]
    if print_only:
        said = [f"# {line}" for line in said]  # the files, as they would be written
        for path, data in files.items():
            said += [f"# {path}", data.decode().rstrip(), ""]
        return 0, said
    try:
        for directory in dirs:
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise cannot_write(str(directory), exc) from None
        said += _write_whole(files)
    except LocalFileError as exc:
        return 1, [*said, f"relay: {exc.message}; the service's files were left as they were"]
    if not start:
        said.append(
            "not started (--no-start); enable it with: "
            + " && ".join(" ".join(argv) for argv in enable)
        )
        return 0, said
    for argv in enable:
        error = _run(argv)
        if error:
            said.append(
                f"relay: {error}; the files are in place, enable them by hand once the "
                f"user service manager runs"
            )
            return 1, said
        said.append(f"ran {' '.join(argv)}")
    said.append("relay will start on the first launch through its socket")
    return 0, said


def uninstall(
    *, platform: str = sys.platform, env: Mapping[str, str] = os.environ
) -> tuple[int, list[str]]:
    said: list[str] = []
    if platform == "darwin":
        plist_path, _, _ = _launchd_paths(env)
        paths = [plist_path]
        stop = [["launchctl", "bootout", f"gui/{os.getuid()}", str(plist_path)]]
    elif platform.startswith("linux"):
        unit_dir = _systemd_dir(env)
        paths = [unit_dir / "relay.socket", unit_dir / "relay.service"]
        stop = [["systemctl", "--user", "disable", "--now", "relay.socket", "relay.service"]]
    else:
        return 1, [f"relay: no service support for {platform}"]
    if not any(p.exists() for p in paths):
        return 0, ["relay's service is not installed; nothing to remove"]
    for argv in stop:
        error = _run(argv)
        said.append(f"ran {' '.join(argv)}" if error is None else f"note: {error}")
    for path in paths:
        if path.exists():
            path.unlink()
            said.append(f"removed {path}")
    if platform.startswith("linux") and _run(["systemctl", "--user", "daemon-reload"]) is None:
        said.append("ran systemctl --user daemon-reload")
    return 0, said


def deploy_examples() -> dict[str, bytes]:
    """The files in ``deploy/``: rendered for a ``pipx``/``pip --user`` install on Linux and a
    ``/usr/local`` install on macOS (user ``USERNAME``). ``make deploy`` rewrites them."""
    units = systemd_units(["%h/.local/bin/relay"])
    plist_path, sock, log_path = _launchd_paths({"HOME": "/Users/USERNAME"})
    return {
        **{name: text.encode() for name, text in units.items()},
        plist_path.name: launchd_plist(["/usr/local/bin/relay"], sock, log_path),
    }


if __name__ == "__main__":  # ``python -m relay.service DIR``: write the deploy/ examples
    target = Path(sys.argv[1])
    for name, data in deploy_examples().items():
        (target / name).write_bytes(data)
        print(f"wrote {target / name}")
