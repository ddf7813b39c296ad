"""A host's attempts to connect (``HostSession``): one the resume lets go at its window's
end, and ``relay login`` waiting on a launch's attempt. The connect itself is scripted: what
is tested is who waits for which attempt, and what a cancellation reaches."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from relay.errors import ConnectFailed
from relay.settings import HostConfig
from relay.ssh.host import HostSession


async def test_an_attempt_let_go_at_the_windows_end_is_not_joined_by_the_next_launch() -> None:
    """At a window's end the resume's own attempt to connect is cancelled (nobody waits for
    it). A launch or ``relay check`` that comes while it winds down (its hedged attempts
    gathered: a loop turn or more) joined it, and got its cancellation: the launch's task
    ended as cancelled, with no line (a review's finding). It starts an attempt of its own."""
    host = HostSession("host", HostConfig(hostname="h"), tag="00", ssh_files=())
    winding_down = asyncio.Event()
    wound_down = asyncio.Event()
    fresh = object()
    calls = 0

    async def connect() -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            return fresh
        try:
            await asyncio.Event().wait()  # the dead path
        except asyncio.CancelledError:
            winding_down.set()
            await wound_down.wait()  # its attempts gathered
            raise

    host._connect = connect  # type: ignore[method-assign]
    resume = asyncio.ensure_future(host.connection())  # the resume's live(), under its timeout
    await asyncio.sleep(0)
    let_go = host._connecting
    assert let_go is not None
    resume.cancel()  # the window ran out
    await asyncio.gather(resume, return_exceptions=True)
    assert host._connect_waiters == 0
    host._let_go_of_attempt()  # as the resume's end does (its last waiter gone did already)
    assert host._connecting is None
    await winding_down.wait()
    assert await asyncio.wait_for(host.connection(), 10) is fresh  # a launch meanwhile
    wound_down.set()
    await asyncio.gather(let_go, return_exceptions=True)
    assert let_go.cancelled() and host._connecting is None
    await host.aclose()


class _Conn:
    """A connection that is open until the host closes it."""

    def is_closed(self) -> bool:
        return False

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


async def test_a_launch_waiting_on_a_resume_outlives_an_attempt_of_the_resumes_that_fails() -> None:
    """A launch during an outage joins the resume's attempt under way. That attempt, made on
    the dead path just before it came back, fails at its own bound; the resume's next one,
    after its backoff, gets through. The launch failed at once with the first's error ("was
    not back"), its own deadline seconds away (CI, in parallel: back 0.4 s later). It waits
    for the resume to its deadline."""
    host = HostSession("host", HostConfig(hostname="h"), tag="00", ssh_files=())
    fresh = cast(Any, _Conn())
    dead_path_fails = asyncio.Event()
    calls = 0

    async def connect() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await dead_path_fails.wait()
            raise ConnectFailed("127.0.0.1:22 accepted TCP but sent no SSH banner in 7.0 s")
        return fresh

    host._connect = connect  # type: ignore[method-assign]

    async def resume() -> None:  # the resume's loop: an attempt, its failure, the next one
        try:
            await host.connection()
        except ConnectFailed:
            host._conn = await host.connection()  # after its backoff: back

    host._resuming = asyncio.ensure_future(resume())
    await asyncio.sleep(0)
    assert host.resuming and host._connecting is not None
    loop = asyncio.get_running_loop()
    launch = asyncio.ensure_future(host.connection_by(loop.time() + 30))
    await asyncio.sleep(0)
    dead_path_fails.set()
    assert await asyncio.wait_for(launch, 10) is fresh
    assert calls == 2
    await host.aclose()


async def test_a_login_whose_person_hung_up_during_a_launchs_attempt_asks_nothing() -> None:
    """``relay login`` waits for a launch's attempt under way before it asks the server
    anything. Its person hanging up (the login's task cancelled) meanwhile was swallowed
    with the attempt's own cancellation: the login went on to the server, with nobody to
    answer its prompts. It ends there now; the launch's attempt goes on."""
    host = HostSession("host", HostConfig(hostname="h"), tag="00", ssh_files=())
    path = asyncio.Event()  # a slow path: the launch's attempt waits on it

    async def connect() -> Any:
        await path.wait()
        return None

    asked: list[object] = []

    async def server_login(ask: object, same: object) -> Any:
        asked.append(ask)
        raise AssertionError("the server was asked")

    host._connect = connect  # type: ignore[method-assign]
    host.connector.login = server_login  # type: ignore[method-assign,assignment]
    launch = asyncio.ensure_future(host.connection())
    await asyncio.sleep(0)
    assert host._connecting is not None
    login = asyncio.ensure_future(host.login(lambda *prompts: []))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    login.cancel()  # its person hung up
    await asyncio.gather(login, return_exceptions=True)
    assert login.cancelled() and asked == []
    assert not launch.done()  # the launch's attempt is not the login's to end
    path.set()
    await asyncio.wait_for(launch, 10)
    await host.aclose()


async def test_a_host_never_connected_says_what_its_configuration_alone_says_of_resuming() -> None:
    """Before a connection, whether kernels here outlive it depends on the host's python3,
    so RESUME is "unknown"; but where relay.toml alone says the agent never runs (peer_check
    = off; a Slurm host's compute nodes run it), it says so, not "unknown until it connects"
    (a review's finding)."""
    plain = HostSession("host", HostConfig(hostname="h"), tag="00", ssh_files=())
    assert plain.snapshot()["resume"] == {"state": "unknown"}
    off = HostSession("host", HostConfig(hostname="h", peer_check="off"), tag="00", ssh_files=())
    said = {"state": "off", "reason": "peer_check = off (the agent admits only the user's own)"}
    assert off.snapshot()["resume"] == said
    # connected, but only as a way through (a jump host, a login node): no kernel ran here,
    # so no connection said more (a stand-in connection: the snapshot reads no more of it)
    off._conn = cast(Any, object())
    assert off.snapshot()["resume"] == said
    zero = HostConfig(hostname="h", resume_window_s=0)
    assert HostSession("host", zero, tag="00", ssh_files=()).snapshot()["resume"] == {
        "state": "off"
    }
