"""The retrain loop: the champion/challenger test, its settings, the job trigger, a shadow rollback, the demo."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

import lakeloop
from conftest import BIN, REPO, free_port, run_cli
from lakeloop.automl.family import default_points, warm_points
from lakeloop.errors import RetrainError
from lakeloop.retrain import RetrainSpec, compare, two_proportion
from lakeloop.retrain.trigger import JobTrigger, submission_id
from test_jobs import ray_head  # noqa: F401,F811  (a fixture: a Ray head with its job server)


def _arm(correct: int, n: int, prefix: str, *, paired_with: list[int] | None = None) -> pd.DataFrame:
    """n labelled rows of which ``correct`` are predicted right (label 1 everywhere)."""
    preds = [1] * correct + [0] * (n - correct)
    return pd.DataFrame({"request_id": [f"{prefix}{i}" for i in range(n)], "row": 0,
                         "output": [json.dumps({"prediction": p}) for p in preds],
                         "label": [json.dumps(1)] * n})


def test_two_proportion_z_test_agrees_with_the_chi_squared_test_of_the_2x2_table():
    from scipy.stats import chi2_contingency

    for k1, n1, k2, n2 in [(80, 100, 90, 100), (300, 400, 170, 200), (12, 50, 30, 60), (5, 40, 5, 40)]:
        z, p = two_proportion(k1, n1, k2, n2)
        chi2, p_chi, _, _ = chi2_contingency([[k1, n1 - k1], [k2, n2 - k2]], correction=False)
        assert z**2 == pytest.approx(chi2, rel=1e-9) and p == pytest.approx(p_chi, rel=1e-9)
    assert two_proportion(10, 10, 20, 20) == (0.0, 1.0)  # no variance: nothing to tell apart


def test_canary_verdicts_promote_roll_back_or_wait():
    better = compare(_arm(140, 200, "a"), _arm(185, 200, "b"), metric="accuracy", paired=False, champion=1,
                     challenger=2, min_labelled=100)
    assert better.verdict == "promote" and better.test == "two_proportion_z" and better.p_value < 1e-6
    assert (better.n_champion, better.n_challenger) == (200, 200)
    assert better.champion_value == pytest.approx(0.7) and better.challenger_value == pytest.approx(0.925)
    assert "significantly better" in better.reason
    worse = compare(_arm(185, 200, "a"), _arm(140, 200, "b"), metric="accuracy", paired=False, champion=1,
                    challenger=2, min_labelled=100)
    assert worse.verdict == "rollback" and "significantly worse" in worse.reason
    tie = compare(_arm(170, 200, "a"), _arm(172, 200, "b"), metric="accuracy", paired=False, champion=1,
                  challenger=2, min_labelled=100)
    assert tie.verdict == "inconclusive" and tie.p_value > 0.5
    early = compare(_arm(14, 20, "a"), _arm(20, 20, "b"), metric="accuracy", paired=False, champion=1,
                    challenger=2, min_labelled=100)
    assert early.verdict == "inconclusive" and "not enough labelled rows" in early.reason


def test_shadow_comparison_is_paired_mcnemar_on_the_rows_where_only_one_is_right():
    from scipy.stats import binomtest

    n = 200
    champion = _arm(150, n, "r")
    # the challenger is right on the same 150 rows and on 20 more: 20 discordant rows, all its way
    challenger = champion.copy()
    challenger["output"] = [json.dumps({"prediction": 1})] * 170 + [json.dumps({"prediction": 0})] * 30
    result = compare(champion, challenger, metric="accuracy", paired=True, champion=3, challenger=4, min_labelled=50)
    assert result.test == "mcnemar_exact" and result.statistic == 20
    assert result.p_value == pytest.approx(binomtest(20, 20, 0.5).pvalue) and result.verdict == "promote"


def test_regression_arms_compare_errors_with_welch_and_paired_t():
    from scipy import stats

    rng = np.random.default_rng(0)
    y = rng.normal(size=300)

    def arm(noise: float, prefix: str) -> pd.DataFrame:
        pred = y + rng.normal(scale=noise, size=len(y))
        return pd.DataFrame({"request_id": [f"{prefix}{i}" for i in range(len(y))], "row": 0,
                             "output": [json.dumps({"prediction": float(p)}) for p in pred],
                             "label": [json.dumps(float(v)) for v in y]})

    a, b = arm(1.0, "x"), arm(0.3, "x")
    result = compare(a, b, metric="rmse", paired=False, champion=1, challenger=2, min_labelled=100)
    err_a = (np.array([json.loads(o)["prediction"] for o in a["output"]]) - y) ** 2
    err_b = (np.array([json.loads(o)["prediction"] for o in b["output"]]) - y) ** 2
    assert result.p_value == pytest.approx(stats.ttest_ind(err_b, err_a, equal_var=False).pvalue)
    assert result.verdict == "promote" and result.challenger_value < result.champion_value
    paired = compare(a, b, metric="rmse", paired=True, champion=1, challenger=2, min_labelled=100)
    assert paired.test == "paired_t" and paired.p_value == pytest.approx(stats.ttest_rel(err_b, err_a).pvalue)
    with pytest.raises(RetrainError, match="supports accuracy, rmse, mae"):
        compare(a, b, metric="roc_auc", paired=False, champion=1, challenger=2)


def test_retrain_settings_are_checked_and_name_the_bad_one():
    spec = RetrainSpec(model="fraud", families=["hgb"], canary_percent=25)
    assert spec.families == ("hgb",) and RetrainSpec.from_dict(spec.to_dict()) == spec
    for bad, field in [({"canary_percent": 100}, "canary_percent"), ({"mode": "blue-green"}, "mode"),
                       ({"min_labelled": 3}, "min_labelled"), ({"train_rows": 10}, "train_rows"),
                       ({"alpha": 0.7}, "alpha"), ({"families": "hgb"}, "families"),
                       ({"budget_s": None}, "budget_s"), ({"on_inconclusive": "maybe"}, "on_inconclusive")]:
        with pytest.raises(RetrainError, match=field):
            RetrainSpec(model="fraud", **bad)
    with pytest.raises(RetrainError, match="unknown retrain setting.*canary_share"):
        RetrainSpec.from_dict({"model": "fraud", "canary_share": 10})
    with pytest.raises(RetrainError, match="canary_percent"):  # a trigger refuses a bad spec when it is made
        JobTrigger(address="http://127.0.0.1:1", spec={"model": "m", "canary_percent": 0}, config={})


def test_warm_start_puts_the_champions_configuration_first():
    champion = {"family": "hgb", "params": {"learning_rate": 0.05, "max_iter": 300, "epochs": 7}}
    points = warm_points([champion], ("linear", "hgb"), "classification")
    assert points[0]["family"] == "hgb" and points[0]["hgb.learning_rate"] == 0.05
    assert "hgb.epochs" not in points[0]  # not a searched parameter
    assert points[1:] == [p for p in default_points(("linear", "hgb"), "classification") if p != points[0]]
    assert warm_points([{"family": "mlp", "params": {}}], ("hgb",), "classification") == \
        default_points(("hgb",), "classification")  # a family outside the search is skipped
    with pytest.raises(lakeloop.LakeloopError, match="warm start"):
        warm_points(["hgb"], ("hgb",), "classification")


def test_submission_ids_are_per_lake_model_and_window():
    a = submission_id("/lake/a", "fraud model", 7)
    assert a == submission_id("/lake/a", "fraud model", 7) and a.startswith("lakeloop-retrain-fraud-model-")
    assert a != submission_id("/lake/b", "fraud model", 7) and a != submission_id("/lake/a", "fraud model", 8)
    # a new monitor (a reset lake, a new MLflow run) on the same long-lived cluster gets new ids
    assert submission_id("/lake/a", "fraud model", 7, "0123456789ab").endswith("-01234567-w7")


# -- a real job server ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_monitors_trigger_submits_one_retrain_job_that_records_why_it_failed(ll, ray_head):
    from lakeloop.monitoring import read_events

    address, _env = ray_head
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


# -- in process: a shadow that is no better is rolled back ------------------------------------------------------
@pytest.fixture
def served_champion(tmp_path, ray_session):
    """A champion trained by AutoML on a feature view (so it has a frame lineage), served on loopback."""
    from ray import serve

    from lakeloop.demo import scenario
    from lakeloop.features import Aggregation, Entity, Feature, FeatureView, online

    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"), serve_port=free_port(), ray_namespace="retrain-shadow")
    ll.lake.ingest(scenario.write_csv(scenario.generate(600, seed=5), tmp_path / "tx.csv"), "raw.transactions",
                   rules=scenario.RULES_FILE)
    customer = Entity(name="customer", join_keys=["customer_id"])
    spend = FeatureView(name="spend", entities=[customer], source="raw.transactions", timestamp_field="event_time",
                        features=[Feature(name="amount"), Aggregation(column="amount", function="sum", window="1d")])
    ll.features.apply([customer, spend])
    ll.features.materialize("spend")
    frame = ll.features.training_frame("raw.transactions", ["spend:*"], timestamp_column="event_time",
                                       known_time=False, full_feature_names=True)
    result = ll.automl.run(frame, target="is_fraud", features=frame.features, families=["linear"], max_trials=1,
                           seed=1, name="shadowed", gate=False, progress=False)
    ll.models.promote("shadowed", result.model_version, force=True)
    ll.serving.up()
    ll.serving.deploy("shadowed", "champion")
    yield ll, spend
    ll.serving.down()
    online.stop(ll)
    serve.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_shadow_challenger_that_is_not_better_is_rolled_back_and_traffic_never_stops(served_champion):
    """Labels that agree with the champion: the paired test cannot favour the challenger, so it is rolled back."""
    from lakeloop.monitoring import read_events
    from lakeloop.retrain import run_retrain
    from lakeloop.serving.service import http_json

    ll, _spend = served_champion
    customers = sorted(set(ll.lake.table("raw.transactions").to_pandas(columns=["customer_id"])["customer_id"]))
    spec = RetrainSpec(model="shadowed", mode="shadow", families=["linear"], budget_s=None, max_trials=1,
                       margin=-1.0, min_labelled=40, decision_timeout_s=240, poll_s=0.5, materialize=False,
                       latency_budget_ms=5000)
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(summary=run_retrain(ll, spec, reason="test", progress=None)),
                              daemon=True)
    worker.start()
    url = f"{ll.serving.url}/v1/models/shadowed/predict"
    sent = failed = 0
    deadline = time.monotonic() + 300
    while worker.is_alive() and time.monotonic() < deadline:
        rows = [{"customer_id": customers[(sent + i) % len(customers)]} for i in range(5)]
        try:
            answer = http_json("POST", url, {"rows": rows})
            http_json("POST", f"{ll.serving.url}/v1/feedback",
                      {"request_id": answer["request_id"], "labels": [p["prediction"] for p in answer["predictions"]]})
        except lakeloop.LakeloopError:
            failed += 1
        sent += 1
        time.sleep(0.05)
    worker.join(timeout=30)
    summary = out["summary"]
    assert failed == 0 and summary["outcome"] == "rolled_back", summary
    comparison = summary["comparison"]
    assert comparison["test"] == "mcnemar_exact" and comparison["verdict"] in ("rollback", "inconclusive")
    assert comparison["n_champion"] >= 40 and comparison["champion_value"] == 1.0
    kinds = list(read_events(ll, "shadowed")["kind"])[::-1]
    assert kinds == ["retrain_started", "challenger_registered", "canary_started", "canary_verdict", "rolled_back"]
    from lakeloop.serving.policy import TrafficPolicy

    status = ll.serving.status()["models"]["shadowed"]
    policy = TrafficPolicy.from_dict(status["policy"])
    assert policy.percent == {1: 100.0} and policy.shadow == () and list(status["versions"]) == ["1"]
    aliases = ll.mlflow.get_registered_model("shadowed").aliases
    assert {k: int(v) for k, v in aliases.items()} == {"champion": 1}
    assert ll.mlflow.get_model_version("shadowed", "2").tags["lakeloop.canary"] == "rolled_back"


# -- the demo, end to end (the fast variant) ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_closes_the_loop_drift_retrain_job_canary_promotion_with_no_failed_request(tmp_path, capsys):
    proc = run_cli("demo", "--fast", "--json", cwd=tmp_path, env={"LAKELOOP_SERVE_PORT": str(free_port())},
                   timeout=540)
    summary = json.loads(proc.stdout)
    assert summary["lake"] == str(tmp_path / "lake")
    assert summary["quarantined"] > 0 and set(summary["quarantined_by_rule"]) == set(
        __import__("lakeloop.demo.scenario", fromlist=["BAD_KINDS"]).BAD_KINDS.values())
    traffic = summary["traffic"]
    assert traffic["failed"] == 0 and traffic["rows"] >= 1000, traffic["errors"]
    assert summary["drift"]["detected_at"] and summary["drift"]["seconds_to_detect"] >= 0
    assert "customer_stats__log_amount" in summary["drift"]["drifted"]
    assert summary["retrain"]["job_id"], summary["events"][-12:]
    assert summary["retrain"]["job_id"].startswith("lakeloop-retrain-fraud-")
    assert summary["retrain"]["status"] == "SUCCEEDED"
    assert summary["outcome"] == "promoted" and summary["promoted_version"] == 2, summary["events"]
    canary = summary["canary"]
    assert canary["verdict"] == "promote" and canary["p_value"] < 0.05
    assert canary["challenger_accuracy"] > canary["champion_accuracy"]
    kinds = [e["kind"] for e in summary["events"] if e["kind"] not in ("drift_detected", "alert")]
    assert kinds == ["retrain_submitted", "retrain_started", "materialized", "challenger_registered",
                     "canary_started", "canary_verdict", "promoted"]
    assert summary["models"]["before"]["version"] == 1 and summary["models"]["after"]["aliases"] == ["champion"]
    after = summary["phases"]["after verdict"]
    assert list(after["by_version"]) == ["v2"] and after["accuracy"] > summary["phases"]["drift"]["accuracy"]
    versions = summary["data_versions"]
    assert versions["raw.transactions"]["latest"] > versions["raw.transactions"]["after_history"]
    assert versions["features.customer_stats"]["latest"] > versions["features.customer_stats"]["after_history"]
    assert summary["shutdown"] == {"monitor": "stopped", "serving": "stopped", "online store": "stopped"}
    assert summary["plot"].endswith("_demo/loop.png") and (tmp_path / "lake" / "_demo" / "loop.png").stat().st_size
    run = lakeloop.connect(lake_root=summary["lake"]).mlflow.get_run(summary["demo_mlflow_run"])
    assert run.data.metrics["failed_requests"] == 0 and run.data.metrics["canary_p_value"] < 0.05

    # the same summary as people read it
    from lakeloop.cli.demo import show

    show(summary)
    human = capsys.readouterr().out
    for text in ("quarantined rows by rule", "data versions", "live traffic", "canary verdict", "promoted version",
                 "requests served / failed", "Ray dashboard", "MLflow UI", "demo done"):
        assert text in human
