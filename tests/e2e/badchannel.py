"""A kernel whose control channel to relay is broken: runs the simulator with its
``RELAY_HOOK_PORT`` pointing elsewhere. Runs on the remote host, as the kernel would.

    python3 badchannel.py silent|gone KERNEL [ARGS ...]

``silent``  a port that accepts connections and never answers (a hung daemon or forward): the
            listening socket is inherited by the kernel, which never serves it;
``gone``    a port nobody listens on (the daemon's listener is gone): connections are refused.
``RELAY_HOOK_TIMEOUT`` is 1 s, so each bounded request gives up quickly.
"""

import os
import socket
import sys


def main() -> None:
    mode, kernel, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if mode == "silent":
        listener.listen(64)
        listener.set_inheritable(True)  # stays open, and listening, in the kernel
    else:
        listener.close()
    os.environ["RELAY_HOOK_PORT"] = str(port)
    os.environ["RELAY_HOOK_TIMEOUT"] = "1"
    os.execv(kernel, [kernel, *args])


if __name__ == "__main__":
    main()
