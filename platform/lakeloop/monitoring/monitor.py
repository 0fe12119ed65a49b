"""Drift monitors: one detached, restartable Ray actor per served model.

A monitor reads its model's new ``logs.inference`` rows (route ``primary``)
by Delta version (:mod:`lakeloop.monitoring.stream`), cuts them into windows
of ``window_rows`` rows per served version, and for each window:

1. parses the served features and outputs (rows it cannot use are counted
   as ``bad_rows``, named in an ``alert`` and skipped: :mod:`lakeloop.monitoring.rows`)
   and tests them against the version's reference (its training rows,
   :mod:`lakeloop.monitoring.reference`) and the version's outputs on them
   (prediction drift);
2. scores the live metric over the last windows that have ``logs.feedback`` labels,
   and estimates it without labels (CBPE or DLE learnt on the version's labelled
   holdout, :mod:`lakeloop.monitoring.performance`);
3. asks the :class:`~lakeloop.monitoring.policy.Policy` whether to fire;
4. appends one row to ``monitoring.windows``: the results, the cursor of
   every stream after this window and the policy state, in one Delta commit.
   That commit is the window's checkpoint: a monitor killed before it redoes
   the window, one killed after it resumes after it, so no row is skipped or
   counted twice;
5. then reports: Ray gauges, MLflow metrics (one run per monitor, step = the
   window index) and report PNGs, events in ``logs.events`` (with the
   webhook), and the retrain trigger when the policy fired.

A window that raises for another reason is tried ``window_attempts`` times,
then recorded as failed (counted, untested, an ``alert``), so it never holds
the cursor forever.

Events of the last window that a crash kept from ``logs.events`` are written
on restart (by event id). A trigger is called at most once: a crash between
the checkpoint and the call records an ``alert`` instead of calling again.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import traceback
from collections import deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from lakeloop.errors import LakeloopError
from lakeloop.monitoring import events as ev
from lakeloop.monitoring.detectors import DriftDetector
from lakeloop.monitoring.metric import default_metric, read_feedback, score
from lakeloop.monitoring.policy import Policy
from lakeloop.monitoring.reference import labelled_reference, output_frame, predictions_for, reference_for
from lakeloop.monitoring.report import safe_name
from lakeloop.monitoring.settings import MonitorSettings
from lakeloop.monitoring.stream import INFERENCE, InferenceStream

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop

WINDOWS = "monitoring.windows"
WINDOW_COLUMNS = {
    "model": {"type": "string", "required": True}, "window": "int64", "version": "int64", "version_window": "int64",
    "rows": "int64", "first_commit": "int64", "first_offset": "int64", "next_commit": "int64",
    "next_offset": "int64", "read_to": "int64", "cursors": "string", "start_time": "timestamp",
    "end_time": "timestamp", "processed_at": "timestamp", "drift": "bool", "prediction_drift": "bool",
    "min_p_value": "float64", "mmd_distance": "float64", "mmd_p_value": "float64", "drifted": "string",
    "metric": "string", "metric_value": "float64", "labelled": "int64", "result": "string",
    "prediction": "string", "policy": "string", "events": "string", "backend": "string", "run_id": "string",
    "bad_rows": "int64", "estimated_value": "float64", "estimate": "string",
}
REFERENCE_DIR = "reference"
BAD_ROW_EXAMPLES = 3
_ESTIMATED = ("accuracy", "roc_auc", "mae", "rmse")


def ensure_windows_table(ll: "Lakeloop"):
    """``monitoring.windows``, made if new; a table from before a column was added gets it (rows kept)."""
    from lakeloop.lake.schema import TableSchema

    table = ll.lake.create(WINDOWS, WINDOW_COLUMNS, exist_ok=True,
                           description="drift monitor windows: results, cursor and policy state")
    missing = [c for c in WINDOW_COLUMNS if c not in table.schema.names]
    if missing:  # an older lake: the new columns are null for the windows written before them
        table.overwrite(table.to_arrow(), schema=TableSchema.build(WINDOW_COLUMNS))
    return table


def monitor_name(lake_root: str, model: str) -> str:
    """The actor name of a model's monitor in one lake."""
    digest = hashlib.sha256(f"{lake_root}\0{model}".encode()).hexdigest()[:10]
    return f"lakeloop-monitor-{safe_name(model)[:40]}-{digest}"


def _json(text, default=None):
    if text is None or (isinstance(text, float) and text != text):
        return default
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


class Monitor:
    """The body of a monitor actor (also usable in-process, with ``autostart=False``, for tests and jobs)."""

    def __init__(self, config: dict, model: str, settings: dict, policy: dict, run_id: str, start_version: int = 0,
                 trigger: Callable[[dict], Any] | None = None, autostart: bool = True):
        import lakeloop

        self.ll = lakeloop.connect(config)
        self.model = model
        self.settings = MonitorSettings.from_dict(settings)
        self.policy = Policy.from_dict(policy)
        self.run_id = run_id
        self.trigger = trigger
        self.name = monitor_name(self.ll.config.lake.root, model)
        self.lock = threading.RLock()
        self.detectors: dict[int, DriftDetector | str] = {}
        self.output_detectors: dict[int, DriftDetector | None] = {}
        self.tasks: dict[int, str] = {}
        self.baselines: dict[int, float | None] = {}
        self.recent: dict[int, deque] = {}
        self.errors: deque = deque(maxlen=10)
        self.started_at = time.time()
        self.windows_this_run = 0
        self.last_webhook: dict | None = None
        self.estimators: dict[int, Any] = {}
        self.attempts: dict[tuple, int] = {}
        self.table = ensure_windows_table(self.ll)
        ev.ensure_table(self.ll)
        self._gauges()
        last = self._load_state()
        self.stream = InferenceStream(self.ll.lake.table(INFERENCE), model, self.settings.route,
                                      start_version=start_version, cursors=self.cursors, read_to=self.read_to)
        if last is not None:
            self._recover(last)
        self._stop = threading.Event()
        self._thread = None
        if autostart:
            self._thread = threading.Thread(target=self._loop, name="lakeloop-monitor", daemon=True)
            self._thread.start()

    # -- state -------------------------------------------------------------------------
    def _load_state(self) -> dict | None:
        done = self.table.to_pandas(columns=["window", "version", "version_window", "rows", "cursors", "read_to",
                                             "policy", "events"], filters=[("model", "=", self.model)])
        self.next_window = 0
        self.version_windows: dict[int, int] = {}
        self.drift_streak: dict[int, int] = {}  # version -> drifting windows in a row (this run), for report_every
        self.rows_counted = 0
        self.cursors, self.read_to = {}, None
        self.policy_state = Policy.initial_state()
        if done.empty:
            return None
        done = done.sort_values("window")
        last = done.iloc[-1].to_dict()
        self.next_window = int(last["window"]) + 1
        self.version_windows = {int(v): int(w) + 1 for v, w in done.groupby("version")["version_window"].max().items()}
        self.rows_counted = int(done["rows"].sum())
        self.cursors = _json(last["cursors"], {})
        self.read_to = int(last["read_to"])
        self.policy_state = (_json(last["policy"], {}) or {}).get("state") or Policy.initial_state()
        return last

    def _recover(self, last: dict) -> None:
        """Write the last window's events that a crash kept out of ``logs.events``."""
        planned = _json(last.get("events"), []) or []
        have = ev.existing_ids(self.ll, [e["event_id"] for e in planned])
        missing = [{**e, "time": datetime.fromisoformat(e["time"])} for e in planned if e["event_id"] not in have]
        decision = (_json(last.get("policy"), {}) or {}).get("decision") or {}
        window = int(last["window"])
        if decision.get("trigger") and self.trigger is not None:
            submitted = f"{self.model}:{window}:retrain_submitted"
            if submitted not in ev.existing_ids(self.ll, [submitted]):
                missing.append(ev.make_event(
                    "alert", self.model, version=int(last["version"]), source=self.name,
                    event_id=f"{self.model}:{window}:alert:interrupted",
                    reason=f"the monitor restarted before the retrain trigger of window {window} was confirmed; "
                           "it is not called again (check whether a retrain started)"))
                self.policy_state["in_flight"] = None
        if missing:
            ev.append(self.ll, missing)

    # -- metrics -----------------------------------------------------------------------
    def _gauges(self) -> None:
        self.gauges = None
        try:
            from ray.util import metrics

            self.gauges = {
                "p_value": metrics.Gauge("lakeloop_drift_p_value", "p-value of a feature's drift test in the last "
                                         "window", tag_keys=("model", "version", "feature")),
                "drift": metrics.Gauge("lakeloop_drift_detected", "1 if the last window drifted (kind: data or "
                                       "prediction)", tag_keys=("model", "version", "kind")),
                "mmd": metrics.Gauge("lakeloop_drift_mmd_distance", "MMD^2 of the last window against the reference",
                                     tag_keys=("model", "version")),
                "mmd_p": metrics.Gauge("lakeloop_drift_mmd_p_value", "MMD permutation p-value of the last window",
                                       tag_keys=("model", "version")),
                "metric": metrics.Gauge("lakeloop_live_metric", "live metric from feedback labels",
                                        tag_keys=("model", "version", "metric")),
                "estimated": metrics.Gauge("lakeloop_estimated_metric", "metric estimated without labels (CBPE for "
                                           "classifiers, DLE for regressors) on the last window",
                                           tag_keys=("model", "version", "metric")),
                "bad_rows": metrics.Gauge("lakeloop_monitor_bad_rows", "logged rows of the last window that could "
                                          "not be used", tag_keys=("model", "version")),
                "windows": metrics.Gauge("lakeloop_monitor_windows", "windows processed", tag_keys=("model",)),
            }
        except Exception as exc:  # no Ray worker context (in-process use): gauges are skipped
            self.errors.append(f"Ray metrics unavailable: {exc}")

    def _set_gauges(self, version: int, result: dict | None, prediction: dict | None, metric, value,
                    estimate: dict | None = None, bad_rows: int = 0) -> None:
        if not self.gauges:
            return
        base = {"model": self.model, "version": str(version)}
        if result:
            for f, e in result["features"].items():
                if e["p_value"] is not None:
                    self.gauges["p_value"].set(e["p_value"], tags={**base, "feature": f})
            self.gauges["drift"].set(float(result["drift"]), tags={**base, "kind": "data"})
            if result.get("mmd") and result["mmd"]["distance"] is not None:
                self.gauges["mmd"].set(result["mmd"]["distance"], tags=base)
                self.gauges["mmd_p"].set(result["mmd"]["p_value"], tags=base)
        if prediction:
            self.gauges["drift"].set(float(prediction["drift"]), tags={**base, "kind": "prediction"})
        if value is not None:
            self.gauges["metric"].set(value, tags={**base, "metric": metric})
        for name, x in (estimate or {}).items():
            if name in _ESTIMATED and x is not None:
                self.gauges["estimated"].set(x, tags={**base, "metric": name})
        self.gauges["bad_rows"].set(float(bad_rows or 0), tags=base)
        self.gauges["windows"].set(float(self.next_window), tags={"model": self.model})

    # -- references --------------------------------------------------------------------
    def _artifact(self, name: str) -> "pd.DataFrame | None":
        import tempfile

        import pandas as pd

        from lakeloop.registry.package import quiet

        listed = {a.path for a in self.ll.mlflow.list_artifacts(self.run_id, REFERENCE_DIR)}
        path = f"{REFERENCE_DIR}/{name}"
        if path not in listed:
            return None
        with tempfile.TemporaryDirectory() as tmp, quiet():
            return pd.read_parquet(self.ll.mlflow.download_artifacts(self.run_id, path, tmp))

    def _save_artifact(self, name: str, frame: "pd.DataFrame") -> None:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, name)
            frame.to_parquet(path, index=False)
            self.ll.mlflow.log_artifact(self.run_id, str(path), REFERENCE_DIR)

    def _task(self, version: int, outputs: "pd.DataFrame | None") -> str:
        if version in self.tasks:
            return self.tasks[version]
        task = self.settings.task
        if task is None:
            try:
                task = self.ll.models.spec(self.model, version).task
            except LakeloopError:
                task = None
        if task is None and outputs is not None and "prediction" in outputs.columns:
            import pandas as pd

            numeric = pd.to_numeric(outputs["prediction"], errors="coerce")
            many = numeric.notna().all() and numeric.nunique() > max(20, len(numeric) // 10)
            task = "classification" if "probability" in outputs.columns or not many else "regression"
        self.tasks[version] = task or "classification"
        return self.tasks[version]

    def _detector(self, version: int) -> DriftDetector | str:
        """The version's fitted detector, or why there is none (an alert names it once)."""
        if version in self.detectors:
            return self.detectors[version]
        ref = None
        try:
            ref = self._artifact(f"v{version}.parquet")
            if ref is None:
                ref = self._artifact("all.parquet")
            if ref is None:
                ref = reference_for(self.ll, self.model, version)
                self._save_artifact(f"v{version}.parquet", ref)
            self.detectors[version] = DriftDetector.from_settings(self.settings).fit(ref)
        except LakeloopError as exc:
            self.detectors[version] = exc.message
        outputs = None
        try:
            outputs = self._artifact(f"v{version}_outputs.parquet")
            if outputs is None:
                outputs = self._artifact("outputs.parquet")
            if outputs is None and isinstance(self.detectors[version], DriftDetector):
                outputs = predictions_for(self.ll, self.model, version, ref)
                self._save_artifact(f"v{version}_outputs.parquet", outputs)
        except Exception as exc:  # no registered model to load: no prediction drift for this version
            self.errors.append(f"no reference outputs for version {version}: {type(exc).__name__}: {exc}")
            outputs = None
        self.output_detectors[version] = None
        if outputs is not None and len(outputs) >= 10:
            cats = ["prediction"] if "prediction" in outputs.columns and \
                self._task(version, outputs) == "classification" else []
            try:
                self.output_detectors[version] = DriftDetector.from_settings(
                    self.settings, mmd=False, features=None, categorical=cats).fit(outputs)
            except LakeloopError as exc:
                self.errors.append(f"reference outputs of version {version} are not usable: {exc.message}")
        return self.detectors[version]

    def _estimator(self, version: int, task: str):
        """The version's fitted CBPE/DLE, or why there is none (from its labelled holdout, through the registry)."""
        if version in self.estimators:
            return self.estimators[version]
        if not self.settings.estimate:
            self.estimators[version] = "estimation is off (settings.estimate=False)"
            return self.estimators[version]
        from lakeloop.monitoring.performance import fit_estimator

        try:
            labelled = self._artifact(f"v{version}_labelled.parquet")
            if labelled is None:
                labelled = labelled_reference(self.ll, self.model, version)
                self._save_artifact(f"v{version}_labelled.parquet", labelled)
            features = labelled[[c for c in labelled.columns if not c.startswith(("output.", "label."))]]
            outputs = labelled[[c for c in labelled.columns if c.startswith("output.")]]
            outputs.columns = [c[len("output."):] for c in outputs.columns]
            self.estimators[version] = fit_estimator(task, features, outputs, labelled["label.value"].tolist(),
                                                     seed=self.settings.seed)
        except LakeloopError as exc:
            self.estimators[version] = exc.message
        except Exception as exc:  # no registered model or holdout to learn from: no estimate for this version
            self.estimators[version] = f"no labelled reference for version {version}: {type(exc).__name__}: {exc}"
        return self.estimators[version]

    def _baseline(self, version: int, metric: str) -> float | None:
        if version not in self.baselines:
            value = None
            try:
                value = self.ll.models.show(self.model, version)["metrics"].get(metric)
            except Exception:  # not registered: only policy.metric_baseline can set one
                value = None
            self.baselines[version] = value
        return self.baselines[version]

    # -- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # keep running; the cursor did not move past a failed window
                self.errors.append(f"{datetime.now(timezone.utc).isoformat()} {type(exc).__name__}: {exc}\n"
                                   f"{traceback.format_exc(limit=4)}")
            self._stop.wait(self.settings.poll_s)

    def run_once(self) -> list[dict]:
        """Read what is new and process every full window; returns a summary per window processed.

        A window that raises is tried again on the next call; after
        ``window_attempts`` failures it is recorded as failed (its rows counted,
        untested, an ``alert`` names the error) and the cursor moves on.
        """
        done = []
        with self.lock:
            while True:
                self.stream.poll()
                ready = self.stream.ready(self.settings.window_rows)
                while ready:  # one window at a time, in log order across versions
                    done.append(self._attempt(ready[0]))
                    ready = self.stream.ready(self.settings.window_rows)
                if self.stream.caught_up():
                    break
        return done

    def _attempt(self, version: int) -> dict:
        key = (version, *self.stream.cursor(version))
        try:
            summary = self._window(version)
        except Exception as exc:
            self.attempts[key] = self.attempts.get(key, 0) + 1
            if self.attempts[key] < self.settings.window_attempts:
                raise
            failure = f"{type(exc).__name__}: {exc}"[:1000]
            self.errors.append(f"window {self.next_window} of version {version} failed {self.attempts[key]} times "
                               f"and was recorded as failed: {failure}")
            summary = self._window(version, failure=failure)
        self.attempts.pop(key, None)
        return summary

    def _analyse(self, version: int, rows: "pd.DataFrame", window: int) -> dict:
        """The window's tests, live metric, estimate and skew; bad rows are set aside first."""
        import pandas as pd

        from lakeloop.monitoring import rows as parsing
        from lakeloop.monitoring.performance import estimate

        detector = self._detector(version)
        numeric = dict(detector.scale_) if isinstance(detector, DriftDetector) else {}
        parsed = parsing.parse(rows, numeric)
        good = rows.iloc[parsed.keep].reset_index(drop=True)
        feats = pd.DataFrame(parsed.features, index=range(len(parsed.features)))
        out_frame = output_frame(parsed.outputs)
        seed = self.settings.seed + window
        result = detector.run(feats, seed=seed) if isinstance(detector, DriftDetector) else None
        out_det = self.output_detectors.get(version)
        prediction = out_det.run(out_frame, seed=seed) if out_det is not None and len(out_frame) else None

        recent = self.recent.setdefault(version, deque(maxlen=self.settings.metric_windows))
        scored = good[["request_id", "row", "output"]]
        task = self._task(version, out_frame)
        metric = self.settings.metric or default_metric(task)
        labelled_rows = pd.concat(list(recent)[1 - self.settings.metric_windows:] + [scored], ignore_index=True) \
            if self.settings.metric_windows > 1 else scored
        value, labelled = score(labelled_rows, read_feedback(self.ll, labelled_rows["request_id"]), metric)

        estimator = self._estimator(version, task)
        if isinstance(estimator, str):
            est = {"error": estimator}
        elif not len(out_frame) or "prediction" not in out_frame.columns:
            est = {"error": "no usable outputs in this window"}
        else:
            est = estimate(estimator, feats, out_frame)
        estimated = est.get(metric)

        skew = self._skew(good, feats, window) if self.settings.skew_views else None
        return {"detector": detector, "feats": feats, "result": result, "prediction": prediction, "scored": scored,
                "metric": metric, "value": value, "labelled": labelled, "skew": skew, "estimate": est,
                "estimated": estimated, "bad": parsed}

    def _window(self, version: int, failure: str | None = None) -> dict:
        import numpy as np
        import pandas as pd

        n = self.settings.window_rows
        rows, position = self.stream.peek(version, n)
        window = self.next_window
        now = datetime.now(timezone.utc)
        base = {"version": version, "source": self.name, "time": now}
        planned = []
        if failure is None:
            a = self._analyse(version, rows, window)
            baseline = self._baseline(version, a["metric"])
            decision, state = self.policy.decide(
                self.policy_state, version=version, window=window,
                drift=None if a["result"] is None else a["result"]["drift"], metric=a["metric"], value=a["value"],
                labelled=a["labelled"], baseline=baseline, now=time.time(), resolved=self._resolved(),
                estimated=a["estimated"])
            if decision["trigger"] and self.trigger is None:
                state["in_flight"] = None  # nothing was submitted, so nothing is in flight
        else:  # recorded as failed: counted, untested, and the policy state carried over unchanged
            metric = self.settings.metric or default_metric(self.tasks.get(version))
            a = {"detector": f"the window failed {self.settings.window_attempts} times: {failure}", "feats": None,
                 "result": None, "prediction": None, "scored": rows[["request_id", "row", "output"]].iloc[:0],
                 "metric": metric, "value": None, "labelled": 0, "skew": None, "estimate": None, "estimated": None,
                 "bad": None}
            decision = {"trigger": False, "reason": None, "suppressed": None, "failed": failure}
            state = json.loads(json.dumps(self.policy_state))
            planned.append(ev.make_event("alert", self.model, event_id=f"{self.model}:{window}:alert:failed",
                                         reason=f"window {window} of version {version} failed "
                                                f"{self.settings.window_attempts} times; its {len(rows)} rows are "
                                                f"counted but not tested: {failure[:300]}",
                                         details={"window": window, "error": failure}, **base))
        result, prediction, detector, skew, bad = a["result"], a["prediction"], a["detector"], a["skew"], a["bad"]

        if result is not None and result["drift"]:
            planned.append(ev.make_event("drift_detected", self.model, event_id=f"{self.model}:{window}:drift_detected",
                                         reason=f"window {window}: drift in {', '.join(result['drifted'])}",
                                         details=_event_details(window, result, prediction, a["estimate"]), **base))
        if failure is None and isinstance(detector, str) and version not in self.version_windows:
            planned.append(ev.make_event("alert", self.model, event_id=f"{self.model}:{window}:alert:reference",
                                         reason=f"no reference for version {version}, so its drift is not tested: "
                                                f"{detector}", **base))
        if bad is not None and bad.bad:
            example = bad.example()
            planned.append(ev.make_event(
                "alert", self.model, event_id=f"{self.model}:{window}:alert:bad_rows",
                reason=f"window {window}: {len(bad.bad)} of {len(rows)} rows of version {version} could not be used "
                       f"and were skipped; e.g. request {example['request_id']} row {example['row']}: "
                       f"{example['column']} {example['why']} ({example['value'][:60]})",
                details={"window": window, "bad_rows": len(bad.bad), "reasons": bad.reasons(),
                         "examples": bad.bad[:BAD_ROW_EXAMPLES]}, **base))
        skewed = _skewed(skew, self.settings.skew_alert_rate)
        if skewed:
            planned.append(ev.make_event("alert", self.model, event_id=f"{self.model}:{window}:alert:skew",
                                         reason=f"training/serving skew in window {window}: " + ", ".join(
                                             f"{f} {rate:.0%} of rows differ" for f, rate in skewed.items()),
                                         details={"window": window, "skew": skew}, **base))
        if decision["trigger"]:
            planned.append(ev.make_event("alert", self.model, event_id=f"{self.model}:{window}:alert",
                                         reason=decision["reason"], details={"window": window, "decision": decision},
                                         **base))
        times = pd.to_datetime(rows["time"], utc=True)
        mmd = (result or {}).get("mmd") or {}
        metric, value, labelled = a["metric"], a["value"], a["labelled"]
        record = {
            "model": self.model, "window": window, "version": version,
            "version_window": self.version_windows.get(version, 0), "rows": len(rows),
            "first_commit": position["first"][0], "first_offset": position["first"][1],
            "next_commit": position["next"][0], "next_offset": position["next"][1], "read_to": position["read_to"],
            "cursors": json.dumps(position["cursors"]), "start_time": times.min(), "end_time": times.max(),
            "processed_at": now, "drift": None if result is None else result["drift"],
            "prediction_drift": None if prediction is None else prediction["drift"],
            "min_p_value": None if result is None else result["min_p_value"],
            "mmd_distance": mmd.get("distance"), "mmd_p_value": mmd.get("p_value"),
            "drifted": json.dumps([] if result is None else result["drifted"]), "metric": metric,
            "metric_value": value, "labelled": labelled,
            "result": json.dumps({**(result if result is not None else {"error": detector}), "skew": skew},
                                 default=str),
            "prediction": json.dumps(prediction, default=str),
            "policy": json.dumps({"decision": decision, "state": state}, default=str),
            "events": json.dumps([{**e, "time": e["time"].isoformat()} for e in planned], default=str),
            "backend": self.settings.backend, "run_id": self.run_id,
            "bad_rows": None if bad is None else len(bad.bad), "estimated_value": a["estimated"],
            "estimate": json.dumps(a["estimate"], default=str),
        }
        frame = pd.DataFrame([record])
        for c in ("drift", "prediction_drift"):
            frame[c] = frame[c].astype(object)
        for c in ("mmd_distance", "mmd_p_value", "estimated_value", "metric_value"):
            frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(np.float64)
        self.table.append(frame)  # the checkpoint: results, every cursor and the policy state at once

        self.stream.consume(version, n)
        recent = self.recent.setdefault(version, deque(maxlen=self.settings.metric_windows))
        recent.append(a["scored"])  # only now: a window that failed before its checkpoint is redone, not doubled
        self.next_window = window + 1
        self.version_windows[version] = self.version_windows.get(version, 0) + 1
        self.rows_counted += len(rows)
        self.windows_this_run += 1
        previous_trigger = (self.policy_state or {}).get("last_trigger")
        self.policy_state = state
        if failure is None:
            self._report(window, version, detector, a["feats"], result, prediction, metric, value, labelled, skew,
                         a["estimate"], record["bad_rows"])
        self._emit(planned)
        if decision["trigger"] and self.trigger is not None:
            self._fire(window, version, decision, previous_trigger)
        return {"window": window, "version": version, "rows": len(rows), "drift": record["drift"],
                "prediction_drift": record["prediction_drift"], "metric": metric, "value": value,
                "estimated": a["estimated"], "estimate": a["estimate"], "bad_rows": record["bad_rows"],
                "decision": decision, "failed": failure}

    # -- after the checkpoint --------------------------------------------------------
    def _guard(self, what: str, fn, *args) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # reporting never stops the monitor or moves the cursor back
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            return None

    def _report(self, window, version, detector, feats, result, prediction, metric, value, labelled, skew,
                estimate=None, bad_rows=0) -> None:
        self._guard("gauges", self._set_gauges, version, result, prediction, metric, value, estimate, bad_rows)
        self._guard("mlflow metrics", self._log_metrics, window, version, result, prediction, metric, value, labelled,
                    skew, estimate, bad_rows)
        drifting = bool(result and result["drift"])
        streak = self.drift_streak[version] = self.drift_streak.get(version, 0) + 1 if drifting else 0
        wanted = self.settings.report == "always" or (
            self.settings.report == "drift" and drifting and (streak - 1) % self.settings.report_every == 0)
        if wanted and isinstance(detector, DriftDetector):
            self._guard("drift report", self._log_report, window, version, detector, feats, result)

    def _log_metrics(self, window, version, result, prediction, metric, value, labelled, skew, estimate=None,
                     bad_rows=0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        v = f"v{version}"
        values: dict[str, float] = {f"{v}/rows_labelled": labelled, f"{v}/bad_rows": bad_rows}
        for name, x in (estimate or {}).items():  # the label-free estimates: estimated_accuracy, estimated_rmse, ...
            if name in _ESTIMATED and x is not None:
                values[f"{v}/estimated_{name}"] = x
        if result is not None:
            values[f"{v}/drift"] = float(result["drift"])
            for f, e in result["features"].items():
                if e["p_value"] is not None:
                    values[f"{v}/p_value/{safe_name(f)}"] = e["p_value"]
                    values[f"{v}/statistic/{safe_name(f)}"] = e["statistic"]
            if result.get("mmd") and result["mmd"]["distance"] is not None:
                values[f"{v}/mmd_distance"] = result["mmd"]["distance"]
                values[f"{v}/mmd_p_value"] = result["mmd"]["p_value"]
        if prediction is not None:
            values[f"{v}/prediction_drift"] = float(prediction["drift"])
            for f, e in prediction["features"].items():
                if e["p_value"] is not None:
                    values[f"{v}/prediction_p_value/{safe_name(f)}"] = e["p_value"]
        if value is not None:
            values[f"{v}/{metric}"] = value
        for view in (skew or {}).get("views", {}).values():
            for f, e in view["features"].items():
                values[f"{v}/skew_rate/{safe_name(f)}"] = e["rate"]
        metrics = [Metric(k, float(x), ts, window) for k, x in values.items() if x is not None]
        for i in range(0, len(metrics), 900):
            self.ll.mlflow.log_batch(self.run_id, metrics=metrics[i:i + 900])

    def _log_report(self, window, version, detector, feats, result) -> None:
        import tempfile

        from lakeloop.monitoring import report

        with tempfile.TemporaryDirectory() as tmp:
            report.write(detector, feats, result, tmp, title=f"{self.model} v{version} w{window}",
                         max_features=self.settings.report_max_features)
            self.ll.mlflow.log_artifacts(self.run_id, tmp, f"reports/window_{window:05d}_v{version}")

    def _emit(self, planned: list[dict]) -> None:
        if not planned:
            return
        self._guard("events", ev.append, self.ll, planned)
        if self.settings.webhook_url:
            for e in planned:
                if e["kind"] in self.settings.webhook_kinds:
                    self._webhook(e)

    def _webhook(self, event: dict) -> None:
        from lakeloop.monitoring import webhook

        payload = {**event, "time": event["time"].isoformat() if hasattr(event["time"], "isoformat")
                   else event["time"], "details": _json(event["details"], {}), "lake": self.ll.config.lake.root}
        self.last_webhook = webhook.post(self.settings.webhook_url, payload, self.settings.webhook_timeout_s)
        if self.last_webhook["error"]:
            self.errors.append(f"webhook {self.settings.webhook_url}: {self.last_webhook['error']}")

    def _fire(self, window: int, version: int, decision: dict, previous_trigger: dict | None = None) -> None:
        context = {"model": self.model, "version": version, "window": window, "reason": decision["reason"],
                   "lake_root": self.ll.config.lake.root, "monitor": self.name, "run_id": self.run_id}
        try:
            returned = self.trigger(context)
        except Exception as exc:
            # nothing is in flight after a failed submission, and no cooldown starts: the next run of
            # drifting windows tries again (the next window's checkpoint records this state)
            self.policy_state["in_flight"] = None
            self.policy_state["last_trigger"] = previous_trigger
            self.policy_state["triggers"] = max(0, self.policy_state.get("triggers", 1) - 1)
            self._emit([ev.make_event("alert", self.model, version=version, source=self.name,
                                      event_id=f"{self.model}:{window}:alert:trigger_failed",
                                      reason=f"the retrain trigger failed: {type(exc).__name__}: {exc}",
                                      details={"window": window, "decision": decision})])
            return
        try:
            json.dumps(returned)
        except (TypeError, ValueError):
            returned = repr(returned)
        self._emit([ev.make_event("retrain_submitted", self.model, version=version, source=self.name,
                                  event_id=f"{self.model}:{window}:retrain_submitted", reason=decision["reason"],
                                  details={"window": window, "result": returned})])

    def _skew(self, rows: "pd.DataFrame", feats: "pd.DataFrame", window: int) -> dict:
        """Served values of a sample of the window's rows against an offline recompute at request time."""
        import numpy as np

        from lakeloop.monitoring.skew import skew

        served = feats.assign(time=rows["time"].to_numpy())
        if len(served) > self.settings.skew_sample:
            rng = np.random.default_rng(self.settings.seed + window)
            served = served.iloc[np.sort(rng.choice(len(served), self.settings.skew_sample, replace=False))]
        try:
            return skew(self.ll, served.reset_index(drop=True), self.settings.skew_views)
        except LakeloopError as exc:  # an unknown or unmaterialized view: say so in the window's result
            return {"error": exc.message}

    def _resolved(self) -> bool:
        in_flight = self.policy_state.get("in_flight")
        if not in_flight:
            return False
        since = datetime.fromtimestamp(in_flight["since"], tz=timezone.utc)
        return not ev.read_events(self.ll, self.model, kinds=ev.RESOLVING, since=since).empty

    # -- actor API -------------------------------------------------------------------
    def ping(self) -> str:
        return self.name

    def live(self) -> dict:
        """What only the running actor knows: buffered rows, errors, the last webhook answer."""
        return {"name": self.name, "pending_rows": {str(k): v for k, v in self.stream.pending().items()},
                "read_to": self.stream.read_to, "windows_this_run": self.windows_this_run,
                "rows_counted": self.rows_counted, "uptime_s": round(time.time() - self.started_at, 1),
                "errors": list(self.errors), "last_webhook": self.last_webhook,
                "references": {str(v): (d if isinstance(d, str) else "ok") for v, d in self.detectors.items()},
                "estimators": {str(v): (e if isinstance(e, str) else repr(e)) for v, e in self.estimators.items()},
                "retrying": {f"v{k[0]}@{k[1]}:{k[2]}": n for k, n in self.attempts.items()}}

    def close(self) -> dict:
        """Stop the loop after the window in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        return self.live()


def _skewed(skew: dict | None, rate: float | None) -> dict[str, float]:
    """Features whose mismatch rate is above ``rate``."""
    if not skew or rate is None:
        return {}
    return {f: e["rate"] for view in skew.get("views", {}).values() for f, e in view["features"].items()
            if e["rate"] > rate}


def _event_details(window: int, result: dict, prediction: dict | None, estimate: dict | None = None) -> dict:
    return {"window": window, "drifted": result["drifted"], "threshold": result["threshold"],
            "p_values": {f: e["p_value"] for f, e in result["features"].items()},
            "mmd": result.get("mmd"), "prediction_drift": None if prediction is None else prediction["drift"],
            "estimate": estimate}
