"""Only the user's own processes get through a link listener.

Every listener relay opens for a link, on the remote host (``relay.ssh.forwards``) or on the
front end's machine (``relay.ssh.exposed``), asks its host's ``PeerGuard`` before it carries a
connection anywhere. The guard looks up who made the connection (``relay.peerowner``: on the
remote host through the supervisor session, one round trip; locally in ``/proc`` or with
``lsof``) and admits it only if that process runs as the same user as the SSH login (remote)
or as the daemon (local), from a live socket on the loopback address the listener is bound to
(``relay.peerowner`` says why a closing socket is nobody's). A refused connection never reaches
the front end or the remote host:
the listener stays open for the real kernel, and the refusal is logged once per source uid per
minute with a count.

``peer_check = "off"`` in a host's table admits every connection unchecked (as ``ssh -R``
does); ``"uid"`` (the default) refuses what it cannot verify, and a launch on a host that
offers no way to verify (no ``/proc/net/tcp``) fails at once with a message saying so.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import structlog

from relay import fdlimit
from relay.errors import FrontEndUnreachable, PeerCheckUnavailable, RelayError, host_header
from relay.log import RateLimited
from relay.peerowner import (
    CLOSING,
    GONE,
    NO_FILES,
    UNKNOWN,
    has_proc_net,
    linux_listening,
    linux_taker,
    local_owner,
    lsof_path,
)

__all__ = ["LOOPBACK", "UNCHECKED", "PeerGuard", "taken_over", "unreachable"]

# The address relay's link listeners are bound to, as a peer on it is reported (sshd reports
# the originator of a forwarded connection; getpeername gives it locally, IPv4-mapped on a
# dual-stack socket). A client that bound another local address (127.0.0.2, the host's own
# LAN address) can reach a 127.0.0.1 listener too, and must not be looked up by port alone.
LOOPBACK = frozenset({"127.0.0.1", "::ffff:127.0.0.1"})
WHY = {
    GONE: "gone before it could be checked",
    UNKNOWN: "cannot tell",
    CLOSING: "closed before it could be checked (a closing socket is nobody's)",
    NO_FILES: "not checked: relay's daemon is out of open files (ulimit -n)",
}

# A refusal's log line: another user's process (a uid, or a connection from another local
# address), or one whose owner could not be checked (``WHY``: a socket that closed or went
# first, nothing to read it with). The second is the user's own kernel as often as not (one
# that exits as it connects): said as another user's, it sent its reader after a stranger
# who was not there
STRANGER = "refused a connection from another user's process"
UNCHECKED = "refused a connection relay could not check the owner of"

Lookup = Callable[[int, int], Awaitable[int]]


def unreachable(host: str, port: int, link: str, exc: OSError) -> FrontEndUnreachable:
    """The launch's error where relay's connection to the front end's port failed."""
    where = f"the front end's {host}:{port} ({link})"
    if fdlimit.exhausted(exc):
        return FrontEndUnreachable(fdlimit.out_of_files(f"relay could not connect to {where}"))
    return FrontEndUnreachable(
        f"the front end is not listening on {host}:{port} ({link}): {exc.strerror or exc}; "
        f"was the launch cancelled in the front end?"
    )


def taken_over(port: int, link: str, uid: int) -> FrontEndUnreachable:
    """The launch's error where ``PeerGuard.refusal`` says no, by what it found (``uid``):
    the daemon out of open files (``NO_FILES``: nothing could be read), a connection gone
    before it could be checked (a front end that reset it at once: a launch cancelled), or
    another user's listener."""
    if uid == NO_FILES:
        return FrontEndUnreachable(
            fdlimit.out_of_files(f"relay could not check who took the front end's port {port}")
        )
    if uid == GONE:
        return FrontEndUnreachable(
            f"the front end's port {port} ({link}) closed relay's connection before relay could "
            f"check whose it was: relay did not connect the kernel to it; was the launch "
            f"cancelled in the front end?"
        )
    return FrontEndUnreachable(
        f"the front end's port {port} ({link}) was taken by another user's listener, not the "
        f"front end's: relay did not connect the kernel to it; was the launch cancelled in "
        f"the front end?"
    )


class PeerGuard:
    """Admits a connection to a listener only from a process of ``uid``."""

    def __init__(
        self,
        *,
        where: str,
        host: str,
        uid: int | None,
        lookup: Lookup,
        can_tell: bool,
        enabled: bool = True,
    ) -> None:
        self.where = where  # "remote" or "local": which machine the listeners are on
        self.host = host
        self.uid = uid
        self._lookup = lookup
        self.can_tell = can_tell and uid is not None
        self.enabled = enabled
        log = structlog.get_logger("relay.guard").bind(host=host, side=where)
        self.refusals = RateLimited(log, STRANGER)
        self.unchecked = RateLimited(log, UNCHECKED)

    @classmethod
    def remote(
        cls, host: str, uid: int | None, lookup: Lookup, *, can_tell: bool, enabled: bool
    ) -> PeerGuard:
        return cls(
            where="remote", host=host, uid=uid, lookup=lookup, can_tell=can_tell, enabled=enabled
        )

    @classmethod
    def local(cls, host: str, *, enabled: bool) -> PeerGuard:
        can_tell = has_proc_net() or lsof_path() is not None
        return cls(
            where="local",
            host=host,
            uid=os.getuid(),
            lookup=local_owner,
            can_tell=can_tell,
            enabled=enabled,
        )

    @property
    def state(self) -> str:
        """For ``relay status``: what this guard does."""
        if not self.enabled:
            return "off"
        return "uid" if self.can_tell else "unavailable"

    def require(self) -> None:
        """Fail a launch at once where connections cannot be verified."""
        if self.enabled and not self.can_tell:
            machine = self.host if self.where == "remote" else "this machine"
            raise PeerCheckUnavailable(
                f"relay cannot tell which user connects to its listeners on {machine} (no "
                f"/proc/net/tcp{'' if self.where == 'remote' else ' or lsof'}), so it will "
                f'not carry links there; set peer_check = "off" in {host_header(self.host)} to '
                f"accept such connections unverified, as ssh -R does"
            )

    async def admit(
        self,
        client_host: str,
        client_port: int,
        listen_port: int,
        link: str,
        *,
        closing: Callable[[], object] | None = None,
    ) -> bool:
        """Whether the connection from ``client_host:client_port`` may be carried: from the
        listener's loopback address, by a live socket of the user's own uid. ``closing`` is
        called when it is refused because its socket closed before it could be checked."""
        if not self.enabled:
            return True
        if client_host not in LOOPBACK:
            self.refusals.warn(
                "@",  # any of 127.0.0.0/8 (millions): one key, the address said in the line
                foreign_uid=f"from {client_host}, not 127.0.0.1",
                listener=listen_port,
                link=link,
            )
            return False
        try:
            uid = await self._lookup(client_port, listen_port) if self.can_tell else UNKNOWN
        except RelayError:  # the connection (and its supervisor) went away mid-check
            uid = UNKNOWN
        if uid == self.uid and uid >= 0:
            return True
        if uid == CLOSING and closing is not None:
            closing()
        self._refused(uid, listener=listen_port, link=link)
        return False

    @property
    def refused(self) -> int:
        """Connections refused, for ``relay status``: strangers' and those not checked."""
        return self.refusals.total + self.unchecked.total

    def _refused(self, uid: int, *, listener: int, link: str) -> None:
        """Logged once a minute per ``uid``, under the line that says what it was."""
        if uid in WHY:
            self.unchecked.warn(uid, reason=WHY[uid], listener=listener, link=link)
        else:
            self.refusals.warn(uid, foreign_uid=uid, listener=listener, link=link)

    def reached(self, transport: object, link: str) -> bool:
        """Whether relay's own connection to the front end (``transport``, to 127.0.0.1) was
        taken by a listener of the user's (``refusal``)."""
        return self.refusal(transport, link) is None

    def refusal(self, transport: object, link: str) -> FrontEndUnreachable | None:
        """None where relay's own connection to the front end (``transport``, to 127.0.0.1)
        was taken by a listener of the user's; else the launch's error, and the refusal
        logged. The front end's may have closed (a launch given up) and another user's taken
        its port, which would then be given the kernel's link. Looked at before a byte goes
        either way, on this machine's own tables (``relay.peerowner.linux_taker``); where
        there are none (macOS), not looked at."""
        get = getattr(transport, "get_extra_info", None)
        ours, theirs = (get("sockname"), get("peername")) if get is not None else (None, None)
        if not self.enabled or not has_proc_net() or not ours or not theirs:
            return None
        if theirs[0] not in LOOPBACK:  # the front end's own address (its link name's): not
            return None  # a loopback row to look up
        uid = linux_taker(theirs[1], ours[1])
        if uid == CLOSING and self.uid is not None:
            # taken, and already closed by its process (a front end that writes, or not, and
            # closes at once): nobody's now, so whoever listens on the port says (another
            # user's listener is refused: it may have written before it closed)
            listening = linux_listening(theirs[1], self.uid)
            uid = self.uid if listening in (self.uid, GONE) else listening
        if uid == self.uid and uid >= 0:
            return None
        self._refused(uid, listener=theirs[1], link=f"{link}, relay's connection")
        return taken_over(theirs[1], link, uid)
