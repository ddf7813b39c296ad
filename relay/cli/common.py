"""What the command groups share: one request to the daemon and its answer (or the exit status,
having said why), and this relay's own path."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing: see relay.cli
if TYPE_CHECKING:
    from typing import Any

__all__ = ["daemon_answer", "this_relay"]


def this_relay() -> str:
    """The absolute path of this relay executable: the front end may not share our PATH."""
    import shutil
    from pathlib import Path

    beside = Path(sys.executable).parent / "relay"
    return str(beside) if beside.exists() else shutil.which("relay") or "relay"


def daemon_answer(
    message: dict[str, Any],
    event: str,
    *,
    start: bool = False,
    timeout_s: float = 10.0,
    no_daemon: str | None = None,
) -> dict[str, Any] | int:
    """One request to the daemon (started first if ``start``): its answer, or, having said
    why in one line, the exit status (3: no daemon; 1: it answered with an error).
    ``no_daemon``: what to do when none listens, if not the usual (start one)."""
    from relay.lite import client, paths, shim

    try:
        if start:
            answer = shim.request(message, timeout_s, autostart=True)
        else:
            answer = client.request(paths.socket_path(), message, timeout_s)
    except shim.ShimError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return exc.status
    except client.NotAnswering as exc:
        from relay.lite import locks

        print(f"relay: {locks.unanswered(exc.path, exc.timeout_s)}", file=sys.stderr)
        return 3
    except (client.ClientError, OSError) as exc:
        if no_daemon and isinstance(exc.__cause__, FileNotFoundError | ConnectionRefusedError):
            print(
                f"relay: no relay daemon is listening on {paths.socket_path()}: {no_daemon}",
                file=sys.stderr,
            )
        else:
            print(f"relay: {exc}", file=sys.stderr)
        return 3
    if answer.get("event") != event:
        print(f"relay: {client.error_line(answer, 'unexpected answer')}", file=sys.stderr)
        return 1
    return answer
