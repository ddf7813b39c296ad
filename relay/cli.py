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
    serve.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
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
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from relay import log, settings  # noqa: PLC0415
    from relay.daemon import DaemonRunning, serve  # noqa: PLC0415
    from relay.errors import RelayError  # noqa: PLC0415

    ready_fd: int | None = ns.ready_fd

    def fail(message: str, word: str = "error") -> int:
        print(f"relay: {message}", file=sys.stderr)
        if ready_fd is not None:
            os.write(ready_fd, f"{word} {message}\n".encode() if word == "error" else b"busy\n")
        return 1 if word == "error" else 0

    try:
        config, source = settings.load(Path(ns.config) if ns.config else None)
    except RelayError as exc:
        return fail(exc.message)
    stream = log.RotatingFile(Path(ns.log_file)) if ns.log_file else None
    log.configure(ns.log_level or config.daemon.log_level, stream=stream)
    path = Path(ns.socket) if ns.socket else settings.socket_path(config)
    try:
        _run(serve(config, path, config_source=str(source), ready_fd=ready_fd))
    except DaemonRunning as exc:
        return fail(exc.message, "busy")
    except RelayError as exc:
        return fail(exc.message)
    finally:
        if stream is not None:
            stream.close()
    return 0


def _run(coro: Any) -> None:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover (Windows)
        import asyncio  # noqa: PLC0415

        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
