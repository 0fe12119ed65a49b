"""Drift between a reference frame and a window of served rows, answered as plain data.

>>> det = DriftDetector(backend="scipy", alpha=0.05).fit(reference_df)      # doctest: +SKIP
>>> out = det.run(window_df)                                                # doctest: +SKIP
>>> out["drift"], out["features"]["amount"]["p_value"], out["mmd"]["p_value"]  # doctest: +SKIP

Each feature gets a univariate test: Kolmogorov-Smirnov for numeric columns
(on the values present; ``missing_rate`` is reported beside it), chi-squared
on the union of categories for the others (a null is a category of its own,
so a burst of missing values shows). The multivariate test is MMD² with an
RBF kernel on numeric columns standardised by the reference and one-hot
categories, with a permutation p-value. The window's ``drift`` is the
multiple-testing decision (Bonferroni or Benjamini-Hochberg at ``alpha``)
over every per-feature p-value and the MMD p-value together, so the chance
that a window from the reference distribution is flagged stays at or below
``alpha``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from lakeloop.errors import MonitorError
from lakeloop.monitoring.backends import make_backend
from lakeloop.monitoring.settings import MonitorSettings

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MISSING = "<null>"
MMD = "mmd"


def category(value: Any) -> str:
    """A category as text: nulls are ``<null>``, integral floats print as integers (1.0 and 1 agree)."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        if value.is_integer():
            return str(int(value))
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return category(value.item())
    return str(value)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class DriftDetector:
    """Tests windows against one reference; ``fit`` once, ``run`` per window.

    Parameters are those of :class:`~lakeloop.monitoring.settings.MonitorSettings`
    (``backend``, ``alpha``, ``correction``, ``mmd``, ``n_permutations``,
    ``mmd_reference_rows``, ``reference_rows``, ``ks_method``, ``min_rows``,
    ``seed``, ``features``, ``categorical``). ``features`` defaults to every
    reference column; a column is numeric by dtype (booleans are
    categorical) unless named in ``categorical``.
    """

    def __init__(self, *, backend: str = "scipy", alpha: float = 0.05, correction: str = "bonferroni",
                 mmd: bool = True, n_permutations: int = 100, mmd_reference_rows: int = 1000,
                 reference_rows: int | None = 5000, ks_method: str = "asymp", min_rows: int = 5, seed: int = 0,
                 features: Sequence[str] | None = None, categorical: Sequence[str] | None = None):
        checked = MonitorSettings(backend=backend, alpha=alpha, correction=correction, mmd=mmd,
                                  n_permutations=n_permutations, mmd_reference_rows=mmd_reference_rows,
                                  reference_rows=reference_rows, ks_method=ks_method, min_rows=min_rows, seed=seed,
                                  features=features, categorical=categorical)
        self.params = checked.detector_kwargs()
        for k, v in self.params.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        fitted = f", fitted on {self.reference_rows_} rows" if hasattr(self, "reference_rows_") else ""
        return f"DriftDetector(backend={self.backend!r}, alpha={self.alpha}, correction={self.correction!r}{fitted})"

    @classmethod
    def from_settings(cls, settings: MonitorSettings, **overrides) -> "DriftDetector":
        return cls(**{**settings.detector_kwargs(), **overrides})

    # -- fit -----------------------------------------------------------------------
    def fit(self, reference: "pd.DataFrame") -> "DriftDetector":
        import numpy as np
        import pandas as pd
        from pandas.api import types

        if not isinstance(reference, pd.DataFrame):
            raise MonitorError(f"the reference must be a pandas DataFrame, not {type(reference).__name__}")
        features = list(self.features or reference.columns)
        absent = [f for f in features if f not in reference.columns]
        if absent:
            raise MonitorError(f"the reference has no column(s) {absent}; it has {list(reference.columns)}")
        if not features:
            raise MonitorError("the reference has no feature columns to compare with")
        if len(reference) < max(self.min_rows, 10):
            raise MonitorError(f"the reference has {len(reference)} rows; drift tests need at least "
                               f"{max(self.min_rows, 10)}")
        rng = np.random.default_rng(self.seed)
        ref = reference[features].reset_index(drop=True)
        if self.reference_rows is not None and len(ref) > self.reference_rows:
            ref = ref.iloc[np.sort(rng.choice(len(ref), self.reference_rows, replace=False))].reset_index(drop=True)
        forced = set(self.categorical or ())
        unknown = forced - set(features)
        if unknown:
            raise MonitorError(f"categorical names {sorted(unknown)} that are not among the features {features}")
        self.numeric_, self.categorical_ = [], []
        for f in features:
            s = ref[f]
            numeric = types.is_numeric_dtype(s) and not types.is_bool_dtype(s) and not isinstance(
                s.dtype, pd.CategoricalDtype)  # booleans are two categories
            (self.categorical_ if f in forced or not numeric else self.numeric_).append(f)
        self.features_ = features
        self.ref_numeric_ = {}
        self.scale_ = {}
        for f in self.numeric_:
            v = self.numeric_values(ref, f)
            v = v[~np.isnan(v)]
            self.ref_numeric_[f] = v
            mean = float(v.mean()) if len(v) else 0.0
            std = float(v.std()) if len(v) > 1 else 1.0
            self.scale_[f] = (mean, std if std > 0 else 1.0)
        self.categories_ = {}
        self.ref_codes_ = {}
        for f in self.categorical_:
            values = self.category_values(ref, f)
            cats = sorted(set(values))
            self.categories_[f] = cats
            index = {c: i for i, c in enumerate(cats)}
            self.ref_codes_[f] = np.array([index[c] for c in values], dtype=np.int64)
        x_ref = None
        if self.mmd:
            sub = ref
            if len(ref) > self.mmd_reference_rows:
                sub = ref.iloc[np.sort(rng.choice(len(ref), self.mmd_reference_rows, replace=False))]
            x_ref = self.matrix(sub)
        # The permutation p-value is at least 1/(B+1); with every feature test and MMD sharing alpha, the
        # smallest per-test threshold is alpha/tests, so fewer permutations than tests/alpha could never fire.
        tests = len(features) + 1
        self.permutations_ = max(self.n_permutations, math.ceil(tests / self.alpha))
        self.backend_ = make_backend(self.backend, alpha=self.alpha, ks_method=self.ks_method,
                                     n_permutations=self.permutations_).fit(self.ref_numeric_, self.ref_codes_, x_ref)
        self.reference_rows_ = len(ref)
        self.mmd_reference_rows_ = 0 if x_ref is None else len(x_ref)
        return self

    # -- encodings -------------------------------------------------------------------
    @staticmethod
    def numeric_values(frame: "pd.DataFrame", f: str) -> "np.ndarray":
        """The column as float64, NaN where missing or not a number."""
        import numpy as np
        import pandas as pd

        if f not in frame.columns:
            return np.full(len(frame), np.nan)
        s = frame[f]
        if pd.api.types.is_bool_dtype(s):
            s = s.astype("float64")
        return pd.to_numeric(s, errors="coerce").astype("float64").to_numpy()

    @staticmethod
    def category_values(frame: "pd.DataFrame", f: str) -> list[str]:
        if f not in frame.columns:
            return [MISSING] * len(frame)
        return [category(v) for v in frame[f].astype(object).tolist()]

    def codes(self, frame: "pd.DataFrame", f: str) -> "np.ndarray":
        """Category codes by the reference's categories; unseen ones get codes after them."""
        import numpy as np

        values = self.category_values(frame, f)
        index = {c: i for i, c in enumerate(self.categories_[f])}
        for c in sorted(set(values) - set(index)):
            index[c] = len(index)
        return np.array([index[c] for c in values], dtype=np.int64)

    def matrix(self, frame: "pd.DataFrame") -> "np.ndarray":
        """Numeric columns standardised by the reference (missing: 0, the mean) and one-hot categories.

        Each categorical feature gets a column per reference category and one
        for values the reference never had.
        """
        import numpy as np

        cols = []
        for f in self.numeric_:
            mean, std = self.scale_[f]
            v = (self.numeric_values(frame, f) - mean) / std
            cols.append(np.where(np.isnan(v), 0.0, v)[:, None])
        for f in self.categorical_:
            cats = self.categories_[f]
            index = {c: i for i, c in enumerate(cats)}
            onehot = np.zeros((len(frame), len(cats) + 1))
            for row, c in enumerate(self.category_values(frame, f)):
                onehot[row, index.get(c, len(cats))] = 1.0
            cols.append(onehot)
        return np.hstack(cols).astype(np.float32) if cols else np.zeros((len(frame), 0), np.float32)

    # -- run -------------------------------------------------------------------------
    def run(self, window: "pd.DataFrame", *, seed: int | None = None) -> dict:
        """Test one window; everything in the answer is plain data (JSON-able)."""
        import numpy as np

        if not hasattr(self, "backend_"):
            raise MonitorError("this DriftDetector is not fitted yet: call fit(reference) first")
        rows = len(window)
        seed = self.seed if seed is None else seed
        features: dict[str, dict] = {}
        for f in self.numeric_:
            v = self.numeric_values(window, f)
            present = v[~np.isnan(v)]
            entry = {"kind": "numeric", "test": "ks", "rows": int(len(present)),
                     "missing_rate": float(1 - len(present) / rows) if rows else None,
                     "statistic": None, "p_value": None, "drift": False}
            if len(present) >= self.min_rows and len(self.ref_numeric_[f]) >= self.min_rows:
                stat, p = self.backend_.ks(f, present)
                entry.update(statistic=_finite(stat), p_value=_finite(p))
            features[f] = entry
        for f in self.categorical_:
            codes = self.codes(window, f)
            entry = {"kind": "categorical", "test": "chi2", "rows": int(rows),
                     "missing_rate": float(np.mean([c == MISSING for c in self.category_values(window, f)]))
                     if rows else None,
                     "unseen": sorted(set(self.category_values(window, f)) - set(self.categories_[f]))[:20],
                     "statistic": None, "p_value": None, "drift": False}
            if rows >= self.min_rows:
                stat, p = self.backend_.chi2(f, codes)
                entry.update(statistic=_finite(stat), p_value=_finite(p))
            features[f] = entry
        mmd = None
        if self.mmd and rows >= max(self.min_rows, 2):
            mmd = self.backend_.mmd(self.matrix(window), seed)
            mmd = {k: _finite(v) for k, v in mmd.items()}
            mmd.update(drift=False, permutations=self.permutations_, reference_rows=self.mmd_reference_rows_)
        names = [f for f, e in features.items() if e["p_value"] is not None]
        p_values = [features[f]["p_value"] for f in names]
        if mmd is not None and mmd["p_value"] is not None:
            names.append(MMD)
            p_values.append(mmd["p_value"])
        flags, threshold = self.backend_.correct(np.asarray(p_values, dtype=np.float64), self.correction)
        drifted = [n for n, flag in zip(names, flags) if flag]
        for n in drifted:
            (mmd if n == MMD else features[n])["drift"] = True
        tested = [features[f]["p_value"] for f in features if features[f]["p_value"] is not None]
        from lakeloop.display import DriftReport  # a dict that also shows itself (plots inline) in Jupyter

        return DriftReport({
            "backend": self.backend, "rows": int(rows), "reference_rows": self.reference_rows_,
            "alpha": self.alpha, "correction": self.correction, "tests": len(names),
            "threshold": _finite(threshold) if names else None, "drift": bool(drifted), "drifted": drifted,
            "min_p_value": min(tested) if tested else None, "features": features, "mmd": mmd,
        }, detector=self, window=window)
