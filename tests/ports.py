"""Free loopback ports for tests that start servers.

The kernel may hand the same ephemeral port to two successive `bind(0)` calls once the first
socket is closed, so asking for ports one at a time can give two servers the same port (seen in
CI: two SuperNodes both given one runtime-API port, the second failing with EADDRINUSE).
`free_ports` holds every socket open until all are chosen, so the ports it returns are distinct.
"""

from __future__ import annotations

import contextlib
import socket


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that nothing on 127.0.0.1 listened on a moment ago."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
    return ports


def free_port() -> int:
    """One port that nothing on 127.0.0.1 listened on a moment ago."""
    return free_ports(1)[0]
