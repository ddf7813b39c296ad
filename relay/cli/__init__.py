"""``relay``: a thin command line that parses and delegates, one module per command group.

- ``relay.cli.serve``: the daemon's life (serve, stop, restart, reload, status);
- ``relay.cli.hosts``: one host (connect, login, trust, check, frontend-config);
- ``relay.cli.service``: the systemd/launchd user service (service install|uninstall);
- ``relay.cli.wolfram``: the RelayTools` package (wolfram install|uninstall);
- ``relay.cli.common``: one request to the daemon and its answer, this relay's own path.

``relay launch`` is routed to ``relay.lite.shim`` before anything else is imported, so a launch
costs a bare Python start plus the standard library (no asyncssh, no pydantic); ``relay status``
is standard library only too. So this package imports the standard library alone at module
level, and a command imports what it needs (asyncssh, the daemon, argparse itself) inside its
function, when it runs: those local imports are deliberate, which is why ruff's PLC0415 is off
for ``relay/cli/`` (pyproject.toml) rather than marked on each line.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing alone costs a launch 5 ms (see relay.lite.shim)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["launch"]:
        from relay.lite import shim

        return shim.main(args[1:])
    return _main(args, from_command_line=argv is None)


def quiet_dependency_warnings() -> None:
    """Warnings about the code of relay's dependencies, which no user can act on, kept off
    every command's stderr: asyncssh (2.24) names cryptography's DSA classes as it is
    imported, and cryptography 51 deprecates them with a warning on each access. relay
    neither makes nor accepts DSA keys unless a user's own key or host is DSA (OpenSSH turned
    ssh-dss off in 7.0), and that still works. The test suite ignores the same warning
    (pyproject.toml), where any other is an error."""
    import warnings  # already loaded by the interpreter: free

    warnings.filterwarnings("ignore", message="DSA is deprecated", module="asyncssh")


def _parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="relay",
        description=("Remote Mathematica kernels over one persistent SSH connection per host."),
    )
    from relay import __version__

    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("launch", help="launch a kernel (what the front end runs); see relay launch -h")
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument(
        "--config",
        help="config file (default: $RELAY_CONFIG, else $XDG_CONFIG_HOME/relay/relay.toml, "
        "else ~/.config/relay/relay.toml)",
    )
    serve.add_argument(
        "--socket",
        help="control socket (default: $RELAY_SOCKET, the config file's [daemon] socket, "
        "$XDG_RUNTIME_DIR/relay/relay.sock, on macOS ~/Library/Application Support/relay/"
        "relay.sock, else /tmp/relay-$UID/relay.sock)",
    )
    serve.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-file",
        help="log here (rotated at 10 MB, 5 kept) instead of stderr, for those without journald",
    )
    serve.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "uvloop", "asyncio"],
        help="event loop: uvloop where installed (auto, the default), or the standard one",
    )
    serve.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    connect = sub.add_parser(
        "connect",
        help="open a host's connection ahead of launches (the first kernel then starts warm)",
    )
    connect.add_argument("host", help="a [hosts] name from relay.toml or [user@]host[:port]")
    connect.add_argument(
        "--no-autostart", action="store_true", help="fail instead of starting a daemon"
    )
    connect.add_argument(
        "--kernels",
        type=int,
        default=0,
        metavar="N",
        help="N compute kernels follow (RelayMachine[host, N] says so): their forwards are "
        "asked for now and their kernel looked for; a Slurm host is asked for room for N, "
        "in one job",
    )
    connect.add_argument(
        "--kernel",
        default="",
        metavar="PATH",
        help="with --kernels: the kernel they run (default: the host's 'kernel')",
    )
    status = sub.add_parser(
        "status",
        help="show hosts, kernels and forwards, and whether each host's kernels outlive an "
        "outage (RESUME: on, resuming and the time left, off and why)",
    )
    status.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    service = sub.add_parser("service", help="install relay as a systemd/launchd user service")
    service_sub = service.add_subparsers(dest="action", required=True)
    install = service_sub.add_parser("install", help="write and enable the service files")
    install.add_argument(
        "--print",
        action="store_true",
        dest="print_only",
        help="print the files instead of writing them",
    )
    install.add_argument(
        "--no-start", action="store_true", help="write the files but do not enable or start them"
    )
    service_sub.add_parser("uninstall", help="stop, disable and remove the service files")
    fe = sub.add_parser(
        "frontend-config",
        help="print the front end's kernel configuration and $RemoteCommand for a host",
    )
    fe.add_argument("host", help="a [hosts] name from relay.toml or [user@]host[:port]")
    fe.add_argument(
        "--kernel",
        help="remote kernel path (default: the host's configured "
        "'kernel', else the default Linux path)",
    )
    fe.add_argument("--relay", help="the relay command the front end runs (default: this one)")
    wolfram = sub.add_parser("wolfram", help="install or remove the RelayTools` package")
    wolfram_sub = wolfram.add_subparsers(dest="action", required=True)
    for action, text in (
        ("install", "install RelayTools` into each $UserBaseDirectory/Applications found"),
        ("uninstall", "remove RelayTools` from each $UserBaseDirectory/Applications found"),
    ):
        wl_action = wolfram_sub.add_parser(action, help=text)
        wl_action.add_argument(
            "--user-base-directory",
            help="this $UserBaseDirectory only (default: each that exists of "
            "~/.Wolfram and ~/.Mathematica, ~/Library/Wolfram and ~/Library/Mathematica)",
        )
    sub.add_parser("version", help="print relay's version")
    sub.add_parser(
        "stop",
        help="stop the daemon gracefully: its kernels are ended, as SIGTERM; a host's in an "
        "outage end when its resume_window_s runs out, or when relay next reaches it",
    )
    sub.add_parser(
        "restart",
        help="stop the daemon gracefully (as stop, kernels ended) and start a new one",
    )
    sub.add_parser(
        "reload", help="read relay.toml again (also done when it changes, and on SIGHUP)"
    )
    trust = sub.add_parser(
        "trust",
        help="show the host key a host offers and record it in known_hosts on confirmation",
    )
    trust.add_argument("host", help="a [hosts] name from relay.toml or [user@]host[:port]")
    trust.add_argument("--yes", action="store_true", help="record it without asking")
    login = sub.add_parser(
        "login",
        help="open a host's connection answering its password and one-time-code prompts here "
        "(2FA hosts); later launches use it",
    )
    login.add_argument("host", help="a [hosts] name from relay.toml or [user@]host[:port]")
    check = sub.add_parser(
        "check",
        help="check every point where a launch on HOST can fail, in order, with what to do "
        "(through the running daemon's connection when there is one)",
    )
    check.add_argument("host", help="a [hosts] name from relay.toml or [user@]host[:port]")
    check.add_argument("--kernel", help="the kernel path to check (default: the host's 'kernel')")
    check.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def _main(args: list[str], *, from_command_line: bool = False) -> int:
    quiet_dependency_warnings()
    ns = _parser().parse_args(args)
    if ns.command == "version":
        from relay import __version__

        print(__version__)
        return 0
    if ns.command in ("serve", "stop", "restart", "reload", "status"):
        from relay.cli import serve

        if ns.command == "status":
            return serve.status(ns.json)
        if ns.command in ("stop", "restart"):
            return serve.stop(restart=ns.command == "restart")
        if ns.command == "reload":
            return serve.reload()
        return serve.serve(ns, from_command_line=from_command_line)
    if ns.command == "service":
        from relay.cli import service

        return service.run(ns)
    if ns.command == "wolfram":
        from relay.cli import wolfram

        return wolfram.run(ns)
    from relay.cli import hosts

    if ns.command == "trust":
        return hosts.trust(ns.host, assume_yes=ns.yes)
    if ns.command == "login":
        return hosts.login(ns.host)
    if ns.command == "check":
        return hosts.check(ns.host, ns.kernel, as_json=ns.json)
    if ns.command == "connect":
        return hosts.connect(
            ns.host, autostart=not ns.no_autostart, kernels=ns.kernels, kernel=ns.kernel
        )
    return hosts.frontend_config(ns)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
