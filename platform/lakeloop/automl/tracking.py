"""Every Tune trial as an MLflow run nested under the search's parent run.

``TrialTracker`` is a Tune callback running on the driver: it alone writes to
the tracking store (one writer; sqlite does not like many), so trials stay
plain compute. Each trial run gets the family and its parameters, the seed,
every reported result as a metric step (per epoch for the MLP), its
duration and final status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from lakeloop.automl import family as families
from lakeloop.automl.trainable import BEST, NODE, SCORE

STEP_METRICS = (SCORE, BEST, "train_loss", "epoch_seconds", "fit_seconds")


@dataclass
class TrialRecord:
    """What the driver saw of one trial."""

    trial_id: str
    run_id: str
    family: str
    params: dict
    config: dict
    started: float
    history: list[dict] = field(default_factory=list)
    status: str = "RUNNING"
    duration_s: float | None = None
    error: str | None = None

    def best(self) -> tuple[float | None, int | None]:
        """(best validation score, the epoch it was reached at), as the trial last reported them."""
        if not self.history:
            return None, None
        last = self.history[-1]
        return last.get(BEST), last.get("best_epoch")


class TrialTracker(Callback):
    """Logs trials to MLflow and feeds a progress display."""

    def __init__(self, *, client, experiment_id: str, parent_run_id: str, seed: int, metric: str,
                 greater_is_better: bool, progress=None):
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.seed = seed
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.progress = progress
        self.records: dict[str, TrialRecord] = {}

    def __getstate__(self):  # Tune pickles its run config; the client and display stay here
        state = dict(self.__dict__)
        state["client"] = None
        state["progress"] = None
        return state

    # -- Tune hooks --------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.records:
            return
        family, params = families.params_of(trial.config)
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{family}-{trial.trial_id}",
            tags={"mlflow.parentRunId": self.parent_run_id, "lakeloop.kind": "trial",
                  "lakeloop.trial_id": trial.trial_id, "lakeloop.family": family},
        )
        from mlflow.entities import Param

        logged = [Param("family", family), Param("seed", str(self.seed)), Param("metric", self.metric)]
        logged += [Param(k, _text(v)) for k, v in sorted(params.items())]
        self.client.log_batch(run.info.run_id, params=logged)
        self.records[trial.trial_id] = TrialRecord(trial_id=trial.trial_id, run_id=run.info.run_id, family=family,
                                                   params=params, config=dict(trial.config), started=time.time())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rec = self.records.get(trial.trial_id)
        if rec is None:
            return
        from mlflow.entities import Metric

        step = int(result.get("training_iteration", len(rec.history) + 1))
        if not rec.history and result.get(NODE):  # where it ran: on a cluster, trials spread over nodes
            self.client.set_tag(rec.run_id, "lakeloop.node_id", str(result[NODE]))
        rec.history.append({k: result.get(k) for k in (*STEP_METRICS, "epoch", "best_epoch", "time_total_s")})
        now = int(time.time() * 1000)
        logged = [Metric(f"val_{self.metric}" if k == SCORE else k, float(result[k]), now, step)
                  for k in STEP_METRICS if isinstance(result.get(k), (int, float))]
        self.client.log_batch(rec.run_id, metrics=logged)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        try:
            error = trial.get_error()
        except Exception:  # the error file may be unreadable; the status still says FAILED
            error = None
        text = str(error).strip().splitlines() if error else []
        self._finish(trial.trial_id, "FAILED", error=" | ".join(text[-3:]) or "the trial raised an error")

    # -- closing -------------------------------------------------------------------
    def finish_all(self, status: str = "KILLED", note: str = "stopped when the search's budget ran out"):
        """Close runs Tune never reported as complete (stopped by the time budget)."""
        for trial_id, rec in self.records.items():
            if rec.status == "RUNNING":
                self._finish(trial_id, status, error=note)

    def _finish(self, trial_id: str, status: str, error: str | None = None):
        rec = self.records.get(trial_id)
        if rec is None or rec.status != "RUNNING":
            return
        from mlflow.entities import Metric

        rec.status = status
        rec.error = error
        rec.duration_s = time.time() - rec.started
        best, best_epoch = rec.best()
        now = int(time.time() * 1000)
        logged = [Metric("duration_s", rec.duration_s, now, 0), Metric("epochs_run", float(len(rec.history)), now, 0)]
        if best is not None:
            logged.append(Metric(f"best_val_{self.metric}", float(best), now, 0))
            logged.append(Metric("best_epoch", float(best_epoch or 1), now, 0))
        self.client.log_batch(rec.run_id, metrics=logged)
        if error:
            self.client.set_tag(rec.run_id, "lakeloop.error", _text(error)[:4000])
        self.client.set_terminated(rec.run_id, status)
        if self.progress is not None:
            self.progress(self)

    def completed(self) -> list[TrialRecord]:
        return [r for r in self.records.values() if r.history]


def _text(v: Any) -> str:
    return "None" if v is None else str(v)
