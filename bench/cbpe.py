"""Label-free performance estimates against the realized metric, window by window, on the demo's drift.

    .venv/bin/python bench/cbpe.py                      # the demo's sizes: 800 live rows, then 5000 drifted
    .venv/bin/python bench/cbpe.py --windows 10 --json-out cbpe.json

Offline, without Ray or serving, on the demo's own generator
(:mod:`lakeloop.demo.scenario`): a classifier (HistGradientBoosting, on the
request's own signals the demo's monitor tests: ``log_amount``, ``is_night``,
``is_foreign``) is trained on the history days, and its holdout (20%, as
lakeloop's registry keeps it) is the labelled reference CBPE calibrates on.
Then windows of ``--window-rows`` rows are served: the live day (no drift)
and the drifted day (``drift=1.0``, as ``lakeloop demo`` injects it), and
per window the realized accuracy and ROC AUC (from the labels) are compared
with

  * ``cbpe``: :class:`lakeloop.monitoring.CBPE` from the outputs alone;
  * ``reference``: the baseline every monitor without an estimate has, the
    holdout score carried forward ("nothing changed").

Two label sets for the drifted day: ``demo`` is the scenario as generated
(covariate drift *and* concept drift: foreign cards become far riskier),
``covariate`` draws the same rows' labels from the pre-drift relation, which
is what any label-free estimate can see. A third part, ``regression``, checks
:class:`lakeloop.monitoring.DLE` on a synthetic regression whose noise grows
where the inputs move. Prints per-window rows, the mean absolute error of
each estimate, the ratio cbpe/reference, and JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

FEATURES = ["log_amount", "is_night", "is_foreign"]


def frame(rows: list[dict]):
    """The scenario's text rows as the request's signals, the label and what its concept depends on."""
    import numpy as np
    import pandas as pd

    from lakeloop.demo.features import transaction_signals

    df = pd.DataFrame(rows)
    df = transaction_signals(pd.DataFrame({"amount": df["amount"].astype(float),
                                           "event_time": pd.to_datetime(df["event_time"], utc=True),
                                           "country": df["country"], "merchant_id": df["merchant_id"],
                                           "is_fraud": df["is_fraud"] == "true"}))
    df["risky"] = df["merchant_id"].str[1:].astype(int) < 4
    df["hour"] = df["event_time"].dt.hour
    return df.reset_index(drop=True).assign(label=lambda d: d["is_fraud"].astype(np.int64))


def pre_drift_labels(df, rng):
    """Labels drawn from the scenario's relation at ``drift=0`` (mirrors ``scenario.generate``'s logit)."""
    import numpy as np

    logit = (-5.0 + 0.9 * np.log1p(df["amount"]) / 2 + 1.5 * df["risky"]
             + 1.0 * ((df["hour"] < 5) | (df["hour"] > 22)) + 1.2 * df["country"].isin(["BR", "NG"]))
    return (rng.random(len(df)) < 1 / (1 + np.exp(-logit))).astype(np.int64)


def classifier_part(args) -> dict:
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from threadpoolctl import threadpool_limits

    from lakeloop.demo import scenario
    from lakeloop.monitoring import CBPE

    history = pd.concat([frame(scenario.generate(args.rows_per_day, seed=args.seed, day=d, bad_fraction=0.0))
                         for d in range(args.days)], ignore_index=True)
    holdout = history.sample(frac=0.2, random_state=args.seed)
    train = history.drop(holdout.index)
    holdout = holdout.reset_index(drop=True)
    with threadpool_limits(1, user_api="openmp"):
        model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=args.seed)
        model.fit(train[FEATURES], train["label"])

    def outputs(df):
        with threadpool_limits(1, user_api="openmp"):
            return pd.DataFrame({"prediction": model.predict(df[FEATURES]),
                                 "probability": model.predict_proba(df[FEATURES])[:, 1]})

    t0 = time.perf_counter()
    cbpe = CBPE().fit(outputs(holdout), holdout["label"].tolist())
    fit_s = time.perf_counter() - t0
    ref_out = outputs(holdout)
    reference = {"accuracy": float((ref_out["prediction"] == holdout["label"]).mean()),
                 "roc_auc": float(roc_auc_score(holdout["label"], ref_out["probability"]))}

    n = args.window_rows
    # as the demo serves them: a day's rows in random order, so a window is a sample of the day, not an hour
    live = frame(scenario.generate(args.live_rows, seed=args.seed, day=args.days, bad_fraction=0.0))
    live = live.sample(frac=1.0, random_state=args.seed + args.days).reset_index(drop=True)
    drifted = frame(scenario.generate(args.windows * n, seed=args.seed, day=args.days + 1, drift=1.0,
                                      bad_fraction=0.0))
    drifted = drifted.sample(frac=1.0, random_state=args.seed + args.days + 1).reset_index(drop=True)
    rng = np.random.default_rng(args.seed)
    drifted_covariate = drifted.assign(label=pre_drift_labels(drifted, rng))
    rows, t_est = [], 0.0
    for variant, drift_frame in (("demo", drifted), ("covariate", drifted_covariate)):
        stream = pd.concat([live.assign(phase="before"), drift_frame.assign(phase="drifted")], ignore_index=True)
        for w in range(len(stream) // n):
            win = stream.iloc[w * n:(w + 1) * n]
            out = outputs(win)
            t0 = time.perf_counter()
            est = cbpe.estimate(out)
            t_est += time.perf_counter() - t0
            y = win["label"].to_numpy()
            auc = float(roc_auc_score(y, out["probability"])) if 0 < y.sum() < len(y) else None
            rows.append({"variant": variant, "window": w, "phase": win["phase"].iloc[0],
                         "fraud_rate": float(y.mean()),
                         "accuracy": float((out["prediction"].to_numpy() == y).mean()),
                         "cbpe_accuracy": est["accuracy"], "cbpe_accuracy_sd": est["accuracy_sd"],
                         "roc_auc": auc, "cbpe_roc_auc": est["roc_auc"]})
    summary = {}
    for variant in ("demo", "covariate"):
        for phase in ("before", "drifted", "all"):
            sel = [r for r in rows if r["variant"] == variant and (phase == "all" or r["phase"] == phase)]
            if variant == "covariate" and phase == "before":
                continue  # the same windows as the demo's
            entry = {"windows": len(sel)}
            for metric in ("accuracy", "roc_auc"):
                pairs = [(r[metric], r[f"cbpe_{metric}"]) for r in sel
                         if r[metric] is not None and r[f"cbpe_{metric}"] is not None]
                real = np.array([p[0] for p in pairs])
                entry[metric] = {
                    "realized_mean": float(real.mean()),
                    "cbpe_mean": float(np.mean([p[1] for p in pairs])),
                    "mae_cbpe": float(np.mean([abs(p[0] - p[1]) for p in pairs])),
                    "mae_reference": float(np.mean(np.abs(real - reference[metric]))),
                }
                entry[metric]["ratio"] = entry[metric]["mae_cbpe"] / max(entry[metric]["mae_reference"], 1e-12)
            summary[f"{variant}/{phase}"] = entry
    return {"reference": reference, "holdout_rows": len(holdout), "train_rows": len(train),
            "fit_s": round(fit_s, 4), "estimate_ms_per_window": round(1000 * t_est / max(1, len(rows)), 3),
            "windows": rows, "summary": summary}


def regression_part(args) -> dict:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    from lakeloop.monitoring import DLE

    rng = np.random.default_rng(args.seed)

    def data(n, loc=0.0, scale=1.0):
        x = pd.DataFrame({"x1": rng.normal(0, 1, n), "x2": rng.normal(loc, scale, n),
                          "shop": rng.choice(["a", "b", "c"], n)})
        return x, 2 * x["x1"] + rng.normal(0, 0.3 + np.abs(x["x2"]), n)

    x, y = data(4000)
    model = LinearRegression().fit(x[["x1", "x2"]], y)
    x_ref, y_ref = data(1000)
    pred = lambda d: pd.DataFrame({"prediction": model.predict(d[["x1", "x2"]])})  # noqa: E731
    dle = DLE(seed=args.seed).fit(x_ref, pred(x_ref), y_ref)
    ref_mae = float(np.abs(pred(x_ref)["prediction"] - y_ref).mean())
    rows = []
    for w, loc in enumerate(np.linspace(0.0, 2.0, args.windows)):
        xw, yw = data(args.window_rows, loc, 1.0 if loc == 0 else 0.5)
        err = pred(xw)["prediction"].to_numpy() - yw.to_numpy()
        est = dle.estimate(xw, pred(xw))
        rows.append({"window": w, "x2_mean": float(loc), "mae": float(np.abs(err).mean()), "dle_mae": est["mae"],
                     "rmse": float(np.sqrt((err**2).mean())), "dle_rmse": est["rmse"]})
    mae_dle = float(np.mean([abs(r["mae"] - r["dle_mae"]) for r in rows]))
    mae_ref = float(np.mean([abs(r["mae"] - ref_mae) for r in rows]))
    return {"reference_mae": ref_mae, "windows": rows,
            "summary": {"mae": {"mae_dle": mae_dle, "mae_reference": mae_ref, "ratio": mae_dle / mae_ref}}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--rows-per-day", type=int, default=3000)
    parser.add_argument("--live-rows", type=int, default=800)
    parser.add_argument("--windows", type=int, default=25, help="drifted windows (the demo's 5000 rows: 25)")
    parser.add_argument("--window-rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--quiet-windows", action="store_true", help="do not print a line per window")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    cls = classifier_part(args)
    reg = regression_part(args)
    if not args.quiet_windows:
        print("variant    w  phase    fraud  accuracy  cbpe (sd)        roc_auc  cbpe")
        for r in cls["windows"]:
            auc = "  -   " if r["roc_auc"] is None else f"{r['roc_auc']:.3f}"
            print(f"{r['variant']:<9} {r['window']:>2}  {r['phase']:<8} {r['fraud_rate']:.3f}  {r['accuracy']:.3f}"
                  f"     {r['cbpe_accuracy']:.3f} ({r['cbpe_accuracy_sd']:.3f})   {auc}    {r['cbpe_roc_auc']:.3f}")
    print(f"\nreference (holdout, {cls['holdout_rows']} rows): accuracy {cls['reference']['accuracy']:.4f}, "
          f"roc_auc {cls['reference']['roc_auc']:.4f}; CBPE fit {cls['fit_s']} s, "
          f"{cls['estimate_ms_per_window']} ms per window")
    print("part               windows  metric    realized  cbpe    MAE cbpe  MAE reference  ratio")
    for part, entry in cls["summary"].items():
        for metric in ("accuracy", "roc_auc"):
            m = entry[metric]
            print(f"{part:<18} {entry['windows']:>7}  {metric:<8}  {m['realized_mean']:.4f}   {m['cbpe_mean']:.4f}"
                  f"  {m['mae_cbpe']:.4f}    {m['mae_reference']:.4f}         {m['ratio']:.2f}")
    s = reg["summary"]["mae"]
    print(f"regression (DLE)   {len(reg['windows']):>7}  mae       MAE dle {s['mae_dle']:.4f}, MAE reference "
          f"{s['mae_reference']:.4f}, ratio {s['ratio']:.2f}")
    out = {"bench": "cbpe", "python": platform.python_version(), "seconds": round(time.perf_counter() - t0, 2),
           "settings": vars(args) | {"json_out": str(args.json_out) if args.json_out else None},
           "classifier": cls, "regression": reg}
    text = json.dumps(out, default=str)
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps({"bench": "cbpe", "summary": cls["summary"], "regression": reg["summary"],
                      "reference": cls["reference"], "seconds": out["seconds"]}, default=str))
    return json.loads(text)


if __name__ == "__main__":
    main()
