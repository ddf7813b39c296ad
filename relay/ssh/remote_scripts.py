"""relay's remote shell scripts as sshd runs them, whatever the account's login shell. Pure
but for ``run``, the thin shell around asyncssh's, and ``session``.

``supervisor.sh`` (one long-lived session per connection: starts and reaps kernels) and
``hookinstall.sh`` (one short session: writes the kernel hook file, or relay's agent's file
and then starts the agent from it), and ``relay check``'s probes. sshd hands a command to
the login shell (``$SHELL -c COMMAND``), and login shells read a command differently: tcsh
substitutes history at a ``!`` even inside single quotes ("0: Event not found" for
``*[!0-9]*``) and refuses a newline there; fish reads ``\\`` in single quotes and has no
``x=$(...)``. So the login shell is given only ``BOOTSTRAP``, which every shell reads alike
(sh, bash, dash, zsh, csh, tcsh, fish: tested with each): it has /bin/sh read one line from
the session's standard input and run it. That line is the script (``Remote.preamble``);
what the script itself reads follows it (the hook's or the agent's bytes, the supervisor's
requests, a probe's input). POSIX ``read`` takes no byte past its line, so nothing of that
is lost, and nothing but /bin/sh is needed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncssh

T = TypeVar("T")

__all__ = [
    "BOOTSTRAP",
    "CUT_CHATTER",
    "HOOK_KEEP_DAYS",
    "Remote",
    "hook_install_command",
    "one_line",
    "remote_command",
    "run",
    "script",
    "session",
]

# Only characters every login shell takes literally inside single quotes (no !, no \\, no
# newline): tests/streams/test_login_shells.py runs it under each.
BOOTSTRAP = "exec /bin/sh -c 'IFS= read -r s && eval \"$s\"' relay"


@dataclass(frozen=True, slots=True)
class Remote:
    """A script to run on a host: ``command`` for sshd, and ``preamble`` to write first on the
    session's standard input (the script's one line)."""

    command: str
    preamble: bytes


HOOK_KEEP_DAYS = 30  # an unused kernel hook version directory is pruned after this long


@cache
def one_line(name: str = "supervisor.sh") -> str:
    text = files("relay.ssh").joinpath(name).read_text()
    lines = (line.strip() for line in text.splitlines())
    return " ".join(line for line in lines if line and not line.startswith("#"))


# What every script prints first: a newline. A login shell may print before the command runs
# (~/.bashrc, which bash reads for ssh's commands too), and not always a whole line: an xterm
# title (printf '\033]0;%s\007' host) or an ``echo -n`` ends with none, and the script's
# first line would be glued to it, where every reader of a script's output looks for its
# marker at a line's start (past the chatter).
CUT_CHATTER = "echo; "


def script(text: str, *args: str) -> Remote:
    """``text`` (one line of POSIX sh; ``$1``.. are ``args``) run by /bin/sh."""
    if "\n" in text:
        raise ValueError("a remote script is one line (end its statements with ;)")
    line = CUT_CHATTER + text + "\n"
    return Remote(" ".join([BOOTSTRAP, *map(_word, args)]), line.encode())


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/-+,@:")


def _word(arg: str) -> str:
    """``arg`` as every login shell reads it back: bare if plain, else in single quotes, which
    sh, csh and fish all take literally but for the characters refused here."""
    if arg and all(c in _PLAIN for c in arg):
        return arg
    if not arg or any(c in "'!\\\n" for c in arg):
        raise ValueError(f"cannot pass {arg!r} to a remote script through every login shell")
    return f"'{arg}'"


async def run(
    conn: asyncssh.SSHClientConnection, remote: Remote, after: str = "", **kwargs: Any
) -> asyncssh.SSHCompletedProcess:
    """``remote`` run to its end on ``conn`` (text; asyncssh's ``run`` with ``kwargs``): its
    preamble, then ``after``, on its standard input."""
    return await session(
        lambda: conn.run(remote.command, input=remote.preamble.decode() + after, **kwargs)
    )


async def session(open_: Callable[[], Awaitable[T]]) -> T:
    """``open_()``, a session's open (and whatever follows it), tried once more at once where
    the server refused the open. A session the server ended (its command exited) is gone
    for asyncssh once the two sides have sent their CLOSE, but sshd frees it for
    ``MaxSessions`` only at its main loop's next turn: a session opened straight after,
    under ``MaxSessions 1`` (a session at a time), read in the same turn as that CLOSE, is
    refused. The refusal itself is a round trip, after which sshd has turned: the second
    try finds the session freed, and a server at its limit refuses it too."""
    import asyncssh  # noqa: PLC0415 (the rest of the module is pure: no asyncssh)

    try:
        return await open_()
    except asyncssh.ChannelOpenError:  # sshd: code 2, "open failed", as for any refusal
        return await open_()


def _command(name: str, *args: str) -> Remote:
    return script(one_line(name), *args)


def remote_command(tag: str, *, end_stale: bool = True, stale_after_s: int = 60) -> Remote:
    """The supervisor, with ``TAG end|keep STALE_S``. A session of the same tag not pinged
    for STALE_S seconds is stale; its requests follow the preamble on standard input."""
    _hex(tag, "supervisor tag")
    mode = "end" if end_stale else "keep"
    return _command("supervisor.sh", tag, mode, str(int(stale_after_s)))


def hook_install_command(
    version: str,
    name: str,
    keep_days: int = HOOK_KEEP_DAYS,
    *,
    size: int,
    spare: Sequence[str] = (),
    agent: tuple[str, float, int] | None = None,
) -> Remote:
    """The hook installer, with ``VERSION NAME KEEP_DAYS SPARE SIZE``; the file's ``size``
    bytes follow the preamble on standard input (no other size is installed). ``spare``: the
    versions of relay's other files, which it never prunes. ``agent``: (TAG, WINDOW_S,
    GENERATION), for relay's agent, which the installer then starts from the file it
    installed (``agent TAG WINDOW_S GENERATION``)."""
    for hexed in (version, *spare):
        _hex(hexed, "hook version")
    if not name or not all(c.isascii() and (c.isalnum() or c == ".") for c in name):
        raise ValueError(f"hook file name must be letters, digits and dots, not {name!r}")
    if size < 0:
        raise ValueError(f"a file's size is not negative: {size}")
    args = [version, name, str(int(keep_days)), ",".join(spare) or "-", str(int(size))]
    if agent is not None:
        tag, window_s, generation = agent
        _hex(tag, "agent tag")
        if generation < 0:
            raise ValueError(f"an agent's generation is not negative: {generation}")
        args += ["agent", tag, str(max(1, round(window_s))), str(int(generation))]
    return script(installer(), *args)


def installer() -> str:
    """hookinstall.sh as it is run: one line, after safedirs.sh's functions."""
    return with_safedirs(one_line("hookinstall.sh"))


def with_safedirs(text: str) -> str:
    """``text`` (one line) after safedirs.sh's functions (``cache_safe``: whether another
    user could swap ~/.cache or a directory above it)."""
    return one_line("safedirs.sh") + " " + text


def _hex(word: str, what: str) -> None:
    """A word the remote scripts take as lowercase hex (and check again: exit 96)."""
    if not word or any(c not in "0123456789abcdef" for c in word):
        raise ValueError(f"{what} must be lowercase hex, not {word!r}")
