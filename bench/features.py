"""Feature store benchmark: lakeloop beside plain pandas baselines, in one run, on generated data.

    .venv/bin/python bench/features.py                      # 1M entity rows x 10M feature rows
    .venv/bin/python bench/features.py --entity-rows 100000 --feature-rows 1000000 --source-rows 200000

Measures, each side against its baseline in the same run:
  * the point-in-time join on equal terms: the same unsorted pandas frames in (int64 keys by
    default, ``--keys str`` for strings on both sides), the same frame out (query order kept);
    each side's sort and conversions timed; the first call (lakeloop: numba kernel loaded from
    its disk cache or compiled) and the warm best of ``--repeat`` reported apart; every output
    column compared with ``pandas.merge_asof``'s. ``--sdk-join`` adds ``training_frame`` reading
    the Delta table; ``--feast-python`` adds Feast with its duckdb offline store (bench/peers/README);
  * materialization rows/s: ``materialize`` (Ray Data, windowed aggregates, Delta write)
    vs the same computation in plain pandas in-process (no lake, no Ray);
  * online lookup latency for 1 and 100 entities: the SDK (``online_features``, a DataFrame back),
    the in-process reader (``online.reader``), and HTTP on loopback with keep-alive (the online
    store actor's endpoint, answering from the same kind of replica); Feast's SQLite SDK figures
    from STACK_NOTES for reference (not this run).

Prints a table and JSON (``--json-out FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lakeloop.ports import free_port  # below the ephemeral range (lakeloop/ports.py)


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
FEATURES = [f"f{j}" for j in range(N_FEATURES)]
START_US = pd.Timestamp("2026-01-01", tz="UTC").value // 1000
DAY_US = 86400 * 1_000_000


def entity_keys(ids: np.ndarray, kind: str):
    """The same entity ids as int64 or as strings (object dtype, pandas' usual): both sides get these."""
    return ids.astype(np.int64) if kind == "int" else np.array([f"e{i:07d}" for i in ids], dtype=object)


def make_feature_rows(n: int, n_entities: int, rng, kind: str = "int") -> pd.DataFrame:
    """Feature rows in arrival order (not sorted): entity, event time, known time, 10 float features."""
    ts = pd.to_datetime(START_US + rng.integers(0, 90 * DAY_US, n), unit="us", utc=True)
    df = pd.DataFrame({"entity_id": entity_keys(rng.integers(0, n_entities, n), kind), "event_time": ts})
    df["_known_at"] = df["event_time"]
    for f in FEATURES:
        df[f] = rng.standard_normal(n)
    return df


def make_entity_rows(n: int, n_entities: int, rng, kind: str = "int") -> pd.DataFrame:
    """Label rows (entity, timestamp) in no particular order; 5% of entities have no features."""
    return pd.DataFrame({"entity_id": entity_keys(rng.integers(0, int(n_entities * 1.05), n), kind),
                         "event_timestamp": pd.to_datetime(START_US + rng.integers(0, 100 * DAY_US, n), unit="us",
                                                           utc=True)})


def lakeloop_join(q: pd.DataFrame, feats: pd.DataFrame) -> pd.DataFrame:
    """lakeloop's join from the same pandas input to the same pandas output (query order kept).

    Everything is timed: pandas -> Arrow, the sort by (entity, event time), the entity index,
    the numba kernel, and the frame handed back.
    """
    import pyarrow as pa

    from lakeloop.features.pit import asof_join

    query, features = pa.Table.from_pandas(q, preserve_index=False), pa.Table.from_pandas(feats, preserve_index=False)
    cols = asof_join(query, features, keys=["entity_id"], query_ts="event_timestamp", feature_ts="event_time",
                     columns=["event_time", *FEATURES], ttl_us=7 * DAY_US, known_time=False)
    out = q.copy()
    for name, arr in cols.items():
        out[name] = arr.to_pandas()
    return out


def pandas_join(q: pd.DataFrame, feats: pd.DataFrame) -> pd.DataFrame:
    """``pandas.merge_asof`` from the same input to the same output: both sorted by time, query order restored."""
    left = q.reset_index().sort_values("event_timestamp", kind="stable")
    right = feats.drop(columns=["_known_at"]).sort_values("event_time", kind="stable")
    out = pd.merge_asof(left, right, left_on="event_timestamp", right_on="event_time", by="entity_id",
                        tolerance=pd.Timedelta("7d"), direction="backward")
    return out.sort_values("index").drop(columns="index").reset_index(drop=True)


def compare_all(got: pd.DataFrame, want: pd.DataFrame) -> dict:
    """Every column, value by value (nulls equal nulls): which columns agree."""
    cols = list(want.columns)
    same = {}
    for c in cols:
        a, b = got[c], want[c]
        if pd.api.types.is_float_dtype(b):
            same[c] = bool(np.array_equal(a.to_numpy(float), b.to_numpy(float), equal_nan=True))
        else:
            same[c] = bool(a.reset_index(drop=True).equals(b.reset_index(drop=True)))
    return {"columns": len(cols), "identical": all(same.values()) and list(got.columns) == cols,
            "differing": [c for c, ok in same.items() if not ok]}


def bench_join(ll, args, rng) -> dict:
    """The point-in-time join on equal terms: same unsorted pandas input, same output, cold and warm apart."""
    feats = make_feature_rows(args.feature_rows, args.entities, rng, args.keys)
    q = make_entity_rows(args.entity_rows, args.entities, rng, args.keys)
    cold_ours, got = timed(lambda: lakeloop_join(q, feats))  # first call: numba kernel loaded or compiled
    cold_pd, want = timed(lambda: pandas_join(q, feats))
    check = compare_all(got, want)
    matched = round(float(got["f0"].notna().mean()), 3)
    del got, want
    warm_ours, _ = timed(lambda: lakeloop_join(q, feats), args.repeat)
    warm_pd, _ = timed(lambda: pandas_join(q, feats), args.repeat)
    out = {"entity_rows": args.entity_rows, "feature_rows": args.feature_rows, "entities": args.entities,
           "keys": args.keys, "features": N_FEATURES, "ttl": "7d", "repeat": args.repeat,
           "cold_s": {"lakeloop": round(cold_ours, 3), "pandas_merge_asof": round(cold_pd, 3)},
           "warm_s": {"lakeloop": round(warm_ours, 3), "pandas_merge_asof": round(warm_pd, 3)},
           "speedup_warm": round(warm_pd / warm_ours, 2), "speedup_cold": round(cold_pd / cold_ours, 2),
           "lakeloop_rows_per_s": round(args.entity_rows / warm_ours),
           "pandas_rows_per_s": round(args.entity_rows / warm_pd), **{f"compared_{k}": v for k, v in check.items()},
           "matched_share": matched}
    if ll is not None and args.sdk_join:
        out["training_frame_s"] = bench_training_frame(ll, feats, q, args)
    return out


def bench_training_frame(ll, feats: pd.DataFrame, q: pd.DataFrame, args) -> float:
    """The SDK path, for reference: ``training_frame`` reading the Delta feature table (warm kernel, best of)."""
    from lakeloop.features import Entity, Feature, FeatureView
    from lakeloop.features.materialize import feature_schema, to_feature_arrow
    from lakeloop.lake.schema import TableSchema

    kind = "int64" if args.keys == "int" else "string"
    view = FeatureView(name="bench_wide", entities=[Entity(name="entity", join_keys=["entity_id"])],
                       source="raw.bench_wide", timestamp_field="event_time",
                       features=[Feature(name=f) for f in FEATURES], ttl="7d")
    ll.lake.create("raw.bench_wide", {"entity_id": kind, "event_time": "timestamp",
                                      **{f: "float64" for f in FEATURES}})
    ll.features.apply([view])
    schema = TableSchema.build(feature_schema(view, ll.lake.table("raw.bench_wide").schema))
    ll.lake.create(view.table, schema)
    ll.lake.table(view.table).append(to_feature_arrow(view, feats, schema))
    run = lambda: ll.features.training_frame(q, ["bench_wide:*"], known_time=False, engine="local")  # noqa: E731
    run()
    return round(timed(run, args.repeat)[0], 3)


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


FEAST_SQLITE_NOTES = {"sdk_1_p50_ms": 0.53, "sdk_1_p99_ms": 0.20, "sdk_100_p99_ms": 5.8}  # STACK_NOTES, not this run


def bench_online(ll, args, rng) -> dict:
    """Lookup latency: the SDK (cold first call, then warm), the in-process reader, HTTP with keep-alive."""
    import http.client

    from lakeloop.features import Aggregation, Entity, Feature, FeatureView, online

    n_ent = args.online_entities
    t0 = pd.Timestamp.now(tz="UTC")
    src = pd.DataFrame({"customer_id": [f"c{i:06d}" for i in range(n_ent)], "amount": rng.gamma(2.0, 20.0, n_ent),
                        "event_time": t0 - pd.Timedelta(minutes=5)})
    view = FeatureView(name="bench_online", entities=[Entity(name="customer", join_keys=["customer_id"])],
                       source="raw.bench_online", timestamp_field="event_time",
                       features=[Feature(name="amount"), Aggregation(column="amount", function="sum", window="1d")])
    ll.lake.create("raw.bench_online", {"customer_id": "string", "amount": "float64", "event_time": "timestamp"})
    ll.lake.table("raw.bench_online").append(src)
    ll.features.apply([view])
    ll.features.materialize("bench_online", engine="local")
    keys = src["customer_id"].tolist()
    pick = lambda b: [keys[i] for i in rng.integers(0, n_ent, b)]  # noqa: E731
    out: dict = {"entities_loaded": n_ent, "lookups": args.lookups}
    t = time.perf_counter()
    first = ll.features.online_features("bench_online", pick(1))
    out["sdk_cold_first_call_ms"] = round((time.perf_counter() - t) * 1000, 3)  # loads the replica from Delta
    assert not first["_missing"].any()
    reader = online.reader(ll)
    for batch in (1, 100):
        sdk, inproc = [], []
        for _ in range(args.lookups):
            ks = pick(batch)
            t = time.perf_counter()
            ll.features.online_features("bench_online", ks)
            sdk.append(time.perf_counter() - t)
            ents = [{"customer_id": k} for k in ks]
            t = time.perf_counter()
            reader.lookup("bench_online", ents)
            inproc.append(time.perf_counter() - t)
        out[f"sdk_{batch}"] = percentiles(sdk)
        out[f"reader_{batch}"] = percentiles(inproc)
    online.start(ll)
    token = online.read_token(ll)
    conn = http.client.HTTPConnection(ll.config.online.host, ll.config.online.port, timeout=10)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    for batch in (1, 100):
        samples = []
        for i in range(args.lookups + 20):
            body = json.dumps({"customer_id": pick(batch)})
            t = time.perf_counter()
            conn.request("POST", "/v1/features/bench_online", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            samples.append(time.perf_counter() - t)
            assert resp.status == 200, data[:200]
        out[f"http_{batch}"] = percentiles(samples[20:])  # the first 20 warm the connection
    conn.close()
    online.stop(ll)
    out["feast_sqlite_in_process_from_notes"] = FEAST_SQLITE_NOTES
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="lakeloop feature store benchmark")
    p.add_argument("--entity-rows", type=int, default=1_000_000)
    p.add_argument("--feature-rows", type=int, default=10_000_000)
    p.add_argument("--entities", type=int, default=100_000)
    p.add_argument("--keys", choices=["int", "str"], default="int", help="entity key type, the same for both sides")
    p.add_argument("--sdk-join", action="store_true", help="also time training_frame reading the Delta table")
    p.add_argument("--source-rows", type=int, default=1_000_000)
    p.add_argument("--online-entities", type=int, default=100_000)
    p.add_argument("--lookups", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--parts", default="join,materialize,online")
    p.add_argument("--feast-python", help="a venv's python with Feast (bench/peers/README): adds Feast's join")
    p.add_argument("--json-out")
    args = p.parse_args(argv)

    import os

    import lakeloop

    rng = np.random.default_rng(0)
    load = os.getloadavg()
    results: dict = {"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "load_avg_1_5_15": [round(x, 2) for x in load]}
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-") as tmp:
        ll = lakeloop.connect(lake_root=f"{tmp}/lake", online_port=free_port())
        if "materialize" in parts or "online" in parts:
            ll.ensure_ray()
        if "join" in parts:
            results["join"] = bench_join(ll, args, rng)
            if args.feast_python:
                results["join"]["feast_duckdb"] = bench_feast(args, tmp)
        if "materialize" in parts:
            results["materialize"] = bench_materialize(ll, args, rng)
        if "online" in parts:
            results["online"] = bench_online(ll, args, rng)
        import ray

        if ray.is_initialized():
            ray.shutdown()
    results["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    report(results)
    print(json.dumps(results, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


def bench_feast(args, tmp: str) -> dict:
    """Feast (duckdb offline store) on the same generated rows, in its own venv (bench/peers/feast_join.py)."""
    import subprocess

    rng = np.random.default_rng(0)  # the same draws as bench_join's
    folder = Path(tmp) / "feast"
    folder.mkdir()
    make_feature_rows(args.feature_rows, args.entities, rng, args.keys).to_parquet(folder / "features.parquet")
    make_entity_rows(args.entity_rows, args.entities, rng, args.keys).to_parquet(folder / "entities.parquet")
    script = Path(__file__).resolve().parent / "peers" / "feast_join.py"
    proc = subprocess.run([args.feast_python, str(script), str(folder), "--repeat", str(args.repeat)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-800:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"lakeloop feature store vs baselines (same run, {r['date']}, load {r['load_avg_1_5_15']})")
    for c in ("measure", "lakeloop", "baseline", "ratio"):
        t.add_column(c)
    if "join" in r:
        j = r["join"]
        what = f"PIT join {j['entity_rows']:,} x {j['feature_rows']:,}, {j['keys']} keys"
        t.add_row(f"{what}, warm s (best of {j['repeat']})", f"{j['warm_s']['lakeloop']}",
                  f"{j['warm_s']['pandas_merge_asof']} (merge_asof)", f"{j['speedup_warm']}x")
        t.add_row(f"{what}, cold s (first call)", f"{j['cold_s']['lakeloop']}",
                  f"{j['cold_s']['pandas_merge_asof']} (merge_asof)", f"{j['speedup_cold']}x")
        t.add_row("  every column identical to merge_asof", f"{j['compared_identical']}",
                  f"{j['compared_columns']} columns", ", ".join(j["compared_differing"]))
        if "training_frame_s" in j:
            t.add_row("  training_frame (reads Delta), warm s", f"{j['training_frame_s']}", "", "")
        if "feast_duckdb" in j:
            f = j["feast_duckdb"]
            t.add_row("  Feast, duckdb offline store, warm s", "", f"{f.get('warm_s', f.get('error'))}",
                      f"{round(f['warm_s'] / j['warm_s']['lakeloop'], 2)}x" if "warm_s" in f else "")
    if "materialize" in r:
        m = r["materialize"]
        t.add_row(f"materialize {m['source_rows']:,} rows, rows/s", f"{m['lakeloop_rows_per_s']:,}",
                  f"{m['pandas_rows_per_s']:,} (pandas in-process)", f"{m['ratio_to_pandas']}x")
        t.add_row(f"incremental, {m['incremental_new_rows']:,} new rows", f"{m['incremental_s']} s", "", m["incremental_mode"])
    if "online" in r:
        o = r["online"]
        feast = o["feast_sqlite_in_process_from_notes"]
        t.add_row("online SDK first call (loads the replica) ms", f"{o['sdk_cold_first_call_ms']}", "", "")
        for b in (1, 100):
            n = f"{b} entit{'y' if b == 1 else 'ies'}"
            base = (f"{feast['sdk_1_p50_ms']}/{feast['sdk_1_p99_ms']}" if b == 1 else f"-/{feast['sdk_100_p99_ms']}")
            t.add_row(f"online {n}, SDK (DataFrame) p50/p99 ms", f"{o[f'sdk_{b}']['p50_ms']}/{o[f'sdk_{b}']['p99_ms']}",
                      f"{base} (Feast SQLite SDK, notes)", "")
            t.add_row(f"online {n}, in-process reader p50/p99 ms",
                      f"{o[f'reader_{b}']['p50_ms']}/{o[f'reader_{b}']['p99_ms']}", "", "")
            t.add_row(f"online {n}, HTTP keep-alive p50/p99 ms",
                      f"{o[f'http_{b}']['p50_ms']}/{o[f'http_{b}']['p99_ms']}", "", "")
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
