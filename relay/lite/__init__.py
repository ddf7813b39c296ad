"""relay.lite: the light half of relay, standard library only. What a process that starts once
per kernel imports: ``relay launch`` (``shim``, run by the front end's Launch command and by
``$RemoteCommand``, one after another for LaunchKernels) and the simulated kernel
(``relay.sim.kernel``). Its start is paid n times in a row, so it is a bare Python start and a
few C modules (BENCHMARKS.md times it), never asyncio, asyncssh, pydantic or structlog.

- ``shim``: ``relay launch``, one request and its answer, the daemon's autostart;
- ``client``: a control-socket connection that checks it is the user's own daemon;
- ``framing``, ``minijson``: the control socket's JSON lines, without importing json;
- ``paths``: where the config and the socket are;
- ``locks``: the start lock and the daemon's lock beside the socket, and bounded waits on them;
- ``hook``: the kernel hook protocol (Dynamic), defined once for the daemon and the kernel;
- ``linkname``: TCPIP link names (parse, format, rewrite), for the daemon and the kernel.

The daemon imports these too; nothing here imports the rest of relay. One rule keeps it so,
and tests/streams/test_shim_weight.py enforces it: a module here imports only this package and
the standard library's light modules (the list is in that test), and importing any of them in
a fresh interpreter loads none of the heavy ones. A module that needs a heavier one on a rare
path (argparse for ``--help``, subprocess to autostart the daemon, ipaddress for an IPv6 literal)
imports it inside the function that takes that path: such local imports are deliberate here,
which is why ruff's PLC0415 is off for ``relay/lite/`` (pyproject.toml) rather than marked on
each line.
"""
