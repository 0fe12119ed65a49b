"""How objects show in Jupyter (``_repr_html_``) and in a terminal (``__repr__``): fast, no Ray."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from lakeloop import display
from lakeloop.demo import scenario
from lakeloop.features.frame import TrainingFrame


def test_ingest_result_shows_accepted_and_quarantined_by_rule(ll, tmp_path):
    path = scenario.write_csv(scenario.generate(300, seed=1), tmp_path / "tx.csv")
    result = ll.lake.ingest(path, "raw.transactions", rules=scenario.RULES_FILE)
    quarantined = ll.lake.table("quarantine.transactions").read()
    expected = quarantined["_rule"].str.split(", ").explode().value_counts().to_dict()
    assert result.by_rule == expected and sum(expected.values()) >= result.quarantined > 0
    text = repr(result)
    assert f"{result.accepted} accepted, {result.quarantined} quarantined" in text and "amount.min 1" in text
    page = result._repr_html_()
    assert "<table>" in page and "quarantined rows by rule" in page
    assert all(f"<td>{rule}</td>" in page for rule in expected)
    assert result.to_dict()["by_rule"] == expected


def _frame() -> TrainingFrame:
    data = pd.DataFrame({"customer_id": ["a", "b", "c", "d"], "event_timestamp": pd.date_range("2026-01-01", periods=4),
                         "amount_sum_1d": [1.0, None, 3.0, None], "amount_count_1h": [1, 2, 3, 4], "label": [0, 1, 0, 1]})
    lineage = {"entities": {"table": "raw.labels", "version": 3}, "timestamp_column": "event_timestamp",
               "views": {"spend": {"view_version": 2, "definition_hash": "abc", "table": "features.spend",
                                   "table_version": 7, "source": "raw.transactions", "source_version": 5,
                                   "features": ["amount_sum_1d", "amount_count_1h"]}}, "known_time": True}
    return TrainingFrame(data=data, features=["amount_sum_1d", "amount_count_1h"], entity_keys=["customer_id"],
                         timestamp_column="event_timestamp", lineage=lineage)


def test_training_frame_shows_rows_features_lineage_and_null_shares():
    frame = _frame()
    text = repr(frame)
    assert text.startswith("TrainingFrame(4 rows, 2 features, entities raw.labels v3")
    assert "spend v2 (source v5)" in text and "amount_sum_1d 50%" in text
    page = frame._repr_html_()
    assert "TrainingFrame: 4 rows, 2 features" in page and "features.spend" in page and "50.0%" in page
    assert "<td>amount_count_1h</td>" in page and "0.0%" in page  # the first rows follow


def test_drift_report_is_still_a_dict_and_shows_p_values_flags_and_plots():
    from lakeloop.monitoring import DriftDetector

    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"amount": rng.normal(0, 1, 400), "country": rng.choice(["US", "GB"], 400)})
    window = pd.DataFrame({"amount": rng.normal(3, 1, 150), "country": rng.choice(["US", "XX"], 150)})
    report = DriftDetector(backend="scipy", n_permutations=20).fit(reference).run(window)
    assert isinstance(report, dict) and report["drift"] and set(report["drifted"]) >= {"amount", "country"}
    plain = pickle.loads(pickle.dumps(report))
    assert type(plain) is dict and plain == dict(report) and type(copy.deepcopy(report)) is dict
    assert json.loads(json.dumps(report))["drifted"] == report["drifted"]
    text = repr(report)
    assert text.startswith("DriftReport(drift=True") and "amount" in text and "(all: MMD)" in text
    page = report._repr_html_()
    assert "Drift report: DRIFT" in page and page.count("DRIFT</span>") >= 2
    assert page.count('src="data:image/png;base64,') == 2  # one plot per feature, reference against window
    assert display.drift_html(plain).count("<img") == 0     # a plain result still renders its table


@pytest.mark.slow
def test_model_version_shows_metrics_gate_aliases_and_lineage(ll):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": rng.normal(size=200)})
    df["y"] = (df["x"] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    lineage = {"frame": {"entities": {"table": "raw.labels", "version": 4},
                         "views": {"spend": {"view_version": 2, "definition_hash": "0123456789abcdef",
                                             "table": "features.spend", "table_version": 7,
                                             "source": "raw.transactions", "source_version": 5}}},
               "data": {"rows": 200, "hash": "feedbeef"}, "code": {"git_sha": "a" * 40, "git_dirty": False},
               "seed": 3, "mlflow": {"run_id": "search-run"}}
    model = LogisticRegression().fit(df[["x"]], df["y"])
    ll.models.register("clicks", model, holdout=df, target="y", task="classification", lineage=lineage)
    mv = ll.models.get("clicks", 1)
    assert (mv.version, mv.aliases, mv.gate["passed"], mv.data) == (1, ["challenger"], True, "raw.labels v4")
    assert mv.score == mv.metrics["roc_auc"] > 0.5
    text = repr(mv)
    assert text.startswith("ModelVersion(clicks v1, aliases [challenger]") and "gate passed: roc_auc" in text
    page = mv._repr_html_()
    assert "clicks v1  [challenger]" in page and ">passed<" in page and "holdout metrics" in page
    assert "features.spend v7, source raw.transactions v5" in page and "git aaaaaaaaaaaa" in page
    assert mv.links["search run"] == "runs:/search-run"
    assert ll.models.show("clicks", 1)["version"] == 1  # the dict-returning calls are unchanged


def test_serving_status_shows_traffic_shadows_and_their_stats():
    state = {"version": 4, "models": {"fraud": {
        "versions": {"1": {"aliases": ["champion"], "deployed_at": "2026-01-01T00:00:00+00:00"},
                     "2": {"aliases": ["challenger"], "deployed_at": "2026-01-02T00:00:00+00:00"}},
        "policy": {"weights": {"1": 3.0, "2": 1.0}, "shadow": [], "sticky": True}}}}
    live = {"models": {"fraud": {"versions": {"2": {"shadow_stats": {"requests": 40, "errors": 1,
                                                                      "agreement_rate": 0.9}}}}}}
    status = display.ServingStatus(state, live)
    rows = {r["version"]: r for r in status.rows()}
    assert (rows[1]["traffic %"], rows[2]["traffic %"]) == (75.0, 25.0)
    assert (rows[2]["shadow requests"], rows[2]["agreement"], rows[1]["shadow requests"]) == (40, 0.9, None)
    assert "fraud  1        75" in repr(status) and status["models"] == state["models"]
    page = status._repr_html_()
    assert "Serving (state version 4)" in page and "<td>0.9</td>" in page and "<td>25</td>" in page
    assert type(pickle.loads(pickle.dumps(status))) is dict


def test_event_rows_and_text_tables():
    rows = display.event_rows([{"time": "2026-01-01T00:00:00", "model": "m", "version": 2, "kind": "promoted",
                                "reason": "x" * 300, "details": {}}])
    assert rows[0]["kind"] == "promoted" and len(rows[0]["reason"]) == 120
    assert display.text_table([], ["a"]) == "(none)"
    assert "&lt;b&gt;" in display.html_table([{"a": "<b>"}])  # values are escaped


def test_progress_bar_in_a_terminal_and_as_html(capsys):
    quiet = display.ProgressBar("work", total=3, enabled=False)
    with quiet:
        quiet.update(advance=1)
    assert quiet.completed == 1 and capsys.readouterr().err == ""
    with display.ProgressBar("search", total=4, enabled=True) as bar:  # not a notebook: rich on stderr
        bar.update(completed=2, description="search: best 0.9")
    assert "search: best 0.9" in capsys.readouterr().err
    assert '<progress value="2" max="4"' in bar._html() and bar.text() == "search: best 0.9 2/4"
    assert display.in_notebook() is False


@pytest.mark.parametrize("value,text", [(None, ""), (0.123456, "0.1235"), (True, "yes"), ([1, 2], "1, 2"),
                                        ({"a": 1}, "a=1")])
def test_fmt(value, text):
    assert display.fmt(value) == text
