"""relay: remote Mathematica/WSTP kernels over one persistent SSH connection per host.

The launch path, top to bottom (each noun has one module, named for it):

daemon
    ``relay.daemon``: the hosts, kernels and requested forwards a daemon holds, the operations
    on them (launch, forward, connect, status) and its scripted shutdown. Clients reach it
    through the control socket, ``relay.control``: one ``Conversation`` per client, versioned
    JSON lines (``relay.lite.framing``, ``relay.protocol``) on a 0600 Unix socket. ``relay launch``
    (``relay.lite.shim``, standard library only) is what the front end's Launch command and
    ``$RemoteCommand`` run. Starting and stopping a daemon wait on the two locks beside the
    socket (``relay.lite.locks``), never on a clock.
hosts
    ``relay.ssh.host.HostSession`` owns the one asyncssh connection to a remote machine, opened
    on first use and kept open, and composes the rest: how it is reached
    (``relay.ssh.connector``: plan, attempts, retries, login, host keys), what lives on it
    (``relay.ssh.live.Live``: the supervisor session, spare listeners, the peer guard, RTT),
    who uses it (``relay.ssh.holds``: a ``Hold`` each, an idle timer). How to reach the host
    is relay.toml merged with ssh_config (``relay.ssh.sshconfig`` reads it,
    ``relay.ssh.options`` merges); host keys and identity files are handled as ssh would
    (``relay.ssh.hostkeys``, ``relay.ssh.identity``), names resolved off the loop
    (``relay.ssh.resolver``), and files another user could change refused as ssh refuses them
    (``relay.safepath``; on the host, ``relay/ssh/safedirs.sh``); the kernel hook file is
    installed through an exec session (``relay.ssh.hookfile``).
kernels
    ``relay.kernels``: one kernel's life: forwards, start through the host's single supervisor
    session (``relay.ssh.supervisor``), callback, exit, teardown. A ``Kernel`` owns its
    forwards, its Dynamic hook (``relay.ssh.hookserver``) and its hold, and releases them once.
links and forwards
    A MathLink/WSTP TCPIP link is two TCP connections, ``DATAPORT@HOST,MESSAGEPORT@HOST``
    (``relay.lite.linkname`` parses, formats and rewrites them; pure). A forward carries one link
    across the connection, two single-use listeners each: a callback forward
    (``relay.ssh.forwards``) listens on the remote host and leads to the front end; an expose
    forward (``relay.ssh.exposed``) listens on the front end's machine and leads to the host;
    both are two channels connected when both are (``relay.ssh.linkpair``).
    Only the user's own processes get through a listener (``relay.ssh.guard``); each
    channel's bytes go through a ``relay.ssh.pipe.Pipe``, which never loses what either side
    writes first.

What a process that starts once per kernel imports (the shim, the simulated kernel) is the
package ``relay.lite``: standard library only, light modules only, one import rule that the tests
enforce (its docstring says which). The command line is ``relay.cli``, one module per command
group. Pure modules (no asyncio, no sockets): ``lite.linkname``, ``lite.framing``,
``lite.paths``, ``lite.hook``, ``hostspec``, ``kernelcmd``, ``protocol``, ``settings``,
``peerowner``'s parsers, ``errors`` (the error table), ``ssh.options``, ``ssh.remote_scripts``.
``relay.sim`` is the front-end and kernel simulator; it talks to relay only as a front end and a
kernel would. ``docs/topology.md`` holds the facts about links that all of this follows.
"""

__version__ = "0.1.0"
