"""Feature store benchmark: lakeloop beside plain pandas baselines, in one run, on generated data.

    .venv/bin/python bench/features.py                      # 1M entity rows x 10M feature rows
    .venv/bin/python bench/features.py --entity-rows 100000 --feature-rows 1000000 --source-rows 200000

Measures
  * point-in-time join rows/s: ``training_frame`` (reading the Delta feature table
    included) vs ``pandas.merge_asof`` on frames already in memory; same answer checked;
  * materialization rows/s: ``materialize`` (Ray Data, windowed aggregates, Delta write)
    vs the same computation in plain pandas in-process (no lake, no Ray);
  * online lookup latency for 1 and 100 entities: in-process (the online table) vs a
    dict lookup, and over HTTP on loopback (the online store actor's endpoint).

Prints a table and JSON (``--json-out FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def percentiles(samples_s: list[float]) -> dict:
    ms = np.array(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "n": len(ms)}


N_FEATURES = 10


def make_feature_rows(n: int, n_entities: int, rng) -> pd.DataFrame:
    start = pd.Timestamp("2026-01-01", tz="UTC").value // 1000
    ts = start + rng.integers(0, 90 * 86400 * 1_000_000, n)
    df = pd.DataFrame({"entity_id": pd.array([f"e{i:07d}" for i in rng.integers(0, n_entities, n)], dtype=object),
                       "event_time": pd.to_datetime(ts, unit="us", utc=True)})
    df["_known_at"] = df["event_time"]
    for j in range(N_FEATURES):
        df[f"f{j}"] = rng.standard_normal(n)
    return df


def bench_join(ll, args, rng) -> dict:
    from lakeloop.features import Entity, Feature, FeatureView
    from lakeloop.features.materialize import feature_schema, to_feature_arrow
    from lakeloop.lake.schema import TableSchema

    entity = Entity(name="entity", join_keys=["entity_id"])
    view = FeatureView(name="bench_wide", entities=[entity], source="raw.bench_wide", timestamp_field="event_time",
                       features=[Feature(name=f"f{j}") for j in range(N_FEATURES)], ttl="7d")
    ll.lake.create("raw.bench_wide", {"entity_id": "string", "event_time": "timestamp",
                                      **{f"f{j}": "float64" for j in range(N_FEATURES)}})
    ll.features.apply([view])
    feats = make_feature_rows(args.feature_rows, args.entities, rng)
    schema = TableSchema.build(feature_schema(view, ll.lake.table("raw.bench_wide").schema))
    ll.lake.create(view.table, schema)
    # the layout materialization writes: sorted for the join
    ll.lake.table(view.table).append(to_feature_arrow(view, feats, schema))
    q = pd.DataFrame({"entity_id": [f"e{i:07d}" for i in rng.integers(0, int(args.entities * 1.05), args.entity_rows)],
                      "event_timestamp": pd.to_datetime(pd.Timestamp("2026-01-01", tz="UTC").value // 1000
                                                        + rng.integers(0, 100 * 86400 * 1_000_000, args.entity_rows),
                                                        unit="us", utc=True)})
    refs = ["bench_wide:*"]
    ll.features.training_frame(q.head(1000), refs, known_time=False)  # compile the kernel once

    def ours():
        return ll.features.training_frame(q, refs, known_time=False).data

    def pandas_asof():
        left = q.sort_values("event_timestamp")
        right = feats.drop(columns=["_known_at"]).sort_values("event_time")
        return pd.merge_asof(left, right, left_on="event_timestamp", right_on="event_time", by="entity_id",
                             tolerance=pd.Timedelta("7d"), direction="backward")

    t_ours, got = timed(ours, args.repeat)
    t_pd, want = timed(pandas_asof, args.repeat)
    got = got.sort_values(["entity_id", "event_timestamp"]).reset_index(drop=True)
    want = want.sort_values(["entity_id", "event_timestamp"]).reset_index(drop=True)
    same = bool(np.allclose(got["f0"].to_numpy(float), want["f0"].to_numpy(float), equal_nan=True)
                and np.allclose(got["f9"].to_numpy(float), want["f9"].to_numpy(float), equal_nan=True))
    return {"entity_rows": args.entity_rows, "feature_rows": args.feature_rows,
            "lakeloop_s": round(t_ours, 3), "pandas_merge_asof_s": round(t_pd, 3),
            "lakeloop_rows_per_s": round(args.entity_rows / t_ours), "pandas_rows_per_s": round(args.entity_rows / t_pd),
            "speedup": round(t_pd / t_ours, 2), "same_answer": same,
            "matched_share": round(float(got["f0"].notna().mean()), 3)}


def bench_materialize(ll, args, rng) -> dict:
    from lakeloop.features import Aggregation, Entity, Feature, FeatureView
    from lakeloop.features.materialize import compute

    entity = Entity(name="customer", join_keys=["customer_id"])

    view = FeatureView(
        name="bench_customer", entities=[entity], source="raw.bench_tx", timestamp_field="event_time",
        features=[Feature(name="amount"), Aggregation(column="amount", function="count", window="1h"),
                  Aggregation(column="amount", function="sum", window="1d"),
                  Aggregation(column="amount", function="mean", window="7d")], ttl="30d")
    n = args.source_rows
    src = pd.DataFrame({
        "customer_id": [f"c{i:06d}" for i in rng.integers(0, max(1, n // 20), n)],
        "amount": rng.gamma(2.0, 20.0, n),
        "event_time": pd.to_datetime(pd.Timestamp("2026-01-01", tz="UTC").value // 1000
                                     + np.sort(rng.integers(0, 30 * 86400 * 1_000_000, n)), unit="us", utc=True)})
    table = ll.lake.create("raw.bench_tx", {"customer_id": "string", "amount": "float64", "event_time": "timestamp"})
    table.append(src)
    ll.features.apply([view])
    t_ours, result = timed(lambda: ll.features.materialize("bench_customer", full=True, refresh_online=False))
    with_known = src.assign(_known_at=pd.Timestamp.now(tz="UTC"))
    t_pd, _ = timed(lambda: compute(view, with_known))
    # incremental: 1% new rows
    more = src.sample(max(1, n // 100), random_state=1).assign(
        event_time=src["event_time"].max() + pd.to_timedelta(rng.integers(1, 3600, max(1, n // 100)), unit="s"))
    table.append(more)
    t_inc, inc = timed(lambda: ll.features.materialize("bench_customer", refresh_online=False))
    return {"source_rows": n, "lakeloop_full_s": round(t_ours, 3), "pandas_inprocess_s": round(t_pd, 3),
            "lakeloop_rows_per_s": round(n / t_ours), "pandas_rows_per_s": round(n / t_pd),
            "ratio_to_pandas": round(t_pd / t_ours, 2), "rows_written": result.rows_written,
            "incremental_new_rows": len(more), "incremental_s": round(t_inc, 3), "incremental_mode": inc.mode}


def bench_online(ll, args, rng) -> dict:
    from lakeloop.features import online

    n_ent = args.online_entities
    t0 = pd.Timestamp.now(tz="UTC")
    src = pd.DataFrame({"customer_id": [f"c{i:06d}" for i in range(n_ent)], "amount": rng.gamma(2.0, 20.0, n_ent),
                        "event_time": t0 - pd.Timedelta(minutes=5)})
    from lakeloop.features import Aggregation, Entity, Feature, FeatureView

    view = FeatureView(name="bench_online", entities=[Entity(name="customer", join_keys=["customer_id"])],
                       source="raw.bench_online", timestamp_field="event_time",
                       features=[Feature(name="amount"), Aggregation(column="amount", function="sum", window="1d")])
    ll.lake.create("raw.bench_online", {"customer_id": "string", "amount": "float64", "event_time": "timestamp"})
    ll.lake.table("raw.bench_online").append(src)
    ll.features.apply([view])
    ll.features.materialize("bench_online")
    table = online.load_table(ll, "bench_online")
    plain = {k: v for k, v in zip(src["customer_id"], src[["amount"]].to_numpy().tolist())}
    keys = src["customer_id"].tolist()
    out: dict = {"entities_loaded": len(table)}
    for batch in (1, 100):
        picks = [[{"customer_id": keys[i]} for i in rng.integers(0, n_ent, batch)] for _ in range(args.lookups)]
        inproc, base = [], []
        for p in picks:
            t = time.perf_counter()
            table.lookup(p)
            inproc.append(time.perf_counter() - t)
            t = time.perf_counter()
            [plain.get(e["customer_id"]) for e in p]
            base.append(time.perf_counter() - t)
        out[f"in_process_{batch}"] = percentiles(inproc)
        out[f"dict_{batch}"] = percentiles(base)
    online.start(ll)
    url = f"{online.url(ll)}/v1/features/bench_online"
    for batch in (1, 100):
        samples = []
        for i in range(args.lookups):
            body = json.dumps({"customer_id": [keys[j] for j in rng.integers(0, n_ent, batch)]}).encode()
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            t = time.perf_counter()
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
            samples.append(time.perf_counter() - t)
        out[f"http_{batch}"] = percentiles(samples[5:])  # the first few warm up the connection path
    online.stop(ll)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="lakeloop feature store benchmark")
    p.add_argument("--entity-rows", type=int, default=1_000_000)
    p.add_argument("--feature-rows", type=int, default=10_000_000)
    p.add_argument("--entities", type=int, default=100_000)
    p.add_argument("--source-rows", type=int, default=1_000_000)
    p.add_argument("--online-entities", type=int, default=100_000)
    p.add_argument("--lookups", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--parts", default="join,materialize,online")
    p.add_argument("--json-out")
    args = p.parse_args(argv)

    import lakeloop

    rng = np.random.default_rng(0)
    results: dict = {"machine": f"{__import__('os').cpu_count()} cores"}
    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-") as tmp:
        ll = lakeloop.connect(lake_root=f"{tmp}/lake", online_port=free_port())
        ll.ensure_ray()
        parts = args.parts.split(",")
        if "join" in parts:
            results["join"] = bench_join(ll, args, rng)
        if "materialize" in parts:
            results["materialize"] = bench_materialize(ll, args, rng)
        if "online" in parts:
            results["online"] = bench_online(ll, args, rng)
        import ray

        ray.shutdown()
    report(results)
    print(json.dumps(results, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


def report(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="lakeloop feature store vs plain pandas (same run)")
    for c in ("measure", "lakeloop", "baseline", "ratio"):
        t.add_column(c)
    if "join" in r:
        j = r["join"]
        t.add_row(f"PIT join {j['entity_rows']:,} x {j['feature_rows']:,} rows/s",
                  f"{j['lakeloop_rows_per_s']:,}", f"{j['pandas_rows_per_s']:,} (merge_asof)",
                  f"{j['speedup']}x, same answer: {j['same_answer']}")
    if "materialize" in r:
        m = r["materialize"]
        t.add_row(f"materialize {m['source_rows']:,} rows, rows/s", f"{m['lakeloop_rows_per_s']:,}",
                  f"{m['pandas_rows_per_s']:,} (pandas in-process)", f"{m['ratio_to_pandas']}x")
        t.add_row(f"incremental, {m['incremental_new_rows']:,} new rows", f"{m['incremental_s']} s", "", m["incremental_mode"])
    if "online" in r:
        o = r["online"]
        for b in (1, 100):
            t.add_row(f"online lookup {b} entit{'y' if b == 1 else 'ies'} in-process p50/p99 ms",
                      f"{o[f'in_process_{b}']['p50_ms']}/{o[f'in_process_{b}']['p99_ms']}",
                      f"{o[f'dict_{b}']['p50_ms']}/{o[f'dict_{b}']['p99_ms']} (dict)", "")
            t.add_row(f"online lookup {b} over HTTP p50/p99 ms", f"{o[f'http_{b}']['p50_ms']}/{o[f'http_{b}']['p99_ms']}",
                      "", "")
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
