"""Configuration: a TOML file validated with pydantic, paths from the environment.

``RELAY_CONFIG`` and ``RELAY_SOCKET`` override the paths (read with pydantic-settings). What the
file leaves unset for a host (user, port, keys) comes from ``~/.ssh/config``, which asyncssh
reads. Every error names the file, the key and what was expected. See
``config/relay.example.toml`` for every key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relay import __version__, safepath
from relay.errors import BadRequest, ConfigError, UnknownHost, host_header
from relay.hostspec import USER_NAME, USERINFO_REFUSED, HostSpec, HostSpecError
from relay.kernelcmd import no_control_characters
from relay.lite import paths
from relay.slurm.units import megabytes, parse_time

__all__ = ["DaemonConfig", "Environment", "HostConfig", "RelayConfig", "SlurmConfig", "load"]

# Numbers are strict: TOML's true and false are not 1 and 0 (``resume_window_s = true``, meant
# as "on", would be a one-second window), nor is a quoted number a number.
PositiveSeconds = Annotated[float, Field(gt=0, le=86400, strict=True)]
RemoteWord = Annotated[str, AfterValidator(no_control_characters)]  # reaches the remote shell


class _Strict(BaseModel):
    # TOML has nan and inf: no number of seconds, bytes or kernels is either
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _memory(text: str) -> str:
    megabytes(text)
    return text


def _time(text: str) -> str:
    return parse_time(text)


def _window(seconds: float) -> float:
    if 0 < seconds < 1:  # shown as "0s", read as off; and keepalive alone takes longer
        raise ValueError("must be 0 (kernels end with their connection) or at least 1 second")
    return seconds


def _hostname(text: str) -> str:
    """A host name, an address or an ssh_config alias: never a login with it (a password
    there would reach argv, logs and ``relay status``), nor spaces."""
    userinfo, at, _ = text.rpartition("@")
    if at and ":" in userinfo:
        raise ValueError(USERINFO_REFUSED)
    if at:
        raise ValueError('a host name or address only: give the login as user = "NAME"')
    if not text.strip() or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("not a host name or address (it has spaces or control characters)")
    return text


def _user(text: str) -> str:
    if ":" in text:
        raise ValueError(USERINFO_REFUSED)
    if not USER_NAME.match(text):
        raise ValueError(
            "not a user name (letters, digits, _ . + -; leave user out for ssh_config's, or "
            "your own)"
        )
    return text


# keys whose refusal does not repeat what was given: it may hold a password
_UNECHOED = frozenset({"hostname", "user"})


def _node_template(text: str) -> str:
    if "{node}" not in text or text.replace("{node}", "").count("{") + text.count("}") > 1:
        raise ValueError("must contain {node} once and no other braces, e.g. {node}.cluster")
    return no_control_characters(text)


class SlurmConfig(_Strict):
    """``[hosts.NAME.slurm]``: kernels on compute nodes that Slurm hands out, reached through
    the host (the login node) as jump host; see relay.slurm."""

    partition: RemoteWord | None = None
    account: RemoteWord | None = None
    time: Annotated[str, AfterValidator(_time)] | None = None
    cpus_per_kernel: Annotated[int, Field(ge=1, le=4096, strict=True)] = 1
    mem_per_kernel: Annotated[str, AfterValidator(_memory)] | None = None
    # 0: as Slurm places them
    kernels_per_node: Annotated[int, Field(ge=0, le=4096, strict=True)] = 0
    sbatch_args: list[RemoteWord] = []
    srun_args: list[RemoteWord] = []
    # how the login node reaches a compute node by SSH ({node}: Slurm's node name)
    node_hostname: Annotated[str, AfterValidator(_node_template)] = "{node}"
    node_port: Annotated[int, Field(ge=1, le=65535, strict=True)] | None = None
    # release (scancel) the allocation after this long without kernels
    idle_timeout_s: Annotated[float, Field(ge=0, le=86400, strict=True)] = 120.0
    # how often squeue is asked while jobs run (every second while one is pending)
    poll_interval_s: PositiveSeconds = 10.0


class HostConfig(_Strict):
    hostname: Annotated[str, AfterValidator(_hostname)]
    port: Annotated[int, Field(ge=1, le=65535, strict=True)] | None = None
    user: Annotated[str, AfterValidator(_user)] | None = None
    identity_files: list[str] | None = None
    known_hosts: str | None = None
    jump: str | None = None
    proxy_command: str | list[str] | None = None
    kernel: RemoteWord | None = None
    controller_args: list[RemoteWord] = []
    compute_args: list[RemoteWord] = ["-subkernel", "-noinit"]
    keepalive_interval_s: PositiveSeconds = 15.0
    keepalive_count_max: Annotated[int, Field(ge=1, le=100, strict=True)] = 3
    connect_timeout_s: PositiveSeconds = 15.0
    launch_timeout_s: PositiveSeconds = 30.0
    terminate_grace_s: PositiveSeconds = 5.0
    idle_timeout_s: Annotated[float, Field(ge=0, strict=True)] = 0.0
    reconnect_attempts: Annotated[int, Field(ge=1, le=1000, strict=True)] = 6
    reconnect_window_s: PositiveSeconds = 300.0
    end_stale_sessions: bool = True
    # Four kernels' worth: the Parallel package's Runs come every ~40 ms, so at a 150 ms round
    # trip four kernels launch before listeners asked for at the first can arrive (BENCHMARKS.md)
    spare_forwards: Annotated[int, Field(ge=0, le=64, strict=True)] = 8
    dynamic: bool = True
    dynamic_method: Literal["auto", "old", "new"] = "auto"
    compression: bool = False
    slurm: SlurmConfig | None = None
    # How long kernels wait for their connection to come back (docs/agent.md): their ends of
    # the links are held by relay's agent on the host, and the daemon resumes them. 0: kernels
    # end with their connection (sshd's listeners and supervisor.sh, as without python3).
    resume_window_s: Annotated[
        float, Field(ge=0, le=7 * 86400, strict=True), AfterValidator(_window)
    ] = 900.0
    # Carry a connection to a link listener only from a process of the user's own (relay.ssh.guard)
    peer_check: Literal["uid", "off"] = "uid"
    # AES-GCM first: with AES-NI it brings asyncssh's data path level with OpenSSH's default
    # (chacha20-poly1305 in pure asyncssh costs about 0.6x of OpenSSH; BENCHMARKS.md).
    ciphers: list[str] = [
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes128-ctr",
        "aes256-ctr",
    ]

    def with_spec(self, spec: HostSpec) -> HostConfig:
        return self.model_copy(update={"hostname": spec.host, "port": spec.port, "user": spec.user})


class DaemonConfig(_Strict):
    socket: str | None = None
    allow_adhoc_hosts: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"  # as serve --log-level
    # OpenSSH client configuration read for every host, first value wins (as ssh reads them)
    ssh_config: tuple[str, ...] = ("~/.ssh/config", "/etc/ssh/ssh_config")


_WAY = frozenset({"jump", "proxy_command"})  # how a host is reached: one setting of two keys


class RelayConfig(_Strict):
    daemon: DaemonConfig = DaemonConfig()
    # the defaults of every host: a [hosts] table's own keys win; an ad-hoc host has these
    defaults: dict[str, Any] = {}
    hosts: dict[str, HostConfig] = {}

    @model_validator(mode="before")
    @classmethod
    def _defaults_for_every_host(cls, data: Any) -> Any:
        """Each [hosts] table on top of [defaults], before either is validated: a key from
        [defaults] counts as set in relay.toml (it wins over ssh_config, as the host's own).
        The way there (``jump``, ``proxy_command``) is one setting: a host that gives either
        takes neither from [defaults]; nor does a default ``jump`` reach itself through itself."""
        if not isinstance(data, dict):
            return data
        defaults, hosts = data.get("defaults"), data.get("hosts")
        if not defaults or not isinstance(defaults, dict) or not isinstance(hosts, dict):
            return data
        merged = {}
        for name, table in hosts.items():
            if not isinstance(table, dict):
                merged[name] = table
                continue
            own_way = bool(_WAY & table.keys()) or defaults.get("jump") == name
            inherited = {k: v for k, v in defaults.items() if not (own_way and k in _WAY)}
            merged[name] = {**inherited, **table}
        return {**data, "hosts": merged}

    def host_defaults(self) -> HostConfig:
        return HostConfig.model_validate({"hostname": "-", **self.defaults})

    def resolve(
        self, name: str, source: str = "relay.toml", *, adhoc: bool | None = None
    ) -> tuple[str, HostConfig]:
        """A [hosts] entry by name, else an ad-hoc spec (if ``adhoc``, by default
        ``allow_adhoc_hosts``); returns (key, config)."""
        if name in self.hosts:
            return name, self.hosts[name]
        try:
            spec = HostSpec.parse(name)  # first: a spec with a password is never echoed
        except HostSpecError as exc:
            raise BadRequest(str(exc)) from None
        if not (self.daemon.allow_adhoc_hosts if adhoc is None else adhoc):
            known = ", ".join(sorted(self.hosts)) or "none"
            raise UnknownHost(
                f"unknown host alias {name!r}: add {host_header(name)} to {source} "
                f"(configured: {known})"
            )
        return str(spec), self.host_defaults().with_spec(spec)


class Environment(BaseSettings):
    """The environment variables relay reads."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")
    config: str | None = None
    socket: str | None = None


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        hint = (
            " (relay takes no passwords: use identity_files or ssh-agent)"
            if any("pass" in str(p).lower() for p in err["loc"])
            else ""
        )
        if not hint:
            import difflib  # noqa: PLC0415 (a mistyped key only: not held by every daemon)

            near = difflib.get_close_matches(str(err["loc"][-1]), _known_keys(), n=1)
            hint = (
                f" (did you mean {near[0]}?)"
                if near
                else f" (relay {__version__} has none such: written for a newer relay?)"
            )
        return f"{loc}: unknown key{hint}"
    given = err.get("input")
    # as the file spells it: a number given as true or false is a switch mistaken for one
    given = str(given).lower() if isinstance(given, bool) else repr(given)
    if len(given) > 60:  # a line of its own, not a page (a port of 4000 digits)
        given = f"{given[:40]}... ({len(given)} characters)"
    unechoed = err["type"] == "value_error" and str(err["loc"][-1]) in _UNECHOED
    shown = "" if err["type"] == "missing" or unechoed else f", got {given}"
    if (
        isinstance(err.get("input"), str)
        and _numeric(err["input"])
        and ("number" in err["msg"] or "integer" in err["msg"])
    ):
        shown += " (a number: write it without the quotes)"
    elif str(err["loc"][-1]).endswith("_s") and isinstance(err.get("input"), str):
        shown += " (a number of seconds, e.g. 900)"
    return f"{loc}: {err['msg'].removeprefix('Value error, ')}{shown}"


def _known_keys() -> list[str]:
    """Every key relay.toml may hold, at any level: what a mistyped one is likely to be."""
    models: list[type[BaseModel]] = [RelayConfig, DaemonConfig, HostConfig, SlurmConfig]
    return sorted({key for model in models for key in model.model_fields})


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parsed(data: bytes, path: Path) -> dict[str, Any]:
    """relay.toml's text as TOML; a ConfigError, in one line, for what TOML cannot be: text
    that is not UTF-8 (an editor that saved it in a local encoding) or nested past what the
    parser's recursion takes."""
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: not valid TOML: not UTF-8 (byte 0x{data[exc.start]:02x} on line {line}): "
            f"save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except ValueError:  # Python's own bound on an integer's digits, met while parsing
        raise ConfigError(f"{path}: not valid TOML: a number too long to read") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None


def load(path: Path | None = None, *, missing_ok: bool = False) -> tuple[RelayConfig, Path]:
    """Read and validate the config file; a missing default file (or any, if ``missing_ok``)
    is an empty config: relay runs on ssh_config alone. A ConfigError names the file and
    the key, and (``host``) the [hosts] entry at fault."""
    env = Environment()
    environ = dict(os.environ)
    if env.config:
        environ["RELAY_CONFIG"] = env.config
    explicit = path is not None or bool(env.config)
    path = path or Path(paths.config_path(environ))
    try:
        raw = _parsed(path.read_bytes(), path)
    except FileNotFoundError:
        if explicit and not missing_ok:
            raise ConfigError(f"{path}: no such config file") from None
        raw = {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    else:  # it names commands relay runs (proxy_command, kernels): as ssh with its config
        why = safepath.unsafe(path)
        if why is not None:
            raise ConfigError(f"{path}: not read, another user could change it: {why}")
    defaults = raw.get("defaults")
    if isinstance(defaults, dict):  # said as defaults.KEY, not as each host's
        if "hostname" in defaults:
            raise ConfigError(
                f"{path}: defaults.hostname: each host's own key (set it in its [hosts] table)"
            )
        try:
            HostConfig.model_validate({"hostname": "-", **defaults})
        except ValidationError as exc:
            raise ConfigError(f"{path}: defaults.{_describe(exc.errors()[0])}") from None
    try:
        config = RelayConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = first["loc"]
        at_fault = str(at[1]) if len(at) > 1 and at[0] == "hosts" else None
        raise ConfigError(f"{path}: {_describe(first)}", at_fault) from None
    for name, host in config.hosts.items():
        _check_jumps(config, name, host, path)
    return config, path


def _check_jumps(config: RelayConfig, name: str, host: HostConfig, path: Path) -> None:
    seen = [name]
    jump = host.jump
    while jump:
        if jump in seen:
            raise ConfigError(
                f"{path}: hosts.{name}.jump: jump hosts form a loop ({' -> '.join([*seen, jump])})",
                name,
            )
        if len(seen) > 8:
            raise ConfigError(f"{path}: hosts.{name}.jump: more than 8 jump hosts", name)
        seen.append(jump)
        if jump in config.hosts:
            jump = config.hosts[jump].jump
        else:
            try:
                HostSpec.parse(jump)
            except HostSpecError as exc:
                raise ConfigError(f"{path}: hosts.{name}.jump: {exc}", name) from None
            jump = None


def socket_path(config: RelayConfig) -> Path:
    env = Environment()
    if env.socket:
        return Path(env.socket).expanduser()
    if config.daemon.socket:
        return Path(config.daemon.socket).expanduser()
    return Path(paths.default_socket_path())
