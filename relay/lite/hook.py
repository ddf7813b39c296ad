"""The kernel hook protocol: how a controller kernel asks relay for Dynamic's links. Pure.

This docstring is the protocol's one definition. ``relay/wolfram/RelayKernelInit.wl`` (the hook
a real kernel runs) and ``relay.sim.kernel`` (the simulator) both follow it; a test compares the
request lines the two produce for the same inputs.

Transport: one TCP connection per request to ``127.0.0.1:$RELAY_HOOK_PORT`` on the kernel's
host (a remote forward of the daemon's; it accepts nothing from elsewhere). The kernel writes
one request line; the daemon answers one reply line and closes the connection, so a reader can
simply read until end of stream (``ReadString[socket]``).

    request:  RELAY1 <token> <op> <argument>\\n
    reply:    OK <next-token> <result>\\n
              ERR <next-token> <message>\\n
              ERR - <message>\\n            the token was refused; the previous one stays valid

Tokens: the first is ``$RELAY_HOOK_TOKEN`` (the kernel's environment, never argv). Every reply
carries the next one, and each token is good for one request, so a token seen by anyone else
is already spent; with one exception: a reply can be lost (the kernel gave up waiting during
an outage, and its request reached the daemon once the path was back), so the token last
spent is taken again, answered with the same next token, until that next one is used. Without
that, a kernel whose reply was lost kept a spent token, and every request after it was
refused for the kernel's life. Requests are sequential.

Operations (``<argument>`` is ``-`` when there is none):

``callback <linkname>``  (new method, 11.1 and later) The front end created a listening link
    ``<linkname>`` on its own machine and sent its name inside the main link. relay opens two
    remote listeners on the kernel's 127.0.0.1 leading back to it. Result: the rewritten name
    ``R1@127.0.0.1,R2@127.0.0.1``, which the kernel connects to with ``LinkMode -> Connect``.
``listen-pair -``  (old method, up to 11.0) relay picks two free ports L1, L2 on the front
    end's 127.0.0.1, listens there, and tunnels each accepted connection to the same port on
    the kernel's 127.0.0.1. Result: ``L1@127.0.0.1,L2@127.0.0.1``. The kernel listens on that
    name (``CreateFrontEndLink``) and the front end, receiving the same name in
    ``OpenParallelLinksPacket``, can connect to it.
``release <linkname>``  (old method) The kernel could not listen on that pair (a port was
    taken on its host); relay closes its listeners and the kernel asks again. Result: released.
``skipped <linkname>``  (new method) While the front end set up its links, the kernel made a
    connect-mode link to a name that ``front_end_name`` does not accept, and left it alone;
    relay logs it. ``<linkname>`` is made one word (``loggable_name``). Result: noted.

Which names the hook redirects (``front_end_name``): ``P1@H1,P2@H2`` with decimal ports, where
each host is the front end's own (``$RELAY_FRONTEND_HOST``, the host of the kernel's main link),
``localhost``, ``::1`` or a dotted ``127.x.y.z``. The daemon refuses callbacks to anything else,
by the same function, so a kernel cannot make it connect elsewhere on the front end's network.
The hook asks only while the front end sets its links up (inside ``MathLink`CreateFrontEndLinks``,
or before the first two callbacks): user code that later connects to a link on the kernel host's
own loopback is not sent to the front end.

Time limits: the kernel waits at most ``$RELAY_HOOK_TIMEOUT`` seconds (``REQUEST_TIMEOUT_S``)
for a reply. When ``SocketConnect`` fails or stays silent it tries once more through bash's
``/dev/tcp`` (``BASH_TRANSPORT``, which bounds its own read); when both fail, the kernel says so
once and goes on without relay: the new method's link is ``$Failed`` (never the same name on
the kernel's own loopback, which might be anyone's port), the old method's a plain listening
``LinkCreate``, as Tunnel's ``tunnel.m`` fell back.

Which method applies is decided by the hook from the kernel's ``$VersionNumber`` (11.1 and
later: new), unless the host's ``dynamic_method`` (``$RELAY_DYNAMIC_METHOD``) says old or new.
"""

from __future__ import annotations

__all__ = [
    "BASH_TRANSPORT",
    "OPS",
    "REQUEST_TIMEOUT_S",
    "HookError",
    "Request",
    "TokenChain",
    "choose_method",
    "format_reply",
    "front_end_name",
    "loggable_name",
    "parse_reply",
    "parse_request",
    "request_line",
]

MAGIC = "RELAY1"
OPS = ("callback", "listen-pair", "release", "skipped")
MAX_LINE = 4096
NAME_SHAPE = "[0-9]+@[^@,]+,[0-9]+@[^@,]+"  # a two-endpoint TCPIP link name; a regex in both
REQUEST_TIMEOUT_S = 10.0  # the kernel's wait for a reply; the daemon closes a channel after it

# The hook's second transport, for kernels without sockets or when SocketConnect fails: run as
# ``bash -c BASH_TRANSPORT relay-hook PORT TIMEOUT`` with the request line on stdin (a token never
# goes in argv). It prints the reply line, or exits non-zero within TIMEOUT seconds.
BASH_TRANSPORT = (
    'IFS= read -r line || exit 3; exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 4; '
    'printf "%s\\n" "$line" >&3; IFS= read -r -t "$2" reply <&3 || exit 5; '
    'printf "%s\\n" "$reply"'
)
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class HookError(ValueError):
    """A request line that is not the protocol."""


class Request:
    __slots__ = ("argument", "op", "token")

    def __init__(self, token: str, op: str, argument: str) -> None:
        self.token, self.op, self.argument = token, op, argument


def request_line(token: str, op: str, argument: str = "-") -> str:
    """The line a kernel sends (what RelayKernelInit.wl's requestLine builds)."""
    return f"{MAGIC} {token} {op} {argument or '-'}\n"


def parse_request(line: str) -> Request:
    if len(line) > MAX_LINE:
        raise HookError("request too long")
    words = line.rstrip("\r\n").split(" ")
    if len(words) != 4 or words[0] != MAGIC:
        raise HookError(f"not a {MAGIC} request")
    _, token, op, argument = words
    if op not in OPS:
        raise HookError(f"unknown operation {op[:20]!r}")
    return Request(token, op, argument)


def format_reply(ok: bool, next_token: str | None, text: str) -> str:
    one_line = " ".join(text.split())
    return f"{'OK' if ok else 'ERR'} {next_token or '-'} {one_line}\n"


def parse_reply(line: str) -> tuple[bool, str | None, str]:
    status, _, rest = line.rstrip("\r\n").partition(" ")
    token, _, text = rest.partition(" ")
    if status not in ("OK", "ERR"):
        raise HookError(f"not a reply: {line[:60]!r}")
    spent = token == "-"  # noqa: S105 (the protocol's placeholder, not a secret)
    return status == "OK", None if spent else token, text


def _routable(host: str, frontend_host: str) -> bool:
    if host in (frontend_host, "localhost", "::1"):
        return True
    # re is imported here, not above: the simulator kernel imports this module at every start,
    # and re (with enum) is a fifth of what that start costs (relay.sim.kernel)
    import re

    return re.fullmatch(r"127\.[0-9]+\.[0-9]+\.[0-9]+", host) is not None


def front_end_name(name: str, frontend_host: str) -> bool:
    """Is ``name`` a link on the front end's side that the hook may redirect (and the daemon may
    call back to)? RelayKernelInit.wl's ``frontEndNameQ`` is the same rule; a test compares them."""
    import re  # see _routable

    if re.fullmatch(NAME_SHAPE, name) is None:
        return False
    parts = name.replace(",", "@").split("@")
    return _routable(parts[1], frontend_host) and _routable(parts[3], frontend_host)


def loggable_name(name: str) -> str:
    """A link name as one word of a request line (``skipped``): at most 200 characters, no
    whitespace or control characters (RelayKernelInit.wl's ``oneWord``)."""
    return "".join(c if " " < c <= "~" else "_" for c in name[:200]) or "-"


def choose_method(version: float, override: str = "auto") -> str:
    """Old (up to 11.0) or new (11.1 and later) front-end link method."""
    if override in ("old", "new"):
        return override
    return "new" if version >= 11.1 else "old"


class TokenChain:
    """Single-use tokens: each accepted request spends the current one and names the next.
    The one spent last is taken again until its successor is used: its reply may have been
    lost (see the module's docstring)."""

    def __init__(self, first: str | None = None) -> None:
        self.current = first or new_token()
        self._spent: str | None = None  # the token last spent, while its successor is unused

    def spend(self, presented: str) -> str | None:
        """The next token if ``presented`` is the current one (or was, and its successor has
        not been used: asked again after a lost reply, it gets the same next token), else
        None (nothing changes)."""
        import hmac  # the daemon's side; kernels only build request lines

        well_formed = 16 <= len(presented) <= 128 and set(presented) <= _TOKEN_CHARS
        if not well_formed:
            return None
        if hmac.compare_digest(presented, self.current):
            self._spent, self.current = self.current, new_token()
            return self.current
        if self._spent is not None and hmac.compare_digest(presented, self._spent):
            return self.current
        return None


def new_token() -> str:
    import secrets

    return secrets.token_urlsafe(32)
