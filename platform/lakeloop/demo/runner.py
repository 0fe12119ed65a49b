"""The demo: the whole loop on generated card transactions, on one machine, on embedded defaults.

1. **Data**: days of transactions (bad rows included) are ingested; bad rows go
   to quarantine with their rule; time travel and a profile (logged to MLflow).
2. **Features**: ``customer_stats`` and ``merchant_stats`` are applied and
   materialized on Ray Data; a point-in-time training frame is built.
3. **AutoML + registry**: Ray Tune searches linear and gradient-boosting
   models; the best is registered and made champion.
4. **Serving**: Ray Serve on loopback; requests carry a transaction's own
   signals and the customer and merchant ids (the rest comes from the online
   store); every answer is logged, every label fed back.
5. **Drift**: live traffic first looks like the training data, then drifts
   (bigger amounts, more foreign cards, and a new fraud pattern abroad). The
   drift monitor actor sees it, and after ``consecutive`` drifting windows
   its policy submits ``jobs/retrain.py`` as a Ray job.
6. **Retrain, canary, verdict**: the job materializes the new transactions,
   searches again (warm-started from the champion), gates, deploys the
   challenger as a canary and, once enough labels are in, promotes it or rolls
   it back on a two-proportion test. Traffic never stops meanwhile.

:func:`run` returns the summary (``lakeloop demo --json`` prints it).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakeloop.demo import scenario
from lakeloop.errors import LakeloopError

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop

TABLE = "raw.transactions"
MODEL = "fraud"
FEATURES = ["customer_stats:*", "merchant_stats:*"]
MARKER = "_demo/owned-by-lakeloop-demo"
REQUEST_FEATURES = ["customer_stats__log_amount", "customer_stats__is_night", "customer_stats__is_foreign"]
SETTLED = ("promoted", "rolled_back", "gate_failed", "retrain_failed")
# steps of the retrain job: each one restarts the wait for the loop to settle (a busy machine is slow, not stuck)
PROGRESS = ("retrain_submitted", "retrain_started", "materialized", "challenger_registered", "canary_started")
JOB_CHECK_S = 5.0  # how often the drift loop asks whether the retrain job still runs


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """Sizes and budgets of the demo; :data:`FAST` is the small variant CI runs."""

    days: int = 3  # days of history before the drift, one CSV file each
    rows_per_day: int = 3000
    seed: int = 7
    live_rows: int = 800  # live traffic before the drift
    drift_rows: int = 5000  # drifted traffic is generated in parts of this many rows until the loop settles
    after_rows: int = 400  # traffic after the verdict, to measure the champion then
    batch: int = 10  # rows per request
    rate: float = 60.0  # rows per second sent (2 cores also run serving, the monitor and the retrain job)
    ingest_every: int = 400  # labelled live transactions land in the lake in batches of this many
    window_rows: int = 200
    consecutive: int = 3
    budget_s: float = 20.0
    retrain_budget_s: float = 20.0
    families: tuple[str, ...] = ("linear", "hgb")
    canary_percent: float = 30.0
    min_labelled: int = 300
    train_rows: int = 2500
    # drifted traffic stops this long after the loop's last step if it has not settled, unless the retrain job
    # still runs: the job bounds its own steps (the search budget, the canary's decision_timeout_s)
    loop_timeout_s: float = 300.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["families"] = list(self.families)
        return d


FAST = DemoSettings(days=2, rows_per_day=1500, live_rows=300, after_rows=200, ingest_every=200,
                    window_rows=100, consecutive=2, budget_s=8.0, retrain_budget_s=8.0, canary_percent=50.0,
                    min_labelled=100, train_rows=1500)


class _Display:
    """Progress on the console (rich) or in Jupyter (HTML), or nothing for ``--json``."""

    def __init__(self, enabled: bool, steps: int):
        from lakeloop.display import ProgressBar  # rich in a terminal, an HTML bar in Jupyter

        self.enabled = enabled
        self.progress = ProgressBar("lakeloop demo", total=steps, enabled=True, stderr=False) if enabled else None

    def __enter__(self):
        return self.progress.__enter__() if self.progress else nullcontext().__enter__()

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc) if self.progress else None

    def step(self, description: str, info: str = "") -> None:
        if self.progress:
            self.progress.update(advance=1, description=description, info=info)

    def info(self, info: str) -> None:
        if self.progress:
            self.progress.update(info=info)

    def log(self, message: str) -> None:
        if self.progress:
            self.progress.print(message)


def _prepare_lake(ll: "Lakeloop") -> Path:
    """The demo's working dir in the lake; a lake the demo made before is reset, any other lake is refused."""
    root = Path(ll.lake.root)
    marker = root / MARKER
    kept = {"README.md"}  # the embedded lake's README stays
    if marker.exists():
        for child in root.iterdir():
            if child.name not in kept:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    elif root.exists() and any(p.name not in kept and (p.name != "mlflow.db" or p.stat().st_size)
                               for p in root.iterdir()):
        raise LakeloopError(f"the lake at {root} already holds data that the demo did not make; run the demo "
                            "on its own lake: lakeloop --lake DIR demo (or remove that directory)")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("this lake was made by `lakeloop demo`, which resets it on its next run\n")
    return marker.parent


def run(ll: "Lakeloop", settings: DemoSettings | None = None, *, progress: bool = True, keep: bool = False) -> dict:
    """Run the demo on ``ll`` (a local lake) and return its summary as plain data.

    ``keep`` leaves serving, the monitor and Ray running (until this process ends).
    """
    settings = settings or DemoSettings()
    if not ll.lake.is_local:
        raise LakeloopError("the demo runs on a local lake (it resets it between runs); use --lake DIR")
    started = time.perf_counter()
    work = _prepare_lake(ll)
    display = _Display(progress, steps=8)
    summary: dict[str, Any] = {"lake": ll.lake.root, "table": TABLE, "model": MODEL, "settings": settings.to_dict(),
                               "mlflow_tracking_uri": ll._tracking_repr()}  # never with its password
    clock = _Clock(settings)
    with display:
        summary.update(_data(ll, settings, work, clock, display))
        summary["features"] = _features(ll, display)
        summary["models"] = {"before": _train(ll, settings, display)}
        loop = _Loop(ll, settings, work, clock, display)
        try:
            loop.start()
            summary.update(loop.run())
        finally:
            summary["shutdown"] = loop.stop(keep=keep)
    summary["plot"], summary["demo_mlflow_run"] = loop.record(summary)
    after = summary.get("promoted_version") or summary["models"]["before"]["version"]
    summary["models"]["after"] = _model_summary(ll, after)
    summary["data_versions"] = _data_versions(ll, summary)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


class _Clock:
    """Where the generated days sit in time: history ends the day before yesterday; the live days follow."""

    def __init__(self, settings: DemoSettings):
        today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        self.start = today - timedelta(days=settings.days + 2)
        self.live_day = settings.days
        self.drift_day = settings.days + 1


# -- 1. data ---------------------------------------------------------------------------------------------
def _data(ll: "Lakeloop", s: DemoSettings, work: Path, clock: _Clock, display: _Display) -> dict:
    from lakeloop.lake.profile import log_to_mlflow

    lake = ll.lake
    ingests = []
    for day in range(s.days):
        rows = scenario.generate(s.rows_per_day, seed=s.seed, day=day, first_id=day * s.rows_per_day,
                                 start=clock.start)
        path = scenario.write_csv(rows, work / f"transactions_day{day}.csv")
        # genuine history: each transaction was known when it happened, so known-time frames use it
        result = lake.ingest(path, TABLE, rules=scenario.RULES_FILE, history="event_time")
        ingests.append({"file": str(path), **result.to_dict()})
        display.log(f"ingested {path.name}: {result.accepted} rows accepted, {result.quarantined} quarantined "
                    f"(version {result.version})")
    table = lake.table(TABLE)
    first = next(i["version"] for i in ingests if i["version"] is not None)
    latest = table.version()
    at_first = len(table.to_pandas(version=first, columns=["txn_id"]))
    at_latest = len(table.to_pandas(columns=["txn_id"]))
    quarantine = lake.table(ingests[0]["quarantine_table"]).to_pandas(columns=["_rule", "_batch_id"])
    batches = {i["batch_id"] for i in ingests}
    by_rule = (quarantine[quarantine["_batch_id"].isin(batches)]["_rule"]
               .str.split(", ").explode().value_counts().to_dict())
    prof = lake.profile(TABLE)
    profile_run = log_to_mlflow(ll, prof)
    accepted = sum(i["accepted"] for i in ingests)
    display.step("data", f"{accepted} rows in {TABLE} v{latest}, "
                         f"{sum(i['quarantined'] for i in ingests)} quarantined, profiled")
    return {
        "ingests": ingests, "accepted": accepted, "quarantined": sum(i["quarantined"] for i in ingests),
        "quarantined_by_rule": {k: int(v) for k, v in by_rule.items()},
        "time_travel": {"first_version": first, "rows_at_first": at_first, "latest_version": latest,
                        "rows_at_latest": at_latest},
        "profile": prof.to_dict(), "profile_mlflow_run": profile_run,
    }


# -- 2. features -------------------------------------------------------------------------------------------
def _features(ll: "Lakeloop", display: _Display) -> dict:
    ll.features.apply("lakeloop.demo.features:definitions")  # by reference: a Ray job can load them again
    out = {}
    for view in ("customer_stats", "merchant_stats"):
        result = ll.features.materialize(view)
        out[view] = {"mode": result.mode, "rows": result.rows_written, "table_version": result.table_version,
                     "source_version": result.source_version, "seconds": round(result.seconds, 2)}
    display.step("features", ", ".join(f"{v}: {o['rows']} rows" for v, o in out.items()) + " (Ray Data)")
    return out


# -- 3. AutoML and the registry ---------------------------------------------------------------------------------
def _train(ll: "Lakeloop", s: DemoSettings, display: _Display) -> dict:
    frame = ll.features.training_frame(TABLE, FEATURES, timestamp_column="event_time",
                                       full_feature_names=True)
    display.info(f"AutoML: {len(frame.data)} rows, {len(frame.features)} features, {s.budget_s:g} s on Ray Tune")
    # accuracy: the metric the monitor tracks on feedback and the canary is decided on
    result = ll.automl.run(frame, target="is_fraud", features=frame.features, families=list(s.families),
                           metric="accuracy", budget_s=s.budget_s, seed=s.seed, name=MODEL, progress=False)
    ll.models.promote(MODEL, result.model_version)
    info = _model_summary(ll, result.model_version)
    info.update(trials=result.trials, automl_run=result.run_id, frame_rows=len(frame.data))
    display.step("AutoML", f"v{result.model_version} ({info['family']}) champion, holdout "
                           f"{info['metric']} {info['score']:.4f} after {result.trials} trials")
    return info


def _model_summary(ll: "Lakeloop", version: int) -> dict:
    mv = ll.models.version(MODEL, version)
    spec = ll.models.spec(MODEL, version)
    tags = mv.tags or {}
    score = tags.get("lakeloop.gate.score")
    before = tags.get("lakeloop.gate.champion_score")  # the champion of the day on this version's holdout
    return {"version": int(version), "family": spec.family, "metric": tags.get("lakeloop.gate.metric", spec.metric),
            "score": float(score) if score else None,
            "previous_champion_score": float(before) if before else None, "run_id": mv.run_id,
            "aliases": list(getattr(mv, "aliases", []) or [])}


def _data_versions(ll: "Lakeloop", summary: dict) -> dict:
    out = {TABLE: {"after_history": summary["time_travel"]["latest_version"],
                   "latest": ll.lake.table(TABLE).version()}}
    for view in ("customer_stats", "merchant_stats"):
        out[f"features.{view}"] = {"after_history": summary["features"][view]["table_version"],
                                   "latest": ll.lake.table(f"features.{view}").version()}
    for name in ("logs.inference", "logs.feedback", "logs.events", "monitoring.windows"):
        table = ll.lake.table(name)
        out[name] = {"latest": table.version() if table.exists() else None}
    return out


# -- 4-6. serving, drift, the loop -------------------------------------------------------------------------------
class _Loop:
    """Serving, the monitor with its retrain trigger, and the traffic generator that drives them."""

    def __init__(self, ll: "Lakeloop", s: DemoSettings, work: Path, clock: _Clock, display: _Display):
        self.ll, self.s, self.work, self.clock, self.display = ll, s, work, clock, display
        self.requests = self.predictions = self.failed = self.rows = 0
        self.errors: list[str] = []
        self.by_version: Counter = Counter()
        self.phases: dict[str, dict] = {}
        self.pending: list[dict] = []  # labelled transactions not yet in the lake
        self.ingested = 0
        self.trace: list[tuple[float, int, int, int]] = []  # (seconds, version, rows, correct) per request
        self.seen_events: set[str] = set()
        self.events: list[dict] = []
        self.t0 = None
        self.started = False

    def start(self) -> None:
        from lakeloop import monitoring
        from lakeloop.monitoring import Policy
        from lakeloop.retrain import JobTrigger, RetrainSpec

        ll, s = self.ll, self.s
        self.url = ll.serving.up()
        self.started = True
        ll.serving.deploy(MODEL, "champion")
        self.champion = int(ll.models.version(MODEL, "champion").version)
        self.display.step("serving", f"{self.url}/v1/models/{MODEL}/predict -> v{self.champion} (100%)")
        spec = RetrainSpec(model=MODEL, train_rows=s.train_rows, families=s.families, budget_s=s.retrain_budget_s,
                           seed=s.seed + 1, canary_percent=s.canary_percent, min_labelled=s.min_labelled,
                           decision_timeout_s=s.loop_timeout_s)  # the gate times the challenger against the champion
        self.trigger = JobTrigger.for_lake(ll, spec)
        # the request's own signals: the online aggregates are only refreshed by materialization (the retrain
        # job's), so their latest-per-entity values differ from the training rows' by construction
        # one retrain per demo: with a 600 s cooldown, a run on a loaded machine (764 s) still had drifted traffic
        # when it ran out, and the monitor submitted a second retrain after the first one's promotion
        monitoring.start(ll, MODEL, window_rows=s.window_rows, poll_s=1.0, metric="accuracy", features=REQUEST_FEATURES,
                         policy=Policy(consecutive=s.consecutive, cooldown_s=3600.0), trigger=self.trigger)
        self.display.step("monitor", f"drift monitor on {MODEL}: windows of {s.window_rows} rows, retrain after "
                                     f"{s.consecutive} drifting windows in a row")
        known = ll.lake.table(TABLE).to_pandas(columns=["customer_id", "merchant_id"])
        self.known = {c: set(known[c]) for c in known.columns}
        self.t0 = datetime.now(timezone.utc)
        self.t0_mono = time.monotonic()

    # -- traffic ------------------------------------------------------------------------------------------------
    def _transactions(self, n: int, day: int, drift: float, first_id: int, seed_offset: int = 0) -> "pd.DataFrame":
        """A day of live transactions in random order (a window is a sample of the day, not its first hour),
        of customers and merchants the lake knows (an unknown one has no features: a 422)."""
        import pandas as pd

        rows = pd.DataFrame(scenario.generate(n, seed=self.s.seed + 100 * seed_offset, day=day, first_id=first_id,
                                              drift=drift,
                                              bad_fraction=0.0, start=self.clock.start))
        rows = rows[rows["customer_id"].isin(self.known["customer_id"])
                    & rows["merchant_id"].isin(self.known["merchant_id"])]
        return rows.sample(frac=1.0, random_state=self.s.seed + day).reset_index(drop=True)

    @staticmethod
    def _request_rows(batch: "pd.DataFrame") -> list[dict]:
        import pandas as pd

        from lakeloop.demo.features import transaction_signals

        df = transaction_signals(pd.DataFrame({"amount": batch["amount"].astype(float),
                                               "event_time": pd.to_datetime(batch["event_time"], utc=True),
                                               "country": batch["country"]}))
        return [{"customer_id": c, "merchant_id": m, "customer_stats__log_amount": float(la),
                 "customer_stats__is_night": float(n), "customer_stats__is_foreign": float(f)}
                for c, m, la, n, f in zip(batch["customer_id"], batch["merchant_id"], df["log_amount"],
                                          df["is_night"], df["is_foreign"])]

    def _send(self, batch: "pd.DataFrame", phase: str) -> None:
        from lakeloop.serving.service import http_json

        stats = self.phases.setdefault(phase, {"rows": 0, "correct": 0, "by_version": Counter(),
                                               "correct_by_version": Counter()})
        body = {"rows": self._request_rows(batch), "routing_key": str(batch["txn_id"].iloc[0])}
        self.requests += 1
        self.predictions += 1
        try:
            answer = http_json("POST", f"{self.url}/v1/models/{MODEL}/predict", body, timeout=30)
        except LakeloopError as exc:
            self.failed += 1
            self.errors.append(str(exc)[:300])
            return
        labels = [v == "true" for v in batch["is_fraud"]]
        version = int(answer["version"])
        predictions = [p.get("prediction") if isinstance(p, dict) else p for p in answer["predictions"]]
        correct = sum(bool(p) == y for p, y in zip(predictions, labels))
        self.rows += len(labels)
        self.by_version[version] += len(labels)
        stats["rows"] += len(labels)
        stats["correct"] += correct
        stats["by_version"][version] += len(labels)
        stats["correct_by_version"][version] += correct
        self.trace.append((time.monotonic(), version, len(labels), correct))
        self.requests += 1
        try:  # the label arrives (here at once); it joins the prediction by request id and row
            http_json("POST", f"{self.url}/v1/feedback", {"request_id": answer["request_id"], "labels": labels},
                      timeout=30)
        except LakeloopError as exc:
            self.failed += 1
            self.errors.append(str(exc)[:300])
        self.pending.extend(batch.to_dict(orient="records"))
        if len(self.pending) >= self.s.ingest_every:
            self._ingest()

    def _ingest(self) -> None:
        if not self.pending:
            return
        path = scenario.write_csv(self.pending, self.work / f"live_{self.ingested:07d}.csv")
        # served transactions were known when they were answered; they land in the lake in batches, later
        self.ll.lake.ingest(path, TABLE, rules=scenario.RULES_FILE, history="event_time")
        self.ingested += len(self.pending)
        self.pending = []

    def _stream(self, frame: "pd.DataFrame", phase: str, until=None) -> int:
        """Send ``frame`` in requests at the configured rate; stop early when ``until()`` is true."""
        sent = 0
        t_start = time.monotonic()
        for i in range(0, len(frame), self.s.batch):
            self._send(frame.iloc[i:i + self.s.batch], phase)
            sent += len(frame.iloc[i:i + self.s.batch])
            ahead = t_start + sent / self.s.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing the traffic generator, not waiting for a result
            if i // self.s.batch % 20 == 0:
                self._poll_events()
                self.display.info(self._status(phase))
            if until is not None and until():
                break
        return sent

    def _status(self, phase: str) -> str:
        st = self.phases.get(phase) or {}
        acc = st["correct"] / st["rows"] if st.get("rows") else float("nan")
        split = ", ".join(f"v{v}: {n}" for v, n in sorted((st.get("by_version") or {}).items()))
        return f"{phase}: {st.get('rows', 0)} rows ({split}), live accuracy {acc:.3f}, failed {self.failed}"

    # -- events ---------------------------------------------------------------------------------------------
    def _poll_events(self) -> None:
        from lakeloop.monitoring import events as ev

        frame = ev.read_events(self.ll, MODEL, since=self.t0)
        for e in reversed(ev.as_records(frame)):
            if e["event_id"] in self.seen_events:
                continue
            self.seen_events.add(e["event_id"])
            self.events.append(e)
            self.display.log(f"[cyan]event[/] {e['kind']}"
                             + (f" v{e['version']}" if e['version'] is not None else "") + f": {e['reason'][:200]}")

    def _submitted(self) -> list[str]:
        """The retrain jobs this demo's monitor submitted, oldest first (their submission ids)."""
        ids = [((e.get("details") or {}).get("result") or {}).get("submission_id") for e in self.events
               if e["kind"] == "retrain_submitted"]
        return [i for i in ids if i]

    def _jobs_client(self):
        """The job server's client, made once (the drift loop asks it every few seconds)."""
        if getattr(self, "_client", None) is None:
            self._client = self.trigger.client()
        return self._client

    def _job_running(self) -> bool | None:
        """Whether the newest retrain job this demo's monitor submitted has not ended yet; None when there is
        none, or its status could not be read (the job server busy: asked again later)."""
        ids = self._submitted()
        if not ids or getattr(self, "trigger", None) is None:
            return None
        try:
            return not self._jobs_client().get_job_status(ids[-1]).is_terminal()
        except Exception:  # any failure to ask is "unknown", never the end of the loop
            return None

    def _stop_jobs(self) -> bool:
        """Stop the retrain jobs the monitor submitted for this demo that still run (an interrupted demo's);
        False when there was none to stop."""
        if getattr(self, "trigger", None) is None:  # stopped before the monitor was started
            return False
        self._poll_events()
        stopped = False
        for job_id in self._submitted():
            client = self._jobs_client()
            if not client.get_job_status(job_id).is_terminal():
                client.stop_job(job_id)
                stopped = True
        return stopped

    def _first(self, kind: str) -> dict | None:
        return next((e for e in self.events if e["kind"] == kind), None)

    def _settled(self) -> bool:
        return any(e["kind"] in SETTLED for e in self.events)

    # -- the run --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        s = self.s
        live = self._transactions(s.live_rows, self.clock.live_day, 0.0, first_id=10_000_000)
        self._stream(live, "before drift")
        self.display.step("live traffic", self._status("before drift"))

        drift_at = self.drift_at = datetime.now(timezone.utc)
        self.drift_at_s = time.monotonic() - self.t0_mono
        drift_rows_before = self.rows
        part = 0
        drifted = self._transactions(s.drift_rows, self.clock.drift_day, 1.0, first_id=20_000_000)
        deadline = time.monotonic() + s.loop_timeout_s
        steps = 0
        sent = 0
        phase = "drift"
        next_check = 0.0
        while time.monotonic() < deadline and not self._settled():
            progress = sum(1 for e in self.events if e["kind"] in PROGRESS)
            if progress > steps:  # the retrain job moved on: it gets the full wait again (a loaded machine once
                steps = progress  # took 4 min to train with an 8 s search budget, and the traffic had stopped)
                deadline = time.monotonic() + s.loop_timeout_s
            if time.monotonic() >= next_check:  # a running job is waited for: it took 5 min 6 s to train and
                next_check = time.monotonic() + JOB_CHECK_S  # register once, 6 s past the wait above
                running = self._job_running()
                if running:
                    deadline = max(deadline, time.monotonic() + s.loop_timeout_s)
                elif running is False:  # it ended: its last events are in once polled
                    self._poll_events()
                    if not self._settled():
                        break
            if self._first("canary_started"):
                phase = "canary"
            if sent >= len(drifted):  # more of the same drifted day, as long as the loop needs traffic
                part += 1
                drifted = self._transactions(s.drift_rows, self.clock.drift_day, 1.0, seed_offset=part,
                                             first_id=20_000_000 + part * 1_000_000)
                sent = 0
            chunk = drifted.iloc[sent:sent + 100]
            sent += self._stream(chunk, phase, until=self._settled)
        self._poll_events()
        self.display.step("drift + retrain", self._status(phase))

        outcome = next((e for e in self.events if e["kind"] in SETTLED), None)
        rest = drifted.iloc[sent:sent + s.after_rows]
        if len(rest):
            self._stream(rest, "after verdict")
        self._ingest()
        self.display.step("after verdict", self._status("after verdict"))
        return self._summary(drift_at, drift_rows_before, outcome)

    def _summary(self, drift_at: datetime, drift_rows_before: int, outcome: dict | None) -> dict:
        detected = next((e for e in self.events if e["kind"] == "drift_detected"
                         and datetime.fromisoformat(e["time"]) >= drift_at), None)
        false_alarms = [e for e in self.events if e["kind"] == "drift_detected"
                        and datetime.fromisoformat(e["time"]) < drift_at]
        submitted = self._first("retrain_submitted")
        verdict = self._first("canary_verdict")
        job_id = ((submitted or {}).get("details") or {}).get("result", {})
        job_id = job_id.get("submission_id") if isinstance(job_id, dict) else None
        if outcome is None:  # not settled: its job waits for labels the demo no longer sends; stop it
            self._stop_jobs()
        job = self._job(job_id)
        promoted = outcome["version"] if outcome and outcome["kind"] == "promoted" else None
        phases = {name: {"rows": st["rows"], "accuracy": round(st["correct"] / st["rows"], 4) if st["rows"] else None,
                         "by_version": {f"v{v}": {"rows": n, "accuracy": round(st["correct_by_version"][v] / n, 4)}
                                        for v, n in sorted(st["by_version"].items())}}
                  for name, st in self.phases.items()}
        vd = ((verdict or {}).get("details") or {}).get("comparison") or {}
        decision = ((verdict or {}).get("details") or {}).get("decision")
        return {
            "endpoint": f"{self.url}/v1/models/{MODEL}/predict",
            "ray_dashboard": self.ll.dashboard_url,
            "mlflow_ui": "http://127.0.0.1:5000 (run: lakeloop ui)",
            "traffic": {"requests": self.requests, "predict_requests": self.predictions, "failed": self.failed,
                        "rows": self.rows,
                        "by_version": {f"v{v}": n for v, n in sorted(self.by_version.items())},
                        "errors": self.errors[:5], "live_rows_ingested": self.ingested},
            "phases": phases,
            "drift": {"injected_at": drift_at.isoformat(),
                      "detected_at": detected["time"] if detected else None,
                      "seconds_to_detect": _seconds(drift_at, detected),
                      "drifted": ((detected or {}).get("details") or {}).get("drifted"),
                      "rows_served_before_injection": drift_rows_before,
                      "windows_before_injection": drift_rows_before // self.s.window_rows,
                      "false_alarms_before_injection": len(false_alarms)},
            "retrain": {"job_id": job_id, "status": job.get("status"), "submitted_at": (submitted or {}).get("time"),
                        "reason": (submitted or {}).get("reason"), "log": job.get("log")},
            "canary": {"verdict": vd.get("verdict"), "decision": decision, "test": vd.get("test"),
                       "p_value": vd.get("p_value"), "champion_accuracy": vd.get("champion_value"),
                       "challenger_accuracy": vd.get("challenger_value"), "n_champion": vd.get("n_champion"),
                       "n_challenger": vd.get("n_challenger")},
            "outcome": outcome["kind"] if outcome else "not settled within the time limit",
            "outcome_reason": outcome["reason"] if outcome else None,
            "promoted_version": promoted,
            "events": [{"time": e["time"], "kind": e["kind"], "version": e["version"], "reason": e["reason"]}
                       for e in self.events],
        }

    def _job(self, job_id: str | None) -> dict:
        if not job_id:
            return {}
        client = self._jobs_client()
        # it ends right after its last event, but its exit (Ray shutdown, log flush) is slow on a busy machine
        deadline = time.monotonic() + 300
        status = client.get_job_status(job_id)
        while not status.is_terminal() and time.monotonic() < deadline:
            time.sleep(0.5)
            status = client.get_job_status(job_id)
        log = self.work / "retrain_job.log"
        log.write_text(client.get_job_logs(job_id))
        return {"status": str(status.value if hasattr(status, "value") else status), "log": str(log)}

    # -- the picture ---------------------------------------------------------------------------------------
    def plot(self, path: Path) -> Path | None:
        """Live accuracy per version over the run (rolling, by rows served) with the loop's events marked."""
        if not self.trace:
            return None
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        import numpy as np

        t = np.array([r[0] - self.t0_mono for r in self.trace])
        versions = np.array([r[1] for r in self.trace])
        rows = np.array([r[2] for r in self.trace], dtype=float)
        correct = np.array([r[3] for r in self.trace], dtype=float)
        fig, ax = plt.subplots(figsize=(10, 4.5))
        for v in sorted(set(versions)):
            mask = versions == v
            k = max(1, min(30, int(mask.sum()) // 4))  # rolling over k requests of this version
            acc = np.convolve(correct[mask], np.ones(k), "valid") / np.convolve(rows[mask], np.ones(k), "valid")
            ax.plot(t[mask][k - 1:], acc, label=f"v{v}", lw=1.8)
        marks = {"drift_detected": "drift detected", "retrain_submitted": "retrain job submitted",
                 "canary_started": "canary started", "promoted": "promoted", "rolled_back": "rolled back",
                 "gate_failed": "gate failed"}
        ax.axvline(self.drift_at_s, color="black", ls="--", lw=1)
        ax.text(self.drift_at_s, 0.02, " drift injected", rotation=90, va="bottom", fontsize=8)
        for kind, label in marks.items():
            e = next((e for e in self.events if e["kind"] == kind
                      and (kind != "drift_detected" or datetime.fromisoformat(e["time"]) >= self.drift_at)), None)
            if e:
                x = (datetime.fromisoformat(e["time"]) - self.t0).total_seconds()
                ax.axvline(x, color="grey", ls=":", lw=1)
                ax.text(x, 0.02, f" {label}", rotation=90, va="bottom", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("seconds since serving started")
        ax.set_ylabel("live accuracy (rolling, labelled feedback)")
        ax.set_title(f"lakeloop demo: {MODEL}, drift -> retrain -> canary -> verdict")
        ax.legend(loc="lower left")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def record(self, summary: dict) -> tuple[str | None, str | None]:
        """The plot, and one MLflow run with the demo's numbers, its summary and the plot."""
        path = self.plot(self.work / "loop.png")
        client = self.ll.mlflow
        run = client.create_run(self.ll.experiment_id(), run_name="demo-loop", tags={"lakeloop.kind": "demo"})
        rid = run.info.run_id
        metrics = {"requests": summary["traffic"]["requests"], "failed_requests": summary["traffic"]["failed"],
                   "seconds_to_detect_drift": summary["drift"]["seconds_to_detect"],
                   "canary_p_value": summary["canary"]["p_value"],
                   "canary_champion_accuracy": summary["canary"]["champion_accuracy"],
                   "canary_challenger_accuracy": summary["canary"]["challenger_accuracy"]}
        for name, phase in summary["phases"].items():
            metrics[f"live_accuracy_{name.replace(' ', '_')}"] = phase["accuracy"]
        for k, v in metrics.items():
            if v is not None:
                client.log_metric(rid, k, float(v))
        client.log_text(rid, json.dumps({k: v for k, v in summary.items() if k != "profile"}, indent=2, default=str),
                        "demo_summary.json")
        if path is not None:
            client.log_artifact(rid, str(path))
        client.set_terminated(rid, "FINISHED")
        return (str(path) if path else None), rid

    def stop(self, keep: bool) -> dict:
        """Stop what the demo started (monitor, a retrain job still running, serving, online store, Ray)
        unless ``keep``. On a cluster its actors and jobs would outlive the demo's process otherwise."""
        if keep or not self.started:
            return {"kept_running": keep}
        import ray

        from lakeloop import monitoring
        from lakeloop.features import online

        done = {}
        for name, fn in (("monitor", lambda: monitoring.stop(self.ll, MODEL)), ("retrain job", self._stop_jobs),
                         ("serving", self.ll.serving.down), ("online store", lambda: online.stop(self.ll))):
            try:
                if fn() is not False:
                    done[name] = "stopped"
            except Exception as exc:  # keep stopping the rest
                done[name] = f"{type(exc).__name__}: {exc}"[:200]
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        return done


def _seconds(since: datetime, event: dict | None) -> float | None:
    if not event:
        return None
    return round((datetime.fromisoformat(event["time"]) - since).total_seconds(), 1)

