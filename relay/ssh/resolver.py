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
import contextlib
import ipaddress
import socket
import threading
from typing import Any

__all__ = ["addresses", "in_flight"]

Infos = list[tuple[Any, ...]]

getaddrinfo = socket.getaddrinfo  # the look-up itself (the C library's); tests stand in for it
_pending: dict[tuple[str, int], asyncio.Future[Infos]] = {}


def in_flight() -> int:
    """Look-ups running now (for tests and `relay status`)."""
    return len(_pending)


async def addresses(host: str, port: int) -> list[str]:
    """``host``'s addresses for TCP, in the resolver's order (an address is itself)."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]").partition("%")[0]))]
    except ValueError:
        pass
    key = (host, port)
    pending = _pending.get(key)
    if pending is None:
        pending = _pending[key] = _look_up(host, port)
        pending.add_done_callback(lambda done: _forget(key, done))
    infos = await asyncio.shield(pending)  # a cancelled attempt leaves it to the others
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def _forget(key: tuple[str, int], done: asyncio.Future[Infos]) -> None:
    if _pending.get(key) is done:
        del _pending[key]
    if not done.cancelled():
        done.exception()  # retrieved: an error nobody awaits any more is not news


def _look_up(host: str, port: int) -> asyncio.Future[Infos]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Infos] = loop.create_future()

    def settle(result: Infos | BaseException) -> None:
        if future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    def work() -> None:
        result: Infos | BaseException
        try:
            result = list(getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as exc:  # handed to the awaiting attempts
            result = exc
        # RuntimeError: the loop closed meanwhile (the daemon exited): nobody waits
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result)

    threading.Thread(target=work, name=f"resolve:{host}", daemon=True).start()
    return future
