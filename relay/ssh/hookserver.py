"""A controller kernel's control channel to the daemon (the protocol is ``relay.lite.hook``).

A listener on the kernel's 127.0.0.1, served inside the daemon: an sshd remote listener
(server-chosen port), or, on a host with relay's agent, the agent's (``serve`` in
docs/agent.md: its requests and replies travel on one resumable stream, so the channel
outlives an outage as the links do). Each connection carries one request, authenticated by
the single-use token chain. A refused
token is logged and answered ``ERR -``; another local user on the remote host can reach the
port but not the token, which lives only in the kernel's environment (``/proc/PID/environ``
is readable by its owner alone).

The links a kernel opens here belong to it and are released when it exits. A kernel may only
ask for callbacks to loopback addresses or to its own front end's host, so it cannot make the
daemon connect anywhere else on the front end's network.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncssh
import structlog

from relay.agent.expose import AgentExpose
from relay.agent.forward import AgentForward
from relay.agent.session import AgentSession, Stream
from relay.errors import BadRequest, ForwardFailed, RelayError, error_event
from relay.lite import hook
from relay.lite.linkname import LinkName, LinkNameError
from relay.log import RateLimited
from relay.ssh.exposed import ExposeForward
from relay.ssh.forwards import CallbackForward, RemoteSlot, hold_until_connected, open_slots
from relay.ssh.guard import PeerGuard
from relay.tasks import TaskSet

__all__ = ["HookServer"]

REQUEST_TIMEOUT_S = hook.REQUEST_TIMEOUT_S


class _HookSession(asyncssh.SSHTCPSession[bytes]):
    """One request on the control channel: a line in, a line out, then close."""

    def __init__(self, server: HookServer) -> None:
        self._server = server
        self._buf = b""
        self._done = False
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan
        self._timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT_S, chan.close)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._done:
            return
        self._buf += data
        if b"\n" in self._buf or len(self._buf) > hook.MAX_LINE:
            self._dispatch()

    def eof_received(self) -> bool:
        if not self._done:
            self._dispatch()
        return True

    def _dispatch(self) -> None:
        assert self._chan is not None
        if self._timer is not None:
            self._timer.cancel()
        self._done = True
        line = self._buf.split(b"\n", 1)[0][: hook.MAX_LINE + 1]
        chan = self._chan

        def reply(text: str) -> None:
            # the kernel's hook may have given up and closed (its own timeout), or the
            # connection gone: asyncssh raises on a closed channel, and there is no one to
            # tell; not a bug to log with a traceback
            try:
                with contextlib.suppress(OSError, asyncssh.Error):
                    chan.write(text.encode())
                    chan.write_eof()
            finally:
                chan.close()

        self._server.answer_later(line.decode("utf-8", "replace"), reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _AgentRequests:
    """A serve stream's sink: the agent's "N LINE" requests in, "N REPLY" lines back on the
    stream (both kept and replayed across an outage like any link's bytes)."""

    def __init__(self, server: HookServer, stream: Stream) -> None:
        self._server = server
        self._stream = stream
        self._buf = b""

    def write(self, data: bytes) -> None:
        self._buf += data
        while b"\n" in self._buf:
            raw, _, self._buf = self._buf.partition(b"\n")
            n, _, line = raw.decode("utf-8", "replace").partition(" ")
            if n.isdigit():
                self._server.answer_later(line, self._replier(n))
        if len(self._buf) > 2 * hook.MAX_LINE:  # the agent cuts lines shorter: not a request
            self._buf = b""

    def _replier(self, n: str) -> Callable[[str], None]:
        return lambda text: self._stream.send(f"{n} {text}".encode())

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass  # replies are a line each, one per request

    def resume_reading(self) -> None:
        pass


class HookServer:
    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        *,
        remote_guard: PeerGuard,
        local_guard: PeerGuard,
        host: str,
        kernel_id: str,
        frontend_host: str,
        timeout_s: float,
        agent: AgentSession | None = None,
    ) -> None:
        self._conn = conn
        self._agent = agent  # the host's agent: the channel and links go through it
        self._remote_guard = remote_guard
        self._local_guard = local_guard
        self._host = host
        self._frontend_host = frontend_host
        self._timeout_s = timeout_s
        self._chain = hook.TokenChain()
        self.first_token = self._chain.current
        self._slot: RemoteSlot | None = None
        self._stream: Stream | None = None
        self._forwards: list[CallbackForward | AgentForward] = []
        self._exposed: dict[str, ExposeForward | AgentExpose] = {}
        self._tasks = TaskSet()
        self.port = 0
        self._log = structlog.get_logger("relay.hook").bind(host=host, kernel=kernel_id)
        # anyone on the remote host can connect to the control channel: refusals are counted
        # and logged at most once a minute, so a flood cannot rotate real logs away
        self.refusals = RateLimited(self._log, "hook request refused")

    @classmethod
    async def open(
        cls, conn: asyncssh.SSHClientConnection, *, slot: RemoteSlot | None = None, **kwargs: Any
    ) -> HookServer:
        """Serve on the host's agent if given one, else on ``slot`` (a spare remote
        listener), or on a new one."""
        self = cls(conn, **kwargs)
        if self._agent is not None:
            self._stream, self.port = await self._agent.serve()
            self._stream.attach(_AgentRequests(self, self._stream))
            return self
        if slot is None:
            (slot,) = await open_slots(conn, 1, self._host)
        self._slot = slot
        self.port = slot.port
        slot.route = self._session
        return self

    def _session(self, _orig_host: str, _orig_port: int) -> _HookSession:
        return _HookSession(self)

    def answer_later(self, line: str, reply: Callable[[str], None]) -> None:
        async def answer() -> None:
            reply(await self._answer(line))

        self._tasks.spawn(answer(), name="hook-request")

    async def _answer(self, line: str) -> str:
        try:
            req = hook.parse_request(line)
        except hook.HookError as exc:
            self.refusals.warn("malformed", reason=str(exc))
            return hook.format_reply(False, None, str(exc))
        nxt = self._chain.spend(req.token)
        if nxt is None:
            self.refusals.warn("token", reason="token refused (wrong, reused or missing)")
            return hook.format_reply(False, None, "token refused")
        try:
            result = await self._dispatch(req)
        except (RelayError, LinkNameError, ValueError, asyncssh.Error, OSError) as exc:
            failure = error_event(
                exc
                if isinstance(exc, RelayError)
                else BadRequest(str(exc))
                if isinstance(exc, ValueError)
                else ForwardFailed(f"cannot open the link: {exc}")
            )
            self._log.warning("hook request failed", op=req.op, error=failure["message"])
            return hook.format_reply(False, nxt, failure["message"])
        self._log.info("hook request", op=req.op, argument=req.argument, result=result)
        return hook.format_reply(True, nxt, result)

    async def _dispatch(self, req: hook.Request) -> str:
        if req.op == "callback":
            target = LinkName.parse(req.argument)
            if not hook.front_end_name(req.argument, self._frontend_host):
                raise ValueError(
                    f"callback to {req.argument} refused: only loopback or the "
                    f"front end's own address ({self._frontend_host})"
                )
            fwd: CallbackForward | AgentForward
            if self._agent is not None:
                fwd = await AgentForward.open(self._agent, target, self._local_guard)
            else:
                fwd = await CallbackForward.open(
                    self._conn, target, self._host, self._remote_guard, self._local_guard
                )
            self._forwards.append(fwd)
            self._tasks.spawn(hold_until_connected(fwd, self._timeout_s), name="hook-callback")
            return str(fwd.name)
        if req.op == "listen-pair":
            local: ExposeForward | AgentExpose
            if self._agent is not None:
                local = await AgentExpose.mirrored(self._agent, self._local_guard)
            else:
                local = await ExposeForward.mirrored(self._conn, self._local_guard)
            self._exposed[str(local.name)] = local
            self._tasks.spawn(hold_until_connected(local, self._timeout_s), name="hook-listen")
            return str(local.name)
        if req.op == "skipped":
            # the front end's link set-up made a link the hook did not redirect (relay.lite.hook)
            self._log.warning("hook left a link name alone", name=req.argument)
            return "noted"
        released = self._exposed.pop(req.argument, None)
        if released is None:
            raise ValueError(f"no pair {req.argument} to release")
        await released.aclose()
        return "released"

    @property
    def callbacks(self) -> list[CallbackForward | AgentForward]:
        return list(self._forwards)

    def snapshot(self) -> list[dict[str, Any]]:
        links: list[dict[str, Any]] = [
            {"kind": "callback", "channels": f.snapshot()} for f in self._forwards
        ]
        links += [{"kind": "listen-pair", "channels": e.snapshot()} for e in self._exposed.values()]
        return links

    async def aclose(self) -> None:
        if self._stream is not None and self._agent is not None:
            self._agent.drop(self._stream)
            self._stream = None
        if self._slot is not None:
            self._slot.close()
            await self._slot.wait_closed()
            self._slot = None
        await self._tasks.aclose()
        for fwd in self._forwards:
            await fwd.aclose()
        for exposed in self._exposed.values():
            await exposed.aclose()
        self._forwards.clear()
        self._exposed.clear()
