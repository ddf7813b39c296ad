"""``relay check HOST``: every point where a remote kernel launch can fail, in the order a
launch meets them, each bounded in time, each with what to do when it fails.

It runs inside the daemon when one is running (``{"op":"check"}``), so it tests the connection
launches use (that host's ``HostSession``: its ssh_config view, agent, connection and
supervisor), and in a daemon of its own otherwise (``relay.cli``). Rendering is
``relay.checkview``.

1 configuration   which [hosts] entry or ssh_config alias, resolved user/host/port/keys/jump
2 reach           name resolution, TCP and the SSH banner, the address used (direct only)
3 host key        known, unknown (fingerprint, ``relay trust``) or changed
4 authentication  the methods the server offers; which key or agent identity works
5 server          a remote forward on 127.0.0.1 port 0, sessions (MaxSessions), SFTP
6 remote host     POSIX sh, mktemp, a writable TMPDIR, /proc, space in ~/.cache/relay, the
                  time a login takes before each command; who connects to a link:
                  /proc/net/tcp, or the kernel's answer (sock_diag) to relay's agent
7 resume          whether kernels outlive their connection (relay's agent), and if not, why
8 kernel          executable, its version (``-version``), what it prints when it fails
9 round trip      a launch with a bash probe in place of the kernel: both channels, timed
10 connection     RTT and what it means for launches; the daemon's state for the host
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shlex
import socket
import textwrap
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncssh

from relay.agent import start as agent_start
from relay.checkview import (
    Result,
    State,
    after_chatter,
    chatter,
    login_seconds,
    origin_words,
    parse_probe,
)
from relay.clock import duration, moment
from relay.errors import HostKeyChanged, RelayError
from relay.hostspec import HostSpec, HostSpecError
from relay.lite.linkname import LinkName
from relay.ssh import hostkeys, identity, remote_scripts
from relay.statusview import size
from relay.tasks import retrieved

if TYPE_CHECKING:
    from relay.daemonstate import DaemonState
    from relay.ssh.host import HostSession

__all__ = ["HOST_PROBE", "ROUND_TRIP_PROBE", "run"]


STEP_TIMEOUT_S = 30.0  # no check waits longer; most take a round trip or two
KERNEL_TIMEOUT_S = 20.0  # `KERNEL -version`: a licence check may take a while
PROBE_GONE_S = 5.0  # a probe told to go, waited for at most this long
MIN_FREE_KB = 10 * 1024  # the hook and the supervisor's files are a few kB
# a login (sshd's work for a session, the start-up files of the account's shell) this slow
# is said: each new connection's first kernel waits for one, and the Parallel package waits
# 15 s for a kernel
SLOW_LOGIN_S = 3.0
AUTH_METHODS_KWARGS = {"port", "username", "tunnel", "proxy_command", "config"}
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa", "id_ed25519_sk", "id_ecdsa_sk", "id_dsa")

# Check 6, one exec session: key=value lines (relay.checkview.parse_probe). One line of sh
# (relay.ssh.remote_scripts.script: any login shell).
HOST_PROBE = "; ".join(
    [
        "echo sh=ok",
        # first, the login's cost: this process's start (sshd's child, the login shell's
        # and then /bin/sh's by exec) against a process started now, both in clock ticks
        # since boot (/proc/PID/stat's field 22), so that no other clock is mixed in: lxcfs
        # gives a container's /proc/uptime from its own start (checkview.login_seconds)
        "test -r /proc/$$/stat && read -r x </proc/$$/stat && x=${x##*) } && set -- $x && "
        "s=${20} && y=$(cat /proc/self/stat) && y=${y##*) } && set -- $y && "
        'echo "login=$s ${20} $(getconf CLK_TCK 2>/dev/null || echo 100)"',
        'echo "login_shell=${SHELL##*/}"',
        "command -v mktemp >/dev/null 2>&1 && echo mktemp=ok || echo mktemp=missing",
        "command -v bash >/dev/null 2>&1 && echo bash=ok || echo bash=missing",
        # paths said with printf, quoted: echo collapsed a TMPDIR's spaces, and dash's read
        # its backslashes ("\\n" a newline: the rest of the name was lost)
        "t=${TMPDIR:-/tmp}; printf 'tmpdir=%s\\n' \"$t\"",
        # a directory, and a file with bytes in it: a full tmpfs still makes directories
        'w=no; if d=$(LC_ALL=C mktemp -d "$t/relay-check.XXXXXX" 2>&1); then w=full; '
        'printf "%4096s" x >"$d/f" 2>/dev/null && w=ok; rm -rf "$d"; '
        # or no directory at all, for want of room: no inode left (any file system), no
        # block (ext4 refuses the directory), or the user's quota there; mktemp says which
        # (EDQUOT: glibc's "Disk quota exceeded", musl's "Quota exceeded")
        'else case $d in *"No space left"*|*[Qq]"uota exceeded"*) w=full ;; esac; fi',
        'test $w = no && test "$(df -Pk "$t" 2>/dev/null | awk \'NR==2 {print $4}\')" = 0 '
        "&& w=full",
        "echo tmpdir_writable=$w",
        "test -r /proc/net/tcp && echo proc=ok || echo proc=missing",
        'c=$HOME/.cache/relay; while [ ! -d "$c" ]; do c=$(dirname "$c"); done; '
        "printf 'cache_dir=%s\\n' \"$c\"",
        "echo free_kb=$(df -Pk \"$c\" 2>/dev/null | awk 'NR==2 {print $4}')",
        # where the kernel hook and the agent go: a read-only HOME (a mount) takes neither
        'test -w "$c" && echo cache_writable=ok || echo cache_writable=no',
        """v='import sys; print("%d.%d" % sys.version_info[:2])'""",
        # what a python3 that does not run says (a pyenv shim with no version chosen)
        'command -v python3 >/dev/null 2>&1 && echo python3=$(python3 -I -c "$v" 2>&1 | '
        "tail -n 1) || echo python3=missing",
    ]
)

# How each login shell keeps its start-up quiet for commands (what `relay check` advises when
# it prints before them): only interactive shells should print
QUIET_START_UP = {
    "bash": "at the top of ~/.bashrc: [[ $- == *i* ]] || return",
    "zsh": "move it from ~/.zshenv to ~/.zshrc, which only interactive shells read",
    "tcsh": "in ~/.cshrc (or ~/.tcshrc), inside: if ($?prompt) then ... endif",
    "csh": "in ~/.cshrc, inside: if ($?prompt) then ... endif",
    "fish": "in ~/.config/fish/config.fish, inside: if status is-interactive ... end",
}

# Check 7: a Unix socket listening on the host, for sshd to be asked to forward to. Only a
# socket that exists tells "sshd refuses" from "no such socket": OpenSSH 9 answers both with
# "open failed" (code 2). Its path is as long as the agent's ($TMPDIR/relay-agent-UID/
# TAG.sock): where the agent's could not be bound, neither can it. It takes one connection
# and goes when its session's input ends, or after 10 s; its directory is mkdtemp's (0700).
# Python 3.6. Its line is marked: a login shell may print before it.
SOCKET_PROBE_PY = "\n".join(
    [
        "import os, select, socket, sys, tempfile",
        't = os.environ.get("TMPDIR") or "/tmp"',
        'n = len(os.path.join(t, "relay-agent-%d" % os.getuid(), "0" * 16 + ".sock"))',
        'd = tempfile.mkdtemp(prefix="relay-check-", dir=t)',
        'p = os.path.join(d, "s" * max(1, n - len(d) - 1))',
        "s = socket.socket(socket.AF_UNIX)",
        "try:",
        "    s.bind(p)",
        "    s.listen(1)",
        '    print("relay-socket " + p, flush=True)',
        "    if s in select.select([s, sys.stdin], [], [], 10)[0]:",
        "        s.accept()[0].close()",
        "finally:",
        "    s.close()",
        "    os.path.exists(p) and os.unlink(p)",
        "    os.rmdir(d)",
    ]
)
SOCKET_LINE = "relay-socket "


def _shown(text: str) -> str:
    """``text`` read with its bytes that are not UTF-8 kept (surrogateescape), as it can be
    printed: each such byte as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def python_line(program: str) -> str:
    """``program`` run by the host's python3, as one line of sh (remote_scripts.script: any
    login shell): printf's %b makes its newlines, inside single quotes."""
    if "'" in program or "\\" in program:
        raise ValueError("a program for python_line has no ' and no \\")
    return "exec python3 -I -c \"$(printf %b '{}')\"".format(program.replace("\n", "\\n"))


SOCKET_PROBE = python_line(SOCKET_PROBE_PY)

# Check 6, where /proc/net/tcp is missing: whether relay's agent tells who connects all the
# same, by the kernel's own answer (sock_diag; a /proc mounted subset=pid has no net/). Not
# a copy of its probe: the agent's file itself (agent_file, the bytes a launch installs), on
# the session's input, run to its owner_check, which says CHECK on the agent's start line
# ("proc" or "none"). Python 3.6. Its line is marked: a login shell may print before it.
OWNERS_PROBE_PY = "\n".join(
    [
        "import sys",
        'agent = {"__name__": "relayagent"}',
        'exec(compile(sys.stdin.buffer.read(), "relayagent.py", "exec"), agent)',
        'print("relay-owners " + agent["owner_check"](), flush=True)',
    ]
)
OWNERS_PROBE = python_line(OWNERS_PROBE_PY)
OWNERS_LINE = "relay-owners "

# Check 9: launched as the kernel, with the kernel's flags.
ROUND_TRIP_PROBE = r"""#!/usr/bin/env bash
# relay check's stand-in for a kernel: takes a kernel's flags, connects both channels of
# -LinkName as a kernel does, and answers one line on each.
name=; prev=
for a; do case $prev in -LinkName|-linkname) name=$a;; esac; prev=$a; done
d=${name%%,*}; m=${name#*,}
exec 3<>"/dev/tcp/${d#*@}/${d%%@*}" 4<>"/dev/tcp/${m#*@}/${m%%@*}" || exit 3
IFS= read -r -t 20 line <&3 && printf 'data %s\n' "$line" >&3
IFS= read -r -t 20 line <&4 && printf 'message %s\n' "$line" >&4
"""
# written to a private temporary file on the host for the one launch, removed afterwards
# Where the probe goes: beside relay's own files (~/.cache/relay, made 0700 if need be, as the
# hook installer wants it), else TMPDIR. TMPDIR is often mounted noexec on hardened hosts,
# where the probe could not run though kernels can (a new-user review's finding).
# Only where no other user could swap ~/.cache/relay under the probe before it runs (as the
# installer asks: safedirs.sh); else TMPDIR, by mktemp's private name.
PLACE_PROBE = remote_scripts.with_safedirs(
    'umask 077; d="$HOME/.cache/relay"; mkdir -p "$d" 2>/dev/null; '
    '{ cache_safe && test ! -L "$d" && test -O "$d" && sd_one "$d" && '
    'f=$(mktemp "$d/probe.XXXXXX" 2>/dev/null); } '
    '|| f=$(mktemp "${TMPDIR:-/tmp}/relay-probe.XXXXXX") '
    '&& cat > "$f" && chmod 700 "$f" && printf %s "$f"'
)


class _Failed(Exception):
    """A check's failure: the line and what to do."""

    def __init__(self, summary: str, advice: str, state: State = "fail") -> None:
        super().__init__(summary)
        self.summary, self.advice, self.state = summary, advice, state


class Checker:
    def __init__(self, daemon: DaemonState, name: str, kernel: str | None) -> None:
        self.daemon = daemon
        self.name = name
        self.kernel = kernel
        self.session: HostSession | None = None
        self.conn: asyncssh.SSHClientConnection | None = None
        self.probe: dict[str, str] = {}
        # what step 5 found the server refuses that only today's path needs (remote forwards):
        # fine while relay's agent runs there (step 7 says whether it does)
        self.old_path_blocked: str | None = None
        self.old_path_fix = ""  # the sshd_config lines that would unblock it
        self._sessions_opened = 0
        self.agent_runs = False  # relay's agent can run there (step 7)
        # no /proc/net/tcp, but relay's agent tells who connects by sock_diag (step 6):
        # today's path (supervisor.sh reads /proc/net/tcp alone) cannot
        self.sock_diag_only = False
        # what a step opens (connections, listeners, sessions, servers): closed and awaited
        # when the step ends, within its bound
        self.opened = contextlib.AsyncExitStack()
        self.running_daemon = False
        # where the host's user and port come from: "relay.toml", "the host spec",
        # "ssh_config" or "ssh's defaults" (step 1 finds out; every step says it)
        self.origin: dict[str, str] = {}

    async def run(self) -> list[Result]:
        steps: list[tuple[str, Callable[[], Awaitable[tuple[str, dict[str, Any], State]]]]] = [
            ("configuration", self.configuration),
            ("reach", self.reach),
            ("host key", self.host_key),
            ("authentication", self.authentication),
            ("server", self.server),
            ("remote host", self.remote_host),
            ("resume", self.resume),
            ("kernel", self.kernel_check),
            ("round trip", self.round_trip),
            ("connection", self.connection),
        ]
        results: list[Result] = []
        failed: str | None = None
        for i, (name, step) in enumerate(steps, 1):
            if failed is not None and name != "connection":
                results.append(Result(i, name, "skip", f"not checked: {failed} failed first"))
                continue
            started = time.monotonic()
            try:
                async with asyncio.timeout(STEP_TIMEOUT_S), self.opened:
                    summary, data, state = await step()
                advice = data.pop("advice", None)
            except _Failed as exc:
                summary, data, state, advice = exc.summary, {}, exc.state, exc.advice
            except TimeoutError:
                summary, data, state = f"no answer within {STEP_TIMEOUT_S:g} s", {}, "fail"
                advice = "the host or the network stalls: try again, then `relay status`"
            except (RelayError, asyncssh.Error, asyncssh.ChannelListenError, OSError) as exc:
                message = exc.message if isinstance(exc, RelayError) else str(exc) or repr(exc)
                summary, data, state = f"{type(exc).__name__}: {message}"[:300], {}, "fail"
                advice = "an error this check does not know: see the steps above and relay.log"
            ms = (time.monotonic() - started) * 1000
            results.append(Result(i, name, state, summary, advice, round(ms, 1), data))
            if state == "fail" and failed is None:
                failed = name
        return results

    # -- 1 ---------------------------------------------------------------------------------
    async def configuration(self) -> tuple[str, dict[str, Any], State]:
        try:
            self.session = session = self.daemon.host(self.name)
            view, plan = await session.plan()
        except RelayError as exc:
            raise _Failed(exc.message, "fix the host name or relay.toml") from None
        cfg, base = plan.config, session.base_config
        entry = (
            f"[hosts.{session.key}] in {self.daemon.config_source}"
            if self.name in self.daemon.config.hosts
            else "not a [hosts] entry: an ad-hoc host"
        )
        alias = view.hostname != base.hostname
        self.origin = self._origins(session, view)
        show = {
            "entry": entry + (f"; ssh_config alias for {view.hostname}" if alias else ""),
            "target": f"{view.user}@{view.hostname}:{view.port} ({origin_words(self.origin)})",
            "identity files": ", ".join(cfg.identity_files)
            if cfg.identity_files
            else ", ".join(map(str, view.get("IdentityFile") or [])) or "ssh's defaults and agent",
            "known_hosts": ", ".join(map(str, plan.known_hosts)),
            "jump host": plan.jump or cfg.proxy_command or "none",
        }
        if view.files:
            show["ssh_config"] = ", ".join(view.files)
        data: dict[str, Any] = {"show": show, "notes": list(plan.notes)}
        if plan.notes:
            data["advice"] = plan.notes[0]
        return f"{view.user}@{view.hostname}:{view.port}", data, "warn" if plan.notes else "ok"

    def _origins(self, session: HostSession, view: Any) -> dict[str, str]:
        """Where the user and the port the connection uses come from. relay passes its own
        (a [hosts] entry's or [defaults]', or a spec's) to ssh_config's reading, where they
        win as ssh's command line does; ssh_config's own apply only where relay has none."""
        spec: HostSpec | None = None
        if self.name not in self.daemon.config.hosts:
            with contextlib.suppress(HostSpecError):
                spec = HostSpec.parse(self.name)
        origin = {}
        for field, keyword in (("user", "User"), ("port", "Port")):
            if getattr(session.base_config, field) is not None:
                by_spec = spec is not None and getattr(spec, field) is not None
                origin[field] = f"the host spec {self.name}" if by_spec else "relay.toml"
            elif view.get(keyword) is not None:
                origin[field] = "ssh_config"
            else:
                origin[field] = "ssh's defaults"
        return origin

    def _from(self, field: str) -> str:
        """``field``'s origin, briefly: "from ssh_config", "from the host spec"."""
        return origin_words(self.origin, field)

    # -- 2 ---------------------------------------------------------------------------------
    async def reach(self) -> tuple[str, dict[str, Any], State]:
        assert self.session is not None
        view, plan = await self.session.plan()
        if plan.jump or plan.config.proxy_command:
            via = plan.jump or "ProxyCommand"
            return f"through {via} (checked as that host's connection)", {}, "ok"
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            async with asyncio.timeout(plan.config.connect_timeout_s):
                infos = await loop.getaddrinfo(view.hostname, view.port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise _Failed(
                f"{view.hostname} does not resolve ({exc})",
                "check the spelling, HostName in ~/.ssh/config, or your DNS/VPN",
            ) from None
        resolve_ms = (time.monotonic() - started) * 1000
        errors = []
        port = f"port {view.port} ({self._from('port')})"
        timeout_s = plan.config.connect_timeout_s
        for family, _, _, _, sockaddr in infos:
            address = str(sockaddr[0])
            started = time.monotonic()
            try:
                async with asyncio.timeout(timeout_s):
                    reader, writer = await asyncio.open_connection(address, view.port)
            except (OSError, TimeoutError) as exc:
                errors.append(f"{address}: {exc.strerror or 'timed out'}")
                continue
            ms = (time.monotonic() - started) * 1000
            try:
                banner = await _banner(reader, timeout_s)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if not banner.startswith("SSH-"):
                took = time.monotonic() - started
                said = f"answered {banner[:60]!r}, not SSH" if banner else "sent no SSH banner"
                raise _Failed(
                    f"{address}:{view.port} accepted TCP but {said} in {took:.1f} s "
                    f"(connect_timeout_s {timeout_s:g} s)",
                    self._while_resuming(
                        f"something other than sshd listens on {port}: check Port for "
                        f"{self.name}; or sshd there is too busy to answer (MaxStartups)"
                    ),
                )
            kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
            return (
                f"{address} {port}, {kind}, TCP in {ms:.0f} ms, {banner[:40]}",
                {
                    "address": address,
                    "resolve_ms": round(resolve_ms, 1),
                    "tcp_ms": round(ms, 1),
                    "banner": banner,
                },
                "ok",
            )
        raise _Failed(
            f"cannot reach {view.hostname} {port}: {'; '.join(errors)}",
            self._while_resuming(
                f"check Port/HostName for {self.name}, that sshd runs there, and firewalls or "
                f"VPN between here and there"
            ),
        )

    def _while_resuming(self, advice: str) -> str:
        """A reach that fails while the host's kernels wait for their lost connection: the
        network path that lost it is the first suspect, not a setting that worked before."""
        if self.session is None or not self.session.resuming:
            return advice
        return (
            f"the connection relay had to {self.name} was lost and relay is reconnecting (see "
            f"10): the network path there is likely down (Wi-Fi, VPN); else {advice}"
        )

    # -- 3 ---------------------------------------------------------------------------------
    async def host_key(self) -> tuple[str, dict[str, Any], State]:
        assert self.session is not None
        try:
            key = await self.session.host_key()
        except HostKeyChanged as exc:  # a revoked key: nothing to trust, nothing to retry
            raise _Failed(exc.message, "do not connect: tell the host's administrator") from None
        except RelayError as exc:
            raise _Failed(
                exc.message,
                "the server answered step 2 but not the key exchange: try again; if it "
                "persists, see the server's sshd log",
            ) from None
        entry = hostkeys.entry_name(key["name"], key["port"])
        if key["state"] == "known":
            return f"known: {key['fingerprint']}", {"fingerprint": key["fingerprint"]}, "ok"
        if key["state"] == "unknown":
            raise _Failed(
                f"{entry} offers {key['fingerprint']}, which no known_hosts file records",
                f"compare it with the host's, then `relay trust {self.name}` records it",
            )
        raise _Failed(
            f"{entry} now offers {key['fingerprint']}, but a DIFFERENT key is recorded in "
            f"{key['file']}: possible man-in-the-middle, or the host was reinstalled",
            f"if the change is expected: {hostkeys.remove_command(entry, key['file'])}, then "
            f"`relay trust {self.name}`",
        )

    # -- 4 ---------------------------------------------------------------------------------
    async def authentication(self) -> tuple[str, dict[str, Any], State]:
        session = self.session
        assert session is not None
        view, plan = await session.plan()
        # as a connection reaches it: its name in ssh_config's eyes, the resolved port and user
        kwargs = dict(await session.connect_kwargs(plan), port=view.port, username=view.user)
        methods: list[str] = []
        with contextlib.suppress(OSError, asyncssh.Error, TimeoutError, ValueError):
            async with asyncio.timeout(plan.config.connect_timeout_s):
                methods = list(
                    await asyncssh.get_server_auth_methods(
                        session.base_config.hostname,
                        **{k: v for k, v in kwargs.items() if k in AUTH_METHODS_KWARGS},
                    )
                )
        was = session.state
        try:
            self.conn = await session.connection()
        except RelayError as exc:
            person = {"keyboard-interactive", "password"} & set(methods)
            advice = (
                f"this host asks for a password or one-time code: `relay login {self.name}` in "
                f"a terminal, then launch"
                if person and "publickey" not in methods
                else f"add your key to the host's ~/.ssh/authorized_keys, load it with ssh-add, "
                f"or set identity_files for {self.name}"
            )
            offers = ", ".join(methods) or "?"
            raise _Failed(f"{exc.message} (server offers: {offers})", advice) from None
        which, state = await self._which_key(view, plan, kwargs)
        show = {"server offers": ", ".join(methods) or "(not said)"}
        if was == "connected":
            show["connection"] = "the daemon's, already open"
        summary = f"{which} as {view.user} ({self._from('user')})"
        return summary, {"methods": methods, "show": show}, state

    async def _which_key(self, view: Any, plan: Any, kwargs: dict[str, Any]) -> tuple[str, State]:
        """Which key the server takes: each candidate alone, in the order relay offers them,
        to the host as the connection reached it."""
        agent = identity.agent_path(view.get("IdentityAgent"), self.daemon.environ_agent)
        candidates: list[tuple[str, Any]] = []
        if plan.config.identity_files is not None:
            for key in await identity.client_keys(
                plan.config.identity_files, host=self.name, agent=agent
            ):
                label = key if isinstance(key, str) else _agent_label(key)
                candidates.append((label, key))
        else:
            # ssh_config's IdentityFile, as the connection offers them (asyncssh reads the
            # same files), else ssh's defaults; unencrypted ones: the agent holds the others
            named = view.get("IdentityFile") or [f"~/.ssh/{n}" for n in DEFAULT_IDENTITIES]
            for path in named:
                with contextlib.suppress(OSError, asyncssh.KeyImportError):
                    candidates.append((path, asyncssh.read_private_key(path)))
            candidates += [(_agent_label(key), key) for key in await identity.agent_keys(agent)]
        assert self.session is not None
        host = self.session.base_config.hostname  # the name ssh_config knows it by
        unreached: list[str] = []  # not a key's refusal: the test could not tell
        for label, key in candidates[:8]:
            try:
                async with asyncio.timeout(plan.config.connect_timeout_s):
                    conn = await asyncssh.connect(
                        host,
                        **dict(
                            _bare(kwargs),
                            client_keys=[key],
                            agent_path=None,
                            preferred_auth=["publickey"],
                        ),
                    )
            except asyncssh.PermissionDenied:
                continue
            except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
                unreached.append(f"{label}: {str(exc) or type(exc).__name__}")
                continue
            await self.opened.enter_async_context(conn)
            return f"publickey with {label}", "ok"
        if unreached:
            return (
                f"authenticated, but which key works is not known: {unreached[0][:120]}",
                "warn",
            )
        return "authenticated (not with one key alone: relay login, or several factors)", "ok"

    # -- 5 ---------------------------------------------------------------------------------
    async def server(self) -> tuple[str, dict[str, Any], State]:
        assert self.session is not None
        assert self.conn is not None
        conn = self.conn
        # where relay's agent is wanted, it carries the links over a channel of its own:
        # remote forwards are today's path's, where the agent cannot run (step 7)
        agent_first = agent_start.unwanted(self.session.config) is None
        # what today's path needs and the server refuses, with the sshd_config line that
        # gives it: a warning where the agent runs (step 7 says whether it does)
        blocked: list[tuple[str, str]] = []
        port = 0
        try:
            listener = await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
        except (asyncssh.Error, asyncssh.ChannelListenError, OSError) as exc:
            if not agent_first:
                raise _Failed(
                    f"the server refuses remote port forwarding ({exc})",
                    "relay needs it for every link: ask the admin for AllowTcpForwarding yes "
                    "(or remote) for your account",
                ) from None
            blocked.append(
                (
                    f"the server refuses remote port forwarding ({exc})",
                    "AllowTcpForwarding yes (or remote)",
                )
            )
        else:
            await self.opened.enter_async_context(listener)
            port = listener.get_port()
        # relay holds a supervisor session and opens more beside it (the hook's install,
        # kernel checks): two at once, as launches need them on today's path. relay's agent
        # needs one at a time: its channel is not a session
        try:
            await self._sessions(("cat", "true"))
        except (asyncssh.Error, OSError) as exc:
            second = isinstance(exc, asyncssh.ChannelOpenError) and self._sessions_opened == 1
            if not (agent_first and second):
                raise _Failed(
                    f"the server refuses {'a second session at once' if second else 'a session'}"
                    f" ({exc})",
                    "MaxSessions on the server is too low for relay (it needs 2 per "
                    "connection): ask the admin to raise it, or close other sessions "
                    "multiplexed on it",
                ) from None
            try:
                await self._sessions(("true",))  # the first ended: one at a time, then
            except (asyncssh.Error, OSError) as again:
                raise _Failed(
                    f"the server refuses a session even once the one before has ended ({again})",
                    "MaxSessions on the server is too low for relay: ask the admin to "
                    "raise it, or close other sessions multiplexed on it",
                ) from None
            blocked.append(
                (
                    f"the server allows one session at a time ({exc} for a second: "
                    f"MaxSessions), where today's path holds one and opens more",
                    "MaxSessions 2 or more",
                )
            )
        if blocked:
            self.old_path_blocked = "; ".join(what for what, _ in blocked)
            self.old_path_fix = " and ".join(fix for _, fix in blocked)
            return (
                f"{self.old_path_blocked}: kernels here can launch only through relay's agent "
                f"(step 7)",
                {
                    "advice": f"{self.old_path_fix} in the host's sshd_config lets kernels "
                    f"launch where the agent cannot run"
                },
                "warn",
            )
        data: dict[str, Any] = {"forward_port": port}
        try:
            async with asyncio.timeout(self.session.config.connect_timeout_s):
                await self.opened.enter_async_context(await conn.start_sftp_client())
            sftp_note = "SFTP available"
        except (asyncssh.Error, OSError, TimeoutError):
            data["advice"] = "nothing to do: relay installs its hook through an exec session"
            return (
                f"remote forward ok (port {port}), sessions ok; no SFTP subsystem: "
                f"relay uses its exec-session fallback",
                data,
                "warn",
            )
        return f"remote forward ok (port {port}), sessions ok, {sftp_note}", data, "ok"

    async def _sessions(self, commands: tuple[str, ...]) -> None:
        """Open a session per command, all at once, and wait for the last to finish: bounded
        by ``connect_timeout_s``. The sessions stay open until the step ends (``opened``),
        or are ended where one fails; ``_sessions_opened`` counts those the server let
        open."""
        assert self.conn is not None
        assert self.session is not None
        conn = self.conn
        processes: list[asyncssh.SSHClientProcess[Any]] = []
        self._sessions_opened = 0

        async def sessions() -> None:
            for command in commands:
                opening = functools.partial(conn.create_process, command)
                processes.append(await remote_scripts.session(opening))
                self._sessions_opened += 1
            await processes[-1].wait(check=False)

        limit = self.session.config.connect_timeout_s
        trying = asyncio.ensure_future(sessions())
        trying.add_done_callback(retrieved)
        try:
            try:
                # not asyncio.timeout, nor a close that waits: a command that never ends (a
                # login shell's start-up that waits) holds its channel's close too: aborted
                await asyncio.wait({trying}, timeout=limit)
                if not trying.done():
                    raise TimeoutError
                trying.result()
            except asyncssh.ChannelOpenError:
                # one refused: those open end as their commands do (cat at its input's end),
                # awaited, so that the server has let them go for what opens next; bounded
                for process in processes:
                    process.stdin.write_eof()
                if await _closed_or_aborted(processes, limit):  # a start-up that never ends
                    raise TimeoutError from None
                raise
            except BaseException:
                trying.cancel()
                for process in processes:
                    process.channel.abort()
                raise
        except TimeoutError:  # an OSError too: the server opened the session, it never ended
            raise _Failed(
                f"a command on the server ({commands[max(len(processes), 1) - 1]}) did not "
                f"finish within {limit:g} s",
                "the login shell runs every command relay sends there, after its start-up "
                "files: one that is slow, waits for input or starts another shell (exec zsh "
                "in ~/.bashrc) holds them all; `ssh HOST true` shows it",
            ) from None
        for process in processes:  # ended above where they failed: no close to wait for
            await self.opened.enter_async_context(process)

    # -- 6 ---------------------------------------------------------------------------------
    async def remote_host(self) -> tuple[str, dict[str, Any], State]:
        assert self.conn is not None
        assert self.session is not None
        # a TMPDIR or HOME named in Latin-1 (a host whose locale is C) cut the probe's output
        # where it was said, and the rest was read as missing: "TMPDIR None is not writable"
        done = await remote_scripts.run(
            self.conn, remote_scripts.script(HOST_PROBE), check=False, errors="replace"
        )
        self.probe = probe = parse_probe(str(done.stdout or ""))
        if probe.get("sh") != "ok":
            # what the host said instead: on stderr, or on stdout (a ForceCommand's notice)
            said = (str(done.stderr or "").strip() or str(done.stdout or "").strip()).splitlines()
            raise _Failed(
                f"/bin/sh did not run the probe (exit {done.exit_status}): "
                f"{(said[-1] if said else 'it said nothing')[:200]}",
                "relay needs its commands run by a POSIX /bin/sh on the host: a ForceCommand "
                "in the host's sshd_config (for sftp only, say) runs something else instead",
            )
        if probe.get("mktemp") != "ok":
            raise _Failed("mktemp is missing", "install coreutils (mktemp) on the host")
        if probe.get("tmpdir_writable") == "full":
            raise _Failed(
                f"TMPDIR {probe.get('tmpdir')} is full: a directory with 4 KB in it could not "
                f"be made there",
                "relay's agent and supervisor keep their files there (sockets, kernels' "
                "logs): free some space there, or set TMPDIR for your account on the host to "
                "a directory that has it",
            )
        if probe.get("tmpdir_writable") != "ok":
            raise _Failed(
                f"TMPDIR {probe.get('tmpdir')} is not writable",
                "relay's supervisor makes a private directory there: make it writable, or set "
                "TMPDIR for your account on the host to one that is",
            )
        show = {"TMPDIR": probe.get("tmpdir", "?")}
        if probe.get("cache_writable") == "no":
            cache = probe.get("cache_dir", "~/.cache/relay")
            if self.session.config.dynamic:
                raise _Failed(
                    f"{cache} cannot be written (a read-only HOME?): relay's kernel hook goes "
                    f"in ~/.cache/relay, so controller launches fail there",
                    f"make ~/.cache/relay writable on the host, or set dynamic = false for "
                    f"{self.name} (no Dynamic; its agent cannot go there either, so kernels end "
                    f"with their connection)",
                )
        notes = []
        # how the account's shell keeps its start-up to interactive shells
        quiet = QUIET_START_UP.get(probe.get("login_shell", ""), QUIET_START_UP["bash"])
        said = chatter(str(done.stdout or ""), "sh=ok")
        if said:
            notes.append(
                f"the login shell prints before every command ({said[0][:60]!r}"
                f"{' and more' if len(said) > 1 else ''}): relay skips it, but scp, sftp and "
                f"rsync fail on it; print only in interactive shells "
                f"({quiet})"
            )
        login_s = login_seconds(probe)
        if login_s is not None:
            show["login"] = f"{login_s * 1000:.0f} ms before each command"
            if login_s >= SLOW_LOGIN_S:
                notes.append(
                    f"the login takes {login_s:.1f} s before each command (sshd's work for "
                    f"a session, then the shell's start-up files): a new connection's first "
                    f"kernel waits for it; keep what is slow (module loads, conda) to "
                    f"interactive shells ({quiet}), or run `relay connect {self.name}` "
                    f"ahead of the launches"
                )
        proc = "/proc"
        if probe.get("proc") != "ok":
            self.sock_diag_only = await self._sock_diag_tells()
            if (note := self._no_proc_net()) is not None:
                notes.append(note)
            elif self.session.config.peer_check != "uid":
                proc = "/proc (no net/tcp: peer_check = off, who connects is not asked)"
            else:
                proc = "/proc (no net/: relay's agent tells who connects by sock_diag)"
                show["who connects"] = (
                    "the kernel's answer (sock_diag), asked by relay's agent: no /proc/net/tcp"
                )
        free = int(probe["free_kb"]) if probe.get("free_kb", "").isdigit() else None
        if free is not None:
            show["free space"] = f"{free // 1024} MB in {probe.get('cache_dir')}"
            if free < MIN_FREE_KB:
                notes.append(f"only {free} kB free in {probe.get('cache_dir')}")
        data: dict[str, Any] = {"probe": probe, "show": show}
        if notes:
            data["advice"] = "; ".join(notes)
            return "POSIX sh, mktemp, writable TMPDIR; " + notes[0], data, "warn"
        return f"POSIX sh, mktemp, writable TMPDIR, {proc}", data, "ok"

    async def _sock_diag_tells(self) -> bool:
        """Whether relay's agent tells who connects on this host, which has no /proc/net/tcp:
        its own owner_check run there (OWNERS_PROBE), by the host's python3 (3.6 or later;
        without one, no agent runs)."""
        assert self.conn is not None
        if _python3(self.probe) is None:
            return False
        agent = agent_start.agent_file()
        probe = remote_scripts.script(OWNERS_PROBE)
        done = await remote_scripts.run(self.conn, probe, agent.data.decode(), check=False)
        said = after_chatter(str(done.stdout or ""), OWNERS_LINE)
        return said[:1] == [OWNERS_LINE + "proc"]

    def _no_proc_net(self) -> str | None:
        """Step 6's word on a host with no /proc/net/tcp, for the path its launches take (a
        note: launches fail there); None where relay's agent, which they take, tells who
        connects all the same (sock_diag), or where nothing asks (peer_check = "off"; step
        7 says what that costs where it could). Today's path (resume_window_s = 0, or where
        the agent cannot run: step 7) asks supervisor.sh, which reads /proc/net/tcp alone."""
        assert self.session is not None
        cfg = self.session.config
        if cfg.peer_check != "uid":
            return None
        cannot = "no /proc/net/tcp: relay cannot tell who connects to a link"
        fail = f'launches fail unless peer_check = "off" for {self.name}'
        if not self.sock_diag_only:
            if _python3(self.probe) is None:
                return (
                    f"{cannot}; {fail} (relay's agent, where python3 3.6 or later runs, asks "
                    f"the kernel instead: sock_diag)"
                )
            return f"{cannot} (nor does the kernel answer relay's agent by sock_diag); {fail}"
        if cfg.resume_window_s > 0:
            return None
        return (
            f"no /proc/net/tcp: with resume_window_s = 0 relay cannot tell who connects to a "
            f"link (the kernel answers here by sock_diag, but only relay's agent asks it); "
            f"{fail}, or set resume_window_s above 0 for {self.name} (900 unless set) to "
            f"launch through the agent"
        )

    # -- 7 ---------------------------------------------------------------------------------
    async def resume(self) -> tuple[str, dict[str, Any], State]:
        """Whether kernels here can outlive their connection (docs/agent.md): python3 3.6 or
        later for relay's agent, and sshd letting relay reach the agent's socket. Where the
        agent cannot run and the server refuses what today's path needs (step 5), nothing
        can launch: a failure."""
        assert self.session is not None
        cfg = self.session.config
        summary, data, state = await self._resume()
        if self.agent_runs:
            return summary, data, state
        blocked, fixes = [], []
        if self.sock_diag_only and cfg.resume_window_s > 0 and cfg.peer_check == "uid":
            # where the agent was wanted (step 6 passed) but cannot run: supervisor.sh reads
            # /proc/net/tcp alone (a window of 0 is step 6's note)
            blocked.append(
                "without relay's agent relay cannot tell who connects (no /proc/net/tcp; only "
                "the agent asks the kernel, by sock_diag)"
            )
            fixes.append(f'peer_check = "off" for {self.name}')
        if self.old_path_blocked is not None:
            blocked.append(self.old_path_blocked)
            fixes.append(f"{self.old_path_fix} in the host's sshd_config")
        if not blocked:
            return summary, data, state
        return (
            f"{summary}; and {'; and '.join(blocked)}: no kernel can launch here",
            {
                "advice": (data.get("advice") or "let relay's agent run there (above)")
                + "".join(f"; or {fix}" for fix in fixes)
            },
            "fail",
        )

    async def _resume(self) -> tuple[str, dict[str, Any], State]:
        assert self.conn is not None
        assert self.session is not None
        cfg = self.session.config
        off = "kernels here end with their connection, as with resume_window_s = 0"
        if cfg.resume_window_s <= 0:  # a Slurm host's nodes too
            return f"off: {agent_start.WINDOW_ZERO}; kernels end with their connection", {}, "ok"
        if cfg.slurm is None:  # as the daemon decides (HostSession); a Slurm host's are its nodes'
            if (why := agent_start.unwanted(cfg)) is not None:
                summary = f"off: {why}; kernels end with their connection"
                if cfg.peer_check == "uid" or not self._owners_told():
                    return summary, {}, "ok"  # off as the host needs it (step 6 says why)
                # the owner check switched off where it could run: resuming went with it
                advice = (
                    f'set peer_check = "uid" (the default) for {self.name}: then another '
                    f"user of the host cannot connect to a link first, and kernels outlive "
                    f"a lost connection"
                )
                return summary, {"advice": advice}, "warn"
            if not self._owners_told():
                return f"{agent_start.NO_OWNER_CHECK}: {off}", {}, "warn"
        if self.probe.get("cache_writable") == "no":
            cache = self.probe.get("cache_dir", "~/.cache/relay")
            return (
                f"{cache} cannot be written, where relay's agent goes: {off}",
                {
                    "advice": "make ~/.cache/relay writable on the host to keep kernels through "
                    "network outages"
                },
                "warn",
            )
        version = self.probe.get("python3", "missing")
        major, _, minor = version.partition(".")
        if _python3(self.probe) is None:
            advice = (
                "install python3 (3.6 or later) on the host to keep kernels through network outages"
            )
            if version == "missing":
                found = "no python3 on the PATH"
            elif major.isdigit() and minor.isdigit():
                found = f"python3 is {version}"
            else:  # it is there and does not run
                found = f"python3 there does not run (it said {version[:120]!r})"
                advice = (
                    "mend the python3 on the host's PATH (`ssh HOST python3 -V` shows it), or "
                    "install python3 3.6 or later, to keep kernels through network outages"
                )
            return f"{found}: {off}", {"advice": advice}, "warn"
        if (refused := await self._streamlocal_refused()) is not None:
            summary, advice = refused
            return summary.replace("{off}", off), {"advice": advice}, "warn"
        self.agent_runs = True  # what follows is said of a host where it does
        window = f"{cfg.resume_window_s:g} s"
        if self.session.on_old_path:
            # relay.toml raised it since the daemon's connection was made: not for its kernels
            return (
                f"python3 {version}; the connection relay has was made with resume_window_s "
                f"= 0: the kernels launched on it end with it; kernels wait {window} from its "
                f"next connection",
                {
                    "advice": "kernels launched once their host's connection is made again "
                    "(relay closes it when its kernels have ended) outlive outages"
                },
                "warn",
            )
        silence_s = cfg.keepalive_interval_s * cfg.keepalive_count_max
        if 0 < cfg.resume_window_s <= silence_s:
            # the window counts from the last word heard; a silent loss is found out later
            return (
                f"python3 {version}; kernels wait {window}, but a connection that goes silent "
                f"is found lost only after {silence_s:g} s (keepalive_interval_s x "
                f"keepalive_count_max): its kernels end before relay can resume",
                {
                    "advice": f"raise resume_window_s for {self.name} well above "
                    f"{silence_s:g} s (900 unless set), or lower keepalive_interval_s"
                },
                "warn",
            )
        return (
            f"python3 {version}; kernels wait {window} for their connection to come back",
            {},
            "ok",
        )

    def _owners_told(self) -> bool:
        """Whether relay's agent tells who connects on this host (step 6): by /proc/net/tcp,
        or by the kernel's answer (sock_diag)."""
        return self.probe.get("proc") == "ok" or self.sock_diag_only

    async def _streamlocal_refused(self) -> tuple[str, str] | None:
        """Why sshd will not forward to a Unix socket that listens on the host (SOCKET_PROBE),
        as the agent's does: a summary with ``{off}`` where it goes and advice. None if it
        opened a channel to one."""
        assert self.conn is not None
        probe = remote_scripts.script(SOCKET_PROBE)
        conn = self.conn
        proc = await self.opened.enter_async_context(
            await remote_scripts.session(
                lambda: conn.create_process(probe.command, errors="surrogateescape")
            )
        )
        try:
            proc.stdin.write(probe.preamble.decode())
            path = ""
            while line := await proc.stdout.readline():  # past a login shell's chatter
                if line.startswith(SOCKET_LINE):
                    path = line.removeprefix(SOCKET_LINE).rstrip("\n")
                    break
            if not path:  # it could not listen: it said why on stderr
                proc.stdin.write_eof()
                said = (await proc.stderr.read()).strip().splitlines()[-1:] or ["nothing"]
                said = [_shown(said[0])]
                advice = (
                    "relay's agent listens on a Unix socket under the host's TMPDIR too "
                    "(step 6 shows it): without one, kernels there end with their connection"
                )
                if "too long" in said[0]:  # a socket's path has room for 107 bytes
                    advice += (
                        "; set a shorter TMPDIR for your account on the host (its path and "
                        "the agent's relay-agent-UID/TAG.sock must fit in 107 bytes)"
                    )
                return (
                    f"cannot test Unix socket forwarding: python3 said {said[0][:160]!r}",
                    advice,
                )
            if _shown(path) != path:  # a TMPDIR named in Latin-1: the agent refuses it
                return (
                    f"the host's TMPDIR {self.probe.get('tmpdir')} is not named in UTF-8, and "
                    "relay can name the agent's socket there to sshd only in UTF-8: {off}",
                    "set TMPDIR for your account on the host to a directory whose path is "
                    "UTF-8 to keep kernels through network outages",
                )
            try:
                _, writer = await self.conn.open_unix_connection(path)
            except asyncssh.ChannelOpenError:
                return (
                    "sshd refuses Unix socket forwarding: {off}",
                    "to keep kernels through network outages, the host's sshd_config needs "
                    "AllowStreamLocalForwarding and AllowTcpForwarding each set to yes or "
                    "local (no or remote refuses the agent's channel)",
                )
            writer.close()
            return None
        finally:
            proc.stdin.write_eof()  # the probe goes at once, its directory with it
            with contextlib.suppress(TimeoutError):  # bounded: this may run past the step's
                async with asyncio.timeout(PROBE_GONE_S):
                    await proc.wait_closed()
            proc.close()

    # -- 8 ---------------------------------------------------------------------------------
    async def kernel_check(self) -> tuple[str, dict[str, Any], State]:
        assert self.conn is not None
        assert self.session is not None
        kernel = self.kernel or self.session.config.kernel
        if not kernel:
            return (
                "no kernel given",
                {
                    "advice": f"pass --kernel PATH, or set 'kernel' in [hosts.{self.session.key}]"
                    f' (a launch with KERNEL "" needs it)'
                },
                "warn",
            )
        q = shlex.quote(kernel)
        command = remote_scripts.script(
            f"if [ ! -e {q} ]; then echo 'relay-check: missing'; exit 127; fi; "
            f"if [ ! -x {q} ]; then echo 'relay-check: not executable'; exit 126; fi; "
            f"echo 'relay-check: running'; exec {q} -version </dev/null 2>&1"
        )
        try:
            async with asyncio.timeout(KERNEL_TIMEOUT_S):
                done = await remote_scripts.run(self.conn, command, check=False)
        except TimeoutError:
            raise _Failed(
                f"{kernel} -version did not finish within {KERNEL_TIMEOUT_S:g} s",
                "run it on the host by hand: a licence server or a network file system may hang",
            ) from None
        out = after_chatter(str(done.stdout or ""), "relay-check: ")
        if out[:1] == ["relay-check: missing"]:
            raise _Failed(
                f"no kernel at {kernel} on the host",
                "find it with `ls /usr/local/Wolfram/*/*/Executables` on the host and fix "
                "--kernel or 'kernel'",
            )
        if out[:1] == ["relay-check: not executable"]:
            raise _Failed(f"{kernel} is not executable", f"chmod +x {kernel} on the host")
        out = out[1:] if out[:1] == ["relay-check: running"] else out
        if done.exit_status != 0:
            words = " / ".join(out[-3:]) or "(no output)"
            raise _Failed(
                f"{kernel} exited {done.exit_status}: {words}",
                "that is what a launch would meet: fix it on the host (licence, paths) first",
            )
        version = out[0][:80] if out else "(printed no version)"
        return f"{kernel}: {version}", {"kernel": kernel, "version": version}, "ok"

    # -- 9 ---------------------------------------------------------------------------------
    async def round_trip(self) -> tuple[str, dict[str, Any], State]:
        assert self.session is not None
        if self.probe.get("bash") != "ok":
            return "not measured: no bash on the host for the probe", {}, "skip"
        from relay.kernels import launch  # noqa: PLC0415

        channels: list[asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = [
            asyncio.Queue(),
            asyncio.Queue(),
        ]
        accepted: list[asyncio.StreamWriter] = []

        def acceptor(queue: asyncio.Queue[Any]) -> Any:
            async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                accepted.append(writer)
                queue.put_nowait((reader, writer))

            return on_accept

        servers = [
            await self.opened.enter_async_context(
                await asyncio.start_server(acceptor(q), "127.0.0.1", 0)
            )
            for q in channels
        ]
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        link = LinkName.loopback(ports[0], ports[1])
        assert self.conn is not None
        place = remote_scripts.script(PLACE_PROBE)
        placed = await remote_scripts.run(self.conn, place, ROUND_TRIP_PROBE, check=False)
        probe = (str(placed.stdout or "").strip().splitlines() or [""])[-1]  # past any chatter
        if placed.exit_status != 0 or not probe:
            raise _Failed("cannot write the probe to ~/.cache/relay or TMPDIR", "see step 6")
        started = time.monotonic()
        kernel = None
        try:
            kernel = await launch(
                self.session, kernel=probe, link=link, mode="compute", extra_args=[]
            )
            answers = []
            for queue, word in zip(channels, ("data", "message"), strict=True):
                reader, writer = await queue.get()  # the link's own port: data, then message
                writer.write(f"ping-{word}\n".encode())
                await writer.drain()
                answers.append((await reader.readline()).decode().strip())
            if answers != ["data ping-data", "message ping-message"]:
                raise _Failed(
                    f"the probe's answers came back wrong: {answers}",
                    "report this: bytes were changed on the way",
                )
        except RelayError as exc:
            raise _Failed(exc.message, "see the steps above and `relay status`") from None
        finally:
            for writer in accepted:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await self.opened.aclose()  # the front end's side of the link, before the kernel
            if kernel is not None:
                await kernel.terminate(grace_s=1.0)
                await kernel.aclose()
            if self.session.config.dynamic:
                # the launch's connection set off the kernel hook's install, in a session of
                # its own: waited for, so that a server allowing one session at a time
                # (MaxSessions 1) takes the removal's session after it
                with contextlib.suppress(RelayError):
                    await self.session.init_file(self.conn)
            remove = remote_scripts.script(f"rm -f {shlex.quote(probe)}")
            await remote_scripts.run(self.conn, remove, check=False)
        ms = (time.monotonic() - started) * 1000
        return (
            f"launched a probe, both channels answered, in {ms:.0f} ms",
            {"launch_ms": round(ms, 1)},
            "ok",
        )

    # -- 10 --------------------------------------------------------------------------------
    async def connection(self) -> tuple[str, dict[str, Any], State]:
        if self.session is None:
            return "not checked", {}, "skip"
        snap = self.session.snapshot()
        show: dict[str, Any] = {}
        rtt = snap.get("rtt_ms")
        if rtt is not None and snap["state"] == "connected":
            # one launch: about two round trips, plus the shim's and the kernel's own start-up;
            # LaunchKernels runs one launch command after another (docs/topology.md §4)
            show["means"] = (
                f"a launch costs about {2 * rtt:.0f} ms in round trips; "
                f"LaunchKernels of 8 about {8 * (rtt + 80):.0f} ms beyond one kernel's start-up"
            )
        show["daemon"] = (
            "running (the connection launches use)"
            if self.running_daemon
            else "not running: checked in a daemon of its own; relay starts one on first launch"
        )
        kernels = sum(1 for k in self.daemon.kernels.values() if k.host is self.session)
        show["kernels"] = str(kernels)
        resume = snap.get("resume") or {}
        if resume.get("state") == "resuming":
            # the kernels' connection is down: what the steps above found is why, and that,
            # not a setting, is what a person running this check wants to know
            lost = resume.get("lost_at")
            at = moment(lost) if lost else "?"
            left = resume.get("window_left_s")
            summary = f"resuming: lost at {at}, relay is reconnecting; the kernels there wait" + (
                f" ({duration(left)} of resume_window_s left)" if left is not None else ""
            )
            show["held"] = f"{size(int(resume.get('unacked') or 0))} unacknowledged"
            advice = (
                f"`relay login {self.name}` (the server wants a person's answers)"
                if resume.get("login_needed")
                else "the kernels go on once the network does; `relay status` shows when"
            )
            return summary, {"show": show, "rtt_ms": rtt, "advice": advice}, "warn"
        if resume.get("state") == "ended":
            # the window ran out (or the agent was killed): that is the news, not the attempt
            # to connect that may have followed
            return (
                f"kernels ended: {resume.get('reason')}",
                {"show": show, "rtt_ms": rtt, "advice": "launch the kernels again"},
                "warn",
            )
        if snap.get("since"):
            show[f"{snap['state']} since"] = moment(snap["since"])
        failures = snap.get("failures") or []
        if failures:
            last = failures[-1]
            # whole (one line, each one actionable), cut at a word only if it is a screenful:
            # a cut at 120 characters ended it mid-sentence (a new-user pass's finding)
            reason = f"{last.get('reason', last)}"
            show["recent failure"] = textwrap.shorten(reason, 600, placeholder=" ...")
        summary = f"{snap['state']}, RTT {rtt:.1f} ms" if "means" in show else snap["state"]
        return summary, {"show": show, "rtt_ms": rtt}, "ok"


def _python3(probe: dict[str, str]) -> tuple[int, int] | None:
    """The host's python3 as step 6's probe found it, if relay's agent can run on it (3.6
    or later); None otherwise."""
    major, _, minor = probe.get("python3", "missing").partition(".")
    if not (major.isdigit() and minor.isdigit()) or (int(major), int(minor)) < (3, 6):
        return None
    return int(major), int(minor)


async def _closed_or_aborted(processes: list[Any], timeout_s: float) -> bool:
    """Wait for the processes' channels to close, for at most ``timeout_s``; abort those
    still open then (a command that never ends holds its channel's close). Whether any
    had to be."""
    closing = {asyncio.ensure_future(p.wait_closed()): p for p in processes}
    if not closing:
        return False
    _, late = await asyncio.wait(closing, timeout=timeout_s)
    for fut in late:
        fut.cancel()
        closing[fut].channel.abort()
    return bool(late)


async def _banner(reader: asyncio.StreamReader, timeout_s: float) -> str:
    """The server's first line: "SSH-2.0-..." from sshd (RFC 4253 allows lines before it),
    "" if it says nothing within ``timeout_s``."""
    lines: list[str] = []
    with contextlib.suppress(TimeoutError, OSError, ValueError):
        async with asyncio.timeout(timeout_s):
            for _ in range(20):
                line = (await reader.readline()).decode("ascii", "replace").strip()
                if not line or line.startswith("SSH-"):
                    return line or (lines[0] if lines else "")
                lines.append(line)
    return lines[0] if lines else ""


def _bare(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Options for a throwaway connection: no keepalives to outlive it."""
    return {k: v for k, v in kwargs.items() if not k.startswith("keepalive")}


def _agent_label(key: asyncssh.SSHKeyPair) -> str:
    comment = key.get_comment()
    if comment:
        return f"agent: {comment}"
    return "agent: " + hostkeys.fingerprint(asyncssh.import_public_key(key.public_data))


async def run(
    daemon: DaemonState, name: str, kernel: str | None, *, running: bool
) -> list[dict[str, Any]]:
    checker = Checker(daemon, name, kernel)
    checker.running_daemon = running
    return [r.as_dict() for r in await checker.run()]
