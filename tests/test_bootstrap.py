"""`serve up`'s bootstrap server on its own, without Ray: answers, hostile input, its spool, its death.

The handover to Serve's HAProxy under load is in test_serve_cli.py (it needs Ray and Serve).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

import lakeloop
import serving_models
from conftest import free_port
from lakeloop.serving import bootstrap
from lakeloop.serving.logbook import INFERENCE, TABLES, wal_root
from lakeloop.serving.service import admin_token
from lakeloop.serving.spool import read_folder

pytestmark = pytest.mark.slow  # a child process that imports mlflow and loads the model
ROW = {"amount": 150.0, "country": "US"}


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def predict(port: int, payload, name: str = "fraud"):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return call(port, "POST", f"/v1/models/{name}/predict", raw)


def first_answer(port: int, boot, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert boot.proc.poll() is None, boot.summary()
        try:
            if predict(port, {"rows": [ROW]})[0] == 200:
                return time.monotonic()
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"no answer within {timeout} s: {boot.summary()}")


def spooled(ll) -> dict:
    """request_id -> its records, from every spool folder of the lake (what an ingress replica would adopt)."""
    out: dict = {}
    for folder in (wal_root(ll) / "spool").iterdir():
        if folder.is_dir():
            for table, _, records in read_folder(folder, TABLES):
                if table == INFERENCE:
                    for r in records:
                        out.setdefault(r["request_id"], []).append(r)
    return out


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    ll = lakeloop.connect(lake_root=str(tmp_path_factory.mktemp("boot") / "lake"), serve_port=free_port())
    versions = [serving_models.register(ll, "fraud", t) for t in (100.0, 200.0)]
    return ll, versions


def test_bootstrap_answers_like_the_ingress_refuses_hostile_input_and_spools_every_answer(lake):
    ll, (v1, v2) = lake
    port = ll.config.serve.port
    boot = bootstrap.start(ll, [("fraud", v1)])
    assert boot is not None
    try:
        first_answer(port, boot)
        status, raw, headers = predict(port, {"rows": [ROW, {"amount": 50.0, "country": "BR"}]})
        assert status == 200 and headers["x-lakeloop-bootstrap"] == "1"
        body = json.loads(raw)
        assert body["model"] == "fraud" and body["version"] == v1 and body["versions"] == [v1, v1]
        assert [p["prediction"] for p in body["predictions"]] == [1, 0]  # threshold 100: 150 > 100, 50 + 50 = 100
        answered = [body["request_id"]]
        hostile = {
            "too large": (b'{"rows": [' + b'{"amount": 1.0},' * 80_000 + b'{}]}', 413, "limit"),
            "too deep": (b"[" * 5000 + b"]" * 5000, 400, "deep"),
            "not UTF-8": (b'{"rows": [{"country": "\xff\xfe"}]}', 400, "UTF-8"),
            "not JSON": (b'{"rows": [', 400, "JSON"),
            "a string amount": ({"rows": [{"amount": "lots", "country": "US"}]}, 422, "amount"),
            "a missing column": ({"rows": [{"country": "US"}]}, 422, "amount"),
            "no rows": ({"rows": []}, 422, "rows"),
            "a pinned version": ({"rows": [ROW], "version": v1}, 503, "pins its version"),
            "NaN": (b'{"rows": [{"amount": NaN, "country": "US"}]}', 422, "NaN"),
        }
        for what, (payload, want, says) in hostile.items():
            status, raw, _ = predict(port, payload)
            assert status == want and says in raw.decode(), (what, status, raw[:300])
        status, raw, _ = predict(port, {"rows": [ROW]}, name="nope")
        assert status == 404 and "not served" in raw.decode()
        for method, path in (("GET", "/healthz"), ("GET", "/v1/models"), ("POST", "/v1/admin/models/fraud/promote"),
                             ("POST", "/v1/feedback")):
            status, raw, headers = call(port, method, path, b"{}")
            assert status == 503 and headers["retry-after"] == "1" and "starting" in raw.decode(), (path, raw)
        status, raw, _ = predict(port, {"rows": [ROW], "routing_key": "customer-7"})  # still answering
        assert status == 200
        answered.append(json.loads(raw)["request_id"])
        named = {"X-Request-Id": "order-42"}  # honoured for the admin token's holder only, as at the ingress
        status, raw, _ = call(port, "POST", "/v1/models/fraud/predict", json.dumps({"rows": [ROW]}).encode(), named)
        assert status == 200 and json.loads(raw)["request_id"] != "order-42"
        answered.append(json.loads(raw)["request_id"])
        status, raw, _ = call(port, "POST", "/v1/models/fraud/predict", json.dumps({"rows": [ROW]}).encode(),
                              {**named, "Authorization": f"Bearer {admin_token(ll)}"})
        assert status == 200 and json.loads(raw)["request_id"] == "order-42"
        answered.append("order-42")
    finally:
        summary = boot.stop()
    assert summary["answered"] == 5 and summary["models"] == {"fraud": [v1]}, summary
    with pytest.raises(OSError):  # the port is free: nothing left listening
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    records = spooled(ll)  # every 2xx is on disk for the ingress to adopt; no 4xx was logged
    for rid in answered:
        assert rid in records and records[rid][0]["route"] == "primary" and records[rid][0]["version"] == v1
    assert sum(len(r) for r in records.values()) == 6


def test_bootstrap_killed_under_load_frees_the_port_and_keeps_what_it_answered(lake):
    ll, (v1, _) = lake
    port = ll.config.serve.port
    before = set(spooled(ll))
    boot = bootstrap.start(ll, [("fraud", v1)])
    ok: list[str] = []
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                status, raw, _ = predict(port, {"rows": [ROW]})
                if status == 200:
                    ok.append(json.loads(raw)["request_id"])
            except OSError:
                time.sleep(0.02)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    try:
        first_answer(port, boot)
        for t in threads:
            t.start()
        while len(ok) < 30:
            time.sleep(0.05)
        os.kill(boot.proc.pid, signal.SIGKILL)
        boot.proc.wait(30)
        answered = list(ok)
        deadline = time.monotonic() + 10
        while True:  # the child held the only copy of the socket: refused at once, never a connection left hanging
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the port still accepts connections after the bootstrap died"
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        boot.stop()
    assert set(answered) <= set(spooled(ll)) - before  # each answered 200 was fsync'd to its spool first
    again = bootstrap.start(ll, [("fraud", v1)])  # and the port can be bound again
    try:
        first_answer(port, again)
    finally:
        again.stop()


def test_no_bootstrap_where_the_port_is_taken_or_it_is_turned_off(lake):
    ll, (v1, _) = lake
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the tests before left TIME_WAITs
        holder.bind(("127.0.0.1", ll.config.serve.port))
        holder.listen()
        assert bootstrap.start(ll, [("fraud", v1)]) is None
    off = lakeloop.connect({**ll.config.to_dict(secrets=True), "serve": {**ll.config.to_dict()["serve"],
                                                                          "bootstrap": False}})
    assert bootstrap.why_not(off) == "serve.bootstrap is false"
    assert bootstrap.start(off, [("fraud", v1)]) is None


def test_bootstrap_serves_the_stored_split_and_shadow(lake):
    """A restart serves what `serving.traffic` last recorded: sticky keys keep their version, as the ingress's
    policy picks it, and the shadow's answers are logged beside the primary's, never returned. Last in this
    module: the stored state is the lake's from here on."""
    import pandas as pd

    from lakeloop.serving.controller import HISTORY, HISTORY_COLUMNS, version_signature
    from lakeloop.serving.policy import TrafficPolicy

    ll, (v1, v2) = lake
    v3 = serving_models.register(ll, "fraud", 300.0)
    versions = {str(v): {"uri": f"models:/fraud/{v}", "schema": version_signature(ll.config, f"models:/fraud/{v}")[0]}
                for v in (v1, v2, v3)}
    policy = {"weights": {str(v1): 50.0, str(v2): 50.0}, "shadow": [v3], "sticky": True}
    ll.lake.create(HISTORY, HISTORY_COLUMNS, exist_ok=True)
    ll.lake.table(HISTORY).append(pd.DataFrame([{
        "at": pd.Timestamp.now(tz="UTC"), "model": "fraud", "action": "traffic", "detail": "{}",
        "state": json.dumps({"version": 1, "models": {"fraud": {"versions": versions, "policy": policy}}})}]))
    port = ll.config.serve.port
    before = set(spooled(ll))
    boot = bootstrap.start(ll, [])  # nothing named: the stored state alone
    try:
        first_answer(port, boot)
        keys = [f"customer-{i}" for i in range(12)]
        chosen = {}
        for key in keys * 2:
            status, raw, _ = predict(port, {"rows": [ROW], "routing_key": key})
            assert status == 200
            body = json.loads(raw)
            assert chosen.setdefault(key, body["version"]) == body["version"]  # sticky
            assert body["version"] == TrafficPolicy.from_dict(policy).choose(key)  # as the ingress routes it
    finally:
        summary = boot.stop()
    assert set(chosen.values()) == {v1, v2} and summary["models"] == {"fraud": [v1, v2, v3]}, (chosen, summary)
    records = {rid: r for rid, r in spooled(ll).items() if rid not in before}
    shadowed = [r for r in records.values() if {x["route"] for x in r} == {"primary", "shadow"}]
    assert len(shadowed) >= 24 and all({x["version"] for x in r if x["route"] == "shadow"} == {v3} for r in shadowed)
