"""TCPIP link names: parse, format and rewrite. Pure.

A TCPIP link is two TCP connections and its name is ``DATAPORT@HOST,MESSAGEPORT@HOST``
(docs/topology.md §1): the first endpoint carries the data stream, the second the
urgent message channel. The ports need not be adjacent. HOST is an IPv4 literal, a host name or
an IPv6 literal (MathLink writes it bare, e.g. ``5000@::1``; a bracketed form is accepted too).
A single ``PORT@HOST`` is the deprecated ``TCP`` protocol, which relay does not carry.

relay rewrites the front end's name ``P1@H1,P2@H2`` into ``R1@127.0.0.1,R2@127.0.0.1``, where
R1 and R2 are remote listeners that lead back to H1:P1 and H2:P2.
"""

from __future__ import annotations

__all__ = ["LOOPBACK", "Endpoint", "LinkName", "LinkNameError"]

_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
EXAMPLE = "53994@127.0.0.1,39359@127.0.0.1"
LOOPBACK = "127.0.0.1"  # where forwards listen, on either side


class LinkNameError(ValueError):
    """A link name that is not ``DATAPORT@HOST,MESSAGEPORT@HOST``."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def parse_port(text: str, *, what: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{what} {_shown(text)} is not a number")
    # Checked on the text: a huge number is never converted, nor printed back in full.
    if len(text.lstrip("0")) > 5 or not 1 <= int(text) <= 65535:
        raise ValueError(f"{what} {_shown(text)} is outside 1-65535")
    return int(text)


def _is_hostname(host: str) -> bool:
    """A DNS name or IPv4 literal: letters, digits, '_', '.', '-'; 1-253 characters; neither
    starting with '.' or '-' nor ending with '-' (a trailing '.' is the root)."""
    name = host[:-1] if host.endswith(".") else host
    return (
        0 < len(host) <= 253
        and bool(name)
        and set(name) <= _HOST_CHARS
        and name[0] not in ".-"
        and name[-1] not in ".-"
    )


def normalize_host(text: str) -> str:
    """Validate a host as it may appear in a link name; return it without IPv6 brackets."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if ":" in host:
        import ipaddress  # only for IPv6 literals: the simulator kernel starts fast

        address, _, scope = host.partition("%")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise ValueError(f"host {_shown(text)} is not a valid IPv6 address") from None
        # A scope id is an interface name or number: it reaches the remote host's shell and
        # the supervisor's line protocol, so nothing else may ride on it.
        if "%" in host and not (scope and len(scope) <= 64 and set(scope) <= _HOST_CHARS):
            raise ValueError(f"host {_shown(text)} has an invalid IPv6 scope id")
        return host
    if not _is_hostname(host):
        raise ValueError(f"host {_shown(text)} is not a host name or IP address")
    return host


class _Value:
    """Frozen value objects without ``dataclasses`` (whose import pulls in ``inspect``)."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Value) and type(other) is type(self) and self._key() == other._key()
        )

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"


class Endpoint(_Value):
    """One TCP endpoint of a link: ``PORT@HOST``."""

    __slots__ = ("host", "port")
    _fields = ("port", "host")
    port: int
    host: str

    def __init__(self, port: int, host: str) -> None:
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "host", host)

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        port, sep, host = text.strip().partition("@")
        if not sep:
            raise ValueError(f"endpoint {_shown(text)} has no '@' (expected PORT@HOST)")
        return cls(parse_port(port, what="port"), normalize_host(host))

    def __str__(self) -> str:
        return f"{self.port}@{self.host}"


def _is_endpoint(text: str) -> bool:
    try:
        Endpoint.parse(text)
    except ValueError:
        return False
    return True


class LinkName(_Value):
    """A TCPIP link name: the data endpoint and the urgent-message endpoint."""

    __slots__ = ("data", "message")
    _fields = ("data", "message")
    data: Endpoint
    message: Endpoint

    def __init__(self, data: Endpoint, message: Endpoint) -> None:
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "message", message)

    @classmethod
    def parse(cls, text: str) -> LinkName:
        stripped = text.strip()
        if not stripped:
            raise LinkNameError(
                f"empty link name: expected DATAPORT@HOST,MESSAGEPORT@HOST (e.g. {EXAMPLE})"
            )
        parts = stripped.split(",")
        if len(parts) == 1 and _is_endpoint(parts[0]):
            raise LinkNameError(
                f"link name {_shown(text)} has one endpoint: that is the deprecated TCP protocol; "
                f"use -LinkProtocol TCPIP so the front end creates DATAPORT@HOST,MESSAGEPORT@HOST"
            )
        if len(parts) > 2:
            raise LinkNameError(
                f"link name {_shown(text)} has {len(parts)} endpoints: expected "
                f"DATAPORT@HOST,MESSAGEPORT@HOST (e.g. {EXAMPLE})"
            )
        try:
            if len(parts) == 1:
                raise ValueError("it has no ',' between the two endpoints")
            return cls(Endpoint.parse(parts[0]), Endpoint.parse(parts[1]))
        except ValueError as exc:
            raise LinkNameError(
                f"malformed link name {_shown(text)}: {exc} "
                f"(expected DATAPORT@HOST,MESSAGEPORT@HOST, "
                f"e.g. {EXAMPLE})"
            ) from None

    def __str__(self) -> str:
        return f"{self.data},{self.message}"

    @classmethod
    def loopback(cls, data_port: int, message_port: int) -> LinkName:
        """``DATA@127.0.0.1,MESSAGE@127.0.0.1``: a link carried by two forwards, named by their
        listeners on loopback (the rewritten name a kernel connects to, or an expose forward's
        on the front end's machine). The one place such a name is made."""
        return cls(Endpoint(data_port, LOOPBACK), Endpoint(message_port, LOOPBACK))
