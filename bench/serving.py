"""Serving benchmark: lakeloop's endpoint beside a FastAPI+uvicorn floor and `mlflow models serve`.

    .venv/bin/python bench/serving.py [--seconds 10] [--concurrency 1,8]

One registered model (a scikit-learn HistGradientBoosting pipeline as an MLflow
pyfunc), the same one-row payload, closed-loop load from wrk (Debian package
``wrk``; one wrk thread so the load generator leaves the servers a core), on
loopback only, bounded in time. For each server and concurrency: requests/s,
p50/p95/p99 latency, non-2xx/socket errors, and ratios of lakeloop to (b) the
floor and (c) mlflow. lakeloop runs twice: versions in their own deployments (the
default: proxy -> ingress -> version), and ``serve.in_process`` (the ingress answers
from its own copy: one hop less). Prints a table and JSON (``--json-out FILE`` too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ROW = {"amount": 120.5, "hour": 3.0, "country": "BR", "merchant_risk": 0.7}

WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
                 + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %%d %%f %%f %%f %%f %%d\\n", summary.requests,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, errors))
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, body: bytes, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def register_model(ll) -> tuple[str, int, str]:
    """Train the benchmark's model and register it; returns (name, version, local path)."""
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
    return "bench", int(info.registered_model_version), local


def run_wrk(url: str, body: dict, concurrency: int, seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_LUA % json.dumps(body))
        script = fh.name
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", script, url],
                         capture_output=True, text=True, timeout=seconds + 60)
    os.unlink(script)
    m = re.search(r"RESULT (\d+) ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", out.stdout)
    if not m:
        raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")
    n, dur, p50, p95, p99, errors = m.groups()
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    return {"requests": int(n), "rps": round(int(n) / float(dur), 1), "p50_ms": round(float(p50), 2),
            "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2),
            "errors": int(errors) + (int(non2xx.group(1)) if non2xx else 0)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="lakeloop serving benchmark")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]

    import lakeloop

    results: dict = {"machine": f"{os.cpu_count()} cores", "seconds": args.seconds, "payload_rows": 1}
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-serving-") as tmp:
        ll = lakeloop.connect(lake_root=f"{tmp}/lake", serve_port=free_port())
        name, version, local = register_model(ll)
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "BENCH_MODEL_PATH": local,
               "MLFLOW_TRACKING_URI": ll.config.tracking_uri, "PYTHONPATH": str(BENCH)}
        try:
            servers = {}
            # (b) the floor
            (Path(tmp) / "floor_app.py").write_text(FLOOR_APP)
            floor_port = free_port()
            procs.append(subprocess.Popen([str(BIN / "uvicorn"), "floor_app:app", "--host", "127.0.0.1", "--port",
                                           str(floor_port), "--workers", "1", "--log-level", "warning"],
                                          cwd=tmp, env=env, start_new_session=True))
            servers["fastapi_floor"] = (f"http://127.0.0.1:{floor_port}/predict", {"rows": [ROW]})
            # (c) mlflow models serve
            mlflow_port = free_port()
            procs.append(subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}/{version}",
                                           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port)],
                                          cwd=tmp, env=env, start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            servers["mlflow_models_serve"] = (f"http://127.0.0.1:{mlflow_port}/invocations",
                                              {"dataframe_records": [ROW]})
            for url, body in servers.values():
                wait_http(url, json.dumps(body).encode())

            def measure(server, url, body):
                results[server] = {}
                for c in levels:
                    run_wrk(url, body, c, 2)  # warm-up
                    results[server][f"c{c}"] = run_wrk(url, body, c, args.seconds)
                    print(f"{server} c={c}: {results[server][f'c{c}']}", file=sys.stderr)

            for server, (url, body) in servers.items():
                measure(server, url, body)
            # (a) lakeloop: the version in its own deployment (the default), then in-process in the ingress
            for server, in_process in (("lakeloop", False), ("lakeloop_in_process", True)):
                ll = lakeloop.connect(lake_root=f"{tmp}/lake", serve_port=ll.config.serve.port,
                                      serve_in_process=in_process)
                ll.serving.up()
                ll.serving.deploy(name, version)
                url = f"{ll.serving.url}/v1/models/{name}/predict"
                wait_http(url, json.dumps({"rows": [ROW]}).encode())
                measure(server, url, {"rows": [ROW]})
                ll.serving.down()
            results["ratios"] = {f"c{c}": {
                f"{server}_vs_{base}": round(results[server][f"c{c}"]["rps"] / results[b][f"c{c}"]["rps"], 3)
                for server in ("lakeloop", "lakeloop_in_process")
                for base, b in (("floor", "fastapi_floor"), ("mlflow", "mlflow_models_serve"))} for c in levels}
        finally:
            for proc in procs:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, signal.SIGKILL)
            import ray
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
    report(results, levels)
    print(json.dumps(results, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


def report(r: dict, levels: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"serving one row, wrk closed loop, {r['seconds']} s each ({r['machine']})")
    for c in ("server", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"):
        t.add_column(c)
    for server in ("lakeloop", "lakeloop_in_process", "fastapi_floor", "mlflow_models_serve"):
        for c in levels:
            x = r[server][f"c{c}"]
            t.add_row(server, str(c), str(x["rps"]), str(x["p50_ms"]), str(x["p95_ms"]), str(x["p99_ms"]),
                      str(x["errors"]))
    Console().print(t)
    for c in levels:
        Console().print(f"c={c}: " + ", ".join(f"{k.replace('_vs_', '/')} {v}x" for k, v in r["ratios"][f"c{c}"].items()))


if __name__ == "__main__":
    sys.exit(main())
