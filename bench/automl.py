"""AutoML benchmark: lakeloop's search beside scikit-learn defaults and a plain random search, in one run.

    .venv/bin/python bench/automl.py                                  # 4 datasets, 30 s per search
    .venv/bin/python bench/automl.py --budget-s 10 --datasets breast_cancer,diabetes

Per dataset (scikit-learn's bundled breast_cancer, wine, diabetes and a generated
make_classification set), one fixed train/test split; on the same training rows:

  * ``hgb_default``: HistGradientBoosting with scikit-learn's defaults;
  * ``random``: ``ll.automl.run(search="random")`` for ``--budget-s`` (Optuna's random
    sampler over the same families and spaces, no warm start);
  * ``automl``: ``ll.automl.run()`` (TPE from each family's defaults, ASHA for the MLP)
    for the same ``--budget-s``.

Both searches validate inside the training rows; their best config is then refit on
all training rows, like the default model, and every contender is scored once on the
test rows. Prints a table and JSON (``--json-out FILE`` also writes it). Scores
depend on the machine (trials done within the budget); compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

DATASETS = ("breast_cancer", "wine", "diabetes", "synthetic")


def load(name: str, seed: int):
    """(frame with a ``target`` column, task, metric)."""
    import pandas as pd
    from sklearn import datasets

    if name == "synthetic":
        X, y = datasets.make_classification(n_samples=2000, n_features=20, n_informative=8, n_redundant=4,
                                            flip_y=0.03, class_sep=0.8, random_state=seed)
        frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])]).assign(target=y)
        return frame, "classification", "roc_auc"
    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
              "diabetes": datasets.load_diabetes}[name]
    frame = loader(as_frame=True).frame
    if name == "diabetes":
        return frame, "regression", "r2"
    return frame, "classification", "roc_auc" if frame["target"].nunique() == 2 else "accuracy"


def test_score(model, test, task: str, metric: str) -> float:
    from lakeloop.automl import metric as metrics

    X, y = test.drop(columns=["target"]), test["target"].to_numpy()
    pred, proba, classes = metrics.outputs_of(model, X, task)
    return metrics.resolve(task, metric).score(y, pred, proba, classes)


def refit_best(result, train):
    """The search's best config, fitted on all training rows (as the default model is)."""
    from lakeloop.automl import family, training

    spec = result.spec
    params = dict(spec.params)
    if family.FAMILIES[spec.family].by_epoch:
        params["epochs"] = spec.epochs or spec.max_epochs
    model = family.build(spec.family, params, task=spec.task, seed=spec.seed, numeric=list(spec.numeric),
                         categorical=list(spec.categorical))
    return model.fit(training.raw_features(train, spec), training.target_values(train, spec))


def run_dataset(ll, name: str, budget_s: float, seed: int, cv: int | None = None) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.model_selection import train_test_split

    frame, task, metric = load(name, seed)
    train, test = train_test_split(frame, test_size=0.25, random_state=seed,
                                   stratify=frame["target"] if task == "classification" else None)
    row = {"dataset": name, "task": task, "metric": metric, "rows": len(frame), "features": frame.shape[1] - 1,
           "train_rows": len(train), "test_rows": len(test)}
    cls = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
    start = time.perf_counter()
    default = cls(random_state=seed).fit(train.drop(columns=["target"]), train["target"])
    row["hgb_default"] = {"score": test_score(default, test, task, metric), "seconds": time.perf_counter() - start}
    for label, search in (("random", "random"), ("automl", "tpe")):
        start = time.perf_counter()
        result = ll.automl.run(train, target="target", task=task, metric=metric, budget_s=budget_s, seed=seed,
                               search=search, cv=cv, register=False, progress=False)
        model = refit_best(result, train)
        row[label] = {"score": test_score(model, test, task, metric), "seconds": time.perf_counter() - start,
                      "trials": result.trials, "family": result.spec.family,
                      f"best_val_{metric}": result.best[f"val_{metric}"]}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=30.0, help="time budget of each search (seconds)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated among {DATASETS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cv", type=int, help="the searches validate by k-fold CV (default: one 20%% split)")
    parser.add_argument("--lake", help="lake root for the MLflow runs (default: a temporary folder)")
    parser.add_argument("--json-out", help="also write the JSON here")
    args = parser.parse_args(argv)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in names if d not in DATASETS]
    if unknown or not names:
        parser.error(f"unknown dataset(s) {unknown or names}; choose among {', '.join(DATASETS)}")

    import lakeloop

    lake = args.lake or tempfile.mkdtemp(prefix="lakeloop-bench-automl-")
    ll = lakeloop.connect(lake_root=lake)
    ll.ensure_ray()
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("warming up Ray Tune's workers (not measured)"):
        warm, _, _ = load("breast_cancer", args.seed)
        ll.automl.run(warm, target="target", families=["linear"], max_trials=2, register=False, progress=False)
    rows = []
    for name in names:
        with console.status(f"{name}: default HGB, random search and AutoML ({args.budget_s:g} s each search)"):
            rows.append(run_dataset(ll, name, args.budget_s, args.seed, args.cv))
    report = {"benchmark": "automl", "budget_s": args.budget_s, "seed": args.seed, "cv": args.cv,
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                          "cpus": int(ll.ensure_ray().cluster_resources().get("CPU", 0))},
              "lake": lake, "results": rows}
    print_table(rows, args.budget_s)
    text = json.dumps(report, indent=2, default=float)
    print(text)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(text)
    return 0


def print_table(rows: list[dict], budget_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"AutoML vs defaults vs random search (test score, higher is better; {budget_s:g} s "
                        "per search)")
    for col in ("dataset", "metric", "rows", "HGB defaults", "random search", "AutoML (TPE+ASHA)", "AutoML family"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["dataset"], r["metric"], str(r["rows"]), f"{r['hgb_default']['score']:.4f}",
                      f"{r['random']['score']:.4f} ({r['random']['trials']} trials)",
                      f"{r['automl']['score']:.4f} ({r['automl']['trials']} trials)", r["automl"]["family"])
    Console(width=150).print(table)


if __name__ == "__main__":
    sys.exit(main())
