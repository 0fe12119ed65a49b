"""AutoML on Ray Tune: a real search on a lake table, every trial an MLflow run, the best registered."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

FEATURES = ["x1", "x2", "count", "color", "flag"]


def make_rows(n: int = 360, seed: int = 0) -> pd.DataFrame:
    """A learnable binary target from numbers, a category and a boolean; missing values; hourly timestamps."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    count = rng.integers(0, 10, n)
    color = rng.choice(["red", "green", "blue"], n).astype(object)
    flag = rng.random(n) < 0.3
    logit = 1.5 * x1 - x2 + (color == "red") * 1.2 + 0.15 * count + flag * 0.5
    label = (logit + rng.normal(scale=0.6, size=n) > 0.8).astype("int64")
    x2[::13] = np.nan
    color[::17] = None
    return pd.DataFrame({"id": [f"r{i:04d}" for i in range(n)], "x1": x1, "x2": x2, "count": count.astype("int64"),
                         "color": color, "flag": flag,
                         "at": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"), "label": label})


def write_table(ll, name: str, rows: pd.DataFrame):
    table = ll.lake.create(name, {"id": "string", "x1": "float64", "x2": "float64", "count": "int64",
                                  "color": "string", "flag": "bool", "at": "timestamp", "label": "int64"},
                           primary_key="id")
    return table.append(rows)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, ray_session):
    """One search over all four families on a lake table with timestamps (shared by the tests below)."""
    import lakeloop
    from lakeloop.registry import Gate

    ll = lakeloop.connect(lake_root=str(tmp_path_factory.mktemp("automl") / "lake"))
    write_table(ll, "raw.train", make_rows())
    result = ll.automl.run("raw.train", target="label", features=FEATURES, timestamp_column="at", max_trials=6,
                           budget_s=240, seed=3, max_epochs=6, name="risk", progress=False,
                           gate=Gate(latency_budget_ms=2000))  # a busy machine must not fail this gate
    return ll, result


def trial_runs(ll, parent_run_id: str):
    return ll.mlflow.search_runs([ll.experiment_id()], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                 max_results=500)


def test_every_trial_is_a_nested_mlflow_run_with_params_seed_and_duration(searched):
    ll, result = searched
    runs = trial_runs(ll, result.run_id)
    assert len(runs) == result.trials == len(result.leaderboard) == 6
    # the search starts from each family's defaults, so every family is tried
    assert {r.data.params["family"] for r in runs} == {"linear", "forest", "hgb", "mlp"}
    for r in runs:
        assert r.data.tags["lakeloop.kind"] == "trial"
        assert r.data.params["seed"] == "3" and r.data.params["metric"] == "roc_auc"
        assert r.data.metrics["duration_s"] > 0
        assert r.info.status in ("FINISHED", "KILLED")
        family_params = {k for k in r.data.params if k not in ("family", "seed", "metric")}
        assert family_params, f"trial {r.info.run_id} logged no hyperparameters"
    linear = next(r for r in runs if r.data.params["family"] == "linear" and r.data.params["C"] == "1.0")
    assert 0.5 < linear.data.metrics["best_val_roc_auc"] <= 1.0


def test_mlp_trials_log_a_metric_per_epoch(searched):
    ll, result = searched
    mlp = [r for r in trial_runs(ll, result.run_id) if r.data.params["family"] == "mlp"]
    assert mlp
    history = ll.mlflow.get_metric_history(mlp[0].info.run_id, "val_roc_auc")
    steps = [m.step for m in history]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[0] == 1
    assert len(ll.mlflow.get_metric_history(mlp[0].info.run_id, "train_loss")) == len(steps)


def test_search_run_records_lineage_code_packages_and_a_leaderboard(searched, tmp_path):
    ll, result = searched
    parent = ll.mlflow.get_run(result.run_id)
    tags = parent.data.tags
    assert (tags["lakeloop.data.table"], tags["lakeloop.data.version"]) == ("raw.train", "1")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert tags["lakeloop.git_sha"] == head and tags["lakeloop.git_dirty"] in ("true", "false")
    packages = json.loads(tags["lakeloop.packages"])
    assert packages["ray"].startswith("2.") and packages["mlflow"] and packages["scikit-learn"]
    assert tags["lakeloop.ray_job_id"]
    assert parent.data.params["seed"] == "3" and parent.data.params["max_trials"] == "6"
    lineage = json.loads(Path(ll.mlflow.download_artifacts(result.run_id, "lakeloop/lineage.json", str(tmp_path)))
                         .read_text())
    assert lineage["frame"] == {"entities": {"table": "raw.train", "version": 1}, "views": {}}
    assert lineage["data"]["labels"] == {"table": "raw.train", "version": 1}
    assert lineage["data"]["rows"] == 360 and lineage["seed"] == 3

    board = pd.read_csv(ll.mlflow.download_artifacts(result.run_id, "leaderboard/leaderboard.csv", str(tmp_path)))
    assert len(board) == 6 and list(board["rank"]) == list(range(1, 7))
    scores = board["val_roc_auc"].dropna()
    assert list(scores) == sorted(scores, reverse=True)
    png = Path(ll.mlflow.download_artifacts(result.run_id, "leaderboard/leaderboard.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.best["family"] == board.iloc[0]["family"]
    assert result.best["val_roc_auc"] == pytest.approx(board.iloc[0]["val_roc_auc"])


def test_holdout_is_the_latest_rows_in_time_and_unseen_by_the_search(searched):
    ll, result = searched
    holdout = ll.models.holdout("risk", result.model_version)
    rows = make_rows()
    assert len(holdout) == 72  # 20% of 360
    assert holdout["at"].min() == rows["at"].sort_values().iloc[360 - 72]
    assert result.spec.timestamp_column == "at" and result.spec.holdout_fraction == 0.2
    assert set(result.metrics) >= {"roc_auc", "accuracy", "log_loss"}
    assert result.metrics["roc_auc"] > 0.75  # the target is learnable


def test_best_model_is_registered_as_a_pyfunc_that_loads_without_lakeloop(searched, tmp_path):
    ll, result = searched
    assert (result.model_name, result.model_version) == ("risk", 1)
    assert result.gate["passed"] and "challenger" in ll.models.show("risk", 1)["aliases"]
    raw = [{"x1": 0.3, "x2": None, "count": 4, "color": "purple", "flag": True},  # missing and unseen values
           {"x1": -1.0, "x2": 0.5, "count": 1, "color": None, "flag": False}]
    script = (
        "import sys, json, mlflow, pandas as pd\n"
        "sys.modules['lakeloop'] = None  # the model must not need lakeloop\n"
        "m = mlflow.pyfunc.load_model('models:/risk/1')\n"
        "assert m.metadata.signature is not None and m.metadata.saved_input_example_info is not None\n"
        "out = m.predict(pd.DataFrame(json.loads(sys.argv[1])))\n"
        "print(json.dumps(out.to_dict('records')))\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": ll.config.tracking_uri}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(raw)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [set(a) for a in answer] == [{"prediction", "probability"}] * 2
    assert all(a["prediction"] in (0, 1) and 0.0 <= a["probability"] <= 1.0 for a in answer)
    in_process = ll.models.load("risk", "challenger").predict(pd.DataFrame(raw))
    assert in_process["probability"].tolist() == pytest.approx([a["probability"] for a in answer])


def test_regression_with_cross_validation_on_a_dataframe_within_a_time_budget(ll, ray_session):
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True).frame
    before = signal.getsignal(signal.SIGINT)
    result = ll.automl.run(data, target="target", task="regression", metric="rmse", families=["linear", "hgb"],
                           budget_s=6, cv=3, seed=1, register=False, progress=False)
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C interrupts again after the search (Tune's handler)
    assert result.model_version is None and result.spec.task == "regression" and result.spec.cv_folds == 3
    assert set(result.metrics) >= {"r2", "rmse", "mae"} and result.metrics["rmse"] > 0
    runs = trial_runs(ll, result.run_id)
    assert len(runs) == result.trials >= 1
    assert all(r.info.status != "RUNNING" for r in runs)  # trials stopped by the budget are closed too
    assert result.lineage["frame"]["entities"]["table"] is None  # an in-memory frame: rows and hash recorded
    assert result.lineage["frame"]["entities"]["rows"] == len(data)
    board = result.leaderboard.dropna(subset=["val_rmse"])
    assert list(board["val_rmse"]) == sorted(board["val_rmse"])  # lower is better for rmse


def test_bad_inputs_are_refused_with_a_message_naming_the_problem(ll):
    from lakeloop.errors import AutoMLError

    rows = make_rows(60)
    cases = [
        (dict(target="nope"), "target column 'nope'"),
        (dict(target="label", families=["xgboost"]), "unknown model family"),
        (dict(target="label", task="classification", metric="rmse"), "not a classification metric"),
        (dict(target="color", task="regression"), "regression needs a numeric target"),
        (dict(target="label", budget_s=0), "budget_s must be positive"),
        (dict(target="label", features=["x1", "at"]), "datetimes"),
        (dict(target="label", search="grid"), "search must be one of"),
    ]
    for kwargs, message in cases:
        with pytest.raises(AutoMLError, match=message):
            ll.automl.run(rows, **kwargs)
    with pytest.raises(AutoMLError, match="at least 20"):
        ll.automl.run(rows.head(10), target="label")
    with pytest.raises(AutoMLError, match="cannot train on list"):
        ll.automl.run([1, 2, 3], target="label")


def test_every_family_refits_to_identical_results_for_a_seed():
    from lakeloop.automl import training
    from lakeloop.automl.family import FAMILIES
    from lakeloop.automl.spec import TrainingSpec

    rows = make_rows(200, seed=5)
    base = TrainingSpec(target="label", task="classification", metric="roc_auc", features=tuple(FEATURES),
                        numeric=("x1", "x2", "count", "flag"), categorical=("color",), timestamp_column="at",
                        seed=11, max_epochs=5)
    shuffled = rows.sample(frac=1.0, random_state=2)  # row order must not matter
    for name, fam in FAMILIES.items():
        spec = base.best(name, fam.defaults("classification"), epochs=4 if fam.by_epoch else None)
        a, b = training.fit(rows, spec), training.fit(shuffled, spec)
        assert a.metrics == b.metrics, name
        assert a.prepared.frame_hash == b.prepared.frame_hash
        np.testing.assert_array_equal(a.pipeline.predict_proba(rows[FEATURES]),
                                      b.pipeline.predict_proba(rows[FEATURES]))
    mlp = base.best("mlp", FAMILIES["mlp"].defaults("classification"), epochs=4)
    once = training.fit(rows, mlp).pipeline.predict_proba(rows[FEATURES])
    reseeded = training.fit(rows, dataclasses.replace(mlp, seed=12)).pipeline.predict_proba(rows[FEATURES])
    assert not np.array_equal(once, reseeded)
