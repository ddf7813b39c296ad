"""asyncssh's empty ``SSH_MSG_IGNORE`` before every packet, left out where it protects nothing.

After key exchange asyncssh sends an empty ``SSH_MSG_IGNORE`` ahead of every packet it sends
(``SSHConnection.send_packet``: "if we're encrypting and we have no data outstanding, insert
an ignore packet"). That is the countermeasure RFC 4251 §9.3.1 gives for CBC mode, where the
last cipher block of one packet is the IV of the next and an attacker who can predict it can
test guesses at plaintext. Only CBC chains packets that way: with the ciphers relay asks for
(AES-GCM, ChaCha20-Poly1305, CTR) the packet is pure cost, and OpenSSH sends none. An empty
ignore hides nothing from traffic analysis either: it is the same size every time, always
right before a real packet.

What it costs is one more encryption, socket write and packet for sshd to decrypt for every
packet relay sends: each 32 KiB of a link's bulk data towards the kernel, each small MathLink
message, each window adjustment. ``drop_padding`` wraps one connection's ``send_packet`` so that
the ignore packet asyncssh sends from inside ``send_packet`` is skipped unless the cipher in
use towards the server is a CBC one. Every other packet, a deliberate ``MSG_IGNORE`` included,
goes out unchanged.
"""

from __future__ import annotations

from typing import Any

import asyncssh

__all__ = ["drop_padding", "padding_needed"]

MSG_IGNORE = 2  # RFC 4253 §11.2 (asyncssh.constants.MSG_IGNORE)


def padding_needed(cipher: bytes | str) -> bool:
    """Whether the cipher chains packets (CBC), so the ignore packet before each one counts."""
    name = cipher.decode("ascii", "replace") if isinstance(cipher, bytes) else cipher
    return name == "" or "-cbc" in name  # aes128-cbc, 3des-cbc, rijndael-cbc@lysator.liu.se


def drop_padding(conn: asyncssh.SSHClientConnection) -> None:
    """Make ``conn`` send no ignore packet before each packet, except under a CBC cipher.

    Call it from ``SSHClient.connection_made``, before anything is sent. If asyncssh stops
    inserting the packet, or sends it some other way, this changes nothing."""
    send = conn.send_packet
    inside = False

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        nonlocal inside
        if inside:  # sent by asyncssh from within the send of another packet
            # the cipher towards the server: asyncssh names it _enc_alg_cs (b"" before kex)
            if pkttype == MSG_IGNORE and not padding_needed(getattr(conn, "_enc_alg_cs", b"")):
                return
            send(pkttype, *args, handler=handler)
            return
        inside = True
        try:
            send(pkttype, *args, handler=handler)
        finally:
            inside = False

    conn.send_packet = send_packet  # type: ignore[method-assign]
