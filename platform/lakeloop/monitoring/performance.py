"""Performance before labels arrive: confidence-based estimation (CBPE) and direct loss estimation (DLE).

Both learn on a *labelled reference*: the served version's holdout rows, its
outputs on them and their true labels (rows it did not train on, so its
confidence there is honest). Per window they answer what the metric is
expected to be on the window's rows, from the outputs (and features) alone.

- :class:`CBPE` (classifiers): the logged ``probability`` is calibrated on
  the reference (isotonic regression). Binary: ``c = P(y = positive | p)``,
  so a row predicted positive is right with probability ``c`` and one
  predicted negative with ``1 - c``; the expected accuracy is their mean.
  ROC AUC comes from the expected confusion matrix at every threshold of
  the model's score: expected true positives above ``t`` are the sum of
  ``c``, false positives the sum of ``1 - c``. More than two classes: the
  predicted class's probability is calibrated to ``P(correct)`` directly
  (accuracy only).
- :class:`DLE` (regressors): two small gradient-boosting models learn the
  absolute and the squared error from the features and the prediction; the
  window's estimated ``mae`` is the mean predicted absolute error, its
  ``rmse`` the root of the mean predicted squared error.

What neither can see: a change in how labels follow the inputs (concept
drift). The estimate moves when rows move into regions where the model was
less (or more) sure on the reference; when the relation itself changes,
only labels tell.

>>> est = CBPE().fit(reference_outputs, reference_labels)     # doctest: +SKIP
>>> est.estimate(window_outputs)["accuracy"]                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from lakeloop.errors import MonitorError
from lakeloop.monitoring.detectors import category

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MIN_ROWS = 50
MAX_CATEGORIES = 250


def _probabilities(outputs: "pd.DataFrame", what: str) -> "np.ndarray":
    import numpy as np
    import pandas as pd

    if "probability" not in outputs.columns:
        raise MonitorError(f"{what} has no 'probability' output; CBPE needs the model's predicted probability")
    return pd.to_numeric(outputs["probability"], errors="coerce").to_numpy(dtype=np.float64)


class CBPE:
    """Confidence-based performance estimation for a classifier: ``fit`` on the labelled reference, then
    ``estimate`` per window (accuracy, and ROC AUC for two classes)."""

    def __init__(self, *, min_rows: int = MIN_ROWS):
        self.min_rows = min_rows

    def __repr__(self) -> str:
        fitted = f", fitted on {self.reference_rows_} rows ({self.kind_})" if hasattr(self, "kind_") else ""
        return f"CBPE(min_rows={self.min_rows}{fitted})"

    def fit(self, outputs: "pd.DataFrame", labels: Sequence[Any]) -> "CBPE":
        import numpy as np
        from sklearn.isotonic import IsotonicRegression

        p = _probabilities(outputs, "the reference")
        preds = [category(v) for v in outputs["prediction"].tolist()]
        ys = [category(v) for v in list(labels)]
        ok = np.array([not np.isnan(x) and y != "<null>" and q != "<null>" for x, y, q in zip(p, ys, preds)])
        if ok.sum() < self.min_rows:
            raise MonitorError(f"the labelled reference has {int(ok.sum())} usable rows; CBPE needs at least "
                               f"{self.min_rows}")
        p = p[ok]
        preds = [q for q, k in zip(preds, ok) if k]
        ys = [y for y, k in zip(ys, ok) if k]
        classes = sorted(set(ys) | set(preds))
        self.reference_rows_ = int(ok.sum())
        self.calibrator_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
        if len(classes) == 2:
            self.kind_ = "binary"
            self.positive_ = self._positive(p, preds, classes)
            y = np.array([v == self.positive_ for v in ys], dtype=np.float64)
            if y.all() or not y.any():
                raise MonitorError("the labelled reference has one class only; CBPE needs both to calibrate")
            self.calibrator_.fit(p, y)
        elif len(classes) > 2:
            self.kind_ = "multiclass"  # the predicted class's probability, calibrated to P(correct)
            correct = np.array([q == y for q, y in zip(preds, ys)], dtype=np.float64)
            self.calibrator_.fit(p, correct)
        else:
            raise MonitorError(f"the labelled reference has one class only ({classes}); CBPE needs two or more")
        self.reference_ = self.estimate(outputs.reset_index(drop=True).loc[ok])
        return self

    @staticmethod
    def _positive(p, preds: list[str], classes: list[str]) -> str:
        """The class the model predicts when ``probability >= 0.5`` (the pyfunc logs the positive class's)."""
        from collections import Counter

        high = Counter(q for q, x in zip(preds, p) if x >= 0.5).most_common(1)
        if high:
            return high[0][0]
        low = Counter(q for q, x in zip(preds, p) if x < 0.5).most_common(1)
        return next(c for c in classes if c != low[0][0])

    def estimate(self, outputs: "pd.DataFrame") -> dict:
        """``{"rows", "accuracy", "accuracy_sd", "roc_auc"}`` expected on these outputs.

        ``accuracy_sd`` is the spread of the realized accuracy around the
        estimate that the window's size alone gives (labels drawn from the
        calibrated probabilities).
        """
        import numpy as np

        if not hasattr(self, "calibrator_"):
            raise MonitorError("this CBPE is not fitted yet: call fit(outputs, labels) on the labelled reference")
        p = _probabilities(outputs, "the window")
        keep = ~np.isnan(p)
        p = p[keep]
        n = int(len(p))
        if n == 0:
            return {"rows": 0, "accuracy": None, "accuracy_sd": None, "roc_auc": None}
        c = np.clip(self.calibrator_.predict(p), 0.0, 1.0)
        if self.kind_ == "binary":
            preds = [category(v) for v, k in zip(outputs["prediction"].tolist(), keep) if k]
            positive = np.array([q == self.positive_ for q in preds])
            right = np.where(positive, c, 1.0 - c)
            auc = _expected_auc(p, c)
        else:
            right, auc = c, None
        return {"rows": n, "accuracy": float(right.mean()),
                "accuracy_sd": float(np.sqrt((right * (1 - right)).sum()) / n), "roc_auc": auc}


def _expected_auc(score: "np.ndarray", c: "np.ndarray") -> float | None:
    """ROC AUC from expected confusion matrices at every threshold of ``score`` (ties as one step)."""
    import numpy as np

    positives, negatives = float(c.sum()), float((1 - c).sum())
    if positives <= 1e-9 or negatives <= 1e-9:
        return None
    order = np.argsort(-score, kind="stable")
    s, pos, neg = score[order], c[order], 1.0 - c[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last row of each distinct score
    tpr = np.r_[0.0, np.cumsum(pos)[last] / positives]
    fpr = np.r_[0.0, np.cumsum(neg)[last] / negatives]
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))


class _Encoder:
    """Features as a float matrix for the loss models: numbers as they are, categories as codes (unseen: NaN)."""

    def fit(self, features: "pd.DataFrame") -> "_Encoder":
        import pandas as pd
        from pandas.api import types

        self.columns_, self.categories_ = list(features.columns), {}
        for col in self.columns_:
            s = features[col]
            if not (types.is_numeric_dtype(s) and not types.is_bool_dtype(s)):
                counts = pd.Series([category(v) for v in s.astype(object)]).value_counts()
                self.categories_[col] = {c: i for i, c in enumerate(sorted(counts.index[:MAX_CATEGORIES]))}
        return self

    def transform(self, features: "pd.DataFrame", prediction: "np.ndarray") -> "np.ndarray":
        import numpy as np
        import pandas as pd

        cols = []
        for col in self.columns_:
            if col not in features.columns:
                cols.append(np.full(len(features), np.nan))
            elif col in self.categories_:
                index = self.categories_[col]
                cols.append(np.array([index.get(category(v), np.nan) for v in features[col].astype(object)],
                                     dtype=np.float64))
            else:
                s = features[col]
                s = s.astype("float64") if pd.api.types.is_bool_dtype(s) else s
                cols.append(pd.to_numeric(s, errors="coerce").astype("float64").to_numpy())
        cols.append(np.asarray(prediction, dtype=np.float64))
        return np.column_stack(cols)

    def categorical_mask(self) -> list[bool]:
        return [c in self.categories_ for c in self.columns_] + [False]


def _one_thread():
    """OpenMP on one thread: the loss models are small, and on a busy machine OpenMP's spinning threads made
    one fit take 68 s instead of 1.4 s here (the monitor actor holds a tenth of a CPU)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


class DLE:
    """Direct loss estimation for a regressor: ``fit`` on the labelled reference (features, outputs, labels),
    then ``estimate`` per window (mae and rmse)."""

    def __init__(self, *, seed: int = 0, min_rows: int = MIN_ROWS):
        self.seed, self.min_rows = seed, min_rows

    def __repr__(self) -> str:
        fitted = f", fitted on {self.reference_rows_} rows" if hasattr(self, "reference_rows_") else ""
        return f"DLE(seed={self.seed}{fitted})"

    def _model(self, rows: int):
        from sklearn.ensemble import HistGradientBoostingRegressor

        leaf = max(10, rows // 25)  # a small reference gets coarse leaves: the error is noisy
        return HistGradientBoostingRegressor(max_iter=100, learning_rate=0.05, max_leaf_nodes=15,
                                             min_samples_leaf=leaf, l2_regularization=1.0,
                                             categorical_features=self.encoder_.categorical_mask(),
                                             early_stopping=False, random_state=self.seed)

    def fit(self, features: "pd.DataFrame", outputs: "pd.DataFrame", labels: Sequence[Any]) -> "DLE":
        import numpy as np
        import pandas as pd

        pred = pd.to_numeric(outputs["prediction"], errors="coerce").to_numpy(dtype=np.float64)
        y = pd.to_numeric(pd.Series(list(labels)), errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(pred) & np.isfinite(y)
        if ok.sum() < self.min_rows:
            raise MonitorError(f"the labelled reference has {int(ok.sum())} usable rows; DLE needs at least "
                               f"{self.min_rows}")
        features = features.reset_index(drop=True).loc[ok].reset_index(drop=True)
        self.encoder_ = _Encoder().fit(features)
        x = self.encoder_.transform(features, pred[ok])
        err = pred[ok] - y[ok]
        with _one_thread():
            self.abs_model_ = self._model(len(x)).fit(x, np.abs(err))
            self.sq_model_ = self._model(len(x)).fit(x, err**2)
        self.reference_rows_ = int(ok.sum())
        self.reference_ = {"rows": self.reference_rows_, "mae": float(np.abs(err).mean()),
                           "rmse": float(np.sqrt((err**2).mean()))}
        return self

    def estimate(self, features: "pd.DataFrame", outputs: "pd.DataFrame") -> dict:
        """``{"rows", "mae", "rmse"}`` expected on these rows."""
        import numpy as np
        import pandas as pd

        if not hasattr(self, "encoder_"):
            raise MonitorError("this DLE is not fitted yet: call fit(features, outputs, labels) on the reference")
        pred = pd.to_numeric(outputs["prediction"], errors="coerce").to_numpy(dtype=np.float64)
        keep = np.isfinite(pred)
        if not keep.any():
            return {"rows": 0, "mae": None, "rmse": None}
        x = self.encoder_.transform(features.reset_index(drop=True).loc[keep], pred[keep])
        with _one_thread():
            mae = np.clip(self.abs_model_.predict(x), 0.0, None).mean()
            rmse = np.sqrt(np.clip(self.sq_model_.predict(x), 0.0, None).mean())
        return {"rows": int(keep.sum()), "mae": float(mae), "rmse": float(rmse)}


def fit_estimator(task: str, features: "pd.DataFrame", outputs: "pd.DataFrame", labels: Sequence[Any], *,
                  seed: int = 0) -> "CBPE | DLE":
    """The estimator for a task, fitted on a labelled reference."""
    if len(features) != len(outputs) or len(outputs) != len(labels):
        raise MonitorError(f"the labelled reference is not aligned: {len(features)} feature rows, {len(outputs)} "
                           f"outputs, {len(labels)} labels")
    if task == "regression":
        return DLE(seed=seed).fit(features, outputs, labels)
    return CBPE().fit(outputs.reset_index(drop=True), list(labels))


def estimate(estimator: "CBPE | DLE", features: "pd.DataFrame", outputs: "pd.DataFrame") -> dict:
    """The estimator's answer for one window, whatever its kind."""
    if isinstance(estimator, DLE):
        return estimator.estimate(features, outputs)
    return estimator.estimate(outputs)
