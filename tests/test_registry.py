"""The model registry: gate verdicts on the version, champion/challenger aliases, exact rebuilds, the CLI,
and `mlflow models serve` answering with a registered version."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

from conftest import BIN, free_port, run_cli
from test_automl import FEATURES, make_rows, write_table


# -- models the gate must refuse (wrappers around a good fitted pipeline) -------------------------------
class ConstantModel:
    """Predicts the same probability for every row: no better than chance."""

    classes_ = np.array([0, 1])

    def predict_proba(self, X):
        return np.tile([0.5, 0.5], (len(X), 1))


class NaNModel:
    def __init__(self, inner):
        self.inner = inner
        self.classes_ = inner.classes_

    def predict_proba(self, X):
        return np.full((len(X), 2), np.nan)


class SlowModel:
    def __init__(self, inner, seconds: float):
        self.inner, self.seconds = inner, seconds
        self.classes_ = inner.classes_

    def predict_proba(self, X):
        time.sleep(self.seconds)
        return self.inner.predict_proba(X)


class BusyModel:
    """The same answers after ``ms`` of CPU work per call: genuinely slower, whatever else the machine does."""

    def __init__(self, inner, ms: float):
        self.inner, self.ms = inner, ms
        self.classes_ = inner.classes_

    def predict_proba(self, X):
        end = time.thread_time() + self.ms / 1000.0
        while time.thread_time() < end:
            pass
        return self.inner.predict_proba(X)


@contextlib.contextmanager
def cpu_hog(processes: int = 2):
    """Busy-loop processes for the length of the block (this machine has 2 cores); stopped by PID."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


class ExtraColumnModel:
    """As good as the champion, but it needs a column the champion's callers do not send."""

    def __init__(self, inner):
        self.inner = inner
        self.classes_ = inner.classes_

    def predict_proba(self, X):
        if "extra" not in X.columns:
            raise KeyError("extra")
        return self.inner.predict_proba(X.drop(columns=["extra"]))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, ray_session):
    """A search registers v1; hand-made v2..v5 each fail one gate check; a rebuild registers v6."""
    import lakeloop
    from lakeloop.errors import LakeloopError
    from lakeloop.registry import Gate

    ll = lakeloop.connect(lake_root=str(tmp_path_factory.mktemp("registry") / "lake"))
    write_table(ll, "raw.credit", make_rows(300, seed=7))
    out = {"ll": ll}
    first = ll.automl.run("raw.credit", target="label", features=FEATURES, timestamp_column="at",
                          families=["linear", "hgb"], max_trials=3, seed=5, name="credit", progress=False,
                          gate=Gate())
    out["first"] = first
    out["promote_first"] = ll.models.promote("credit")
    holdout, spec = ll.models.holdout("credit", 1), ll.models.spec("credit", 1)
    register = ll.models.register
    out["v2"] = register("credit", ConstantModel(), holdout=holdout, spec=spec,
                         gate=Gate(margin=0.01))
    out["v3"] = register("credit", NaNModel(first.model), holdout=holdout, spec=spec,
                         gate=Gate())
    out["v4"] = register("credit", SlowModel(first.model, 0.03), holdout=holdout, spec=spec,
                         gate=Gate(latency_budget_ms=10, latency_rows=10))
    extra_spec = dataclasses.replace(spec, features=(*spec.features, "extra"), numeric=(*spec.numeric, "extra"))
    out["v5"] = register("credit", ExtraColumnModel(first.model), spec=extra_spec,
                         holdout=holdout.assign(extra=np.arange(len(holdout), dtype=float)),
                         gate=Gate())
    out["rebuild"] = ll.models.rebuild("credit", 1, register=True, gate=Gate())
    out["after_rebuild"] = ll.models.show("credit", "challenger")
    out["promote_rebuilt"] = ll.models.promote("credit")
    out["rollback"] = ll.models.rollback("credit")
    for key, call in (("rollback_again", lambda: ll.models.rollback("credit")),
                      ("promote_failed", lambda: ll.models.promote("credit", 2))):
        try:
            call()
        except LakeloopError as exc:
            out[key] = exc
    return out


def tags(ll, version: int) -> dict:
    return ll.mlflow.get_model_version("credit", str(version)).tags


def test_first_version_passes_with_no_champion_becomes_challenger_then_champion(scenario):
    first = scenario["first"]
    assert first.model_version == 1 and first.gate["passed"] and first.gate["schema"] == "no champion"
    assert first.gate["nonfinite"] == 0 and first.gate["p95_ms"] > 0
    assert scenario["promote_first"] == {"name": "credit", "champion": 1, "previous": None, "changed": True}


def test_gate_refuses_a_version_that_does_not_beat_the_champion_by_the_margin(scenario):
    ll, v2 = scenario["ll"], scenario["v2"]
    t = tags(ll, v2.version)
    assert v2.version == 2 and not v2.gate["passed"]
    assert t["lakeloop.gate.passed"] == "false" and "does not beat champion version 1" in t["lakeloop.gate.reasons"]
    assert t["lakeloop.gate.champion_version"] == "1" and t["lakeloop.gate.margin"] == "0.01"
    assert float(t["lakeloop.gate.score"]) == pytest.approx(0.5)
    assert float(t["lakeloop.gate.champion_score"]) == pytest.approx(scenario["first"].metrics["roc_auc"], abs=1e-5)
    assert json.loads(t["lakeloop.gate"])["improvement"] < 0
    assert ll.models.show("credit", 2)["aliases"] == []


def test_gate_refuses_nan_outputs(scenario):
    ll, v3 = scenario["ll"], scenario["v3"]
    t = tags(ll, v3.version)
    assert t["lakeloop.gate.passed"] == "false" and int(t["lakeloop.gate.nonfinite"]) > 0
    assert "NaN/inf" in t["lakeloop.gate.reasons"]


def test_gate_refuses_a_version_over_the_latency_budget(scenario):
    ll, v4 = scenario["ll"], scenario["v4"]
    t = tags(ll, v4.version)
    assert t["lakeloop.gate.passed"] == "false" and float(t["lakeloop.gate.p95_ms"]) > 10
    assert v4.gate["reasons"] == [r for r in v4.gate["reasons"] if "latency" in r] and v4.gate["reasons"]
    assert t["lakeloop.gate.latency_budget_ms"] == "10"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gate_under_cpu_load_times_the_challenger_against_the_champion(ll):
    """Two busy-loop processes on this 2-core machine: the first version passes (no champion, no absolute
    budget), a challenger as fast as the champion passes, one doing 40 ms more CPU work per row is refused."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    from lakeloop.automl import family
    from lakeloop.registry import Gate

    data = load_breast_cancer(as_frame=True).frame
    train, holdout = train_test_split(data, test_size=0.3, random_state=0, stratify=data["target"])
    features = [c for c in data.columns if c != "target"]
    pipe = family.build("linear", family.FAMILIES["linear"].defaults("classification"), task="classification",
                        seed=0, numeric=features, categorical=[]).fit(train[features], train["target"])
    common = dict(holdout=holdout, target="target", task="classification", train=train, gate=False)
    for model in (pipe, pipe, BusyModel(pipe, 40.0)):  # v1, v2 (the same), v3 (slower); gated below
        ll.models.register("busy", model, **common)
    with cpu_hog(2):
        first = ll.models.gate("busy", 1, Gate()).to_dict()
        assert first["passed"] and first["schema"] == "no champion", first
        assert first["latency_budget_ms"] is None and first["latency_ratio"] is None
        ll.models.promote("busy", 1)
        same = ll.models.gate("busy", 2, Gate()).to_dict()
        slow = ll.models.gate("busy", 3, Gate(latency_rows=20)).to_dict()
    assert same["passed"], same
    assert same["champion_p95_ms"] > 0 and same["latency_ratio"] <= 1.5
    assert not slow["passed"] and slow["latency_ratio"] > 1.5, slow
    assert slow["reasons"] and all("times champion version 1's" in r for r in slow["reasons"])
    t = ll.mlflow.get_model_version("busy", "3").tags
    assert float(t["lakeloop.gate.latency_ratio"]) > 1.5 and t["lakeloop.gate.max_latency_ratio"] == "1.5"


def test_gate_times_single_rows_on_one_native_thread_as_a_replica_runs_them():
    """OpenMP/BLAS pools are held to one thread while the gate times (a Serve replica of under one CPU gets
    OMP_NUM_THREADS=1); with more, HistGradientBoosting's barrier spin counted as the challenger's CPU time.
    Python's garbage collector is off while it times (as timeit's), and on again after."""
    import gc

    from threadpoolctl import threadpool_info

    from lakeloop.registry.gate import interleaved_p95_ms

    class Probe:
        def __init__(self):
            self.threads: set[int] = set()
            self.gc: set[bool] = set()

        def predict(self, rows):
            self.threads |= {pool["num_threads"] for pool in threadpool_info()}
            self.gc.add(gc.isenabled())
            return rows

    import sklearn.ensemble  # noqa: F401 -- loads OpenMP, as a HistGradientBoosting model does

    assert any(pool["num_threads"] > 1 for pool in threadpool_info()) or os.cpu_count() == 1
    a, b = Probe(), Probe()
    rows = pd.DataFrame({"x": [1.0, 2.0]})
    out = interleaved_p95_ms([(a, rows), (b, rows)], 5)
    assert a.threads == b.threads == {1} and all(o["cpu"] >= 0 and o["wall"] > 0 for o in out)
    assert a.gc == b.gc == {False} and gc.isenabled()
    assert any(pool["num_threads"] > 1 for pool in threadpool_info()) or os.cpu_count() == 1  # restored after


def test_gate_flags_a_schema_breaking_change(scenario):
    ll, v5 = scenario["ll"], scenario["v5"]
    t = tags(ll, v5.version)
    assert t["lakeloop.gate.passed"] == "false" and t["lakeloop.gate.schema"] == "breaking"
    assert "'extra'" in t["lakeloop.gate.breaking_changes"] and "breaking change" in t["lakeloop.gate.reasons"]


def test_rebuild_from_lineage_reproduces_the_metrics_exactly(scenario):
    rebuilt, first = scenario["rebuild"], scenario["first"]
    assert rebuilt.equal and rebuilt.frame_matches and rebuilt.max_abs_diff == 0.0
    assert rebuilt.rebuilt == rebuilt.original == first.metrics
    assert rebuilt.rebuilt_version == 6
    # the rebuilt version ties the champion (margin 0) and passes: it is the new challenger
    assert scenario["after_rebuild"]["version"] == 6 and scenario["after_rebuild"]["gate"]["passed"]


def test_promote_and_rollback_move_the_champion_alias(scenario):
    from lakeloop.errors import PromotionError

    ll = scenario["ll"]
    assert scenario["promote_rebuilt"]["champion"] == 6 and scenario["promote_rebuilt"]["previous"] == 1
    assert scenario["rollback"] == {"name": "credit", "champion": 1, "previous": 6, "changed": True}
    assert isinstance(scenario["rollback_again"], PromotionError)
    assert "nothing to roll back" in str(scenario["rollback_again"])
    assert isinstance(scenario["promote_failed"], PromotionError)
    assert "did not pass the gate" in str(scenario["promote_failed"])
    aliases = ll.mlflow.get_registered_model("credit").aliases
    assert {k: int(v) for k, v in aliases.items()} == {"champion": 1}
    assert "lakeloop.rolled_back_at" in tags(ll, 6)


def test_version_carries_lineage_tags_and_a_model_card(scenario):
    ll = scenario["ll"]
    t = tags(ll, 1)
    assert (t["lakeloop.data.table"], t["lakeloop.data.version"], t["lakeloop.seed"]) == ("raw.credit", "1", "5")
    assert t["lakeloop.family"] in ("linear", "hgb") and float(t["lakeloop.holdout.roc_auc"]) > 0.7
    assert t["lakeloop.git_sha"] and t["lakeloop.model_card"] == "lakeloop/model_card.md"
    card = ll.models.card("credit", 1)
    for part in ("# Model card: credit version 1", "## Metrics on the holdout", "## Data", "## Features",
                 "## Lineage", "raw.credit", "time-ordered", "| color | categorical | string |"):
        assert part in card, part
    lineage = ll.models.lineage("credit", 1)
    assert lineage["lineage"]["frame"]["entities"] == {"table": "raw.credit", "version": 1}
    assert lineage["spec"]["family"] == t["lakeloop.family"] and lineage["spec"]["seed"] == 5


def test_compare_scores_versions_on_one_holdout(scenario):
    result = scenario["ll"].models.compare("credit", [1, 2])
    assert result["holdout_of"] == 2 and result["metric"] == "roc_auc"
    one, two = result["versions"]
    assert one["roc_auc_on_common_holdout"] == pytest.approx(one["recorded"], abs=1e-9)
    assert two["roc_auc_on_common_holdout"] == pytest.approx(0.5)
    assert one["data"] == "raw.credit@1" and one["gate_passed"] and not two["gate_passed"]


def test_rebuild_after_vacuum_names_the_model_version_and_vacuum(ll, ray_session):
    from lakeloop.errors import RebuildError, VersionNotFoundError

    table = write_table(ll, "raw.small", make_rows(80, seed=1))
    assert table.version == 1
    ll.automl.run("raw.small", target="label", features=FEATURES, families=["linear"], max_trials=1,
                  name="small", gate=False, progress=False)
    ll.lake.table("raw.small").overwrite(make_rows(80, seed=2))
    ll.lake.table("raw.small").vacuum(retention_hours=0)
    with pytest.raises(VersionNotFoundError) as err:
        ll.models.rebuild("small", 1)
    message = str(err.value)
    assert "model small version 1" in message and "raw.small version 1" in message and "vacuum" in message

    ll.automl.run(make_rows(80, seed=3), target="label", features=FEATURES, families=["linear"], max_trials=1,
                  name="inmemory", gate=False, progress=False)
    with pytest.raises(RebuildError, match="cannot rebuild model inmemory version 1: .*in-memory frame"):
        ll.models.rebuild("inmemory", 1)


@pytest.mark.slow
def test_models_cli_lists_shows_compares_gates_promotes_rolls_back_and_rebuilds(scenario):
    lake = scenario["ll"].config.lake.root
    listed = json.loads(run_cli("--lake", lake, "models", "list", "--json").stdout)
    assert listed == [{"name": "credit", "versions": 6, "latest": 6, "champion": 1, "challenger": None,
                       "metric": "roc_auc", "score": pytest.approx(scenario["first"].metrics["roc_auc"], abs=1e-5),
                       "family": scenario["first"].spec.family}]
    shown = json.loads(run_cli("--lake", lake, "models", "show", "credit", "champion", "--json").stdout)
    assert shown["version"] == 1 and shown["aliases"] == ["champion"] and shown["gate"]["passed"]
    assert "holdout metrics" in run_cli("--lake", lake, "models", "show", "credit", "2").stdout
    lineage = json.loads(run_cli("--lake", lake, "models", "lineage", "credit", "1", "--json").stdout)
    assert lineage["lineage"]["frame"]["entities"]["table"] == "raw.credit"
    compared = json.loads(run_cli("--lake", lake, "models", "compare", "credit", "1", "6", "--json").stdout)
    assert [v["version"] for v in compared["versions"]] == [1, 6]
    gated = json.loads(run_cli("--lake", lake, "models", "gate", "credit", "6", "--max-latency-ratio", "1.5",
                               "--json").stdout)
    assert gated["passed"] and gated["champion_version"] == 1
    promoted = json.loads(run_cli("--lake", lake, "models", "promote", "credit", "--json").stdout)
    assert (promoted["champion"], promoted["previous"]) == (6, 1)
    back = json.loads(run_cli("--lake", lake, "models", "rollback", "credit", "--json").stdout)
    assert (back["champion"], back["previous"]) == (1, 6)
    rebuilt = json.loads(run_cli("--lake", lake, "models", "rebuild", "credit", "1", "--json").stdout)
    assert rebuilt["equal"] and rebuilt["rebuilt"] == rebuilt["original"]
    assert "# Model card: credit version 6" in run_cli("--lake", lake, "models", "card", "credit", "6").stdout

    for args, message in ((("show", "nope"), "no registered model 'nope'"),
                          (("show", "credit", "99"), "no version or alias '99'"),
                          (("promote", "credit", "3"), "did not pass the gate")):
        proc = run_cli("--lake", lake, "models", *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_registered_version(scenario, tmp_path):
    ll = scenario["ll"]
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": ll.config.tracking_uri, "MLFLOW_REGISTRY_URI": ll.config.registry_uri,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/credit/1", "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping within 120 s"
            time.sleep(0.5)
        rows = pd.DataFrame([{"x1": 1.2, "x2": -0.4, "count": 7, "color": "red", "flag": True},
                             {"x1": -2.0, "x2": 1.5, "count": 0, "color": "blue", "flag": False}])
        body = json.dumps({"dataframe_split": rows.to_dict(orient="split", index=False)}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        served = answer["predictions"]
        local = ll.models.load("credit", 1).predict(rows)
        assert [p["prediction"] for p in served] == local["prediction"].tolist()
        assert [p["probability"] for p in served] == pytest.approx(local["probability"].tolist())
        assert served[0]["probability"] > served[1]["probability"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def test_a_multiclass_model_registers_scores_and_answers_per_class_probabilities(ll):
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    from lakeloop.automl import family
    from lakeloop.registry import Gate

    data = load_wine(as_frame=True).frame
    train, holdout = train_test_split(data, test_size=0.3, random_state=0, stratify=data["target"])
    features = [c for c in data.columns if c != "target"]
    pipe = family.build("hgb", family.FAMILIES["hgb"].defaults("classification"), task="classification", seed=0,
                        numeric=features, categorical=[]).fit(train[features], train["target"])
    info = ll.models.register("wine", pipe, holdout=holdout, target="target", task="classification", train=train,
                              gate=Gate())
    assert info.version == 1 and info.gate["passed"] and info.gate["metric"] == "accuracy"
    assert info.metrics["accuracy"] > 0.8 and "log_loss" in info.metrics
    answer = ll.models.load("wine", 1).predict(holdout[features].head(4))
    assert list(answer.columns) == ["prediction", "probability", "proba_0", "proba_1", "proba_2"]
    np.testing.assert_allclose(answer[["proba_0", "proba_1", "proba_2"]].sum(axis=1), 1.0)
    assert info.gate["score"] == pytest.approx(info.metrics["accuracy"])


def test_model_names_reach_mlflow_filter_strings_quoted_so_they_cannot_add_conditions(ll):
    """A name with quotes finds its own versions only; one that spells a filter condition finds nothing else."""
    from lakeloop.registry.models import name_filter

    client = ll.mlflow
    names = ["o'brien", 'say "hi"', "both'\"kinds", "plain"]
    for i, name in enumerate(names):
        client.create_registered_model(name)
        for _ in range(i + 1):
            client.create_model_version(name, source=f"file:///tmp/{i}")
    for i, name in enumerate(names):
        assert [int(v.version) for v in ll.models._versions(name)] == list(range(1, i + 2)), name
    sneaky = "plain' OR name LIKE '%"  # not registered: must not match the others through the filter
    assert name_filter(sneaky) == f'name="{sneaky}"'
    assert ll.models._versions(sneaky) == []
    assert name_filter("both'\"kinds") is None
