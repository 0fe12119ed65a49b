"""Drift detectors: the scipy and alibi-detect backends decide alike, and false alarms stay at alpha."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lakeloop.errors import LakeloopError, MonitorError
from lakeloop.monitoring import DriftDetector, MonitorSettings, Policy
from lakeloop.monitoring.backends import benjamini_hochberg

COUNTRIES = ["US", "GB", "DE", "FR"]


def frame(n: int, rng, shift: float = 0.0) -> pd.DataFrame:
    """Two numeric columns (one integer-valued) and two categorical ones; ``shift`` moves all of them."""
    p = np.array([0.5, 0.25, 0.15, 0.10]) * (1 - shift) + np.array([0.1, 0.2, 0.3, 0.4]) * shift
    return pd.DataFrame({
        "amount": rng.lognormal(3 + shift, 0.5, n),
        "age": rng.integers(18, 80, n) + np.round(shift * 10),
        "country": rng.choice(COUNTRIES, n, p=p / p.sum()),
        "channel": rng.choice(["web", "app"], n, p=[0.6 - 0.3 * shift, 0.4 + 0.3 * shift]),
    })


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return frame(800, np.random.default_rng(7))


@pytest.fixture(scope="module")
def detectors(reference):
    common = dict(alpha=0.05, n_permutations=100, mmd_reference_rows=300)
    return {b: DriftDetector(backend=b, **common).fit(reference) for b in ("scipy", "alibi")}


CASES = [(seed, shift) for seed in (1, 2, 3) for shift in (0.0, 0.5)]


@pytest.mark.parametrize("seed,shift", CASES)
def test_backends_reach_the_same_decisions_on_the_same_windows(detectors, seed, shift):
    window = frame(120, np.random.default_rng(seed), shift)
    ours = detectors["scipy"].run(window, seed=seed)
    theirs = detectors["alibi"].run(window, seed=seed)

    assert ours["drift"] == theirs["drift"] == (shift > 0)
    assert ours["drifted"] == theirs["drifted"]
    assert ours["threshold"] == pytest.approx(theirs["threshold"])
    for f in ("amount", "age", "country", "channel"):
        a, b = ours["features"][f], theirs["features"][f]
        assert (a["test"], a["drift"]) == (b["test"], b["drift"]), f
        assert a["statistic"] == pytest.approx(b["statistic"], rel=1e-5, abs=1e-6), f
        assert a["p_value"] == pytest.approx(b["p_value"], rel=1e-4, abs=1e-7), f  # alibi answers in float32
    assert ours["features"]["amount"]["test"] == "ks" and ours["features"]["country"]["test"] == "chi2"
    m, n = ours["mmd"], theirs["mmd"]
    assert m["sigma"] == pytest.approx(n["sigma"], rel=1e-4)         # the same median heuristic
    assert m["distance"] == pytest.approx(n["distance"], rel=1e-3, abs=1e-6)  # the same MMD² estimate
    if shift:  # permutation p-values differ by their random permutations only
        assert m["p_value"] < 0.05 and n["p_value"] < 0.05
    else:
        assert m["p_value"] > 0.05 and n["p_value"] > 0.05


def test_fdr_correction_agrees_with_alibi_detect():
    from alibi_detect.utils.statstest import fdr

    rng = np.random.default_rng(0)
    for _ in range(200):
        p = np.concatenate([rng.uniform(0, 1, rng.integers(1, 8)), rng.uniform(0, 0.02, rng.integers(0, 3))])
        flags, threshold = benjamini_hochberg(p, 0.05)
        found, theirs = fdr(p, q_val=0.05)
        assert bool(flags.any()) == bool(found)
        if found:
            assert threshold == pytest.approx(float(theirs))


def test_fdr_decisions_agree_between_backends(reference):
    common = dict(alpha=0.05, correction="fdr", n_permutations=50, mmd_reference_rows=200)
    ours = DriftDetector(backend="scipy", **common).fit(reference)
    theirs = DriftDetector(backend="alibi", **common).fit(reference)
    for seed, shift in [(11, 0.0), (12, 0.3), (13, 0.6)]:
        window = frame(100, np.random.default_rng(seed), shift)
        a, b = ours.run(window, seed=seed), theirs.run(window, seed=seed)
        assert [f for f in a["drifted"] if f != "mmd"] == [f for f in b["drifted"] if f != "mmd"]


def test_missing_values_unseen_categories_and_absent_columns_are_reported(reference):
    det = DriftDetector(alpha=0.05, n_permutations=50, mmd_reference_rows=200).fit(reference)
    window = frame(200, np.random.default_rng(5))
    window.loc[:59, "amount"] = np.nan                     # 30% missing: KS runs on the rest
    window.loc[:99, "channel"] = None                      # a burst of nulls is a category of its own
    window.loc[100:109, "country"] = "XX"                  # never seen in training
    window = window.drop(columns="age")                    # a feature the service stopped sending
    out = det.run(window, seed=0)
    amount, channel, country, age = (out["features"][f] for f in ("amount", "channel", "country", "age"))
    assert amount["missing_rate"] == pytest.approx(0.3) and amount["rows"] == 140 and not amount["drift"]
    assert channel["missing_rate"] == pytest.approx(0.5) and channel["drift"]
    assert country["unseen"] == ["XX"]
    assert age["p_value"] is None and age["missing_rate"] == 1.0
    assert out["drift"] and out["tests"] == 4   # amount, channel, country and MMD; age could not be tested


def test_detector_errors_say_what_is_wrong(reference):
    with pytest.raises(MonitorError, match="not fitted"):
        DriftDetector().run(reference)
    with pytest.raises(MonitorError, match="no column"):
        DriftDetector(features=["amount", "missing"]).fit(reference)
    with pytest.raises(MonitorError, match="backend"):
        DriftDetector(backend="evidently")
    with pytest.raises(MonitorError, match="alpha"):
        DriftDetector(alpha=1.5)
    with pytest.raises(MonitorError, match="asymptotically"):
        DriftDetector(backend="alibi", ks_method="exact").fit(reference)
    with pytest.raises(MonitorError, match="unknown monitor setting"):
        MonitorSettings.from_dict({"window": 10})
    assert issubclass(MonitorError, LakeloopError)


def test_policy_counts_consecutive_drift_per_version_with_cooldown_and_one_in_flight():
    policy = Policy(consecutive=2, cooldown_s=100, metric_drop=0.1, min_labelled=10)
    state, fired = None, []
    for t, (version, drift) in enumerate([(1, True), (2, True), (1, False), (1, True), (1, True), (1, True),
                                          (1, True), (1, True)]):
        decision, state = policy.decide(state, version=version, window=t, drift=drift, now=float(t))
        fired.append((decision["trigger"], decision["suppressed"]))
    assert fired[:5] == [(False, None), (False, None), (False, None), (False, None), (True, None)]
    assert fired[6] == (False, "in_flight")           # the retrain it started is still running
    decision, state = policy.decide(state, version=1, window=8, drift=True, now=8.0, resolved=True)
    assert (decision["trigger"], decision["suppressed"]) == (False, "cooldown")  # settled, but too soon
    decision, state = policy.decide(state, version=1, window=9, drift=True, now=200.0)
    assert decision["trigger"] and state["triggers"] == 2

    # a live metric drop fires on its own, once enough labels are in; rmse falls the other way
    d, _ = policy.decide(None, version=1, window=0, drift=False, metric="accuracy", value=0.7, labelled=9,
                         baseline=0.9, now=0.0)
    assert not d["trigger"] and d["metric_drop"] is None
    d, _ = policy.decide(None, version=1, window=0, drift=False, metric="accuracy", value=0.7, labelled=50,
                         baseline=0.9, now=0.0)
    assert d["trigger"] and "accuracy" in d["reason"] and d["metric_drop"] == pytest.approx(0.2)
    d, _ = policy.decide(None, version=1, window=0, drift=False, metric="rmse", value=0.7, labelled=50,
                         baseline=0.9, now=0.0)
    assert not d["trigger"]
    with pytest.raises(MonitorError, match="consecutive"):
        Policy(consecutive=0)


def test_categorical_override_and_plain_data_output(reference):
    import json

    det = DriftDetector(categorical=["age"], mmd=False).fit(reference)
    out = det.run(frame(100, np.random.default_rng(3)))
    assert out["features"]["age"]["test"] == "chi2" and out["mmd"] is None
    json.dumps(out)  # plain data all the way down


@pytest.mark.slow
def test_false_alarms_on_stationary_windows_stay_at_alpha_and_the_policy_never_fires():
    """600 windows from the training distribution: alarm rate <= alpha, and no 3-in-a-row trigger.

    The reference is large (5000 rows, 1000 of them for MMD) next to the
    60-row windows: the guarantee is over draws of reference and window, and
    conditional on one small reference sample the rate wanders (0.02-0.08
    over references of 800 rows, MMD on 300, here). Six 5000/1000-row
    references gave 0.027-0.045.
    """
    alpha, windows = 0.05, 600
    det = DriftDetector(alpha=alpha, n_permutations=100, mmd_reference_rows=1000).fit(
        frame(5000, np.random.default_rng(99)))
    policy, state = Policy(consecutive=3, cooldown_s=0), None
    rng = np.random.default_rng(2024)
    alarms, triggers = 0, 0
    for w in range(windows):
        out = det.run(frame(60, rng), seed=w)
        alarms += out["drift"]
        decision, state = policy.decide(state, version=1, window=w, drift=out["drift"], now=float(w))
        triggers += decision["trigger"]
    assert alarms / windows <= alpha
    assert triggers == 0

    drifted = [det.run(frame(60, rng, shift=0.4), seed=w)["drift"] for w in range(windows, windows + 10)]
    state, fired = None, []
    for w, d in enumerate(drifted):
        decision, state = policy.decide(state, version=1, window=w, drift=d, now=float(w))
        fired.append(decision["trigger"])
    assert sum(drifted) >= 9 and fired.index(True) == 2


# -- performance without labels ---------------------------------------------------------------------------------
def classified(n: int, rng, spread: float = 1.0):
    """``x1`` decides the label through a logistic curve; a small ``spread`` crowds rows at the boundary."""
    x = pd.DataFrame({"x1": rng.normal(0, spread, n), "x2": rng.normal(0, 1, n)})
    return x, (rng.random(n) < 1 / (1 + np.exp(-3 * x["x1"]))).astype(int)


def test_cbpe_estimates_accuracy_and_roc_auc_through_a_covariate_shift():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from lakeloop.monitoring import CBPE

    rng = np.random.default_rng(0)
    model = LogisticRegression().fit(*classified(3000, rng))

    def outputs(x):
        return pd.DataFrame({"prediction": model.predict(x), "probability": model.predict_proba(x)[:, 1]})

    x_ref, y_ref = classified(800, rng)
    cbpe = CBPE().fit(outputs(x_ref), y_ref)
    assert cbpe.reference_["accuracy"] == pytest.approx(float((model.predict(x_ref) == y_ref).mean()))  # in-sample
    realized, estimated = [], []
    for spread in (1.0, 0.6, 0.3, 0.15):                                 # accuracy falls from ~0.84 to ~0.6
        for _ in range(3):
            x, y = classified(400, rng, spread)
            out, est = outputs(x), cbpe.estimate(outputs(x))
            realized.append((float((out["prediction"] == y).mean()), roc_auc_score(y, out["probability"])))
            estimated.append((est["accuracy"], est["roc_auc"]))
            assert abs(est["accuracy"] - realized[-1][0]) < 4 * est["accuracy_sd"] + 0.02
    realized, estimated = np.array(realized), np.array(estimated)
    assert realized[-3:, 0].mean() < realized[:3, 0].mean() - 0.15      # the shift is real...
    assert np.abs(estimated - realized).mean(axis=0).max() < 0.04        # ...and the estimates follow it
    assert np.corrcoef(estimated[:, 0], realized[:, 0])[0, 1] > 0.9

    # the same on string classes, with the positive class's probability as the pyfunc logs it
    named = outputs(x_ref).assign(prediction=lambda d: np.where(d["prediction"] == 1, "fraud", "ok"))
    again = CBPE().fit(named, np.where(y_ref == 1, "fraud", "ok"))
    assert again.positive_ == "fraud" and again.reference_["accuracy"] == pytest.approx(cbpe.reference_["accuracy"])


def test_cbpe_on_three_classes_calibrates_the_predicted_class_probability():
    from sklearn.linear_model import LogisticRegression

    from lakeloop.monitoring import CBPE

    rng = np.random.default_rng(1)

    def data(n, spread):
        x = pd.DataFrame({"x1": rng.normal(0, spread, n), "x2": rng.normal(0, spread, n)})
        logits = np.column_stack([2 * x["x1"], 2 * x["x2"], np.zeros(n)])
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return x, np.array([rng.choice(3, p=row) for row in p])

    model = LogisticRegression().fit(*data(3000, 1.5))
    x_ref, y_ref = data(1000, 1.5)

    def out(x):  # what the pyfunc logs for three classes: the predicted class's probability
        return pd.DataFrame({"prediction": model.predict(x), "probability": model.predict_proba(x).max(axis=1)})

    cbpe = CBPE().fit(out(x_ref), y_ref)
    for spread in (1.5, 0.3):
        x, y = data(600, spread)
        est = cbpe.estimate(out(x))
        assert est["roc_auc"] is None and abs(est["accuracy"] - float((model.predict(x) == y).mean())) < 0.05


def test_dle_estimates_mae_and_rmse_where_the_noise_grows():
    from sklearn.linear_model import LinearRegression

    from lakeloop.monitoring import DLE

    rng = np.random.default_rng(2)

    def data(n, loc=0.0, scale=1.0):  # the noise grows with |x2|, which the model cannot know
        x = pd.DataFrame({"x1": rng.normal(0, 1, n), "x2": rng.normal(loc, scale, n),
                          "shop": rng.choice(["a", "b", "c"], n)})
        return x, 2 * x["x1"] + rng.normal(0, 0.3 + np.abs(x["x2"]), n)

    model = LinearRegression().fit(*[d[["x1", "x2"]] if i == 0 else d for i, d in enumerate(data(3000))])
    x_ref, y_ref = data(1000)
    pred = lambda x: pd.DataFrame({"prediction": model.predict(x[["x1", "x2"]])})  # noqa: E731
    dle = DLE(seed=0).fit(x_ref, pred(x_ref), y_ref)
    rows = []
    for loc in (0.0, 1.0, 2.0):                                          # x2 moves into the noisy tails
        x, y = data(500, loc, 1.0 if loc == 0 else 0.5)
        err = pred(x)["prediction"].to_numpy() - y.to_numpy()
        est = dle.estimate(x, pred(x))
        rows.append((float(np.abs(err).mean()), float(np.sqrt((err**2).mean())), est["mae"], est["rmse"]))
    rows = np.array(rows)
    assert rows[2, 0] > 1.8 * rows[0, 0]                                 # the realized mae doubles...
    assert np.all(np.abs(rows[:, 2] - rows[:, 0]) / rows[:, 0] < 0.12)   # ...and the estimate follows (mae)
    assert np.all(np.abs(rows[:, 3] - rows[:, 1]) / rows[:, 1] < 0.15)   # (rmse)
    assert dle.estimate(x_ref.drop(columns="shop").iloc[:5], pred(x_ref).iloc[:5])["rows"] == 5   # a column lost


def test_estimators_say_what_is_missing():
    from lakeloop.monitoring import CBPE, DLE
    from lakeloop.monitoring.performance import fit_estimator

    out = pd.DataFrame({"prediction": [1, 0] * 50, "probability": [0.8, 0.3] * 50})
    with pytest.raises(MonitorError, match="one class only"):
        CBPE().fit(out, [1] * 100)
    with pytest.raises(MonitorError, match="probability"):
        CBPE().fit(out.drop(columns="probability"), [1, 0] * 50)
    with pytest.raises(MonitorError, match="usable rows"):
        CBPE().fit(out.head(10), [1, 0] * 5)
    with pytest.raises(MonitorError, match="not fitted"):
        DLE().estimate(out, out)
    with pytest.raises(MonitorError, match="not aligned"):
        fit_estimator("classification", out, out, [1])


def test_policy_fires_on_an_estimated_drop_only_when_asked():
    args = dict(version=1, window=0, drift=False, metric="accuracy", baseline=0.9, now=0.0, estimated=0.75)
    d, _ = Policy().decide(None, **args)
    assert not d["trigger"] and d["estimated_drop"] == pytest.approx(0.15)   # recorded, off by default
    d, _ = Policy(estimated_drop=0.1).decide(None, **args)
    assert d["trigger"] and "estimated accuracy" in d["reason"] and "no labels needed" in d["reason"]
    d, _ = Policy(estimated_drop=0.1).decide(None, **{**args, "metric": "rmse", "baseline": 0.75, "estimated": 0.9})
    assert d["trigger"] and d["estimated_drop"] == pytest.approx(0.15)       # rmse: higher is worse
    d, _ = Policy(estimated_drop=0.2).decide(None, **args)
    assert not d["trigger"]
    with pytest.raises(MonitorError, match="estimated_drop"):
        Policy(estimated_drop=0)
    with pytest.raises(MonitorError, match="window_attempts"):
        MonitorSettings(window_attempts=0)
