"""The bitemporal point-in-time join's cost beside the plain join, on the same generated data, in one run.

    .venv/bin/python bench/pit.py                        # 1M entity rows x 1M feature rows, 10 features
    .venv/bin/python bench/pit.py --feature-rows 10000000  # the 1M x 10M target
    .venv/bin/python bench/pit.py --rows 200000          # smaller, for a busy machine

Equal terms: the same feature rows and the same entity rows, in memory (no lake), in
arrival order (unsorted: each side sorts as it needs, inside its timing), the same key
type on both sides (int64, or ``--keys str``); the first call (lakeloop: numba kernels
loaded from their disk cache, or compiled) reported apart from the warm best of
``--repeat``:

  * ``plain``: ``FeatureIndex(known_time=False)`` build + lookup (event time only);
  * ``bitemporal``: ``FeatureIndex(known_time=True)`` build + lookup on the same rows
    (every version current: what the known-time filter costs by itself);
  * ``bitemporal + versions``: the same rows plus superseded versions (``--superseded``
    share of rows changed once by a later commit: deletes, upserts, backfills);
  * ``pandas merge_asof``: the plain join's answer from ``pandas.merge_asof`` on the
    same frames (its sort by time included, query order restored), checked equal to
    ``plain`` on every feature column.

Also measures what versions cost to store: a source with ``--superseded`` of its
rows deleted or backfilled, materialized (windowed aggregates) into bitemporal rows,
feature rows per current row. Prints a table, the ratios and JSON
(``--json-out FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from lakeloop.features import materialize as mat  # noqa: E402
from lakeloop.features.definitions import Aggregation, Entity, FeatureView  # noqa: E402
from lakeloop.features.pit import KNOWN_AT, KNOWN_UNTIL, FeatureIndex  # noqa: E402

from features import timed  # noqa: E402  (bench/features.py: best of `repeat` runs)

N_FEATURES = 10
DAY_US = 86400 * 1_000_000
START_US = pd.Timestamp("2026-01-01", tz="UTC").value // 1000


def keys_of(ids: np.ndarray, kind: str) -> np.ndarray:
    return ids.astype(np.int64) if kind == "int" else np.array([f"e{i:07d}" for i in ids], dtype=object)


def feature_rows(n: int, n_entities: int, rng, kind: str = "int") -> pd.DataFrame:
    ts = START_US + rng.integers(0, 90 * DAY_US, n)
    df = pd.DataFrame({"entity_id": keys_of(rng.integers(0, n_entities, n), kind),
                       "ts": pd.to_datetime(ts, unit="us", utc=True)})
    df[KNOWN_AT] = df["ts"] + pd.to_timedelta(rng.integers(0, 3600 * 1_000_000, n), unit="us")
    for i in range(N_FEATURES):
        df[f"f{i}"] = rng.normal(size=n)
    df[KNOWN_UNTIL] = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns, UTC]")
    return df


def with_versions(current: pd.DataFrame, share: float, rng) -> pd.DataFrame:
    """``share`` of the rows also get an older version that a later commit superseded."""
    picked = current.sample(frac=share, random_state=int(rng.integers(1 << 31)))
    old = picked.copy()
    changed_at = picked[KNOWN_AT] + pd.to_timedelta(rng.integers(1, 48 * 3600 * 1_000_000, len(picked)), unit="us")
    old[KNOWN_UNTIL] = changed_at.to_numpy()
    for i in range(N_FEATURES):
        old[f"f{i}"] = rng.normal(size=len(old))
    new = current.copy()
    new.loc[picked.index, KNOWN_AT] = changed_at.to_numpy()
    return pd.concat([new, old], ignore_index=True)


def entity_rows(n: int, n_entities: int, rng, kind: str = "int") -> pd.DataFrame:
    return pd.DataFrame({"entity_id": keys_of(rng.integers(0, n_entities, n), kind),
                         "t": pd.to_datetime(START_US + rng.integers(0, 95 * DAY_US, n), unit="us", utc=True)})


def join(features: pa.Table, query: pa.Table, known_time: bool, ttl_us: int):
    cols = [f"f{i}" for i in range(N_FEATURES)]
    index = FeatureIndex(features, keys=["entity_id"], ts="ts", columns=cols, known_time=known_time)
    return index.lookup(query, query_ts="t", ttl_us=ttl_us, known_time=known_time)


def pandas_asof(features: pd.DataFrame, query: pd.DataFrame, ttl: pd.Timedelta) -> pd.DataFrame:
    f = features.sort_values("ts", kind="stable")  # merge_asof needs both sides sorted by time, nothing more
    q = query.reset_index().sort_values("t", kind="stable")
    out = pd.merge_asof(q, f.drop(columns=[KNOWN_AT, KNOWN_UNTIL]), left_on="t", right_on="ts", by="entity_id",
                        tolerance=ttl, direction="backward", allow_exact_matches=True)
    return out.sort_values("index").reset_index(drop=True)


def storage_cost(n: int, share: float, rng) -> dict:
    """Materialize windowed aggregates from a source whose rows partly got deleted or backfilled later."""
    user = Entity(name="customer", join_keys=["customer_id"])
    view = FeatureView(name="spend", entities=[user], source="raw.tx", timestamp_field="event_time",
                       features=[Aggregation(column="amount", function=f, window=w)
                                 for f, w in [("count", "1h"), ("sum", "1d"), ("mean", "7d")]])
    t = START_US + np.sort(rng.integers(0, 30 * DAY_US, n))
    src = pd.DataFrame({"customer_id": np.array([f"c{i:05d}" for i in rng.integers(0, max(1, n // 100), n)],
                                                dtype=object),
                        "amount": rng.gamma(2.0, 20.0, n), "event_time": pd.to_datetime(t, unit="us", utc=True)})
    src[KNOWN_AT] = src["event_time"] + pd.Timedelta(minutes=5)  # landed in order, a few minutes late
    src[KNOWN_UNTIL] = pd.Series(pd.NaT, index=src.index, dtype="datetime64[ns, UTC]")
    k = int(n * share / 2)
    idx = rng.choice(n, 2 * k, replace=False)
    deleted, backfilled = idx[:k], idx[k:]
    src.loc[deleted, KNOWN_UNTIL] = (src.loc[deleted, KNOWN_AT] + pd.Timedelta(days=3)).to_numpy()
    src.loc[backfilled, KNOWN_AT] = (src.loc[backfilled, "event_time"] + pd.Timedelta(days=2)).to_numpy()
    plain_src = src.drop(index=deleted).assign(**{KNOWN_AT: src.drop(index=deleted)["event_time"]})
    mat.compute(view, src.head(200))  # compile the kernel once
    plain_s, plain = timed(lambda: mat.compute(view, plain_src), 1)
    bt_s, bt = timed(lambda: mat.compute(view, src), 1)
    current = int(bt[KNOWN_UNTIL].isna().sum())
    return {"source_rows": n, "changed_share": share, "feature_rows_plain": len(plain),
            "feature_rows_bitemporal": len(bt), "current_rows": current,
            "extra_rows_per_current_row": round((len(bt) - current) / max(current, 1), 4),
            "compute_s_plain": round(plain_s, 3), "compute_s_bitemporal": round(bt_s, 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="entity rows (and feature rows unless given)")
    p.add_argument("--feature-rows", type=int, help="feature rows (default: --rows)")
    p.add_argument("--keys", choices=["int", "str"], default="int", help="entity key type, the same on both sides")
    p.add_argument("--entities", type=int, default=100_000)
    p.add_argument("--superseded", type=float, default=0.10, help="share of rows with a superseded version")
    p.add_argument("--source-rows", type=int, default=200_000, help="rows of the storage-cost source")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    ttl = pd.Timedelta(days=7)
    ttl_us = int(ttl.total_seconds() * 1_000_000)

    n_feats = args.feature_rows or args.rows
    feats = feature_rows(n_feats, args.entities, rng, args.keys)
    versions = with_versions(feats, args.superseded, rng)
    query_df = entity_rows(args.rows, args.entities, rng, args.keys)
    f_plain = pa.Table.from_pandas(feats, preserve_index=False)  # arrival order: the join sorts
    f_versions = pa.Table.from_pandas(versions, preserve_index=False)
    query = pa.Table.from_pandas(query_df, preserve_index=False)

    rows = []
    cold_s, _ = timed(lambda: join(f_plain, query, False, ttl_us), 1)  # first call: kernels loaded or compiled
    cold_pd_s, _ = timed(lambda: pandas_asof(feats, query_df, ttl), 1)
    plain_s, plain = timed(lambda: join(f_plain, query, False, ttl_us), args.repeat)
    rows.append(("plain (event time)", plain_s, f_plain.num_rows))
    join(f_plain, query.slice(0, 1000), True, ttl_us)  # the bitemporal kernel's first call
    bt_s, bt = timed(lambda: join(f_plain, query, True, ttl_us), args.repeat)
    rows.append(("bitemporal, same rows", bt_s, f_plain.num_rows))
    btv_s, btv = timed(lambda: join(f_versions, query, True, ttl_us), args.repeat)
    rows.append((f"bitemporal + {args.superseded:.0%} versions", btv_s, f_versions.num_rows))
    pd_s, pd_out = timed(lambda: pandas_asof(feats, query_df, ttl), args.repeat)
    rows.append(("pandas merge_asof (plain)", pd_s, len(feats)))

    # the same answers: plain == merge_asof; the bitemporal join never returns a row not yet known
    differing = [f"f{i}" for i in range(N_FEATURES)
                 if not np.array_equal(plain[f"f{i}"].to_numpy(zero_copy_only=False).astype(float),
                                       pd_out[f"f{i}"].to_numpy(float), equal_nan=True)]
    same_as_pandas = not differing
    known_hits = int(np.asarray(bt["f0"].is_valid()).sum())
    plain_hits = int(np.asarray(plain["f0"].is_valid()).sum())
    storage = storage_cost(args.source_rows, args.superseded, rng)

    load = [round(x, 2) for x in os.getloadavg()]
    print(f"point-in-time join, {query.num_rows:,} entity rows x {n_feats:,} feature rows, {args.entities:,} "
          f"entities ({args.keys} keys), {N_FEATURES} features, ttl 7d, warm: best of {args.repeat}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load {load}")
    print(f"first call (cold): lakeloop {cold_s:.3f} s, pandas merge_asof {cold_pd_s:.3f} s "
          f"({cold_pd_s / cold_s:.2f}x)")
    print(f"{'join':34s} {'feature rows':>13s} {'seconds':>9s} {'rows/s':>12s} {'vs plain':>9s}")
    for name, s, n in rows:
        print(f"{name:34s} {n:>13,} {s:>9.3f} {query.num_rows / s:>12,.0f} {s / plain_s:>8.2f}x")
    print(f"warm: pandas merge_asof / lakeloop plain = {pd_s / plain_s:.2f}x")
    print(f"plain join answer equals pandas merge_asof on all {N_FEATURES} feature columns: {same_as_pandas}"
          f"{'' if same_as_pandas else ' (differ: ' + ', '.join(differing) + ')'}; rows filled: plain {plain_hits:,}, "
          f"bitemporal {known_hits:,} (a row counts only once known)")
    print(f"storage: {storage['source_rows']:,} source rows, {storage['changed_share']:.0%} deleted or backfilled "
          f"later -> {storage['feature_rows_bitemporal']:,} bitemporal feature rows for {storage['current_rows']:,} "
          f"current ({storage['extra_rows_per_current_row']:.3f} extra per current row); compute "
          f"{storage['compute_s_bitemporal']:.2f} s vs {storage['compute_s_plain']:.2f} s for the snapshot alone")
    result = {
        "rows": query.num_rows, "feature_rows": n_feats, "keys": args.keys, "load_avg": load,
        "cold_seconds": {"plain": round(cold_s, 4), "pandas_merge_asof": round(cold_pd_s, 4)},
        "entities": args.entities, "features": N_FEATURES, "repeat": args.repeat,
        "seconds": {"plain": round(plain_s, 4), "bitemporal": round(bt_s, 4), "bitemporal_versions": round(btv_s, 4),
                    "pandas_merge_asof": round(pd_s, 4)},
        "ratio_bitemporal_vs_plain": round(bt_s / plain_s, 3),
        "ratio_bitemporal_versions_vs_plain": round(btv_s / plain_s, 3),
        "ratio_pandas_vs_plain": round(pd_s / plain_s, 3),
        "same_answer_as_pandas": same_as_pandas, "columns_compared": N_FEATURES, "columns_differing": differing, "rows_filled": {"plain": plain_hits, "bitemporal": known_hits},
        "storage": storage,
    }
    print(f"ratio bitemporal / plain: {result['ratio_bitemporal_vs_plain']:.2f}x (same rows), "
          f"{result['ratio_bitemporal_versions_vs_plain']:.2f}x (with versions)")
    print(json.dumps(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
