"""Plain asyncssh forwarding, nothing of relay's: the reference for relay's link path.

    python -m bench.plainssh PORT KEY KNOWN_HOSTS USER DATAPORT MESSAGEPORT KERNEL [ARGS...]

One process per kernel, on uvloop as relay serve runs, AES-GCM first as relay prefers:
connect, two remote forwards (``forward_remote_port``, asyncssh's own ``SSHForwarder``) on
the server's 127.0.0.1 port 0 back to the front end's ports, then run the kernel with the
rewritten link name and wait for it. The bench times the data path only, so its cold connect
does not matter.
"""

from __future__ import annotations

import shlex
import sys

import asyncssh
import uvloop

CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]


async def main(argv: list[str]) -> int:
    port, key, known_hosts, user, data, message, *kernel = argv
    async with asyncssh.connect(
        "127.0.0.1",
        port=int(port),
        username=user,
        client_keys=[key],
        known_hosts=known_hosts,
        encryption_algs=CIPHERS,
    ) as conn:
        listeners = [
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", int(p))
            for p in (data, message)
        ]
        name = ",".join(f"{lst.get_port()}@127.0.0.1" for lst in listeners)
        result = await conn.run(shlex.join([*kernel, "-LinkName", name]))
        return int(result.exit_status or 0)


if __name__ == "__main__":
    sys.exit(uvloop.run(main(sys.argv[1:])))
