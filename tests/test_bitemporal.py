"""Known time is bitemporal: a training row sees exactly what the lake held at its label time.

The reference is Delta time travel: for a label at L, read the source as of
its newest commit at or before L (plus rows declared history, known at their
event time), compute the view from that content alone, and join it by event
time. Appends, upserts, deletes, backfills and declared history alike.
"""

from __future__ import annotations

import tempfile
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lakeloop
from lakeloop.errors import KnownTimeWarning, SchemaError
from lakeloop.features import Aggregation, Entity, Feature, FeatureView
from lakeloop.features import materialize as mat
from lakeloop.features.pit import KNOWN_AT, KNOWN_UNTIL, asof_join
from lakeloop.lake.schema import TableSchema

SOURCE = {"id": "string", "user_id": "string", "amount": "float64", "event_time": "timestamp"}
user = Entity(name="user", join_keys=["user_id"])
windows = FeatureView(
    name="windows", entities=[user], source="raw.ev", timestamp_field="event_time",
    features=[Feature(name="amount"), Aggregation(column="amount", function="sum", window="1s"),
              Aggregation(column="amount", function="count", window="1s"),
              Aggregation(column="amount", function="max", window="2s")])
rows_view = FeatureView(name="rows", entities=[user], source="raw.ev", timestamp_field="event_time",
                        features=[Feature(name="amount")])
hourly = FeatureView(
    name="hourly", entities=[user], source="raw.ev", timestamp_field="event_time",
    features=[Aggregation(column="amount", function="sum", window="1h", name="sum_1h"),
              Aggregation(column="amount", function="count", window="1h", name="count_1h")])


def _lake(root=None):
    ll = lakeloop.connect(lake_root=root or tempfile.mkdtemp(prefix="bitemporal-"))
    ll.lake.create("raw.ev", SOURCE, primary_key="id")
    return ll


def _rows(ids, users, stamps, amounts):
    return pd.DataFrame({"id": ids, "user_id": users, "amount": [float(a) for a in amounts],
                         "event_time": pd.to_datetime(stamps, utc=True)})


# -- the reference: Delta time travel --------------------------------------------------------
def held_at(table, when: pd.Timestamp, snaps: dict, commits: dict, declared: dict) -> pd.DataFrame:
    """The rows the lake held at ``when``, each with the time it was known from (for tie order only)."""
    version = table.version_as_of(when.to_pydatetime())
    assert snaps[version].equals(table.read(as_of=when.to_pydatetime()).sort_values("id").reset_index(drop=True))
    out = []
    for rec in snaps[version].to_dict("records"):
        since = version  # the first version of the row's unbroken presence, values unchanged
        while since - 1 in snaps and _has(snaps[since - 1], rec):
            since -= 1
        known = commits[since]
        if since in declared and rec["id"] not in set(snaps[since - 1]["id"]):  # a declared-history insert
            known = min(known, rec["event_time"])
        out.append({**rec, KNOWN_AT: known})
    for v, _ in declared.items():  # history committed later, but known at its event time
        if commits[v] <= when:
            continue
        before = set(snaps[v - 1]["id"])
        for rec in snaps[v].to_dict("records"):
            if rec["id"] not in before and rec["event_time"] <= when:
                out.append({**rec, KNOWN_AT: rec["event_time"]})
    df = pd.DataFrame(out, columns=list(SOURCE) + [KNOWN_AT])
    df[KNOWN_AT] = pd.to_datetime(df[KNOWN_AT], utc=True)
    df["event_time"] = pd.to_datetime(df["event_time"], utc=True)
    return df


def _has(snap: pd.DataFrame, rec: dict) -> bool:
    same = snap[snap["id"] == rec["id"]]
    return len(same) == 1 and same.iloc[0]["amount"] == rec["amount"] and \
        same.iloc[0]["event_time"] == rec["event_time"] and same.iloc[0]["user_id"] == rec["user_id"]


def reference(ll, view: FeatureView, labels: pd.DataFrame) -> pd.DataFrame:
    """Per label: the view recomputed from what the lake held at the label's time, joined by event time."""
    table = ll.lake.table(view.source)
    history = table.history()
    commits = {h["version"]: pd.Timestamp(h["timestamp"]) for h in history}
    declared = {h["version"]: h["history_column"] for h in history if h.get("history_column")}
    snaps = {v: table.read(version=v).sort_values("id").reset_index(drop=True) for v in commits}
    schema = TableSchema.build(mat.feature_schema(view, table.schema))
    out = []
    for _, label in labels.iterrows():
        rows = held_at(table, label["event_timestamp"], snaps, commits, declared)
        feats = mat.to_feature_arrow(view, mat.compute(view, rows), schema)
        got = asof_join(pa_table(label.to_frame().T), feats, keys=view.join_keys, query_ts="event_timestamp",
                        feature_ts=view.timestamp_field, columns=view.feature_names, known_time=False)
        out.append({c: got[c][0].as_py() for c in view.feature_names})
    return pd.DataFrame(out, columns=view.feature_names)


def pa_table(df: pd.DataFrame):
    import pyarrow as pa

    df = df.copy()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    df["user_id"] = df["user_id"].astype(str)
    return pa.Table.from_pandas(df[["user_id", "event_timestamp"]], preserve_index=False)


def _same(got: pd.DataFrame, want: pd.DataFrame, labels: pd.DataFrame) -> None:
    for col in want.columns:
        g = got[col].astype("float64").to_numpy()
        w = want[col].astype("float64").to_numpy()
        bad = ~((g == w) | (np.isnan(g) & np.isnan(w)))
        assert not bad.any(), (col, labels[bad].to_dict("records"), g[bad], w[bad])


# -- the minimal case --------------------------------------------------------------------
def test_a_later_delete_does_not_leak_into_the_past(tmp_path):
    ll = _lake(str(tmp_path / "lake"))
    ll.features.apply([user, hourly])
    table = ll.lake.table("raw.ev")
    now = pd.Timestamp.now(tz="UTC")
    c1 = table.append(_rows(["d1", "d2"], ["u", "u"], [now - pd.Timedelta(minutes=20)] * 2, [5, 7]))
    ll.features.materialize("hourly", engine="local")
    time.sleep(0.05)
    l1 = pd.Timestamp.now(tz="UTC")
    time.sleep(0.05)
    c3 = table.delete("id = 'd1'")
    ll.features.materialize("hourly", engine="local")
    l2 = pd.Timestamp.now(tz="UTC")
    times = table.commit_times()
    assert times[c1.version] < l1 < times[c3.version] < l2
    labels = pd.DataFrame({"user_id": ["u", "u"], "event_timestamp": [l1, l2]})
    frame = ll.features.training_frame(labels, ["hourly:*"], engine="local").data
    assert frame["sum_1h"].tolist() == [12.0, 7.0] and frame["count_1h"].tolist() == [2, 1]
    plain = ll.features.training_frame(labels, ["hourly:*"], known_time=False, engine="local").data
    assert plain["sum_1h"].tolist() == [7.0, 7.0], "event time alone sees only what is there now"
    stored = ll.lake.table("features.hourly").to_pandas()
    assert stored[KNOWN_UNTIL].notna().sum() == 2, "the values before the delete are kept, closed at c3"
    assert set(frame.columns) >= {"sum_1h", "count_1h"}


def test_a_backfill_keeps_the_value_the_store_held_before_it(tmp_path):
    ll = _lake(str(tmp_path / "lake"))
    ll.features.apply([user, hourly])
    table = ll.lake.table("raw.ev")
    now = pd.Timestamp.now(tz="UTC")
    table.append(_rows(["a1"], ["u"], [now - pd.Timedelta(minutes=10)], [3]))
    time.sleep(0.05)
    cut = pd.Timestamp.now(tz="UTC")
    time.sleep(0.05)
    # a backfill: an older event lands later, inside the newest row's window
    table.append(_rows(["b1"], ["u"], [now - pd.Timedelta(minutes=30)], [100]))
    ll.features.materialize("hourly", engine="local")
    labels = pd.DataFrame({"user_id": ["u", "u"], "event_timestamp": [cut, pd.Timestamp.now(tz="UTC")]})
    frame = ll.features.training_frame(labels, ["hourly:*"], engine="local").data
    # at the cut the store held 3 (one row); the old single-known-time rule stepped back to nothing
    assert frame["sum_1h"].tolist() == [3.0, 103.0] and frame["count_1h"].tolist() == [1, 2]


# -- the property: training_frame == per-label recompute from time travel ---------------------
OP = st.one_of(
    st.tuples(st.just("append"), st.lists(st.tuples(st.sampled_from("ab"), st.integers(-10, 20),
                                                    st.sampled_from([1.0, 0.1, 2.5, 0.2])), min_size=1, max_size=3)),
    st.tuples(st.just("history"), st.lists(st.tuples(st.sampled_from("ab"), st.integers(-10, 20),
                                                     st.sampled_from([1.0, 0.1, 7.0])), min_size=1, max_size=3)),
    st.tuples(st.just("upsert"), st.lists(st.tuples(st.integers(0, 50), st.integers(-10, 20),
                                                    st.sampled_from([3.0, 0.3])), min_size=1, max_size=2)),
    st.tuples(st.just("delete"), st.lists(st.integers(0, 50), min_size=1, max_size=2)),
    st.tuples(st.just("materialize"), st.just(None)),
)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OP, min_size=2, max_size=7), st.integers(0, 3))
def test_known_time_frame_equals_a_recompute_from_time_travel(ops, backfill_shift):
    ll = _lake()
    ll.features.apply([user, windows, rows_view])
    table = ll.lake.table("raw.ev")
    base = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=backfill_shift)
    ids: list[str] = []
    n = 0

    def stamp(k):  # events 100 ms apart, before and after the commits: late rows and early ones
        return base + pd.Timedelta(milliseconds=100 * k)

    for kind, arg in ops:
        if kind in ("append", "history"):
            new = [f"r{n + i}" for i in range(len(arg))]
            n += len(arg)
            rows = _rows(new, [u for u, _, _ in arg], [stamp(k) for _, k, _ in arg], [a for _, _, a in arg])
            table.append(rows, history="event_time" if kind == "history" else None)
            ids += new
        elif kind == "upsert" and ids:
            picked = {ids[i % len(ids)]: (k, a) for i, k, a in arg}
            cur = table.read().set_index("id")
            picked = {i: v for i, v in picked.items() if i in cur.index}
            if picked:
                table.upsert(_rows(list(picked), [cur.loc[i, "user_id"] for i in picked],
                                   [stamp(k) for k, _ in picked.values()], [a for _, a in picked.values()]))
        elif kind == "delete" and ids:
            gone = sorted({ids[i % len(ids)] for i in arg})
            table.delete(" OR ".join(f"id = '{i}'" for i in gone))
        elif kind == "materialize" and table.version() > 0:
            for v in ("windows", "rows"):
                ll.features.materialize(v, engine="local")
        time.sleep(0.01)
    if table.version() == 0:
        return
    for v in ("windows", "rows"):
        ll.features.materialize(v, engine="local")
    commits = sorted(pd.Timestamp(h["timestamp"]) for h in table.history() if h["version"] > 0)
    times = commits + [a + (b - a) / 2 for a, b in zip(commits, commits[1:])] + [commits[-1] + pd.Timedelta(seconds=3)]
    labels = pd.DataFrame([{"user_id": u, "event_timestamp": t} for t in times for u in "ab"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KnownTimeWarning)
        frame = ll.features.training_frame(labels, ["windows:*", "rows:*"], full_feature_names=True,
                                           engine="local").data
    for view in (windows, rows_view):
        want = reference(ll, view, labels)
        got = frame[[f"{view.name}__{c}" for c in view.feature_names]]
        got.columns = view.feature_names
        _same(got, want, labels)
    # incremental runs leave the table a full recompute leaves
    for v in ("windows", "rows"):
        inc = ll.lake.table(f"features.{v}").to_pandas()
        ll.features.materialize(v, full=True, engine="local")
        full = ll.lake.table(f"features.{v}").to_pandas()
        cols = list(full.columns)
        pd.testing.assert_frame_equal(inc.sort_values(cols).reset_index(drop=True),
                                      full.sort_values(cols).reset_index(drop=True))


# -- declaring history ---------------------------------------------------------------------------
def test_declared_history_joins_and_later_rows_stay_leak_free(tmp_path):
    ll = _lake(str(tmp_path / "lake"))
    ll.features.apply([user, hourly])
    table = ll.lake.table("raw.ev")
    t0 = pd.Timestamp("2026-01-05T12:00:00", tz="UTC")
    history = _rows([f"h{i}" for i in range(4)], ["u"] * 4, [t0 + pd.Timedelta(minutes=10 * i) for i in range(4)],
                    [1, 2, 3, 4])
    written = table.append(history, history="event_time")
    assert table.history(limit=1)[0]["history_column"] == "event_time"
    now = pd.Timestamp.now(tz="UTC")
    # a backfill appended later without the declaration: known only from its commit
    table.append(_rows(["late"], ["u"], [t0 + pd.Timedelta(minutes=35)], [100]))
    ll.features.materialize("hourly", engine="local")
    labels = pd.DataFrame({"user_id": ["u"] * 3, "event_timestamp": [
        t0 + pd.Timedelta(minutes=25), t0 + pd.Timedelta(minutes=40), now + pd.Timedelta(seconds=5)]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", KnownTimeWarning)
        frame = ll.features.training_frame(labels, ["hourly:*"], engine="local")
    assert frame.data["sum_1h"].tolist() == [6.0, 10.0, 110.0], "history at its event time; the late row from its commit"
    assert frame.lineage["views"]["hourly"]["history_versions"] == [written.version]
    assert mat.history_commits(table, written.version) == {written.version: "event_time"}, "read at an old version"
    assert mat.history_commits(table, written.version - 1) == {}
    with pytest.raises(SchemaError, match="history='amount' must name a timestamp column"):
        table.append(history, history="amount")


def test_ingest_declares_history_and_the_frame_warns_when_known_time_empties_it(tmp_path):
    ll = _lake(str(tmp_path / "lake"))
    ll.features.apply([user, hourly])
    t0 = pd.Timestamp("2026-01-05T12:00:00", tz="UTC")
    csv = tmp_path / "old.csv"
    _rows([f"x{i}" for i in range(10)], ["u"] * 10, [t0 + pd.Timedelta(minutes=i) for i in range(10)],
          range(10)).to_csv(csv, index=False)
    labels = pd.DataFrame({"user_id": ["u"] * 10, "event_timestamp": [t0 + pd.Timedelta(minutes=i, seconds=30)
                                                                       for i in range(10)]})
    ll.lake.ingest(csv, "raw.ev")  # history ingested today, not declared
    ll.features.materialize("hourly", engine="local")
    with pytest.warns(KnownTimeWarning, match=r"100% of the frame's rows \(10 of 10\).*history='event_time'"):
        frame = ll.features.training_frame(labels, ["hourly:*"], engine="local")
    assert frame.data["sum_1h"].isna().all()

    ll2 = _lake(str(tmp_path / "lake2"))
    ll2.features.apply([user, hourly])
    result = ll2.lake.ingest(csv, "raw.ev", history="event_time")
    assert result.history == "event_time"
    ll2.features.materialize("hourly", engine="local")
    with warnings.catch_warnings():
        warnings.simplefilter("error", KnownTimeWarning)
        frame = ll2.features.training_frame(labels, ["hourly:*"], engine="local")
    assert frame.data["count_1h"].tolist() == list(range(1, 11))
    with pytest.raises(SchemaError, match="history='id'"):
        ll2.lake.ingest(csv, "raw.ev", history="id")


# -- snapshot-consistent jobs ----------------------------------------------------------------------
def _two_views(ll):
    table = ll.lake.create("raw.ev", SOURCE, primary_key="id")
    ll.features.apply([user, hourly, rows_view])
    t0 = pd.Timestamp("2026-02-01", tz="UTC")
    table.append(_rows([f"s{i}" for i in range(100)], [f"u{i % 7}" for i in range(100)],
                       [t0 + pd.Timedelta(minutes=i) for i in range(100)], range(100)), history="event_time")
    return table, t0


@pytest.mark.slow
def test_entity_rows_are_read_at_the_version_the_views_were_computed_from(ll, ray_session):
    table, t0 = _two_views(ll)
    ll.features.materialize("hourly")
    table.append(_rows([f"n{i}" for i in range(20)], [f"u{i % 7}" for i in range(20)],
                       [t0 + pd.Timedelta(minutes=200 + i) for i in range(20)], range(20)), history="event_time")
    ll.features.materialize("rows")
    frame = ll.features.training_frame("raw.ev", ["hourly:*", "rows:*"], timestamp_column="event_time",
                                           full_feature_names=True)
    assert len(frame.data) == 100 and frame.data[frame.features].notna().all().all()
    assert frame.lineage["entities"]["version"] == 1
    assert frame.lineage["snapshot"] == {"features.hourly": 1, "features.rows": 1, "raw.ev": 1}
    ll.features.materialize_many(["hourly", "rows"])
    again = ll.features.training_frame("raw.ev", ["hourly:*", "rows:*"], timestamp_column="event_time",
                                           full_feature_names=True)
    assert len(again.data) == 120 and again.data[again.features].notna().all().all()
    pd.testing.assert_frame_equal(ll.features.rebuild_frame(frame.lineage).data, frame.data)


@pytest.mark.slow
def test_a_writer_appending_during_the_retrain_data_step_leaves_no_featureless_rows(ll, ray_session):
    from lakeloop.retrain.job import build_frame
    from lakeloop.retrain.spec import RetrainSpec

    table, t0 = _two_views(ll)
    ll.features.materialize_many(["hourly", "rows"])
    stop = threading.Event()
    written = []

    def writer():
        i = 0
        while not stop.is_set():
            rows = _rows([f"w{i}-{j}" for j in range(5)], [f"u{j}" for j in range(5)],
                         [t0 + pd.Timedelta(minutes=300 + i * 5 + j) for j in range(5)], range(5))
            written.append(table.append(rows, history="event_time").version)
            i += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(written) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        inputs = {"entities": "raw.ev", "refs": ["hourly:*", "rows:*"], "timestamp_column": "event_time",
                  "known_time": True, "full_feature_names": True, "views": ["hourly", "rows"]}
        frame, materialized, _ = build_frame(ll, inputs, RetrainSpec(model="m", train_rows=60))
    finally:
        stop.set()
        thread.join(timeout=60)
    assert len(written) >= 2 and table.version() > frame.lineage["entities"]["version"]
    pinned = frame.lineage["entities"]["version"]
    assert {m["source_version"] for m in materialized.values()} == {pinned}
    assert frame.lineage["snapshot"]["raw.ev"] == pinned
    source = table.read(version=pinned)
    assert len(frame.data) == 60 and set(frame.data["id"]) <= set(source["id"])
    assert frame.data[frame.features].notna().all().all(), "every row the source had has its features"
    # one frame for both models: the holdout the gate scores both on is the same rows
    pd.testing.assert_frame_equal(ll.features.rebuild_frame(frame.lineage).data, frame.data)
