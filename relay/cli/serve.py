"""The daemon's life: ``relay serve``, ``stop``, ``restart``, ``reload`` and ``status``."""

from __future__ import annotations

import sys

from relay.cli.common import daemon_answer

TYPE_CHECKING = False  # typing: see relay.cli
if TYPE_CHECKING:
    from typing import Any


__all__ = ["reload", "serve", "status", "stop"]


def status(as_json: bool) -> int:
    import json

    from relay import statusview

    answer = daemon_answer({"op": "status"}, "status")
    if isinstance(answer, int):
        from relay.lite import locks, paths

        path = paths.socket_path()
        if as_json and answer == 3:  # a script reading stdout learns it too
            lock = locks.daemon_lock_path(path)
            # one that holds its lock is there, stopped, starting or stopping: not no daemon
            there = (
                None
                if locks.wait_free(lock, 0)
                else {"pid": locks.holder(lock), "answering": False}
            )
            print(json.dumps({"daemon": there, "socket": str(path)}, indent=2))
        return answer
    print(
        json.dumps(answer, indent=2) if as_json else statusview.render(answer),
        end="\n" if as_json else "",
    )
    return 0


STOP_WAIT_S = 90.0  # the daemon's own shutdown grace is shorter (relay.daemon)


def stop(*, restart: bool) -> int:
    from relay.lite import client, locks, paths, shim

    path = paths.socket_path()
    try:
        # "restart" only where it is said: a daemon from before it refuses the field
        answer = client.request(path, {"op": "stop", **({"restart": True} if restart else {})})
        if answer.get("code") == "bad_request" and restart:  # a daemon from before "restart"
            answer = client.request(path, {"op": "stop"})
    except client.NotAnswering as exc:  # there, stopped or stuck: it stops when it reads it
        print(
            f"relay: {locks.unanswered(exc.path, exc.timeout_s)}; the stop was asked for, and "
            f"it stops once it reads the request",
            file=sys.stderr,
        )
        return 1
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
        for note in answer.get("left") or []:  # kernels whose host's connection is down
            print(f"relay: {note}", file=sys.stderr)
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


def reload() -> int:
    answer = daemon_answer({"op": "reload"}, "reloaded")
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
    for note in answer.get("notes") or []:  # a new resume_window_s that waits
        print(f"relay: {note}")
    return 0


def serve(ns: Any, *, from_command_line: bool = False) -> int:
    """``relay serve``. Started from a command line, it first starts itself again on a lean
    interpreter (``relay.lean``), before it imports what the daemon runs on."""
    not_lean = None
    if from_command_line:
        from relay import lean

        not_lean = lean.reexec()  # returns only where it does not

    from pathlib import Path

    import structlog

    from relay import fdlimit, log, settings
    from relay.activation import ReadyPipe
    from relay.control import DaemonRunning
    from relay.daemon import serve as serve_daemon
    from relay.errors import RelayError
    from relay.lite import locks
    from relay.lite.client import UnsafeSocket

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
    if not_lean is not None:
        structlog.get_logger("relay.lean").info("not lean", why=not_lean)
    if (raised := fdlimit.raise_soft_limit()) is not None:  # two sockets or more a kernel
        structlog.get_logger("relay.daemon").debug(
            "open files", soft_limit=raised[1], was=raised[0]
        )
    path = Path(ns.socket) if ns.socket else settings.socket_path(config)
    # A daemon holds the start lock until it listens (relay.lite.locks), so that a shim never starts
    # a second one beside it; an autostarted one's shim holds it for it.
    try:
        starting = locks.StartLock(str(path)) if ns.ready_fd is None else None
    except UnsafeSocket as exc:  # another user's directory: never lock or wait in it
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot create the start lock {locks.start_lock_path(str(path))}: {exc}")
    if starting is not None and not starting.acquire(timeout_s=0):
        log.say_on_stderr(f"a relay daemon is being started on {path}; waiting for it")
        starting.acquire()  # its starter waits a bounded time for it (relay.lite.shim)

    def on_ready(_: object) -> None:
        ready.say("ready")
        if starting is not None:
            starting.release()

    try:
        _run(serve_daemon(config, path, config_source=str(source), on_ready=on_ready), ns.loop)
    except DaemonRunning as exc:
        return fail(exc.message, "busy")
    except RelayError as exc:
        return fail(exc.message)
    finally:
        if starting is not None:
            starting.release()
        log.drain()  # lines a slow reader of stderr has not taken yet
        if stream is not None:
            stream.close()
    return 0


def _run(coro: Any, loop: str = "auto") -> None:
    """Run the daemon on uvloop (faster, and what the e2e tests run on) or, where it is not
    installed or ``--loop asyncio`` asks, on the standard library's loop."""
    import asyncio

    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                coro.close()
                raise SystemExit("relay: --loop uvloop: uvloop is not installed") from None
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)
