"""Run an AutoML search as a Ray job and register the best model.

    lakeloop job submit automl --table raw.labels --target is_fraud \
        [--features customer_stats:* ...] [--version N] [--timestamp-column ts] [--task classification] \
        [--metric roc_auc] [--budget-s 300] [--max-trials 50] [--seed 0] [--families linear,hgb,forest,mlp] \
        [--name fraud] [--no-register] [--lake DIR | --config lakeloop.yaml]

``lakeloop job submit`` ships this checkout and the lake settings, and prints the
equivalent ``ray job submit`` line (``--print-only``: only that). Inside a Ray job,
``lakeloop.connect()`` joins the job's cluster (RAY_ADDRESS) and
reads its lake and MLflow settings from LAKELOOP_* variables, lakeloop.yaml or
``--lake``. Prints one JSON line: the search run, the best trial, holdout
metrics, the registered version and the gate's verdict.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help="lake table with the training rows (or entity rows)")
    parser.add_argument("--target", required=True, help="label column")
    parser.add_argument("--features", nargs="*", help="feature columns, or feature refs view:feature / view:*")
    parser.add_argument("--version", type=int, help="table version to train on (default: latest)")
    parser.add_argument("--timestamp-column", help="rows' event time: the holdout is the latest rows")
    parser.add_argument("--task", choices=["classification", "regression"])
    parser.add_argument("--metric")
    parser.add_argument("--budget-s", type=float, help="search time budget in seconds")
    parser.add_argument("--max-trials", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", help="comma-separated: linear,forest,hgb,mlp (default: all)")
    parser.add_argument("--cv", type=int, help="cross-validation folds instead of a validation split")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--name", help="registered model name (default: the target)")
    parser.add_argument("--no-register", action="store_true")
    parser.add_argument("--margin", type=float, default=0.0, help="gate: how much to beat the champion by")
    parser.add_argument("--latency-budget-ms", type=float, default=None,
                        help="gate: an absolute wall-clock p95 single-row budget (default: none; the gate compares "
                             "CPU time with the champion's)")
    parser.add_argument("--lake", help="lake root (overrides the config)")
    parser.add_argument("--config", help="lakeloop.yaml")
    args = parser.parse_args(argv)

    import lakeloop
    from lakeloop.registry import Gate

    ll = lakeloop.connect(args.config, **({"lake_root": args.lake} if args.lake else {}))
    result = ll.automl.run(
        args.table, target=args.target, features=args.features, version=args.version,
        timestamp_column=args.timestamp_column, task=args.task, metric=args.metric, budget_s=args.budget_s,
        max_trials=args.max_trials, seed=args.seed,
        families=args.families.split(",") if args.families else None, cv=args.cv, max_epochs=args.max_epochs,
        name=args.name, register=not args.no_register,
        gate=Gate(margin=args.margin, latency_budget_ms=args.latency_budget_ms), progress=False,
    )
    print(json.dumps({"run_id": result.run_id, "trials": result.trials, "best": result.best,
                      "metrics": result.metrics, "model": result.model_name, "version": result.model_version,
                      "gate": result.gate, "ray": result.lineage.get("ray")}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
