"""Host keys as ssh keeps them: known_hosts look-ups, the key a server offers, and recording it.

relay never trusts an unknown key silently. A key is recorded only by ``relay trust HOST`` (a
person saw its fingerprint and said yes, as at ssh's ``StrictHostKeyChecking ask`` prompt) or,
where ssh_config says ``StrictHostKeyChecking accept-new``, on first contact as ssh would.
A key that differs from a recorded one is never replaced here: that is ``ssh-keygen -R``'s job.

The look-up is OpenSSH's (sshconnect.c ``check_host_key``), not asyncssh's: asyncssh, given
known_hosts files, trusts the keys recorded for the host's name AND for the address it
reached, so a key recorded for ``[127.0.0.1]:P`` let a launch to ``localhost:P`` through where
``ssh`` says "Host key verification failed". Here the name alone decides:

- the entry is the HostKeyAlias as written (never ``[alias]:port``), else ``[hostname]:port``,
  or just ``hostname`` on port 22 (``known_as``);
- its plain keys are trusted; a key that is not among them is CHANGED, none at all UNKNOWN;
- only where nothing is recorded for ``[hostname]:port`` (off port 22, no HostKeyAlias) does
  the bare ``hostname``'s key do too, and a different one there leaves the host UNKNOWN;
- ``@cert-authority`` entries are looked up the same way (for a host certificate), and
  ``@revoked`` keys of every entry consulted are refused;
- an address never vouches for a name (OpenSSH's CheckHostIP only ever warns, and is off by
  default).

``lookup`` reads the files once; what it finds (``Recorded``) is both what asyncssh checks the
server's key against (``Recorded.known_hosts``: keys, not files, so asyncssh matches nothing
itself) and what ``relay trust``, ``relay check`` and the error messages say of a key
(``Recorded.state``), so a launch and those can never disagree.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import asyncssh

if TYPE_CHECKING:
    from relay.ssh.sshconfig import SSHView

__all__ = [
    "Recorded",
    "certified",
    "entry_name",
    "fingerprint",
    "has_entry",
    "known_as",
    "lookup",
    "lookup_text",
    "offered_key",
    "record",
    "remove_command",
    "state",
]

State = Literal["known", "changed", "unknown", "revoked"]
Keys = tuple[asyncssh.SSHKey, ...]


def entry_name(name: str, port: int) -> str:
    """How known_hosts names a host: ``name``, or ``[name]:port`` off port 22."""
    return name if port == 22 else f"[{name}]:{port}"


def remove_command(entry: str, where: str | os.PathLike[str]) -> str:
    """The command that takes a changed key's entry out of the file that holds it, for a
    person to run once the change is expected: ``-f`` names that file, which may not be
    ~/.ssh/known_hosts (``ssh-keygen -R`` alone edits that one)."""
    return f"ssh-keygen -R {shlex.quote(entry)} -f {shlex.quote(str(where))}"


def known_as(view: SSHView) -> tuple[str, int]:
    """The (name, port) the host's keys are recorded under, for ``entry_name``: the
    HostKeyAlias with port 22, since OpenSSH looks an alias up as written whatever the port
    (and never falls back from it to another name); else the resolved HostName and port."""
    alias = view.get("HostKeyAlias")
    return (str(alias), 22) if alias else (view.hostname, view.port)


@dataclass(frozen=True, slots=True)
class _Entries:
    """The keys the known_hosts lines for one entry name hold, by marker."""

    keys: Keys = ()
    ca_keys: Keys = ()
    revoked: Keys = ()


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the known_hosts files say of one host (see the module for the rule)."""

    entry: str  # the name its keys are recorded under, as known_hosts writes it
    exact: _Entries  # the entries for ``entry``
    bare: _Entries | None  # the bare host name's, consulted where ``entry`` has none
    where: Path | None = None  # the first file with a key for ``entry`` (CHANGED names it)
    skipped: tuple[str, ...] = ()  # ``file:line`` of lines no ssh can read (ssh skips them)

    def _fallback(self, mine: Keys) -> bool:
        """Whether the bare name's keys of a kind stand in for the entry's: it has none of
        that kind (ssh's HOST_NEW, judged for plain keys and CA keys apart)."""
        return not mine and self.bare is not None

    def _trusted(self, mine: Keys, bare: Keys) -> Keys:
        """The entry's keys of one kind, or, where the bare name's stand in, those of the
        bare name's not revoked under it."""
        if self._fallback(mine):
            assert self.bare is not None
            return tuple(k for k in bare if not _among(k, self.bare.revoked))
        return mine

    @property
    def keys(self) -> Keys:
        """The host keys trusted for the host."""
        return self._trusted(self.exact.keys, self.bare.keys if self.bare else ())

    @property
    def ca_keys(self) -> Keys:
        """The CA keys whose host certificates are trusted for the host."""
        return self._trusted(self.exact.ca_keys, self.bare.ca_keys if self.bare else ())

    @property
    def revoked(self) -> Keys:
        """Keys refused whatever else is recorded: the entry's ``@revoked`` ones, and the bare
        name's too wherever its keys or CA keys stand in for the entry's (ssh, finding no
        key it may trust, refuses those as well). asyncssh keeps one revoked list for keys
        and certificates alike, so beside a CA of the bare name's this is stricter than ssh
        (which would hold the bare name's revocations against the certificate only), never
        laxer."""
        bare = self.bare
        if bare is None or not (
            self._fallback(self.exact.keys) or (self._fallback(self.exact.ca_keys) and bare.ca_keys)
        ):
            return self.exact.revoked
        return self.exact.revoked + tuple(
            k for k in bare.revoked if not _among(k, self.exact.revoked)
        )

    @property
    def has_entry(self) -> bool:
        """Whether a host key is recorded for the entry itself: then another key is a CHANGE
        (ssh_config's accept-new records nothing, ``relay trust`` refuses to)."""
        return bool(self.exact.keys)

    def state(self, key: asyncssh.SSHKey) -> State:
        """``known``, ``changed`` (another key is recorded for the entry), ``unknown`` or
        ``revoked``: what a connection checked against ``known_hosts()`` makes of ``key``."""
        if _among(key, self.revoked):
            return "revoked"
        if _among(key, self.keys):
            return "known"
        return "changed" if self.has_entry else "unknown"

    def known_hosts(
        self,
    ) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
        """``known_hosts=`` for asyncssh: the trusted host keys, CA keys and revoked keys
        themselves, so asyncssh matches no name or address of its own. Empty lists still mean
        "check, and trust nothing" (only ``None`` would turn checking off)."""
        return list(self.keys), list(self.ca_keys), list(self.revoked)


def _among(key: asyncssh.SSHKey, keys: Iterable[asyncssh.SSHKey]) -> bool:
    return any(k.public_data == key.public_data for k in keys)


def _usable(line: str) -> str | None:
    """The line as asyncssh may parse it, or None for a comment or blank line. A host list
    with an empty name in it (``a,,b``) loses the empty one: asyncssh would file it under
    "" and match it to every look-up made without an address, which these all are."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split(None, 2 if text.startswith("@") else 1)
    at = 1 if text.startswith("@") else 0
    if len(fields) <= at:
        return text  # malformed: asyncssh says so
    names = [n for n in fields[at].split(",") if n]
    if not names:
        return None
    fields[at] = ",".join(names)
    return " ".join(fields)


def _parse(path: Path, text: str) -> tuple[asyncssh.SSHKnownHosts, list[str]]:
    """One file's lines, each on its own: a line asyncssh cannot read is skipped (and noted),
    not the whole file, as ssh skips it."""
    known = asyncssh.SSHKnownHosts()
    skipped = []
    for number, line in enumerate(text.splitlines(), 1):
        usable = _usable(line)
        if usable is None:
            continue
        try:
            known.load(usable)
        except ValueError:
            skipped.append(f"{path}:{number}")
    return known, skipped


def _entries(known: asyncssh.SSHKnownHosts, entry: str) -> _Entries:
    # entry is already "[name]:port" where it needs a port; no address, no port given: so
    # asyncssh matches that one name, with no address and no bare-name retry of its own
    keys, ca_keys, revoked, *_ = known.match(entry, "", None)
    return _Entries(tuple(keys), tuple(ca_keys), tuple(revoked))


def _plus(a: _Entries, b: _Entries) -> _Entries:
    return _Entries(a.keys + b.keys, a.ca_keys + b.ca_keys, a.revoked + b.revoked)


def lookup_text(files: Sequence[tuple[Path, str]], name: str, port: int) -> Recorded:
    """The look-up itself, on the files' text (in the order they are consulted). Pure."""
    entry = entry_name(name, port)
    exact, bare = _Entries(), (_Entries() if port != 22 else None)
    where: Path | None = None
    skipped: list[str] = []
    for path, text in files:
        known, bad = _parse(path, text)
        skipped += bad
        mine = _entries(known, entry)
        if mine.keys and where is None:
            where = path
        exact = _plus(exact, mine)
        if bare is not None:
            bare = _plus(bare, _entries(known, name))
    return Recorded(entry, exact, bare, where, tuple(skipped))


def lookup(files: Sequence[Path], name: str, port: int) -> Recorded:
    """``lookup_text`` on the files as they are now; a missing file holds no keys. Raises OSError
    for one that exists but cannot be read (the caller says which, rather than call every
    key unknown)."""
    texts = []
    for path in files:
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            continue
        texts.append((path, data.decode(errors="replace")))
    return lookup_text(texts, name, port)


def has_entry(files: Sequence[Path], name: str, port: int) -> bool:
    """Whether any of the files records a host key for the host (then a mismatch is a
    CHANGE)."""
    return lookup(files, name, port).has_entry


def state(files: Sequence[Path], name: str, port: int, key: asyncssh.SSHKey) -> State:
    """``known``, ``changed``, ``unknown`` or ``revoked``: ``Recorded.state``."""
    return lookup(files, name, port).state(key)


def fingerprint(key: asyncssh.SSHKey) -> str:
    """``ED25519 SHA256:...`` as ssh prints it."""
    algorithm = key.get_algorithm().removeprefix("ssh-").split("-")[0].upper()
    return f"{algorithm} {key.get_fingerprint('sha256')}"


def _reach(options: dict[str, Any]) -> dict[str, Any]:
    """Of a connection's options, those that reach the server (port, ssh_config, jump host or
    proxy command)."""
    return {
        k: v
        for k, v in options.items()
        if k in ("port", "tunnel", "proxy_command", "config") and v is not None
    }


async def offered_key(host: str, options: dict[str, Any]) -> asyncssh.SSHKey | None:
    """The host key the server offers (a key exchange, no authentication), reached the way a
    connection would be (``options``)."""
    return await asyncssh.get_server_host_key(host, **_reach(options))


async def certified(host: str, options: dict[str, Any], recorded: Recorded) -> bool:
    """Whether the server proves itself with a host certificate from a CA ``recorded`` trusts
    (``@cert-authority``), as a connection with that CA checks first; ``offered_key``'s bare
    key cannot tell. A key exchange checked against ``recorded``, then no authentication at
    all (every method off): getting past the key exchange means yes."""
    if not recorded.ca_keys:
        return False
    nothing = dict.fromkeys(
        ("public_key_auth", "password_auth", "kbdint_auth", "gss_auth", "host_based_auth"),
        False,
    )
    try:
        conn = await asyncssh.connect(
            host, known_hosts=recorded.known_hosts(), agent_path=None, **nothing, **_reach(options)
        )
    except asyncssh.HostKeyNotVerifiable:
        return False
    except asyncssh.PermissionDenied:
        return True
    conn.close()  # a server that lets anyone in: past the key exchange all the same
    return True


def record(path: Path, name: str, port: int, key: asyncssh.SSHKey) -> str:
    """Append the key for the host to a known_hosts file (made 0600 in a 0700 directory if
    new); the line written. A write that fails part-way (a full disk, a quota) takes back
    what it put out: a torn line (``h ssh-ed25519 AAAAC3``) stayed at the file's end, read as
    a bad line by every later look-up, and glued to what a tool that does not end the file
    first (an older ssh's accept-new) appended next."""
    line = f"{entry_name(name, port)} {key.export_public_key('openssh').decode().strip()}\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # a symlinked known_hosts (dotfiles) is followed, as ssh follows it
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        data = line.encode()
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError:
            # ours alone, if the file is as we left it (not appended to meanwhile)
            if written and os.fstat(fd).st_size == size + written:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
    return line.strip()
