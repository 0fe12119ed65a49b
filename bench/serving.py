"""Serving benchmark: lakeloop beside `mlflow models serve`, plain Ray Serve and a FastAPI floor, all up at once.

    .venv/bin/python bench/serving.py [--seconds 10] [--rounds 2] [--concurrency 1,8,32] [--json-out FILE]

One registered model (a scikit-learn HistGradientBoosting pipeline as an MLflow
pyfunc), the same one-row payload, loopback only. Every server is started
first and stays up (they share the machine the whole time); then each round
measures every (concurrency, server) point for ``seconds / rounds`` after a
warm-up, servers in a rotated order each round, so drift in the machine's load
spreads over all of them. Closed-loop load from wrk (one thread) when
installed, else a Python load generator (threads, keep-alive). Per point:
req/s (all requests / all time), p50 (median of the rounds' p50) and p99 (the
worst round's), errors (non-2xx and socket errors). Servers:

- ``lakeloop``: the defaults (``serve.mode: fast``, the version inside the ingress
  replica, batched; ``serve.ingress: haproxy``), started by ``lakeloop serve up``;
- ``lakeloop_split``: the same endpoint, another model with 90/10 split and a shadow;
- ``lakeloop_isolated``: ``serve.mode: isolated`` (one hop to the version's deployment);
- ``mlflow_models_serve``; ``ray_serve_proxy`` / ``ray_serve_haproxy``: one plain
  Serve deployment holding the model, behind Serve's Python proxy / HAProxy;
- ``fastapi_floor``: the model in a bare FastAPI + uvicorn process.

Also the start: ``lakeloop serve up -m bench`` and ``mlflow models serve`` are
started side by side, and the time to each one's first 200 is printed. ``serve
up`` answers first from its own process (its bootstrap server, while Ray and
Serve start): also printed are which answered the first 200, when Serve's
ingress answered ``/healthz`` (the port handed over), and whether the
bootstrap's answer and Serve's for the same row are equal. Before
them, a plain Ray Serve app (HAProxy, no dashboard) and another ``mlflow
models serve`` are started side by side the same way and stopped: the start of
Ray and Serve themselves, the floor under any Serve-based server's start.
Prints a table, the first error answer of any point that had errors (status and
body, from wrk), the ratios, the load average before and after, and JSON.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

from lakeloop.ports import free_port  # below the ephemeral range (lakeloop/ports.py)

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ROW = {"amount": 120.5, "hour": 3.0, "country": "BR", "merchant_risk": 0.7}
SERVERS = ("lakeloop", "lakeloop_split", "lakeloop_isolated", "mlflow_models_serve", "ray_serve_proxy",
           "ray_serve_haproxy", "fastapi_floor")

WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
local threads = {}
setup = function(thread) table.insert(threads, thread) end
first_error = ""
response = function(status, headers, body)
  if status > 399 and first_error == "" then first_error = status .. " " .. string.sub(body, 1, 300) end
end
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
                 + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %%d %%f %%f %%f %%d %%d %%d %%d %%d %%d\\n", summary.requests,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    summary.errors.status))
  for _, t in ipairs(threads) do
    local e = t:get("first_error")
    if e ~= nil and e ~= "" then io.write("FIRST_ERROR " .. string.gsub(e, "\\n", " ") .. "\\n") break end
  end
end
"""

FLOOR_APP = textwrap.dedent('''
    """The floor: the same pyfunc model in a bare FastAPI app, one process."""
    import os, mlflow.pyfunc, pandas as pd
    from fastapi import FastAPI, Request
    model = mlflow.pyfunc.load_model(os.environ["BENCH_MODEL_PATH"])
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request):
        body = await request.json()
        out = model.predict(pd.DataFrame(body["rows"]))
        return {"predictions": out.to_dict("records")}
''')

PLAIN_SERVE = textwrap.dedent('''
    """Plain Ray Serve: one deployment holding the model; HAProxy ingress when BENCH_HAPROXY=1."""
    import os, sys, time
    import mlflow.pyfunc, pandas as pd, ray
    from ray import serve
    from starlette.requests import Request
    from lakeloop.client import start_local_ray
    from lakeloop.serving.service import haproxy_env

    @serve.deployment(max_ongoing_requests=64)
    class Plain:
        def __init__(self, path):
            self.model = mlflow.pyfunc.load_model(path)

        async def __call__(self, request: Request):
            body = await request.json()
            return {"predictions": self.model.predict(pd.DataFrame(body["rows"])).to_dict("records")}

    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    env = haproxy_env("127.0.0.1") if os.environ.get("BENCH_HAPROXY") == "1" else None
    serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ["BENCH_PORT"])},
                controller_options={"runtime_env": {"env_vars": env}} if env else None)
    serve.run(Plain.bind(os.environ["BENCH_MODEL_PATH"]), name="plain", route_prefix="/predict")
    print("READY", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    node = ray.get_runtime_context().get_node_id()
    serve.shutdown()
    from lakeloop.serving.service import stop_node_haproxies
    stop_node_haproxies(node)  # a haproxy can outlive Serve: by PID
    ray.shutdown()
''')


def post_ok(url: str, body: bytes, timeout: float = 5) -> bool:
    try:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def wait_http(url: str, body: bytes, proc: subprocess.Popen | None = None, timeout: float = 300) -> float:
    """Poll until the URL answers 200; returns the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if post_ok(url, body):
            return time.monotonic()
        if proc is not None and proc.poll() is not None:
            log = getattr(proc, "log_path", None)
            tail = Path(log).read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}:\n{tail}")
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def register_model(ll) -> tuple[str, int, str, str]:
    """Train the benchmark's model and register it; returns (name, version, local path, model uri)."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    sys.path.insert(0, str(BENCH))
    from servable import HGBModel  # noqa: E402 - shipped beside this file (code_paths)

    rng = np.random.default_rng(0)
    n = 5000
    X = pd.DataFrame({"amount": rng.lognormal(4, 1, n), "hour": rng.integers(0, 24, n).astype(float),
                      "country": rng.choice(["US", "GB", "BR", "NG"], n), "merchant_risk": rng.random(n)})
    y = ((X["amount"] > 150) & (X["merchant_risk"] > 0.5) | (X["country"] == "NG")).astype(int)
    model = HGBModel.fit(X, y)
    mlflow.set_tracking_uri(ll.config.tracking_uri)
    mlflow.set_registry_uri(ll.config.registry_uri)
    with mlflow.start_run(experiment_id=ll.experiment_id()):
        info = mlflow.pyfunc.log_model(name="model", python_model=model, input_example=X.head(3),
                                       signature=infer_signature(X, model.predict(None, X.head(3))),
                                       code_paths=[str(BENCH / "servable.py")], registered_model_name="bench")
    local = mlflow.artifacts.download_artifacts(info.model_uri)
    return "bench", int(info.registered_model_version), local, info.model_uri


# -- load generators ---------------------------------------------------------------------
def run_wrk(url: str, body: dict, concurrency: int, seconds: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_LUA % json.dumps(body))
        script = fh.name
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                              "-s", script, url], capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(script)
    m = re.search(r"RESULT (\d+) ([\d.]+) ([\d.]+) ([\d.]+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out.stdout)
    if not m:
        raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")
    n, dur, p50, p99, errors, *kinds = m.groups()
    # errors.status is wrk's "Non-2xx or 3xx responses" (status > 399), already in `errors`: counted once
    kinds = dict(zip(("connect", "read", "write", "timeout", "http_4xx_5xx"), map(int, kinds)))
    first = re.search(r"^FIRST_ERROR (.*)$", out.stdout, re.M)  # the first 4xx/5xx answer: status and body
    return {"requests": int(n), "duration_s": float(dur), "p50_ms": float(p50), "p99_ms": float(p99),
            "errors": int(errors), "error_kinds": {k: v for k, v in kinds.items() if v},
            **({"first_error": first.group(1)[:300]} if first else {})}


def run_python(url: str, body: dict, concurrency: int, seconds: float) -> dict:
    """Closed loop: ``concurrency`` threads, each one keep-alive connection, one request at a time."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    data = json.dumps(body).encode()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds

    def worker():
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        mine, bad = [], 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                conn.request("POST", parts.path, body=data, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    mine.append((time.perf_counter() - t0) * 1000)
                else:
                    bad += 1
            except Exception:
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    duration = time.monotonic() - start
    latencies.sort()

    def pct(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {"requests": len(latencies) + errors[0], "duration_s": duration, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "errors": errors[0]}


def combine(rounds: list[dict]) -> dict:
    """One point from its rounds: all requests over all time; median p50; worst p99."""
    n = sum(r["requests"] for r in rounds)
    return {"rps": round(n / sum(r["duration_s"] for r in rounds), 1), "requests": n,
            "p50_ms": round(statistics.median(r["p50_ms"] for r in rounds), 2),
            "p99_ms": round(max(r["p99_ms"] for r in rounds), 2), "errors": sum(r["errors"] for r in rounds),
            "error_kinds": {k: sum(r.get("error_kinds", {}).get(k, 0) for r in rounds)
                            for k in sorted({k for r in rounds for k in r.get("error_kinds", {})})},
            **next(({"first_error": r["first_error"]} for r in rounds if r.get("first_error")), {})}


# -- servers -----------------------------------------------------------------------------
class Servers:
    """Every server as a subprocess in its own session (stopped by process group at the end)."""

    def __init__(self, tmp: str, env: dict):
        self.tmp, self.env = tmp, env
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], env: dict | None = None, stdin=None) -> subprocess.Popen:
        path = Path(self.tmp) / f"server{len(self.procs)}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(args, cwd=self.tmp, env={**self.env, **(env or {})}, start_new_session=True,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=stdin)
        proc.log_path = path
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """lakeloop: SIGINT (it stops what it started); plain Serve: stdin closed; others: SIGTERM to the group."""
        for proc in reversed(self.procs):
            self.stop_one(proc)

    def stop_one(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            if proc.stdin:
                proc.stdin.close()
            elif "lakeloop" in str(proc.args[0]):
                proc.send_signal(signal.SIGINT)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of its process group
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=30)


def lakeloop_env(lake: str, port: int, tracking: str, **extra) -> dict:
    env = {"LAKELOOP_LAKE_ROOT": lake, "LAKELOOP_SERVE_PORT": str(port), "LAKELOOP_MLFLOW_TRACKING_URI": tracking,
           "LAKELOOP_MLFLOW_REGISTRY_URI": tracking,
           "LAKELOOP_RAY_DASHBOARD_PORT": str(free_port())}  # its own Ray; everything else as by default
    return {**env, **{f"LAKELOOP_SERVE_{k.upper()}": str(v) for k, v in extra.items()}}


def post_json(url: str, body: dict, timeout: float = 10) -> tuple[dict, dict]:
    """One POST: the JSON answer and the headers (lower-case names)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read()), {k.lower(): v for k, v in r.headers.items()}


def side_by_side(servers: Servers, starts: dict) -> tuple[dict, dict]:
    """Start ``{key: (argv, env, stdin, url, body)}`` at once; returns each one's seconds to its first 200 (and
    ``"t0"``, the monotonic time they were started), and its process."""
    t0 = time.monotonic()
    procs = {key: servers.start(argv, env, stdin) for key, (argv, env, stdin, _, _) in starts.items()}
    done: dict = {}

    def first_200(key):
        url, body = starts[key][3:]
        done[key] = round(wait_http(url, json.dumps(body).encode(), procs[key]) - t0, 2)

    waits = [threading.Thread(target=first_200, args=(key,)) for key in starts]
    for t in waits:
        t.start()
    for t in waits:
        t.join()
    if set(done) != set(starts):
        raise RuntimeError(f"a server did not start: {done}")
    return {**done, "t0": t0}, procs


def wait_healthz(port: int, timeout: float = 300) -> float:
    """Poll until lakeloop's ingress answers ``/healthz`` 200 (its bootstrap server answers 503 there); returns
    the monotonic time it did. Only then is what a lakeloop server answers Serve's, and measured."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic()
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"lakeloop's ingress did not answer /healthz within {timeout} s")


def takeover(port: int, url: str, t0: float, timeout: float = 300) -> dict:
    """``serve up`` answers from its own process first (its bootstrap server) and then from Serve: the seconds
    to Serve's first ``/healthz`` 200, and whether the two answered the same row alike (every output column)."""
    first, headers = post_json(url, {"rows": [ROW]})
    serve_s = round(wait_healthz(port, timeout) - t0, 2)
    later, later_headers = post_json(url, {"rows": [ROW]})
    return {"lakeloop_first_200_from": "bootstrap" if headers.get("x-lakeloop-bootstrap") == "1" else "serve",
            "lakeloop_serve_healthz_s": serve_s,
            "later_answer_from": "bootstrap" if later_headers.get("x-lakeloop-bootstrap") == "1" else "serve",
            "same_answer_bootstrap_and_serve": first["predictions"] == later["predictions"]}


def start_all(servers: Servers, ll, name: str, version: int, split: list[int]) -> tuple[dict, dict]:
    """Every server up; returns {server: (url, body)} and the start times measured side by side."""
    from lakeloop.serving.service import admin_token, http_json

    tracking = ll.config.tracking_uri
    one = json.dumps({"rows": [ROW]}).encode()
    mlflow_body = {"dataframe_records": [ROW]}

    def mlflow_start(port: int) -> tuple:
        return ([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}/{version}", "--env-manager", "local",
                 "-h", "127.0.0.1", "-p", str(port)], None, None, f"http://127.0.0.1:{port}/invocations", mlflow_body)

    (Path(servers.tmp) / "plain_serve.py").write_text(PLAIN_SERVE)

    def plain_start(port: int, haproxy: str) -> tuple:
        return ([sys.executable, "plain_serve.py"], {"BENCH_PORT": str(port), "BENCH_HAPROXY": haproxy},
                subprocess.PIPE, f"http://127.0.0.1:{port}/predict", {"rows": [ROW]})

    # first a plain Ray Serve app (HAProxy, no dashboard) beside `mlflow models serve`, both stopped once they
    # answer: the start of Ray and Serve themselves, the floor under any Serve-based server's, on this machine
    done, procs = side_by_side(servers, {"ray_serve_haproxy": plain_start(free_port(), "1"),
                                         "mlflow_models_serve": mlflow_start(free_port())})
    for proc in procs.values():
        servers.stop_one(proc)
    plain = {"ray_serve_haproxy_s": done["ray_serve_haproxy"], "mlflow_models_serve_s": done["mlflow_models_serve"],
             "ratio": round(done["ray_serve_haproxy"] / done["mlflow_models_serve"], 3)}
    # then lakeloop (default) and mlflow models serve, the same way; these two stay up
    lake_port = free_port()
    lake_url = f"http://127.0.0.1:{lake_port}/v1/models/{name}/predict"
    starts = {"lakeloop": ([str(BIN / "lakeloop"), "serve", "up", "-m", name],
                           lakeloop_env(ll.config.lake.root, lake_port, tracking), None, lake_url, {"rows": [ROW]}),
              "mlflow_models_serve": mlflow_start(free_port())}
    done, _ = side_by_side(servers, starts)
    start = {"lakeloop_serve_up_s": done["lakeloop"], "mlflow_models_serve_s": done["mlflow_models_serve"],
             "ratio": round(done["lakeloop"] / done["mlflow_models_serve"], 3), "plain_ray_serve": plain}
    start.update(takeover(lake_port, lake_url, done["t0"]))
    urls: dict = {key: starts[key][3:] for key in starts}
    # the split: model "bench_split" (the same model, 3 versions) 90/10 with the third as a shadow
    base = f"http://127.0.0.1:{lake_port}/v1/admin/models/bench_split"
    token = admin_token(ll)
    for v, extra in ((split[0], {}), (split[1], {"weight": 10}), (split[2], {"shadow": True})):
        http_json("POST", f"{base}/deploy", {"version": v, **extra}, token=token, timeout=300)
    split_url = f"http://127.0.0.1:{lake_port}/v1/models/bench_split/predict"
    urls["lakeloop_split"] = (split_url, {"rows": [ROW]})
    # the other servers start one at a time, each once the one before answers: their start is not measured,
    # and four Rays starting at once on 2 cores once kept the isolated server's dashboard from starting
    # within Ray's 60 s (the server exited, its row missing from the run of 2026-12-01 10:50 UTC)
    def up(server: str, argv: list[str], env: dict | None, stdin, url: str, body: dict) -> None:
        urls[server] = (url, body)
        try:
            wait_http(url, json.dumps(body).encode(), servers.start(argv, env, stdin))
        except RuntimeError as exc:  # measured without it, and said so in the output
            print(f"{server} did not start: {exc}", file=sys.stderr)
            start.setdefault("did_not_start", {})[server] = str(exc)[-2000:]
            del urls[server]

    # isolated mode: another lake (its own Ray), the same MLflow store
    iso_port = free_port()
    up("lakeloop_isolated", [str(BIN / "lakeloop"), "serve", "up", "-m", name],
       lakeloop_env(f"{servers.tmp}/lake_isolated", iso_port, tracking, mode="isolated"), None,
       f"http://127.0.0.1:{iso_port}/v1/models/{name}/predict", {"rows": [ROW]})
    if "lakeloop_isolated" in urls:
        wait_healthz(iso_port)
    # plain Ray Serve, Python proxy and HAProxy
    up("ray_serve_proxy", *plain_start(free_port(), "0"))
    up("ray_serve_haproxy", *plain_start(free_port(), "1"))
    # the floor
    (Path(servers.tmp) / "floor_app.py").write_text(FLOOR_APP)
    floor_port = free_port()
    up("fastapi_floor", [str(BIN / "uvicorn"), "floor_app:app", "--host", "127.0.0.1", "--port", str(floor_port),
                         "--workers", "1", "--log-level", "warning"], None, None,
       f"http://127.0.0.1:{floor_port}/predict", {"rows": [ROW]})
    wait_http(split_url, one)
    return urls, start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="lakeloop serving benchmark (all servers up together)")
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per point (over all rounds)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds the seconds are split over")
    p.add_argument("--warmup", type=float, default=2, help="seconds of load before each point's first round")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    load = run_wrk if use_wrk else run_python

    import lakeloop

    results: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "machine": f"{os.cpu_count()} cores", "loadavg_before": os.getloadavg(),
                     "seconds_per_point": args.seconds, "rounds": args.rounds, "payload_rows": 1,
                     "loadgen": "wrk -t1" if use_wrk else "python threads", "points": {}}
    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-serving-") as tmp:
        ll = lakeloop.connect(lake_root=f"{tmp}/lake")
        name, version, local, uri = register_model(ll)
        import mlflow

        split = [int(mlflow.register_model(uri, "bench_split").version) for _ in range(3)]  # the same model
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAKELOOP_")}
        env.update({"PATH": f"{BIN}:{os.environ.get('PATH', '')}", "BENCH_MODEL_PATH": local,
                    # one OpenMP thread per server process, as Ray gives its workers: HGB's OpenMP threads
                    # spinning on a loaded 2-core box made the floor 5-50x slower than mlflow in one run
                    "OMP_NUM_THREADS": "1",
                    "MLFLOW_TRACKING_URI": ll.config.tracking_uri, "PYTHONPATH": str(BENCH)})
        servers = Servers(tmp, env)
        try:
            ll.models.promote(name, version, force=True)
            urls, results["start"] = start_all(servers, ll, name, version, split)
            print(f"start to first 200: {results['start']}", file=sys.stderr)
            runs: dict = {s: {c: [] for c in levels} for s in SERVERS}
            for r in range(args.rounds):
                for c in levels:
                    order = list(SERVERS[r % len(SERVERS):] + SERVERS[:r % len(SERVERS)])
                    for server in order:
                        if server not in urls:
                            continue
                        url, body = urls[server]
                        if r == 0:
                            load(url, body, c, args.warmup)
                        runs[server][c].append(load(url, body, c, args.seconds / args.rounds))
                        print(f"round {r} {server} c={c}: {runs[server][c][-1]}", file=sys.stderr)
            results["points"] = {s: {f"c{c}": combine(runs[s][c]) for c in levels} for s in SERVERS if s in urls}
        finally:
            servers.stop()
    results["loadavg_after"] = os.getloadavg()
    results["ratios"] = ratios(results["points"], levels)
    report(results, levels)
    print(json.dumps(results, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


def ratios(points: dict, levels: list[int]) -> dict:
    out = {}
    for c in levels:
        k = f"c{c}"
        rps = {s: points[s][k]["rps"] if s in points else None for s in SERVERS}
        out[k] = {f"{s}_vs_{base}": round(rps[s] / rps[b], 3) if rps[s] and rps[b] else None
                  for s in ("lakeloop", "lakeloop_split", "lakeloop_isolated")
                  for base, b in (("mlflow", "mlflow_models_serve"), ("floor", "fastapi_floor"))}
        floor_p50 = points["fastapi_floor"][k]["p50_ms"] if "fastapi_floor" in points else None
        for s in ("lakeloop", "lakeloop_split"):
            p50 = points[s][k]["p50_ms"]
            out[k][f"{s}_p50_vs_floor_p50"] = round(p50 / floor_p50, 3) if floor_p50 else None
    return out


def report(r: dict, levels: list[int]) -> None:
    print(f"serving one row, {r['loadgen']} closed loop, {r['seconds_per_point']} s per point over {r['rounds']} "
          f"alternating rounds, {r['machine']}, {r['date']}; load average before {r['loadavg_before']}, "
          f"after {r['loadavg_after']}")
    st = r["start"]
    print(f"start to first 200, side by side: lakeloop serve up {st['lakeloop_serve_up_s']} s (answered by its "
          f"{st['lakeloop_first_200_from']}), mlflow models serve {st['mlflow_models_serve_s']} s (ratio {st['ratio']}); "
          f"Serve's ingress answered /healthz at {st['lakeloop_serve_healthz_s']} s; bootstrap and Serve gave the "
          f"same answer: {st['same_answer_bootstrap_and_serve']}")
    plain = r["start"]["plain_ray_serve"]
    print(f"start to first 200, side by side (before the others): plain Ray Serve (HAProxy) "
          f"{plain['ray_serve_haproxy_s']} s, mlflow models serve {plain['mlflow_models_serve_s']} s "
          f"(ratio {plain['ratio']})")
    print(f"{'server':<22}{'c':>4}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for c in levels:
        for s in SERVERS:
            if s not in r["points"]:
                print(f"{s:<22}{c:>4}  did not start (see start.did_not_start in the JSON)")
                continue
            x = r["points"][s][f"c{c}"]
            print(f"{s:<22}{c:>4}{x['rps']:>10}{x['p50_ms']:>10}{x['p99_ms']:>10}{x['errors']:>8}")
    for s in SERVERS:
        for c in levels:
            first = r["points"].get(s, {}).get(f"c{c}", {}).get("first_error")
            if first:
                print(f"{s} c={c}: first error answer: {first}")
    for c in levels:
        print(f"c={c}: " + ", ".join(f"{k.replace('_vs_', '/')} {v}x" for k, v in r["ratios"][f"c{c}"].items()))


if __name__ == "__main__":
    sys.exit(main())
