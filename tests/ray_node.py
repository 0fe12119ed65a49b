"""`ray start ARGS` for a worker node of the loopback test cluster (tests/ray_cluster.py), all sockets on 127.0.0.1.

Ray binds a node's GCS, raylet and agents to 127.0.0.1 only when the node's IP is exactly 127.0.0.1;
any other IP, 127.0.0.2 included, makes them listen on every interface. Ray's CLI keeps a 127.0.0.1
node IP only with its one-machine switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the README's head
line), and with that switch it refuses to start a worker node (``--address``): one-machine clusters
are not meant to grow. This runs Ray's own ``ray start`` command, unchanged, with the switch on for
every process the node starts (GCS client, raylet, agents, workers all keep 127.0.0.1) and lifted in
this launcher process alone for the worker-node check. Nothing else differs from ``ray start``.
"""

import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by everything the node starts

from ray._common.network_utils import is_localhost  # noqa: E402
from ray._private import ray_constants, services  # noqa: E402
from ray.scripts import scripts  # noqa: E402

_resolve = services.resolve_ip_for_localhost


def _keep_loopback(host: str) -> str:
    """127.0.0.1 stays 127.0.0.1 (Ray would turn it into the machine's address on a multi-node cluster)."""
    return host if is_localhost(host) else _resolve(host)


services.resolve_ip_for_localhost = _keep_loopback
ray_constants.ENABLE_RAY_CLUSTER = True  # this process only: allow `ray start --address ...`

if __name__ == "__main__":
    sys.exit(scripts.cli(["start", *sys.argv[1:]], prog_name="ray"))
