"""From a frame to a fitted pipeline and its holdout score, the same way every time.

The steps, shared by the search, the refit of the best trial and ``rebuild``:

1. **canonical order**: rows without a label are dropped and the rest sorted by
   (timestamp, content hash), so a frame read twice in another row order gives
   the same splits and the same model;
2. **holdout**: the last ``holdout_fraction`` of rows in time when the frame has a
   timestamp, else a stratified (classification) random split by ``seed``;
3. **validation** inside the rest: the same rule again, or ``cv_folds`` folds
   (``TimeSeriesSplit`` when ordered by time);
4. **fit** on all non-holdout rows and score on the holdout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lakeloop.automl import metric as metrics
from lakeloop.automl.spec import TrainingSpec
from lakeloop.errors import AutoMLError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MIN_ROWS = 20


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A frame in canonical order, split into the part to learn from and the holdout."""

    train: "pd.DataFrame"
    holdout: "pd.DataFrame"
    frame_hash: str
    rows: int
    dropped_unlabelled: int


@dataclass(frozen=True, kw_only=True)
class Fitted:
    """A fitted pipeline with its holdout and scores."""

    pipeline: Any
    prepared: Prepared
    metrics: dict[str, float]
    fit_seconds: float


def column_kinds(df: "pd.DataFrame", features: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(numeric, categorical, unusable) feature columns by dtype; datetimes are unusable."""
    import pandas as pd
    from pandas.api import types

    numeric, categorical, unusable = [], [], []
    for c in features:
        s = df[c]
        if types.is_bool_dtype(s) or types.is_numeric_dtype(s):
            numeric.append(c)
        elif types.is_datetime64_any_dtype(s) or types.is_timedelta64_dtype(s):
            unusable.append(c)
        elif isinstance(s.dtype, pd.CategoricalDtype) or types.is_object_dtype(s) or types.is_string_dtype(s):
            categorical.append(c)
        else:
            unusable.append(c)
    return numeric, categorical, unusable


def raw_features(df: "pd.DataFrame", spec: TrainingSpec) -> "pd.DataFrame":
    """The feature columns as callers will send them: categories as plain objects."""
    import pandas as pd

    out = df[list(spec.features)].copy()
    for c in spec.categorical:
        s = out[c]
        if isinstance(s.dtype, pd.CategoricalDtype) or not pd.api.types.is_object_dtype(s):
            out[c] = s.astype(object).where(s.notna(), None)
    return out


def _time_key(df: "pd.DataFrame", column: str) -> "np.ndarray":
    import pandas as pd

    ts = pd.to_datetime(df[column], utc=True, errors="coerce")
    return ts.to_numpy(dtype="datetime64[ns]").astype("int64")


def canonical(df: "pd.DataFrame", spec: TrainingSpec) -> tuple["pd.DataFrame", str, int]:
    """Rows with a label, in an order that depends on content only; plus a content hash."""
    import numpy as np
    import pandas as pd

    missing = [c for c in spec.columns if c not in df.columns]
    if missing:
        raise AutoMLError(f"the training frame has no column(s) {missing}; it has {list(df.columns)}")
    data = df[spec.columns]
    labelled = data[spec.target].notna().to_numpy()
    dropped = int((~labelled).sum())
    data = data[labelled]
    hashed = data[sorted(data.columns)]
    row_hash = pd.util.hash_pandas_object(hashed, index=False).to_numpy()
    if spec.timestamp_column:
        order = np.lexsort((row_hash, _time_key(data, spec.timestamp_column)))
    else:
        order = np.argsort(row_hash, kind="stable")
    data = data.iloc[order].reset_index(drop=True)
    digest = hashlib.sha256("\x1f".join(sorted(data.columns)).encode())
    digest.update(np.ascontiguousarray(row_hash[order]).tobytes())
    return data, digest.hexdigest()[:16], dropped


def _split_indices(n: int, fraction: float, y, spec: TrainingSpec, salt: int) -> tuple["np.ndarray", "np.ndarray"]:
    """(keep, held) row positions: the time-ordered tail, or a seeded (stratified) sample."""
    import numpy as np

    n_held = max(1, int(round(n * fraction)))
    if n - n_held < 1:
        raise AutoMLError(f"{n} rows are too few to hold out {fraction:.0%}")
    if spec.timestamp_column:
        return np.arange(n - n_held), np.arange(n - n_held, n)
    from sklearn.model_selection import train_test_split

    stratify = None
    if spec.task == "classification":
        _, counts = np.unique(np.asarray(y), return_counts=True)
        if counts.min() >= 2 and n_held >= len(counts):
            stratify = np.asarray(y)
    keep, held = train_test_split(np.arange(n), test_size=n_held, random_state=spec.seed + salt,
                                  stratify=stratify)
    return np.sort(keep), np.sort(held)


def prepare(df: "pd.DataFrame", spec: TrainingSpec) -> Prepared:
    """Canonical order, then the holdout split."""
    data, digest, dropped = canonical(df, spec)
    if len(data) < MIN_ROWS:
        raise AutoMLError(f"the training frame has {len(data)} labelled rows; at least {MIN_ROWS} are needed")
    if spec.task == "classification" and data[spec.target].nunique() < 2:
        raise AutoMLError(f"target {spec.target!r} has a single class; classification needs at least two")
    keep, held = _split_indices(len(data), spec.holdout_fraction, data[spec.target], spec, salt=0)
    return Prepared(train=data.iloc[keep].reset_index(drop=True), holdout=data.iloc[held].reset_index(drop=True),
                    frame_hash=digest, rows=len(data), dropped_unlabelled=dropped)


def folds(train: "pd.DataFrame", spec: TrainingSpec) -> list[tuple["np.ndarray", "np.ndarray"]]:
    """Validation folds inside the training part: one split, or ``cv_folds`` folds."""
    import numpy as np

    n = len(train)
    y = train[spec.target].to_numpy()
    if not spec.cv_folds:
        return [_split_indices(n, spec.validation_fraction, y, spec, salt=1)]
    from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit

    if spec.timestamp_column:
        splitter = TimeSeriesSplit(n_splits=spec.cv_folds)
        return [(a, b) for a, b in splitter.split(np.zeros(n))]
    if spec.task == "classification" and np.unique(y, return_counts=True)[1].min() >= spec.cv_folds:
        splitter = StratifiedKFold(n_splits=spec.cv_folds, shuffle=True, random_state=spec.seed + 1)
        return [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(n), y)]
    splitter = KFold(n_splits=spec.cv_folds, shuffle=True, random_state=spec.seed + 1)
    return [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(n))]


def target_values(df: "pd.DataFrame", spec: TrainingSpec) -> "np.ndarray":
    import numpy as np

    y = df[spec.target].to_numpy()
    return y.astype(np.float64) if spec.task == "regression" else y


def fit(df: "pd.DataFrame", spec: TrainingSpec) -> Fitted:
    """Fit ``spec.family`` with ``spec.params`` and ``spec.seed`` on ``df`` and score the holdout."""
    return fit_prepared(prepare(df, spec), spec)


def fit_prepared(prepared: Prepared, spec: TrainingSpec) -> Fitted:
    """:func:`fit` on a frame already prepared (canonical order, holdout split) for ``spec``."""
    import time

    from lakeloop.automl import family as families

    if not spec.family:
        raise AutoMLError("the training spec names no model family; run a search first")
    params = dict(spec.params)
    if families.FAMILIES[spec.family].by_epoch:
        params["epochs"] = spec.epochs or spec.max_epochs
    pipe = families.build(spec.family, params, task=spec.task, seed=spec.seed, numeric=list(spec.numeric),
                          categorical=list(spec.categorical))
    start = time.perf_counter()
    pipe.fit(raw_features(prepared.train, spec), target_values(prepared.train, spec))
    seconds = time.perf_counter() - start
    return Fitted(pipeline=pipe, prepared=prepared, metrics=score(pipe, prepared.holdout, spec), fit_seconds=seconds)


def score(model, frame: "pd.DataFrame", spec: TrainingSpec) -> dict[str, float]:
    """The spec's metric (under its name) and the other reported metrics of ``model`` on ``frame``."""
    pred, proba, classes = metrics.outputs_of(model, raw_features(frame, spec), spec.task)
    y = target_values(frame, spec)
    out = metrics.evaluate(spec.task, y, pred, proba, classes)
    m = metrics.resolve(spec.task, spec.metric)
    out[m.name] = m.score(y, pred, proba, classes)
    return out
