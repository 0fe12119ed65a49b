"""lakeloop on a Ray cluster: cluster.yaml, and a head with two workers on this machine's loopback.

One cluster for the whole module (tests/ray_cluster.py), started with cluster.yaml's own `ray start`
lines; every node reads the same lakeloop config (a local lake shared by the nodes of one machine,
MLflow on sqlite under it). The tests assert where work ran by Ray node id: materialization blocks,
AutoML trials, serving replicas, the monitor actor; and they lose worker nodes for real (SIGKILL of
the node's whole process group).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, free_port
from ray_cluster import (CLUSTER_YAML, HEAD_IP, LAUNCHER_ONLY, WORKERS, _flags, launcher_config, restart_worker,
                         start_cluster, start_line, stop_cluster)

pytestmark = pytest.mark.timeout(900)


# -- cluster.yaml ---------------------------------------------------------------------------------------------------
def test_cluster_yaml_is_a_valid_ray_launcher_config_for_lakeloop():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = launcher_config()
    validate_config(prepare_config(raw))  # what `ray up` does with it; raises on anything off-schema
    assert raw["provider"]["type"] == "local" and raw["provider"]["head_ip"] and len(raw["provider"]["worker_ips"]) == 2
    assert raw["auth"]["ssh_user"]

    # every node gets the same lakeloop config and secrets file, and the cluster's token
    mounts = raw["file_mounts"]
    config_local = REPO / mounts["~/lakeloop/lakeloop.yaml"]
    from lakeloop.config import load_config

    config = load_config(str(config_local), environ={})
    assert config.lake.root.startswith("s3://") and config.mlflow.tracking_uri.startswith("http://")
    assert config.ray.address == "auto" and config.serve.replicas >= 2 and config.serve.ingress_replicas >= 2
    assert mounts["~/lakeloop/credentials.env"] == "./deploy/cluster/credentials.env"
    assert "/deploy/cluster/credentials.env" in (REPO / ".gitignore").read_text().splitlines()
    example = (REPO / "deploy/cluster/credentials.env.example").read_text()
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LAKELOOP_MLFLOW_TRACKING_URI"} <= set(
        re.findall(r"^([A-Z_]+)=", example, re.M))
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"

    # setup: a venv, torch with pyproject's pin, lakeloop
    setup = " ".join(raw["setup_commands"])
    pins = re.findall(r'"(torch[^"]*)"', (REPO / "pyproject.toml").read_text())
    assert pins and f'"{pins[0]}"' in setup
    assert "pip install" in setup and "lakeloop @" in setup

    # Ray with token auth and the config; secrets only from the file, never inline
    for role in ("head", "worker"):
        commands = raw[f"{role}_start_ray_commands"]
        env, args = start_line(commands)
        assert env == {"RAY_AUTH_MODE": "token", "LAKELOOP_CONFIG": "$HOME/lakeloop/lakeloop.yaml"}, env
        start = next(c for c in commands if "ray start" in c)
        assert ". ~/lakeloop/credentials.env" in start and not re.search(r"(SECRET|PASSWORD|TOKEN)=", start)
    head = _flags(start_line(raw["head_start_ray_commands"])[1])
    assert head["--head"] is None and head["--port"] == "6379" and head["--dashboard-host"] == "127.0.0.1"
    assert _flags(start_line(raw["worker_start_ray_commands"])[1]) == {"--address": "$RAY_HEAD_IP:6379"}

    # the commented cloud variants are valid provider blocks too
    variants = re.findall(r"^# provider:\n((?:#  .*\n)+)", CLUSTER_YAML.read_text(), re.M)
    assert len(variants) == 2
    for block in variants:
        provider = yaml.safe_load("\n".join(line[3:] for line in block.splitlines()))
        assert provider["type"] in ("aws", "gcp") and provider["region"]


# -- the cluster --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head + two workers for the module; this process drives it (a session Ray, if up, is restarted after)."""
    import ray

    from conftest import start_session_ray

    had_ray = ray.is_initialized()
    if had_ray:
        ray.shutdown()
    work = tmp_path_factory.mktemp("cluster")
    c = start_cluster(work, str(work / "lake"), serve={"port": free_port()}, online={"port": free_port()})
    try:
        yield c
    finally:
        ray.shutdown()
        stop_cluster(c)
        if had_ray:
            start_session_ray()


@pytest.fixture(scope="module")
def cl(cluster):
    """The driver's connection: the cluster's lakeloop config (its GCS address as ray.address)."""
    import lakeloop

    ll = lakeloop.connect(cluster.config_file)
    ll.ensure_ray()
    return ll


def alive_node_ids() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _loopback(host: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (a dual-stack socket bound to ::ffff:127.0.0.1)."""
    import ipaddress

    ip = ipaddress.ip_address(host)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def _listening(pgid: int) -> list[tuple[int, str, int]]:
    """(pid, host, port) of every listening TCP socket of a process group."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.pid, conn.laddr.ip, conn.laddr.port))
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return found


@pytest.mark.slow
def test_three_nodes_started_with_cluster_yaml_lines_listen_on_loopback_only(cluster, cl):
    import ray

    for name, node in cluster.nodes.items():  # the running command holds each flag of cluster.yaml's line
        role = "head" if name == "head" else "worker"
        wanted = _flags(start_line(launcher_config()[f"{role}_start_ray_commands"])[1])
        running = _flags(node.process.args[2:])
        for key, value in wanted.items():
            if key in LAUNCHER_ONLY:
                continue
            if key == "--port":
                value = cluster.gcs_address.rsplit(":", 1)[1]
            elif key == "--address":
                value = cluster.gcs_address
            assert key in running and running[key] == value, (name, key, running.get(key))
    ids = cluster.node_ids()
    assert len(set(ids.values())) == 3 and alive_node_ids() == set(ids.values())
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {HEAD_IP}
    assert ray.get_runtime_context().get_node_id() == ids["head"]  # the driver joined through the head
    for name, node in cluster.nodes.items():
        sockets = _listening(node.process.pid)
        assert sockets, f"node {name}: no listening socket found"
        assert all(_loopback(host) for _, host, _ in sockets), (name, [s for s in sockets if not _loopback(s[1])])


# -- the demo against the cluster ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_fast_runs_end_to_end_against_the_cluster_address(cluster, cl, tmp_path, capsys):
    """`lakeloop demo --fast` with LAKELOOP_RAY_ADDRESS the cluster's GCS: the whole loop (tests/demo_checks.py)."""
    from ray.job_submission import JobSubmissionClient

    from demo_checks import check_demo_summary, run_demo
    from lakeloop.retrain.trigger import auth_headers

    summary = run_demo(tmp_path, {"LAKELOOP_RAY_ADDRESS": cluster.gcs_address, "LAKELOOP_SERVE_PORT": str(free_port()),
                                  "LAKELOOP_ONLINE_PORT": str(free_port())}, timeout=540)
    check_demo_summary(summary, tmp_path / "lake", capsys)
    assert summary["ray_dashboard"].rstrip("/").endswith(cluster.dashboard_url.rsplit(":", 1)[1])
    # the retrain job ran on this cluster: its job server knows it
    jobs = JobSubmissionClient(cluster.dashboard_url, headers=auth_headers())
    assert jobs.get_job_status(summary["retrain"]["job_id"]).value == "SUCCEEDED"


# -- materialization and AutoML spread over nodes -----------------------------------------------------------------
def _transactions(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    return pd.DataFrame({"txn_id": [f"t{i:07d}" for i in range(n)],
                         "customer_id": [f"c{i:05d}" for i in rng.integers(0, 5000, n)],
                         "amount": rng.gamma(2.0, 30.0, n).round(2),
                         "event_time": start + pd.to_timedelta(rng.integers(0, 14 * 86400, n), unit="s")})


def _task_nodes(address: str, job_id: str, pattern: str) -> dict[str, str]:
    """{task id: node id} of this job's finished tasks whose name matches (Ray's state API, via the head)."""
    from ray.util.state import list_tasks

    tasks = list_tasks(address=address, filters=[("job_id", "=", job_id)], detail=True, limit=10_000, raise_on_missing_output=False)
    return {t.task_id: t.node_id for t in tasks if re.search(pattern, t.name or "") and t.state == "FINISHED"}


@pytest.mark.slow
def test_materialization_runs_blocks_on_more_than_one_node(cl, cluster):
    import ray

    from lakeloop.features import Aggregation, Entity, FeatureView

    n = 100_000  # 50,000 source rows a block, plus one: three blocks
    cl.lake.create("raw.cluster_tx", {"txn_id": "string", "customer_id": "string", "amount": "float64",
                                      "event_time": "timestamp"}, primary_key="txn_id")
    cl.lake.table("raw.cluster_tx").append(_transactions(n))
    customer = Entity(name="customer", join_keys=["customer_id"])
    view = FeatureView(name="cluster_spend", entities=[customer], source="raw.cluster_tx",
                       timestamp_field="event_time",
                       features=[Aggregation(column="amount", function="sum", window="1d")])
    cl.features.apply([customer, view])
    run = cl.features.materialize("cluster_spend")
    assert run.mode == "full"
    assert len(cl.lake.table("features.cluster_spend").read(columns=["customer_id"])) == n

    job = ray.get_runtime_context().get_job_id()
    nodes = wait_for(lambda: (lambda t: t if len(t) >= 3 else None)(_task_nodes(cluster.gcs_address, job, r"MapBatches")), 30,
                     "the materialization's block tasks in Ray's task events")
    assert set(nodes.values()) <= set(cluster.node_ids().values())
    assert len(set(nodes.values())) >= 2, f"every block ran on one node: {nodes}"


@pytest.mark.slow
def test_automl_trials_run_on_more_than_one_node(cl, cluster):
    import ray

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x1": rng.normal(size=600), "x2": rng.normal(size=600)})
    frame["y"] = (frame["x1"] + 0.5 * frame["x2"] + rng.normal(scale=0.5, size=600) > 0).astype(int)
    free = {n: r.get("CPU", 0) for n, r in ray._private.state.available_resources_per_node().items()}
    # a whole CPU a trial on nodes of one CPU, three at once: on a cluster each trial gets its own placement
    # group (no actor reuse), and Tune asks for the three together, so no two of them share a node however
    # quickly each trial ends (with actor reuse, six quick trials all ran on the head)
    result = cl.automl.run(frame, target="y", families=["linear"], max_trials=6, max_concurrent=3,
                           cpus_per_trial=1.0, register=False, gate=False, progress=False, name="cluster-automl")
    trials = cl.mlflow.search_runs([cl.experiment_id()], filter_string=(
        f"tags.`mlflow.parentRunId` = '{result.run_id}' and tags.`lakeloop.kind` = 'trial'"))
    assert len(trials) == 6
    nodes = {t.data.tags.get("lakeloop.node_id") for t in trials}
    assert None not in nodes and nodes <= set(cluster.node_ids().values())
    assert len(nodes) >= 2, f"every trial ran on one node: {nodes}; CPUs free per node before: {free}"


# -- serving over nodes, and losing one ---------------------------------------------------------------------------
def _replica_nodes(address: str) -> dict[str, list[str]]:
    """{deployment (app:deployment): [node id of each alive replica]} from Ray's state API."""
    from ray.util.state import list_actors

    found: dict[str, list[str]] = {}
    for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True, limit=10_000,
                             raise_on_missing_output=False):
        if (actor.class_name or "").startswith("ServeReplica:"):
            found.setdefault(actor.class_name.split(":", 1)[1], []).append(actor.node_id)
    return found


def _post(url: str, body: dict, timeout: float = 10) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError as exc:
        return 0, {"error": str(exc)}


@pytest.mark.slow
def test_serving_replicas_sit_on_different_nodes_and_survive_losing_a_worker(cl, cluster):
    import ray

    import serving_models
    from lakeloop.serving.deployments import app_name
    from lakeloop.serving.logbook import INFERENCE

    version = serving_models.register(cl, "spread", 100.0)
    url = cl.serving.up()
    cl.serving.deploy("spread", version)
    model_app = app_name("spread", version)

    # the product's defaults (serve.replicas 2, ingress_replicas 2 in the cluster config): replicas on distinct nodes
    placed = wait_for(lambda: (lambda r: r if sum(len(v) for k, v in r.items()) >= 4 else None)(_replica_nodes(cluster.gcs_address)),
                      60, "four replicas")
    ids = cluster.node_ids()
    for deployment, nodes in placed.items():
        assert len(nodes) == len(set(nodes)) == 2 and set(nodes) <= set(ids.values()), (deployment, nodes)
    model_nodes = next(v for k, v in placed.items() if k.startswith(model_app))
    victim = next(name for name in WORKERS if ids[name] in model_nodes)  # a worker holding a model replica

    answered, failed, stop = [], [], threading.Event()
    dead_at: list[float] = []

    def client():
        i = 0
        while not stop.is_set():
            status, body = _post(f"{url}/v1/models/spread/predict",
                                 {"rows": [{"amount": float(50 + i % 200), "country": "US"}]})
            (answered if status == 200 else failed).append((time.monotonic(), status, body.get("request_id")))
            i += 1

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(answered) >= 20, 60, "traffic before the kill", 0.1)
        cluster.kill(victim)
        wait_for(lambda: ids[victim] not in alive_node_ids(), 60, f"node {victim} declared dead")
        dead_at.append(time.monotonic())
        before = len(answered)
        wait_for(lambda: len(answered) >= before + 40, 90, "traffic after the node's loss", 0.1)
    finally:
        stop.set()
        thread.join(30)
    assert ids[victim] not in alive_node_ids() and len(alive_node_ids()) == 2
    late = [f for f in failed if f[0] > dead_at[0] + 5]
    assert not late, f"requests still failing 5 s after the node was declared dead: {late[:5]}"
    assert len(failed) <= 4, f"more requests failed than were in flight when the node went: {failed}"

    # every answered prediction is in the lake exactly once
    rids = [rid for _, _, rid in answered]

    def logged():
        table = cl.lake.table(INFERENCE)
        df = table.read(columns=["request_id", "route"]) if table.exists() else pd.DataFrame(columns=["request_id"])
        counts = df[df["request_id"].isin(rids)]["request_id"].value_counts().to_dict()
        return counts if len(counts) == len(set(rids)) else None

    counts = wait_for(logged, 60, "every answered request in logs.inference")
    assert all(n == 1 for n in counts.values()), {k: n for k, n in counts.items() if n != 1}

    # Serve replaces the lost replica on a node that is alive
    def replaced():
        nodes = _replica_nodes(cluster.gcs_address).get(next(k for k in placed if k.startswith(model_app)), [])
        return nodes if len(nodes) == 2 and set(nodes) <= alive_node_ids() and len(set(nodes)) == 2 else None

    wait_for(replaced, 90, "the model's second replica on another live node")
    restart_worker(cluster, victim)
    assert len(alive_node_ids()) == 3 and ray.is_initialized()


# -- the monitor actor, its node lost -----------------------------------------------------------------------------
@pytest.mark.slow
def test_monitor_actor_restarts_on_another_node_and_resumes_from_its_cursor(cl, cluster):
    import ray

    from lakeloop import monitoring
    from test_monitoring import log, outputs, rows

    model = "cluster-credit"
    ids = cluster.node_ids()
    reference = rows(2000, np.random.default_rng(5))
    # keep the head busy while the monitor starts, so that it lands on a worker we can lose
    free_on_head = ray._private.state.available_resources_per_node()[ids["head"]].get("CPU", 0)

    class _Hold:  # holds the head's CPUs; defined here so Ray ships it by value (workers cannot import tests/)
        def ready(self) -> bool:
            return True

    hold = ray.remote(_Hold).options(num_cpus=free_on_head, resources={"node_head": 0.001}).remote()
    ray.get(hold.ready.remote())
    victim = None
    try:
        handle = monitoring.start(cl, model, reference=reference, reference_outputs=outputs(reference), window_rows=20,
                                  poll_s=0.2, n_permutations=30, mmd_reference_rows=200, report="never",
                                  backend="scipy")
        first = _actor_node(handle)
        assert first in (ids["w1"], ids["w2"]), first
        rng = np.random.default_rng(6)
        sizes = [30, 45, 25, 50, 35, 40, 30, 45]
        for n in sizes[:4]:
            log(cl, rows(n, rng), model=model)
        wait_for(lambda: len(monitoring.windows(cl, model)) >= 4, 60, "the first windows")
        victim = next(name for name in WORKERS if ids[name] == first)
        cluster.kill(victim)
        wait_for(lambda: first not in alive_node_ids(), 60, f"node {victim} declared dead")
        for n in sizes[4:]:
            log(cl, rows(n, rng), model=model)
        expected = sum(sizes) // 20 * 20
        done, = wait_for(lambda: (lambda d: [d] if int(d["rows"].sum()) == expected else None)(
            monitoring.windows(cl, model)), 120, f"{expected} rows in windows after the restart")
        second = _actor_node(handle)
        assert second != first and second in alive_node_ids() and second != ids["head"]
        assert list(done["window"]) == list(range(len(done)))                 # no window index twice
        starts = list(zip(done["first_commit"], done["first_offset"]))
        ends = list(zip(done["next_commit"], done["next_offset"]))
        assert starts[1:] == ends[:-1], "windows must follow each other with no gap or overlap"
        status = monitoring.status(cl, model)
        assert status["running"] and status["live"]["windows_this_run"] < len(done)   # the restarted actor
        monitoring.stop(cl, model)
    finally:
        ray.kill(hold)
        if victim is not None:
            restart_worker(cluster, victim)


def _actor_node(handle) -> str:
    """The node an actor runs on, asked of the actor itself (restarts included)."""
    import ray

    return wait_for(lambda: _try(lambda: ray.get(handle.__ray_call__.remote(
        lambda self: ray.get_runtime_context().get_node_id()), timeout=10)), 120, "the actor to answer")


def _try(fn):
    try:
        return fn()
    except Exception:
        return None
