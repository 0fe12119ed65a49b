"""Drift monitors on real Delta tables, a real sqlite MLflow store and real local Ray actors.

The inference log is written the way the serving layer writes it (one
append per batch to ``logs.inference``), so these tests need no Serve app.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import itertools
import threading
import time

import numpy as np
import pandas as pd
import pytest

from lakeloop import monitoring
from lakeloop.errors import EventError, LakeloopError, MonitorError, MonitorNotFoundError, ReferenceNotFoundError
from lakeloop.monitoring import MonitorSettings, Policy
from lakeloop.monitoring.events import as_records
from lakeloop.monitoring.monitor import Monitor
from lakeloop.serving.logbook import FEEDBACK, FEEDBACK_COLUMNS, INFERENCE, INFERENCE_COLUMNS

MODEL = "credit"
REQUEST_IDS = itertools.count()  # request ids in logging order, so windows hold the same rows on every run


# -- a served model's traffic, written as the serving layer writes it --------------------------------
def rows(n: int, rng, shift: float = 0.0) -> pd.DataFrame:
    p = np.array([0.6, 0.3, 0.1]) * (1 - shift) + np.array([0.2, 0.3, 0.5]) * shift
    return pd.DataFrame({"amount": rng.normal(10 + 4 * shift, 3, n), "age": rng.integers(18, 80, n).astype(float),
                         "country": rng.choice(["US", "GB", "DE"], n, p=p / p.sum())})


def outputs(frame: pd.DataFrame) -> pd.DataFrame:
    proba = 1 / (1 + np.exp(-(frame["amount"].to_numpy() - 10) / 2))
    return pd.DataFrame({"prediction": (proba >= 0.5).astype(int), "probability": proba})


def log(ll, frame: pd.DataFrame | list[dict], *, version: int = 1, model: str = MODEL, route: str = "primary",
        outs: pd.DataFrame | None = None) -> list[dict]:
    """One append to logs.inference (one Delta commit), one request per row, JSON as the serving layer writes it
    (``json.dumps(row, default=str)``)."""
    table = ll.lake.create(INFERENCE, INFERENCE_COLUMNS, exist_ok=True)
    now = pd.Timestamp.now(tz="UTC")
    features = frame if isinstance(frame, list) else frame.to_dict(orient="records")
    outs = (outputs(frame) if outs is None else outs).to_dict(orient="records")
    records = [{"request_id": f"req-{next(REQUEST_IDS):08d}", "row": 0, "time": now, "model": model, "version": version,
                "route": route, "features": r if isinstance(r, str) else json.dumps(r, default=str),
                "output": json.dumps(o, default=str),
                "prediction": str(o["prediction"]), "latency_ms": 2.0, "error": None}
               for r, o in zip(features, outs)]
    table.append(pd.DataFrame(records))
    return records


def feedback(ll, records: list[dict], wrong_every: int | None = None) -> None:
    """Labels for the requests: the prediction, except every ``wrong_every``-th one."""
    table = ll.lake.create(FEEDBACK, FEEDBACK_COLUMNS, exist_ok=True)
    labels = []
    for i, r in enumerate(records):
        pred = json.loads(r["output"])["prediction"]
        wrong = wrong_every is not None and i % wrong_every == 0
        labels.append({"request_id": r["request_id"], "row": 0, "label": json.dumps(1 - pred if wrong else pred),
                       "time": pd.Timestamp.now(tz="UTC")})
    table.append(pd.DataFrame(labels))


def in_process(ll, settings: MonitorSettings, *, policy: Policy | None = None, trigger=None, reference=None,
               reference_outputs=None) -> Monitor:
    """The monitor's code without its actor: same tables, same MLflow run, driven by run_once()."""
    return monitoring.local_monitor(ll, MODEL, settings=settings, policy=policy, trigger=trigger, reference=reference,
                                    reference_outputs=reference_outputs)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return rows(5000, np.random.default_rng(42))


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    """A local alert receiver on 127.0.0.1: yields (url, received payloads)."""
    handler = type("Handler", (Receiver,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", handler.received
    server.shutdown()
    server.server_close()


# -- events ---------------------------------------------------------------------------------------------
def test_events_are_appended_through_one_function_and_read_back(ll):
    first = monitoring.record_event(ll, "retrain_submitted", MODEL, version=3, reason="drift",
                                    details={"job_id": "raysubmit_1"})
    monitoring.record_event(ll, "promoted", MODEL, version=4, reason="canary passed")
    monitoring.record_event(ll, "gate_failed", "other", version=1)
    assert first["details"] == {"job_id": "raysubmit_1"} and first["kind"] == "retrain_submitted"

    mine = monitoring.read_events(ll, MODEL)
    assert list(mine["kind"]) == ["promoted", "retrain_submitted"]          # newest first
    assert list(monitoring.read_events(ll, kinds=["gate_failed"])["model"]) == ["other"]
    assert json.loads(mine.iloc[1]["details"]) == {"job_id": "raysubmit_1"}
    monitoring.record_event(ll, "alert", MODEL, reason="no version")
    newest = as_records(monitoring.read_events(ll, MODEL, limit=1))[0]
    assert (newest["kind"], newest["version"], newest["details"]) == ("alert", None, {})
    with pytest.raises(EventError, match="unknown event kind 'promote'.*promoted"):
        monitoring.record_event(ll, "promote", MODEL)
    with pytest.raises(EventError, match="model"):
        monitoring.record_event(ll, "alert", "")
    assert issubclass(EventError, LakeloopError)


def test_live_metrics_join_predictions_with_labels_by_request_and_row():
    from lakeloop.monitoring.metric import score

    served = pd.DataFrame({"request_id": ["a", "a", "b", "c"], "row": [0, 1, 0, 0],
                           "output": [json.dumps({"prediction": p, "probability": q})
                                      for p, q in [(1, 0.9), (0, 0.2), (1, 0.6), (0, 0.4)]]})
    labels = pd.DataFrame({"request_id": ["a", "a", "b", "zzz"], "row": [0, 1, 0, 0],
                           "label": [json.dumps(v) for v in (1, 1, 1.0, 0)]})
    assert score(served, labels, "accuracy") == (pytest.approx(2 / 3), 3)      # 1.0 and 1 are the same class
    assert score(served, labels.iloc[:0], "accuracy") == (None, 0)
    value, n = score(served, labels.assign(label=[json.dumps(v) for v in (1, 0, 0, 0)]), "roc_auc")
    assert (value, n) == (pytest.approx(1.0), 3)                                # 0.9 > 0.6 > 0.2 ranks 1, 0, 0
    regression = served.assign(output=[json.dumps({"prediction": v}) for v in (1.0, 2.0, 3.0, 4.0)])
    assert score(regression, labels.assign(label=["2.0", "2.0", "5.0", "0"]), "rmse")[0] == \
        pytest.approx(np.sqrt((1 + 0 + 4) / 3))
    assert score(regression, labels.assign(label=["2.0", "2.0", "5.0", "0"]), "mae")[0] == pytest.approx(1.0)


# -- the monitor's work, in process ----------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["scipy", "alibi"])
def test_windows_per_served_version_with_live_metric_mlflow_metrics_reports_and_status(ll, reference, backend):
    rng = np.random.default_rng(1)
    settings = MonitorSettings(window_rows=50, n_permutations=100, mmd_reference_rows=300, report="drift",
                               backend=backend)
    v1 = log(ll, rows(70, rng), version=1)
    v2 = log(ll, rows(60, rng), version=2)
    v1 += log(ll, rows(50, rng), version=1)
    log(ll, rows(30, rng), version=1, route="shadow")                  # shadow traffic is not monitored
    log(ll, rows(30, rng), version=1, model="other")                   # nor other models
    feedback(ll, v1[:70], wrong_every=5)                                # 56 of the first 70 labels agree
    monitor = in_process(ll, settings, reference=reference, reference_outputs=outputs(reference))

    done = monitor.run_once()
    assert [(d["version"], d["rows"]) for d in done] == [(1, 50), (1, 50), (2, 50)]
    assert [d["drift"] for d in done] == [False, False, False]
    assert monitor.stream.pending() == {1: 20, 2: 10}
    assert done[1]["metric"] == "accuracy" and done[1]["value"] == pytest.approx(0.8)   # over windows 0 and 1

    drifted = log(ll, rows(80, rng, shift=1.0), version=1)
    done = monitor.run_once()
    assert [(d["window"], d["version"], d["drift"], d["prediction_drift"]) for d in done] == \
        [(3, 1, True, True), (4, 1, True, True)]
    assert monitor.stream.pending() == {2: 10}

    client = ll.mlflow
    history = client.get_metric_history(monitor.run_id, "v1/drift")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 0.0), (3, 1.0), (4, 1.0)]
    assert [m.step for m in client.get_metric_history(monitor.run_id, "v2/mmd_p_value")] == [2]
    assert client.get_metric_history(monitor.run_id, "v1/p_value/amount")[-1].value < 1e-6
    reports = [a.path for a in client.list_artifacts(monitor.run_id, "reports")]
    # drifting windows only, and of a streak the first (then every report_every-th: 10 by default)
    assert reports == ["reports/window_00003_v1"]
    pngs = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(monitor.run_id, reports[0])}
    assert pngs == {"amount.png", "age.png", "country.png", "summary.json"}

    kinds = monitoring.read_events(ll, MODEL)
    assert list(kinds["kind"]) == ["drift_detected", "drift_detected"]
    assert "amount" in kinds.iloc[0]["reason"]

    status = monitoring.status(ll, MODEL, live=False)
    assert status["windows"] == 5 and status["rows"] == 250 and status["backend"] == backend
    v1s = status["versions"][1]
    assert v1s["windows"] == 4 and v1s["drift"] is True and v1s["drift_windows"] == 2
    assert v1s["p_values"]["amount"] < 1e-6 and v1s["mmd"]["drift"] and "amount" in v1s["drifted"]
    assert v1s["prediction_p_values"]["probability"] < 1e-6
    assert status["versions"][2]["drift"] is False
    assert len(v2) == 60 and status["cursor"]["streams"]["2"] == [2, 50]   # commit 2 (v2's rows): 50 counted
    assert [e["kind"] for e in status["events"]] == ["drift_detected", "drift_detected"]
    assert len(drifted) == 80 and status["policy"]["state"]["consecutive"]["1"] == 2
    from conftest import run_cli

    shown = run_cli("monitor", "status", MODEL, env={"LAKELOOP_LAKE_ROOT": ll.config.lake.root}).stdout
    assert "5 windows, 250 rows" in shown and "drift_detected" in shown


def test_a_failed_submission_starts_no_cooldown_and_the_next_drifting_run_tries_again(ll, reference):
    calls = []

    def flaky(context):  # the job server is not ready the first time
        calls.append(context["window"])
        if len(calls) == 1:
            raise RuntimeError("Request failed with status code 500: No available agent to submit job")
        return {"submission_id": "raysubmit_ok"}

    settings = MonitorSettings(window_rows=40, n_permutations=50, report="never")
    monitor = in_process(ll, settings, policy=Policy(consecutive=2, cooldown_s=3600), trigger=flaky,
                         reference=reference, reference_outputs=outputs(reference))
    rng = np.random.default_rng(3)
    log(ll, rows(160, rng, shift=0.8))
    done = monitor.run_once()
    assert [d["decision"]["trigger"] for d in done] == [False, True, False, True]  # no cooldown after a failure
    assert calls == [1, 3]
    alerts = monitoring.read_events(ll, MODEL, kinds=["alert"])
    assert any("the retrain trigger failed: RuntimeError" in r for r in alerts["reason"])
    sub = monitoring.read_events(ll, MODEL, kinds=["retrain_submitted"])
    assert len(sub) == 1 and json.loads(sub.iloc[0]["details"])["result"] == {"submission_id": "raysubmit_ok"}
    state = json.loads(monitoring.windows(ll, MODEL).iloc[-1]["policy"])["state"]
    assert state["triggers"] == 1 and state["last_trigger"]["window"] == 3 and state["in_flight"]["window"] == 3


@pytest.mark.slow
def test_stationary_stream_keeps_false_alarms_at_alpha_then_drift_triggers_once_and_alerts(ll, reference,
                                                                                           webhook):
    url, received = webhook
    submitted = []

    def submit(context):  # what the retrain job submission will be; here it only records the call
        submitted.append(context)
        return {"submission_id": f"raysubmit_{len(submitted)}"}

    alpha, windows, size = 0.05, 50, 40
    settings = MonitorSettings(window_rows=size, alpha=alpha, n_permutations=100, mmd_reference_rows=1000,
                               report="never", webhook_url=url)
    monitor = in_process(ll, settings, policy=Policy(consecutive=3, cooldown_s=0), trigger=submit,
                         reference=reference, reference_outputs=outputs(reference))
    rng = np.random.default_rng(7)
    for _ in range(5):
        log(ll, rows(windows * size // 5, rng))
    done = monitor.run_once()
    assert len(done) == windows
    alarms = sum(d["drift"] for d in done)
    assert alarms / windows <= alpha
    assert not any(d["decision"]["trigger"] for d in done) and not submitted
    assert monitoring.read_events(ll, MODEL, kinds=["alert", "retrain_submitted"]).empty

    for _ in range(6):
        log(ll, rows(size, rng, shift=0.6))
    done = monitor.run_once()
    assert [d["drift"] for d in done] == [True] * 6
    assert [d["decision"]["trigger"] for d in done] == [False, False, True, False, False, False]
    assert done[5]["decision"]["suppressed"] == "in_flight"           # 3 more in a row, but one is in flight
    assert len(submitted) == 1 and submitted[0]["model"] == MODEL and submitted[0]["window"] == windows + 2
    sub = monitoring.read_events(ll, MODEL, kinds=["retrain_submitted"])
    assert json.loads(sub.iloc[0]["details"])["result"] == {"submission_id": "raysubmit_1"}
    assert [p["kind"] for p in received] == ["alert"]                 # the webhook got the alert as JSON
    assert received[0]["model"] == MODEL and "3 consecutive windows" in received[0]["reason"]

    monitoring.record_event(ll, "gate_failed", MODEL, version=2, reason="the retrained version lost")
    log(ll, rows(size, rng, shift=0.6))
    (done,) = monitor.run_once()
    assert done["decision"]["trigger"]                                 # settled, drift goes on: fire again
    assert len(submitted) == 2 and len(received) == 2


def test_a_restarted_monitor_resumes_from_its_cursor_and_rewrites_events_a_crash_lost(ll, reference):
    calls = []
    settings = MonitorSettings(window_rows=20, n_permutations=30, mmd_reference_rows=200, report="never")
    policy = Policy(consecutive=1, cooldown_s=0)
    first = in_process(ll, settings, policy=policy, trigger=calls.append, reference=reference,
                       reference_outputs=outputs(reference))
    rng = np.random.default_rng(5)
    log(ll, rows(40, rng), version=1)
    log(ll, rows(30, rng), version=2)
    log(ll, rows(20, rng, shift=1.0), version=1)
    done = first.run_once()
    assert [(d["version"], d["drift"]) for d in done] == [(1, False), (1, False), (2, False), (1, True)]
    assert len(calls) == 1 and first.stream.pending() == {2: 10}
    ids = set(monitoring.read_events(ll, MODEL)["event_id"])
    assert ids == {f"{MODEL}:3:drift_detected", f"{MODEL}:3:alert", f"{MODEL}:3:retrain_submitted"}

    # a crash right after window 3's checkpoint: its events never reached logs.events
    ll.lake.table(monitoring.EVENTS).delete(f"model = '{MODEL}'")
    second = in_process(ll, settings, policy=policy, trigger=calls.append, reference=reference,
                        reference_outputs=outputs(reference))
    kinds = sorted(monitoring.read_events(ll, MODEL)["event_id"])
    assert kinds == [f"{MODEL}:3:alert", f"{MODEL}:3:alert:interrupted", f"{MODEL}:3:drift_detected"]
    assert len(calls) == 1                                              # the trigger is never called twice
    assert second.stream.pending() == {} and second.next_window == 4 and second.rows_counted == 80

    log(ll, rows(10, rng), version=2)
    (done,) = second.run_once()                                         # 10 rows re-read + 10 new
    assert (done["window"], done["version"], done["rows"]) == (4, 2, 20)
    table = monitoring.windows(ll, MODEL)
    assert int(table["rows"].sum()) == 100 == 40 + 30 + 20 + 10
    v2 = table[table["version"] == 2].sort_values("window")
    assert (v2["first_commit"].iloc[1], v2["first_offset"].iloc[1]) == (v2["next_commit"].iloc[0],
                                                                          v2["next_offset"].iloc[0])


def test_reference_comes_from_the_registry_lineage_of_the_served_version(ll):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    data = rows(400, rng)[["amount", "age"]]
    data["label"] = (data["amount"] + rng.normal(0, 2, len(data)) > 10).astype(int)
    written = ll.lake.write("raw.credit", data)
    train, holdout = data.iloc[:300], data.iloc[300:]
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(train[["amount", "age"]], train["label"])
    ll.models.register(MODEL, pipe, holdout=holdout, target="label", task="classification", train=train, gate=False,
                       lineage={"frame": {"entities": {"table": "raw.credit", "version": written.version}}})

    ref = monitoring.reference_for(ll, MODEL, 1)
    assert list(ref.columns) == ["amount", "age"] and len(ref) == 320        # 400 minus the 20% holdout split
    assert len(monitoring.reference_for(ll, MODEL, 1, source="holdout")) == 100
    with pytest.raises(ReferenceNotFoundError, match="'nope'"):
        monitoring.reference_for(ll, "nope", 1)
    assert list(monitoring.predictions_for(ll, MODEL, 1, ref.head(5)).columns) == ["prediction", "probability"]

    # a monitor given no reference finds it, and the version's outputs on it, through the registry
    settings = MonitorSettings(window_rows=40, n_permutations=30, mmd_reference_rows=200, report="never")
    monitor = in_process(ll, settings, policy=Policy(metric_drop=0.05, min_labelled=20))
    records = log(ll, rows(40, rng)[["amount", "age"]])
    feedback(ll, records, wrong_every=2)                                 # live accuracy 0.5, recorded 0.74
    (done,) = monitor.run_once()
    assert monitor.live()["references"] == {"1": "ok"}
    assert done["prediction_drift"] is False
    baseline = ll.models.show(MODEL, 1)["metrics"]["accuracy"]
    assert done["decision"]["baseline"] == pytest.approx(baseline) and done["value"] == pytest.approx(0.5)
    assert done["decision"]["trigger"] and "accuracy" in done["decision"]["reason"]   # the metric fell


def test_a_version_without_reference_is_counted_and_alerted_once(ll):
    settings = MonitorSettings(window_rows=20, report="never")
    monitor = in_process(ll, settings)                                   # nothing registered, nothing given
    log(ll, rows(60, np.random.default_rng(0)), version=7)
    done = monitor.run_once()
    assert [d["drift"] for d in done] == [None, None, None]
    alerts = monitoring.read_events(ll, MODEL, kinds=["alert"])
    assert len(alerts) == 1 and "no reference for version 7" in alerts.iloc[0]["reason"]
    assert monitoring.status(ll, MODEL, live=False)["versions"][7]["error"].startswith("no reference")


def test_status_and_settings_errors_are_clear(ll):
    with pytest.raises(MonitorNotFoundError, match="no monitor runs for model 'ghost'"):
        monitoring.status(ll, "ghost", live=False)
    with pytest.raises(MonitorError, match="window_rows"):
        MonitorSettings(window_rows=3)
    with pytest.raises(MonitorError, match="webhook_url"):
        MonitorSettings(webhook_url="ftp://x")
    with pytest.raises(MonitorError, match="report_every"):
        MonitorSettings(report_every=0)
    with pytest.raises(MonitorError, match="trigger must be callable"):
        monitoring.start(ll, MODEL, trigger="retrain")


def test_importing_lakeloop_monitoring_loads_no_heavy_library():
    code = ("import sys, lakeloop, lakeloop.monitoring; "
            "print(sorted(m for m in ('ray', 'torch', 'scipy', 'mlflow', 'alibi_detect', 'matplotlib', 'sklearn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


DEFINITIONS = """
from lakeloop.features import Entity, Feature, FeatureView

merchant = Entity(name="merchant", join_keys=["merchant_id"])
merchant_risk = FeatureView(name="merchant_risk", entities=[merchant], source="raw.merchants",
                            timestamp_field="event_time", features=[Feature(name="risk")], ttl="30d")
definitions = [merchant, merchant_risk]
"""


@pytest.mark.slow
def test_served_feature_values_are_checked_against_the_offline_store_at_request_time(ll, ray_session, tmp_path,
                                                                                     monkeypatch):
    from lakeloop.monitoring.skew import skew

    (tmp_path / "skew_defs.py").write_text(DEFINITIONS)   # by module:attr, so the monitor's process finds them
    monkeypatch.syspath_prepend(str(tmp_path))
    ids = [f"m{i}" for i in range(20)]
    risk = {m: round(0.05 * i, 2) for i, m in enumerate(ids)}
    ll.lake.create("raw.merchants", {"merchant_id": "string", "risk": "float64", "event_time": "timestamp"})
    ll.lake.table("raw.merchants").append(pd.DataFrame({"merchant_id": ids, "risk": [risk[m] for m in ids],
                                                        "event_time": pd.Timestamp.now(tz="UTC") - pd.Timedelta("1h")}))
    ll.features.apply("skew_defs:definitions")
    ll.features.materialize("merchant_risk")

    now = pd.Timestamp.now(tz="UTC")
    served = pd.DataFrame({"merchant_id": ["m1", "m2", "m3", None], "risk": [risk["m1"], 0.99, risk["m3"], 0.5],
                           "time": now})
    out = skew(ll, served, ["merchant_risk"])
    checked = out["views"]["merchant_risk"]["features"]["risk"]
    assert (checked["checked"], checked["mismatches"]) == (3, 1)          # the row without an id cannot be checked
    assert checked["examples"] == [{"merchant_id": "m2", "served": 0.99, "offline": risk["m2"]}]
    assert "join key" in skew(ll, served.drop(columns="merchant_id"), ["merchant_risk"])["skipped"]["merchant_risk"]

    # in the monitor: every window's rows are checked; 5 of 20 served a stale value
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"merchant_id": ids, "risk": [risk[m] + (0.5 if i % 4 == 0 else 0.0)
                                                       for i, m in enumerate(ids)], "amount": rng.normal(10, 3, 20)})
    reference = pd.DataFrame({"merchant_id": ids * 10, "risk": [risk[m] for m in ids] * 10,
                              "amount": rng.normal(10, 3, 200)})
    monitor = in_process(ll, MonitorSettings(window_rows=20, skew_views=["merchant_risk"], n_permutations=30,
                                             report="never"), reference=reference)
    log(ll, frame)
    (done,) = monitor.run_once()
    window = monitoring.status(ll, MODEL, live=False)["versions"][1]
    assert "error" not in window["skew"], window["skew"]
    assert window["skew"]["views"]["merchant_risk"]["features"]["risk"]["rate"] == pytest.approx(0.25)
    alert = monitoring.read_events(ll, MODEL, kinds=["alert"])
    assert len(alert) == 1 and "risk 25% of rows differ" in alert.iloc[0]["reason"]
    history = ll.mlflow.get_metric_history(monitor.run_id, "v1/skew_rate/risk")
    assert [(m.step, m.value) for m in history] == [(0, 0.25)]


# -- rows the monitor cannot use, and windows that keep failing ---------------------------------------------
POISON = [{"amount": 10**400, "age": 30.0, "country": "US"},          # beyond float64: pandas raises on it
          {"amount": "lots", "age": 41.0, "country": "GB"},           # text in a numeric feature
          {"amount": float("inf"), "age": 52.0, "country": "DE"},     # logged as Infinity
          '{"amount": 12.5, "age": ']                                  # a malformed JSON row


def test_rows_the_tests_cannot_use_are_named_with_the_reason():
    from lakeloop.monitoring.rows import parse

    logged = pd.DataFrame({"request_id": list("abcdefghi"), "row": 0, "features": [
        json.dumps({"amount": 1.5, "country": "US"}), json.dumps({"amount": 10**400}), json.dumps({"amount": "x"}),
        json.dumps({"amount": float("nan"), "country": None}), "{oops", json.dumps([1, 2]),
        json.dumps({"amount": "2.5"}), json.dumps({"amount": 1e300}), None],
        "output": [json.dumps({"prediction": 1, "probability": 0.7})] * 7
        + [json.dumps({"prediction": 0, "probability": 0.1}), json.dumps({"prediction": 1, "probability": 1.5})]})
    parsed = parse(logged, {"amount": (10.0, 3.0)})
    assert parsed.keep == [0, 3, 6]                                    # NaN is a missing value; "2.5" is a number
    why = {b["request_id"]: (b["column"], b["why"]) for b in parsed.bad}
    assert why == {"b": ("amount", "is an integer outside float64's range"),
                   "c": ("amount", "is text in a numeric feature"), "e": ("features", "is not valid JSON "
                                                                                     "(JSONDecodeError)"),
                   "f": ("features", "are not a JSON object but list"),
                   "h": ("amount", "is more than 1e+100 standard deviations from the reference"),
                   "i": ("output.probability", "is not a probability in [0, 1]")}
    assert next(b for b in parsed.bad if b["request_id"] == "b")["value"] == "10000000000000000000...(401 digits)"
    assert parsed.features[1] == {"amount": None, "country": None} or np.isnan(parsed.features[1]["amount"])


def test_a_poison_row_in_stationary_traffic_is_counted_skipped_and_alerted_once(ll, reference):
    settings = MonitorSettings(window_rows=40, n_permutations=30, mmd_reference_rows=200, report="never")
    monitor = in_process(ll, settings, reference=reference, reference_outputs=outputs(reference))
    rng = np.random.default_rng(21)
    good = rows(156, rng)
    served = good.to_dict(orient="records")
    served[50:50] = POISON                                               # all four land in window 1
    outs = pd.concat([outputs(good.iloc[:50]), pd.DataFrame([{"prediction": 1, "probability": 0.7}] * 4),
                      outputs(good.iloc[50:])], ignore_index=True)
    log(ll, served, outs=outs)

    done = monitor.run_once()                                            # before: OverflowError on every attempt
    assert [(d["rows"], d["bad_rows"]) for d in done] == [(40, 0), (40, 4), (40, 0), (40, 0)]
    assert monitor.stream.pending() == {} and monitor.rows_counted == 160
    table = monitoring.windows(ll, MODEL)
    assert list(table["bad_rows"]) == [0, 4, 0, 0]
    assert json.loads(table.iloc[1]["result"])["features"]["amount"]["rows"] == 36   # tested on the good rows
    alerts = monitoring.read_events(ll, MODEL, kinds=["alert"])
    assert len(alerts) == 1
    alert = as_records(alerts)[0]
    assert "4 of 40 rows of version 1 could not be used" in alert["reason"] and "float64" in alert["reason"]
    assert alert["details"]["bad_rows"] == 4 and len(alert["details"]["reasons"]) == 4
    assert alert["details"]["examples"][0]["value"].endswith("(401 digits)")
    v1 = monitoring.status(ll, MODEL, live=False)["versions"][1]
    assert (v1["bad_rows"], v1["bad_rows_total"], v1["failed_windows"]) == (0, 4, 0)
    assert not monitor.errors or all("Ray metrics" in e for e in monitor.errors)


def test_a_window_that_keeps_failing_is_recorded_as_failed_and_the_monitor_moves_on(ll, reference, monkeypatch):
    settings = MonitorSettings(window_rows=40, n_permutations=30, mmd_reference_rows=200, report="never",
                               window_attempts=3)
    monitor = in_process(ll, settings, reference=reference, reference_outputs=outputs(reference))
    analyse = monitor._analyse

    def broken_on_window_0(version, rows, window):  # any failure other than a bad row, on one window only
        if window == 0:
            raise RuntimeError("the reference store is unreachable")
        return analyse(version, rows, window)

    monkeypatch.setattr(monitor, "_analyse", broken_on_window_0)
    log(ll, rows(80, np.random.default_rng(4)))
    for attempt in (1, 2):
        with pytest.raises(RuntimeError, match="unreachable"):
            monitor.run_once()
        assert monitor.next_window == 0 and list(monitor.live()["retrying"].values()) == [attempt]
    done = monitor.run_once()                                            # the third failure is recorded; on it goes
    assert [(d["window"], d["failed"] is not None, d["rows"]) for d in done] == [(0, True, 40), (1, False, 40)]
    assert monitor.live()["retrying"] == {} and monitor.rows_counted == 80
    alert = monitoring.read_events(ll, MODEL, kinds=["alert"]).iloc[0]
    assert "window 0 of version 1 failed 3 times" in alert["reason"] and "unreachable" in alert["reason"]
    table = monitoring.windows(ll, MODEL)
    assert (table.iloc[1]["first_commit"], table.iloc[1]["first_offset"]) == (table.iloc[0]["next_commit"],
                                                                              table.iloc[0]["next_offset"])
    assert monitoring.status(ll, MODEL, live=False)["versions"][1]["failed_windows"] == 1


def test_a_windows_table_from_before_new_columns_gets_them_and_keeps_its_rows(ll):
    from lakeloop.monitoring.monitor import WINDOW_COLUMNS, ensure_windows_table

    old = {k: v for k, v in WINDOW_COLUMNS.items() if k not in ("bad_rows", "estimated_value", "estimate")}
    ll.lake.create(monitoring.WINDOWS, old)
    ll.lake.table(monitoring.WINDOWS).append(pd.DataFrame([{"model": MODEL, "window": 0, "version": 1, "rows": 20}]))
    table = ensure_windows_table(ll)
    assert {"bad_rows", "estimated_value", "estimate"} <= set(table.schema.names)
    back = table.to_pandas()
    assert list(back["rows"]) == [20] and back["bad_rows"].isna().all()


# -- performance without labels --------------------------------------------------------------------------------
def labelled_rows(n: int, rng, spread: float = 3.0) -> pd.DataFrame:
    """``amount`` decides the label through a logistic curve around 10; a small ``spread`` puts rows near it."""
    data = pd.DataFrame({"amount": rng.normal(10, spread, n), "age": rng.integers(18, 80, n).astype(float)})
    data["label"] = (rng.random(n) < 1 / (1 + np.exp(-(data["amount"] - 10)))).astype(int)
    return data


@pytest.mark.slow
def test_the_estimated_accuracy_tracks_a_covariate_shift_and_fires_the_policy_before_labels(ll):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lakeloop.cli.monitor import _estimated

    rng = np.random.default_rng(8)
    data = labelled_rows(1500, rng)
    train, holdout = data.iloc[:1100], data.iloc[1100:]
    features = ["amount", "age"]
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(train[features], train["label"])
    ll.models.register(MODEL, pipe, holdout=holdout, target="label", task="classification", train=train, gate=False)
    baseline = ll.models.show(MODEL, 1)["metrics"]["accuracy"]

    calls = []
    settings = MonitorSettings(window_rows=200, n_permutations=30, mmd_reference_rows=200, report="never")
    monitor = in_process(ll, settings, reference=train[features],
                         policy=Policy(consecutive=10, estimated_drop=0.08), trigger=calls.append)
    realized = []
    for spread in (3.0, 3.0, 3.0, 0.7, 0.7, 0.7):                        # then rows crowd the decision boundary
        window = labelled_rows(200, rng, spread)
        outs = pd.DataFrame({"prediction": pipe.predict(window[features]),
                             "probability": pipe.predict_proba(window[features])[:, 1]})
        realized.append(float((outs["prediction"] == window["label"]).mean()))   # the labels are never sent
        log(ll, window[features], outs=outs)
    done = monitor.run_once()
    estimated = [d["estimated"] for d in done]
    assert all(d["value"] is None and d["decision"]["metric_drop"] is None for d in done)   # no label arrived
    before, after = np.mean(realized[:3]), np.mean(realized[3:])
    assert after < before - 0.12                                         # the shift costs real accuracy...
    assert abs(np.mean(estimated[:3]) - before) < 0.04 and abs(np.mean(estimated[3:]) - after) < 0.04   # ...seen
    assert max(abs(e - r) for e, r in zip(estimated, realized)) < 0.08
    assert all(d["estimate"]["roc_auc"] is not None for d in done)
    assert done[3]["estimate"]["roc_auc"] < done[0]["estimate"]["roc_auc"]

    fired = [d["decision"]["trigger"] for d in done]
    assert fired == [False, False, False, True, False, False]            # then in flight: no second retrain
    assert "estimated accuracy of version 1" in done[3]["decision"]["reason"] and len(calls) == 1
    assert done[3]["decision"]["baseline"] == pytest.approx(baseline)

    history = ll.mlflow.get_metric_history(monitor.run_id, "v1/estimated_accuracy")
    assert sorted(m.step for m in history) == list(range(6))
    assert [m.step for m in ll.mlflow.get_metric_history(monitor.run_id, "v1/estimated_roc_auc")]
    table = monitoring.windows(ll, MODEL)
    assert list(table["estimated_value"]) == pytest.approx(estimated)
    shown = monitoring.status(ll, MODEL, live=False)["versions"][1]
    assert shown["estimated_value"] == pytest.approx(estimated[-1]) and shown["estimate"]["accuracy_sd"] > 0
    assert _estimated(shown) == f"{estimated[-1]:.4f} ± {shown['estimate']['accuracy_sd']:.3f}"   # the CLI's column
    assert monitor.live()["estimators"]["1"].startswith("CBPE(")


# -- the actor --------------------------------------------------------------------------------------------
@pytest.fixture
def monitors(ll, ray_session):
    """Start monitors through this; every one is stopped at teardown."""
    started = []

    def start(model: str = MODEL, **kwargs):
        handle = monitoring.start(ll, model, **kwargs)
        started.append(model)
        return handle

    yield start
    for model in started:
        try:
            monitoring.stop(ll, model)
        except MonitorNotFoundError:
            pass


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value is not None and value is not False and (not isinstance(value, (int, dict)) or value):
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.slow
def test_killed_monitor_actor_resumes_with_no_gap_and_no_double_count(ll, reference, monitors):
    import ray

    handle = monitors(reference=reference, reference_outputs=outputs(reference), window_rows=25, poll_s=0.1,
                      n_permutations=30, mmd_reference_rows=200, report="never", backend="scipy")
    assert ray.get(handle.ping.remote()) == monitoring.monitor_name(ll.config.lake.root, MODEL)
    again = monitoring.start(ll, MODEL)                                   # a second start finds the same actor
    assert ray.get(again.ping.remote()) == ray.get(handle.ping.remote())

    rng = np.random.default_rng(11)
    sizes = [30, 45, 20, 55, 35, 40, 25, 50, 30, 45, 20, 55, 35, 40, 25, 45]   # 595 rows, not window-aligned
    killed_at = None
    for i, n in enumerate(sizes):
        log(ll, rows(n, rng), version=1 if i % 4 else 2)
        if i == len(sizes) // 2:  # mid-stream: windows done, windows waiting, rows still to come
            killed_at = wait_for(lambda: len(monitoring.windows(ll, MODEL)) >= 4 and len(monitoring.windows(ll, MODEL)),
                                 60, "the first windows")
            ray.kill(handle, no_restart=False)                            # a crash: Ray restarts the actor
    assert killed_at < 20                                                 # work was left when it died

    per_version = {1: sum(n for i, n in enumerate(sizes) if i % 4), 2: sum(n for i, n in enumerate(sizes) if not i % 4)}
    expected = sum(n // 25 * 25 for n in per_version.values())

    def counted():
        done = monitoring.windows(ll, MODEL)
        return done if int(done["rows"].sum()) == expected else None

    done = wait_for(counted, 120, f"{expected} rows in windows after the restart")
    assert list(done["window"]) == list(range(len(done)))                # no window index twice
    for version, group in done.groupby("version"):
        group = group.sort_values("window")
        starts = list(zip(group["first_commit"], group["first_offset"]))
        ends = list(zip(group["next_commit"], group["next_offset"]))
        assert starts[1:] == ends[:-1], f"version {version}: windows must follow each other with no gap or overlap"
        assert group["rows"].sum() == per_version[version] // 25 * 25
    live = wait_for(lambda: (monitoring.status(ll, MODEL)["live"] or {}).get("pending_rows"), 30, "the live state")
    assert {int(k): v for k, v in live.items()} == {v: n % 25 for v, n in per_version.items() if n % 25}
    assert int(done["rows"].sum()) + sum(live.values()) == sum(sizes)    # every logged row counted, once
    status = monitoring.status(ll, MODEL)
    assert status["running"] and status["live"]["windows_this_run"] < len(done)   # this is the restarted actor
    assert status["rows"] == expected and not status["live"]["errors"]

    # the last window's p-values reach the node's Prometheus endpoint as Ray metrics (ray_ prefix)
    port = ray.nodes()[0]["MetricsExportPort"]

    def exported():
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return [line for line in text.splitlines()
                if line.startswith("ray_lakeloop_drift_p_value{") and f'model="{MODEL}"' in line] or None

    assert any('feature="amount"' in line for line in wait_for(exported, 60, "Ray metrics", interval_s=1.0))

    def bad_rows_exported():  # set on every window (0 here), so a dashboard sees the monitor's bad rows
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return [line for line in text.splitlines()
                if line.startswith("ray_lakeloop_monitor_bad_rows{") and f'model="{MODEL}"' in line] or None

    assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in wait_for(bad_rows_exported, 60, "the bad rows gauge",
                                                                        1.0))

    stopped = monitoring.stop(ll, MODEL)
    assert stopped["rows_counted"] == expected
    assert monitoring.actor(ll, MODEL) is None
    assert monitoring.status(ll, MODEL)["running"] is False               # its windows stay readable


def test_monitor_cli_shows_events_and_names_unknown_models(ll):
    from conftest import run_cli

    monitoring.record_event(ll, "promoted", "clifraud", version=2, reason="first champion")
    env = {"LAKELOOP_LAKE_ROOT": ll.config.lake.root}
    rows = json.loads(run_cli("monitor", "events", "clifraud", "--json", env=env).stdout)
    assert [(r["kind"], r["version"], r["reason"]) for r in rows] == [("promoted", 2, "first champion")]
    assert "promoted" in run_cli("monitor", "events", env=env).stdout
    bad = run_cli("monitor", "status", "nobody", env=env, check=False)
    assert bad.returncode == 2 and "nobody" in bad.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_monitor_cli_starts_a_monitor_with_its_retrain_trigger_and_stops_it_on_exit(ll):
    from conftest import run_cli

    env = {"LAKELOOP_LAKE_ROOT": ll.config.lake.root}
    out = run_cli("monitor", "start", "clim", "--window-rows", "50", "--consecutive", "2", "--retrain-json",
                  '{"canary_percent": 10, "budget_s": 30}', "--seconds", "1", "--json", env=env, timeout=180).stdout
    info, _ = json.JSONDecoder().raw_decode(out[out.index("{\n"):])
    assert info["window_rows"] == 50 and info["policy"]["consecutive"] == 2
    assert info["retrain"]["address"].startswith("http://127.0.0.1:")
    assert info["retrain"]["spec"] == {"canary_percent": 10, "budget_s": 30, "model": "clim"}
    status = json.loads(run_cli("monitor", "status", "clim", "--json", env=env).stdout)
    assert status["running"] is False and status["windows"] == 0      # stopped on exit; its run is recorded
    bad = run_cli("monitor", "start", "clim", "--retrain-json", '{"canary_percent": 0}', env=env, check=False)
    assert bad.returncode == 2 and "canary_percent" in bad.stderr
    bad = run_cli("monitor", "start", "clim", "--detach", env=env, check=False)
    assert bad.returncode == 2 and "--detach needs a Ray cluster" in bad.stderr
    gone = run_cli("monitor", "stop", "clim", env=env, check=False)  # its Ray ended with `monitor start`
    assert gone.returncode == 2 and "no monitor runs for model 'clim'" in gone.stderr
