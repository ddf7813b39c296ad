"""``relay``: a thin command line that parses and delegates.

``relay launch`` is routed to ``relay.shim`` before anything else is imported, so a launch
costs a bare Python start plus the standard library (no asyncssh, no pydantic). ``relay status``
is standard library only too.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["launch"]:
        from relay import shim  # noqa: PLC0415

        return shim.main(args[1:])
    return _main(args)


def _parser() -> Any:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="relay",
        description=("Remote Mathematica kernels over one persistent SSH connection per host."),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("launch", help="launch a kernel (what the front end runs); see relay launch -h")
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument(
        "--config", help="config file (default: $RELAY_CONFIG or ~/.config/relay/relay.toml)"
    )
    serve.add_argument(
        "--socket",
        help="control socket (default: $RELAY_SOCKET, the config "
        "file's [daemon] socket, or $XDG_RUNTIME_DIR/relay/relay.sock)",
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
    status = sub.add_parser("status", help="show hosts, kernels and forwards")
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
    wolfram = sub.add_parser("wolfram", help="install the RelayTools` package")
    wolfram_sub = wolfram.add_subparsers(dest="action", required=True)
    wl_install = wolfram_sub.add_parser(
        "install", help="install RelayTools` into $UserBaseDirectory/Applications"
    )
    wl_install.add_argument(
        "--user-base-directory",
        help="$UserBaseDirectory (default: the "
        "system's: ~/.Mathematica, ~/Library/Mathematica, %%APPDATA%%"
        "\\Mathematica)",
    )
    sub.add_parser("version", help="print relay's version")
    return parser


def _main(args: list[str]) -> int:
    ns = _parser().parse_args(args)
    if ns.command == "version":
        from relay import __version__  # noqa: PLC0415

        print(__version__)
        return 0
    if ns.command == "status":
        return _status(ns.json)
    if ns.command == "connect":
        return _connect(ns.host, autostart=not ns.no_autostart)
    if ns.command == "frontend-config":
        return _frontend_config(ns)
    if ns.command == "wolfram":
        return _wolfram_install(ns)
    if ns.command == "service":
        from relay import service  # noqa: PLC0415

        if ns.action == "install":
            status, lines = service.install(print_only=ns.print_only, start=not ns.no_start)
        else:
            status, lines = service.uninstall()
        for line in lines:
            print(line, file=sys.stderr if line.startswith("relay:") else sys.stdout)
        return status
    return _serve(ns)


def _this_relay() -> str:
    """The absolute path of this relay executable: the front end may not share our PATH."""
    import shutil  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    beside = Path(sys.executable).parent / "relay"
    return str(beside) if beside.exists() else shutil.which("relay") or "relay"


def _os_name() -> str:
    return {"darwin": "MacOSX", "win32": "Windows"}.get(sys.platform, "Unix")


def _frontend_config(ns: Any) -> int:
    from relay import frontendconfig as fc  # noqa: PLC0415
    from relay import settings  # noqa: PLC0415
    from relay.errors import RelayError  # noqa: PLC0415

    relay = ns.relay or _this_relay()
    kernel, note = ns.kernel, ""
    if kernel is None:
        try:
            config, _ = settings.load()
            _, host = config.resolve(ns.host)
        except RelayError as exc:
            print(f"relay: {exc.message}", file=sys.stderr)
            return 1
        if host.kernel:
            kernel, note = "", f'  (KERNEL "" uses the host\'s configured {host.kernel})'
        else:
            kernel = fc.default_kernel_path("Unix", 14.1)
            note = "  (the default Linux path; pass --kernel or set 'kernel' for the host)"
    remote = fc.remote_command(kernel or "", relay).replace("\\", "\\\\").replace('"', '\\"')
    print(f"Kernel configuration for {ns.host} (Evaluation > Kernel Configuration Options > Add,")
    print("Advanced Options):")
    print(f"  Arguments to MLOpen: {fc.MLOPEN_ARGUMENTS}")
    print(f"  Launch command:      {fc.launch_command(ns.host, kernel, relay)}{note}")
    print()
    print("Parallel compute kernels:")
    print(f'  $RemoteCommand = "{remote}";')
    print(f'  LaunchKernels[RemoteMachine["{ns.host}", LinkHost -> "127.0.0.1"]]')
    print()
    print("Or, after `relay wolfram install`:")
    print(
        f'  Needs["RelayTools`"]; RelaySetupKernelConfiguration["{ns.host} via relay", "{ns.host}"]'
    )
    print(f'  LaunchKernels[RelayMachine["{ns.host}", 8]]')
    return 0


def _wolfram_install(ns: Any) -> int:
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from relay.frontendconfig import user_base_directory  # noqa: PLC0415
    from relay.wolfram import install_relaytools  # noqa: PLC0415

    base = ns.user_base_directory or user_base_directory(
        _os_name(), str(Path.home()), os.environ.get("APPDATA", "")
    )
    target = install_relaytools(Path(base), _this_relay())
    print(f"installed RelayTools` in {target}")
    print('load it with Needs["RelayTools`"] in the front end\'s kernel')
    return 0


CONNECT_WAIT_S = 120.0  # connect, authenticate, start the supervisor (retries included)


def _connect(host: str, *, autostart: bool) -> int:
    from relay import shim  # noqa: PLC0415

    try:
        answer = shim.request({"op": "connect", "host": host}, CONNECT_WAIT_S, autostart=autostart)
    except shim.ShimError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return exc.status
    if answer.get("event") != "connected":
        print(f"relay: {answer.get('message', 'unexpected answer')}", file=sys.stderr)
        return 1
    rtt = answer.get("rtt_ms")
    print(
        f"relay: {answer['host']} is connected (in {answer['connect_ms']:.0f} ms"
        + (f", round trip {rtt:.1f} ms)" if rtt is not None else ")")
    )
    return 0


def _status(as_json: bool) -> int:
    import json  # noqa: PLC0415

    from relay import client, paths, statusview  # noqa: PLC0415

    try:
        answer = client.request(paths.socket_path(), {"op": "status"})
    except (client.ClientError, OSError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 3
    if answer.get("event") != "status":
        print(f"relay: {answer.get('message', 'unexpected answer')}", file=sys.stderr)
        return 1
    print(
        json.dumps(answer, indent=2) if as_json else statusview.render(answer),
        end="\n" if as_json else "",
    )
    return 0


def _serve(ns: Any) -> int:
    from pathlib import Path  # noqa: PLC0415

    from relay import log, settings  # noqa: PLC0415
    from relay.activation import ReadyPipe  # noqa: PLC0415
    from relay.control import DaemonRunning  # noqa: PLC0415
    from relay.daemon import serve  # noqa: PLC0415
    from relay.errors import RelayError  # noqa: PLC0415

    ready = ReadyPipe(ns.ready_fd)  # an autostarting shim waits on it

    def fail(message: str, word: str = "error") -> int:
        print(f"relay: {message}", file=sys.stderr)
        ready.say(f"error {message}" if word == "error" else "busy")
        return 1 if word == "error" else 0

    try:
        config, source = settings.load(Path(ns.config) if ns.config else None)
    except RelayError as exc:
        return fail(exc.message)
    stream = log.RotatingFile(Path(ns.log_file)) if ns.log_file else None
    log.configure(ns.log_level or config.daemon.log_level, stream=stream)
    path = Path(ns.socket) if ns.socket else settings.socket_path(config)
    try:
        daemon = serve(
            config, path, config_source=str(source), on_ready=lambda _: ready.say("ready")
        )
        _run(daemon, ns.loop)
    except DaemonRunning as exc:
        return fail(exc.message, "busy")
    except RelayError as exc:
        return fail(exc.message)
    finally:
        if stream is not None:
            stream.close()
    return 0


def _run(coro: Any, loop: str = "auto") -> None:
    """Run the daemon on uvloop (faster, and what the e2e tests run on) or, where it is not
    installed or ``--loop asyncio`` asks, on the standard library's loop."""
    import asyncio  # noqa: PLC0415

    if loop != "asyncio":
        try:
            import uvloop  # noqa: PLC0415
        except ImportError:
            if loop == "uvloop":
                coro.close()
                raise SystemExit("relay: --loop uvloop: uvloop is not installed") from None
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
