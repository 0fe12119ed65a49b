"""``ll.automl.run(...)``: a Ray Tune search over model families, tracked in MLflow, registered with lineage.

One call: resolve the input (a TrainingFrame, feature refs over entity rows,
a lake table at a version, or a DataFrame), split it (time-ordered when it
has timestamps), search with Optuna TPE through Ray Tune (ASHA stops poor MLP
trials by epoch; trials run in parallel on fractional CPUs), log every trial
as an MLflow run nested under the search's run, write the leaderboard (CSV
and PNG), refit the best config on all non-holdout rows, and register it
with its lineage, model card and gate verdict.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakeloop.automl import family as model_families
from lakeloop.automl import metric as metrics
from lakeloop.automl import training
from lakeloop.automl.spec import TrainingSpec
from lakeloop.errors import AutoMLError
from lakeloop.registry import lineage as lineages

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop
    from lakeloop.registry.gate import Gate

SEARCHES = ("tpe", "random")
DEFAULT_BUDGET_S = 60.0


@dataclass(frozen=True, kw_only=True)
class AutoMLResult:
    """What a search found: the best trial, its holdout metrics, the registered version."""

    run_id: str
    experiment_id: str
    spec: TrainingSpec
    best: dict
    metrics: dict[str, float]
    leaderboard: "pd.DataFrame" = field(repr=False)
    trials: int
    elapsed_s: float
    lineage: dict = field(repr=False)
    model: Any = field(repr=False, default=None)
    model_name: str | None = None
    model_version: int | None = None
    gate: dict | None = None

    @property
    def model_uri(self) -> str | None:
        return f"models:/{self.model_name}/{self.model_version}" if self.model_version else None

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("leaderboard", "model", "spec", "lineage")}
        d.update(spec=self.spec.to_dict(), model_uri=self.model_uri,
                 leaderboard=json.loads(self.leaderboard.to_json(orient="records")))
        return d


@dataclass(frozen=True, kw_only=True)
class _Input:
    frame: "pd.DataFrame"
    lineage: dict
    features: list[str] | None
    timestamp_column: str | None
    exclude: tuple[str, ...] = ()


class AutoML:
    """AutoML of one lakeloop deployment; get it as ``ll.automl``."""

    def __init__(self, ll: "Lakeloop"):
        self.ll = ll

    def __repr__(self) -> str:
        return f"AutoML(lake={self.ll.config.lake.root!r})"

    # -- input ---------------------------------------------------------------------------
    def _input(self, data, *, features, version, timestamp_column, lineage) -> _Input:
        import hashlib

        import pandas as pd

        refs = [f for f in (features or []) if ":" in f]
        if refs:
            if len(refs) != len(features):
                raise AutoMLError(f"features mixes feature refs ('view:feature') and columns: {features}")
            store = getattr(self.ll, "features", None)
            if store is None or not hasattr(store, "training_frame"):
                raise AutoMLError("feature refs need the feature store (ll.features), which this lakeloop "
                                  "does not have; pass a TrainingFrame or a DataFrame")
            data = store.training_frame(data, refs, timestamp_column=timestamp_column, entities_version=version)
            features = None
        if hasattr(data, "lineage") and hasattr(data, "data") and hasattr(data, "features"):  # a TrainingFrame
            return _Input(frame=data.data, lineage=dict(data.lineage), features=list(features or data.features),
                          timestamp_column=timestamp_column or data.timestamp_column,
                          exclude=tuple(getattr(data, "entity_keys", ()) or ()))
        if isinstance(data, str):
            table = self.ll.lake.table(data)
            v = table.version() if version is None else int(version)
            frame = table.read(version=v)
            return _Input(frame=frame, lineage={"entities": {"table": data, "version": v}, "views": {}},
                          features=features, timestamp_column=timestamp_column)
        if isinstance(data, pd.DataFrame):
            if lineage is None:
                digest = hashlib.sha256(pd.util.hash_pandas_object(data, index=False).to_numpy().tobytes())
                lineage = {"entities": {"table": None, "rows": len(data), "hash": digest.hexdigest()[:16]},
                           "views": {}}
            return _Input(frame=data.reset_index(drop=True), lineage=dict(lineage), features=features,
                          timestamp_column=timestamp_column)
        raise AutoMLError(f"cannot train on {type(data).__name__}: pass a TrainingFrame, a pandas DataFrame or "
                          "a lake table name")

    def _spec(self, inp: _Input, *, target, task, metric, seed, holdout, validation, cv, max_epochs) -> tuple:
        df = inp.frame
        if target not in df.columns:
            raise AutoMLError(f"target column {target!r} is not in the training frame; its columns: "
                              f"{list(df.columns)}")
        y = df[target].dropna()
        if task is None:
            task = "classification" if (y.dtype == object or str(y.dtype) in ("bool", "category", "string")
                                        or (y.dtype.kind in "iu" and y.nunique() <= 20)) else "regression"
        if task == "regression" and y.dtype.kind not in "iuf":
            raise AutoMLError(f"target {target!r} has dtype {y.dtype}; regression needs a numeric target")
        m = metrics.resolve(task, metric, y.nunique() if task == "classification" else None)
        ts = inp.timestamp_column
        if ts is not None and ts not in df.columns:
            raise AutoMLError(f"timestamp column {ts!r} is not in the training frame")
        skip = {target, ts, *inp.exclude}
        explicit = inp.features is not None
        wanted = list(inp.features) if explicit else [c for c in df.columns if c not in skip]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise AutoMLError(f"feature column(s) {missing} are not in the training frame")
        if target in wanted:
            raise AutoMLError(f"the target {target!r} cannot also be a feature")
        numeric, categorical, unusable = training.column_kinds(df, wanted)
        if unusable and explicit:
            raise AutoMLError(f"feature column(s) {unusable} are datetimes or other types a model cannot use; "
                              "derive numbers from them (hour, age in days) or leave them out")
        if not numeric and not categorical:
            raise AutoMLError("the training frame has no usable feature columns (numbers, booleans or strings)")
        spec = TrainingSpec(target=target, task=task, metric=m.name, features=tuple(numeric + categorical),
                            numeric=tuple(numeric), categorical=tuple(categorical), timestamp_column=ts, seed=seed,
                            holdout_fraction=holdout, validation_fraction=validation, cv_folds=cv,
                            max_epochs=max_epochs)
        return spec, m, unusable

    # -- run -------------------------------------------------------------------------------
    def run(self, data, *, target: str, task: str | None = None, metric: str | None = None,
            budget_s: float | None = None, max_trials: int | None = None, seed: int = 0,
            families: list[str] | None = None, features: list[str] | None = None,
            timestamp_column: str | None = None, version: int | None = None, lineage: dict | None = None,
            holdout: float = 0.2, validation: float = 0.2, cv: int | None = None, max_epochs: int = 30,
            search: str = "tpe", max_concurrent: int | None = None, cpus_per_trial: float = 0.5,
            name: str | None = None, register: bool = True, gate: "Gate | bool" = True,
            experiment: str | None = None, progress: bool | None = None,
            warm_start: list[dict] | None = None) -> AutoMLResult:
        """Search model families for ``target`` and register the best.

        ``data``: a :class:`~lakeloop.features.frame.TrainingFrame`; entity rows
        (DataFrame or lake table) with ``features=["view:feature", ...]`` refs;
        a lake table name (read at ``version``, default latest); or a DataFrame
        (``lineage=`` says where it came from). ``task`` is inferred when
        omitted; ``metric`` defaults to roc_auc (binary), accuracy (multiclass),
        r2 (regression). The search stops after ``budget_s`` seconds and/or
        ``max_trials`` trials (neither: 60 s). ``holdout`` rows (the latest,
        when there is a timestamp) are never seen by the search; trials are
        scored on a ``validation`` split of the rest, or ``cv`` folds.
        ``search="random"`` samples at random instead of TPE (no warm start).
        ``warm_start``: configurations tried first, ``[{"family": "hgb", "params":
        {...}}]`` (a retrain passes the champion's), before each family's defaults.
        ``register`` logs the refit pipeline as a pyfunc under ``name``
        (default: the target), runs the promotion ``gate`` and makes it
        ``challenger`` if it passes; ``register=False`` keeps the refit model
        in the result only (``result.model``), for benchmarks.
        """
        start = time.perf_counter()
        fams = model_families.resolve_families(families)
        if search not in SEARCHES:
            raise AutoMLError(f"search must be one of {', '.join(SEARCHES)}, not {search!r}")
        if budget_s is None and max_trials is None:
            budget_s = DEFAULT_BUDGET_S
        if budget_s is not None and budget_s <= 0:
            raise AutoMLError(f"budget_s must be positive, not {budget_s}")
        if max_trials is not None and max_trials < 1:
            raise AutoMLError(f"max_trials must be at least 1, not {max_trials}")
        if not 0 < cpus_per_trial <= 64:
            raise AutoMLError(f"cpus_per_trial must be in (0, 64], not {cpus_per_trial}")
        inp = self._input(data, features=features, version=version, timestamp_column=timestamp_column,
                          lineage=lineage)
        spec, m, dropped = self._spec(inp, target=target, task=task, metric=metric, seed=seed, holdout=holdout,
                                      validation=validation, cv=cv, max_epochs=max_epochs)
        prepared = training.prepare(inp.frame, spec)
        folds = training.folds(prepared.train, spec)
        model_name = _model_name(name or target) if register else name

        ray = self.ll.ensure_ray()
        client = self.ll.mlflow
        experiment_id = self.ll.experiment_id(experiment)  # created here, before any trial could race for it
        parent = client.create_run(experiment_id, run_name=f"automl-{model_name or target}",
                                   tags={"lakeloop.kind": "automl", "lakeloop.target": target,
                                         "lakeloop.task": spec.task, "lakeloop.metric": m.name})
        run_id = parent.info.run_id
        try:
            record = lineages.record(frame=inp.lineage, rows=prepared.rows, frame_hash=prepared.frame_hash,
                                     target=target, features=list(spec.features), seed=seed,
                                     experiment_id=experiment_id, run_id=run_id)
            settings = {"target": target, "task": spec.task, "metric": m.name, "families": ",".join(fams),
                        "budget_s": budget_s, "max_trials": max_trials, "seed": seed, "search": search,
                        "holdout_fraction": holdout, "validation": f"{cv}-fold CV" if cv else validation,
                        "max_epochs": max_epochs, "cpus_per_trial": cpus_per_trial, "rows": prepared.rows,
                        "train_rows": len(prepared.train), "holdout_rows": len(prepared.holdout),
                        "features": len(spec.features), "timestamp_column": spec.timestamp_column,
                        "dropped_columns": ",".join(dropped) or None,
                        "unlabelled_rows_dropped": prepared.dropped_unlabelled,
                        "warm_start": json.dumps(warm_start, default=str)[:500] if warm_start else None}
            self._log_start(client, run_id, settings, record, spec)
            tracker = self._search(ray, client, spec, m, fams, prepared, folds, experiment_id=experiment_id,
                                   run_id=run_id, budget_s=budget_s, max_trials=max_trials, search=search,
                                   max_concurrent=max_concurrent, cpus_per_trial=cpus_per_trial, progress=progress,
                                   warm_start=warm_start)
            board = self._leaderboard(client, run_id, tracker, m, model_name or target)
            scored = board[board[f"val_{m.name}"].notna()]
            if scored.empty:
                errors = [r.error for r in tracker.records.values() if r.error]
                raise AutoMLError(
                    f"no trial reported a validation score within the budget ({len(tracker.records)} started"
                    + (f"; first error: {errors[0][:500]}" if errors else "")
                    + "); raise budget_s or max_trials, or use faster families (linear, hgb)")
            top = scored.iloc[0]
            rec = tracker.records[top["trial_id"]]
            best_epoch = int(top["best_epoch"]) if model_families.FAMILIES[rec.family].by_epoch else None
            best_spec = spec.best(rec.family, rec.params, best_epoch)
            fitted = training.fit_prepared(prepared, best_spec)
            best = {"trial_id": rec.trial_id, "run_id": rec.run_id, "family": rec.family, "params": rec.params,
                    f"val_{m.name}": float(top[f"val_{m.name}"]), "best_epoch": best_epoch}
            self._log_best(client, run_id, best, fitted, best_spec, len(tracker.records))
            info = None
            if register:
                summary = {"trials": len(tracker.records), "scored trials": len(scored), "search": search,
                           "families": ", ".join(fams), "budget_s": budget_s, "max_trials": max_trials,
                           f"best validation {m.name}": round(best[f"val_{m.name}"], 6),
                           "best trial": f"{rec.trial_id} ({rec.family})", "parent run": run_id}
                info = self.ll.models.register(
                    model_name, fitted.pipeline, holdout=prepared.holdout, spec=best_spec, train=prepared.train,
                    lineage=record, run_id=run_id, gate=gate, search=summary,
                    description=f"AutoML best of {len(tracker.records)} trials ({rec.family})")
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
        return AutoMLResult(
            run_id=run_id, experiment_id=experiment_id, spec=best_spec, best=best, metrics=fitted.metrics,
            leaderboard=board, trials=len(tracker.records), elapsed_s=time.perf_counter() - start, lineage=record,
            model=fitted.pipeline, model_name=info.name if info else None,
            model_version=info.version if info else None, gate=info.gate if info else None)

    # -- pieces ------------------------------------------------------------------------------
    def _log_start(self, client, run_id: str, settings: dict, record: dict, spec: TrainingSpec) -> None:
        from mlflow.entities import Param

        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in settings.items() if v is not None])
        for k, v in lineages.tags(record).items():
            client.set_tag(run_id, k, v)
        client.log_text(run_id, json.dumps(record, indent=2, default=str), "lakeloop/lineage.json")
        client.log_text(run_id, json.dumps(spec.to_dict(), indent=2, default=str), "lakeloop/search_spec.json")

    def _search(self, ray, client, spec, m, fams, prepared, folds, *, experiment_id, run_id, budget_s, max_trials,
                search, max_concurrent, cpus_per_trial, progress, warm_start=None):
        import optuna
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        from lakeloop.automl.budget import SearchBudget
        from lakeloop.automl.tracking import TrialTracker
        from lakeloop.automl.trainable import BEST, run_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if search == "tpe":
            sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=max(len(fams), 4))
            points = model_families.warm_points(warm_start, fams, spec.task)
        else:
            sampler, points = optuna.samplers.RandomSampler(seed=spec.seed), None
        searcher = OptunaSearch(space=model_families.space(fams, spec.task), metric=BEST, mode=m.mode,
                                sampler=sampler, points_to_evaluate=points)
        scheduler = None
        if "mlp" in fams and spec.max_epochs >= 2:
            # sklearn trials report once (iteration 1): a grace period of 2+ keeps them out of ASHA's rungs
            scheduler = ASHAScheduler(time_attr="training_iteration", metric=BEST, mode=m.mode,
                                      max_t=spec.max_epochs, grace_period=min(3, spec.max_epochs), reduction_factor=3)
        payload = {"X": training.raw_features(prepared.train, spec),
                   "y": training.target_values(prepared.train, spec),
                   "folds": folds, "spec": spec.to_dict()}
        if max_concurrent is None:
            cpus = int(ray.cluster_resources().get("CPU", 2))
            max_concurrent = min(4, max(2, cpus))
        display = _Progress(enabled=progress, total=max_trials, budget_s=budget_s, metric=m.name,
                            greater_is_better=m.greater_is_better)
        tracker = TrialTracker(client=client, experiment_id=experiment_id, parent_run_id=run_id, seed=spec.seed,
                               metric=m.name, greater_is_better=m.greater_is_better, progress=display.update)
        trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload), {"cpu": cpus_per_trial})
        # one node: trials reuse their actors (no process start per trial). Several: each trial gets its own
        # placement group, placed where CPUs are free; a reused actor kept quick trials on the node that
        # started first (six trials of a 3-node cluster all ran on the head)
        reuse = sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0) <= 1
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=max_trials if max_trials else -1,
                                        max_concurrent_trials=max_concurrent, reuse_actors=reuse),
            run_config=tune.RunConfig(name=f"automl-{run_id}", storage_path=_storage(self.ll), verbose=0,
                                      callbacks=[tracker], failure_config=tune.FailureConfig(max_failures=0),
                                      stop=None if budget_s is None else SearchBudget(budget_s=budget_s),
                                      # Tune's own table stays off: in Jupyter its reporter clears the cell's
                                      # output (our progress bar) and shows an empty table at verbose=0
                                      progress_reporter=tune.CLIReporter(max_report_frequency=3600)),
        )
        with display, _quiet_tune(), _signal_handlers_kept():
            try:
                tuner.fit()
            except tune.TuneError as exc:
                raise AutoMLError(f"the Ray Tune search failed: {exc}") from exc
            finally:
                tracker.finish_all()
        return tracker

    def _leaderboard(self, client, run_id: str, tracker, m, title: str):
        from lakeloop.automl import leaderboard

        board = leaderboard.table(list(tracker.records.values()), metric=m.name,
                                  greater_is_better=m.greater_is_better)
        with tempfile.TemporaryDirectory() as tmp:
            board.to_csv(Path(tmp, "leaderboard.csv"), index=False)
            leaderboard.plot(board, Path(tmp, "leaderboard.png"), metric=m.name,
                             title=f"AutoML leaderboard: {title} ({len(board)} trials)")
            client.log_artifact(run_id, str(Path(tmp, "leaderboard.csv")), "leaderboard")
            client.log_artifact(run_id, str(Path(tmp, "leaderboard.png")), "leaderboard")
        client.log_table(run_id, board.drop(columns=["params"]), "leaderboard/leaderboard.json")
        return board

    def _log_best(self, client, run_id: str, best: dict, fitted, spec: TrainingSpec, trials: int) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        params = [Param("best_family", spec.family), Param("best_trial", best["trial_id"])]
        params += [Param(f"best.{k}", str(v)) for k, v in sorted(spec.params.items())]
        if spec.epochs:
            params.append(Param("best.epochs", str(spec.epochs)))
        client.log_batch(run_id, params=params, metrics=[
            *[Metric(f"holdout_{k}", float(v), now, 0) for k, v in fitted.metrics.items()],
            Metric(f"best_val_{spec.metric}", float(best[f"val_{spec.metric}"]), now, 0),
            Metric("trials", float(trials), now, 0), Metric("refit_seconds", fitted.fit_seconds, now, 0)])
        client.set_tag(run_id, "lakeloop.best_run_id", best["run_id"])
        client.log_text(run_id, json.dumps(spec.to_dict(), indent=2, default=str), "lakeloop/training_spec.json")


def _model_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def _storage(ll: "Lakeloop") -> str:
    root = ll.config.lake.root
    if "://" in root:
        return root.rstrip("/") + "/_tune"
    path = Path(root, "_tune")
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


@contextlib.contextmanager
def _quiet_tune():
    """Tune's console output off (its new output engine prints a banner even at verbose=0)."""
    import logging
    import os

    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    loggers = [logging.getLogger(n) for n in ("ray.tune", "ray.train")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


@contextlib.contextmanager
def _signal_handlers_kept():
    """The process's SIGINT and SIGUSR1 handlers as they were, once the search ends.

    Tune installs its own for the run (a Ctrl-C ends the search gracefully) and leaves them installed:
    afterwards a Ctrl-C in the notebook or CLI only logged "Stop signal received ... ending Ray Tune run"
    and no longer interrupted anything (a `lakeloop demo` past AutoML could not be stopped by SIGINT)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # Tune installs none there either
        yield
        return
    kinds = [signal.SIGINT] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
    saved = {k: signal.getsignal(k) for k in kinds}
    try:
        yield
    finally:
        for kind, handler in saved.items():
            if handler is not None:  # None: set from outside Python, cannot be put back
                signal.signal(kind, handler)


class _Progress:
    """Trials finished, best validation score, elapsed time: a bar in a terminal (stderr) or in Jupyter."""

    def __init__(self, *, enabled: bool | None, total: int | None, budget_s: float | None, metric: str,
                 greater_is_better: bool):
        from lakeloop.display import ProgressBar

        budget = f", budget {budget_s:g}s" if budget_s else ""
        self.bar = ProgressBar(f"AutoML search{budget}", total=total, enabled=enabled)
        self.enabled = self.bar.enabled
        self.total, self.budget_s, self.metric, self.gib = total, budget_s, metric, greater_is_better

    def __enter__(self):
        self.bar.__enter__()
        return self

    def update(self, tracker) -> None:
        if not self.enabled:
            return
        done = [r for r in tracker.records.values() if r.status != "RUNNING"]
        scores = [r.best()[0] for r in done if r.best()[0] is not None]
        best = (max(scores) if self.gib else min(scores)) if scores else None
        text = f"AutoML search: best val {self.metric} {best:.4f}" if best is not None else "AutoML search"
        self.bar.update(completed=len(done), description=text)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)
