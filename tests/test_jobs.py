"""`ray job submit --working-dir . -- python jobs/automl.py ...` against a local Ray head with its job server.

The head runs as `ray start --head --block` in its own process group, with its own
ports and temp dir, so it never touches the test session's Ray (or anyone else's);
it is stopped by that process group, never by `ray stop`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import BIN, REPO
from lakeloop.retrain.trigger import JobTrigger, submission_id
from test_automl import make_rows, write_table


@pytest.mark.slow
@pytest.mark.timeout(600)  # the ray_head fixture may start the head up to 5 times (tests/ray_heads.py)
def test_automl_job_submitted_to_a_ray_head_registers_a_model_with_the_job_id(ll, ray_head):
    address, env, _pid = ray_head
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
@pytest.mark.timeout(600)  # the ray_head fixture may start the head up to 5 times (tests/ray_heads.py)
def test_materialize_job_submitted_to_a_ray_head(ll, ray_head):
    from lakeloop.demo import scenario

    address, env, _pid = ray_head
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


# -- a monitor's trigger: one retrain job per window, through the job server -------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)  # the ray_head fixture may start the head up to 5 times (tests/ray_heads.py)
def test_a_monitors_trigger_submits_one_retrain_job_that_records_why_it_failed(ll, ray_head):
    from lakeloop.monitoring import read_events

    address, _env, _pid = ray_head
    trigger = JobTrigger.for_lake(ll, {"model": "nochamp", "budget_s": 5}, address=address)
    context = {"model": "nochamp", "window": 7, "reason": "drift in 3 consecutive windows of version 1"}
    first = trigger(context)
    sid = submission_id(ll.config.lake.root, "nochamp", 7)
    assert first == {"submission_id": sid, "address": address}
    assert trigger({**context, "window": 8}) == {"submission_id": sid, "already_running": True}  # one in flight
    client = trigger.client()
    deadline = time.monotonic() + 240
    while not client.get_job_status(sid).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(sid)
        time.sleep(1)
    assert client.get_job_status(sid).value == "FAILED"
    assert client.get_job_info(sid).metadata["lakeloop.retrain"] == "nochamp"
    events = read_events(ll, "nochamp")
    assert list(events["kind"]) == ["retrain_failed"], client.get_job_logs(sid)
    assert "has no champion" in events["reason"].iloc[0] and events["source"].iloc[0] == f"retrain:{sid}"
    assert trigger(context) == {"submission_id": sid, "already_submitted": True}  # the same window never twice

    # the README's command: the same job through `ray job submit`
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--", sys.executable,
         "jobs/retrain.py", "--model", "nochamp", "--lake", ll.config.lake.root, "--spec-json",
         '{"budget_s": 60, "mode": "shadow"}'],
        cwd=REPO, env=_env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "model 'nochamp' has no champion to retrain against" in output, output
    assert len(read_events(ll, "nochamp", kinds=["retrain_failed"])) == 2
