"""`lakeloop features ...` and jobs/materialize.py as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO, clean_env, free_port, run_cli
from lakeloop.demo import scenario

pytestmark = pytest.mark.slow
DEFS = "examples.fraud.features:definitions"


@pytest.fixture
def attach(ray_session) -> dict:
    """Env that points a CLI process at the session's Ray (``ray.address``, token auth as a local Ray has it):
    it attaches in ~1 s instead of starting a Ray of its own (~10 s on 2 cores). Starting one from the CLI
    is covered by the first run of jobs/materialize.py below and by test_cli/test_registry/test_serve_cli."""
    return {"LAKELOOP_RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "token"}


@pytest.fixture
def project(tmp_path):
    """A folder like a user's project: the example package importable from the cwd, a lake in it."""
    (tmp_path / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    rows = scenario.generate(400, seed=2)
    run_cli("lake", "ingest", str(scenario.write_csv(rows, tmp_path / "tx.csv")), "--table", "raw.transactions",
            "--rules", str(scenario.RULES_FILE), cwd=tmp_path)
    return tmp_path


def test_apply_plan_list_describe_materialize(project, attach):
    plan = json.loads(run_cli("features", "plan", DEFS, "--json", cwd=project).stdout)
    assert {p["view"]: p["action"] for p in plan} == {"customer_stats": "create", "merchant_stats": "create"}
    json.loads(run_cli("features", "apply", DEFS, "--json", cwd=project).stdout)
    assert "unchanged" in run_cli("features", "plan", DEFS, cwd=project).stdout

    result = json.loads(run_cli("features", "materialize", "customer_stats", "--json", cwd=project,
                                env=attach).stdout)
    assert result["mode"] == "full" and result["rows_written"] == 392 and result["source_version"] == 1

    views = json.loads(run_cli("features", "list", "--json", cwd=project).stdout)
    stats = next(v for v in views if v["name"] == "customer_stats")
    assert stats["owner"] == "risk-team" and stats["last_materialized_source_version"] == 1
    assert stats["newest_event_time"].startswith("2026-01-01")
    info = json.loads(run_cli("features", "describe", "customer_stats", "--json", cwd=project).stdout)
    assert info["schema"]["amount_sum_1d"] == "float64" and info["source"] == "raw.transactions"
    human = run_cli("features", "describe", "merchant_stats", cwd=project).stdout
    assert "activity of a merchant" in human

    someone = next(r["customer_id"] for r in scenario.generate(400, seed=2) if r["customer_id"])
    looked = json.loads(run_cli("features", "lookup", "customer_stats", someone, "nobody", "--json",
                                cwd=project).stdout)
    assert [r["_missing"] for r in looked] == [True, True], "30d ttl: January's values have expired"
    follow = json.loads(run_cli("features", "follow", "merchant_stats", "--interval", "0.2",
                                "--max-seconds", "2", "--json", cwd=project, env=attach).stdout)
    assert [r["mode"] for r in follow] == ["full"]

    served = json.loads(run_cli("features", "serve", "--seconds", "1", "--json", cwd=project,
                                env={**attach, "LAKELOOP_ONLINE_PORT": str(free_port())}).stdout)
    assert served["views"] == ["customer_stats", "merchant_stats"] and served["url"].startswith("http://127.0.0.1:")

    err = run_cli("features", "materialize", "nope", cwd=project, check=False)
    assert err.returncode == 2 and "not in the catalog" in err.stderr


def test_materialize_job_entrypoint_runs_incrementally(project, attach):
    env = clean_env()
    job = [sys.executable, str(REPO / "jobs" / "materialize.py"), "merchant_stats", "--definitions", DEFS]
    first = json.loads(subprocess.run(job, cwd=project, env=env, capture_output=True, text=True,
                                      check=True, timeout=300).stdout.strip().splitlines()[-1])
    assert first["mode"] == "full"
    more = scenario.generate(100, seed=3, day=1, first_id=5000)
    run_cli("lake", "ingest", str(scenario.write_csv(more, project / "more.csv")), "--table", "raw.transactions",
            "--rules", str(scenario.RULES_FILE), cwd=project)
    second = json.loads(subprocess.run(job[:3], cwd=project, env={**env, **attach}, capture_output=True,
                                       text=True, check=True, timeout=300).stdout.strip().splitlines()[-1])
    assert second["mode"] == "incremental" and second["previous_source_version"] == 1
    assert second["source_version"] == 2


def test_follow_materializes_each_new_source_version(ll, ray_session):
    path = scenario.write_csv(scenario.generate(200, seed=4), ll.lake.root + "/a.csv")
    ll.lake.ingest(path, "raw.transactions", rules=scenario.RULES_FILE)
    ll.features.apply(DEFS)
    runs = ll.features.follow("merchant_stats", interval_s=0.1, max_runs=1)
    assert [r.mode for r in runs] == ["full"]
    ll.lake.ingest(scenario.write_csv(scenario.generate(50, seed=5, first_id=9000), ll.lake.root + "/b.csv"),
                   "raw.transactions", rules=scenario.RULES_FILE)
    runs = ll.features.follow("merchant_stats", interval_s=0.1, max_runs=1, max_seconds=60)
    assert [r.mode for r in runs] == ["incremental"]
    frame = ll.features.training_frame(
        pd.DataFrame({"merchant_id": ["m0001"], "event_timestamp": [pd.Timestamp("2026-01-02", tz="UTC")]}),
        ["merchant_stats:*"], known_time=False)
    assert frame.data["merchant_txn_1d"].iloc[0] > 0
