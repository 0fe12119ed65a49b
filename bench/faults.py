"""Fault benchmark: serving under load while the log writer, an ingress replica and a model replica are killed.

    .venv/bin/python bench/faults.py [--threads 4] [--settle-s 4] [--json-out FILE]

One registered model (the serving benchmark's HistGradientBoosting pyfunc), two
replicas per model version and two ingress replicas, closed-loop load from
``--threads`` client threads on loopback (each: predict one row, then post a
label for every prediction answered 2xx), bounded in time. The run:

1. steady load (``--settle-s``): latency p50/p99 with durable logging;
2. ``ray.kill`` of the log writer actor (Ray restarts it);
3. ``ray.kill`` of one ingress replica (Serve replaces it);
4. ``ray.kill`` of one model replica (Serve replaces it);
5. load stops, ``ll.serving.down()`` (graceful), then ``logs.inference`` and
   ``logs.feedback`` are read back.

Prints, for the run and after each kill: requests sent, answered 2xx, failed
(by status), requests in flight at the kill, the longest time without a 2xx
answer after it, and log rows lost (answered 2xx, not in the log) and
duplicated (a request id, row and route more than once); JSON too. The
steady phase is the baseline for the latency ratio (p50 during the kills vs
steady). :func:`run_faults` is what ``tests/test_faults.py`` runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


class Load:
    """``threads`` client loops on loopback: predict, then a label for each prediction answered 2xx.

    Every request is recorded as ``(kind, start, end, status, retry_after, request_id, labels, error)``.
    Bounded: stops at :meth:`stop`, after ``max_s`` seconds, or after ``max_requests`` requests.
    """

    def __init__(self, port: int, model: str, row: dict, *, threads: int = 4, max_s: float = 300,
                 max_requests: int = 200_000, feedback: bool = True):
        self.port, self.model, self.row = port, model, row
        self.threads, self.max_s, self.max_requests, self.feedback = threads, max_s, max_requests, feedback
        self.events: list[tuple] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> "Load":
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, name=f"load-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=60)

    def _request(self, conn, path: str, body: dict) -> tuple[int | str, str | None, dict]:
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read()
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = {"raw": raw[:200].decode(errors="replace")}
            return r.status, r.getheader("Retry-After"), answer
        except (OSError, http.client.HTTPException) as exc:  # a dropped connection is a failed request
            return f"{type(exc).__name__}", None, {}

    def _loop(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        deadline = time.monotonic() + self.max_s
        while not self._stop.is_set() and time.monotonic() < deadline and len(self.events) < self.max_requests:
            t0 = time.monotonic()
            status, retry, answer = self._request(conn, f"/v1/models/{self.model}/predict", {"rows": [self.row]})
            t1 = time.monotonic()
            rid = answer.get("request_id") if isinstance(answer, dict) else None
            with self.lock:
                self.events.append(("predict", t0, t1, status, retry, rid if status == 200 else None, 0,
                                    None if status == 200 else str(answer)[:300]))
            if not isinstance(status, int):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                time.sleep(0.05)
                continue
            if status == 200 and self.feedback:
                pred = answer["predictions"][0].get("prediction")
                status, retry, answer = self._request(conn, "/v1/feedback", {"request_id": rid, "labels": [pred]})
                with self.lock:
                    self.events.append(("feedback", t1, time.monotonic(), status, retry, rid, 1,
                                        None if status == 200 else str(answer)[:300]))
                if not isinstance(status, int):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            elif status != 200:
                time.sleep(0.05)  # an error answer: do not spin
        conn.close()

    def snapshot(self) -> list[tuple]:
        with self.lock:
            return list(self.events)

    def wait_ok(self, after: float, count: int = 20, timeout_s: float = 120) -> None:
        """Until ``count`` predictions started after ``after`` were answered 2xx."""
        deadline = time.monotonic() + timeout_s
        while sum(1 for e in self.snapshot() if e[0] == "predict" and e[1] >= after and e[3] == 200) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"serving did not answer {count} requests within {timeout_s} s after a kill")
            time.sleep(0.1)


def replica_actors(app: str, deployment: str) -> list[str]:
    """Names of the live replica actors of ``app``'s ``deployment`` (namespace ``serve``)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith(prefix))


def kill_replica(app: str, deployment: str, wait_replicas: int = 2, timeout_s: float = 120) -> str:
    """``ray.kill`` one replica of a deployment (Serve starts another); returns its name."""
    import ray

    deadline = time.monotonic() + timeout_s
    while len(names := replica_actors(app, deployment)) < wait_replicas:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{app}/{deployment} has {names}, fewer than {wait_replicas} replicas")
        time.sleep(0.2)
    name = names[0]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return name


def kill_writer(ll) -> str:
    """``ray.kill`` the log writer actor; Ray restarts it (``max_restarts=-1``)."""
    import ray

    from lakeloop.serving.logbook import writer_name

    name = writer_name(ll.config.lake.root)
    ray.kill(ray.get_actor(name, namespace=ll.config.ray.namespace), no_restart=False)
    return name


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)


def after_kill(events: list[tuple], t_kill: float, t_next: float) -> dict:
    """What one kill cost: failures, requests in flight at the kill, and the longest time without a 2xx."""
    predicts = [e for e in events if e[0] == "predict"]
    in_flight = sum(1 for e in events if e[1] <= t_kill < e[2])
    window = [e for e in events if t_kill <= e[2] < t_next]
    failed = [e for e in window if e[3] != 200]
    oks = sorted(e[2] for e in predicts if e[3] == 200 and t_kill <= e[2] < t_next)
    marks = [t_kill, *oks]
    gap = max((b - a for a, b in zip(marks, marks[1:])), default=None)
    statuses: dict[str, int] = {}
    for e in failed:
        key = str(e[3]) + ("+Retry-After" if e[3] == 503 and e[4] else "")
        statuses[key] = statuses.get(key, 0) + 1
    return {"requests": len(window), "answered_2xx": len(window) - len(failed), "failed": len(failed),
            "failed_by_status": statuses, "in_flight_at_kill": in_flight,
            "max_gap_s": None if gap is None else round(gap, 3)}


def check_logs(ll, events: list[tuple]) -> dict:
    """Rows answered 2xx that are missing from the log, and rows logged more than once."""
    import pandas as pd

    from lakeloop.serving.logbook import FEEDBACK, INFERENCE

    inf = ll.lake.table(INFERENCE).to_pandas(columns=["request_id", "row", "route"])
    fb = ll.lake.table(FEEDBACK).to_pandas(columns=["request_id", "row"])
    ok_predictions = {e[5] for e in events if e[0] == "predict" and e[3] == 200}
    ok_feedback = {e[5] for e in events if e[0] == "feedback" and e[3] == 200}
    primary = inf[inf["route"] == "primary"]
    logged = set(primary["request_id"])
    labelled = set(fb["request_id"])
    dup_inf = int(inf.duplicated(["request_id", "row", "route"]).sum())
    dup_fb = int(fb.duplicated(["request_id", "row"]).sum())
    return {
        "predictions_answered_2xx": len(ok_predictions), "inference_rows": len(inf),
        "predictions_lost": len(ok_predictions - logged), "inference_duplicates": dup_inf,
        "feedback_answered_2xx": len(ok_feedback), "feedback_rows": len(fb),
        "feedback_lost": len(ok_feedback - labelled), "feedback_duplicates": dup_fb,
        "lost_examples": sorted(ok_predictions - logged)[:5] + sorted(ok_feedback - labelled)[:5],
        "inference_rows_not_answered_2xx": int((~primary["request_id"].isin(ok_predictions)).sum()),
        "columns_ok": bool(pd.api.types.is_string_dtype(inf["request_id"])),
    }


def run_faults(ll, model: str, version: int, row: dict, *, threads: int = 4, settle_s: float = 4.0,
               after_s: float = 4.0, kills: tuple[str, ...] = ("writer", "ingress", "model")) -> dict:
    """Serve ``model`` (already up), load it, kill each process in ``kills`` in turn, stop gracefully, check."""
    from lakeloop.serving.deployments import app_name
    from lakeloop.serving.service import INGRESS_APP

    load = Load(ll.config.serve.port, model, row, threads=threads).start()
    result: dict = {"threads": threads, "kills": {}}
    try:
        t_start = time.monotonic()
        load.wait_ok(t_start, count=20)
        t_steady = time.monotonic()
        time.sleep(settle_s)
        marks = []
        for what in kills:
            t_kill = time.monotonic()
            if what == "writer":
                killed = kill_writer(ll)
            elif what == "ingress":
                killed = kill_replica(INGRESS_APP, "Ingress", ll.config.serve.ingress_replicas)
            elif what == "model":
                killed = kill_replica(app_name(model, version), "ModelServer", ll.config.serve.replicas)
            else:
                raise ValueError(f"unknown kill {what!r}: writer, ingress or model")
            marks.append((what, killed, t_kill))
            load.wait_ok(t_kill, count=10)
            time.sleep(after_s)
    finally:
        load.stop()
    t_end = time.monotonic()
    events = load.snapshot()
    steady = [e[2] - e[1] for e in events if e[0] == "predict" and e[3] == 200 and t_steady <= e[1] < marks[0][2]] \
        if marks else []
    faulted = [e[2] - e[1] for e in events if e[0] == "predict" and e[3] == 200 and marks and e[1] >= marks[0][2]]
    for i, (what, killed, t_kill) in enumerate(marks):
        t_next = marks[i + 1][2] if i + 1 < len(marks) else t_end
        result["kills"][what] = {"actor": killed, "at_s": round(t_kill - t_steady, 3),
                                 **after_kill(events, t_kill, t_next)}
    t0 = time.monotonic()
    result["down"] = ll.serving.down()
    result["graceful_stop_s"] = round(time.monotonic() - t0, 2)
    warmup = [e for e in events if e[1] < t_steady]  # before both ingress replicas served the model
    counted = [e for e in events if e[1] >= t_steady]
    failed = [e for e in counted if e[3] != 200]
    result.update({
        "warmup_requests": len(warmup), "warmup_failed": sum(1 for e in warmup if e[3] != 200),
        "requests": len(counted), "predictions": sum(1 for e in counted if e[0] == "predict"),
        "feedback": sum(1 for e in counted if e[0] == "feedback"),
        "answered_2xx": len(counted) - len(failed), "failed": len(failed),
        "5xx_without_retry_after": sum(1 for e in failed if isinstance(e[3], int) and e[3] >= 500
                                       and not (e[3] == 503 and e[4])),
        "duration_s": round(t_end - t_steady, 2),
        "steady_p50_ms": _pct(steady, 0.5), "steady_p99_ms": _pct(steady, 0.99),
        "faulted_p50_ms": _pct(faulted, 0.5), "faulted_p99_ms": _pct(faulted, 0.99),
        "log": check_logs(ll, events),
    })
    result["events"] = events
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="lakeloop fault benchmark: kills under load, exactly-once logs")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--settle-s", type=float, default=4.0)
    p.add_argument("--after-s", type=float, default=4.0)
    p.add_argument("--json-out")
    args = p.parse_args(argv)

    import ray
    from ray import serve

    import lakeloop

    sys.path.insert(0, str(BENCH))
    from serving import ROW, free_port, register_model  # noqa: E402 - the serving benchmark's model

    root = Path(tempfile.mkdtemp(prefix="lakeloop-faults-")) / "lake"
    ll = lakeloop.connect(lake_root=str(root), serve_port=free_port(), serve_replicas=2, serve_ingress_replicas=2,
                          ray_namespace="bench-faults")
    ll.ensure_ray()  # this lake's local Ray, on loopback
    try:
        name, version, *_ = register_model(ll)  # (name, version, local path, model uri)
        ll.serving.up()
        ll.serving.deploy(name, version)
        out = run_faults(ll, name, version, ROW, threads=args.threads, settle_s=args.settle_s, after_s=args.after_s)
    finally:
        serve.shutdown()
        ray.shutdown()
    events = out.pop("events")
    out["machine"] = f"{os.cpu_count()} cores"
    log = out["log"]
    print(f"requests sent {out['requests']} ({out['predictions']} predict, {out['feedback']} feedback) in "
          f"{out['duration_s']} s, {args.threads} threads; answered 2xx {out['answered_2xx']}, failed {out['failed']}, "
          f"5xx without Retry-After {out['5xx_without_retry_after']}")
    print(f"{'kill':<8} {'requests':>8} {'failed':>6} {'in flight':>9} {'max gap s':>9}  failed by status")
    for what, k in out["kills"].items():
        print(f"{what:<8} {k['requests']:>8} {k['failed']:>6} {k['in_flight_at_kill']:>9} {k['max_gap_s']!s:>9}  "
              f"{k['failed_by_status']}")
    print(f"log: predictions answered 2xx {log['predictions_answered_2xx']}, lost {log['predictions_lost']}, "
          f"duplicated {log['inference_duplicates']}; feedback answered 2xx {log['feedback_answered_2xx']}, "
          f"lost {log['feedback_lost']}, duplicated {log['feedback_duplicates']}")
    ratio = (out["faulted_p50_ms"] / out["steady_p50_ms"]) if out["steady_p50_ms"] and out["faulted_p50_ms"] else None
    print(f"latency p50 steady {out['steady_p50_ms']} ms, during kills {out['faulted_p50_ms']} ms "
          f"(ratio {ratio and round(ratio, 2)}); graceful stop {out['graceful_stop_s']} s")
    out["p50_ratio_kills_vs_steady"] = ratio and round(ratio, 3)
    print(json.dumps(out, default=str))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({**out, "events": events}, default=str))
    return 0 if not (log["predictions_lost"] or log["inference_duplicates"] or log["feedback_lost"]
                     or log["feedback_duplicates"]) else 1


if __name__ == "__main__":
    sys.exit(main())
