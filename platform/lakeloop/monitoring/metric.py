"""The live metric of a served version: its predictions joined with ``logs.feedback`` labels.

Rows join on ``(request_id, row)``; a label given twice counts once (the
latest). Classification: ``accuracy`` (default) or ``roc_auc`` (binary, from
the logged ``probability``); regression: ``rmse`` (default) or ``mae``.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Iterable

from lakeloop.monitoring.detectors import category

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop

FEEDBACK = "logs.feedback"


def default_metric(task: str | None) -> str:
    return "rmse" if task == "regression" else "accuracy"


def logged_value(text):
    """A value as the logs hold it (JSON text) back: null or NaN is None, text that is not JSON stays text."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def labelled_predictions(joined: "pd.DataFrame") -> tuple[list, list, list, list[int]]:
    """From rows with logged ``output`` and ``label``: the outputs, their predictions, the labels, and the
    positions where both a prediction and a label are present."""
    outputs = [logged_value(o) or {} for o in joined["output"]]
    labels = [logged_value(lb) for lb in joined["label"]]
    preds = [o.get("prediction") if isinstance(o, dict) else None for o in outputs]
    keep = [i for i, (p, y) in enumerate(zip(preds, labels)) if p is not None and y is not None]
    return outputs, preds, labels, keep


def read_feedback(ll: "Lakeloop", request_ids: Iterable[str]) -> "pd.DataFrame":
    """Labels for these requests, one per ``(request_id, row)`` (the latest)."""
    import pandas as pd

    ids = sorted(set(request_ids))
    table = ll.lake.table(FEEDBACK)
    if not ids or not table.exists():
        return pd.DataFrame(columns=["request_id", "row", "label"])
    fb = table.to_pandas(columns=["request_id", "row", "label", "time"], filters=[("request_id", "in", ids)])
    fb = fb.sort_values("time", kind="stable").drop_duplicates(["request_id", "row"], keep="last")
    return fb[["request_id", "row", "label"]]


def score(rows: "pd.DataFrame", feedback: "pd.DataFrame", metric: str) -> tuple[float | None, int]:
    """``(value, labelled rows)`` of ``metric`` over the ``rows`` (request_id, row, output) that have labels."""
    import numpy as np

    if rows.empty or feedback.empty:
        return None, 0
    joined = rows[["request_id", "row", "output"]].merge(feedback, on=["request_id", "row"], how="inner")
    if joined.empty:
        return None, 0
    outputs, preds, labels, keep = labelled_predictions(joined)
    n = len(keep)
    if n == 0:
        return None, 0
    if metric == "accuracy":
        return float(np.mean([category(preds[i]) == category(labels[i]) for i in keep])), n
    if metric in ("rmse", "mae"):
        try:
            err = np.array([float(preds[i]) - float(labels[i]) for i in keep])
        except (TypeError, ValueError):
            return None, n
        return (float(np.sqrt(np.mean(err**2))) if metric == "rmse" else float(np.mean(np.abs(err)))), n
    if metric == "roc_auc":
        return _auc([outputs[i] for i in keep], [labels[i] for i in keep]), n
    raise ValueError(f"unknown live metric {metric!r}")


def _auc(outputs: list[dict], labels: list) -> float | None:
    """Binary ROC AUC from the logged ``probability`` (of the class predicted when it is >= 0.5)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    probs, positive = [], {}
    for o in outputs:
        p = o.get("probability")
        if p is None:
            return None
        probs.append(float(p))
        if float(p) >= 0.5:
            key = category(o.get("prediction"))
            positive[key] = positive.get(key, 0) + 1
    classes = sorted({category(y) for y in labels})
    if len(classes) != 2 or not positive:
        return None
    pos = max(positive, key=positive.get)
    y = np.array([category(lb) == pos for lb in labels])
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.array(probs)))
