# mypy: ignore-errors
"""relay's agent: runs on the remote host and owns a host's kernels and their ends of the
links, so that they outlive an SSH connection (docs/agent.md is the contract).

It runs on what remote hosts have: Python 3.6 or later, standard library only, one file
(shipped by hookinstall.sh and proven by its sha256, as the kernel hook is). Its minimum
version is checked by a test (vermin), and it is run under every Python the tests find.

    python3 -I relayagent.py start TAG WINDOW_S      (the secret on its start line)

One thread, one selector: the daemon's channel (a Unix socket that sshd's
direct-streamlocal channel connects to), one listener and one socket per link, a pipe per
starting kernel, and a self-pipe for signals. Nothing blocks but ``which`` (a short sh).
"""

import binascii
import collections
import errno
import fcntl
import hmac
import itertools
import json
import os
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback

try:
    import resource
except ImportError:  # not a Unix: nothing raised (the agent runs on Linux hosts)
    resource = None
# The interpreter's own SHA-256 for the attach's proofs: OpenSSL's HMAC, at its first use,
# costs the agent about 1 MB for good (measured: 1.08 MB against 0.23 MB with this)
try:
    from _sha256 import sha256 as SHA256  # 3.6 to 3.11
except ImportError:
    try:
        from _sha2 import sha256 as SHA256  # 3.12 and later
    except ImportError:  # built without them: OpenSSL's
        from hashlib import sha256 as SHA256

HELLO, WELCOME, DATA, EOF, CLOSE, OPEN, ACK, BYE, CHALLENGE = range(1, 10)
# the attach's proofs (mux.py's ``proof``): the secret is shown, never sent
DAEMON = b"relay daemon\n"
AGENT = b"relay agent\n"
MARKERS = (EOF, CLOSE, OPEN)  # sequenced, one position each
HEADER = struct.Struct("!BII")
POS = struct.Struct("!Q")
MAX_PAYLOAD = 1 << 20
MERGE = 4096  # DATA kept for a resume: small pieces joined into items up to this (mux.py)
GATHER = 4096  # a payload this large is sent behind its header, not copied into one piece
IOV_MAX = 64  # pieces per sendmsg (POSIX guarantees 16; Linux allows 1024)
LIMIT = 4 << 20  # unacknowledged bytes per stream before its socket is not read
CHUNK = 1 << 20  # a socket read, at most; so the largest DATA frame the agent sends
CHAN_SNDBUF = 1 << 20  # asked for the channel's socket; Linux caps it at net.core.wmem_max
ACK_EVERY = 1 << 20  # ACK at once past this much; else ACK_DELAY_S later (mux.py says why)
ACK_DELAY_S = 0.2
FIRST_ATTACH_S = 60.0  # a fresh agent nobody attaches to goes away
HELLO_WITHIN_S = 10.0
PREDECESSOR_WAIT_S = 10.0
# how long a start waits for another start of its tag (``start_lock``): that one ends its
# predecessor (PREDECESSOR_WAIT_S at most), binds and forks, then lets go
START_LOCK_WAIT_S = PREDECESSOR_WAIT_S + 5.0
KILL_AFTER_S = 5.0  # SIGTERM, then SIGKILL for a kernel that ignores it
# a look for a kernel (``which``) answered "did not answer" past this: /bin/sh stat()ing a
# kernel on a shared file system that hangs (NFS, Lustre) can take that long
WHICH_WAIT_S = 10.0
ASK_LINE_S = 10.0  # a hook connection's request line must come within this (relay.lite.hook)
ASK_KEPT_S = 60.0  # a request sent on is answered within this, or its connection is closed
ASKS_MAX = 64  # hook requests in flight per serve stream; more are closed unread
MAX_LINE = 4096  # a hook request line, at most (relay.lite.hook.MAX_LINE)
# Open files the agent asks for (its soft limit raised to at most this, within the hard one):
# each kernel holds two links and a listener or two while it starts, and a common default
# soft limit of 1024 would stop it near 300 kernels. Its kernels get the limit it was given.
FILES_WANTED = 1 << 16
FULL = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)  # out of files or memory
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)  # a disk with no block or inode left, or a quota
PAUSE_S = 1.0  # a listener whose accept() found no file to give is left alone this long
REFUSALS_EVERY_S = 1.0  # strangers turned away are said at most this often (``refuse``)
HEAP_EVERY_S = 2.0  # the heap looked at (``Heap``), as often as the daemon's tick
# The agent's files in $TMPDIR (``keep``): looked at this often, and their times set to now
# once its socket's is older than TOUCH_AFTER_S, so that no cleaner of old files takes them
KEEP_EVERY_S = 2.0
TOUCH_AFTER_S = 3600.0
HEAP_REST_CPU_S = 0.05  # CPU between two looks that is rest (relay/heap.py's REST_CPU_S)
HEAP_NEW = 128 << 10  # new pages since the last trim worth one (relay/heap.py's REST_NEW)
FINISHED_KEPT = 4096  # finished streams whose last position is remembered for a resume
OUT_LINES, OUT_WIDTH = 5, 300  # a kernel's last lines reported at its exit (as supervisor.sh)
LOOPBACK = ("0100007F", "0000000000000000FFFF00000100007F")  # 127.0.0.1 in /proc/net/tcp{,6}
ANY = ("00000000", "00000000000000000000000000000000")  # a listener on every address
SIGNALS = {"TERM": signal.SIGTERM, "INT": signal.SIGINT, "HUP": signal.SIGHUP}
SIGNALS["KILL"] = signal.SIGKILL
ENDING = (signal.SIGTERM, signal.SIGHUP, signal.SIGKILL)  # to a kernel's group (``signal``)

# A kernel start: the daemon's snippet (sets "$@", may export variables: never argv) from the
# environment, the same test as supervisor.sh's ``have``. Standard output is a pipe to the
# agent until the exec: "n" on it if the kernel is not there, else it closes as the kernel
# starts (its output then goes to the log, as its standard error does), and the pid is the
# kernel's own.
START_SH = (
    'eval "$RELAY_SNIPPET"; unset RELAY_SNIPPET; '
    'case $1 in */*) test -f "$1" && test -x "$1" ;; '
    '*) command -v "$1" >/dev/null 2>&1 ;; esac || { echo n; exit 127; }; '
    'exec 1>&2; exec "$@"'
)
WHICH_SH = (
    'eval "$RELAY_SNIPPET"; '
    'case $1 in */*) test -f "$1" && test -x "$1" ;; '
    '*) command -v "$1" >/dev/null 2>&1 ;; esac'
)


def encode(ftype, sid, payload=b""):
    return HEADER.pack(ftype, sid, len(payload)) + payload


def pieces(ftype, sid, payload):
    """A frame as the pieces to send: a large payload is not copied behind its header
    (``Buffers`` gathers them in one sendmsg). relay.agent.mux.pieces is its twin."""
    if len(payload) < GATHER:
        return [encode(ftype, sid, payload)]
    return [HEADER.pack(ftype, sid, len(payload)), payload]


def size(ftype, payload):
    if ftype == DATA:
        return len(payload)
    return 1 if ftype in MARKERS else 0


class FrameError(ValueError):
    pass


SID_MOST = (1 << 32) - 1  # a frame's stream id is 4 bytes (HEADER): a larger one cannot be sent


def decimal(text, most=(1 << 63) - 1):
    """A number a peer wrote in ASCII digits, at most ``most``; else None. (``isdigit``
    takes "²", which ``int`` refuses.)"""
    if not 0 < len(text) <= 19 or text.strip("0123456789"):
        return None
    value = int(text)
    return value if value <= most else None


def _short_int(text):
    if len(text) > 30:  # Python 3.6 has no limit: a megabyte of digits costs it seconds
        raise ValueError("number too long")
    return int(text)


def _short_float(text):
    if len(text) > 30:
        raise ValueError("number too long")
    return float(text)


def _no_constant(name):
    raise ValueError("not JSON: " + name)


def peer_json(payload):
    """A JSON object a peer sent (the daemon's HELLO, before and after it proves the secret):
    bounded in what parsing it costs; anything else, a ValueError."""
    try:
        value = json.loads(
            payload.decode("utf-8"),
            parse_int=_short_int,
            parse_float=_short_float,
            parse_constant=_no_constant,
        )
    except (ValueError, RecursionError, MemoryError) as exc:  # deep nesting: RecursionError
        raise ValueError(str(exc)[:80]) from None
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def lines(buf):
    """The complete lines in ``buf`` (a bytearray), taken out of it in one pass: a frame of
    a million newlines costs a million finds, not a million copies of what is left."""
    found, start = [], 0
    while True:
        end = buf.find(b"\n", start)
        if end < 0:
            break
        found.append(bytes(buf[start:end]))
        start = end + 1
    if start:
        del buf[:start]
    return found


def positions(given):
    """A HELLO's "recv" or "handed": stream id -> position, as {str: int}; else ValueError."""
    given = given or {}
    if not isinstance(given, dict):
        raise ValueError("not an object")
    for sid, position in given.items():
        if decimal(sid, SID_MOST) is None or type(position) is not int or position < 0:
            raise ValueError("not a position")
    return given


class Reader:
    """Frames out of a byte stream cut anywhere: a DATA frame's payload as it arrives, in
    pieces (positions count bytes, so the pieces are the frame), every other frame whole
    (relay.agent.mux.FrameReader, whose twin this is)."""

    def __init__(self):
        self.head = b""
        self.ftype = self.sid = self.left = 0
        self.body = bytearray()

    def feed(self, data):
        out, at, end = [], 0, len(data)
        while at < end:
            if not self.left:
                if self.head or end - at < HEADER.size:
                    need = HEADER.size - len(self.head)
                    self.head += data[at : at + need]
                    at += need
                    if len(self.head) < HEADER.size:
                        break
                    ftype, sid, length = HEADER.unpack(self.head)
                    self.head = b""
                else:
                    ftype, sid, length = HEADER.unpack_from(data, at)
                    at += HEADER.size
                if not HELLO <= ftype <= CHALLENGE or length > MAX_PAYLOAD:
                    raise FrameError("not a frame of this protocol")
                if not length:
                    out.append((ftype, sid, b""))
                    continue
                self.ftype, self.sid, self.left = ftype, sid, length
            take = min(self.left, end - at)
            piece = data if take == end else data[at : at + take]
            at += take
            self.left -= take
            if self.ftype == DATA:
                out.append((DATA, self.sid, piece))
            elif not self.left and not self.body:
                out.append((self.ftype, self.sid, piece))
            else:
                self.body += piece
                if not self.left:
                    out.append((self.ftype, self.sid, bytes(self.body)))
                    self.body = bytearray()
        return out


class Buffers:
    """Bytes on their way to a socket, kept as the pieces they came in: nothing is copied to
    gather them (one sendmsg does), and what a send took is dropped from the front."""

    def __init__(self):
        self.pieces = None  # a deque while something waits (an idle link's costs 600 bytes)
        self.size = 0

    def __len__(self):
        return self.size

    def add(self, data):
        if data:
            if self.pieces is None:
                self.pieces = collections.deque()
            self.pieces.append(data)
            self.size += len(data)

    def send(self, sock):
        """Send what the socket takes at once; raises as ``socket.send`` does."""
        pieces = self.pieces
        if pieces is None:
            return
        if len(pieces) == 1:
            n = sock.send(pieces[0])
        else:
            n = sock.sendmsg(list(itertools.islice(pieces, IOV_MAX)))
        self.size -= n
        while n:
            first = pieces[0]
            if len(first) > n:
                pieces[0] = memoryview(first)[n:]
                break
            n -= len(first)
            pieces.popleft()
        if not pieces:
            self.pieces = None


class Outbox:
    """What we sent on one stream and the daemon has not acknowledged (docs/agent.md)."""

    def __init__(self):
        self.items = []  # [ftype, payload]
        self.base = 0
        self.end = 0
        self.unacked = 0
        self.closed = False
        self.owed = 0  # the daemon's received position at the last attach (mux.Outbox)
        self.acked_at = 0  # the furthest position acknowledged

    def push(self, ftype, sid, payload=b""):
        parts = [payload[i : i + CHUNK] for i in range(0, len(payload), CHUNK)] or [b""]
        out = []
        items = self.items
        for part in parts:
            if (
                ftype == DATA
                and items
                and items[-1][0] == DATA
                and len(items[-1][1]) + len(part) <= MERGE
            ):  # small reads kept as one item: their cost stays bounded with LIMIT
                items[-1][1] = items[-1][1] + part
            else:
                items.append([ftype, part])
            self.end += size(ftype, part)
            if ftype == DATA:
                self.unacked += len(part)
            out += pieces(ftype, sid, part)
        if ftype == CLOSE:
            self.closed = True
        return out

    def acked(self, position):
        if position > self.end:
            raise FrameError("ACK beyond what was sent")
        if position > self.acked_at:
            self.acked_at = position
        drop = 0
        for ftype, payload in self.items:
            n = size(ftype, payload)
            if self.base + n > position:
                break
            self.base += n
            if ftype == DATA:
                self.unacked -= n
            drop += 1
        del self.items[:drop]
        if self.items and position > self.base:
            cut = position - self.base
            self.items[0][1] = self.items[0][1][cut:]
            self.base += cut
            self.unacked -= cut

    @property
    def load(self):
        """What LIMIT bounds: kept here, and what the daemon took in at the last attach but
        had not handed on (to its front end) until its ACKs say so: each outage would
        otherwise let another LIMIT pile up there behind a front end that stopped reading."""
        return self.unacked + max(0, self.owed - self.acked_at)

    def replay(self, sid, position, handed=None):
        if not self.base <= position <= self.end:
            raise FrameError("resume outside what is kept")
        self.acked(position)
        self.owed = position
        self.acked_at = position if handed is None else min(max(0, handed), position)
        return [piece for ftype, payload in self.items for piece in pieces(ftype, sid, payload)]

    @property
    def done(self):
        return self.closed and not self.items


def _steady_clock():
    """The clock intervals are counted on (the window, silence, every timeout): one nothing
    sets, as a clock stepped by NTP or `date -s` is, and that counts a sleep of the host, as
    the daemon's window does (relay.wake.steady): Linux's CLOCK_BOOTTIME (7; named in
    Python 3.7), macOS's CLOCK_MONOTONIC (time.monotonic there stops in a sleep); else
    time.monotonic."""
    if sys.platform.startswith("linux"):
        clock = getattr(time, "CLOCK_BOOTTIME", 7)
    else:
        clock = getattr(time, "CLOCK_MONOTONIC", None) if sys.platform == "darwin" else None
    if clock is not None:
        try:
            time.clock_gettime(clock)
        except (OSError, AttributeError):
            return time.monotonic
        return lambda: time.clock_gettime(clock)
    return time.monotonic


now = _steady_clock()


class Heap:
    """The C heap under what the agent keeps for a resume: relay/heap.py's policy (which says
    why), its twin here as the agent is one file. On glibc the heap keeps its pages under
    bulk (no frame its own mapping, twice a stream's LIMIT kept free at its top). After a
    read (``stirred``: the loop wakes for it) ``rest`` looks every HEAP_EVERY_S until it
    finds the agent at rest (under HEAP_REST_CPU_S of CPU since the read, or since its last
    look); then, if the agent is resident HEAP_NEW beyond what it was after the last trim
    (or the least since), malloc_trim gives the heap's free pages back. Elsewhere (musl,
    macOS, a Python without ctypes) nothing: ``libc`` is None."""

    def __init__(self):
        self.libc = None
        self.at = now()
        self.cpu_at = time.process_time()
        self.resident_at = 0  # resident bytes after the last trim, or the least since
        self.stirred = False  # a read since the heap was last found at rest
        try:
            if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
                return
            self.page = os.sysconf("SC_PAGE_SIZE")
            import ctypes

            libc = ctypes.CDLL(None)
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            libc.mallopt(-3, 2 * MAX_PAYLOAD)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, 2 * LIMIT)  # M_TRIM_THRESHOLD
            self.libc = libc
        except Exception:  # any (not glibc, whatever it says; no ctypes): left as it is
            self.libc = None

    def stir(self):
        """A read came: look HEAP_EVERY_S from now, at the CPU spent from now."""
        if not self.stirred:
            self.stirred, self.at, self.cpu_at = True, now(), time.process_time()

    def resident(self):
        try:
            with open("/proc/self/statm", "rb") as statm:
                return int(statm.read().split()[1]) * self.page
        except (OSError, ValueError, IndexError):
            return None

    def rest(self):
        """Trim if due; whether it did."""
        if self.libc is None or not self.stirred or now() - self.at < HEAP_EVERY_S:
            return False
        cpu, self.cpu_at, self.at = self.cpu_at, time.process_time(), now()
        if self.cpu_at - cpu > HEAP_REST_CPU_S:
            return False  # carrying: stirred still, looked at again
        self.stirred = False
        resident = self.resident()
        if resident is None:
            return False
        if resident - self.resident_at < HEAP_NEW:
            self.resident_at = min(self.resident_at, resident)
            return False
        self.libc.malloc_trim(0)
        self.resident_at = self.resident() or 0
        return True


FILES_GIVEN = None  # the soft limit the agent was started with, where it raised it


def more_files():
    """The soft limit on open files raised towards FILES_WANTED (within the hard one)."""
    global FILES_GIVEN
    if resource is None:
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, FILES_WANTED)
        if soft != resource.RLIM_INFINITY and want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            FILES_GIVEN = soft
    except (ValueError, OSError):
        pass


def files_as_given():
    """In a kernel, before its exec: the limit the agent was given, not the one it took."""
    if FILES_GIVEN is not None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (FILES_GIVEN, hard))


# the login's umask (hookinstall.sh's RELAY_UMASK): the agent's own files are made private
# (077), its kernels as `ssh host math` would make them; None where it was not told
LOGIN_UMASK = None


def as_the_login():
    """In a kernel, before its exec: the login's umask and limit on open files, not the
    agent's."""
    if LOGIN_UMASK is not None:
        os.umask(LOGIN_UMASK)
    files_as_given()


def login_environment():
    """What the installer told of the login, taken out of the environment kernels get: its
    umask (``LOGIN_UMASK``), and its LC_CTYPE (RELAY_LC_CTYPE: "=VALUE", or "-" for none),
    which a python3 of 3.7 or later replaced with C.UTF-8 where the locale was C (PEP 538):
    the kernels' environment is the login's again."""
    global LOGIN_UMASK
    told = os.environ.pop("RELAY_UMASK", "")
    if told and len(told) <= 4 and all(c in "01234567" for c in told):
        LOGIN_UMASK = int(told, 8)
    ctype = os.environb.pop(b"RELAY_LC_CTYPE", None)
    if ctype == b"-":
        os.environb.pop(b"LC_CTYPE", None)
    elif ctype is not None and ctype.startswith(b"="):
        os.environb[b"LC_CTYPE"] = ctype[1:]


def exited(pid):
    """Whether a child has exited, found without reaping it (its pid stays its own)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except (AttributeError, OSError):  # no waitid here: the group goes unended
        return False


def runs(pid):
    """Whether a process with this pid (ASCII digits) runs; a zombie does not (a killed
    agent's, not yet reaped by a subreaper)."""
    pid = decimal(pid, 1 << 22)
    if not pid:
        return False
    fields = stat_fields(pid)
    if fields:
        return fields[0] != "Z"
    try:  # gone, or no /proc (macOS): asked of the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # another user's: it runs
    return True


def stat_fields(pid):
    """/proc/PID/stat's fields after the command's name (its state first), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def start_time(pid):
    """Field 22 of /proc/PID/stat: with the pid, names one process for good."""
    fields = stat_fields(pid)
    return fields[19] if fields is not None else None


def tcp_table(port):
    """The rows of /proc/net/tcp and tcp6 whose local end has ``port``, split into columns
    (the kernel's own words): the text searched first, not split line by line. Neither read
    (no file to read them with): ``Unknown``, for nobody can be told."""
    needle = ":%04X " % port  # the local end, then a space (the kernel writes upper case)
    unread = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except OSError as exc:
            unread.append(exc)
            continue
        for line in lines:
            if needle in line:
                cols = line.split()
                if len(cols) >= 10:
                    yield cols
    if len(unread) == 2 and all(exc.errno in FULL for exc in unread):
        raise Unknown(unread[0])  # out of files: not "gone" (none there: ENOENT is "gone")


class Unknown(Exception):
    """Nothing tells who holds a socket: neither the kernel's answer nor /proc/net/tcp could
    be had (the agent out of files). Never the same as another user's: ``checked``."""


def diag(lport, rport):
    """The socket 127.0.0.1:lport -> 127.0.0.1:rport as the kernel answers for it alone
    (NETLINK_SOCK_DIAG: a look-up in its hash at any size of table, where /proc/net/tcp
    is read whole; relay/sockdiag.py is its twin and says what the kernel answers), as a row
    of /proc's columns in a list (empty: none); None where the kernel does not answer, or
    does not find a socket it has (``DIAG``)."""
    if not DIAG:
        try:
            DIAG.append(probe_diag())
        except OSError:  # no file to probe with: not kept, asked again at the next check
            return None
    return None if DIAG[0] is None else ask_diag(lport, rport, DIAG[0])


# once asked: [the loopback device's index] if this kernel finds a listener of ours by
# sock_diag, else [None]
DIAG = []
NO = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: a socket asked for by its ends alone


def probe_diag():
    """A kernel without inet_diag's TCP handler says "no such socket" (ENOENT) to every
    request: so it is asked for a listener of ours first. The loopback device's index to
    ask with (sockets bound to that device are found only so, as by an arriving packet),
    or None."""
    try:
        dev = socket.if_nametoindex("lo")
    except OSError:
        dev = 0
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno in FULL:  # out of files: says nothing of the kernel (raised: not kept)
            raise
        return None
    try:
        probe.bind(("127.0.0.1", 0))
        probe.listen(1)
        port = probe.getsockname()[1]
        found = ask_diag(port, 0, dev, True)
    except OSError as exc:
        if exc.errno in FULL:
            raise
        return None
    finally:
        probe.close()
    ok = bool(found) and found[0][3] == "0A" and found[0][1].endswith(":%04X" % port)
    return dev if ok else None


def ask_diag(lport, rport, dev, probing=False):
    lo = socket.inet_aton("127.0.0.1") + bytes(12)
    body = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
    body += struct.pack("!HH16s16s", lport, rport, lo, lo) + struct.pack("=III", dev, NO, NO)
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4)  # NETLINK_SOCK_DIAG
    except AttributeError:
        return None
    except OSError as exc:
        if probing and exc.errno in FULL:  # the probe says nothing of the kernel: ``diag``
            raise
        return None
    try:
        sock.send(struct.pack("=IHHII", 16 + len(body), 20, 1, 1, 0) + body)
        reply = sock.recv(8192, socket.MSG_DONTWAIT)  # queued before send() returned
    except OSError:
        return None
    finally:
        sock.close()
    if len(reply) < 20 or struct.unpack_from("=IHHII", reply)[3] != 1:
        return None
    length, kind = struct.unpack_from("=IH", reply)
    if kind == 2:  # NLMSG_ERROR: ENOENT is "no such socket", anything else no answer
        return [] if -struct.unpack_from("=i", reply, 16)[0] == errno.ENOENT else None
    if kind != 20 or length < 88 or len(reply) < 88:  # SOCK_DIAG_BY_FAMILY, inet_diag_msg
        return None
    family, state = struct.unpack_from("=BB", reply, 16)
    sport, dport, src, dst = struct.unpack_from("!HH16s16s", reply, 20)
    uid, inode = struct.unpack_from("=II", reply, 80)
    n = 4 if family == socket.AF_INET else 16
    local, remote = hexaddr(src[:n]) + ":%04X" % sport, hexaddr(dst[:n]) + ":%04X" % dport
    return [["0:", local, remote, "%02X" % state, "", "", "", str(uid), "", str(inode)]]


def hexaddr(addr):
    """An address as /proc/net/tcp writes it: 32-bit words in the machine's order."""
    return "".join("%08X" % w for w in struct.unpack("=%dI" % (len(addr) // 4), addr))


def rows(lport, rport):
    """The rows that can be the socket 127.0.0.1:lport -> 127.0.0.1:rport: the kernel's
    answer for it, or the whole of /proc/net/tcp{,6} where none comes. A request socket
    (SYN_RECV) reads uid 0 in that answer; /proc writes its listener's, so that is asked
    (and /proc read if the listener has closed since: /proc still names its owner)."""
    found = diag(lport, rport)
    if found is None:
        return tcp_table(lport)
    if found and found[0][3] == "03":
        listener = diag(lport, 0)  # with no such connection, the listener on lport
        if not listener or listener[0][3] != "0A":
            return tcp_table(lport)
        found[0][7] = listener[0][7]
    return found


def owner(cport, lport):
    """Who holds the socket 127.0.0.1:cport -> 127.0.0.1:lport: a uid (str), "c" closing or
    orphaned (nobody's: such a socket reads uid 0), "-" none (relay.peerowner's rule: one
    held by another uid is that uid's even if closing, not "c")."""
    found = "-"
    ends = [(a + ":%04X" % cport, b + ":%04X" % lport) for a in LOOPBACK for b in LOOPBACK]
    for cols in rows(cport, lport):
        if (cols[1], cols[2]) not in ends:
            continue
        if cols[9] != "0" and (cols[3] == "01" or cols[7] != str(os.getuid())):
            return cols[7]
        found = "c"
    return found


def listener_owner(port):
    """Whose listener takes a connection to 127.0.0.1:port: a uid (str), "-" if none listens.
    A stranger's wins over ours (it could take the connection)."""
    found = "-"
    ends = [a + ":%04X" % port for a in LOOPBACK + ANY]
    for cols in rows(port, 0):
        if cols[3] == "0A" and cols[1] in ends and found in ("-", str(os.getuid())):
            found = cols[7]
    return found


def accepting_owner(port, cport):
    """Whose listener took our connection 127.0.0.1:cport -> 127.0.0.1:port: a uid (str), or
    "-" if its row is gone or orphaned. The accepting end's row carries the listener's uid
    from the moment the connection is made (its inode is 0 until it is accepted), SYN_RECV
    ("03") too, before the final ACK; in any state while a process holds it (relay.peerowner's
    ``taker_in_rows``)."""
    ends = [(a + ":%04X" % port, b + ":%04X" % cport) for a in LOOPBACK for b in LOOPBACK]
    for cols in rows(port, cport):
        if (cols[1], cols[2]) in ends and (cols[3] in ("01", "03") or cols[9] != "0"):
            return cols[7]
    return "-"


# a connect's listener that is not the user's: why, but for another user's
WHY_NOT = {"-": "nothing listens there", "?": "the agent cannot tell whose it is (out of files)"}


def spare_file():
    """A file held for an owner check to use (``Agent.checked``), or None if none is free."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def open_private(name, flags, dir_fd):
    """A file of ours in the run directory (``dir_fd``, opened once its checks passed: so
    the directory, not whatever has its name now): created 0600, never through a symlink."""
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)


class Stream:
    def __init__(self, sid):
        self.sid = sid
        self.out = Outbox()
        self.recv = 0  # positions taken in from the daemon
        self.acked = 0  # what our last ACK said
        self.listener = None
        self.sock = None
        self.events = 0  # what the selector watches on sock (0: not registered)
        self.pending = Buffers()  # from the daemon, not yet written to the socket
        self.got_eof = False  # the daemon's side will send no more
        self.got_close = False
        self.read_eof = False  # our socket said EOF
        self.bulk = False  # its last read filled CHUNK (Agent.recv)
        self.held = False  # not read: too much unacknowledged (Agent.interest)
        self.shut = False
        self.asks = None  # a serve stream's hook requests in flight: {n: Ask}
        self.taken = False  # a listener the daemon gave a kernel or a forward ("take")
        self.asks_in = bytearray()  # a serve stream's replies, not yet a whole line

    def handed(self):
        return self.recv - len(self.pending)


class Ask:
    """One request on a serve stream (the hook's control channel): its connection, the line
    so far, and when it is given up."""

    def __init__(self, n, sock, stream):
        self.n = n
        self.sock = sock
        self.stream = stream
        self.buf = bytearray()
        self.sent = False  # the line went on to the daemon; its reply is awaited
        self.deadline = now() + ASK_LINE_S


class Kernel:
    def __init__(self, kid, proc, log):
        self.id = kid
        self.proc = proc
        self.log = log
        self.pipe = None  # read end while the start is in flight
        self.kill_at = None  # when it gets SIGKILL, if it has not ended by then
        self.nokernel = False
        self.ending = False  # sent a signal that ends it: its group goes when it has exited


class Agent:
    def __init__(self, dir_fd, tag, secret, server, window_s, sock_ino, path=None, generation=0):
        self.dir_fd = dir_fd  # the run directory (``run_dir``): its files are opened in it
        self.path = path  # its name (None: the usual one), where ``rebind`` makes it again
        self.tag = tag
        self.generation = generation  # the daemon's number for its start (``start``)
        self.secret = secret
        self.server = server
        self.sock_name, self.pid_name = tag + ".sock", tag + ".pid"
        self.sock_ino = sock_ino  # the socket we bound, as long as its name is ours (``keep``)
        self.kept_at = now()
        self.window_s = window_s
        self.silence_s = 30.0
        self.sel = selectors.DefaultSelector()
        self.streams = {0: Stream(0)}
        self.finished = {}  # sid: final recv position, for streams already forgotten
        self.end_told = 0  # the control stream's position after the last kernel's end said
        self.kernels = {}
        # looks for a kernel in flight (``do_which``): ident -> (its /bin/sh, answer due by);
        # answered as the shell ends (``reap``), so the links go on meanwhile
        self.whiches = {}
        self.chan = None
        self.chan_reader = None
        self.chan_bulk = False  # the channel's last read filled CHUNK (``recv``)
        self.chan_full = False  # this turn's send to the channel left some (``write_channel``)
        self.chan_out = Buffers()
        # unauthenticated connections: sock -> (reader, deadline, the challenge sent it)
        self.pending = {}
        self.asks = {}  # hook requests in flight, every serve stream's: sock -> Ask
        self.asks_made = 0
        self.paused = {}  # listeners left alone for want of files: sock -> (data, until)
        # strangers turned away, not yet said: (sid, who's kind, port) -> (count, the last who)
        self.refusals = {}
        self.refused_at = 0.0
        self.heard = now()
        self.started = now()
        self.ever_attached = False
        self.ending = False  # BYE, window or SIGTERM: kernels are being ended
        self.ended_at = None
        self.exit_reason = None
        self.terminated = False
        self.reap_due = False
        self.reaped_at = 0.0
        self.chan_events = 0
        self.dirty = set()  # streams whose ACK may have moved
        self.acks_at = 0.0  # when ACKs were last all sent
        self.control_in = bytearray()
        self.uid = str(os.getuid())
        self.rview = memoryview(bytearray(CHUNK))  # every channel and link read lands here
        self.heap = Heap()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.spare = spare_file()  # let go for an owner check (``checked``), taken back after

    def checked(self, judge, *args):
        """An owner check (``owner``, ``listener_owner``, ``accepting_owner``) with a file to
        make it with: the spare one is let go for it. A connection accepted with the agent's
        last file was judged with none left (no netlink socket, no /proc/net/tcp) and closed
        as a stranger's, though it was the user's kernel. "?" where it still cannot tell."""
        if self.spare is not None:
            os.close(self.spare)
            self.spare = None
        try:
            return judge(*args)
        except Unknown:
            return "?"
        finally:
            self.spare = spare_file()

    # -- the loop -----------------------------------------------------------------------------
    def run(self):
        signal.set_wakeup_fd(self.wake_w)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.on_signal)
        # not SIG_IGN, which its kernels would inherit: a handler is reset at their exec
        signal.signal(signal.SIGHUP, lambda signum, frame: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.sel.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        self.server.setblocking(False)
        self.sel.register(self.server, selectors.EVENT_READ, ("server", None))
        while True:
            self.chan_full = False
            ready = self.sel.select(self.timeout())
            registered = self.sel.get_map()
            for key, events in ready:
                # a socket that a handler before it in this turn closed (a link dropped or
                # gone) has a stale event: let go (what is still so, a level-triggered
                # selector says again at the next turn); one whose interest changed, what
                # it asks for now
                now_key = registered.get(key.fd)
                if now_key is None or now_key.fileobj is not key.fileobj:
                    continue
                events &= now_key.events
                if not events:
                    continue
                kind, obj = now_key.data
                try:
                    getattr(self, "on_" + kind)(key.fileobj, obj, events)
                except FrameError:
                    self.detach()
                except Exception:
                    # what a peer sent that we did not foresee ends that peer's connection,
                    # not the agent and its kernels: said in TAG.err; the daemon attaches again
                    if kind not in ("hello", "chan"):
                        raise
                    self.fault()
                    if self.chan is key.fileobj:  # attached, or attaching
                        self.detach()
                    elif kind == "hello":
                        self.drop_pending(key.fileobj)
            if self.reap_due or now() - self.reaped_at > 1.0:  # once a second at least
                self.reap_due, self.reaped_at = False, now()
                self.reap()
            self.tick()
            self.heap.rest()
            self.flush_acks()
            self.want_channel_write()
            if self.exit_reason is not None and not self.kernels:
                # what the daemon should hear of the ends is written first (bounded)
                if not self.chan_out_busy() or now() - self.ended_at > 2 * KILL_AFTER_S:
                    self.reap_whiches(ending=True)  # no shell of ours left behind
                    return

    def recv(self, sock, bulk):
        """One read of up to CHUNK bytes, as a bytes object of its own size. After a read
        that filled CHUNK (``bulk``: a kernel is writing faster than we read) it lands in a
        bytes of its own, ``sock.recv(CHUNK)``, and is not copied again. Otherwise it lands
        in one shared buffer and is copied out at its size. ``sock.recv(n)`` allocates n
        bytes and shrinks them to what came, and n = 1 MiB is above malloc's default mmap
        threshold (where ``Heap`` could not raise it): a 100-byte message kept until
        acknowledged would hold a page, and reads that come short every time (sshd writes
        the channel 32 KiB at a time) would map and fault in fresh pages at each one
        (measured: a fault per page, costing more than the copy saves)."""
        if not self.heap.stirred:
            self.heap.stir()
        if bulk:
            return sock.recv(CHUNK)
        n = sock.recv_into(self.rview)
        return bytes(self.rview[:n])

    def on_signal(self, signum, frame):
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.terminated = True

    def timeout(self):
        if self.dirty:
            return ACK_DELAY_S
        busy = self.kernels or self.pending or self.asks or self.paused or self.refusals
        busy = busy or self.whiches
        busy = busy or self.chan is None
        if busy:
            return 0.5
        return HEAP_EVERY_S if self.heap.stirred and self.heap.libc is not None else 5.0

    def on_wake(self, fd, _, events):
        try:
            os.read(fd, 4096)
        except OSError:
            pass
        self.reap_due = True  # a signal came: SIGCHLD, most likely

    def tick(self):
        t = now()
        if self.refusals and self.chan is not None and t - self.refused_at >= REFUSALS_EVERY_S:
            self.say_refusals()
        for sock, (data, until) in list(self.paused.items()):
            if t >= until:
                del self.paused[sock]
                if sock.fileno() >= 0:  # not closed meanwhile (its stream forgotten)
                    self.sel.register(sock, selectors.EVENT_READ, data)
        if self.terminated and not self.ending:
            self.end_all("terminated")
        for sock, (_, deadline, _) in list(self.pending.items()):
            if t > deadline:
                self.drop_pending(sock)
        for ask in list(self.asks.values()):
            if t > ask.deadline:
                self.end_ask(ask)
        if self.chan is not None and t - self.heard > self.silence_s:
            self.detach()  # a connection that died silently still looks open to sshd
        if self.chan is None and not self.ending:
            if not self.ever_attached and t - self.started > FIRST_ATTACH_S:
                self.end_all("nobody attached")
            elif self.ever_attached and not self.kernels and not self.links():
                self.end_all("no kernels, no links and no daemon")
            elif self.ever_attached and t - self.heard > self.window_s:
                self.end_all("window over")
        for k in self.kernels.values():
            if k.kill_at is not None and t >= k.kill_at:
                self.signal(k, signal.SIGKILL)
                k.kill_at = None
        if t - self.kept_at >= KEEP_EVERY_S and not self.ending:
            self.kept_at = t
            self.keep()

    # -- its files ----------------------------------------------------------------------------
    def keep(self):
        """The agent's socket, pid file and kernels' logs live for weeks in $TMPDIR, where cleaners
        remove files by age: systemd-tmpfiles' ``q /tmp ... 10d`` (Fedora, RHEL and their HPC
        clusters), tmpwatch, tmpreaper. They spare a live socket (systemd's looks in /proc/net/unix;
        the others take regular files only) but not the pid file, by which the next agent of this
        tag ends a dead daemon's kernels at once, nor the starts' lock (``start_lock``), nor a quiet
        kernel's log, whose last lines tell why it exited. So their times are set to now once the
        socket's is an hour old. What goes anyway (a person's ``rm -r``) is made again: the
        directory (with ``run_dir``'s checks), the socket, bound afresh and listened on in place of
        the old (without it no daemon could attach, and the kernels would end with the next outage's
        window), and the pid file. A name that is there and not ours (a successor agent's for this
        tag) is left alone."""
        if self.sock_ino is None:
            return  # its name is a successor's (``rebind``)
        try:
            st = os.stat(self.sock_name, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError:
            return self.rebind()
        if st.st_ino != self.sock_ino:
            return  # a successor's: this agent's name is its now
        self.keep_pid_file()
        if time.time() - st.st_mtime > TOUCH_AFTER_S:
            names = [self.sock_name, self.pid_name, self.tag + ".lock"]
            names += [k.log for k in self.kernels.values()]
            for name in names:
                try:
                    os.utime(name, dir_fd=self.dir_fd, follow_symlinks=False)
                except OSError:
                    pass
            try:
                os.utime(self.dir_fd)
            except OSError:
                pass

    def rebind(self):
        """Our socket's name is gone: in our directory, or with it. The socket is bound again
        where the daemon looks for it (the attach proves the secret both ways, so what
        answers there meanwhile is never trusted); the pid file too, if it went."""
        path, dir_fd, refusal = run_dir(self.path or usual_dir())
        if refusal is not None:
            return  # not ours to write in now (another user's directory): looked at again
        successor = recorded_agent(self.pid_name, dir_fd)
        if successor is not None and successor[0] != os.getpid():
            os.close(dir_fd)  # a new directory where an agent of this tag runs: its name
            self.sock_ino = None  # for good (``keep`` looks no more; its kernels are ours)
            return
        try:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            os.close(dir_fd)
            return
        try:
            server.bind(os.path.join(path, self.sock_name))  # fails if the name is taken
        except OSError:
            server.close()
            os.close(dir_fd)
            return
        try:
            os.chmod(self.sock_name, 0o600, dir_fd=dir_fd)
            server.listen(16)
            ino = os.stat(self.sock_name, dir_fd=dir_fd, follow_symlinks=False).st_ino
        except OSError:  # bound, then failed: the name is ours to take back, or it would
            server.close()  # read as a successor's at the next look, and be kept for good
            try:
                os.unlink(self.sock_name, dir_fd=dir_fd)
            except OSError:
                pass
            os.close(dir_fd)
            return
        server.setblocking(False)
        self.unregister(self.server)
        self.server.close()
        self.server, self.sock_ino = server, ino
        self.sel.register(server, selectors.EVENT_READ, ("server", None))
        if os.path.samestat(os.fstat(dir_fd), os.fstat(self.dir_fd)):
            os.close(dir_fd)
        else:  # a new directory: the old one's files (kernels' logs) went with it
            os.close(self.dir_fd)
            self.dir_fd = dir_fd
        self.keep_pid_file()

    def keep_pid_file(self):
        """The pid file, made again if it went (the next agent of this tag finds us by it);
        one that is there (ours, or a successor's) is left as it is: looked at first, so
        that no file is made (and removed) at every look while it is there."""
        try:
            os.stat(self.pid_name, dir_fd=self.dir_fd, follow_symlinks=False)
            return
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:
            write_pid(self.pid_name, True, self.dir_fd, self.generation)
        except OSError:
            pass  # there, or no room now: looked at again

    def links(self):
        """Whether the daemon would resume for something here: a link still connected, or
        holding bytes the daemon has not had; a listener it gave a kernel or a forward that
        nothing connected to yet ("take"); a hook request awaiting its reply; or a kernel's
        end it has not had (told during an outage: ``say_end``). A spare listener is not,
        nor other control lines not had (a pong to a daemon that went silent)."""
        if self.streams[0].out.base < self.end_told:
            return True
        return any(
            s.sid and (s.sock is not None or s.out.items or s.asks or (s.taken and s.listener))
            for s in self.streams.values()
        )

    # -- the daemon's channel -----------------------------------------------------------------
    def on_server(self, server, _, events):
        try:
            sock, _ = server.accept()
        except OSError as exc:
            return self.accept_failed(server, exc)
        sock.setblocking(False)
        challenge = os.urandom(32)
        try:  # a fresh socket's buffer takes it whole
            sock.send(encode(CHALLENGE, 0, challenge))
        except OSError:
            sock.close()
            return
        self.pending[sock] = (Reader(), now() + HELLO_WITHIN_S, challenge)
        self.sel.register(sock, selectors.EVENT_READ, ("hello", None))

    def fault(self):
        """The traceback of what a peer's connection was ended for (or a control line let
        go), in TAG.err."""
        write_err(self.tag, self.dir_fd, 8192)

    def drop_pending(self, sock):
        self.pending.pop(sock, None)
        self.unregister(sock)
        sock.close()

    def on_hello(self, sock, _, events):
        reader, _, challenge = self.pending[sock]
        try:
            data = sock.recv(65536)
            frames = reader.feed(data) if data else None
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, FrameError):
            frames = None
        if frames == []:
            return
        if not frames or frames[0][0] != HELLO:
            return self.drop_pending(sock)
        try:
            hello = peer_json(frames[0][2])
            nonce = bytes.fromhex(str(hello["nonce"]))
            given = str(hello["proof"]).encode()
            positions(hello.get("recv")), positions(hello.get("handed"))
        except (ValueError, KeyError, TypeError):
            return self.drop_pending(sock)
        if len(nonce) < 32:
            return self.drop_pending(sock)
        if not hmac.compare_digest(given, proof(self.secret, DAEMON, challenge, nonce).encode()):
            return self.drop_pending(sock)
        del self.pending[sock]
        self.unregister(sock)
        self.attach(sock, reader, hello, frames[1:], proof(self.secret, AGENT, nonce, challenge))

    def attach(self, sock, reader, hello, rest, shown):
        """The daemon proved it holds the secret (``on_hello``); ``shown`` is the agent's
        proof, which the WELCOME carries back."""
        self.detach()  # a second attach replaces the first
        self.chan, self.chan_reader, self.chan_out = sock, reader, Buffers()
        try:  # fewer, larger writes: sshd reads a channel 32 KiB at a time (as it may)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHAN_SNDBUF)
        except OSError:
            pass
        self.chan_bulk = False
        self.ever_attached = True
        self.heard = now()
        try:
            self.silence_s = max(5.0, 2 * float(hello.get("silence_s", 15)) + 5)
            self.window_s = float(hello.get("window_s", self.window_s))
        except (TypeError, ValueError):
            pass
        recv = hello.get("recv") or {}
        for sid in list(self.streams):
            if sid and str(sid) not in recv:
                self.forget(self.streams[sid])  # the daemon dropped it
        positions = {str(s.sid): s.recv for s in self.streams.values()}
        handed = {str(s.sid): s.handed() for s in self.streams.values()}
        for sid in recv:
            if sid not in positions and decimal(sid) in self.finished:
                positions[sid] = handed[sid] = self.finished[int(sid)]
        welcome = {
            "recv": positions,
            "handed": handed,
            "now": round(time.time(), 3),
            "proof": shown,
            # why it ends its kernels, if it does: a daemon back after the window ran out
            # here (each side counts it from the last word it heard) is told so, not taken
            # for a resume
            "ending": self.exit_reason if self.ending else None,
        }
        self.send_raw(encode(WELCOME, 0, json.dumps(welcome).encode()))
        theirs = hello.get("handed") or {}
        for sid, stream in list(self.streams.items()):
            received = recv.get(str(sid), 0)
            given = theirs.get(str(sid), received)
            for piece in stream.out.replay(sid, received, given):
                self.send_raw(piece)
            self.dirty.add(stream)
            self.want_read(stream)
        self.sel.register(sock, selectors.EVENT_READ, ("chan", None))
        self.chan_events = selectors.EVENT_READ
        if self.exit_reason is not None:  # ending: the daemon hears the exits
            pass
        for frame in rest:
            self.frame(frame)

    def detach(self):
        sock, self.chan = self.chan, None
        if sock is not None:
            self.unregister(sock)
            sock.close()
            self.chan_out = Buffers()

    def on_chan(self, sock, _, events):
        if events & selectors.EVENT_WRITE:
            self.write_channel()
        if not events & selectors.EVENT_READ or self.chan is not sock:
            return
        try:
            data = self.recv(sock, self.chan_bulk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self.detach()
        self.chan_bulk = len(data) == CHUNK
        self.heard = now()
        for frame in self.chan_reader.feed(data):
            self.frame(frame)

    def send_raw(self, piece):
        if self.chan is not None:
            self.chan_out.add(piece)

    def chan_out_busy(self):
        return self.chan is not None and bool(self.chan_out)

    def want_channel_write(self):
        """Write what waits for the channel; ask for writability only while some is left
        (registration changed only when that changes: a syscall per message otherwise)."""
        if self.chan is not None and self.chan_out and not self.chan_full:
            self.write_channel()
        if self.chan is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.chan_out else 0)
            if events != self.chan_events:
                self.chan_events = events
                self.sel.modify(self.chan, events, ("chan", None))

    def write_channel(self):
        try:
            self.chan_out.send(self.chan)
        except (BlockingIOError, InterruptedError):
            self.chan_full = True
            return
        except OSError:
            return self.detach()
        # a send that left some means the socket is full until sshd reads: not tried again
        # this turn (``want_channel_write``), the selector says when
        self.chan_full = bool(self.chan_out)

    def frame(self, frame):
        ftype, sid, payload = frame
        if ftype == BYE:  # answered at once: the daemon may close the connection then
            self.send_raw(encode(BYE, 0))
            try:  # the host's terminate_grace_s, if the daemon said it
                grace = max(0.0, float(payload.decode())) if payload else KILL_AFTER_S
            except ValueError:
                grace = KILL_AFTER_S
            return self.end_all("relay said goodbye", grace)
        stream = self.streams.get(sid)
        if stream is None:
            return  # forgotten: finished, or dropped by the daemon
        if ftype == ACK:
            if len(payload) != POS.size:
                raise FrameError("bad ACK")
            stream.out.acked(POS.unpack(payload)[0])
            self.want_read(stream)
            self.check_finished(stream)
            return
        if ftype not in (DATA, EOF, CLOSE):
            return
        stream.recv += size(ftype, payload)
        self.dirty.add(stream)
        if sid == 0:
            if ftype == DATA:
                self.control(payload)
            return
        if stream.asks is not None:
            if ftype == DATA:
                self.replies(stream, payload)
            return
        gone = stream.out.closed and stream.sock is None  # our socket is gone: nowhere to go
        full = bool(stream.pending)  # it took less than it was given: the selector says when
        if ftype == DATA and not gone:
            stream.pending.add(payload)
        elif ftype == EOF:
            stream.got_eof = True
        elif ftype == CLOSE:
            stream.got_eof = stream.got_close = True
            if gone:
                return self.check_finished(stream)
        if stream.sock is not None and not full:  # now, not a select turn later: latency
            self.write_link(stream)
        self.want_write(stream)

    def flush_acks(self, force=False):
        """ACK what has come in: at once past ACK_EVERY, else once ACK_DELAY_S has passed."""
        force = force or now() - self.acks_at >= ACK_DELAY_S
        if force:
            self.acks_at = now()
        waiting = set()
        for stream in self.dirty:
            position = stream.handed()
            if self.chan is None or position <= stream.acked:
                continue
            if force or position - stream.acked >= ACK_EVERY:
                stream.acked = position
                self.send_raw(ACK_HEADER(stream.sid) + POS.pack(position))
            else:
                waiting.add(stream)
        self.dirty = waiting

    def push(self, stream, ftype, payload=b""):
        if stream.out.closed:
            return
        for piece in stream.out.push(ftype, stream.sid, payload):
            self.send_raw(piece)
        self.check_finished(stream)

    def say(self, line):
        self.push(self.streams[0], DATA, (line + "\n").encode("utf-8", "replace"))

    def say_end(self, line):
        """A kernel's end (its exit, or that it could not start), which the daemon waits for
        and resumes for: the agent waits for its acknowledgement as for a link (``links``)."""
        self.say(line)
        self.end_told = self.streams[0].out.end

    # -- the control stream -------------------------------------------------------------------
    def control(self, data):
        self.control_in += data
        for raw in lines(self.control_in):
            op, _, rest = raw.decode("utf-8", "replace").partition(" ")
            ident, _, arg = rest.partition(" ")
            handler = getattr(self, "do_" + op, None)
            if handler is not None and ident and all(c.isalnum() for c in ident):
                try:
                    handler(ident, arg)
                except Exception:  # that line is let go (TAG.err says why), not the rest
                    self.fault()  # of its frame, which the daemon will not send again

    def do_ping(self, ident, arg):
        self.say("pong " + ident)

    def do_window(self, ident, arg):
        """relay.toml gave the host another resume_window_s: the running kernels' too."""
        try:
            window = float(arg)
        except ValueError:
            return
        if window >= 0:
            self.window_s = window

    def do_which(self, ident, arg):
        """Whether a kernel is there, as a start would look for it: by its own /bin/sh, which
        is not waited for here (a kernel on a shared file system that hangs would hold every
        link up): ``reap_whiches`` answers it as it ends, or where it does not in time."""
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", WHICH_SH],
                env=snippet_env(arg),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except Exception as exc:
            # no /bin/sh to run: as a missing kernel, as a start says it; no process or file
            # to look with: said as what it is (``not_started``), as a start says it too
            return self.say(not_started(ident, exc) or "nokernel " + ident)
        self.whiches[ident] = (proc, now() + WHICH_WAIT_S)

    def reap_whiches(self, ending=False):
        """Answer the looks for a kernel whose shell ended; one past its time (or all, when
        ``ending``) is killed and said as not answered."""
        t = now()
        for ident, (proc, due) in list(self.whiches.items()):
            code = proc.poll()
            if code is None and not ending and t < due:
                continue
            del self.whiches[ident]
            if code is not None:
                self.say(("found " if code == 0 else "nokernel ") + ident)
                continue
            try:
                proc.kill()
            except OSError:
                pass
            self.say("nostart %s - /bin/sh did not answer within %d s" % (ident, WHICH_WAIT_S))

    def do_owner(self, ident, arg):
        words = arg.split(" ")
        try:
            cport, lport = int(words[0], 16), int(words[1], 16)
        except (ValueError, IndexError):
            return self.say("owner %s ?" % ident)
        if not (0 < cport <= 65535 and 0 < lport <= 65535):
            return self.say("owner %s ?" % ident)
        self.say("owner %s %s" % (ident, self.checked(owner, cport, lport)))

    def do_start(self, ident, arg):
        if self.ending or ident in self.kernels:
            return self.say("exit %s 143" % ident)
        log_name = "%s-%s.log" % (self.tag, ident)
        r = w = log = None
        try:
            env = snippet_env(arg)
            r, w = os.pipe()
            log = open_private(log_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.dir_fd)
            proc = subprocess.Popen(
                ["/bin/sh", "-c", START_SH],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=w,
                stderr=log,
                close_fds=True,
                preexec_fn=as_the_login
                if LOGIN_UMASK is not None or FILES_GIVEN is not None
                else None,
                # a group of its own (its pid is the group's id): what the kernel starts
                # (subkernels, StartProcess's children) is ended with it (``signal``)
                start_new_session=True,
            )
        except Exception as exc:  # out of files or processes: said, nothing left behind
            for fd in (r, w):
                if fd is not None:
                    os.close(fd)
            if log is not None:
                os.close(log)
                try:
                    os.unlink(log_name, dir_fd=self.dir_fd)
                except OSError:
                    pass
            line = not_started(ident, exc)
            if line is None:  # no /bin/sh to run: as a missing kernel
                self.say("out %s %s" % (ident, str(exc)[:OUT_WIDTH]))
                return self.say_end("nokernel " + ident)
            return self.say_end(line)
        os.close(log)
        os.close(w)
        kernel = Kernel(ident, proc, log_name)
        kernel.pipe = r
        self.kernels[ident] = kernel
        os.set_blocking(r, False)
        self.sel.register(r, selectors.EVENT_READ, ("started", kernel))

    def on_started(self, fd, kernel, events):
        try:
            said = os.read(fd, 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            said = b""
        self.unregister(fd)
        os.close(fd)
        kernel.pipe = None
        self.reap_due = True  # it may have ended already: its SIGCHLD found it still starting
        if said.startswith(b"n"):
            kernel.nokernel = True
        else:
            self.say("pid %s %d" % (kernel.id, kernel.proc.pid))

    def do_kill(self, ident, arg):
        kernel = self.kernels.get(ident)
        if kernel is not None and arg in SIGNALS:
            self.signal(kernel, SIGNALS[arg])

    def signal(self, kernel, signum):
        """A signal that ends (TERM, HUP, KILL) goes to the kernel's process group, so what
        it started ends with it; an interrupt to the kernel alone. Only while the kernel is
        not reaped: until then its pid, the group's id, is its own."""
        if kernel.proc.returncode is not None:
            return
        ends = signum in ENDING
        kernel.ending = kernel.ending or ends
        try:
            (os.killpg if ends else os.kill)(kernel.proc.pid, signum)
        except OSError:
            pass

    def reap(self):
        if self.whiches:
            self.reap_whiches()
        for ident, kernel in list(self.kernels.items()):
            if kernel.pipe is not None:
                continue
            if kernel.ending and exited(kernel.proc.pid):
                # ended by us: what it started and what is left of it (a child that ignored
                # SIGTERM) goes too, while the group's id is still the kernel's (unreaped)
                try:
                    os.killpg(kernel.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
            if kernel.proc.poll() is None:
                continue
            del self.kernels[ident]
            if kernel.nokernel:
                self.say_end("nokernel " + ident)
            else:
                for line in self.last_lines(kernel.log):
                    self.say("out %s %s" % (ident, line))
                code = kernel.proc.returncode
                # with when, on this host's clock (WELCOME says it too): the daemon tells a
                # kernel that ended during an outage from one that ended as it came back;
                # and the signal that ended it (0: none), which STATUS alone cannot say: a
                # kernel's own exit(137) is not a SIGKILL (supervisor.sh, in sh, cannot tell)
                status, signum = (128 - code, -code) if code < 0 else (code, 0)
                self.say_end("exit %s %d %.3f %d" % (ident, status, time.time(), signum))
            try:
                os.unlink(kernel.log, dir_fd=self.dir_fd)
            except OSError:
                pass

    def last_lines(self, name):
        try:
            fd = open_private(name, os.O_RDONLY, self.dir_fd)
            with os.fdopen(fd, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 64 * 1024))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []
        return [ln[:OUT_WIDTH] for ln in lines[-OUT_LINES:]]

    def do_listen(self, ident, arg):
        self.listen(ident, "accept")

    def do_take(self, ident, arg):
        """A listener the daemon gave a kernel or a forward: the daemon resumes for it, so
        the agent waits for it as for a link (``links``)."""
        stream = self.streams.get(decimal(ident, SID_MOST))
        if stream is not None and stream.sid:
            stream.taken = True

    def do_serve(self, ident, arg):
        """The hook's control channel (relay.lite.hook): a listener kept until the stream is
        dropped. Each admitted connection carries one request line, sent on as "N LINE"; the
        daemon's "N REPLY" line goes back to it, and it is closed."""
        stream = self.listen(ident, "asked")
        if stream is not None:
            stream.asks = {}

    def listen(self, ident, kind):
        sid = decimal(ident, SID_MOST)
        if not sid:
            return None
        listener = None
        try:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
        except OSError as exc:
            if listener is not None:
                listener.close()
            self.say("noport %d %s" % (sid, exc.strerror or exc))
            return None
        listener.setblocking(False)
        stream = self.streams.get(sid) or Stream(sid)
        self.streams[sid] = stream
        stream.listener = listener
        self.sel.register(listener, selectors.EVENT_READ, (kind, stream))
        self.say("port %d %d" % (sid, listener.getsockname()[1]))
        return stream

    def do_connect(self, ident, arg):
        """A link whose kernel listens (Dynamic's old method): the stream is carried to
        127.0.0.1:PORT, only if the listener there is the user's own; OPEN once connected,
        else "noconnect SID REASON" and CLOSE."""
        sid, port = decimal(ident, SID_MOST), decimal(arg, 65535)
        if not sid or not port:
            return
        stream = self.streams.get(sid) or Stream(sid)
        self.streams[sid] = stream
        who = self.checked(listener_owner, port)
        if who != self.uid:
            if who not in ("-", "?"):
                self.refuse(sid, who, port)
            why = WHY_NOT.get(who, "another user listens there")
            return self.no_connect(stream, "port %d on the host: %s" % (port, why))
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            return self.no_connect(stream, "port %d on the host: %s" % (port, exc.strerror or exc))
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return self.no_connect(stream, "port %d on the host: %s" % (port, os.strerror(code)))
        self.sel.register(sock, selectors.EVENT_WRITE, ("connected", stream))

    def on_connected(self, sock, stream, events):
        self.unregister(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code or self.streams.get(stream.sid) is not stream:
            sock.close()
            if code:
                self.no_connect(stream, os.strerror(code))
            return
        # the listener was the user's when asked (``do_connect``); another user's may have
        # taken the port since (the kernel's closed, theirs bound): the end that accepted
        # is looked at before a byte goes to it
        try:
            port, cport = sock.getpeername()[1], sock.getsockname()[1]
        except OSError as exc:  # reset by now: not connected
            sock.close()
            return self.no_connect(stream, os.strerror(exc.errno or errno.ENOTCONN))
        who = self.checked(accepting_owner, port, cport)
        if who != self.uid:
            sock.close()
            if who not in ("-", "?"):
                self.refuse(stream.sid, who, port)
            why = (
                "its listener closed"
                if who == "-"
                else WHY_NOT.get(who, "another user listens there")
            )
            return self.no_connect(stream, "port %d on the host: %s" % (port, why))
        self.joined(stream, sock)

    def no_connect(self, stream, reason):
        self.say("noconnect %d %s" % (stream.sid, reason))
        self.link_gone(stream)

    def do_drop(self, ident, arg):
        stream = self.streams.get(decimal(ident, SID_MOST))
        if stream is not None and stream.sid:
            self.forget(stream)

    # -- links --------------------------------------------------------------------------------
    def admitted(self, listener, stream):
        """A connection from the listener's queue if it is the user's own, else None: only
        from the listener's own address, then only a live socket of our uid (a uid, "c"
        closing or orphaned, "-" gone, "@ADDR" from another local address)."""
        try:
            sock, peer = listener.accept()
        except OSError as exc:
            self.accept_failed(listener, exc)
            return None
        if peer[0] != "127.0.0.1":
            who = "@" + str(peer[0])
        else:
            who = self.checked(owner, peer[1], listener.getsockname()[1])
        if who != self.uid:
            sock.close()  # before a byte is read; the listener waits on for the real kernel
            self.refuse(stream.sid, who, listener.getsockname()[1])
            return None
        sock.setblocking(False)
        return sock

    def accept_failed(self, listener, exc):
        """accept() found no file (or memory) to give: the connection waits in the queue,
        and the listener, which would be reported readable at every turn, is left alone a
        while (it was a busy loop). Anything else (the peer gone already): nothing."""
        if exc.errno in FULL and listener not in self.paused:
            try:
                data = self.sel.get_key(listener).data
            except (KeyError, ValueError):
                return
            self.unregister(listener)
            self.paused[listener] = (data, now() + PAUSE_S)

    def refuse(self, sid, who, port):
        """A stranger turned away: said to the daemon ("refused SID WHO PORT COUNT"), the
        first at once, the rest counted and said once a second (``tick``), and only while a
        daemon is attached: lines said during an outage are kept until acknowledged, so a
        flood of strangers would grow the agent for the whole window. Those from other local
        addresses are counted as one (the line names the last): a user can connect from any
        of 127.0.0.0/8's addresses, each a line of its own and a log line in the daemon."""
        key = (sid, "@" if who.startswith("@") else who, port)
        self.refusals[key] = (self.refusals.get(key, (0, who))[0] + 1, who)
        if self.chan is not None and now() - self.refused_at >= REFUSALS_EVERY_S:
            self.say_refusals()

    def say_refusals(self):
        self.refused_at = now()
        for (sid, _, port), (count, who) in self.refusals.items():
            self.say("refused %d %s %d %d" % (sid, who, port, count))
        self.refusals = {}

    def on_accept(self, listener, stream, events):
        sock = self.admitted(listener, stream)
        if sock is None:
            return
        self.unregister(listener)
        listener.close()
        stream.listener = None
        self.joined(stream, sock)

    def joined(self, stream, sock):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream.sock = sock
        self.sel.register(sock, selectors.EVENT_READ, ("link", stream))
        stream.events = selectors.EVENT_READ
        self.push(stream, OPEN)
        self.want_write(stream)  # what the daemon sent before OPEN (a front end's first bytes)

    # -- the hook's requests (serve streams) --------------------------------------------------
    def on_asked(self, listener, stream, events):
        sock = self.admitted(listener, stream)
        if sock is None:
            return
        if len(stream.asks) >= ASKS_MAX:
            return sock.close()
        self.asks_made += 1
        ask = Ask(self.asks_made, sock, stream)
        stream.asks[ask.n] = ask
        self.asks[sock] = ask
        self.sel.register(sock, selectors.EVENT_READ, ("ask", ask))

    def on_ask(self, sock, ask, events):
        try:
            data = sock.recv(MAX_LINE + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        ask.buf += data
        if data and b"\n" not in ask.buf and len(ask.buf) <= MAX_LINE:
            return
        line = bytes(ask.buf).split(b"\n", 1)[0].rstrip(b"\r")[: MAX_LINE + 1]
        if not line:
            return self.end_ask(ask)
        self.unregister(sock)  # one request per connection: nothing more is read
        ask.sent, ask.deadline = True, now() + ASK_KEPT_S
        self.push(ask.stream, DATA, b"%d %s\n" % (ask.n, line))

    def replies(self, stream, data):
        stream.asks_in += data
        for raw in lines(stream.asks_in):
            n, _, reply = raw.partition(b" ")
            ask = stream.asks.get(decimal(n.decode("ascii", "replace")))
            if ask is not None:
                try:  # a short line into an idle socket's empty buffer: it never blocks
                    ask.sock.send(reply + b"\n")
                except OSError:
                    pass
                self.end_ask(ask)

    def end_ask(self, ask):
        self.asks.pop(ask.sock, None)
        if ask.stream.asks is not None:
            ask.stream.asks.pop(ask.n, None)
        self.unregister(ask.sock)
        ask.sock.close()

    def on_link(self, sock, stream, events):
        if events & selectors.EVENT_WRITE and stream.sock is sock:
            self.write_link(stream)
        if events & selectors.EVENT_READ and stream.sock is sock and not stream.read_eof:
            try:
                data = self.recv(sock, stream.bulk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return self.link_gone(stream)
            stream.bulk = len(data) == CHUNK
            if data:
                self.push(stream, DATA, data)
            else:
                stream.read_eof = True
                self.push(stream, EOF)
                self.maybe_close(stream)
        self.want_read(stream)

    def interest(self, stream):
        events = 0
        # not read past LIMIT unacknowledged, and then not again until half of it is: a
        # transfer's socket is not taken off and put back in the selector at every ACK
        if stream.out.load >= LIMIT:
            stream.held = True
        elif stream.out.load <= LIMIT // 2:
            stream.held = False
        if not stream.read_eof and not stream.held:
            events |= selectors.EVENT_READ
        if stream.pending or (stream.got_eof and not stream.shut):
            events |= selectors.EVENT_WRITE
        return events

    def want_read(self, stream):
        if stream.sock is None:
            return
        events = self.interest(stream)
        # kept on the stream: the selector's own map formats the socket's repr (two system
        # calls) for every lookup of one not registered, as a link stopped at LIMIT is
        if events == stream.events:
            return
        if not stream.events:
            self.sel.register(stream.sock, events, ("link", stream))
        elif not events:
            self.sel.unregister(stream.sock)
        else:
            self.sel.modify(stream.sock, events, ("link", stream))
        stream.events = events

    want_write = want_read

    def write_link(self, stream):
        if stream.pending:
            try:
                stream.pending.send(stream.sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return self.link_gone(stream)
            self.dirty.add(stream)
        if not stream.pending and stream.got_eof and not stream.shut:
            stream.shut = True
            if stream.got_close:
                return self.link_gone(stream)
            try:
                stream.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.maybe_close(stream)

    def maybe_close(self, stream):
        if stream.read_eof and stream.shut:
            self.link_gone(stream)

    def link_gone(self, stream):
        if stream.sock is not None:
            self.unregister(stream.sock)
            stream.sock.close()
            stream.sock = None
            stream.events = 0
        stream.pending = Buffers()
        self.dirty.add(stream)
        self.push(stream, CLOSE)

    def check_finished(self, stream):
        if stream.sid and stream.out.done and stream.got_close:
            if self.chan is not None and stream.recv > stream.acked:
                # the daemon's CLOSE acknowledged now: left to the batch, the ACK went with
                # the stream, and the daemon kept its end until the kernel's
                stream.acked = stream.recv
                self.send_raw(ACK_HEADER(stream.sid) + POS.pack(stream.recv))
            self.forget(stream)

    def forget(self, stream):
        for ask in list((stream.asks or {}).values()):
            self.end_ask(ask)
        if stream.listener is not None:
            self.unregister(stream.listener)
            stream.listener.close()
        if stream.sock is not None:
            self.unregister(stream.sock)
            stream.sock.close()
            stream.sock, stream.events = None, 0
        self.streams.pop(stream.sid, None)
        self.dirty.discard(stream)
        self.finished[stream.sid] = stream.recv
        if len(self.finished) > FINISHED_KEPT:
            del self.finished[next(iter(self.finished))]

    def unregister(self, fileobj):
        try:
            self.sel.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    # -- the end ------------------------------------------------------------------------------
    def end_all(self, reason, grace=KILL_AFTER_S):
        """End every kernel (SIGTERM, SIGKILL ``grace`` seconds later; a second call can only
        bring that closer); the loop exits once they are reaped and what the daemon should
        hear of it is written."""
        t = now()
        if not self.ending:
            self.ending = True
            self.exit_reason = reason
            self.ended_at = t
            for kernel in self.kernels.values():
                self.signal(kernel, signal.SIGTERM)
        for kernel in self.kernels.values():
            if kernel.kill_at is None or kernel.kill_at > t + grace:
                kernel.kill_at = t + grace


def not_started(ident, exc):
    """What a start (or a look for a kernel) says where ``exc`` kept it from running
    /bin/sh: ``nostart ID ERRNO TEXT`` for anything but /bin/sh itself missing or not
    executable (no file, process or memory to start it with: "nokernel" read as a kernel not
    found, and sent its user to check the path); None for that, said as a missing kernel."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOENT, errno.EACCES):
        return None
    name = errno.errorcode.get(code, "-") if isinstance(code, int) else "-"
    return "nostart %s %s %s" % (ident, name, " ".join(str(exc).split())[:OUT_WIDTH])


def snippet_env(snippet):
    """The environment a kernel's start (or its look-up) runs in: ours, with the daemon's
    sh snippet. As bytes: on Python 3.6 in the C locale (no LANG over a plain ssh exec, as on
    RHEL 7) the file system's encoding is ASCII, and a kernel path or argument outside it
    (``jörg``) could not be encoded by Popen."""
    env = dict(os.environb)
    env[b"RELAY_SNIPPET"] = snippet.encode("utf-8", "replace")
    return env


def proof(secret, who, first, second):
    """HMAC-SHA256 of ``who`` over both sides' random bytes, in hex (mux.py's ``proof``)."""
    return hmac.new(secret, who + first + second, SHA256).hexdigest()


def ACK_HEADER(sid):
    return HEADER.pack(ACK, sid, POS.size)


# -- start ----------------------------------------------------------------------------------
def usual_dir():
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", "relay-agent-%d" % os.getuid())


def run_dir(path=None):
    """Where the agent runs: ``path`` (made again if it went), else the usual
    $TMPDIR-or-/tmp/relay-agent-UID, ours and 0700; where that name is not ours (another
    user made it first in a shared /tmp, or a symlink), a directory of our own beside it
    with a name nobody can make first (``mkdtemp``: relay-agent-UID.XXXXXXXX; the daemon
    reaches the socket by the path the start says, and the next agent finds its
    predecessor there by ``beside``). As (path, a descriptor of it), or (None, None,
    (reason, path)). The checks are made on the descriptor, and every file but the socket is
    opened through it: if the name is later taken over (the directory removed by a /tmp
    cleaner, another user's made in its place), the agent's files stay in its own. (The
    socket is bound by name, once, right after; the daemon reaches it by name, and attaches
    only to what proves it holds the secret: docs/agent.md.)"""
    made = own_dir(path or usual_dir())
    if path is not None or made[2] is None or made[2][0] in ("mkdir", "full"):
        return made
    try:
        other = tempfile.mkdtemp(
            prefix="relay-agent-%d." % os.getuid(), dir=os.path.dirname(usual_dir())
        )
    except OSError:
        return made
    return checked_dir(other)


def own_dir(path):
    """``path`` made (0700) if it is not there, then ``checked_dir``. One that is there at
    the mkdir and gone at the look (another user's, made and removed again and again, to
    keep ours from being made) is tried again, a few times, then said to be ``gone``: what
    ``run_dir`` goes around, as it does another user's directory."""
    made = None, None, ("gone", path)
    for _ in range(3):
        try:
            os.mkdir(path, 0o700)
        except OSError as exc:
            if exc.errno in NO_ROOM:  # a disk with no block (ext4) or inode left for it
                return None, None, ("full", path)
            if exc.errno != errno.EEXIST:  # no TMPDIR, or not one of ours to write in
                return None, None, ("mkdir", path)
        made = checked_dir(path)
        if made[2] is None or made[2][0] != "gone":
            break
    return made


def checked_dir(path):
    """``path`` if it is our own directory, 0700, not a symlink: (path, a descriptor of it);
    else (None, None, (reason, path))."""
    try:
        st = os.lstat(path)
    except OSError:  # removed since it was made or seen
        return None, None, ("gone", path)
    if stat.S_ISLNK(st.st_mode):
        return None, None, ("symlink", path)
    if not stat.S_ISDIR(st.st_mode):
        return None, None, ("notdir", path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # replaced since, by a symlink or a file
        return None, None, ("symlink", path)
    st = os.fstat(fd)
    refusal = None
    if not stat.S_ISDIR(st.st_mode):
        refusal = "notdir"
    elif st.st_uid != os.getuid():
        refusal = "notmine"
    elif st.st_mode & 0o077:
        refusal = "mode"
    if refusal is not None:
        os.close(fd)
        return None, None, (refusal, path)
    return path, fd, None


def beside(dir_fd):
    """The other directories an agent of ours may have run in (``run_dir``): the usual one
    and those made where it was not ours, each ours and 0700, as (path, descriptor)."""
    usual = usual_dir()
    base, prefix = os.path.split(usual)
    try:
        names = [n for n in os.listdir(base) if n == prefix or n.startswith(prefix + ".")]
    except OSError:
        return []
    found = []
    for name in sorted(names):
        path, fd, refusal = checked_dir(os.path.join(base, name))
        if refusal is not None:
            continue
        if os.path.samestat(os.fstat(fd), os.fstat(dir_fd)):
            os.close(fd)
            continue
        found.append((path, fd))
    return found


def recorded_agent(pid_name, dir_fd):
    """The agent a pid file names, (pid, start time, generation), if that process still runs
    and is an agent of this tag; else None. Both are recorded: a pid alone may since name
    another process of the user's. And its command line is looked at: a start time counts
    from the boot, so a pid file that outlived a reboot (a TMPDIR on disk) could name another
    process with both the same (and a user who is root may signal any). The generation is
    the daemon's number for the start (``start``); 0 in an agent's from before it had one."""
    try:
        fd = open_private(pid_name, os.O_RDONLY, dir_fd)
        with os.fdopen(fd) as f:
            words = f.read().split()
        pid, started = int(words[0]), words[1]
        generation = decimal(words[2]) if len(words) > 2 else 0
    except (OSError, ValueError, IndexError):
        return None
    if generation is None:
        return None
    if start_time(pid) != started:
        return None
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            command = f.read()
    except OSError:
        return None
    tag = pid_name[: -len(".pid")]
    return (pid, started, generation) if tag.encode() in command else None


class Newer(Exception):
    """The agent of this tag that runs was made by a later start than ours."""

    def __init__(self, generation):
        Exception.__init__(self, generation)
        self.generation = generation


def end_predecessor(pid_name, dir_fd, generation=0):
    """SIGTERM to the agent a dead daemon left for this tag (its pid AND start time recorded),
    waited for: it ends its kernels. Returns how many were ended (0 or 1). Newer, and nothing
    signalled, where that agent was made by a later start than ours (``generation``, the
    daemon's number for this start): a start on a connection lost on the client's side
    alone is kept by sshd, and its login (a slow ~/.bashrc) can end after a later
    connection's start has made an agent that carries kernels now (a review's reproduction
    through sshd). The number is read here, just before the signal, in every directory."""
    recorded = recorded_agent(pid_name, dir_fd)
    if recorded is None or recorded[0] == os.getpid():
        return 0
    if recorded[2] > generation:
        raise Newer(recorded[2])
    pid, started = recorded[:2]
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return 0
    deadline = time.monotonic() + PREDECESSOR_WAIT_S
    while time.monotonic() < deadline and start_time(pid) == started:
        time.sleep(0.05)
    return 1


def sweep_logs(dir_fd, tag, pid_name):
    """The kernels' logs an agent of this tag left (it was killed, SIGKILL: no time to remove
    them), once no agent of this tag runs: the next agent numbers its kernels from k1 again,
    so the logs of a predecessor's k40 would never go. And a pid file it was putting in
    place (``write_pid``: TAG.pid.PID.new), which would keep its directory from going, once
    that PID runs no more: where starts are not locked apart (a TMPDIR without flock, a
    directory of their own beside one not ours), another start's agent may be writing its
    own now, and would refuse ("pidfile") if it were taken. Whether none runs."""
    if recorded_agent(pid_name, dir_fd) is not None:
        return False  # alive after all (it did not end in time): its logs are its own
    prefix = tag + "-k"
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return True
    for name in names:
        if (name.startswith(prefix) and name.endswith(".log")) or (
            name.startswith(pid_name + ".")
            and name.endswith(".new")
            and not runs(name[len(pid_name) + 1 : -len(".new")])
        ):  # not one another start's agent puts in place now (unlocked: a review's finding)
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass
    return True


def write_pid(pid_name, exclusive, dir_fd, generation=0):
    """This process's pid, start time and generation in its pid file (``recorded_agent``),
    put in place whole: written under a name of its own, then linked (``exclusive``: only
    where no pid file is) or renamed over the old. A start reading it at the moment it is
    made again (``Agent.keep``) would otherwise find it empty, see no agent, and leave
    this one running beside its own (the CI saw the empty file)."""
    new = "%s.%d.new" % (pid_name, os.getpid())
    said = ("%d %s %d\n" % (os.getpid(), start_time(os.getpid()) or "-", generation)).encode()
    try:
        write_private(new, os.O_TRUNC, dir_fd, said)
        if exclusive:
            try:
                os.link(new, pid_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except (OSError, NotImplementedError) as exc:
                if getattr(exc, "errno", None) == errno.EEXIST:
                    raise
                # a file system without hard links (EPERM, ENOTSUP), or linkat missing:
                # made in place where none is, as before (only keep makes it so, rarely)
                write_private(pid_name, os.O_EXCL, dir_fd, said)
        else:
            os.rename(new, pid_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        try:
            os.unlink(new, dir_fd=dir_fd)  # linked, or not put in place
        except OSError:
            pass


def write_private(name, flags, dir_fd, data):
    """``data`` in a file of ours (``open_private``), created with ``flags`` (O_TRUNC, O_EXCL)."""
    fd = open_private(name, os.O_WRONLY | os.O_CREAT | flags, dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_err(tag, dir_fd, most=None):
    """The exception being handled, its traceback (its last ``most`` bytes), in TAG.err."""
    said = traceback.format_exc().encode()
    try:
        write_private(tag + ".err", os.O_TRUNC, dir_fd, said[-most:] if most else said)
    except OSError:
        pass


class _LockWait(Exception):
    pass


def _lock_wait_over(signum, frame):
    raise _LockWait()


def start_lock(tag, dir_fd):
    """An exclusive flock on TAG.lock in the run directory, waited for (START_LOCK_WAIT_S at
    most): held by a start from its look at the pid file until its agent has written its own,
    so that of two starts of a tag, the second sees the first's agent. Its descriptor (not
    locked where the file system has no locks), or None if another start held it all that
    while. Where the usual directory is not ours, each start has one of its own (``run_dir``)
    and the lock keeps nothing apart: ``end_predecessor`` reads the number just before it
    signals. The file stays: a lock on a name that a start could remove while another
    waits on it would be two locks."""
    fd = open_private(tag + ".lock", os.O_RDWR | os.O_CREAT, dir_fd)
    old = signal.signal(signal.SIGALRM, _lock_wait_over)
    signal.setitimer(signal.ITIMER_REAL, START_LOCK_WAIT_S)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # interrupted by the alarm's exception, not retried
    except _LockWait:
        os.close(fd)
        return None
    except OSError:  # a TMPDIR without locks (NFS without lockd, Lustre's noflock): the
        pass  # start goes on unlocked, and ``end_predecessor`` still reads each number
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return fd


def ours(name, ino, dir_fd):
    """Whether ``name`` in the run directory is the socket this agent bound (inode ``ino``):
    asked while that socket is still open, so that no later one can have its inode."""
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == ino


def end_predecessors(tag, generation, dir_fd, others):
    """``end_predecessor`` in the run directory and in ``others`` (``beside``), with their
    kernels' logs; in those left a while ago, a killed agent's files and then the directory.
    How many were ended; Newer from the first found newer, not signalled."""
    pid_name, sock_name = tag + ".pid", tag + ".sock"
    ended = end_predecessor(pid_name, dir_fd, generation)
    sweep_logs(dir_fd, tag, pid_name)
    usual = usual_dir()
    for other, fd in others:  # where an agent ran while the usual name was not ours
        try:  # one left a while ago (not one a start is about to bind in): before any sweep
            old = other != usual and time.time() - os.fstat(fd).st_mtime > FIRST_ATTACH_S
        except OSError:
            old = False
        ended += end_predecessor(pid_name, fd, generation)
        if sweep_logs(fd, tag, pid_name) and old:
            # this tag's agent there is gone, and was killed (one that ends removes its
            # directory): its pid file and socket, no other tag's; then the directory, if
            # that left it empty (a crash's TAG.err stays, to be read)
            for name in (pid_name, sock_name, tag + ".lock"):
                try:
                    os.unlink(name, dir_fd=fd)
                except OSError:
                    pass
            try:
                os.rmdir(other)
            except OSError:
                pass
    return ended


# the room for a socket's path (sizeof sun_path): Linux's 108 bytes, the BSDs' and macOS's 104;
# a path fills it but for its last byte, the NUL that ends it. Python's bind takes one of 108
# bytes unended on some versions (and refuses it on others: a traceback, said as the agent's
# start crashing), but sshd copies the name it is asked to connect to with strlcpy, which
# keeps 107: the daemon could never attach to it (a review's finding)
SUN_PATH = 108 if sys.platform.startswith("linux") else 104


def start(tag, window, generation=0):
    # the start line begins a line: a python3 wrapper (a module system's) may have printed
    # without a newline, and the daemon looks for "agent " at a line's start
    sys.stdout.write("\n")
    if not tag or any(c not in "0123456789abcdef" for c in tag):
        print("agent refuse tag -")
        return 1
    # a host's python3, not relay's: what it is written for and tested with (vermin; each one)
    if sys.version_info < (3, 6):  # noqa: UP036
        print("agent old %d.%d" % tuple(sys.version_info[:2]))
        return 0
    # made here, said once on the start line: the session's standard output, which only the
    # daemon reads (docs/agent.md), never argv or a file
    secret = binascii.hexlify(os.urandom(32))
    login_environment()
    os.umask(0o077)
    path, dir_fd, refusal = run_dir()
    if refusal is not None:
        print("agent refuse %s %s" % refusal)
        return 1
    pid_name, sock_name = tag + ".pid", tag + ".sock"
    pid_path, sock_path = os.path.join(path, pid_name), os.path.join(path, sock_name)
    if len(os.fsencode(sock_path)) >= SUN_PATH:  # bind would fail, once predecessors had ended
        print("agent refuse toolong %s" % sock_path)
        return 1
    try:  # the daemon asks sshd for the socket by name, in UTF-8: a TMPDIR in Latin-1 was
        os.fsencode(sock_path).decode("utf-8")  # a socket it could not name (a review's finding)
    except UnicodeDecodeError:
        print("agent refuse notutf8 %s" % sock_path)
        return 1
    try:
        lock = start_lock(tag, dir_fd)
    except OSError:
        print("agent refuse lockfile %s" % os.path.join(path, tag + ".lock"))
        return 1
    if lock is None:
        print("agent refuse busy %s" % os.path.join(path, tag + ".lock"))
        return 1
    others = beside(dir_fd)
    try:
        ended = end_predecessors(tag, generation, dir_fd, others)
    except Newer as exc:
        print("agent newer %d" % exc.generation)  # and it started nothing
        return 1
    finally:
        for _, fd in others:
            os.close(fd)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for attempt in range(3):  # a stale name, or one an old agent bound again meanwhile
        try:
            if not stat.S_ISDIR(os.stat(sock_name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                os.unlink(sock_name, dir_fd=dir_fd)
        except OSError:
            pass
        try:
            server.bind(sock_path)
            break
        except OSError as exc:
            if exc.errno in NO_ROOM:  # no inode left for it: said, not a traceback
                print("agent refuse full %s" % sock_path)
                return 1
            if exc.errno != errno.EADDRINUSE or attempt == 2:
                raise
    os.chmod(sock_name, 0o600, dir_fd=dir_fd)
    server.listen(16)
    sock_ino = os.stat(sock_name, dir_fd=dir_fd, follow_symlinks=False).st_ino
    check = owner_check()
    r, w = os.pipe()
    if os.fork():
        os.close(w)
        with os.fdopen(r) as f:
            pid = f.read().strip()
        os.close(lock)  # the agent has written its pid file, or will not run
        if not pid.isdigit():  # no agent runs: its socket goes (if not another start's)
            try:  # looked at while ours is open: a later socket cannot have its inode
                if ours(sock_name, sock_ino, dir_fd):
                    os.unlink(sock_name, dir_fd=dir_fd)
            except OSError:
                pass
            server.close()
            if pid == "pidfile":  # it could not write its pid file (a full disk, a quota)
                print("agent refuse pidfile %s" % pid_path)
            # else it crashed on its way (a fork at the process limit): its traceback is
            # on stderr, which the daemon reads
            return 1
        print(
            "agent 1 %s %s %s %d %s %d"
            % (secret.decode(), pid, sock_path, os.getuid(), check, ended)
        )
        sys.stdout.flush()
        return 0
    os.close(r)
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    try:
        write_pid(pid_name, False, dir_fd, generation)
    except OSError:
        os.write(w, b"pidfile")
        os._exit(1)
    os.close(lock)  # the next start of this tag sees us now
    os.write(w, str(os.getpid()).encode())
    os.close(w)
    more_files()
    agent = None
    try:
        agent = Agent(dir_fd, tag, secret, server, float(window), sock_ino, path, generation)
        agent.run()
    except Exception:  # a bug: said where a person (or a test) can read it, then its end
        write_err(tag, agent.dir_fd if agent is not None else dir_fd)
        for kernel in agent.kernels.values() if agent is not None else ():
            agent.signal(kernel, signal.SIGKILL)  # no kernel outlives its agent
    finally:
        if agent is not None:  # its files may have been made again since (``Agent.keep``)
            dir_fd, sock_ino = agent.dir_fd, agent.sock_ino
        try:
            if ours(sock_name, sock_ino, dir_fd):  # not a successor's (ours is still open)
                os.unlink(sock_name, dir_fd=dir_fd)
        except OSError:
            pass
        try:
            fd = open_private(pid_name, os.O_RDONLY, dir_fd)
            with os.fdopen(fd) as f:
                if f.read().split()[:1] == [str(os.getpid())]:
                    os.unlink(pid_name, dir_fd=dir_fd)
        except (OSError, IndexError):
            pass
        if path != usual_dir():  # made where the usual name was not ours: gone if empty
            try:  # (no start waits on its lock: each start there made its directory anew)
                os.unlink(tag + ".lock", dir_fd=dir_fd)
            except OSError:
                pass
            try:
                os.rmdir(path)
            except OSError:
                pass
    os._exit(0)


def owner_check():
    """Whether this host tells who connects, as the start line says it: "proc" where the
    kernel's own answer (sock_diag) or /proc/net/tcp does, else "none". A /proc mounted
    with subset=pid has no net/ but its processes (predecessors are found by them), and its
    host said "none" though sock_diag answered: every launch failed (a review's finding).
    ``relay check`` runs this file's own to say the same (relay/check.py: OWNERS_PROBE)."""
    if not DIAG:
        try:
            DIAG.append(probe_diag())
        except OSError:  # out of files: /proc/net/tcp alone says, and the probe is made later
            pass
    told = bool(DIAG) and DIAG[0] is not None and os.access("/proc/self/stat", os.R_OK)
    return "proc" if told or os.access("/proc/net/tcp", os.R_OK) else "none"


def main(argv):
    if len(argv) in (4, 5) and argv[1] == "start":
        try:
            window = float(argv[3])
        except ValueError:
            window = 900.0
        generation = decimal(argv[4]) if len(argv) == 5 else 0
        if generation is None:
            sys.stderr.write("relayagent.py: GENERATION must be digits, not %r\n" % argv[4])
            return 2
        return start(argv[2], window, generation)
    sys.stderr.write("usage: relayagent.py start TAG WINDOW_S [GENERATION]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
