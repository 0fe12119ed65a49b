"""Metrics a search optimises and a gate compares, with the direction that counts as better.

One scoring path for trials, the refit, the registry and the gate: a metric
takes the true labels and a model's outputs (predicted labels, class
probabilities), so the same number comes out whether the model is a bare
pipeline in a trial or the logged pyfunc answering on a holdout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from lakeloop.errors import AutoMLError

if TYPE_CHECKING:
    import numpy as np

TASKS = ("classification", "regression")


@dataclass(frozen=True, kw_only=True)
class Metric:
    """A named score: ``greater_is_better`` decides what beats what."""

    name: str
    task: str
    greater_is_better: bool
    needs_proba: bool
    fn: Callable = None

    @property
    def mode(self) -> str:
        """Ray Tune's ``mode`` for this metric."""
        return "max" if self.greater_is_better else "min"

    def better(self, a: float, b: float, margin: float = 0.0) -> bool:
        """Whether ``a`` beats ``b`` by at least ``margin`` (in this metric's units)."""
        return a >= b + margin if self.greater_is_better else a <= b - margin

    def improvement(self, a: float, b: float) -> float:
        """How much ``a`` improves on ``b`` (positive: better), in this metric's units."""
        return a - b if self.greater_is_better else b - a

    def score(self, y_true, pred, proba=None, classes=None) -> float:
        return float(self.fn(y_true, pred, proba, classes))


def _accuracy(y, pred, proba, classes):
    from sklearn.metrics import accuracy_score

    return accuracy_score(y, pred)


def _balanced_accuracy(y, pred, proba, classes):
    from sklearn.metrics import balanced_accuracy_score

    return balanced_accuracy_score(y, pred)


def _f1(y, pred, proba, classes):
    from sklearn.metrics import f1_score

    if classes is not None and len(classes) == 2:
        return f1_score(y, pred, pos_label=classes[1])
    return f1_score(y, pred, average="macro")


def _roc_auc(y, pred, proba, classes):
    import numpy as np
    from sklearn.metrics import roc_auc_score

    proba = np.asarray(proba, dtype=float)
    if len(classes) == 2:
        positive = proba[:, 1] if proba.ndim == 2 else proba
        return roc_auc_score(np.asarray(y) == classes[1], positive)
    return roc_auc_score(y, proba, multi_class="ovr", labels=list(classes))


def _log_loss(y, pred, proba, classes):
    from sklearn.metrics import log_loss

    return log_loss(y, proba, labels=list(classes))


def _r2(y, pred, proba, classes):
    from sklearn.metrics import r2_score

    return r2_score(y, pred)


def _rmse(y, pred, proba, classes):
    import numpy as np

    diff = np.asarray(y, dtype=float) - np.asarray(pred, dtype=float)
    return float(np.sqrt(np.mean(diff * diff)))


def _mae(y, pred, proba, classes):
    from sklearn.metrics import mean_absolute_error

    return mean_absolute_error(y, pred)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(name="roc_auc", task="classification", greater_is_better=True, needs_proba=True, fn=_roc_auc),
        Metric(name="accuracy", task="classification", greater_is_better=True, needs_proba=False, fn=_accuracy),
        Metric(name="balanced_accuracy", task="classification", greater_is_better=True, needs_proba=False,
               fn=_balanced_accuracy),
        Metric(name="f1", task="classification", greater_is_better=True, needs_proba=False, fn=_f1),
        Metric(name="log_loss", task="classification", greater_is_better=False, needs_proba=True, fn=_log_loss),
        Metric(name="r2", task="regression", greater_is_better=True, needs_proba=False, fn=_r2),
        Metric(name="rmse", task="regression", greater_is_better=False, needs_proba=False, fn=_rmse),
        Metric(name="mae", task="regression", greater_is_better=False, needs_proba=False, fn=_mae),
    )
}

# What a model card and the registry report beside the optimised metric.
REPORTED = {"classification": ("accuracy", "roc_auc", "f1", "log_loss"), "regression": ("r2", "rmse", "mae")}


def resolve(task: str, metric: str | None, n_classes: int | None = None) -> Metric:
    """The metric for ``task``; ``None`` picks roc_auc (binary), accuracy (multiclass) or r2."""
    if task not in TASKS:
        raise AutoMLError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if metric is None:
        metric = "r2" if task == "regression" else ("roc_auc" if n_classes == 2 else "accuracy")
    found = METRICS.get(metric)
    if found is None or found.task != task:
        known = [m.name for m in METRICS.values() if m.task == task]
        raise AutoMLError(f"metric {metric!r} is not a {task} metric; choose one of {', '.join(known)}")
    return found


def evaluate(task: str, y_true, pred, proba=None, classes=None) -> dict[str, float]:
    """Every reported metric of ``task`` that can be computed from these outputs."""
    import numpy as np

    out = {}
    for name in REPORTED[task]:
        m = METRICS[name]
        if m.needs_proba and proba is None:
            continue
        try:
            value = m.score(y_true, pred, proba, classes)
        except ValueError:  # e.g. roc_auc with one class present in the holdout
            continue
        if np.isfinite(value):
            out[name] = value
    return out


def outputs_of(model, X, task: str) -> tuple["np.ndarray", "np.ndarray | None", "np.ndarray | None"]:
    """(predicted labels or values, class probabilities, classes) of a fitted estimator."""
    import numpy as np

    if task == "regression":
        return np.asarray(model.predict(X), dtype=float), None, None
    proba = np.asarray(model.predict_proba(X), dtype=float)
    classes = np.asarray(model.classes_)
    pred = classes[np.argmax(np.nan_to_num(proba, nan=-1.0), axis=1)]
    return pred, proba, classes
