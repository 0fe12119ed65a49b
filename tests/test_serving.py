"""Serving on Ray Serve over real HTTP: versions as deployments, traffic, shadow, validation, logging."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pandas as pd
import pytest

import lakeloop
from lakeloop.serving.service import admin_token
from shared_platform import FEEDBACK_TOKEN, MAX_BYTES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the first test starts the shared serving platform
ROW = {"amount": 150.0, "country": "US"}
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}


def call(port: int, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, {"raw": raw.decode(errors="replace")}


@pytest.fixture(scope="module")
def served(serve_platform):
    """`fraud` v1..v4 (v1..v3 deployed) on the platform shared with test_fuzz.py (tests/shared_platform.py)."""
    ll, versions, state = serve_platform
    assert not state["closed"], "the shared platform was stopped: its modules must run together (conftest)"
    return ll, versions


@pytest.fixture
def fraud(served):
    ll, versions = served
    ll.serving.traffic("fraud", {versions[0]: 100})
    return ll, versions


def post_predict(ll, body) -> tuple[int, dict]:
    return call(ll.config.serve.port, "POST", "/v1/models/fraud/predict", body)


def test_predict_answers_predictions_version_and_request_id(fraud):
    ll, (v1, *_) = fraud
    status, body = post_predict(ll, {"rows": [ROW, {"amount": 20.0, "country": "BR"}]})
    assert status == 200
    assert body["version"] == v1 and body["versions"] == [v1, v1] and len(body["request_id"]) >= 16
    assert [p["prediction"] for p in body["predictions"]] == [1, 0]
    assert call(ll.config.serve.port, "GET", "/v1/models")[1]["models"]["fraud"]["versions"]["1"]["in_process"] is True
    status, listing = call(ll.config.serve.port, "GET", "/v1/models")
    assert listing["models"]["fraud"]["traffic"] == {"1": 100.0, "2": 0.0, "3": 0.0}
    status, spec = call(ll.config.serve.port, "GET", "/openapi.json")
    assert status == 200 and "/v1/models/{name}/predict" in spec["paths"]
    assert call(ll.config.serve.port, "GET", "/docs")[0] == 200


@pytest.mark.parametrize("body, status, needle", [
    ({"rows": [{"country": "US"}]}, 422, "'amount' is missing"),
    ({"rows": [{**ROW, "colour": "red"}]}, 422, "unexpected field"),
    ({"rows": [{**ROW, "amount": "high"}]}, 422, "must be a number"),
    ({"rows": [{**ROW, "amount": None}]}, 422, "'amount' is null"),
    (b'{"rows": [{"amount": NaN, "country": "US"}]}', 422, "NaN"),
    ({"rows": []}, 422, "empty"),
    ({"rows": [ROW] * 51}, 413, "limit is 50"),
    ({"rows": [{**ROW, "country": "x" * (MAX_BYTES + 10_000)}]}, 413, "bytes"),
    (b'{"rows": [', 400, "not valid JSON"),
    ({"rows": "abc"}, 422, "must be a list"),
    ({"instances": [ROW]}, 422, '"rows"'),
    ({"rows": [ROW], "version": 99}, 404, "no served version"),
])
def test_bad_input_is_a_4xx_that_names_the_problem(fraud, body, status, needle):
    ll, _ = fraud
    got, answer = post_predict(ll, body)
    assert (got, needle in answer.get("error", "")) == (status, True), answer
    assert post_predict(ll, {"rows": [ROW]})[0] == 200, "the server keeps serving"


def test_unknown_model_is_404(fraud):
    ll, _ = fraud
    status, answer = call(ll.config.serve.port, "POST", "/v1/models/nope/predict", {"rows": [ROW]})
    assert status == 404 and "not served" in answer["error"]


def test_weighted_split_and_sticky_keys(fraud):
    ll, (v1, v2, *_) = fraud
    ll.serving.deploy("fraud", v2, weight=30)
    seen = {v1: 0, v2: 0}
    for _ in range(200):
        seen[post_predict(ll, {"rows": [ROW]})[1]["version"]] += 1
    assert 30 <= seen[v2] <= 95, seen  # 30% of 200, loosely
    for key in ("alice", "bob", "carol", "dave"):
        first = post_predict(ll, {"rows": [ROW], "routing_key": key})[1]["version"]
        assert all(post_predict(ll, {"rows": [ROW], "routing_key": key})[1]["version"] == first
                   for _ in range(10)), "same key, same version while the weights hold"


def test_shadow_gets_a_copy_never_answers_and_is_compared(fraud):
    ll, (v1, v2, *_) = fraud
    ll.serving.traffic("fraud", {v1: 100}, shadow=[v2])
    for _ in range(20):
        status, body = post_predict(ll, {"rows": [ROW]})
        assert status == 200 and body["version"] == v1
    deadline = time.monotonic() + 20
    while True:
        stats = call(ll.config.serve.port, "GET", "/v1/models")[1]["models"]["fraud"]["versions"][str(v2)]["shadow_stats"]
        if stats and stats["requests"] >= 20:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)
    assert stats["errors"] == 0, json.dumps(stats)
    assert stats["agreement_rate"] == 0.0  # v2 (threshold 200) says 0 where v1 says 1
    assert stats["mean_latency_ms"] > 0


def test_admin_endpoints_need_the_token(fraud):
    ll, (v1, v2, *_) = fraud
    port = ll.config.serve.port
    body = {"weights": {str(v1): 50, str(v2): 50}}
    assert call(port, "PUT", "/v1/admin/models/fraud/traffic", body)[0] == 401
    assert call(port, "PUT", "/v1/admin/models/fraud/traffic", body, {"Authorization": "Bearer wrong"})[0] == 401
    auth = {"Authorization": f"Bearer {admin_token(ll)}"}
    status, answer = call(port, "PUT", "/v1/admin/models/fraud/traffic", body, auth)
    assert status == 200 and answer["traffic"] == {str(v1): 50.0, str(v2): 50.0, "3": 0.0}
    status, answer = call(port, "PUT", "/v1/admin/models/fraud/traffic", {"weights": {"42": 100}}, auth)
    assert status == 400 and "not deployed" in answer["error"]
    assert call(port, "POST", "/v1/admin/models/nope/rollback", {}, auth)[0] == 404


def test_zero_failed_requests_through_deploy_traffic_promote_rollback(fraud):
    ll, (v1, _, _, v4) = fraud
    port = ll.config.serve.port
    stop = threading.Event()
    results = {"ok": 0, "failed": []}

    def load():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        deadline = time.monotonic() + 180
        while not stop.is_set() and time.monotonic() < deadline and results["ok"] < 20_000:
            try:
                conn.request("POST", "/v1/models/fraud/predict", body=json.dumps({"rows": [ROW]}),
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                if 200 <= r.status < 300:
                    results["ok"] += 1
                else:
                    results["failed"].append(r.status)
            except Exception as exc:  # a dropped connection counts as a failure
                results["failed"].append(repr(exc))
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(0.5)
        ll.serving.promote("fraud", v1, force=True)
        ll.serving.deploy("fraud", v4, weight=10)        # a new deployment while traffic flows
        ll.serving.traffic("fraud", {v1: 50, v4: 50})
        ll.serving.promote("fraud", v4, force=True)      # alias + 100%
        ll.serving.rollback("fraud")                     # back to v1
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert results["failed"] == [] and results["ok"] > 20, results
    assert int(ll.models.client.get_model_version_by_alias("fraud", "champion").version) == v1
    status = ll.serving.status()["models"]["fraud"]["policy"]["weights"]
    assert {int(k): v for k, v in status.items() if v > 0} == {v1: 100.0}


def test_every_prediction_is_logged_and_feedback_lands(fraud):
    ll, (v1, v2, *_) = fraud
    ll.serving.traffic("fraud", {v1: 100}, shadow=[v2])
    status, body = post_predict(ll, {"rows": [ROW, {"amount": 5.0, "country": "NG"}]})
    rid = body["request_id"]
    port = ll.config.serve.port
    assert call(port, "POST", "/v1/feedback", {"request_id": rid, "labels": [1, 0]}, FEEDBACK)[0] == 200
    assert call(port, "POST", "/v1/feedback", {"request_id": rid}, FEEDBACK)[0] == 400
    status, answer = call(port, "POST", "/v1/feedback", {"request_id": rid, "label": 0, "row": 1}, FEEDBACK)
    assert status == 409 and "/v1/feedback/correct" in answer["error"], answer  # once per row
    status, answer = call(port, "POST", "/v1/feedback", {"request_id": "f" * 32, "label": 1}, FEEDBACK)
    assert status == 404 and "not answered" in answer["error"], answer  # only served requests
    log = ll.lake.table("logs.inference")
    deadline = time.monotonic() + 30
    while True:
        df = log.to_pandas() if log.exists() else pd.DataFrame(columns=["request_id"])
        mine = df[df["request_id"] == rid]
        if len(mine) >= 4:
            break
        assert time.monotonic() < deadline, mine
        time.sleep(0.3)
    assert sorted(zip(mine["route"], mine["row"])) == [("primary", 0), ("primary", 1), ("shadow", 0), ("shadow", 1)]
    primary = mine[mine["route"] == "primary"].sort_values("row")
    assert json.loads(primary.iloc[1]["features"]) == {"amount": 5.0, "country": "NG"}
    assert primary["version"].tolist() == [v1, v1] and (primary["latency_ms"] > 0).all()
    fb = ll.lake.table("logs.feedback")
    deadline = time.monotonic() + 30
    while not (fb.exists() and len(fb.to_pandas().query("request_id == @rid")) == 2):
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_healthz_shows_the_replicas_side_of_the_inference_log(fraud):
    """What an operator watches before predictions are pushed back (503): rows spooled and not yet with the
    writer, against the limit. Each answer is one ingress replica's; one that served has shipped."""
    from lakeloop.serving.logbook import MAX_WAITING_ROWS

    ll, _ = fraud
    port = ll.config.serve.port
    for _ in range(6):
        assert post_predict(ll, {"rows": [ROW]})[0] == 200
    deadline = time.monotonic() + 30
    while True:
        status, health = call(port, "GET", "/healthz")
        assert status == 200 and health["status"] == "ok", health
        log = health["inference_log"]
        assert log["limit_rows"] == MAX_WAITING_ROWS and log["spooled_rows"] >= 0 and log["rejected_batches"] == 0
        if log["shipped_calls"] >= 1 and log["spooled_rows"] == 0 and log["waiting_rows"] == 0:
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.2)


def test_fuzzed_requests_never_get_a_5xx(fraud):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    ll, _ = fraud
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
    rows = st.lists(st.dictionaries(st.sampled_from(["amount", "country", "x", ""]), scalars, max_size=4),
                    max_size=4)
    bodies = st.one_of(
        st.fixed_dictionaries({"rows": rows}, optional={"routing_key": scalars, "version": scalars}),
        st.dictionaries(st.text(max_size=8), scalars, max_size=3),
        st.lists(scalars, max_size=3),
        scalars,
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies, st.sampled_from(["fraud", "nope"]))
    def check(body, model):
        status, answer = call(ll.config.serve.port, "POST", f"/v1/models/{model}/predict", body)
        assert status < 500, (body, status, answer)

    check()
    status, answer = call(ll.config.serve.port, "POST", "/v1/models/fraud/predict", b"\xff\xfe garbage")
    assert status == 400


def test_cli_changes_traffic_of_the_running_endpoint(fraud, lake_root):
    from conftest import run_cli

    ll, (v1, v2, *_) = fraud
    env = {"LAKELOOP_LAKE_ROOT": ll.config.lake.root, "LAKELOOP_SERVE_PORT": str(ll.config.serve.port)}
    out = json.loads(run_cli("serve", "traffic", "fraud", f"{v1}=80", f"{v2}=20", "--shadow", "3", "--json",
                             env=env).stdout)
    assert {k: v for k, v in out["traffic"].items() if v} == {str(v1): 80.0, str(v2): 20.0}
    assert out["shadow"] == [3]
    status = json.loads(run_cli("serve", "status", "--json", env=env).stdout)
    assert status["models"]["fraud"]["traffic"][str(v2)] == 20.0
    human = run_cli("serve", "status", env=env).stdout
    assert "served models" in human
    bad = run_cli("serve", "traffic", "fraud", "9=100", env=env, check=False)
    assert bad.returncode == 2 and "not deployed" in bad.stderr
    bad = run_cli("serve", "traffic", "fraud", "half", env=env, check=False)
    assert bad.returncode == 2 and "VERSION=WEIGHT" in bad.stderr


def test_per_version_metrics_reach_the_prometheus_endpoint(fraud):
    import ray

    ll, _ = fraud
    for _ in range(5):
        post_predict(ll, {"rows": [ROW]})
    post_predict(ll, {"rows": []})
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"  # loopback only
    deadline = time.monotonic() + 60
    while True:
        import urllib.request

        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        if "ray_lakeloop_predictions" in text and "ray_lakeloop_rejected_requests" in text:
            break
        assert time.monotonic() < deadline, "lakeloop metrics never appeared on the Prometheus endpoint"
        time.sleep(1)
    lines = [x for x in text.splitlines() if x.startswith("ray_lakeloop_predictions") and 'route="primary"' in x]
    assert any('model="fraud"' in x and 'version="1"' in x for x in lines), lines  # other tests' models too
    assert "ray_lakeloop_prediction_latency_ms_bucket" in text


def test_versions_deploy_by_alias_and_unknown_aliases_are_404(fraud):
    ll, (v1, v2, *_) = fraud
    ll.models.promote("fraud", v2, force=True)
    result = ll.serving.deploy("fraud", "champion")  # resolves the alias in the registry
    assert result["version"] == v2
    auth = {"Authorization": f"Bearer {admin_token(ll)}"}
    status, answer = call(ll.config.serve.port, "POST", "/v1/admin/models/fraud/deploy", {"alias": "nope"}, auth)
    assert status == 404 and "no version or alias 'nope'" in answer["error"]


def test_stored_traffic_is_validated_and_a_bad_row_is_reported_and_skipped(tmp_path):
    """A NaN weight persisted in serving.traffic is not served after a restart: the last valid entry is."""
    from lakeloop.monitoring import read_events
    from lakeloop.serving.controller import HISTORY, HISTORY_COLUMNS, ServingController

    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"))
    versions = {"1": {"uri": "models:/fraud/1"}, "2": {"uri": "models:/fraud/2"}}
    other = {"versions": {"1": {"uri": "models:/other/1"}}, "policy": {"weights": {"1": 100.0}}}
    good = {"version": 1, "models": {"fraud": {"versions": versions, "policy": {"weights": {"1": 90.0, "2": 10.0}}}}}
    bad = {"version": 2, "models": {"fraud": {"versions": versions, "policy": {"weights": {"1": float("nan")}}},
                                    "other": other}}
    now = pd.Timestamp.now(tz="UTC")
    ll.lake.create(HISTORY, HISTORY_COLUMNS).append(pd.DataFrame([
        {"at": now - pd.Timedelta(seconds=2), "model": "fraud", "action": "traffic", "detail": "{}",
         "state": json.dumps(good)},
        {"at": now - pd.Timedelta(seconds=1), "model": "fraud", "action": "traffic", "detail": "{}",
         "state": json.dumps(bad)},  # json writes NaN: what the old code stored
        {"at": now, "model": "junk", "action": "traffic", "detail": "{}", "state": "{not json"}]))
    controller = ServingController(ll.config.to_dict())  # the plain class: what the actor runs at start
    state = controller.status()
    assert state["models"]["fraud"]["policy"]["weights"] == {"1": 90.0, "2": 10.0}  # the last valid entry
    assert state["models"]["other"] == other  # the rest of the newest valid row is kept
    problems = {p["model"]: p["problem"] for p in state["skipped_history"]}
    assert "finite" in problems["fraud"] and "not JSON" in problems["junk"], problems
    alerts = read_events(ll, "fraud", kinds=["alert"])
    assert len(alerts) == 1 and "serving.traffic" in alerts.iloc[0]["reason"]


def test_an_ingress_replica_busy_loading_a_version_is_still_up_for_a_minute(tmp_path):
    """A replica does not poll the state while it loads a version (seconds; more on a busy machine): not
    live then, but recent, so a deploy keeps waiting for it instead of taking the ingress for down."""
    from lakeloop.serving.controller import REPLICA_RECENT_S, REPLICA_SEEN_S, ServingController

    controller = ServingController(lakeloop.connect(lake_root=str(tmp_path / "lake")).config.to_dict())
    version = controller.snapshot()["version"]
    controller.snapshot(version, "a")
    controller.snapshot(version - 1, "b")
    assert controller.serving(version) == {"serving": 1, "live": 2, "recent": 2}
    now = time.monotonic()
    controller.replicas["b"] = (version - 1, now - REPLICA_SEEN_S - 1)  # b is loading: no poll for a while
    assert controller.serving(version) == {"serving": 1, "live": 1, "recent": 2}
    controller.replicas["a"] = (version, now - REPLICA_SEEN_S - 1)
    assert controller.serving(version) == {"serving": 0, "live": 0, "recent": 2}  # both busy: still up
    controller.replicas["a"] = (version, now - REPLICA_RECENT_S - 1)  # a died a minute ago: forgotten
    assert controller.serving(version) == {"serving": 0, "live": 0, "recent": 1}
