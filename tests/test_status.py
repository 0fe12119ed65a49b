"""``ll.status()`` and ``lakeloop status``: one screen of a lake's platform, read from the lake and MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from lakeloop.demo import scenario


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    import lakeloop

    tmp_path = tmp_path_factory.mktemp("status")
    return _populated(lakeloop.connect(lake_root=str(tmp_path / "lake")), tmp_path)


def _populated(ll, tmp_path):
    """A lake where data was ingested, views applied and one materialized, a model registered and promoted,
    serving ran (its traffic history), predictions were logged, a monitor closed windows and events happened."""
    from sklearn.linear_model import LogisticRegression

    from lakeloop import monitoring
    from lakeloop.monitoring.monitor import WINDOW_COLUMNS, WINDOWS
    from lakeloop.serving.controller import HISTORY, HISTORY_COLUMNS
    from lakeloop.serving.logbook import INFERENCE, INFERENCE_COLUMNS

    path = scenario.write_csv(scenario.generate(200, seed=2), tmp_path / "tx.csv")
    ll.lake.ingest(path, "raw.transactions", rules=scenario.RULES_FILE)
    ll.features.apply("lakeloop.demo.features:definitions")

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"amount": rng.lognormal(3, 1, 200)})
    df["is_fraud"] = (df["amount"] + rng.normal(0, 20, 200) > 40).astype(int)
    ll.models.register("fraud", LogisticRegression().fit(df[["amount"]], df["is_fraud"]), holdout=df,
                       target="is_fraud", task="classification")
    ll.models.promote("fraud", 1)

    now = datetime.now(timezone.utc)
    state = {"version": 3, "models": {"fraud": {
        "versions": {"1": {"uri": "models:/fraud/1", "aliases": ["champion"], "deployed_at": now.isoformat()}},
        "policy": {"weights": {"1": 100.0}, "shadow": [], "sticky": True}}}}
    ll.lake.create(HISTORY, HISTORY_COLUMNS, exist_ok=True)
    ll.lake.table(HISTORY).append(pd.DataFrame([{"at": pd.Timestamp(now), "model": "fraud", "action": "deploy",
                                                 "detail": "{}", "state": json.dumps(state)}]))
    ll.lake.create(INFERENCE, INFERENCE_COLUMNS, exist_ok=True)
    logged = [{"request_id": f"r{i // 2}", "row": i % 2, "time": pd.Timestamp(now - timedelta(seconds=i)),
               "model": "fraud", "version": 1, "route": "primary", "features": "{}", "output": "{}",
               "prediction": "0", "latency_ms": 2.0, "error": None} for i in range(60)]
    logged.append({**logged[0], "request_id": "old", "time": pd.Timestamp(now - timedelta(hours=1))})
    frame = pd.DataFrame(logged)
    frame["version"] = frame["version"].astype("int64")
    ll.lake.table(INFERENCE).append(frame)

    ll.lake.create(WINDOWS, WINDOW_COLUMNS, exist_ok=True)
    windows = pd.DataFrame([{c: None for c in WINDOW_COLUMNS} | {
        "model": "fraud", "window": w, "version": 1, "rows": 100, "processed_at": pd.Timestamp(now),
        "drift": w == 1, "drifted": json.dumps(["amount"] if w == 1 else []), "min_p_value": 0.001 if w else 0.4,
        "metric": "accuracy", "metric_value": 0.9 - 0.1 * w, "labelled": 100} for w in (0, 1)])
    ll.lake.table(WINDOWS).append(windows)
    monitoring.record_event(ll, "drift_detected", "fraud", version=1, reason="amount drifted")
    return ll


@pytest.mark.slow
def test_status_of_a_lake_where_nothing_runs(populated):
    ll = populated
    status = ll.status(events_limit=5)
    tables = {t["table"]: t["version"] for t in status["tables"]}
    assert tables["raw.transactions"] == 1 and "serving.traffic" in tables and "logs.inference" in tables
    views = {v["view"]: v for v in status["feature_views"]}
    assert set(views) == {"customer_stats", "merchant_stats"}
    assert views["customer_stats"]["source_version"] == 1 and views["customer_stats"]["fresh"] is False
    (model,) = status["models"]
    assert (model["model"], model["version"], model["aliases"], model["gate"]) == ("fraud", 1, ["champion"], True)
    serving = status["serving"]
    assert (serving["running"], serving["source"], serving["state_version"]) == (False, "lake", 3)
    served = serving["models"]["fraud"]
    assert served["traffic"] == {"1": 100.0}
    assert served["versions"]["1"]["requests_5m"] == 30  # 30 requests of 2 rows in the last 5 minutes
    (monitor,) = status["monitors"]
    assert (monitor["windows"], monitor["last_window"], monitor["drift"], monitor["drift_windows"]) == (2, 1, True, 1)
    assert monitor["drifted"] == ["amount"] and monitor["metric_value"] == pytest.approx(0.8)
    assert status["events"][0]["kind"] == "drift_detected"
    assert status["urls"]["endpoint"] == {"url": ll.serving.url, "docs": f"{ll.serving.url}/docs", "up": False}
    assert status["urls"]["mlflow_ui"]["tracking_uri"] == ll.config.tracking_uri
    assert json.loads(json.dumps(status)) == dict(status)
    text = repr(status)
    assert "served (last recorded state; not running)" in text and "drift_detected" in text
    assert "customer_stats v1" in text and "champion" in text
    page = status._repr_html_()
    assert "lakeloop status of" in page and "<td>fraud</td>" in page


def test_status_never_starts_ray_and_reads_an_empty_lake(lake_root):
    lake_root.mkdir()
    code = ("import sys, json, lakeloop; s = lakeloop.connect(lake_root=sys.argv[1]).status(); "
            "ray = sys.modules.get('ray'); print(json.dumps({'ray': bool(ray and ray.is_initialized()), "
            "'tables': s['tables'], 'models': s['models'], 'serving': s['serving']['models'], "
            "'monitors': s['monitors'], 'events': s['events']}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code, str(lake_root)], capture_output=True, text=True,
                                    check=True, timeout=120).stdout)
    assert out == {"ray": False, "tables": [], "models": [], "serving": {}, "monitors": [], "events": []}
    assert not (lake_root / "mlflow.db").exists()  # reading does not create the MLflow store


@pytest.mark.slow
def test_cli_status_json_and_screen(populated, tmp_path):
    lake = populated.config.lake.root
    data = json.loads(run_cli("--lake", lake, "status", "--json", "--events", "1").stdout)
    assert set(data) >= {"lake", "at", "tables", "feature_views", "models", "serving", "monitors", "events", "urls"}
    assert len(data["events"]) == 1 and data["models"][0]["aliases"] == ["champion"]
    screen = run_cli("--lake", lake, "status").stdout
    for title in ("tables", "feature views", "models", "served", "monitors", "last events", "urls"):
        assert title in screen
    missing = run_cli("--lake", str(tmp_path / "nowhere"), "status", check=False)
    assert missing.returncode == 2 and "no lake at" in missing.stderr
