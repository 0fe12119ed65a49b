"""One served platform for tests/test_serving.py, test_fuzz.py and test_serving_features.py (the
`serve_platform` fixture).

Starting it (four registered versions, three version deployments, Serve, the log writer and the
online store) takes about 45 s on 2 cores, so the modules share one instance: conftest runs
them one after the other and stops it after the last test that uses it, before any other test
starts Serve in the same Ray (there is one Serve, one HTTP port, per Ray).

Its settings are the union of what the modules need: request limits of 50 rows and 200,000
bytes, a feedback token (so feedback needs it; feedback without a configured token is tested
by tests/test_retrain.py), and the online store serving `user_rows` over HTTP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import lakeloop
import serving_models
from lakeloop.features import Entity, Feature, FeatureView, online
from lakeloop.ports import free_port  # below the ephemeral range (lakeloop/ports.py)

FEEDBACK_TOKEN = "feedback-token-for-the-serving-tests"
MAX_BYTES, MAX_ROWS = 200_000, 50
THRESHOLDS = (100.0, 200.0, 120.0, 110.0)  # versions 1..4 of `fraud`; the threshold tells them apart
DEPLOYED = 3  # versions 1..3 are deployed at start (v1 all traffic); v4 only registered

user = Entity(name="user", join_keys=["user_id"])
user_rows = FeatureView(name="user_rows", entities=[user], source="raw.events", timestamp_field="event_time",
                        features=[Feature(name="amount")], ttl="7d")


def start(root: Path) -> tuple["lakeloop.Lakeloop", list[int]]:
    """Register the versions, materialize `user_rows`, start the online store and serving; returns (ll, versions)."""
    ll = lakeloop.connect(lake_root=str(root), serve_port=free_port(), online_port=free_port(),
                          ray_namespace="serving-tests", serve_max_rows=MAX_ROWS, serve_max_bytes=MAX_BYTES,
                          serve_feedback_token=FEEDBACK_TOKEN, serve_replicas=1)  # replica kills: test_faults
    versions = [serving_models.register(ll, "fraud", t) for t in THRESHOLDS]
    now = pd.Timestamp.now(tz="UTC")
    ll.lake.create("raw.events", {"user_id": "string", "amount": "float64", "event_time": "timestamp"}).append(
        pd.DataFrame({"user_id": [f"u{i % 5}" for i in range(20)], "amount": np.arange(20, dtype=float),
                      "event_time": now - pd.to_timedelta(np.arange(20) * 60 + 60, unit="s")}))
    ll.features.apply([user, user_rows])
    ll.features.materialize("user_rows")
    online.start(ll)
    ll.serving.up()
    for v in versions[:DEPLOYED]:  # the first takes all traffic; the others wait idle
        ll.serving.deploy("fraud", v)
    return ll, versions


def stop(ll: "lakeloop.Lakeloop") -> None:
    """Serving, the online store and Serve itself down (the next module may start its own Serve)."""
    from ray import serve

    try:
        ll.serving.down()
        online.stop(ll)
    finally:
        serve.shutdown()
