"""The point-in-time join against a plain pandas reference, on random data (hypothesis)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakeloop.features.pit import KNOWN_AT, asof_join, sort_features

BASE = pd.Timestamp("2026-01-01", tz="UTC")


def reference(query: pd.DataFrame, feats: pd.DataFrame, keys, ttl, known_time) -> pd.Series:
    """Brute force: the newest qualifying row per query (ties: newest known, then largest value)."""
    out = []
    ordered = feats.sort_values(keys + ["ts", KNOWN_AT, "value"], kind="stable", na_position="last")
    for _, q in query.iterrows():
        if any(pd.isna(q[k]) for k in keys) or pd.isna(q["t"]):
            out.append(np.nan)
            continue
        m = ordered
        for k in keys:
            m = m[m[k] == q[k]]
        m = m[m["ts"] <= q["t"]]
        if known_time:
            m = m[m[KNOWN_AT] <= q["t"]]
        if len(m) == 0:
            out.append(np.nan)
            continue
        last = m.iloc[-1]
        if ttl is not None and q["t"] - last["ts"] > ttl:
            out.append(np.nan)
        else:
            out.append(last["value"])
    return pd.Series(out, dtype="float64")


@st.composite
def scenario(draw):
    n_keys = draw(st.sampled_from([1, 2]))
    int_keys = draw(st.booleans())  # integer ids take the no-hash path (codes = id - min)
    name = (lambda e: 100 + e) if int_keys else (lambda e: f"e{e}")
    n_entities = draw(st.integers(1, 5))
    n_feat = draw(st.integers(0, 40))
    n_query = draw(st.integers(1, 30))
    minutes = st.integers(0, 60)  # a small range makes ties likely
    ent = st.integers(0, n_entities - 1)
    keys = ["k1", "k2"][:n_keys]
    frows = []
    for _ in range(n_feat):
        row = {k: name(draw(ent)) for k in keys}
        t = draw(minutes)
        late = draw(st.sampled_from([0, 0, 0, 5, 30]))  # backfilled: known later than its event
        row.update(ts=BASE + pd.Timedelta(minutes=t), known=BASE + pd.Timedelta(minutes=t + late),
                   value=draw(st.one_of(st.none(), st.integers(0, 5).map(float))))
        frows.append(row)
    qrows = []
    for _ in range(n_query):
        row = {k: draw(st.one_of(st.just(None), ent.map(name), st.just(7 if int_keys else "unknown")))
               if draw(st.booleans()) and k == keys[0] else name(draw(ent)) for k in keys}
        row["t"] = BASE + pd.Timedelta(minutes=draw(st.integers(-5, 100)))
        qrows.append(row)
    ttl = draw(st.sampled_from([None, pd.Timedelta(minutes=10), pd.Timedelta(minutes=0)]))
    known_time = draw(st.booleans())
    feats = pd.DataFrame(frows, columns=keys + ["ts", "known", "value"]).rename(columns={"known": KNOWN_AT})
    feats["ts"] = pd.to_datetime(feats["ts"], utc=True)
    feats[KNOWN_AT] = pd.to_datetime(feats[KNOWN_AT], utc=True)
    feats["value"] = feats["value"].astype("float64")
    query = pd.DataFrame(qrows, columns=keys + ["t"])
    if int_keys:
        for k in keys:
            query[k] = pd.array(query[k].tolist(), dtype="Int64")
            feats[k] = feats[k].astype("int64")
    query["t"] = pd.to_datetime(query["t"], utc=True)
    return keys, feats, query, ttl, known_time


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), st.booleans())
def test_asof_join_matches_pandas_reference(case, presort):
    keys, feats, query, ttl, known_time = case
    f_arrow = pa.Table.from_pandas(feats, preserve_index=False)
    if presort:
        f_arrow = sort_features(f_arrow, keys, "ts")
    got = asof_join(pa.Table.from_pandas(query, preserve_index=False), f_arrow, keys=keys, query_ts="t",
                    feature_ts="ts", columns=["value"], ttl_us=None if ttl is None else int(ttl.value // 1000),
                    known_time=known_time, presorted=presort)["value"].to_pandas()
    want = reference(query, feats, keys, ttl, known_time)
    pd.testing.assert_series_equal(got.astype("float64").reset_index(drop=True), want, check_names=False)


def test_never_a_value_from_the_future():
    feats = pd.DataFrame({"k": ["a", "a"], "ts": pd.to_datetime(["2026-01-01", "2026-01-03"], utc=True),
                          KNOWN_AT: pd.to_datetime(["2026-01-01", "2026-01-03"], utc=True), "value": [1.0, 3.0]})
    query = pd.DataFrame({"k": ["a", "a", "a"], "t": pd.to_datetime(["2025-12-31", "2026-01-02", "2026-01-03"], utc=True)})
    got = asof_join(pa.Table.from_pandas(query), pa.Table.from_pandas(feats), keys=["k"], query_ts="t",
                    feature_ts="ts", columns=["value"])["value"].to_pylist()
    assert got == [None, 1.0, 3.0]
