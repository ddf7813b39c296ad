"""One host's commands: ``relay connect``, ``login``, ``trust``, ``check`` and
``frontend-config``."""

from __future__ import annotations

import sys

from relay.cli.common import daemon_answer, this_relay

TYPE_CHECKING = False  # typing: see relay.cli
if TYPE_CHECKING:
    from typing import Any


__all__ = ["check", "connect", "frontend_config", "login", "trust"]


def frontend_config(ns: Any) -> int:
    from relay import frontendconfig as fc
    from relay import settings
    from relay.errors import RelayError

    relay = ns.relay or this_relay()
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
    import ipaddress

    from relay.ssh import sshconfig

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
    import socket
    import threading

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


CHECK_WAIT_S = 330.0  # nine checks of at most relay.check.STEP_TIMEOUT_S each, and a margin


def check(host: str, kernel: str | None, *, as_json: bool) -> int:
    import json

    from relay import checkview, hostspec
    from relay.lite import client, paths, shim

    message = {"op": "check", "host": host, "kernel": kernel, **shim.agent_field()}
    try:
        client.request(paths.socket_path(), {"op": "ping"}, 2.0)
    except client.NotAnswering as exc:  # a daemon of its own would check another connection
        from relay.lite import locks

        print(f"relay: {locks.unanswered(exc.path, exc.timeout_s)}", file=sys.stderr)
        return 3
    except (client.ClientError, OSError):
        answer: dict[str, Any] | int = _check_standalone(host, kernel)
    else:
        answer = daemon_answer(message, "checked", timeout_s=CHECK_WAIT_S)
    if isinstance(answer, int):
        return answer
    results = [checkview.Result(**r) for r in answer["results"]]
    said = hostspec.shown(host)  # a password in it is refused by step 1, and not repeated
    if as_json:
        print(json.dumps({"host": said, "ok": not checkview.verdict(results), **answer}, indent=2))
    else:
        print(checkview.render(said, results), end="")
    return checkview.verdict(results)


def _check_standalone(host: str, kernel: str | None) -> dict[str, Any] | int:
    """No daemon is running: the checks run in one of their own, closed afterwards."""

    import uvloop

    from relay import check, hostspec, log, settings
    from relay.daemon import Daemon
    from relay.errors import RelayError

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
            return {"event": "checked", "host": hostspec.shown(host), "results": results}
        finally:
            await daemon.aclose(grace_s=2.0)

    return uvloop.run(run())


CONNECT_WAIT_S = 120.0  # connect, authenticate, start the supervisor (retries included)


def connect(host: str, *, autostart: bool, kernels: int = 0, kernel: str = "") -> int:
    from relay.lite import shim

    asked = {"op": "connect", "host": host, "kernels": kernels, "kernel": kernel}
    answer = daemon_answer(
        {**asked, **shim.agent_field()},
        "connected",
        start=autostart,
        timeout_s=CONNECT_WAIT_S,
        no_daemon="start it with `relay serve` (or drop --no-autostart)",
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
        from relay.errors import host_header

        print(
            f"relay: kernel executable {found['path']!r} not found or not executable on "
            f"{answer['host']}: pass the right one with --kernel, or set 'kernel' in "
            + host_header(answer["host"]),
            file=sys.stderr,
        )
        return 1
    return 0


LOGIN_ROUNDS = 20  # prompts a server may send in one login, at most
LOGIN_WAIT_S = 660.0  # the daemon gives a person 600 s to answer


def login(host: str) -> int:
    """``relay login HOST``: the server's prompts, as ssh shows them, answered here."""
    import getpass
    import socket

    from relay.lite import framing, paths, shim

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


def trust(host: str, *, assume_yes: bool) -> int:
    from pathlib import Path

    import asyncssh

    from relay.lite import shim
    from relay.ssh import hostkeys

    answer = daemon_answer(
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
            f"host was reinstalled; if the change is expected, run "
            f"`{hostkeys.remove_command(entry, answer['file'])}` and then `relay trust {host}` "
            f"again",
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
