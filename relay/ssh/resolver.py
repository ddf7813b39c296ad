"""Host names resolved for relay's direct connections: in threads of relay's own, one look-up
per name at a time, never on the event loop's resolver.

Under uvloop a name is resolved in libuv's pool of four threads, of which at most two resolve
names at once. A name whose DNS server has gone (a VPN down: the site's names take 20-40 s
to fail) held both: each connect attempt that timed out left its look-up running, each retry
and each hedged attempt of a resume started another, and a healthy host that needed a
look-up waited behind them, its launch failing after 30 s (a review's reproduction). Here
every attempt for a name joins the look-up in flight for it, in a daemon thread of its own
(one per name being looked up: a host's, not an attempt's), so one host's dead DNS holds up
no other host, nor the daemon's exit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

from relay.tasks import in_thread

__all__ = ["addresses", "in_flight"]

Infos = list[tuple[Any, ...]]

getaddrinfo = socket.getaddrinfo  # the look-up itself (the C library's); tests stand in for it
_pending: dict[tuple[str, int, int], asyncio.Future[Infos]] = {}


def in_flight() -> int:
    """Look-ups running now (for tests and `relay status`)."""
    return len(_pending)


async def addresses(host: str, port: int, family: int = socket.AF_UNSPEC) -> list[str]:
    """``host``'s addresses for TCP, in the resolver's order (an address is itself), of
    ``family`` if given (ssh_config's AddressFamily)."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))  # a scope (%eth0) is kept
    except ValueError:
        pass
    else:
        wrong = {socket.AF_INET: 6, socket.AF_INET6: 4}.get(socket.AddressFamily(family))
        if literal.version == wrong:
            raise socket.gaierror(socket.EAI_FAMILY, "Address family for hostname not supported")
        return [str(literal)]
    key = (host, port, int(family))
    pending = _pending.get(key)
    if pending is None or pending.get_loop() is not asyncio.get_running_loop():
        # (another loop's: one that closed before its look-up ended never settles it)
        pending = _pending[key] = _look_up(host, port, family)
        pending.add_done_callback(lambda done: _forget(key, done))
    infos = await asyncio.shield(pending)  # a cancelled attempt leaves it to the others
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def _forget(key: tuple[str, int, int], done: asyncio.Future[Infos]) -> None:
    if _pending.get(key) is done:
        del _pending[key]
    if not done.cancelled():
        done.exception()  # retrieved: an error nobody awaits any more is not news


def _look_up(host: str, port: int, family: int) -> asyncio.Future[Infos]:
    return in_thread(
        f"resolve:{host}",
        lambda: list(getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)),
    )
