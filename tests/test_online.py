"""Online store: latest values from a Ray actor, over the SDK and HTTP; push; restart."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

import lakeloop
from conftest import free_port
from lakeloop.features import online

pytestmark = pytest.mark.slow
DEFS = "fs_defs:definitions"


def post(url: str, body, token: str | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **auth,
                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def fs(lake_root, ray_session):
    ll = lakeloop.connect(lake_root=str(lake_root), online_port=free_port(), ray_namespace="online-tests")
    now = pd.Timestamp.now(tz="UTC")
    rng = np.random.default_rng(3)
    events = ll.lake.create("raw.events", {"user_id": "string", "shop": "string", "amount": "float64",
                                           "event_time": "timestamp"})
    events.append(pd.DataFrame({"user_id": [f"u{i % 7}" for i in range(60)], "shop": "s1",
                                "amount": rng.gamma(2, 10, 60).round(2),
                                "event_time": now - pd.to_timedelta(rng.integers(60, 6 * 3600, 60), unit="s")}))
    ll.features.apply(DEFS)
    ll.features.materialize("user_windows")
    ll.features.materialize("user_rows")
    yield ll
    online.stop(ll)


def test_online_values_equal_offline_values_now(fs):
    users = [f"u{i}" for i in range(7)]
    on = fs.features.online_features("user_windows", users + ["nobody"])
    assert on["_missing"].tolist() == [False] * 7 + [True]
    assert on.iloc[-1][["amount_sum_1h", "amount_count_1h"]].isna().all()
    now = pd.Timestamp.now(tz="UTC")
    off = fs.features.training_frame(pd.DataFrame({"user_id": users, "event_timestamp": now}),
                                     ["user_windows:*"]).data
    for col in fs.features.view("user_windows").feature_names:
        np.testing.assert_allclose(on[col].iloc[:7].astype(float), off[col].astype(float), err_msg=col)


def test_http_lookup_and_clear_errors(fs):
    actor = online.start(fs)
    base = online.url(fs)
    token = online.read_token(fs)
    status, body = post(f"{base}/v1/features/user_rows", {"entities": [{"user_id": "u1"}, {"user_id": "zz"}]}, token)
    assert status == 200 and body["features"] == ["amount2", "amount"]
    assert body["rows"][0]["_missing"] is False and body["rows"][0]["amount2"] == 2 * body["rows"][0]["amount"]
    assert body["rows"][1] == {"user_id": "zz", "amount2": None, "amount": None, "_event_time": None,
                               "_missing": True}
    status, body2 = post(f"{base}/v1/features/user_rows", {"user_id": ["u1"]}, token)
    assert status == 200 and body2["rows"][0] == body["rows"][0]
    assert post(f"{base}/v1/features/nope", {"user_id": ["u1"]}, token)[0] == 404
    status, err = post(f"{base}/v1/features/user_rows", b"{not json", token)
    assert status == 400 and "JSON" in err["error"]
    status, err = post(f"{base}/v1/features/user_rows", {"entities": [{"customer": "u1"}]}, token)
    assert status == 400 and "user_id" in err["error"]
    req = urllib.request.Request(f"{base}/v1/features", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        listing = json.loads(r.read())
    assert {v["view"] for v in listing} >= {"user_rows", "user_windows"}
    assert actor is not None


def test_push_updates_online_within_seconds_and_offline_the_same(fs):
    online.start(fs)
    before = fs.features.online_features("user_windows", ["u1"]).iloc[0]
    now = pd.Timestamp.now(tz="UTC")
    t0 = time.monotonic()
    result = fs.features.push("user_windows", pd.DataFrame(
        {"user_id": ["u1", "u1"], "shop": "s1", "amount": [1000.0, 500.0], "event_time": [now, now]}))
    after = fs.features.online_features("user_windows", ["u1"]).iloc[0]
    elapsed = time.monotonic() - t0
    assert result["mode"] == "incremental" and elapsed < 30
    assert after["amount_max_2h"] == 1000.0 and after["amount_count_1h"] >= 2
    assert after["amount_sum_1h"] >= 1500.0 and pd.Timestamp(after["_event_time"]) == now
    assert before["_event_time"] != after["_event_time"]
    # the batch path gives the same values: recompute in full and compare with what was served
    fs.features.materialize("user_windows", full=True)
    offline = fs.features.training_frame(pd.DataFrame({"user_id": ["u1"], "event_timestamp": [pd.Timestamp.now(tz="UTC")]}),
                                         ["user_windows:*"]).data.iloc[0]
    for col in fs.features.view("user_windows").feature_names:
        assert after[col] == pytest.approx(offline[col]), col


def test_online_store_rebuilds_from_delta_after_a_restart(fs):
    import ray

    actor = online.start(fs)
    before = ray.get(actor.lookup.remote("user_rows", [{"user_id": "u2"}]))
    assert before == fs.features.online_features("user_rows", ["u2"]).to_dict("records")  # SDK: same values
    ray.kill(actor, no_restart=False)  # crash: Ray restarts it, and __init__ reloads from Delta
    deadline = time.monotonic() + 60
    while True:
        try:
            after = ray.get(actor.lookup.remote("user_rows", [{"user_id": "u2"}]))
            break
        except Exception:
            assert time.monotonic() < deadline, "online store did not come back"
            time.sleep(0.5)
    assert after == before


def test_http_needs_the_read_token_and_refuses_bulk_or_malformed_lookups(fs):
    import os
    import stat

    online.start(fs)
    url = f"{online.url(fs)}/v1/features/user_rows"
    token = online.read_token(fs)
    token_file = fs.config.lake.root + "/_secrets/online_read_token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600 and len(token) >= 32
    for bad_token in (None, "wrong", token + "x"):
        status, err = post(url, {"user_id": ["u1"]}, bad_token)
        assert status == 401 and "read_token" in err["error"], (bad_token, status)
    with pytest.raises(urllib.error.HTTPError) as listing:
        urllib.request.urlopen(f"{online.url(fs)}/v1/features", timeout=10)
    assert listing.value.code == 401
    status, err = post(url, {"user_id": [f"u{i}" for i in range(fs.config.online.max_entities + 1)]}, token)
    assert status == 413 and "online.max_entities" in err["error"]
    import http.client

    conn = http.client.HTTPConnection(fs.config.online.host, fs.config.online.port, timeout=10)
    conn.putrequest("POST", "/v1/features/user_rows")  # declares 50 MB, sends none: refused before reading
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(50_000_000))
    conn.endheaders()
    answer = conn.getresponse()
    assert answer.status == 413 and "online.max_bytes" in json.loads(answer.read())["error"]
    conn.close()
    hostile = [
        ({"entities": [{"user_id": ["u1"]}]}, "user_id"),        # unhashable key
        ({"entities": [{"user_id": {"a": 1}}]}, "user_id"),
        ({"entities": [{"user_id": 7}]}, "string"),             # wrong type
        ({"user_id": "u1"}, "entities"),
        ({"entities": "u1"}, "entities"),
        ({"entities": [1, 2]}, "entities"),
        (b"[" * 100_000, "nested"),                             # depth
        (b'{"user_id": [NaN]}', "JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b"", "JSON"),
    ]
    for body, needle in hostile:
        status, err = post(url, body, token)
        assert status == 400 and needle in err["error"], (body[:40], status, err)
    status, body = post(url, {"user_id": ["u1"]}, token)  # still serving
    assert status == 200 and body["rows"][0]["_missing"] is False
