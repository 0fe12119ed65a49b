"""Free ports that stay free until the process that was told to use them binds them.

A port found with ``bind(port 0)`` comes from the kernel's ephemeral range, the range every outgoing
connection takes its source port from. Between finding it and the bind of the process told to use
it (a Ray head's dashboard agent binds seconds later, more under load) a connection made by anyone
on the machine can take it, and that bind fails: the head then has no job agent ("No available
agent to submit job") and dies. So ports are picked below the ephemeral range, where no connection
takes one, and above Ray's worker ports (10002-19999), under Serve's direct-ingress ports (30000+).
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 30000  # above Ray's default worker ports, below Serve's direct-ingress HTTP ports


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (Linux); the usual default elsewhere."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` nothing holds now, outside the ephemeral range where it can be.

    Tries random ports in ``[LOW, min(HIGH, ephemeral low))``; where that range is empty or full, a port
    the kernel picks (``bind`` to port 0)."""
    high = min(HIGH, ephemeral_range()[0])
    candidates = range(LOW, high)
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (see ``free_port``)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports
