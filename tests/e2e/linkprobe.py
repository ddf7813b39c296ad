"""A kernel for link-integrity tests: raw bytes on a link's two channels, on a schedule.

    python3 linkprobe.py SCHEDULE_JSON -wstp -LinkMode Connect ... -LinkName NAME

relay starts it as it starts any kernel. It connects both channels of ``-LinkName`` (in the
schedule's order), and on each channel at once, on its own threads:
- sends ``size`` deterministic bytes (``random.Random(seed)``) in ``chunk``-byte writes,
  starting at once or only after the first byte (or end) from the front end arrived;
- then half-closes (``shutdown(SHUT_WR)``), or closes outright (``close``), or cuts the
  connection in mid-transfer (``abort``: after half its bytes, unread input and all);
- reads until end of file, checking that what arrived is a prefix of what the front end's
  schedule says it sent (exactly once, in order), and counting it.
With ``message_first``, the data channel is not read until the message channel ended: urgent
bytes must get through while the data channel is saturated.
Finally it sends its findings, as one JSON line, to the Unix socket the schedule names.

Before any of that it holds both connections open until the front end has them (the schedule's
``admitted`` Unix socket is closed by the test once both front-end channels are accepted):
relay carries a connection only from a live socket of the user's own (issue 23: an orphaned
one reads uid 0 and could be anyone's), and a probe that connected and closed at once would
be refused as such. A real kernel never does that: it stays connected for its whole life.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import threading

Stream = dict[str, object]


def expected(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def link_name(argv: list[str]) -> list[tuple[str, int]]:
    words = [w.lower() for w in argv]
    name = argv[words.index("-linkname") + 1]
    out = []
    for part in name.split(","):
        port, host = part.split("@", 1)
        out.append((host, int(port)))
    return out


class Channel:
    def __init__(self, sock: socket.socket, plan: dict[str, object], role: str) -> None:
        self.sock = sock
        self.plan = plan
        self.role = role
        self.first_byte = threading.Event()
        self.may_read = threading.Event()
        self.received = 0
        self.prefix_ok = True
        self.eof = False
        self.error: str | None = None

    def send(self) -> None:
        plan = self.plan
        out = expected(int(plan["kernel_seed"]), int(plan["kernel_size"]))  # type: ignore[call-overload]
        chunk = int(plan["kernel_chunk"])  # type: ignore[call-overload]
        if plan["kernel_start"] == "after_peer":
            self.first_byte.wait(60)
        limit = len(out) // 2 if plan["kernel_end"] == "abort" else len(out)
        try:
            for i in range(0, limit, chunk):
                self.sock.sendall(out[i : min(i + chunk, limit)])
            if plan["kernel_end"] == "half_close":
                self.sock.shutdown(socket.SHUT_WR)
            elif plan["kernel_end"] in ("close", "abort"):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes our own reader too
                self.sock.close()
        except OSError as exc:
            if plan["kernel_end"] != "abort" and plan["frontend_end"] != "abort":
                self.error = f"send: {exc}"
        finally:
            self.first_byte.set()

    def receive(self) -> None:
        want = expected(int(self.plan["frontend_seed"]), int(self.plan["frontend_size"]))  # type: ignore[call-overload]
        self.may_read.wait(120)
        try:
            while True:
                data = self.sock.recv(1 << 20)
                self.first_byte.set()
                if not data:
                    self.eof = True
                    break
                if want[self.received : self.received + len(data)] != data:
                    self.prefix_ok = False
                self.received += len(data)
        except OSError as exc:
            if self.plan["kernel_end"] not in ("close", "abort") and self.plan[
                "frontend_end"
            ] not in ("abort",):
                self.error = f"recv: {exc}"
        finally:
            self.first_byte.set()

    def report(self) -> Stream:
        return {
            "received": self.received,
            "prefix_ok": self.prefix_ok,
            "eof": self.eof,
            "error": self.error,
        }


def main() -> int:
    schedule = json.loads(sys.argv[1])
    (dhost, dport), (mhost, mport) = link_name(sys.argv[2:])
    order = schedule["order"]
    if order == "message":
        msock = socket.create_connection((mhost, mport))
        dsock = socket.create_connection((dhost, dport))
    else:
        dsock = socket.create_connection((dhost, dport))
        msock = socket.create_connection((mhost, mport))
    for sock in (dsock, msock):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if schedule.get("admitted"):  # wait until relay has carried both to the front end
        with socket.socket(socket.AF_UNIX) as gate:
            gate.settimeout(120)
            gate.connect(schedule["admitted"])
            gate.recv(1)
    channels = {
        "data": Channel(dsock, schedule["data"], "data"),
        "message": Channel(msock, schedule["message"], "message"),
    }
    threads = []
    for ch in channels.values():
        for target in (ch.send, ch.receive):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            threads.append(t)
    channels["message"].may_read.set()
    if schedule.get("message_first"):
        threads[3].join(120)  # the message channel's receiver
    channels["data"].may_read.set()
    for t in threads:
        t.join(120)
    result = {role: ch.report() for role, ch in channels.items()}
    with socket.socket(socket.AF_UNIX) as report:
        report.connect(schedule["report"])
        report.sendall(json.dumps(result).encode() + b"\n")
    for sock in (dsock, msock):
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
