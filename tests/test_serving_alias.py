"""Serving follows the registry: a version served by alias moves with the alias; aliases shown are live."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

import lakeloop
import serving_models
from conftest import free_port
from lakeloop.errors import TrafficError
from lakeloop.serving.controller import _moved, _traffic_note
from lakeloop.serving.policy import TrafficPolicy

ROW = {"amount": 150.0, "country": "US"}


def test_a_moved_alias_hands_over_weight_or_shadow_slot():
    policy = TrafficPolicy(weights={1: 90.0, 3: 10.0}, shadow=(4,))
    assert _moved(policy, 1, 2).weights == {1: 0.0, 2: 90.0, 3: 10.0}
    assert _moved(policy, 1, 2).shadow == (4,)
    shadow_moved = _moved(TrafficPolicy(weights={1: 100.0, 4: 0.0}, shadow=(4,)), 4, 5)
    assert shadow_moved.shadow == (5,) and shadow_moved.weights[5] == 0.0 and shadow_moved.weights[1] == 100.0


def test_the_note_says_a_champion_deployed_next_to_pinned_versions_gets_nothing():
    result = {"policy": {"weights": {"1": 100.0, "2": 0.0}, "shadow": []}}
    note = _traffic_note("churn", 2, None, result, None, champion=True)
    assert "champion" in note and "0%" in note and "pinned" in note
    moved = _traffic_note("churn", 2, "champion", {"policy": {"weights": {"1": 0.0, "2": 100.0}}}, 1)
    assert "moved from v1 to v2" in moved and "100.0%" in moved


def predict(port: int) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/models/churn/predict", body=json.dumps({"rows": [ROW]}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    status, raw = r.status, r.read()
    conn.close()
    return status, json.loads(raw)


def listing(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/v1/models")
    r = conn.getresponse()
    assert r.status == 200
    return json.loads(r.read())["models"]["churn"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_serving_follows_the_champion_with_zero_failed_requests(tmp_path, ray_session):
    from ray import serve

    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"), serve_port=free_port(), ray_namespace="alias-tests",
                          serve_replicas=1)
    v1, v2, v3 = (serving_models.register(ll, "churn", t) for t in (100.0, 200.0, 120.0))
    ll.models.promote("churn", v1, force=True)
    port = ll.config.serve.port
    ll.serving.up()
    try:
        first = ll.serving.deploy("churn")  # the champion, followed
        assert first["version"] == v1 and "champion" in first["note"]
        ll.serving.deploy("churn", v3, weight=10)  # pinned
        before = listing(port)
        assert before["follows"] == {"champion": v1}
        assert before["versions"][str(v1)]["aliases"] == ["champion"] and before["versions"][str(v3)]["aliases"] == []

        stop, results = threading.Event(), {"ok": 0, "failed": [], "versions": set()}

        def load():
            deadline = time.monotonic() + 240
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    status, answer = predict(port)
                except Exception as exc:  # a dropped connection counts as a failure
                    results["failed"].append(repr(exc))
                    continue
                if status == 200:
                    results["ok"] += 1
                    results["versions"].add(answer["version"])
                else:
                    results["failed"].append((status, answer))

        thread = threading.Thread(target=load)
        thread.start()
        try:
            ll.models.promote("churn", v2, force=True)  # the registry only: no serving call
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and listing(port)["follows"] != {"champion": v2}:
                time.sleep(0.2)
            seen = len(results["versions"])
            deadline = time.monotonic() + 30  # requests reach v2 once the ingress applied the move
            while time.monotonic() < deadline and v2 not in results["versions"]:
                time.sleep(0.1)
        finally:
            stop.set()
            thread.join(timeout=60)
        assert results["failed"] == [] and results["ok"] > 20, results
        assert v2 in results["versions"] and seen >= 1
        after = listing(port)
        assert after["follows"] == {"champion": v2}
        assert after["traffic"] == {str(v1): 0.0, str(v2): 90.0, str(v3): 10.0}  # v2 took v1's share; v3 pinned
        assert after["versions"][str(v2)]["aliases"] == ["champion"] and after["versions"][str(v1)]["aliases"] == []

        again = ll.serving.deploy("churn")  # the champion again: nothing moves, and it says so
        assert again["version"] == v2 and "90.0%" in again["note"]
        ll.models.client.set_registered_model_alias("churn", "staging", str(v3))  # read live, not at deploy
        assert listing(port)["versions"][str(v3)]["aliases"] == ["staging"]
        ll.serving.traffic("churn", {v1: 0, v3: 100})
        with pytest.raises(TrafficError, match="alias"):  # served for the champion: replaced when it moves
            ll.serving.retire("churn", v2)
    finally:
        ll.serving.down()
        serve.shutdown()  # the next module starts its own
