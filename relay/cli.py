"""``relay``: a thin command line that parses and delegates.

``relay launch`` is routed to ``relay.shim`` before anything else is imported, so a launch
costs a bare Python start plus the standard library (no asyncssh, no pydantic).
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["launch"]:
        from relay import shim  # noqa: PLC0415

        return shim.main(args[1:])
    return _main(args)


def _main(args: list[str]) -> int:
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
    serve.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    sub.add_parser("version", help="print relay's version")
    ns = parser.parse_args(args)
    if ns.command == "version":
        from relay import __version__  # noqa: PLC0415

        print(__version__)
        return 0
    if ns.command == "serve":
        return _serve(ns)
    parser.error(f"unknown command {ns.command}")
    return 2  # pragma: no cover


def _serve(ns: object) -> int:
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from relay import log, settings  # noqa: PLC0415
    from relay.daemon import DaemonRunning, serve  # noqa: PLC0415
    from relay.errors import RelayError  # noqa: PLC0415

    ready_fd: int | None = getattr(ns, "ready_fd", None)

    def fail(message: str, word: str = "error") -> int:
        print(f"relay: {message}", file=sys.stderr)
        if ready_fd is not None:
            os.write(ready_fd, f"{word} {message}\n".encode() if word == "error" else b"busy\n")
        return 1 if word == "error" else 0

    try:
        config_arg = getattr(ns, "config", None)
        config, source = settings.load(Path(config_arg) if config_arg else None)
    except RelayError as exc:
        return fail(exc.message)
    log.configure(getattr(ns, "log_level", None) or config.daemon.log_level)
    socket_arg = getattr(ns, "socket", None)
    path = Path(socket_arg) if socket_arg else settings.socket_path(config)
    try:
        _run(serve(config, path, config_source=str(source), ready_fd=ready_fd))
    except DaemonRunning as exc:
        return fail(exc.message, "busy")
    except RelayError as exc:
        return fail(exc.message)
    return 0


def _run(coro: object) -> None:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover (Windows)
        import asyncio  # noqa: PLC0415

        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
