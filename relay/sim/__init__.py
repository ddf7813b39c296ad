"""The front-end and kernel simulator (docs/topology.md §5).

No Wolfram kernel can run where relay is tested, so these stand in for both ends of a link:

``relay.sim.kernel``    a fake kernel executable (``relay-sim-kernel``): accepts the kernel flags,
                        connects back (or listens), serves evaluations on the data channel and
                        urgent messages on the message channel, exits when its link closes.
``relay.sim.frontend``  a fake front end: creates listening TCPIP links, fills Launch-command
                        and ``$RemoteCommand`` templates as the front end does, runs them, and
                        exchanges traffic with the kernel on both channels.
``relay.sim.wire``      the simulator's own framing. The real MathLink wire format is
                        proprietary (§1); relay never parses bytes, so any framing that
                        carries arbitrary bytes both ways exercises it the same way.
``relay.sim.sshd``      a throwaway OpenSSH sshd on a loopback port with generated keys.

The simulator talks to relay only as a front end and a kernel would: through the Launch
command and through TCP connections.
"""
