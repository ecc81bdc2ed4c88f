"""Free TCP ports on loopback for the local servers and clusters started by tests and development runs.

The OS picks the ports (bind to port 0); they are released before the caller binds them, so another
process can take one in between: callers that start a server retry with fresh ports on a bind failure.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_loopback_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports free on ``host`` right now (all held open together, then released)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port(host: str = LOOPBACK) -> int:
    """One port free on ``host`` right now."""
    return free_loopback_ports(1, host)[0]
