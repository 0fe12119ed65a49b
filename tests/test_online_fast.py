"""The in-process online path: a local replica per process, fresh after materialize, right after a shape change."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest

import lakeloop
from conftest import free_port
from lakeloop.errors import FeatureViewNotFoundError, NotMaterializedError, SchemaError
from lakeloop.features import Feature, FeatureView, online

DEFS = "fs_defs:definitions"
POLL_DEADLINE_S = 20


def _events(n: int, now: pd.Timestamp, rng) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [f"u{i % 7}" for i in range(n)], "shop": "s1",
                         "amount": rng.gamma(2, 10, n).round(2),
                         "event_time": now - pd.to_timedelta(rng.integers(60, 6 * 3600, n), unit="s")})


@pytest.fixture
def lake(lake_root):
    ll = lakeloop.connect(lake_root=str(lake_root), online_port=free_port(), ray_namespace="online-fast-tests")
    events = ll.lake.create("raw.events", {"user_id": "string", "shop": "string", "amount": "float64",
                                           "event_time": "timestamp"})
    events.append(_events(40, pd.Timestamp.now(tz="UTC"), np.random.default_rng(5)))
    ll.features.apply(DEFS)
    ll.features.materialize("user_rows", engine="local")
    yield ll
    online.reader(ll).close()


def _land(ll, amount: float) -> pd.Timestamp:
    """A new newest event for u1 in the source; returns its time."""
    now = pd.Timestamp.now(tz="UTC").floor("us")
    ll.lake.table("raw.events").append(pd.DataFrame({"user_id": ["u1"], "shop": "s1", "amount": [amount],
                                                     "event_time": [now]}))
    return now


def _until(check, what: str):
    """Poll ``check`` until it returns something truthy, within POLL_DEADLINE_S."""
    deadline = time.monotonic() + POLL_DEADLINE_S
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not seen within {POLL_DEADLINE_S} s"
        time.sleep(0.05)


def test_sdk_lookups_come_from_a_local_replica_without_ray(lake):
    import ray

    ray_was_up = ray.is_initialized()  # the session's Ray may run already; this test must not need it
    first = lake.features.online_features("user_rows", ["u1", "nobody"])
    assert first["user_id"].tolist() == ["u1", "nobody"] and first["_missing"].tolist() == [False, True]
    assert first.loc[0, "amount2"] == 2 * first.loc[0, "amount"]
    assert pd.isna(first.loc[1, "amount"]) and first.loc[1, "_event_time"] is None
    table = online.reader(lake).table("user_rows")
    again = lake.features.online_features("user_rows", [{"user_id": "u1"}])
    assert online.reader(lake).table("user_rows") is table  # the replica was reused, not reloaded
    pd.testing.assert_frame_equal(again, first.iloc[:1])
    assert ray.is_initialized() == ray_was_up  # no actor round trip: nothing started Ray
    if ray_was_up:  # and no online store actor was started for this lake
        with pytest.raises(ValueError):
            ray.get_actor(online.actor_name(lake), namespace=lake.config.ray.namespace)
    src = lake.lake.table("raw.events").to_pandas()
    newest = src[src["user_id"] == "u1"].sort_values("event_time").iloc[-1]
    assert first.loc[0, "amount"] == newest["amount"]
    assert pd.Timestamp(first.loc[0, "_event_time"]) == newest["event_time"]


def test_rows_and_columns_answers_agree_and_bad_input_is_named(lake):
    table = online.reader(lake).table("user_rows")
    entities = [{"user_id": "u3"}, {"user_id": "zz"}, {"user_id": "u0"}]
    rows = table.lookup(entities, now_us=10**17)
    cols = table.lookup_columns(entities, now_us=10**17)
    assert pd.DataFrame(rows).equals(pd.DataFrame(cols))
    assert json.loads(table.lookup_json(entities, now_us=10**17)) == rows  # the HTTP answer's text
    assert json.loads(table.lookup_json(entities, now_us=10**17)) == rows  # again, from its cached texts
    lake.features.materialize("pair_windows", engine="local")  # two join keys
    pairs = [{"user_id": "u2", "shop": "s1"}, {"user_id": "u2", "shop": "nope"}]
    got = online.reader(lake).lookup("pair_windows", pairs)
    assert [r["_missing"] for r in got] == [False, True] and got[1]["shop"] == "nope"
    assert json.loads(online.reader(lake).table("pair_windows").lookup_json(pairs)) == got
    with pytest.raises(SchemaError, match="shop"):
        online.reader(lake).lookup("pair_windows", [{"user_id": "u2"}])
    with pytest.raises(SchemaError, match="user_id"):
        lake.features.online_features("user_rows", [{"customer": "u1"}])
    with pytest.raises(SchemaError, match="string"):
        lake.features.online_features("user_rows", [7])
    with pytest.raises(FeatureViewNotFoundError, match="nope"):
        lake.features.online_features("nope", ["u1"])
    with pytest.raises(NotMaterializedError, match="user_windows"):
        lake.features.online_features("user_windows", ["u1"])  # applied, never materialized


def test_a_materialization_here_is_seen_at_once_and_one_elsewhere_within_a_poll(lake):
    assert lake.features.online_features("user_rows", ["u1"]).loc[0, "amount"] != 777.0
    when = _land(lake, 777.0)
    lake.features.materialize("user_rows", engine="local")  # in this process: the readers are refreshed
    now = lake.features.online_features("user_rows", ["u1"])
    assert now.loc[0, "amount"] == 777.0 and pd.Timestamp(now.loc[0, "_event_time"]) == when
    # another process's materialization: nothing notifies this reader, its version check finds it
    other = lakeloop.connect(lake_root=lake.config.lake.root)
    _land(lake, 888.0)
    other.features.apply(DEFS)
    other.features.materialize("user_rows", engine="local", refresh_online=False)
    _until(lambda: lake.features.online_features("user_rows", ["u1"]).loc[0, "amount"] == 888.0,
           "the value materialized elsewhere")


def test_now_is_the_time_the_ttl_is_measured_from(lake):
    at = pd.Timestamp(lake.features.online_features("user_rows", ["u1"]).loc[0, "_event_time"])
    # user_rows keeps values 1 day: known an hour later, missing two days later
    inside = lake.features.online_features("user_rows", ["u1"], now=at + pd.Timedelta("1h"))
    assert inside["_missing"].tolist() == [False]
    later = lake.features.online_features("user_rows", ["u1"], now=(at + pd.Timedelta("2d")).isoformat())
    assert later["_missing"].tolist() == [True] and pd.isna(later.loc[0, "amount"])
    naive = lake.features.online_features("user_rows", ["u1"], now=(at + pd.Timedelta("2d")).tz_localize(None))
    assert naive["_missing"].tolist() == [True]  # a naive time is UTC
    with pytest.raises(SchemaError, match="now must be a timestamp"):
        lake.features.online_features("user_rows", ["u1"], now="next tuesday-ish")


def triple_amount(df):
    df["amount2"] = df["amount"] * 2
    df["amount3"] = df["amount"] * 3
    return df


def _with_triple(ll) -> FeatureView:
    """``user_rows`` redefined with a third feature (a new shape)."""
    from fs_defs import user, user_rows

    return FeatureView(name="user_rows", entities=[user], source="raw.events", timestamp_field="event_time",
                       transform=triple_amount, features=[*user_rows.features, Feature(name="amount3")],
                       ttl="1d", description="each event's amount", owner="tests")


def test_a_new_shape_is_served_once_materialized_and_never_half(lake):
    before = lake.features.online_features("user_rows", ["u1"])
    assert "amount3" not in before
    lake.features.apply([_with_triple(lake)])
    # applied, not materialized: the replica keeps serving the table as it was written
    assert list(lake.features.online_features("user_rows", ["u1"]).columns) == list(before.columns)
    fresh = online.OnlineReader(lakeloop.connect(lake_root=lake.config.lake.root))
    with pytest.raises(NotMaterializedError, match="amount3"):
        fresh.table("user_rows")
    fresh.close()
    lake.features.materialize("user_rows", engine="local")
    after = lake.features.online_features("user_rows", ["u1"])
    assert "amount3" in after and after.loc[0, "amount3"] == 3 * after.loc[0, "amount"]
    assert online.reader(lake).shape("user_rows")[2] == ["amount2", "amount", "amount3"]


def _post(url: str, body, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_http_answers_from_the_actors_replica_and_follows_the_lake(lake, ray_session):
    online.start(lake)
    try:
        url, token = f"{online.url(lake)}/v1/features/user_rows", online.read_token(lake)
        status, body = _post(url, {"user_id": ["u1", "zz"]}, token)
        assert status == 200 and body["rows"][1]["_missing"] is True
        assert body["rows"][0] == lake.features.online_features("user_rows", ["u1"]).iloc[0].to_dict()
        # materialized without telling the store: its replica's version check picks it up
        _land(lake, 4242.0)
        lake.features.materialize("user_rows", engine="local", refresh_online=False)
        _until(lambda: _post(url, {"user_id": ["u1"]}, token)[1]["rows"][0]["amount"] == 4242.0,
               "the new value over HTTP")
        # a new shape, materialized (the store is told): the next answer has it
        lake.features.apply([_with_triple(lake)])
        lake.features.materialize("user_rows", engine="local")
        status, body = _post(url, {"user_id": ["u1"]}, token)
        assert status == 200 and body["features"] == ["amount2", "amount", "amount3"]
        assert body["rows"][0]["amount3"] == 3 * 4242.0
        status, err = _post(f"{online.url(lake)}/v1/features/user_windows", {"user_id": ["u1"]}, token)
        assert status == 409 and "materialize" in err["error"]
    finally:
        online.stop(lake)
