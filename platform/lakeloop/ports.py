"""Free ports that stay free until the process that was told to use them binds them.

A port found with ``bind(port 0)`` comes from the kernel's ephemeral range, the range every outgoing
connection takes its source port from. Between finding it and the bind of the process told to use
it (a Ray head's dashboard agent binds seconds later, more under load) a connection made by anyone
on the machine can take it, and that bind fails: the head then has no job agent ("No available
agent to submit job") and dies. So ports are picked below the ephemeral range, where no connection
takes one, and above Ray's worker ports (10002-19999), under Serve's direct-ingress ports (30000+):
single ports from 20000-24999, and blocks of ports for one Serve's replicas from 25000-29999.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
import time
from pathlib import Path

LOW, HIGH = 20000, 30000  # above Ray's default worker ports, below Serve's direct-ingress HTTP ports
BLOCKS = 25000  # single ports come from [LOW, BLOCKS), blocks (free_block) from [BLOCKS, HIGH): a port handed
# out alone never lies in a block a Serve's replicas will bind (haproxy's stats listener once failed to start,
# "Address already in use", on a port in another Serve's block)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (Linux); the usual default elsewhere."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _free(host: str, port: int) -> bool:
    """Whether nothing holds ``port`` on ``host`` now (a bind succeeds)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` nothing holds now, outside the ephemeral range where it can be.

    Tries random ports in ``[LOW, min(BLOCKS, ephemeral low))``; where that range is empty or full, a port
    the kernel picks (``bind`` to port 0)."""
    high = min(BLOCKS, ephemeral_range()[0])
    candidates = range(LOW, high)
    for port in random.sample(candidates, min(200, len(candidates))):
        if _free(host, port):
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


SERVE_DEFAULT = (30000, 31000)  # Ray Serve's own range for direct-ingress HTTP ports, shared by every Serve
BLOCK = 100  # ports per block: a Serve's replicas that HAProxy sends to directly (2 per version, 2 ingress)
CLAIM_S = 3600.0  # a block handed out this recently is not handed out again while another is left


def claims_dir() -> Path:
    """Where the blocks handed out on this machine are noted (one empty file per block, its mtime the claim)."""
    shared = Path(tempfile.gettempdir(), "lakeloop-port-blocks")
    try:
        shared.mkdir(mode=0o1777, exist_ok=True)
        if os.access(shared, os.W_OK):
            return shared
    except OSError:
        pass
    own = Path(tempfile.gettempdir(), f"lakeloop-port-blocks-{os.getuid()}")
    own.mkdir(exist_ok=True)
    return own


def free_block(host: str = "127.0.0.1", size: int = BLOCK) -> tuple[int, int]:
    """``(first, end)``: ``size`` consecutive ports, none held now, for one Serve's direct-ingress replicas.

    Every Serve on a machine takes those ports from the same range by default (30000-31000), lowest first:
    in the tests' logs, replicas of different Serves tried the same ports in turn ("Failed to bind to
    address '127.0.0.1:30000' ... Retrying"), and a port one Serve's replica gives up can be taken by
    another Serve's replica while the first one's HAProxy still sends requests there, to be answered by
    the other server. Blocks lie in ``[BLOCKS, HIGH)``, below
    the ephemeral range, apart from the single ports of :func:`free_port` and clear of Serve's default range
    (a Serve started elsewhere keeps that one). A block is handed out once per ``CLAIM_S`` while another is
    left (the least recently claimed, else). Where the ephemeral range starts below ``BLOCKS + size``, all of
    ``[BLOCKS, HIGH)`` is used (a port a connection took only makes a replica try the next one); where no
    block is free at all, Serve's default range is returned."""
    high = min(HIGH, ephemeral_range()[0])
    if high - size < BLOCKS:  # a machine whose ephemeral range starts low: a taken port is only a retry
        high = HIGH
    starts = list(range(BLOCKS, high - size + 1, size))
    random.shuffle(starts)
    claims = claims_dir()
    now = time.time()

    def claimed_at(start: int) -> float:
        try:
            return (claims / str(start)).stat().st_mtime
        except OSError:
            return 0.0

    # unclaimed blocks (and claims older than CLAIM_S) first, in random order; then the least recently claimed
    for start in sorted(starts, key=lambda s: max(claimed_at(s), now - CLAIM_S)):
        if all(_free(host, port) for port in range(start, start + size)):
            try:
                (claims / str(start)).touch()
            except OSError:  # unnoted, the block still serves; another Serve may be handed it while it starts
                pass
            return start, start + size
    return SERVE_DEFAULT
