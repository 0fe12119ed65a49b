"""Feast's point-in-time join (duckdb offline store) on bench/features.py's rows, run in Feast's own venv.

    <feast-venv>/bin/python bench/peers/feast_join.py DIR [--repeat 3]

DIR holds ``features.parquet`` (entity_id, event_time, _known_at, f0..f9, arrival order) and
``entities.parquet`` (entity_id, event_timestamp), written by ``bench/features.py --feast-python``.
Builds a throwaway Feast repo in DIR/feast_repo (one entity, one view, ttl 7 d, SQLite online store
unused), times ``get_historical_features(...).to_df()`` (first call and warm best of ``--repeat``),
checks its answer against ``pandas.merge_asof`` on every feature column, and prints one JSON line.
Needs only feast[duckdb] (it brings pandas and pyarrow); it imports nothing from lakeloop.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = [f"f{j}" for j in range(10)]


def store_for(folder: Path, key_is_int: bool):
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    repo = folder / "feast_repo"
    repo.mkdir(exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: lakeloop_bench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "offline_store:\n  type: duckdb\n"
        f"online_store:\n  type: sqlite\n  path: {repo / 'online.db'}\n"
        "entity_key_serialization_version: 2\n")
    entity = Entity(name="entity", join_keys=["entity_id"],
                    value_type=ValueType.INT64 if key_is_int else ValueType.STRING)
    source = FileSource(path=str(folder / "features.parquet"), timestamp_field="event_time")
    view = FeatureView(name="bench_wide", entities=[entity], ttl=timedelta(days=7),
                       schema=[Field(name=f, dtype=Float64) for f in FEATURES], source=source)
    store = FeatureStore(repo_path=str(repo))
    store.apply([entity, view])
    return store


def merge_asof(q: pd.DataFrame, feats: pd.DataFrame) -> pd.DataFrame:
    left = q.reset_index().sort_values("event_timestamp", kind="stable")
    right = feats.drop(columns=["_known_at"]).sort_values("event_time", kind="stable")
    out = pd.merge_asof(left, right, left_on="event_timestamp", right_on="event_time", by="entity_id",
                        tolerance=pd.Timedelta("7d"), direction="backward")
    return out.sort_values("index").drop(columns="index").reset_index(drop=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    folder = Path(args.folder)
    q = pd.read_parquet(folder / "entities.parquet")
    feats = pd.read_parquet(folder / "features.parquet")
    store = store_for(folder, pd.api.types.is_integer_dtype(q["entity_id"]))
    refs = [f"bench_wide:{f}" for f in FEATURES]

    def run() -> pd.DataFrame:
        return store.get_historical_features(entity_df=q, features=refs).to_df()

    t = time.perf_counter()
    got = run()
    cold = time.perf_counter() - t
    warm = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        run()
        warm = min(warm, time.perf_counter() - t)
    want = merge_asof(q, feats)
    order = ["entity_id", "event_timestamp"]
    got = got.sort_values(order, kind="stable").reset_index(drop=True)
    want = want.sort_values(order, kind="stable").reset_index(drop=True)
    differing = [f for f in FEATURES if len(got) != len(want)
                 or not np.array_equal(got[f].to_numpy(float), want[f].to_numpy(float), equal_nan=True)]
    import feast

    print(json.dumps({"feast": feast.__version__, "offline_store": "duckdb", "rows_in": len(q), "rows_out": len(got),
                      "cold_s": round(cold, 3), "warm_s": round(warm, 3), "repeat": args.repeat,
                      "identical_to_merge_asof": not differing, "columns_differing": differing}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
