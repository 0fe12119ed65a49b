"""Starting, finding, stopping and reading monitors: the functions users and the CLI call.

>>> from lakeloop import monitoring                                              # doctest: +SKIP
>>> monitoring.start(ll, "fraud", window_rows=200, policy=monitoring.Policy(consecutive=3),
...                  trigger=submit_retrain)                                      # doctest: +SKIP
>>> monitoring.status(ll, "fraud")["versions"][3]["p_values"]                     # doctest: +SKIP
>>> monitoring.stop(ll, "fraud")                                                  # doctest: +SKIP

Each model has one MLflow run (tag ``lakeloop.monitor``) that keeps the
monitor's settings as parameters, its reference frames as artifacts under
``reference/``, its per-window metrics and report images; the actor finds
its reference there again after a restart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from lakeloop.errors import MonitorError, MonitorNotFoundError
from lakeloop.monitoring import events as ev
from lakeloop.monitoring.monitor import (REFERENCE_DIR, WINDOW_COLUMNS, WINDOWS, Monitor, _json,
                                         ensure_windows_table, monitor_name)
from lakeloop.monitoring.policy import Policy
from lakeloop.monitoring.settings import MonitorSettings
from lakeloop.monitoring.stream import INFERENCE

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop

Frames = "pd.DataFrame | Mapping[int, pd.DataFrame] | None"


def _find_run(ll: "Lakeloop", model: str):
    quoted = model.replace("'", "\\'")
    runs = ll.mlflow.search_runs([ll.experiment_id()], filter_string=f"tags.`lakeloop.monitor` = '{quoted}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _run_for(ll: "Lakeloop", model: str, settings: MonitorSettings, policy: Policy) -> tuple[str, int]:
    """The monitor's MLflow run (found by tag, else made) and the log version it started at."""
    from mlflow.entities import Param

    client = ll.mlflow
    run = _find_run(ll, model)
    if run is not None:
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, int(run.data.params.get("start_version", 0))
    start_version = 0
    if settings.start == "latest":
        table = ll.lake.table(INFERENCE)
        start_version = table.version() + 1 if table.exists() else 0
    run = client.create_run(ll.experiment_id(), run_name=f"monitor-{model}",
                            tags={"lakeloop.kind": "monitor", "lakeloop.monitor": model})
    params = {"start_version": start_version, **{f"settings.{k}": v for k, v in settings.to_dict().items()},
              **{f"policy.{k}": v for k, v in policy.to_dict().items()}}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
    return run.info.run_id, start_version


def _log_frames(ll: "Lakeloop", run_id: str, frames: Any, outputs: bool) -> None:
    """Reference frames as run artifacts: one for every version (a DataFrame) or ``{version: frame}``."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    if frames is None:
        return
    items = {"all": frames} if isinstance(frames, pd.DataFrame) else {f"v{int(v)}": f for v, f in frames.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for key, frame in items.items():
            if not isinstance(frame, pd.DataFrame):
                raise MonitorError(f"reference data must be a DataFrame or {{version: DataFrame}}, got "
                                   f"{type(frame).__name__} for {key}")
            name = ("outputs.parquet" if key == "all" else f"{key}_outputs.parquet") if outputs else f"{key}.parquet"
            frame.reset_index(drop=True).to_parquet(Path(tmp, name), index=False)
        ll.mlflow.log_artifacts(run_id, tmp, REFERENCE_DIR)


def _prepare(ll: "Lakeloop", model: str, reference, reference_outputs, settings, policy, trigger, overrides):
    if isinstance(settings, MonitorSettings):
        settings = settings.to_dict()
    settings = MonitorSettings.from_dict({**(settings or {}), **overrides})
    policy = policy if isinstance(policy, Policy) else Policy.from_dict(policy)
    if trigger is not None and not callable(trigger):
        raise MonitorError(f"trigger must be callable (it gets a context dict), not {type(trigger).__name__}")
    ensure_windows_table(ll)
    ev.ensure_table(ll)
    run_id, start_version = _run_for(ll, model, settings, policy)
    _log_frames(ll, run_id, reference, outputs=False)
    _log_frames(ll, run_id, reference_outputs, outputs=True)
    return settings, policy, run_id, start_version


def local_monitor(ll: "Lakeloop", model: str, *, reference: Frames = None, reference_outputs: Frames = None,
                  settings: MonitorSettings | Mapping[str, Any] | None = None, policy: Policy | Mapping | None = None,
                  trigger: Callable[[dict], Any] | None = None, **overrides) -> Monitor:
    """The same monitor in this process, without an actor or a loop: call ``run_once()`` yourself.

    It shares the lake state (cursor, windows, events) and MLflow run with the
    actor, so run one or the other for a model, not both at once.
    """
    settings, policy, run_id, start_version = _prepare(ll, model, reference, reference_outputs, settings, policy,
                                                       trigger, overrides)
    return Monitor(ll.config.to_dict(), model, settings.to_dict(), policy.to_dict(), run_id, start_version,
                   trigger=trigger, autostart=False)


def start(ll: "Lakeloop", model: str, *, reference: Frames = None, reference_outputs: Frames = None,
          settings: MonitorSettings | Mapping[str, Any] | None = None, policy: Policy | Mapping | None = None,
          trigger: Callable[[dict], Any] | None = None, timeout_s: float = 120.0, **overrides):
    """Start (or find) the model's monitor actor and return its handle.

    ``reference``: the rows serving is compared with, for every version (a
    DataFrame) or per version (``{3: df}``); versions without one get their
    training rows through the registry lineage. ``reference_outputs``: the
    model's outputs on them (else predicted by the registered version).
    ``settings`` (or keyword ``overrides`` such as ``window_rows=100``,
    ``backend="alibi"``), ``policy`` and ``trigger`` (called with a context
    dict when the policy fires; what it returns is recorded) configure it.
    The actor is detached (it outlives this process), restarted by Ray when
    it dies, and named after the lake and the model, so a second ``start``
    finds the running one, which keeps its settings: :func:`stop` it first to
    change them. Cursor, counts and policy state survive a stop.
    """
    if trigger is not None and not callable(trigger):
        raise MonitorError(f"trigger must be callable (it gets a context dict), not {type(trigger).__name__}")
    ray = ll.ensure_ray()
    settings, policy, run_id, start_version = _prepare(ll, model, reference, reference_outputs, settings, policy,
                                                       trigger, overrides)
    handle = ray.remote(Monitor).options(
        name=monitor_name(ll.config.lake.root, model), namespace=ll.config.ray.namespace, lifetime="detached",
        get_if_exists=True, max_restarts=-1, num_cpus=settings.num_cpus, max_concurrency=4,
    ).remote(ll.config.to_dict(), model, settings.to_dict(), policy.to_dict(), run_id, start_version, trigger)
    try:
        ray.get(handle.ping.remote(), timeout=timeout_s)
    except Exception as exc:
        cause = getattr(exc, "cause", None) or exc
        raise MonitorError(f"the monitor of model {model!r} did not start: {cause}") from exc
    return handle


def actor(ll: "Lakeloop", model: str):
    """The running monitor actor of a model, or None."""
    ray = ll.ensure_ray()
    try:
        return ray.get_actor(monitor_name(ll.config.lake.root, model), namespace=ll.config.ray.namespace)
    except ValueError:
        return None


def _not_found(ll: "Lakeloop", model: str) -> MonitorNotFoundError:
    return MonitorNotFoundError(f"no monitor runs for model {model!r} in the lake at {ll.config.lake.root}; start "
                                f"one with lakeloop.monitoring.start(ll, {model!r})")


def stop(ll: "Lakeloop", model: str, *, timeout_s: float = 60.0) -> dict:
    """Stop the model's monitor for good (its windows, cursor and events stay); returns its last live state."""
    import ray

    handle = actor(ll, model)
    if handle is None:
        raise _not_found(ll, model)
    try:
        live = ray.get(handle.close.remote(), timeout=timeout_s)
    except Exception as exc:  # a dead or stuck actor is killed all the same
        live = {"error": f"{type(exc).__name__}: {exc}"}
    ray.kill(handle, no_restart=True)
    try:
        run = _find_run(ll, model)
        if run is not None:
            ll.mlflow.set_terminated(run.info.run_id, "FINISHED")
    except Exception:  # the run is bookkeeping; the actor is stopped either way
        pass
    return live


def windows(ll: "Lakeloop", model: str) -> "pd.DataFrame":
    """Every window a model's monitor processed, oldest first (results as JSON columns)."""
    import pandas as pd

    table = ll.lake.table(WINDOWS)
    if not table.exists():
        return pd.DataFrame(columns=list(WINDOW_COLUMNS))
    return table.to_pandas(filters=[("model", "=", model)]).sort_values("window").reset_index(drop=True)


def status(ll: "Lakeloop", model: str, *, events_limit: int = 10, live: bool = True, timeout_s: float = 10.0) -> dict:
    """What ``lakeloop monitor status MODEL`` shows: windows, cursor, last tests, live metric, recent events.

    ``live=False`` reads the lake only (no Ray needed); otherwise the running
    actor adds what only it knows (rows waiting for a full window, errors).
    """
    done = windows(ll, model)
    handle = actor(ll, model) if live else None
    if done.empty and handle is None and _find_run(ll, model) is None:
        raise _not_found(ll, model)
    out: dict[str, Any] = {"model": model, "monitor": monitor_name(ll.config.lake.root, model),
                           "running": handle is not None, "windows": int(len(done)),
                           "rows": int(done["rows"].sum()) if len(done) else 0, "cursor": None, "versions": {},
                           "policy": None, "run_id": None, "backend": None, "live": None}
    if len(done):
        last = done.iloc[-1]
        out.update(cursor={"read_to": int(last["read_to"]), "streams": _json(last["cursors"], {})},
                   policy=_json(last["policy"], {}), run_id=last["run_id"], backend=last["backend"])
        for version, rows in done.groupby("version"):
            out["versions"][int(version)] = _version_status(rows)
    if handle is not None:
        import ray

        try:
            out["live"] = ray.get(handle.live.remote(), timeout=timeout_s)
        except Exception as exc:  # restarting, or busy past the timeout
            out["live"] = {"error": f"{type(exc).__name__}: {exc}"}
    out["events"] = ev.as_records(ev.read_events(ll, model, limit=events_limit))
    return out


def _version_status(rows: "pd.DataFrame") -> dict:
    import pandas as pd

    row = rows.iloc[-1]
    result = _json(row["result"], {}) or {}
    prediction = _json(row["prediction"]) or {}
    return {
        "windows": int(len(rows)), "rows": int(rows["rows"].sum()), "last_window": int(row["window"]),
        "drift": _bool(row["drift"]), "drift_windows": sum(bool(_bool(d)) for d in rows["drift"]),
        "prediction_drift": _bool(row["prediction_drift"]),
        "p_values": {f: e["p_value"] for f, e in (result.get("features") or {}).items()},
        "mmd": result.get("mmd"), "drifted": _json(row["drifted"], []),
        "prediction_p_values": {f: e["p_value"] for f, e in (prediction.get("features") or {}).items()},
        "metric": row["metric"], "metric_value": None if _na(row["metric_value"]) else float(row["metric_value"]),
        "labelled": int(row["labelled"]), "error": result.get("error"), "skew": result.get("skew"),
        "estimated_value": _float(row.get("estimated_value")), "estimate": _json(row.get("estimate")),
        "bad_rows": _int(row.get("bad_rows")),
        "bad_rows_total": int(pd.to_numeric(rows["bad_rows"], errors="coerce").fillna(0).sum()),
        "failed_windows": sum(bool(((_json(p, {}) or {}).get("decision") or {}).get("failed")) for p in rows["policy"]),
    }


def _float(value) -> float | None:
    return None if _na(value) else float(value)


def _int(value) -> int | None:
    return None if _na(value) else int(value)


def _na(value) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def _bool(value) -> bool | None:
    return None if _na(value) else bool(value)
