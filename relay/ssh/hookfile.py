"""relay's kernel hook file (``RelayKernelInit.wl``) on a kernel's host, and the file of
relay's agent (``agent_file``), which is installed the same way.

Controller kernels load it with ``-initfile``, so it must be on the host before the first
controller starts. It is written by ``hookinstall.sh`` in one exec session of its own, with the
bytes on the session's standard input: no SFTP subsystem needed (many sshd configurations
have none, and Tunnel needed none). The installed path is content-addressed
(``~/.cache/relay/<sha256[:16]>/``) and the installer sends the file back, so what the kernel
will load is proven by its hash, not assumed. ``parse_answer`` is pure; ``install`` is the
thin I/O shell around it; a host's ``Installer`` runs it once per connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import asyncssh
import structlog

from relay.errors import ConnectFailed, HookInstallFailed, RelayError, host_header
from relay.ssh.remote_scripts import hook_install_command, session
from relay.tasks import TaskSet

__all__ = [
    "INIT_FILE",
    "HookFile",
    "Installer",
    "agent_file",
    "install",
    "is_answer",
    "parse_answer",
    "parse_answer_before",
    "spared",
]

INIT_FILE = "RelayKernelInit.wl"
AGENT_FILE = "relayagent.py"
INSTALL_TIMEOUT_S = 30.0
NO_DYNAMIC = "set dynamic = false in {header} to launch without Dynamic support"

# hookinstall.sh's refusals, as what the person on the host should do
_REFUSALS = {
    "nohome": "$HOME is unset or missing there",
    "symlink": "{path} is a symlink, which relay will not write through (remove it)",
    "notdir": "{path} is not a directory (remove it)",
    "notmine": "{path} is not owned by you",
    "writable": "{path} is writable by others (chmod go-w {path})",
    "notfile": "{path} is not a regular file (remove it)",
    "nowrite": "{path} cannot be written (disk full, quota, or a read-only home?)",
    "short": "the upload of {path} was cut short (its connection lost?)",
}


@dataclass(frozen=True)
class HookFile:
    """The hook's content and where it belongs on every host."""

    name: str
    data: bytes
    what: str = "relay's kernel hook"  # for error messages
    advice: str = NO_DYNAMIC  # what the person can do if it cannot be installed ({header})

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def version(self) -> str:
        return self.digest[:16]

    @classmethod
    def packaged(cls) -> HookFile:
        """The kernel hook as shipped, read once (``relay.daemon.serve`` reads it first)."""
        return _packaged_hook()


@cache
def _packaged_hook() -> HookFile:
    return HookFile(INIT_FILE, files("relay.wolfram").joinpath(INIT_FILE).read_bytes())


@cache
def agent_file() -> HookFile:
    """relay's agent's source as it is shipped (read once, when first needed): installed as
    the hook is, and started from where it was installed (relay.agent.start)."""
    return HookFile(
        AGENT_FILE,
        files("relay.agent").joinpath("remote.py").read_bytes(),
        what="relay's agent",
        advice="kernels there end with their connection (set resume_window_s = 0 in {header} "
        "to say so and not try)",
    )


def spared(hook: HookFile) -> list[str]:
    """The versions of relay's other files, which an install of ``hook`` never prunes: a new
    connection installs two at once (the kernel hook beside the agent's start), and neither
    may take the other's directory, unused for a while, for an old release's."""
    return sorted({HookFile.packaged().version, agent_file().version} - {hook.version})


def parse_answer(host: str, hook: HookFile, exit_status: int | None, stdout: bytes) -> str:
    """The installed file's remote path, from ``hookinstall.sh``'s exit status and output;
    ``HookInstallFailed`` with one actionable line otherwise. The path is given to kernels
    (``-initfile``) in UTF-8: one that is not (a HOME named in Latin-1) is refused, where
    it was made one with U+FFFD in it, which no kernel could load, and Dynamic was lost
    without a word (a review's finding)."""
    head, body = _answer(stdout, hook)
    path = _parse(host, hook, exit_status, head, body)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        raise HookInstallFailed(
            f"cannot install {hook.what} on {host}: its path {path} is not UTF-8 (the home "
            "directory's name is in another encoding), and a kernel is told it in UTF-8; "
            + hook.advice.format(header=host_header(host))
        ) from None
    return path


def parse_answer_before(
    host: str, hook: HookFile, exit_status: int | None, stdout: bytes
) -> tuple[str, bytes]:
    """``parse_answer`` for an install that more output follows in the same session (relay's
    agent, started from the file just installed): the path, and what followed the file's
    bytes. The exit status is then the last command's, so the "ok" line is the install's."""
    head, body = _answer(stdout, hook)
    size = len(hook.data)
    installed = head.split(b" ", 1)[0] == b"ok"
    if exit_status is None and len(body) < size:  # cut off with the connection, not damaged
        raise _lost(host, hook)
    return _parse(host, hook, 0 if installed else exit_status, head, body[:size]), body[size:]


def _parse(host: str, hook: HookFile, exit_status: int | None, head: bytes, body: bytes) -> str:
    if exit_status is None:  # neither an exit status nor a signal: cut off with the connection
        raise _lost(host, hook)
    line = head.decode("utf-8", "replace")
    words = line.split(" ", 2)
    why: str
    if exit_status == 0 and words[0] == "ok" and len(words) > 1:
        path = line.removeprefix("ok ")  # the rest of the line: a HOME may have spaces
        if not path.endswith(f"/.cache/relay/{hook.version}/{hook.name}"):
            why = f"the installer reported an unexpected path {path!r}"
        elif hashlib.sha256(body).hexdigest() != hook.digest:
            why = f"{path} does not hold what relay wrote (sha256 differs; disk full?)"
        else:
            return path
    elif words[0] == "refuse" and len(words) == 3 and words[1] in _REFUSALS:
        why = _REFUSALS[words[1]].format(path=words[2])
    elif exit_status in (126, 127):
        why = "/bin/sh could not be run there"
    else:
        why = f"the installer ended with status {exit_status} and said {head[:80]!r}"
    raise HookInstallFailed(
        f"cannot install {hook.what} on {host}: {why}; "
        + hook.advice.format(header=host_header(host))
    )


CHATTER_LINES = 200  # what a login shell may print before the installer's answer, at most


def is_answer(line: bytes, hook: HookFile) -> bool:
    """Whether ``line`` is the installer's answer for ``hook``: ``ok`` and the path it is
    installed at, or ``refuse`` and a reason it gives; not what a login shell printed before
    (a module system's "ok" of its own)."""
    word, _, rest = line.partition(b" ")
    if word == b"ok":
        return rest.endswith(f"/.cache/relay/{hook.version}/{hook.name}".encode())
    return word == b"refuse" and rest.split(b" ", 1)[0].decode("ascii", "replace") in _REFUSALS


def _answer(stdout: bytes, hook: HookFile) -> tuple[bytes, bytes]:
    """The installer's first line and what follows it, past what the login shell printed
    before the command ran (an ``echo`` in ~/.bashrc, which bash reads for ssh's commands
    too): the first line that is its answer (``is_answer``); else the first that begins
    with ``ok`` or ``refuse`` (said as what it is); else the first with something on it."""
    for strict in (True, False):
        rest = stdout
        for _ in range(CHATTER_LINES):
            head, found, body = rest.partition(b"\n")
            if is_answer(head, hook) if strict else head.split(b" ", 1)[0] in (b"ok", b"refuse"):
                return head, body
            if not found:
                break
            rest = body
    head, _, body = stdout.lstrip().partition(b"\n")
    return head, body


def _lost(host: str, hook: HookFile) -> ConnectFailed:
    return ConnectFailed(f"the SSH connection to {host} was lost while relay installed {hook.what}")


async def install(conn: asyncssh.SSHClientConnection, host: str, hook: HookFile) -> str:
    """Write ``hook`` on the connection's host (if it is not there already) and prove it."""
    remote = hook_install_command(hook.version, hook.name, size=len(hook.data), spare=spared(hook))
    try:
        result = await session(
            lambda: conn.run(
                remote.command,
                input=remote.preamble + hook.data,
                encoding=None,
                check=False,
                timeout=INSTALL_TIMEOUT_S,
            )
        )
    except asyncssh.TimeoutError:
        why = f"the installer did not finish within {INSTALL_TIMEOUT_S:.0f} s"
    except asyncssh.ChannelOpenError as exc:
        why = f"the server refused a session for the installer ({exc.reason})"
    except (asyncssh.Error, OSError) as exc:
        if conn.is_closed():  # not the host's doing: the launch that waits says so
            raise _lost(host, hook) from None
        why = f"the installer's session failed ({exc})"
    else:
        stdout = result.stdout if isinstance(result.stdout, bytes) else b""
        return parse_answer(host, hook, result.exit_status, stdout)
    raise HookInstallFailed(
        f"cannot install {hook.what} on {host}: {why}; "
        + hook.advice.format(header=host_header(host))
    )


# A connection's install is done again for a launch this long after it (one exec session a
# day): it touches the version directory, which another relay's installer (another front end
# of the same account, another version) prunes once unused for HOOK_KEEP_DAYS. A connection
# up for longer lost its hook under it, and its later controllers started without it (a
# review's finding).
REINSTALL_AFTER_S = 24 * 3600.0
_clock = time.monotonic


class Installer:
    """The hook file on one host: installed once per connection (single flight: concurrent
    launches wait for the same install; a failure is tried again by the next launch), and
    again a day later (``REINSTALL_AFTER_S``). Its installs run in ``tasks``, the host
    session's."""

    def __init__(self, host: str, tasks: TaskSet) -> None:
        self._host = host
        self._tasks = tasks
        self._hook = HookFile.packaged()
        self._installed: tuple[asyncssh.SSHClientConnection, asyncio.Future[str]] | None = None
        self._installed_at = 0.0
        self._good: tuple[asyncssh.SSHClientConnection, str] | None = None  # its last install
        self._unrefreshed: asyncio.Future[str] | None = None  # a failed install again, said
        self._log = structlog.get_logger("relay.host").bind(host=host)

    def prefetch(
        self, conn: asyncssh.SSHClientConnection, *, quiet: bool = False
    ) -> asyncio.Task[None]:
        """Install ahead, for the launches to come (they report a failure). ``quiet``: a
        failure is not logged as a warning, for a prefetch that another follows (the one
        beside the agent's start, which a server of one session at a time refuses)."""
        return self._tasks.spawn(self._prefetch(conn, quiet), name=f"init:{self._host}")

    async def _prefetch(self, conn: asyncssh.SSHClientConnection, quiet: bool) -> None:
        try:
            await self.path(conn)
        except RelayError as exc:  # a launch that needs it tries again and reports it
            if conn.is_closed():  # the connection's end is the news (a stop, a loss)
                self._log.info("kernel hook not installed: its connection ended first")
            elif quiet:
                self._log.info("kernel hook not installed ahead", error=exc.message)
            else:
                self._log.warning("kernel hook not installed", error=exc.message)

    async def path(self, conn: asyncssh.SSHClientConnection) -> str:
        """The hook file's remote path on ``conn``'s host, installing it if needed. A day's
        install again that fails (a home over quota) leaves the one in place in use, said
        once, and tried again a day later: it failed every launch on a connection that
        worked (a review's finding)."""
        good = self._good if self._good is not None and self._good[0] is conn else None
        installed = self._installed
        if (
            installed is None
            or installed[0] is not conn
            or (good is None and installed[1].done() and installed[1].exception() is not None)
            or _clock() - self._installed_at > REINSTALL_AFTER_S
        ):
            # its failure is reported by those who await it (launches, the prefetch)
            spawned = self._tasks.spawn(
                self._install(conn), name=f"hook:{self._host}", awaited=True
            )
            installed = (conn, spawned)
            self._installed, self._installed_at = installed, _clock()
        done = installed[1]
        try:
            return await asyncio.shield(done)
        except RelayError as exc:
            if good is None:
                raise
            if self._unrefreshed is not done:
                self._unrefreshed = done
                self._log.warning(
                    "kernel hook not installed again; the one in place is used",
                    error=exc.message,
                )
            return good[1]

    async def _install(self, conn: asyncssh.SSHClientConnection) -> str:
        path = await install(conn, self._host, self._hook)
        self._good = (conn, path)
        self._log.info("kernel hook in place", path=path)
        return path
