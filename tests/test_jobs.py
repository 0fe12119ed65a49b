"""`ray job submit --working-dir . -- python jobs/automl.py ...` against a local Ray head with its job server.

The head runs as `ray start --head --block` in its own process group, with its own
ports and temp dir, so it never touches the test session's Ray (or anyone else's);
it is stopped by that process group, never by `ray stop`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import BIN, REPO
from lakeloop.retrain.trigger import auth_headers
from test_automl import make_rows, write_table


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def ray_head():
    """A Ray head with its job server on loopback; yields (dashboard address, env for Ray clients)."""
    gcs, dash, client, agent, agent_grpc, runtime_env_agent, metrics = _free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="llray-", dir="/tmp")  # short: Unix socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env = {k: v for k, v in env.items() if not k.startswith("LAKELOOP_") and k != "RAY_ADDRESS"}
    log = open(Path(temp_dir, "head.log"), "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--dashboard-host", "127.0.0.1", "--port", str(gcs), "--dashboard-port", str(dash), "--num-cpus", "2",
         "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
         "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env_agent),
         "--metrics-export-port", str(metrics), "--temp-dir", temp_dir],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the job server answers once the head is up
            try:
                req = urllib.request.Request(f"{address}/api/jobs/", headers=auth_headers())
                with urllib.request.urlopen(req, timeout=3) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert head.poll() is None, Path(temp_dir, "head.log").read_text()
            assert time.monotonic() < deadline, "the Ray head's job server did not answer within 120 s"
            time.sleep(1)
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _group_alive(head.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _group_alive(head.pid):  # anything of that head still running: its process group, by id
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_automl_job_submitted_to_a_ray_head_registers_a_model_with_the_job_id(ll, ray_head):
    address, env = ray_head
    write_table(ll, "raw.jobdata", make_rows(200, seed=4))
    submission = f"lakeloop-test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", submission,
         "--working-dir", ".", "--", sys.executable, "jobs/automl.py", "--lake", ll.config.lake.root,
         "--table", "raw.jobdata", "--target", "label", "--features", "x1", "x2", "count", "color",
         "--timestamp-column", "at", "--families", "linear,hgb", "--max-trials", "3", "--seed", "2",
         "--name", "jobmodel", "--latency-budget-ms", "2000"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=360)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"Job '{submission}' succeeded" in output, output
    summary = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"run_id"')))
    assert summary["model"] == "jobmodel" and summary["version"] == 1 and summary["trials"] == 3
    assert summary["ray"]["submission_id"] == submission and summary["ray"]["ray_job_id"]

    tags = ll.mlflow.get_model_version("jobmodel", "1").tags
    assert tags["lakeloop.ray_submission_id"] == submission
    assert tags["lakeloop.ray_job_id"] == summary["ray"]["ray_job_id"]
    assert (tags["lakeloop.data.table"], tags["lakeloop.data.version"]) == ("raw.jobdata", "1")
    trials = ll.mlflow.search_runs([ll.experiment_id()], f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert len(trials) == 3


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_materialize_job_submitted_to_a_ray_head(ll, ray_head):
    from lakeloop.demo import scenario

    address, env = ray_head
    rows = scenario.generate(300, seed=8)
    ll.lake.ingest(scenario.write_csv(rows, Path(ll.lake.root) / "tx.csv"), "raw.transactions",
                   rules=scenario.RULES_FILE)
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
         sys.executable, "jobs/materialize.py", "merchant_stats", "--lake", ll.config.lake.root,
         "--definitions", "examples.fraud.features:definitions"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=360)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in output, output
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"view"')))
    assert result["mode"] == "full" and result["source_version"] == 1
    assert ll.features.describe("merchant_stats")["last_materialized_source_version"] == 1
    assert ll.lake.table("features.merchant_stats").to_pandas()["merchant_txn_1d"].min() >= 1
