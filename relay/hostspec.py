"""Ad-hoc host specs: ``[user@]host[:port]`` and ``ssh://[user@]host[:port]``. Pure.

IPv6 literals go in brackets (``alice@[2001:db8::1]:2222``). A password anywhere in a spec is
refused: secrets never travel in argv, where every local user can read them with ``ps``, nor in
logs. The refusal message never repeats the spec, so the password does not reach a log either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.lite.linkname import normalize_host, parse_port

__all__ = ["USERINFO_REFUSED", "USER_NAME", "HostSpec", "HostSpecError", "shown"]

USER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*\$?$")
USERINFO_REFUSED = (
    "a password in a host spec is refused (it would sit in argv and logs): "
    "authenticate with a key in identity_files or ssh-agent instead"
)


class HostSpecError(ValueError):
    """A host spec relay cannot use."""


@dataclass(frozen=True, slots=True)
class HostSpec:
    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> HostSpec:
        spec = text.strip()
        scheme = spec.lower().startswith("ssh://")
        if scheme:
            spec = spec[len("ssh://") :].rstrip("/")
        # before anything that repeats the spec: a password may hold any character
        if ":" in spec.rpartition("@")[0]:
            raise HostSpecError(USERINFO_REFUSED)
        if scheme and ("/" in spec or "?" in spec or "#" in spec):
            raise HostSpecError(
                f"host spec {text!r}: an ssh:// URL takes no path or query "
                f"(expected ssh://[user@]host[:port])"
            )
        if not spec:
            raise HostSpecError(
                "empty host spec: expected a [hosts] name from relay.toml, "
                "[user@]host[:port] or ssh://user@host:port"
            )
        userinfo, at, hostport = spec.rpartition("@")
        user: str | None = None
        if at:
            if not USER_NAME.match(userinfo):
                raise HostSpecError(f"host spec {text!r}: user name {userinfo!r} is not valid")
            user = userinfo
        host, port = _split_hostport(hostport, text)
        return cls(host=host, user=user, port=port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{user}{host}{port}"


def shown(text: str) -> str:
    """A host spec as a message may repeat it: a password in it (``user:pw@host``, refused
    by ``HostSpec.parse``) replaced by ``***``."""
    scheme = "ssh://" if text.lower().startswith("ssh://") else ""
    userinfo, at, rest = text[len(scheme) :].rpartition("@")
    if not at or ":" not in userinfo:
        return text
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{user}:***@{rest}"


def _split_hostport(hostport: str, text: str) -> tuple[str, int | None]:
    port_text: str | None = None
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise HostSpecError(f"host spec {text!r}: '[' without ']' around an IPv6 address")
        host, rest = hostport[1:close], hostport[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise HostSpecError(f"host spec {text!r}: expected ':PORT' after ']'")
            port_text = rest[1:]
        if ":" not in host:
            raise HostSpecError(f"host spec {text!r}: brackets are for IPv6 addresses only")
    else:
        if hostport.count(":") > 1:
            raise HostSpecError(
                f"host spec {text!r}: put an IPv6 address in brackets, e.g. [2001:db8::1]:22"
            )
        host, colon, port_text_or_empty = hostport.partition(":")
        port_text = port_text_or_empty if colon else None
    try:
        host = normalize_host(host) if host else ""
        port = parse_port(port_text, what="port") if port_text is not None else None
    except ValueError as exc:
        raise HostSpecError(f"host spec {text!r}: {exc}") from None
    if not host:
        raise HostSpecError(f"host spec {text!r} names no host")
    return host, port
