"""``relay``: a thin command line that parses and delegates.

``relay launch`` is routed to ``relay.shim`` before anything else is imported, so a launch
costs a bare Python start plus the standard library (no asyncssh, no pydantic). ``relay status``
is standard library only too.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing alone costs a launch 5 ms (see relay.shim)
if TYPE_CHECKING:
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
    from relay import __version__  # noqa: PLC0415

    parser.add_argument("--version", action="version", version=f"relay {__version__}")
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
    sub.add_parser("stop", help="stop the daemon gracefully (its kernels are ended, as SIGTERM)")
    sub.add_parser("restart", help="stop the daemon gracefully and start a new one")
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


def _main(args: list[str]) -> int:
    ns = _parser().parse_args(args)
    if ns.command == "version":
        from relay import __version__  # noqa: PLC0415

        print(__version__)
        return 0
    if ns.command == "status":
        return _status(ns.json)
    if ns.command in ("stop", "restart"):
        return _stop(restart=ns.command == "restart")
    if ns.command == "reload":
        return _reload()
    if ns.command == "trust":
        return _trust(ns.host, assume_yes=ns.yes)
    if ns.command == "login":
        return _login(ns.host)
    if ns.command == "check":
        return _check(ns.host, ns.kernel, as_json=ns.json)
    if ns.command == "connect":
        return _connect(
            ns.host, autostart=not ns.no_autostart, kernels=ns.kernels, kernel=ns.kernel
        )
    if ns.command == "frontend-config":
        return _frontend_config(ns)
    if ns.command == "wolfram":
        return _wolfram(ns)
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
    try:
        config, _ = settings.load()
        _, host = config.resolve(ns.host)
    except RelayError as exc:
        print(f"relay: {exc.message}", file=sys.stderr)
        return 1
    if warning := _nowhere(ns.host, config, host):
        print(f"relay: warning: {warning}", file=sys.stderr)
    kernel, note = ns.kernel, ""
    if kernel is None:
        if host.kernel:
            kernel, note = "", f'  (KERNEL "" uses the host\'s configured {host.kernel})'
        else:
            kernel = fc.default_kernel_path("Unix", 14.1)
            note = "  (a default Linux install of 14.1; pass --kernel or set 'kernel' for the host)"
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


RESOLVE_WAIT_S = 3.0


def _nowhere(name: str, config: Any, host: Any) -> str | None:
    """Why ``name`` names no host at all (a typo, most likely), or None if it may exist."""
    import ipaddress  # noqa: PLC0415

    from relay.ssh import sshconfig  # noqa: PLC0415

    if name in config.hosts:
        return None
    try:
        view = sshconfig.resolve(
            host.hostname, port=host.port, user=host.user, files=config.daemon.ssh_config
        )
    except ValueError:
        return None  # a broken ssh_config is the launch's error to report
    if view.hostname != host.hostname or view.get("ProxyJump"):
        return None  # an ssh_config alias, or a name only the jump host resolves
    try:
        ipaddress.ip_address(view.hostname.strip("[]"))
        return None
    except ValueError:
        pass
    if _resolves(view.hostname):
        return None
    return (
        f"{name!r} is not a [hosts] entry in relay.toml, no ssh_config Host gives it a "
        f"HostName, and {view.hostname} does not resolve: check the spelling"
    )


def _resolves(hostname: str) -> bool:
    """Whether the name resolves, waiting at most RESOLVE_WAIT_S. Names under ``.invalid`` never
    do (RFC 6761 asks resolver libraries to answer so at once, without a query)."""
    import socket  # noqa: PLC0415
    import threading  # noqa: PLC0415

    if hostname.rstrip(".").lower().endswith(".invalid"):
        return False
    found: list[bool] = []

    def lookup() -> None:
        try:
            found.append(bool(socket.getaddrinfo(hostname, None)))
        except (OSError, UnicodeError):
            found.append(False)

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(RESOLVE_WAIT_S)
    return found[0] if found else True  # a slow resolver is no proof of absence


def _wolfram(ns: Any) -> int:
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from relay.frontendconfig import user_base_directories  # noqa: PLC0415
    from relay.wolfram import install_relaytools, uninstall_relaytools  # noqa: PLC0415

    if ns.user_base_directory:
        bases = [Path(ns.user_base_directory)]
    else:
        candidates = user_base_directories(
            _os_name(), str(Path.home()), os.environ.get("APPDATA", "")
        )
        bases = [Path(c) for c in candidates if Path(c).is_dir()]
        if not bases and ns.action == "install":
            print(
                f"relay: no Wolfram user base directory found (looked for "
                f"{' and '.join(candidates)}); start Mathematica once on this machine, "
                f"or pass --user-base-directory DIR ($UserBaseDirectory in a notebook)",
                file=sys.stderr,
            )
            return 1
    if ns.action == "install":
        relay = _this_relay()
        for base in bases:
            print(f"installed RelayTools` in {install_relaytools(base, relay)}")
        print('load it with Needs["RelayTools`"] in a kernel of the front end')
        return 0
    removed = [target for base in bases if (target := uninstall_relaytools(base))]
    for target in removed:
        print(f"removed {target}")
    if not removed:
        print("RelayTools` is not installed in " + (" or ".join(map(str, bases)) or "any"))
        return 0
    print(
        "kernel configurations it added stay: RelayRemoveKernelConfiguration[All] (before "
        "uninstalling) or Evaluation > Kernel Configuration Options removes them"
    )
    return 0


CHECK_WAIT_S = 330.0  # nine checks of at most relay.check.STEP_TIMEOUT_S each, and a margin


def _check(host: str, kernel: str | None, *, as_json: bool) -> int:
    import json  # noqa: PLC0415

    from relay import checkview, client, paths, shim  # noqa: PLC0415

    message = {"op": "check", "host": host, "kernel": kernel, **shim.agent_field()}
    try:
        client.request(paths.socket_path(), {"op": "ping"}, 2.0)
    except (client.ClientError, OSError):
        answer: dict[str, Any] | int = _check_standalone(host, kernel)
    else:
        answer = _daemon_answer(message, "checked", timeout_s=CHECK_WAIT_S)
    if isinstance(answer, int):
        return answer
    results = [checkview.Result(**r) for r in answer["results"]]
    if as_json:
        print(json.dumps({"host": host, "ok": not checkview.verdict(results), **answer}, indent=2))
    else:
        print(checkview.render(host, results), end="")
    return checkview.verdict(results)


def _check_standalone(host: str, kernel: str | None) -> dict[str, Any] | int:
    """No daemon is running: the checks run in one of their own, closed afterwards."""

    import uvloop  # noqa: PLC0415

    from relay import check, log, settings  # noqa: PLC0415
    from relay.daemon import Daemon  # noqa: PLC0415
    from relay.errors import RelayError  # noqa: PLC0415

    log.configure("error", stream=sys.stderr)  # the report is the output; stdout stays clean
    try:
        config, source = settings.load()
    except RelayError as exc:
        print(f"relay: {exc.message}", file=sys.stderr)
        return 1

    async def run() -> dict[str, Any]:
        daemon = Daemon(config, str(source))
        try:
            results = await check.run(daemon, host, kernel, running=False)
            return {"event": "checked", "host": host, "results": results}
        finally:
            await daemon.aclose(grace_s=2.0)

    return uvloop.run(run())


CONNECT_WAIT_S = 120.0  # connect, authenticate, start the supervisor (retries included)


def _connect(host: str, *, autostart: bool, kernels: int = 0, kernel: str = "") -> int:
    from relay import shim  # noqa: PLC0415

    asked = {"op": "connect", "host": host, "kernels": kernels, "kernel": kernel}
    answer = _daemon_answer(
        {**asked, **shim.agent_field()},
        "connected",
        start=autostart,
        timeout_s=CONNECT_WAIT_S,
    )
    if isinstance(answer, int):
        return answer
    rtt = answer.get("rtt_ms")
    print(
        f"relay: {answer['host']} is connected (in {answer['connect_ms']:.0f} ms"
        + (f", round trip {rtt:.1f} ms)" if rtt is not None else ")")
    )
    for job in answer.get("slurm_jobs", []):
        print(
            f"relay: Slurm job {job['job_id']} for {job['kernels_asked']} kernels: {job['state']}"
        )
    found = answer.get("kernel")
    if found is not None and not found["found"]:
        from relay.errors import host_header  # noqa: PLC0415

        print(
            f"relay: kernel executable {found['path']!r} not found or not executable on "
            f"{answer['host']}: pass the right one with --kernel, or set 'kernel' in "
            + host_header(answer["host"]),
            file=sys.stderr,
        )
        return 1
    return 0


def _daemon_answer(
    message: dict[str, Any], event: str, *, start: bool = False, timeout_s: float = 10.0
) -> dict[str, Any] | int:
    """One request to the daemon (started first if ``start``): its answer, or, having said
    why in one line, the exit status (3: no daemon; 1: it answered with an error)."""
    from relay import client, paths, shim  # noqa: PLC0415

    try:
        if start:
            answer = shim.request(message, timeout_s, autostart=True)
        else:
            answer = client.request(paths.socket_path(), message, timeout_s)
    except shim.ShimError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return exc.status
    except (client.ClientError, OSError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 3
    if answer.get("event") != event:
        print(f"relay: {answer.get('message', 'unexpected answer')}", file=sys.stderr)
        return 1
    return answer


def _status(as_json: bool) -> int:
    import json  # noqa: PLC0415

    from relay import statusview  # noqa: PLC0415

    answer = _daemon_answer({"op": "status"}, "status")
    if isinstance(answer, int):
        return answer
    print(
        json.dumps(answer, indent=2) if as_json else statusview.render(answer),
        end="\n" if as_json else "",
    )
    return 0


STOP_WAIT_S = 90.0  # the daemon's own shutdown grace is shorter (relay.daemon)


def _stop(*, restart: bool) -> int:
    from relay import client, locks, paths, shim  # noqa: PLC0415

    path = paths.socket_path()
    try:
        answer = client.request(path, {"op": "stop", "restart": restart})
        if answer.get("code") == "bad_request" and restart:  # a daemon from before "restart"
            answer = client.request(path, {"op": "stop"})
    except (client.ClientError, OSError):
        print(f"relay: no relay daemon is running on {path}", file=sys.stderr)
        if not restart:
            return 0
    else:
        if answer.get("event") != "stopping":
            print(f"relay: {answer.get('message', 'unexpected answer')}", file=sys.stderr)
            return 1
        pid = int(answer["pid"])
        print(f"relay: stopping the daemon (pid {pid})", file=sys.stderr)
        # Until the daemon lets go of its lock, which it does last, its socket removed (not
        # until the socket stops answering: under socket activation the service manager
        # answers it, and would start a new daemon). A daemon the service manager starts
        # after this one is too late to take the lock first: this wait is already queued.
        if not locks.wait_free(locks.daemon_lock_path(path), STOP_WAIT_S):
            print(f"relay: the daemon did not stop within {STOP_WAIT_S:g} s", file=sys.stderr)
            return 1
    if not restart:
        return 0
    try:
        answer = shim.request({"op": "ping"}, 30.0, autostart=True)
    except shim.ShimError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return exc.status
    print(f"relay: started a new daemon (pid {answer.get('pid')})", file=sys.stderr)
    return 0


def _reload() -> int:
    answer = _daemon_answer({"op": "reload"}, "reloaded")
    if isinstance(answer, int):
        return answer
    path = answer.get("path", "relay.toml")
    if not answer.get("found", True):  # supported: every host is an ad-hoc one or an alias
        files = ", ".join(answer.get("ssh_config") or [])
        print(f"relay: no {path}: running on ssh_config alone ({files})")
    elif answer.get("changed"):
        print(
            f"relay: read {path} again: hosts take their entries now, connection settings "
            f"from each host's next connection"
        )
    else:
        print(f"relay: read {path} again: unchanged since relay last read it")
    return 0


LOGIN_ROUNDS = 20  # prompts a server may send in one login, at most
LOGIN_WAIT_S = 660.0  # the daemon gives a person 600 s to answer


def _login(host: str) -> int:
    """``relay login HOST``: the server's prompts, as ssh shows them, answered here."""
    import getpass  # noqa: PLC0415
    import socket  # noqa: PLC0415

    from relay import framing, paths, shim  # noqa: PLC0415

    try:
        raw = shim.daemon_socket(paths.socket_path(), autostart=True)
    except shim.ShimError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return exc.status
    with socket.socket(fileno=raw.detach()) as sock:  # the full socket: makefile, with
        sock.settimeout(LOGIN_WAIT_S)
        reader = sock.makefile("rb")
        sock.sendall(framing.encode({"op": "login", "host": host, **shim.agent_field()}))
        for _ in range(LOGIN_ROUNDS):
            try:
                line = reader.readline()
                event = framing.decode(line) if line else None
            except (OSError, framing.FramingError) as exc:
                print(f"relay: lost the relay daemon: {exc}", file=sys.stderr)
                return 3
            if event is None:
                print("relay: the relay daemon closed the connection", file=sys.stderr)
                return 3
            if event.get("event") != "prompt":
                break
            for text in (event.get("name"), event.get("instructions")):
                if text:
                    print(text, file=sys.stderr)
            answers = []
            for prompt in event.get("prompts", []):
                try:
                    if prompt.get("echo"):
                        answers.append(input(prompt.get("text", "")))
                    else:
                        answers.append(getpass.getpass(prompt.get("text", "")))
                except (EOFError, KeyboardInterrupt):
                    print("\nrelay: login abandoned", file=sys.stderr)
                    return 1
            sock.sendall(framing.encode({"op": "answers", "answers": answers}))
        else:
            print(f"relay: more than {LOGIN_ROUNDS} prompts; giving up", file=sys.stderr)
            return 1
    if event.get("event") != "connected":
        print(f"relay: {event.get('message', 'unexpected answer')}", file=sys.stderr)
        return 1
    if event.get("already"):
        print(f"relay: {event['host']} is connected already; nothing to ask")
    else:
        print(f"relay: logged in to {event['host']}; launches there use this connection")
    return 0


def _trust(host: str, *, assume_yes: bool) -> int:
    from pathlib import Path  # noqa: PLC0415

    import asyncssh  # noqa: PLC0415

    from relay import shim  # noqa: PLC0415
    from relay.ssh import hostkeys  # noqa: PLC0415

    answer = _daemon_answer(
        {"op": "hostkey", "host": host, **shim.agent_field()}, "hostkey", start=True, timeout_s=60
    )
    if isinstance(answer, int):
        return answer
    entry = hostkeys.entry_name(answer["name"], answer["port"])
    print(f"{host} ({entry}) offers the host key {answer['fingerprint']}")
    if answer["state"] == "known":
        print("it is already recorded in known_hosts; nothing to do")
        return 0
    if answer["state"] == "changed":
        print(
            f"relay: a DIFFERENT key is recorded for {entry}: possible man-in-the-middle, or the "
            f"host was reinstalled; if the change is expected, run `ssh-keygen -R '{entry}'` "
            f"and then `relay trust {host}` again",
            file=sys.stderr,
        )
        return 1
    target = Path(answer["file"])
    if not assume_yes:
        print("Compare it with the fingerprint the host's administrator gives you.")
        try:
            reply = input(f"Record it in {target}? [y/N] ")
        except EOFError:
            reply = ""
        if reply.strip().lower() not in ("y", "yes"):
            print("relay: not recorded", file=sys.stderr)
            return 1
    key = asyncssh.import_public_key(answer["key"])
    try:
        hostkeys.record(target, answer["name"], answer["port"], key)
    except OSError as exc:
        print(f"relay: cannot record the key in {target}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"recorded in {target}")
    return 0


def _serve(ns: Any) -> int:
    from pathlib import Path  # noqa: PLC0415

    from relay import locks, log, settings  # noqa: PLC0415
    from relay.activation import ReadyPipe  # noqa: PLC0415
    from relay.control import DaemonRunning  # noqa: PLC0415
    from relay.daemon import serve  # noqa: PLC0415
    from relay.errors import RelayError  # noqa: PLC0415

    ready = ReadyPipe(ns.ready_fd)  # an autostarting shim waits on it

    def fail(message: str, word: str = "error") -> int:
        ready.say(f"error {message}" if word == "error" else "busy")
        log.say_on_stderr(message)  # best effort: stderr may be a file on a full disk
        return 1 if word == "error" else 0

    try:
        config, source = settings.load(Path(ns.config) if ns.config else None)
    except RelayError as exc:
        return fail(exc.message)
    try:
        stream = log.RotatingFile(Path(ns.log_file)) if ns.log_file else None
    except OSError as exc:
        return fail(f"cannot open the log {ns.log_file}: {exc.strerror or exc}")
    log.configure(ns.log_level or config.daemon.log_level, stream=stream)
    path = Path(ns.socket) if ns.socket else settings.socket_path(config)
    # A daemon holds the start lock until it listens (relay.locks), so that a shim never starts
    # a second one beside it; an autostarted one's shim holds it for it.
    try:
        starting = locks.StartLock(str(path)) if ns.ready_fd is None else None
    except OSError as exc:
        return fail(f"cannot create the start lock {locks.start_lock_path(str(path))}: {exc}")
    if starting is not None and not starting.acquire(timeout_s=0):
        log.say_on_stderr(f"a relay daemon is being started on {path}; waiting for it")
        starting.acquire()  # its starter waits a bounded time for it (relay.shim)

    def on_ready(_: object) -> None:
        ready.say("ready")
        if starting is not None:
            starting.release()

    try:
        daemon = serve(config, path, config_source=str(source), on_ready=on_ready)
        _run(daemon, ns.loop)
    except DaemonRunning as exc:
        return fail(exc.message, "busy")
    except RelayError as exc:
        return fail(exc.message)
    finally:
        if starting is not None:
            starting.release()
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
