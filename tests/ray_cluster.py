"""A three-node Ray cluster on this machine's loopback for tests and benchmarks: a head and two workers.

The nodes are started with the `ray start` lines of the top-level ``cluster.yaml`` (parsed from its
``head_start_ray_commands`` / ``worker_start_ray_commands``), so the tests run what users run; only what
one machine needs is substituted or added (see :func:`node_command`).

Every node's IP is 127.0.0.1, the only node IP for which Ray binds its GCS, raylet and agents to
loopback alone. The head runs Ray's CLI with the README's one-machine switch; the workers run the same
``ray start`` through ``tests/ray_node.py``, which lifts that switch's refusal of worker nodes (see
there). Every node gets ports of its own, its own temp dir, a ``node_<name>`` custom resource (tests
place work and tell nodes apart by it) and its logical CPUs. Each ``ray start --block`` runs in its
own process group, stopped (or killed, to lose a node) by that group's id, never by ``ray stop``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from conftest import BIN, REPO, clean_env
from ray_heads import HEAD_ENV, free_ports

CLUSTER_YAML = REPO / "cluster.yaml"
HEAD_IP = "127.0.0.1"
WORKERS = ("w1", "w2")
OBJECT_STORE_BYTES = 1_000_000_000
# flags of cluster.yaml's lines that belong to the cluster launcher, which the tests do not run
LAUNCHER_ONLY = ("--autoscaling-config",)
# Ray's failure detection, quicker than its defaults so a test sees a killed node dead in seconds
# Ray's start waits (agents registering, the raylet appearing in the GCS), longer than its defaults: three
# nodes starting on a busy 2-core machine otherwise time out ("The current node timed out during startup")
SLOW_START = {"RAY_agent_register_timeout_ms": "120000", "RAY_raylet_start_wait_time_s": "120"}
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_initial_delay_ms": "1000"}


def launcher_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def start_line(commands: list[str]) -> tuple[dict[str, str], list[str]]:
    """The environment assignments and ``ray start`` arguments of the one command that starts Ray."""
    found = []
    for command in commands:
        for part in command.split("&&"):
            words = shlex.split(part)
            env = {}
            while words and "=" in words[0] and not words[0].startswith("-"):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            if len(words) >= 2 and Path(words[0]).name == "ray" and words[1] == "start":
                found.append((env, words[2:]))
    assert len(found) == 1, f"expected one `ray start` line in {commands}, found {len(found)}"
    return found[0]


def _flags(args: list[str]) -> dict[str, str | None]:
    """``--k=v`` / ``--k v`` / ``--switch`` as an ordered mapping."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        word = args[i]
        assert word.startswith("--"), f"unexpected argument {word!r} in cluster.yaml's ray start line"
        if "=" in word:
            key, _, value = word.partition("=")
            out[key] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[word] = args[i + 1]
            i += 1
        else:
            out[word] = None
        i += 1
    return out


def node_command(role: str, *, ip: str, gcs_port: int, config_file: str, name: str, temp_dir: str,
                 num_cpus: float, extra_env: dict | None = None) -> tuple[dict[str, str], list[str]]:
    """cluster.yaml's ``ray start`` line for ``role`` (``head``/``worker``), made runnable on this machine.

    Substituted: the GCS port (6379 there), ``$RAY_HEAD_IP``, the ``ray`` binary (this venv's) and
    ``LAKELOOP_CONFIG`` (the test's config file); dropped: :data:`LAUNCHER_ONLY`; added: the node's
    address, ports, temp dir, CPUs, its ``node_<name>`` resource and ``--block``.
    """
    cfg = launcher_config()
    env, args = start_line(cfg[f"{role}_start_ray_commands"])
    flags = _flags(args)
    for key in LAUNCHER_ONLY:
        flags.pop(key, None)
    if role == "head":
        assert flags.get("--port") == "6379", flags
        flags["--port"] = str(gcs_port)
    else:
        assert flags.get("--address") == "$RAY_HEAD_IP:6379", flags
        flags["--address"] = f"{HEAD_IP}:{gcs_port}"
    assert "LAKELOOP_CONFIG" in env and env.get("RAY_AUTH_MODE") == "token", env
    env = {**env, "LAKELOOP_CONFIG": config_file, **(extra_env or {})}
    ports = free_ports(6)
    flags.update({
        "--node-ip-address": ip, "--num-cpus": str(int(num_cpus)), "--resources": json.dumps({f"node_{name}": 1}),
        "--temp-dir": temp_dir, "--node-manager-port": str(ports[0]), "--object-manager-port": str(ports[1]),
        "--metrics-export-port": str(ports[2]), "--dashboard-agent-listen-port": str(ports[3]),
        "--dashboard-agent-grpc-port": str(ports[4]), "--runtime-env-agent-port": str(ports[5]),
        "--min-worker-port": "0", "--max-worker-port": "0",  # workers on ports the OS picks: no clash between nodes
        "--object-store-memory": str(OBJECT_STORE_BYTES),  # a shared 24 GB machine: not 30% of it per node
        "--block": None})
    if role == "head":
        dash, client = free_ports(2)
        flags.update({"--dashboard-port": str(dash), "--ray-client-server-port": str(client)})
    env.update(HEAD_ENV)  # the README's one-machine switch: node IP 127.0.0.1, every socket on loopback
    # the head: Ray's CLI as is; a worker: the same command through tests/ray_node.py (see there)
    argv = [str(BIN / "ray"), "start"] if role == "head" else [str(BIN / "python"), str(Path(__file__).with_name("ray_node.py"))]
    for key, value in flags.items():
        argv += [key] if value is None else [key, value]
    return env, argv


@dataclass
class Node:
    name: str
    ip: str
    process: subprocess.Popen
    temp_dir: str
    node_id: str | None = None

    @property
    def log(self) -> Path:
        return Path(self.temp_dir, "node.log")

    def logs(self, chars: int = 3000) -> str:
        """The end of its `ray start` output and of its raylet's log, for a failure message."""
        parts = [self.log, *Path(self.temp_dir).glob("session_*/logs/raylet.out")]
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-chars:]}" for p in parts if p.is_file())


@dataclass
class LocalCluster:
    """Handle on the running cluster: its addresses, nodes (name -> :class:`Node`) and the env for clients."""

    gcs_address: str
    dashboard_url: str
    env: dict
    config_file: str
    nodes: dict = field(default_factory=dict)

    def node_ids(self) -> dict[str, str]:
        return {n.name: n.node_id for n in self.nodes.values()}

    def kill(self, name: str) -> None:
        """Lose a node: SIGKILL its whole process group (raylet, agents, workers), no clean shutdown."""
        node = self.nodes[name]
        try:
            os.killpg(node.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.process.wait(timeout=30)


def _base_env() -> dict:
    env = clean_env(drop=("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _alive_nodes(gcs_address: str) -> list[dict]:
    """Alive nodes as the GCS sees them (a GCS client: no ``ray.init`` in the caller)."""
    from ray._private.authentication.authentication_token_setup import \
        maybe_enable_token_auth_if_token_available
    from ray._raylet import GcsClient

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # the token ~/.ray/auth_token
    try:
        infos = GcsClient(address=gcs_address).get_all_node_info(timeout=10).values()
    except Exception:  # not up yet
        return []
    return [{"id": info.node_id.hex(), "ip": info.node_manager_address,
             "resources": dict(info.resources_total)} for info in infos if info.state == 0]


def start_node(cluster: LocalCluster, role: str, name: str, ip: str, gcs_port: int, num_cpus: float,
               extra_env: dict | None = None) -> Node:
    temp_dir = tempfile.mkdtemp(prefix=f"llc-{name}-", dir="/tmp")  # short: Unix socket paths are limited
    env, argv = node_command(role, ip=ip, gcs_port=gcs_port, config_file=cluster.config_file, name=name,
                             temp_dir=temp_dir, num_cpus=num_cpus, extra_env=extra_env)
    with open(Path(temp_dir, "node.log"), "w") as log:
        process = subprocess.Popen(argv, env={**cluster.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    node = Node(name, ip, process, temp_dir)
    cluster.nodes[name] = node
    return node


def wait_for_nodes(cluster: LocalCluster, timeout_s: float = 180) -> None:
    """Until every started node is alive in the GCS; records each node's id (by its custom resource)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for node in cluster.nodes.values():
            if node.process.poll() is not None:
                raise AssertionError(f"Ray node {node.name} exited {node.process.returncode}:\n{node.logs()}")
        alive = _alive_nodes(cluster.gcs_address)
        by_name = {r: n["id"] for n in alive for r in n["resources"] if r.startswith("node_")}
        wanted = {f"node_{name}" for name in cluster.nodes}
        if wanted <= set(by_name):
            for node in cluster.nodes.values():
                node.node_id = by_name[f"node_{node.name}"]
            return
        assert time.monotonic() < deadline, f"nodes alive after {timeout_s:g} s: {sorted(by_name)}"
        time.sleep(1)


def stop_node(node: Node, grace_s: float = 15) -> None:
    """`ray start --block` stops its node on SIGTERM; after ``grace_s`` what is left of its process group is
    killed, by the group's id."""
    if node.process.poll() is None:
        node.process.send_signal(signal.SIGTERM)
    try:
        node.process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(node.process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        try:
            os.killpg(node.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.process.wait(timeout=10)
    shutil.rmtree(node.temp_dir, ignore_errors=True)


def start_cluster(workdir: Path, lake_root: str, *, cpus: tuple[float, float, float] = (1, 1, 1),
                  **config_sections) -> LocalCluster:
    """Head and two workers, all alive, every node's ``LAKELOOP_CONFIG`` the cluster's lakeloop.yaml with a
    local lake (see :func:`write_config`) and ``ray.address`` this cluster; stop it with :func:`stop_cluster`."""
    gcs_port, = free_ports(1)
    gcs_address = f"{HEAD_IP}:{gcs_port}"
    config_file = write_config(Path(workdir, "lakeloop.yaml"), lake_root, ray={"address": gcs_address},
                               **config_sections)
    cluster = LocalCluster(gcs_address=gcs_address, dashboard_url="", config_file=config_file,
                           env={**_base_env(), **SLOW_START, **FAST_HEALTH})
    try:
        head = start_node(cluster, "head", "head", HEAD_IP, gcs_port, cpus[0])
        cluster.dashboard_url = _dashboard_url(head)
        wait_for_nodes(cluster)
        for name, n in zip(WORKERS, cpus[1:]):  # one after the other: each picks its ports once the last is up
            start_worker(cluster, name, n)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def start_worker(cluster: LocalCluster, name: str, cpus: float, attempts: int = 2) -> Node:
    """A worker node, waited for until alive. A node whose `ray start` exits during startup (seen once on an
    idle machine: "The current node timed out during startup", no raylet log) is started again, once,
    with new ports; its log goes to stderr."""
    gcs_port = int(cluster.gcs_address.rsplit(":", 1)[1])
    for attempt in range(1, attempts + 1):
        node = start_node(cluster, "worker", name, HEAD_IP, gcs_port, cpus)
        try:
            wait_for_nodes(cluster)
            return node
        except AssertionError as exc:
            if attempt == attempts or node.process.poll() is None:
                raise
            print(f"Ray worker {name} exited while starting; starting it again:\n{exc}", file=sys.stderr)
            stop_node(node)
    raise AssertionError("unreachable")


def restart_worker(cluster: LocalCluster, name: str) -> Node:
    """A lost worker node back (a new node id, same name and resources); waits until it is alive."""
    old = cluster.nodes[name]
    cpus = float(old.process.args[old.process.args.index("--num-cpus") + 1])
    stop_node(old)
    return start_worker(cluster, name, cpus)


def _dashboard_url(head: Node) -> str:
    """The head's dashboard, from its command line (the port it was given)."""
    argv = head.process.args
    return f"http://127.0.0.1:{argv[argv.index('--dashboard-port') + 1]}"


def stop_cluster(cluster: LocalCluster) -> None:
    """Every node at once (SIGTERM, then what is left is killed by process group)."""
    for node in cluster.nodes.values():
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    for name in [n for n in cluster.nodes if n != "head"] + (["head"] if "head" in cluster.nodes else []):
        stop_node(cluster.nodes[name])


def write_config(path: Path, lake_root: str, **sections) -> str:
    """The cluster's lakeloop.yaml (deploy/cluster/lakeloop.yaml) with a local lake and its sqlite MLflow."""
    data = yaml.safe_load((REPO / "deploy" / "cluster" / "lakeloop.yaml").read_text())
    data["lake"] = {"root": lake_root}
    data["mlflow"] = {"tracking_uri": f"sqlite:///{lake_root}/mlflow.db"}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    return str(path)
