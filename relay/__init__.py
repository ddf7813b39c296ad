"""relay: remote Mathematica/WSTP kernels over one persistent SSH connection per host.

The architecture in five nouns (each has one module, named for it):

hosts
    A remote machine. ``relay.ssh.host.HostSession`` owns the one asyncssh connection to it,
    opened on first use and kept open, and everything that lives on that connection.
links
    A MathLink/WSTP TCPIP link is two TCP connections, ``DATAPORT@HOST,MESSAGEPORT@HOST``
    (``relay.linkname`` parses, formats and rewrites them; pure).
forwards
    For each link, two remote listeners on the remote host's 127.0.0.1 with server-chosen
    ports, leading back to the front end's two listening ports (``relay.ssh.forwards``). Each
    accepts exactly one connection, from the user's own processes only (``relay.ssh.guard``),
    and is closed as soon as both channels are connected. Each channel's bytes go through a
    ``relay.ssh.pipe.Pipe``, which never loses what either side writes first.
kernels
    A remote kernel process started and reaped by the host's single long-lived supervisor
    session (``relay.ssh.supervisor``), so 32 launches share one SSH session and never pay a
    remote shell's start-up files. ``relay.kernels`` runs one kernel's life: forwards, start,
    callback, exit, teardown.
control socket
    The daemon (``relay.daemon``) serves versioned JSON-line requests (``relay.framing``,
    ``relay.protocol``) on a 0600 Unix socket. ``relay launch`` (``relay.shim``, standard
    library only) is what the front end's Launch command and ``$RemoteCommand`` run.

Pure modules (no asyncio, no sockets): ``linkname``, ``hostspec``, ``templates``, ``kernelcmd``,
``framing``, ``protocol``, ``settings``, ``paths``. ``relay.sim`` is the front-end and kernel
simulator; it talks to relay only as a front end and a kernel would.
"""

__version__ = "0.1.0"
