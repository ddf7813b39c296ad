"""Control-socket messages, validated with pydantic. Pure.

Framing (one JSON object a line, ``"v": 1``, 64 KiB at most) is ``relay.lite.framing``.

Requests (client -> daemon)::

    {"v":1,"op":"launch","host":H,"kernel":K,"linkname":L,"mode":"controller"|"compute",
     "ssh_auth_sock":S}          # S (optional): the client's agent, for connections from now on
    {"v":1,"op":"terminate"}      # on a launch connection: end the kernel (shim got a signal)
    {"v":1,"op":"ping"}
    {"v":1,"op":"status"}         # answered by one "status" event, then the connection ends
    {"v":1,"op":"forward","host":H,"linkname":L,"direction":"callback"|"expose"}
    {"v":1,"op":"connect","host":H,"kernels":N,"kernel":K,"ssh_auth_sock":S}  # open H's
        #   connection ahead of launches; N > 0: N compute kernels of K follow (answered with
        #   "kernel": {"path": K, "found": bool} when K, or the host's kernel, is known)
    {"v":1,"op":"stop","restart":B}  # relay stop (B true: relay restart): answered, then a
        #   graceful shutdown (as SIGTERM); which of the two is logged and told to controllers
    {"v":1,"op":"reload"}         # relay reload: re-read relay.toml (also on SIGHUP, and when
                                  # the file changed, before any request)
    {"v":1,"op":"hostkey","host":H,"ssh_auth_sock":S}  # relay trust: the key H offers, and
        #   whether it is known
    {"v":1,"op":"check","host":H,"kernel":K|null,"ssh_auth_sock":S}  # relay check: answered by
        #   one "checked" event with "results", a list of relay.checkview.Result
    {"v":1,"op":"login","host":H,"ssh_auth_sock":S}  # relay login: (re)open H's connection,
        # the server's password and keyboard-interactive prompts answered by the client:
        #   {"v":1,"event":"prompt","name":..,"instructions":..,"prompts":[{"text","echo"}]}
        #   {"v":1,"op":"answers","answers":[..]}   (never logged)
        # until {"event":"connected",..} or an error

Events (daemon -> client)::

    {"v":1,"event":"launched","kernel_id":..,"host":..,"linkname":R,"remote_pid":..,"launch_ms":..}
    {"v":1,"event":"exited","kernel_id":..,"status":N}     # controller mode: the kernel ended
    {"v":1,"event":"error","code":C,"message":M}           # one actionable line (errors.py)
    {"v":1,"event":"pong","pid":..,"version":..}
    {"v":1,"event":"status","daemon":{..},"hosts":[..],"kernels":[..]}   # see relay status
    {"v":1,"event":"forwarded","host":H,"linkname":R}      # the rewritten name
    {"v":1,"event":"connected","host":H,"connect_ms":..,"rtt_ms":..}

A controller-mode launch keeps its connection open until ``exited``; closing it, or sending
``terminate``, ends the kernel; its ``launched`` comes once the kernel's link is connected.
A compute-mode launch ends after ``launched``, which comes once the kernel is started (the
Parallel package runs one launch after another and waits for all kernels afterwards).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from relay import __version__
from relay.errors import BadRequest
from relay.kernelcmd import no_control_characters

__all__ = [
    "AnyRequest",
    "ConnectRequest",
    "ForwardRequest",
    "LaunchRequest",
    "PingRequest",
    "Request",
    "StatusRequest",
    "TerminateRequest",
    "parse_request",
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = 1


HostField = Annotated[str, Field(min_length=1, max_length=1024)]  # a [hosts] name or a spec
AgentSocket = Annotated[str | None, Field(max_length=1024)]  # a client's SSH_AUTH_SOCK


class StopRequest(_Message):
    op: Literal["stop"]
    restart: bool = False  # relay restart: a new daemon follows


class ReloadRequest(_Message):
    op: Literal["reload"]


class HostKeyRequest(_Message):
    op: Literal["hostkey"]
    host: HostField
    ssh_auth_sock: AgentSocket = None  # a jump host on the way may want the client's agent


class LoginRequest(_Message):
    op: Literal["login"]
    host: HostField
    ssh_auth_sock: AgentSocket = None


class AnswersRequest(_Message):
    """A person's answers to a login prompt: secrets, so never quoted in an error."""

    op: Literal["answers"]
    answers: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=32)]


class LaunchRequest(_Message):
    op: Literal["launch"]
    host: HostField
    kernel: Annotated[str, Field(max_length=4096), AfterValidator(no_control_characters)] = ""
    linkname: Annotated[str, Field(min_length=1, max_length=1024)]
    mode: Literal["controller", "compute"] = "controller"
    ssh_auth_sock: AgentSocket = None  # the client's SSH_AUTH_SOCK: the agent it lives with


class TerminateRequest(_Message):
    op: Literal["terminate"]


class PingRequest(_Message):
    op: Literal["ping"]


class StatusRequest(_Message):
    op: Literal["status"]


class ForwardRequest(_Message):
    """Open a link across the host's connection and answer with the rewritten name.

    ``callback``: ``linkname`` listens on this machine; relay opens two remote listeners on the
    host's 127.0.0.1 leading to it and answers their name (what a kernel there connects to).
    ``expose``: ``linkname`` listens on the host's 127.0.0.1; relay opens two local listeners
    leading to it and answers their name. Each listener takes one connection and is closed once
    both are connected, or after the host's launch_timeout_s. (The kernel hook's ``callback``
    is this request, made from the kernel's side; see relay.lite.hook.)"""

    op: Literal["forward"]
    host: HostField
    linkname: Annotated[str, Field(min_length=1, max_length=1024)]
    direction: Literal["callback", "expose"] = "callback"


class ConnectRequest(_Message):
    """Open a host's connection, supervisor and spare forwards before any launch."""

    op: Literal["connect"]
    host: HostField
    ssh_auth_sock: AgentSocket = None
    # compute kernels about to be launched (RelayMachine[host, n]): their forwards asked for
    # at once; on a Slurm host, room for them in one job
    kernels: Annotated[int, Field(ge=0, le=100000)] = 0
    # their executable ("": the host's kernel), looked for ahead of the first launch
    kernel: Annotated[str, Field(max_length=4096), AfterValidator(no_control_characters)] = ""


class CheckRequest(_Message):
    """relay check: every check for a host, run on this daemon's connection to it."""

    op: Literal["check"]
    host: HostField
    kernel: Annotated[str, Field(max_length=4096)] | None = None
    ssh_auth_sock: AgentSocket = None


AnyRequest = (
    LaunchRequest
    | TerminateRequest
    | PingRequest
    | StatusRequest
    | ForwardRequest
    | ConnectRequest
    | StopRequest
    | ReloadRequest
    | HostKeyRequest
    | LoginRequest
    | AnswersRequest
    | CheckRequest
)
Request = Annotated[AnyRequest, Field(discriminator="op")]
_ADAPTER: TypeAdapter[AnyRequest] = TypeAdapter(Request)


def parse_request(obj: dict[str, Any]) -> AnyRequest:
    """Validate a decoded message; raise ``BadRequest`` with one line naming the field."""
    try:
        return _ADAPTER.validate_python(obj)
    except ValidationError as exc:
        if obj.get("op") == "answers":  # never quote what a person typed
            raise BadRequest("bad request: answers must be a list of strings") from None
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            message = (
                f"unknown op {str(obj.get('op'))[:40]!r} (expected launch, terminate, "
                f"ping, status, forward, connect, stop, reload, hostkey, login or check)"
            )
        elif (said := _SAID.get((where, first["type"]))) is not None:
            message = said
        elif first["type"] == "extra_forbidden":  # a newer relay's field
            message = (
                f"{where}: not known to this daemon (relay {__version__}); if the relay that "
                f"asked is newer, `relay restart` starts it"
            )
        else:
            message = f"{where}: {first['msg']}"
        # one line, bounded: pydantic may quote the offending input
        message = message.encode("unicode_escape").decode()[:300]
        raise BadRequest(f"bad request: {message}") from None


# what a person gave wrong, in the words of the command they ran (the shim's arguments)
_SAID = {
    ("launch.host", "string_too_short"): (
        "HOST is empty: give a [hosts] name from relay.toml or [user@]host[:port] (the "
        "Launch command's first word)"
    ),
    ("launch.linkname", "string_too_short"): (
        "LINKNAME is empty: the front end fills it in where the Launch command says "
        "`linkname` (or `2` in $RemoteCommand); is the template's word there?"
    ),
    ("connect.host", "string_too_short"): "HOST is empty: give a [hosts] name from relay.toml",
    ("connect.kernels", "greater_than_equal"): "--kernels takes 0 or more",
}


def launched(
    *,
    kernel_id: str,
    host: str,
    linkname: str,
    remote_pid: int | None,
    launch_ms: float,
    warning: str | None = None,
) -> dict[str, Any]:
    """``warning``: a line the shim prints on stderr beside the link name (the launch went
    ahead, but not as the person may think: relay.toml's newer version was rejected)."""
    event: dict[str, Any] = {
        "event": "launched",
        "kernel_id": kernel_id,
        "host": host,
        "linkname": linkname,
        "remote_pid": remote_pid,
        "launch_ms": round(launch_ms, 2),
    }
    if warning:
        event["warning"] = warning
    return event


def exited(*, kernel_id: str, status: int, reason: str | None = None) -> dict[str, Any]:
    """The kernel ended; ``reason`` when something outside ended it (its Slurm job)."""
    event: dict[str, Any] = {"event": "exited", "kernel_id": kernel_id, "status": status}
    if reason:
        event["reason"] = reason
    return event
