"""Feature store: definitions, catalog, Ray Data materialization, point-in-time training frames."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import pytest

import fs_defs
import lakeloop
from lakeloop.errors import DefinitionError, FeatureViewNotFoundError, NotMaterializedError
from lakeloop.features import Aggregation, Entity, Feature, FeatureView, load_definitions
from lakeloop.features.pit import KNOWN_AT

DEFS = "fs_defs:definitions"
EVENTS = {"user_id": "string", "shop": "string", "amount": "float64", "event_time": "timestamp"}


def events_frame(n, *, seed, start, span_h=6, users=5):
    rng = np.random.default_rng(seed)
    times = start + pd.to_timedelta(np.sort(rng.integers(0, span_h * 3600, n)), unit="s")
    return pd.DataFrame({"user_id": [f"u{i}" for i in rng.integers(0, users, n)],
                         "shop": rng.choice(["s1", "s2"], n),
                         "amount": np.round(rng.gamma(2.0, 10.0, n), 2),
                         "event_time": times})


@pytest.fixture
def store(ll, ray_session):
    ll.lake.create("raw.events", EVENTS)
    ll.features.apply(DEFS)
    return ll.features


def test_definitions_are_keyword_only_immutable_and_validated():
    with pytest.raises(TypeError):
        Entity("user", ["user_id"])  # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        fs_defs.user.name = "x"
    assert "user_rows" in repr(fs_defs.user_rows) and "raw.events" in repr(fs_defs.user_rows)
    assert fs_defs.user_windows.feature_names[0] == "amount_count_1h"
    with pytest.raises(DefinitionError, match="window"):
        Aggregation(column="amount", function="sum", window="soon")
    with pytest.raises(DefinitionError, match="must start with a letter"):
        Entity(name="user\n", join_keys=["user_id"])  # a trailing newline would pass `^...$` with match
    with pytest.raises(DefinitionError, match="median"):
        Aggregation(column="amount", function="median", window="1h")
    with pytest.raises(DefinitionError, match="more than once"):
        FeatureView(name="v", entities=[fs_defs.user], source="raw.x", timestamp_field="t",
                    features=[Feature(name="a"), Feature(name="a")])
    assert fs_defs.user_rows.definition_hash == load_definitions(DEFS)[2].definition_hash
    changed = dataclasses.replace(fs_defs.user_rows, ttl="2d")
    assert changed.definition_hash != fs_defs.user_rows.definition_hash
    described = dataclasses.replace(fs_defs.user_rows, description="other words")
    assert described.definition_hash == fs_defs.user_rows.definition_hash


def test_definitions_load_only_by_module_attr():
    assert len(load_definitions(DEFS)) == 5
    for ref, msg in [("fs_defs", "module:attr"), ("no_such_module:x", "cannot import"),
                     ("fs_defs:nope", "no attribute"), ("fs_defs:double_amount", "expected Entity")]:
        with pytest.raises(DefinitionError, match=msg):
            load_definitions(ref)


def test_apply_plan_versions_and_describe(ll):
    fs = ll.features
    assert {p["view"]: p["action"] for p in fs.plan(DEFS)} == dict.fromkeys(
        ["user_rows", "user_windows", "pair_windows"], "create")
    fs.apply(DEFS)
    assert {p["action"] for p in fs.plan(DEFS)} == {"unchanged"}
    changed = dataclasses.replace(fs_defs.user_rows, ttl="2d")
    plan = fs.plan([changed])
    assert plan[0]["action"] == "new_version" and plan[0]["changes"] == ["ttl"] and plan[0]["to_version"] == 2
    fs.apply([changed])
    assert fs.describe("user_rows")["version"] == 2
    assert fs.catalog.version("user_rows", 1)["definition_hash"] == fs_defs.user_rows.definition_hash
    fs.apply([dataclasses.replace(changed, owner="someone else")])
    info = fs.describe("user_rows")
    assert info["version"] == 2 and info["owner"] == "someone else" and info["versions"] == [1, 2]
    assert info["source"] == "raw.events" and info["ttl"] == "2d" and info["last_run"] is None
    assert [v["name"] for v in fs.list()] == ["pair_windows", "user_rows", "user_windows"]
    with pytest.raises(FeatureViewNotFoundError):
        fs.describe("nope")
    # another process (a fresh store) loads every version from the catalog, the latest by default
    fresh = lakeloop.connect(lake_root=ll.lake.root).features
    assert fresh.view("user_rows").ttl == "2d" and fresh.view("user_rows").owner == "someone else"
    assert fresh.view("user_rows", 1).definition_hash == fs_defs.user_rows.definition_hash


def test_materialize_full_noop_then_incremental_equals_full(store, ll):
    events = ll.lake.table("raw.events")
    start = pd.Timestamp("2026-03-01", tz="UTC")
    events.append(events_frame(300, seed=1, start=start))
    views = ["user_rows", "user_windows", "pair_windows"]
    first = {v: store.materialize(v) for v in views}
    assert all(r.mode == "full" and r.rows_written > 0 for r in first.values())
    assert store.materialize("user_windows").mode == "noop"

    events.append(events_frame(40, seed=2, start=start + pd.Timedelta(hours=6)))  # new, later rows
    events.append(events_frame(15, seed=3, start=start + pd.Timedelta(hours=2), span_h=1))  # late rows
    for v in views:
        r = store.materialize(v)
        assert r.mode == "incremental" and r.previous_source_version == 1 and r.source_version == 3
    inc = {v: ll.lake.table(f"features.{v}").to_pandas() for v in views}
    for v in views:
        assert store.materialize(v, full=True).mode == "full"
        full = ll.lake.table(f"features.{v}").to_pandas()
        cols = list(full.columns)
        pd.testing.assert_frame_equal(inc[v].sort_values(cols).reset_index(drop=True),
                                      full.sort_values(cols).reset_index(drop=True))
    assert store.describe("user_windows")["last_materialized_source_version"] == 3


def test_incremental_handles_updates_and_deletes_like_full(store, ll):
    events = ll.lake.create("raw.keyed", {**EVENTS, "id": "string"}, primary_key="id")
    view = dataclasses.replace(fs_defs.user_windows, name="keyed_windows", source="raw.keyed")
    store.apply([view])
    df = events_frame(120, seed=5, start=pd.Timestamp("2026-03-01", tz="UTC"))
    df["id"] = [f"r{i}" for i in range(len(df))]
    events.append(df)
    store.materialize("keyed_windows")
    events.upsert(df.iloc[:10].assign(amount=999.0))
    events.delete("id = 'r50' OR id = 'r51'")
    assert store.materialize("keyed_windows").mode == "incremental"
    inc = ll.lake.table("features.keyed_windows").to_pandas()
    store.materialize("keyed_windows", full=True)
    full = ll.lake.table("features.keyed_windows").to_pandas()
    cols = list(full.columns)
    pd.testing.assert_frame_equal(inc.sort_values(cols).reset_index(drop=True),
                                  full.sort_values(cols).reset_index(drop=True))
    assert (full["amount_max_2h"] == 999.0).any()


def test_window_aggregates_are_per_entity_over_the_trailing_window(store, ll):
    t0 = pd.Timestamp("2026-03-01T10:00:00", tz="UTC")
    ll.lake.table("raw.events").append(pd.DataFrame({
        "user_id": ["a", "a", "a", "b", "a"], "shop": "s1", "amount": [1.0, 2.0, 4.0, 100.0, 8.0],
        "event_time": [t0, t0 + pd.Timedelta(minutes=30), t0 + pd.Timedelta(minutes=30),
                       t0 + pd.Timedelta(minutes=40), t0 + pd.Timedelta(minutes=90)]}))
    store.materialize("user_windows")
    f = ll.lake.table("features.user_windows").to_pandas().sort_values(["user_id", "event_time"])
    committed = ll.lake.table("raw.events").history(limit=1)[0]["timestamp"]
    assert (f[KNOWN_AT] == pd.Timestamp(committed)).all(), "known when the source rows were committed"
    a = f[f["user_id"] == "a"]
    # windows are (t - w, t]: both rows at 10:30 see each other; at 11:30 the 1h window starts after 10:30
    assert a["amount_count_1h"].tolist() == [1, 3, 3, 1]
    assert a["amount_sum_1h"].tolist() == [1.0, 7.0, 7.0, 8.0]
    assert a["amount_max_2h"].tolist() == [1.0, 4.0, 4.0, 8.0]
    assert a["amount_mean_1d"].tolist() == [1.0, 7 / 3, 7 / 3, 15 / 4]
    assert f[f["user_id"] == "b"]["amount_sum_1h"].tolist() == [100.0]


def test_training_frame_is_point_in_time_and_respects_ttl(store, ll):
    t0 = pd.Timestamp("2026-03-01T10:00:00", tz="UTC")
    ll.lake.table("raw.events").append(pd.DataFrame({
        "user_id": ["a", "a", "b"], "shop": "s1", "amount": [1.0, 5.0, 7.0],
        "event_time": [t0, t0 + pd.Timedelta(hours=2), t0 - pd.Timedelta(days=3)]}))
    store.materialize("user_rows")
    store.materialize("user_windows")
    entities = pd.DataFrame({"user_id": ["a", "a", "a", "b", "zz"],
                             "event_timestamp": [t0 - pd.Timedelta(minutes=1), t0 + pd.Timedelta(hours=1),
                                                 t0 + pd.Timedelta(hours=3), t0, t0],
                             "label": [0, 1, 0, 1, 0]})
    frame = store.training_frame(entities, ["user_rows:amount", "user_windows:amount_count_1h"],
                                 known_time=False)
    df = frame.data
    assert df["amount"].tolist()[:3] == [None, 1.0, 5.0] or np.isnan(df["amount"].iloc[0])
    assert df["amount"].iloc[1] == 1.0 and df["amount"].iloc[2] == 5.0
    assert np.isnan(df["amount"].iloc[3]), "b's only value is 3 days old: past the 1d ttl"
    assert np.isnan(df["amount"].iloc[4]), "unknown entity: null"
    assert df["label"].tolist() == [0, 1, 0, 1, 0] and frame.features == ["amount", "amount_count_1h"]
    assert frame.lineage["views"]["user_rows"]["table_version"] == 1
    assert frame.lineage["views"]["user_rows"]["source_version"] == 1


def test_known_time_keeps_backfills_out_of_the_past(store, ll):
    events = ll.lake.table("raw.events")
    now = pd.Timestamp.now(tz="UTC")
    events.append(pd.DataFrame({"user_id": ["a"], "shop": "s1", "amount": [1.0],
                                "event_time": [now - pd.Timedelta(hours=2)]}))
    time.sleep(0.05)
    cut = pd.Timestamp.now(tz="UTC")
    time.sleep(0.05)
    # a backfill: an event from an hour ago, committed only now
    events.append(pd.DataFrame({"user_id": ["a"], "shop": "s1", "amount": [50.0],
                                "event_time": [now - pd.Timedelta(hours=1)]}))
    store.materialize("user_rows")
    entities = pd.DataFrame({"user_id": ["a", "a"], "event_timestamp": [cut, pd.Timestamp.now(tz="UTC")]})
    known = store.training_frame(entities, ["user_rows:amount"]).data["amount"].tolist()
    naive = store.training_frame(entities, ["user_rows:amount"], known_time=False).data["amount"].tolist()
    assert known == [1.0, 50.0], "at the cut the backfilled value was not yet in the lake"
    assert naive == [50.0, 50.0]
    feats = ll.lake.table("features.user_rows").to_pandas()
    assert (feats[KNOWN_AT] > feats["event_time"]).all()


def test_lineage_rebuilds_the_same_frame_and_names_missing_pieces(store, ll):
    t0 = pd.Timestamp("2026-03-01", tz="UTC")
    ll.lake.table("raw.events").append(events_frame(100, seed=9, start=t0))
    store.materialize("user_windows")
    labels = ll.lake.create("raw.labels", {"user_id": "string", "event_timestamp": "timestamp", "y": "int64"})
    labels.append(pd.DataFrame({"user_id": ["u1", "u2", "u3"], "y": [1, 0, 1],
                                "event_timestamp": [t0 + pd.Timedelta(hours=h) for h in (1, 3, 5)]}))
    frame = store.training_frame("raw.labels", ["user_windows:*"], known_time=False)
    assert frame.lineage["entities"] == {"table": "raw.labels", "version": 1}
    # more data and a re-materialization later ...
    ll.lake.table("raw.events").append(events_frame(50, seed=10, start=t0))
    labels.append(pd.DataFrame({"user_id": ["u4"], "y": [0], "event_timestamp": [t0]}))
    store.materialize("user_windows")
    again = store.rebuild_frame(frame.lineage)
    pd.testing.assert_frame_equal(again.data, frame.data)
    assert store.training_frame("raw.labels", ["user_windows:*"], known_time=False).data.shape[0] == 4
    with pytest.raises(NotMaterializedError):
        store.training_frame("raw.labels", ["user_rows:*"])
    with pytest.raises(DefinitionError, match="no feature"):
        store.training_frame("raw.labels", ["user_windows:nope"])


def test_ray_data_engine_gives_the_same_frame(store, ll):
    t0 = pd.Timestamp("2026-03-01", tz="UTC")
    ll.lake.table("raw.events").append(events_frame(500, seed=21, start=t0, users=30))
    store.materialize("user_windows")
    store.materialize("pair_windows")
    rng = np.random.default_rng(4)
    entities = pd.DataFrame({"user_id": [f"u{i}" for i in rng.integers(0, 35, 3000)],
                             "shop": rng.choice(["s1", "s2"], 3000),
                             "event_timestamp": t0 + pd.to_timedelta(rng.integers(0, 8 * 3600, 3000), unit="s")})
    refs = ["user_windows:*", "pair_windows:*"]
    local = store.training_frame(entities, refs, known_time=False, engine="local").data
    on_ray = store.training_frame(entities, refs, known_time=False, engine="ray").data
    pd.testing.assert_frame_equal(local, on_ray)
    ds = store.training_frame(entities, refs, known_time=False, format="ray")
    assert ds.count() == 3000 and "pair_sum_1h" in ds.schema().names
    assert local["amount_count_1h"].notna().mean() > 0.5
