"""Training/serving skew: feature values as served, against the offline store's values at request time.

``skew(ll, served)`` takes served rows that carry a view's join keys, the
request time and the feature values the model got, recomputes those
features with the point-in-time join the training frames use
(``ll.features.training_frame`` at the request time, known-time correct), and
counts the rows whose values differ. A difference means the online path
(online store, request-time transforms) and the offline path disagree: a
stale online store, a materialization that lagged, or a transform that is not
the same.

Only rows that carry every join key of a view can be checked. The inference
log keeps the features the model takes, so entity ids are there only when
they are model inputs themselves (``merchant_id`` in the fraud example);
the monitor reports views it could not check and why.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop


def _same(a, b, tolerance: float) -> bool:
    missing_a = a is None or (isinstance(a, float) and math.isnan(a))
    missing_b = b is None or (isinstance(b, float) and math.isnan(b))
    if missing_a or missing_b:
        return missing_a and missing_b
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
    return abs(fa - fb) <= tolerance * max(1.0, abs(fb))


def skew(ll: "Lakeloop", served: "pd.DataFrame", views: Sequence[str], *, time_column: str = "time",
         tolerance: float = 1e-6, examples: int = 3) -> dict:
    """Per view and feature: rows checked, mismatches, their rate and a few examples.

    ``served`` has the join keys, ``time_column`` (the request time) and the
    served feature columns, named ``feature`` or ``view__feature`` (as
    training frames with ``full_feature_names`` name them). Views whose keys
    or features are missing from ``served`` are listed under ``skipped``.
    """
    import pandas as pd

    out: dict = {"rows": int(len(served)), "views": {}, "skipped": {}}
    for name in views:
        view = ll.features.view(name)
        keys = list(view.join_keys)
        columns = {f: f"{name}__{f}" if f"{name}__{f}" in served.columns else f for f in view.feature_names}
        feats = [f for f in view.feature_names if columns[f] in served.columns]
        if [k for k in keys if k not in served.columns] or time_column not in served.columns:
            out["skipped"][name] = f"the served rows lack its join key(s) {keys} or {time_column!r}"
            continue
        if not feats:
            out["skipped"][name] = "none of its features are among the served values"
            continue
        rows = served[served[keys].notna().all(axis=1)].reset_index(drop=True)
        if rows.empty:
            out["skipped"][name] = f"no served row carries its join key(s) {keys}"
            continue
        entities = rows[keys + [time_column]].copy()
        entities[time_column] = pd.to_datetime(entities[time_column], utc=True)
        offline = ll.features.training_frame(entities, [f"{name}:{f}" for f in feats], timestamp_column=time_column,
                                             format="pandas")
        result = {}
        for f in feats:
            pairs = list(zip(rows[columns[f]].astype(object).tolist(), offline[f].astype(object).tolist()))
            bad = [i for i, (a, b) in enumerate(pairs) if not _same(a, b, tolerance)]
            diffs = []
            for a, b in pairs:
                try:
                    diffs.append(abs(float(a) - float(b)))
                except (TypeError, ValueError):
                    continue
            diffs = [d for d in diffs if not math.isnan(d)]
            result[columns[f]] = {"checked": len(pairs), "mismatches": len(bad), "rate": len(bad) / len(pairs),
                         "max_abs_diff": max(diffs) if diffs else None,
                         "examples": [{**{k: rows.at[i, k] for k in keys}, "served": pairs[i][0],
                                       "offline": pairs[i][1]} for i in bad[:examples]]}
        out["views"][name] = {"rows": int(len(rows)), "features": result}
    return out
