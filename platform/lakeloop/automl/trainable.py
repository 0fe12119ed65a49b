"""The Ray Tune function trainable: one trial = one family and its parameters, scored on validation.

scikit-learn families fit once per fold and report once. The MLP reports
after every epoch (the mean validation score over folds, and the best epoch
so far), so ASHA can stop it early. Trials share the machine: each runs
with one thread (OpenMP, BLAS, torch) on a fractional CPU.

The data arrives once through the object store (``tune.with_parameters``)
as plain data: feature frame, labels, fold positions, the spec as a dict.
"""

from __future__ import annotations

import time

from lakeloop.automl import family as families
from lakeloop.automl import metric as metrics
from lakeloop.automl.spec import TrainingSpec

SCORE = "val_score"
BEST = "best_val_score"  # what Tune optimises: for the MLP, the best epoch so far
NODE = "node_id"  # the Ray node the trial ran on (tracked as the trial run's tag lakeloop.node_id)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _score(spec: TrainingSpec, model, X, y) -> float:
    pred, proba, classes = metrics.outputs_of(model, X, spec.task)
    return metrics.resolve(spec.task, spec.metric).score(y, pred, proba, classes)


def run_trial(config: dict, payload: dict | None = None) -> None:
    """Train and validate one config; report ``val_score`` (and per-epoch details for the MLP)."""
    from threadpoolctl import threadpool_limits

    spec = TrainingSpec.from_dict(payload["spec"])
    family, params = families.params_of(config)
    with threadpool_limits(limits=1):
        if families.FAMILIES[family].by_epoch:
            _by_epoch(spec, family, params, payload)
        else:
            _once(spec, family, params, payload)


def _once(spec: TrainingSpec, family: str, params: dict, payload: dict) -> None:
    from ray import tune

    X, y = payload["X"], payload["y"]
    start = time.perf_counter()
    scores = []
    for train_idx, val_idx in payload["folds"]:
        pipe = families.build(family, params, task=spec.task, seed=spec.seed, numeric=list(spec.numeric),
                              categorical=list(spec.categorical))
        pipe.fit(X.iloc[train_idx], y[train_idx])
        scores.append(_score(spec, pipe, X.iloc[val_idx], y[val_idx]))
    mean = float(sum(scores) / len(scores))
    tune.report({SCORE: mean, "epoch": 1, "best_epoch": 1, BEST: mean,
                 "fold_scores": [float(s) for s in scores], "fit_seconds": time.perf_counter() - start,
                 NODE: _node_id()})


def _by_epoch(spec: TrainingSpec, family: str, params: dict, payload: dict) -> None:
    import torch
    from ray import tune

    torch.set_num_threads(1)
    X, y = payload["X"], payload["y"]
    mode = metrics.resolve(spec.task, spec.metric)
    parts = []
    for train_idx, val_idx in payload["folds"]:
        pipe = families.build(family, {**params, "epochs": spec.max_epochs}, task=spec.task, seed=spec.seed,
                              numeric=list(spec.numeric), categorical=list(spec.categorical))
        prep, model = pipe[:-1], pipe[-1]
        Xt = prep.fit_transform(X.iloc[train_idx], y[train_idx])
        Xv = prep.transform(X.iloc[val_idx])
        model.begin(Xt, y[train_idx])
        parts.append((model, Xv, y[val_idx]))
    best, best_epoch = None, 0
    for epoch in range(1, spec.max_epochs + 1):
        start = time.perf_counter()
        losses = [model.train_epoch() for model, _, _ in parts]
        scores = [_score(spec, model, Xv, yv) for model, Xv, yv in parts]
        mean = float(sum(scores) / len(scores))
        if best is None or mode.improvement(mean, best) > 0:
            best, best_epoch = mean, epoch
        tune.report({SCORE: mean, "epoch": epoch, "train_loss": float(sum(losses) / len(losses)),
                     "best_epoch": best_epoch, BEST: best,
                     "epoch_seconds": time.perf_counter() - start, NODE: _node_id()})
