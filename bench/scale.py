"""Scale-out overhead: one Ray node beside the three-node loopback cluster, same logical CPUs, same work.

    .venv/bin/python bench/scale.py                       # 1M source rows, 12 AutoML trials, lake 1M rows
    .venv/bin/python bench/scale.py --rows 300000 --trials 8 --lake-rows 200000 --json-out scale.json

Both sides get 3 logical CPUs: a local Ray with ``num_cpus=3`` (one node), then the cluster of
``tests/ray_cluster.py`` (a head and two workers of one CPU each, started with cluster.yaml's ``ray
start`` lines, all on this machine's loopback). On each, in a fresh lake with the same rows:

  * materialization: a feature view with per-customer windowed aggregates over ``--rows`` source rows,
    computed on Ray Data in blocks (one full run timed cold, then a second full run timed warm);
    throughput is source rows per second;
  * AutoML: ``--trials`` trials (linear models and gradient boosting, 3 at a time, half a CPU
    each) on a fixed frame; trials per minute of the whole search.

Ratios are cluster / one node: with the same CPUs on the same machine, a ratio below 1.0 is what
distribution costs (scheduling across raylets, objects crossing object stores), not a speed-up.
The lake part compares a local lake with an S3 API server (``bench/scale_lake.py``): time per append
and per read of ``--lake-rows`` rows. Prints a table, then JSON (``--json-out`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPUS = 3


def _transactions(n: int, seed: int = 0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    return pd.DataFrame({"txn_id": np.char.add("t", np.arange(n).astype(str)),
                         "customer_id": np.char.add("c", rng.integers(0, max(1, n // 50), n).astype(str)),
                         "amount": rng.gamma(2.0, 30.0, n).round(2),
                         "event_time": start + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s")})


def _frame(seed: int = 1):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = 3000
    frame = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(8)})
    frame["y"] = (frame["x0"] + 0.5 * frame["x1"] - frame["x2"] * frame["x3"] + rng.normal(scale=0.7, size=n) > 0)
    frame["y"] = frame["y"].astype(int)
    return frame


def workload(ll, rows: int, trials: int) -> dict:
    """The same work on whatever Ray ``ll`` is connected to; returns timings."""
    from lakeloop.features import Aggregation, Entity, FeatureView

    ll.lake.create("raw.tx", {"txn_id": "string", "customer_id": "string", "amount": "float64",
                              "event_time": "timestamp"}, primary_key="txn_id")
    ll.lake.table("raw.tx").append(_transactions(rows))  # not timed: the same input for both sides
    customer = Entity(name="customer", join_keys=["customer_id"])
    view = FeatureView(name="spend", entities=[customer], source="raw.tx", timestamp_field="event_time",
                       features=[Aggregation(column="amount", function="sum", window="1d"),
                                 Aggregation(column="amount", function="count", window="7d")])
    ll.features.apply([customer, view])
    out: dict = {"rows": rows}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        run = ll.features.materialize("spend", full=True, refresh_online=False)
        seconds = time.perf_counter() - start
        out[f"materialize_{label}_s"] = round(seconds, 3)
        out[f"materialize_{label}_rows_per_s"] = round(rows / seconds, 1)
        out.setdefault("mode", run.mode)
    start = time.perf_counter()
    result = ll.automl.run(_frame(), target="y", families=["linear", "hgb"], max_trials=trials, max_concurrent=3,
                           cpus_per_trial=0.5, register=False, gate=False, progress=False, name="scale")
    seconds = time.perf_counter() - start
    out.update(automl_s=round(seconds, 3), automl_trials=int(result.trials),
               automl_trials_per_min=round(result.trials / seconds * 60, 2))
    return out


def one_node(rows: int, trials: int) -> dict:
    import ray

    import lakeloop

    with tempfile.TemporaryDirectory(prefix="scale-1n-", dir="/tmp") as tmp:
        ll = lakeloop.connect(lake_root=str(Path(tmp, "lake")), ray_num_cpus=CPUS)
        ll.ensure_ray()
        try:
            return {"nodes": len([n for n in ray.nodes() if n["Alive"]]), **workload(ll, rows, trials)}
        finally:
            ray.shutdown()


def three_nodes(rows: int, trials: int) -> dict:
    import ray

    import lakeloop

    sys.path.insert(0, str(REPO / "tests"))
    from ray_cluster import start_cluster, stop_cluster

    with tempfile.TemporaryDirectory(prefix="scale-3n-", dir="/tmp") as tmp:
        cluster = start_cluster(Path(tmp), str(Path(tmp, "lake")), cpus=(1, 1, 1))
        try:
            ll = lakeloop.connect(cluster.config_file)
            ll.ensure_ray()
            return {"nodes": len([n for n in ray.nodes() if n["Alive"]]), **workload(ll, rows, trials)}
        finally:
            ray.shutdown()
            stop_cluster(cluster)


def lake_part(rows: int) -> dict:
    """bench/scale_lake.py's local-vs-S3 measure (imported when called: it starts its own S3 server)."""
    sys.path.insert(0, str(REPO / "bench"))
    from scale_lake import lake_local_vs_s3

    return lake_local_vs_s3(rows)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="source rows to materialize")
    parser.add_argument("--trials", type=int, default=12, help="AutoML trials per side")
    parser.add_argument("--lake-rows", type=int, default=1_000_000, help="rows per append/read, local vs S3")
    parser.add_argument("--skip-lake", action="store_true", help="leave out the local-vs-S3 lake part")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "token")

    report: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "load_before": _load()}, "logical_cpus": CPUS}
    report["one_node"] = one_node(args.rows, args.trials)
    report["one_node"]["load_after"] = _load()
    report["three_nodes"] = three_nodes(args.rows, args.trials)
    report["three_nodes"]["load_after"] = _load()
    a, b = report["one_node"], report["three_nodes"]
    report["ratios"] = {  # cluster / one node, for throughputs (higher is better)
        "materialize_cold": round(b["materialize_cold_rows_per_s"] / a["materialize_cold_rows_per_s"], 3),
        "materialize_warm": round(b["materialize_warm_rows_per_s"] / a["materialize_warm_rows_per_s"], 3),
        "automl_trials_per_min": round(b["automl_trials_per_min"] / a["automl_trials_per_min"], 3)}
    if not args.skip_lake:
        report["lake"] = lake_part(args.lake_rows)

    print(f"{'':28}{'1 node':>14}{'3 nodes':>14}{'ratio 3/1':>12}")
    for key, unit in (("materialize_cold_rows_per_s", "rows/s"), ("materialize_warm_rows_per_s", "rows/s"),
                      ("automl_trials_per_min", "trials/min")):
        ratio = report["ratios"][key.replace("_rows_per_s", "")]
        print(f"{key:28}{a[key]:>14,.1f}{b[key]:>14,.1f}{ratio:>11.3f}x  {unit}")
    if "lake" in report:
        print(f"lake local vs S3 ({args.lake_rows:,} rows): {json.dumps(report['lake'], default=str)}")
    print(f"load (1/5 min) before {report['machine']['load_before']}, after 1 node {a['load_after']}, "
          f"after 3 nodes {b['load_after']}")
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json_out:
        args.json_out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
