"""The retrain: fresh features, a warm-started search, the gate, a canary (or shadow), a verdict, the outcome.

:func:`run_retrain` runs in any process connected to the lake and Ray; as a
Ray job it is ``jobs/retrain.py`` (what :class:`~lakeloop.retrain.trigger.JobTrigger`
submits when a monitor's policy fires). Each step appends an event to
``logs.events`` with its numbers:

``retrain_started`` -> ``materialized`` -> ``challenger_registered`` ->
``gate_failed`` (the end) or ``canary_started`` -> ``canary_verdict`` ->
``promoted`` or ``rolled_back``; any error: ``retrain_failed`` (and the
traffic goes back to the champion).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from lakeloop.errors import LakeloopError, RetrainError
from lakeloop.monitoring import events as ev
from lakeloop.retrain.compare import compare, labelled_rows
from lakeloop.retrain.sequential import sequential_compare
from lakeloop.retrain.spec import RetrainSpec

if TYPE_CHECKING:
    from lakeloop.client import Lakeloop

DEFAULT_FAMILIES = ("linear", "hgb")


def _say(progress: Callable[[str], Any] | None, message: str) -> None:
    if progress is not None:
        progress(message)


class _Recorder:
    """Appends the job's events, all with the same source, and keeps them for the summary."""

    def __init__(self, ll: "Lakeloop", model: str, source: str, progress):
        self.ll, self.model, self.source, self.progress = ll, model, source, progress
        self.events: list[dict] = []

    def __call__(self, kind: str, *, version: int | None, reason: str, **details) -> dict:
        event = ev.record_event(self.ll, kind, self.model, version=version, reason=reason, details=details,
                                source=self.source)
        self.events.append({"kind": kind, "version": version, "reason": reason, "time": event["time"].isoformat()})
        _say(self.progress, f"{kind}: {reason}")
        return event


def _champion(ll: "Lakeloop", model: str) -> tuple[int, dict, dict]:
    """The champion's version, frame lineage and training spec."""
    try:
        mv = ll.models.version(model, "champion")
    except LakeloopError as exc:
        raise RetrainError(f"model {model!r} has no champion to retrain against: {exc.message}") from exc
    version = int(mv.version)
    record = ll.models.lineage(model, version)
    frame = (record.get("lineage") or {}).get("frame") or {}
    spec = record.get("spec") or {}
    return version, frame, spec


def _frame_inputs(spec: RetrainSpec, frame: dict, champ_spec: dict) -> dict:
    """Entity table, feature refs, timestamp column, target and known-time rule: the spec's, else the champion's."""
    entities = spec.entities or (frame.get("entities") or {}).get("table")
    views = frame.get("views") or {}
    refs = list(spec.features) if spec.features else (
        frame.get("feature_refs") or [f"{v}:{f}" for v, info in views.items() for f in info.get("features", [])])
    target = spec.target or champ_spec.get("target")
    missing = [name for name, value in (("entities", entities), ("features", refs), ("target", target)) if not value]
    if missing:
        raise RetrainError(f"the retrain needs {', '.join(missing)}: the champion was not trained on a feature-store "
                           "frame from a lake table, so give them in the retrain settings")
    return {"entities": entities, "refs": refs, "target": target,
            "timestamp_column": spec.timestamp_column or frame.get("timestamp_column"),
            "known_time": frame.get("known_time", True), "full_feature_names": frame.get("full_feature_names", False),
            "views": sorted({r.split(":", 1)[0] for r in refs})}


def newest_since(ll: "Lakeloop", table: str, timestamp_column: str, rows: int | None, version: int | None = None):
    """The timestamp from which ``table`` (at ``version``; default latest) holds its newest ``rows`` rows (None: all)."""
    import pandas as pd

    if rows is None:
        return None
    ts = pd.to_datetime(ll.lake.table(table).to_pandas(version=version, columns=[timestamp_column])[timestamp_column],
                        utc=True)
    if len(ts) <= rows:
        return None
    return ts.sort_values().iloc[-rows]


def build_frame(ll: "Lakeloop", inputs: dict, spec: RetrainSpec, record: Callable[[dict], Any] | None = None):
    """The retrain's data step, on one snapshot: (frame, materialized views, since).

    Every source table is pinned once; the views are materialized from those
    versions and the entity rows read at the version the views were computed
    from, so a writer committing meanwhile cannot leave rows without features.
    The pinned versions are in the frame's lineage (``snapshot``).
    """
    materialized: dict[str, dict] = {}
    feature_versions = None
    if spec.materialize:
        results = ll.features.materialize_many(inputs["views"])
        for view, result in results.items():
            materialized[view] = {"mode": result.mode, "rows_written": result.rows_written,
                                  "source_version": result.source_version, "table_version": result.table_version,
                                  "seconds": round(result.seconds, 2)}
        feature_versions = {v: int(m["table_version"]) for v, m in materialized.items()
                            if m["table_version"] is not None}
        if record is not None:
            record(materialized)
    snap = ll.features.snapshot(inputs["views"], inputs["entities"], feature_versions=feature_versions)
    since = newest_since(ll, inputs["entities"], inputs["timestamp_column"], spec.train_rows,
                         version=snap["entities_version"]) if inputs["timestamp_column"] else None
    frame = ll.features.training_frame(
        inputs["entities"], inputs["refs"], timestamp_column=inputs["timestamp_column"],
        known_time=inputs["known_time"], full_feature_names=inputs["full_feature_names"], since=since,
        entities_version=snap["entities_version"],
        feature_versions={v: p["table_version"] for v, p in snap["views"].items()})
    return frame, materialized, since


def run_retrain(ll: "Lakeloop", spec: RetrainSpec | dict, *, reason: str = "", job_id: str | None = None,
                context: dict | None = None, progress: Callable[[str], Any] | None = print,
                search_progress: bool | None = False) -> dict:
    """Retrain ``spec.model`` and settle its challenger; returns a summary (also in the events)."""
    from lakeloop.registry import Gate

    spec = spec if isinstance(spec, RetrainSpec) else RetrainSpec.from_dict(spec)
    model = spec.model
    source = f"retrain:{job_id}" if job_id else "retrain"
    record = _Recorder(ll, model, source, progress)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"model": model, "job_id": job_id, "reason": reason, "spec": spec.to_dict(),
                               "outcome": None}
    champion = challenger = None
    canary = False
    try:
        champion, frame_lineage, champ_spec = _champion(ll, model)
        summary["champion"] = champion
        inputs = _frame_inputs(spec, frame_lineage, champ_spec)
        record("retrain_started", version=champion, reason=reason or "retrain requested",
               job_id=job_id, context=context or {}, spec=spec.to_dict())

        frame, materialized, since = build_frame(ll, inputs, spec, record=lambda views: record(
            "materialized", version=champion, reason=", ".join(
                f"{v}: {m['mode']}, {m['rows_written']} rows, source v{m['source_version']}"
                for v, m in views.items()) or "no views", views=views))
        summary["materialized"] = materialized
        features = list(champ_spec.get("features") or frame.features)
        warm = [{"family": champ_spec["family"], "params": champ_spec.get("params") or {}}] \
            if champ_spec.get("family") else None
        families = spec.families or tuple(dict.fromkeys(
            ([champ_spec["family"]] if champ_spec.get("family") else []) + list(DEFAULT_FAMILIES)))
        _say(progress, f"training frame: {len(frame.data)} rows of {inputs['entities']} "
                       f"v{frame.lineage['entities'].get('version')}" + (f" since {since}" if since is not None else "")
             + f"; searching {', '.join(families)} for {spec.budget_s or '-'} s, warm-started from the champion "
               f"({champ_spec.get('family')})")
        result = ll.automl.run(
            frame, target=inputs["target"], features=features, task=champ_spec.get("task"),
            metric=champ_spec.get("metric"), families=list(families), budget_s=spec.budget_s,
            max_trials=spec.max_trials, seed=spec.seed, name=model, warm_start=warm,
            gate=Gate(margin=spec.margin, latency_budget_ms=spec.latency_budget_ms,
                      max_latency_ratio=spec.max_latency_ratio), progress=search_progress)
        challenger = int(result.model_version)
        gate = result.gate.to_dict() if hasattr(result.gate, "to_dict") else dict(result.gate or {})
        summary.update(challenger=challenger, automl_run=result.run_id, trials=result.trials,
                       challenger_metrics=result.metrics, gate=gate, frame_rows=len(frame.data),
                       frame_lineage=frame.lineage)
        metric = gate.get("metric")
        record("challenger_registered", version=challenger,
               reason=f"v{challenger} ({result.best['family']}, {result.trials} trials): holdout {metric} "
                      f"{_fmt(gate.get('score'))} vs champion v{champion} {_fmt(gate.get('champion_score'))} "
                      f"on the same {gate.get('rows')} rows",
               run_id=result.run_id, trials=result.trials, best=result.best, metrics=result.metrics, gate=gate,
               frame_rows=len(frame.data), since=None if since is None else str(since),
               entities_version=frame.lineage["entities"].get("version"))
        if not gate.get("passed"):
            record("gate_failed", version=challenger, reason="; ".join(gate.get("reasons") or []) or "gate failed",
                   gate=gate)
            summary["outcome"] = "gate_failed"
            return _done(summary, record, t0)

        canary = True  # from here on a failure sends the traffic back to the champion
        if spec.mode == "canary":
            ll.serving.deploy(model, challenger, weight=spec.canary_percent)
        else:
            ll.serving.deploy(model, challenger, shadow=True)
        started = datetime.now(timezone.utc)  # both arms are compared over the same period, from here
        record("canary_started", version=challenger,
               reason=(f"v{challenger} gets {spec.canary_percent:g}% of requests" if spec.mode == "canary"
                       else f"v{challenger} answers a shadow copy of every request")
               + (f"; an always-valid test looks as labels arrive, from {spec.min_labelled} up to "
                  f"{spec.max_labelled} labelled rows per version (alpha {spec.alpha:g} each way)" if spec.sequential
                  else f"; deciding after {spec.min_labelled} labelled rows per version (alpha {spec.alpha:g})"),
               mode=spec.mode, percent=spec.canary_percent if spec.mode == "canary" else 0, champion=champion,
               started=started.isoformat())

        task_metric = verdict_metric(champ_spec)
        comparison = _await_verdict(ll, spec, model, champion, challenger, started, task_metric, progress)
        summary["comparison"] = comparison.to_dict()
        decision = comparison.verdict if comparison.verdict != "inconclusive" else spec.on_inconclusive
        record("canary_verdict", version=challenger, reason=f"{comparison.verdict} -> {decision}: {comparison.reason}",
               decision=decision, decided_by=comparison.test, comparison=comparison.to_dict())

        if decision == "promote":
            ll.serving.promote(model, challenger)
            canary = False
            if spec.retire:
                _retire(ll, model, champion)
            record("promoted", version=challenger,
                   reason=f"v{challenger} is the champion (was v{champion}) and takes 100% of traffic: "
                          f"{comparison.reason}", previous=champion, comparison=comparison.to_dict())
        else:
            _roll_back(ll, model, champion, challenger, spec.retire)
            canary = False
            record("rolled_back", version=challenger,
                   reason=f"v{challenger} withdrawn, champion v{champion} takes 100% of traffic again: "
                          f"{comparison.reason}", champion=champion, comparison=comparison.to_dict())
        summary["outcome"] = "promoted" if decision == "promote" else "rolled_back"
        return _done(summary, record, t0)
    except BaseException as exc:
        restored = None
        if canary and champion is not None and challenger is not None:
            try:  # never leave an unproven challenger with traffic
                _roll_back(ll, model, champion, challenger, spec.retire)
                restored = champion
            except Exception as inner:  # the failure below is what matters; say this too
                restored = f"could not restore the champion's traffic: {inner}"
        message = exc.message if isinstance(exc, LakeloopError) else f"{type(exc).__name__}: {exc}"
        try:
            record("retrain_failed", version=challenger or champion, reason=message[:2000], job_id=job_id,
                   restored=restored)
        except Exception:  # the lake itself may be what failed
            pass
        raise


def verdict_metric(champ_spec: dict) -> str:
    """What the canary compares: ROC AUC for a model selected on it (no per-row meaning: DeLong on the canary's
    rows), accuracy for other classifiers, the squared (or absolute, for ``mae``) error for regressors."""
    metric = champ_spec.get("metric")
    if champ_spec.get("task", "classification") == "classification":
        return "roc_auc" if metric == "roc_auc" else "accuracy"
    return "mae" if metric == "mae" else "rmse"


def _await_verdict(ll, spec: RetrainSpec, model: str, champion: int, challenger: int, started, metric: str,
                   progress):
    """Poll the labelled rows of both arms; every poll with new labels is a look of the always-valid test, until
    it decides, the smaller arm has ``max_labelled`` rows or the timeout passes (``sequential=False``: one
    fixed-sample test once each arm has ``min_labelled``)."""
    paired = spec.mode == "shadow"
    deadline = time.monotonic() + spec.decision_timeout_s
    last_said = 0.0
    result = None
    seen = None
    while True:
        a = labelled_rows(ll, model, champion, route="primary", since=started)
        b = labelled_rows(ll, model, challenger, route="shadow" if paired else "primary", since=started)
        timed_out = time.monotonic() >= deadline
        if not spec.sequential:
            result = compare(a, b, metric=metric, paired=paired, champion=champion, challenger=challenger,
                             alpha=spec.alpha, min_labelled=spec.min_labelled)
            if (result.n_champion >= spec.min_labelled and result.n_challenger >= spec.min_labelled) or timed_out:
                return result
        elif (len(a), len(b)) != seen or timed_out:  # a look only when labels arrived
            seen = (len(a), len(b))
            result = sequential_compare(a, b, metric=metric, paired=paired, champion=champion, challenger=challenger,
                                        alpha=spec.alpha, min_labelled=spec.min_labelled,
                                        max_labelled=spec.max_labelled, previous=result)
            if result.verdict != "inconclusive" or timed_out or \
                    min(result.n_champion, result.n_challenger) >= spec.max_labelled:
                return result
        if time.monotonic() - last_said >= 10:
            _say(progress, f"waiting for feedback: {result.reason}")
            last_said = time.monotonic()
        time.sleep(spec.poll_s)


def _roll_back(ll, model: str, champion: int, challenger: int, retire: bool) -> None:
    """All traffic back to the champion; the challenger loses its alias and (``retire``) its deployment."""
    from lakeloop.registry.models import CHALLENGER

    ll.serving.traffic(model, {champion: 100.0}, shadow=[])
    if retire:
        _retire(ll, model, challenger)
    client = ll.mlflow
    aliases = dict(client.get_registered_model(model).aliases or {})
    if str(aliases.get(CHALLENGER)) == str(challenger):
        client.delete_registered_model_alias(model, CHALLENGER)
    client.set_model_version_tag(model, str(challenger), "lakeloop.canary", "rolled_back")


def _retire(ll, model: str, version: int) -> None:
    try:
        ll.serving.retire(model, version)
    except LakeloopError:
        pass  # not deployed (or already gone): nothing to remove


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _done(summary: dict, record: _Recorder, t0: float) -> dict:
    summary["events"] = record.events
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``jobs/retrain.py``: run one retrain, print its summary as one JSON line; exit 1 if it failed."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Retrain a served model, canary it, promote or roll back.")
    parser.add_argument("--model", help="registered model (or give it in --spec-json)")
    parser.add_argument("--spec-json", default="{}", help="RetrainSpec settings as JSON")
    parser.add_argument("--config-json", help="the lakeloop config as JSON (default: LAKELOOP_* / lakeloop.yaml)")
    parser.add_argument("--config", help="lakeloop.yaml")
    parser.add_argument("--lake", help="lake root (overrides the config)")
    parser.add_argument("--reason", default="retrain requested")
    parser.add_argument("--context-json", default="{}", help="what triggered it (the monitor's context)")
    args = parser.parse_args(argv)

    import lakeloop
    from lakeloop.registry.lineage import ray_job

    spec = {**json.loads(args.spec_json), **({"model": args.model} if args.model else {})}
    config = json.loads(args.config_json) if args.config_json else args.config
    ll = lakeloop.connect(config, **({"lake_root": args.lake} if args.lake else {}))
    ll.ensure_ray()
    job = ray_job()
    job_id = job.get("submission_id") or job.get("ray_job_id")
    try:
        summary = run_retrain(ll, spec, reason=args.reason, job_id=job_id, context=json.loads(args.context_json),
                              progress=lambda m: print(m, flush=True))
    except LakeloopError as exc:
        print(json.dumps({"error": exc.message, "model": spec.get("model")}), flush=True)
        return 1
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
