"""What OpenSSH's client configuration says about one host, read as ``ssh`` reads it.

Files: the user's (``~/.ssh/config``) and then the system's (``/etc/ssh/ssh_config``), or the
list in ``[daemon] ssh_config``; within and across them the first value obtained for a keyword
wins, as in ssh. Parsing (Host, Match, Include, %-tokens) is asyncssh's own, so what relay
reports here is exactly what asyncssh then connects with.

relay's policy per keyword (the README has the table): a key set explicitly in relay.toml
wins; otherwise the ssh_config value; otherwise relay's default. Keywords neither asyncssh nor
relay implements are collected in ``unsupported`` so the daemon can say so once per host.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncssh.config import SSHClientConfig

from relay import safepath

__all__ = [
    "DEFAULT_FILES",
    "GLOBAL_KNOWN_HOSTS",
    "RELAY_KEYWORDS",
    "USER_KNOWN_HOSTS",
    "SSHView",
    "resolve",
]

DEFAULT_FILES = ("~/.ssh/config", "/etc/ssh/ssh_config")
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")

# Keywords relay implements itself (asyncssh's parser does not know them).
RELAY_KEYWORDS = {"stricthostkeychecking": "StrictHostKeyChecking"}
# Keywords that cannot matter to relay's connections, so their absence is not worth a warning.
IRRELEVANT = frozenset(
    {
        "addkeystoagent", "batchmode", "checkhostip", "clearallforwardings", "controlmaster",
        "controlpath", "controlpersist", "dynamicforward", "escapechar", "exitonforwardfailure",
        "forwardx11", "forwardx11timeout", "gatewayports", "hashknownhosts", "localcommand",
        "localforward", "loglevel", "nohostauthenticationforlocalhost", "numberofpasswordprompts",
        "permitlocalcommand", "remoteforward", "sessiontype", "stdinnull", "streamlocalbindmask",
        "streamlocalbindunlink", "updatehostkeys", "usekeychain", "verifyhostkeydns",
        "visualhostkey", "xauthlocation", "forkafterauthentication", "logverbose",
        "ignoreunknown", "protocol", "kbdinteractivedevices",
    }
)  # fmt: skip


class _Reading(SSHClientConfig):
    """asyncssh's parser, which also keeps the keywords relay handles itself and notes the
    ones nobody implements (only where they apply to this host, as ssh would)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.unsupported: list[str] = []
        handlers = dict(type(self)._handlers)
        for low, name in RELAY_KEYWORDS.items():
            handlers[low] = (name, SSHClientConfig._set_string)
        self._handlers = _Noting(handlers, self)

    def parse(self, path: Path) -> None:
        """One file (and each it includes, through here too), refused as ssh refuses the
        user's ("Bad owner or permissions"): it names commands relay runs (ProxyCommand)."""
        why = safepath.unsafe_file(path)
        if why is not None:
            raise ValueError(f"bad owner or permissions on {path}: {why}")
        super().parse(path)


class _Noting(dict[str, Any]):
    def __init__(self, handlers: dict[str, Any], owner: _Reading) -> None:
        super().__init__(handlers)
        self._owner = owner

    def __missing__(self, keyword: str) -> Any:
        # asyncssh's parser asks only while the current Host/Match block applies
        if keyword not in IRRELEVANT and keyword not in self._owner.unsupported:
            self._owner.unsupported.append(keyword)
        raise KeyError(keyword)


@dataclass(frozen=True)
class SSHView:
    """One host as ssh_config describes it (unset keywords are ``None`` or empty)."""

    name: str  # what relay was asked to connect to (alias or host name)
    hostname: str
    port: int
    user: str
    files: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    unsupported: tuple[str, ...] = ()

    def get(self, keyword: str) -> Any:
        return self.options.get(keyword)

    @property
    def known_hosts_name(self) -> str:
        """The name keys are recorded under: HostKeyAlias, else the resolved host name."""
        return str(self.get("HostKeyAlias") or self.hostname)

    @property
    def user_known_hosts(self) -> list[str]:
        value = self.get("UserKnownHostsFile")
        return list(value) if value is not None else list(USER_KNOWN_HOSTS)

    @property
    def global_known_hosts(self) -> list[str]:
        value = self.get("GlobalKnownHostsFile")
        return list(value) if value is not None else list(GLOBAL_KNOWN_HOSTS)

    @property
    def strict_host_key_checking(self) -> str:
        value = str(self.get("StrictHostKeyChecking") or "ask").lower()
        return {"yes": "yes", "true": "yes", "no": "no", "false": "no", "off": "no"}.get(
            value, value if value in ("ask", "accept-new") else "ask"
        )


def _existing(files: Sequence[str]) -> list[str]:
    found = []
    for name in files:
        path = Path(name).expanduser()
        if os.access(path, os.R_OK) and path.is_file():
            found.append(str(path))
    return found


def _read(
    present: Sequence[str],
    final: bool,
    local_user: str,
    user: str | None,
    name: str,
    port: int | None,
) -> _Reading:
    reading = _Reading(None, False, False, final, local_user, user or (), name, port or ())
    for path in present:
        reading.parse(Path(path))
    return reading


def resolve(
    name: str,
    *,
    port: int | None = None,
    user: str | None = None,
    files: Sequence[str] = DEFAULT_FILES,
) -> SSHView:
    """``name`` (and a port and user given on relay's side, which win as on ssh's command
    line) as ssh_config resolves it. Raises ``ValueError`` for a file ssh would reject."""
    present = _existing(files)
    local_user = getpass.getuser()
    reading = _read(present, False, local_user, user, name, port)
    if reading.has_match_final():
        # ``Match final`` asks for a second reading, as asyncssh's connect (and ssh) does:
        # without it a ProxyJump or Port set there was missing from relay's view
        reading = _read(present, True, local_user, user, name, port)
    options = dict(reading._options)
    return SSHView(
        name=name,
        hostname=str(options.get("Hostname") or name),
        port=int(str(options.get("Port") or 22)),
        user=str(options.get("User") or local_user),
        files=tuple(present),
        options=options,
        unsupported=tuple(reading.unsupported),
    )
