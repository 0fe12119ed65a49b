"""The two test backends behind :class:`~lakeloop.monitoring.detectors.DriftDetector`.

Both take the same encoded arrays (numeric values without nulls, categorical
codes, a standardised one-hot matrix for MMD) and answer the same tests:

- ``scipy``: ``scipy.stats.ks_2samp``, ``scipy.stats.chi2_contingency`` on the
  union of categories, Bonferroni or Benjamini-Hochberg, and an unbiased MMD²
  with a Gaussian RBF kernel (bandwidth by the median heuristic on the
  reference) and a permutation test, in numpy. Apache-2.0 dependencies only.
- ``alibi``: alibi-detect's ``KSDrift``, ``ChiSquareDrift`` and
  ``MMDDrift(backend="pytorch")``, and its ``fdr`` correction. alibi-detect
  0.11.5 and later are BSL-1.1: non-production use only.

The scipy backend follows alibi-detect's choices where they matter for the
decisions: the asymptotic KS p-value, Yates' correction for 2x2 tables (what
``chi2_contingency`` does by default), a strict ``p < threshold``, the median
of the off-diagonal squared distances for the bandwidth. The permutation
p-value is ``(k+1)/(n+1)`` with ``k`` of ``n`` permuted MMD² at or above the
observed one (never 0; alibi-detect's ``k/n`` is turned into the same).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lakeloop.errors import MonitorError

if TYPE_CHECKING:
    import numpy as np


def bonferroni(p_values: "np.ndarray", alpha: float) -> tuple["np.ndarray", float]:
    """Flags ``p < alpha / m`` and the threshold."""
    threshold = alpha / max(1, len(p_values))
    return p_values < threshold, threshold


def benjamini_hochberg(p_values: "np.ndarray", alpha: float) -> tuple["np.ndarray", float]:
    """Benjamini-Hochberg at false discovery rate ``alpha``: flags and the threshold.

    The threshold is ``alpha * k / m`` for the largest ``k`` with
    ``p_(k) < alpha * k / m``; with no discovery, ``alpha / m``.
    """
    import numpy as np

    m = len(p_values)
    if m == 0:
        return np.zeros(0, dtype=bool), alpha
    steps = alpha * np.arange(1, m + 1) / m
    below = np.sort(p_values) < steps
    if not below.any():
        return np.zeros(m, dtype=bool), float(steps[0])
    threshold = float(steps[np.where(below)[0].max()])
    return p_values < threshold, threshold


class ScipyBackend:
    """KS, chi-squared and MMD on scipy and numpy."""

    name = "scipy"

    def __init__(self, *, alpha: float, ks_method: str = "asymp", n_permutations: int = 100):
        self.alpha, self.ks_method, self.n_permutations = alpha, ks_method, n_permutations

    def fit(self, numeric: dict, codes: dict, x_ref: "np.ndarray | None") -> "ScipyBackend":
        import numpy as np

        self.numeric = numeric
        self.codes = codes
        self.x_ref = None if x_ref is None else np.asarray(x_ref, dtype=np.float64)
        self.sigma = None
        if self.x_ref is not None:
            d = _sqdist(self.x_ref, self.x_ref)
            n = len(self.x_ref)
            median_at = n + (n * n - n) // 2 - 1  # skips the n zeros of the diagonal, as alibi-detect does
            self.sigma = float(np.sqrt(0.5 * np.sort(d.ravel())[median_at]))
            if not np.isfinite(self.sigma) or self.sigma <= 0:
                self.sigma = 1.0  # every reference row is the same point: any bandwidth separates others
            self.k_ref = np.exp(-d / (2 * self.sigma**2))
        return self

    def ks(self, name: str, values: "np.ndarray") -> tuple[float, float]:
        from scipy.stats import ks_2samp

        res = ks_2samp(self.numeric[name], values, method=self.ks_method)
        return float(res.statistic), float(res.pvalue)

    def chi2(self, name: str, codes: "np.ndarray") -> tuple[float, float]:
        import numpy as np
        from scipy.stats import chi2_contingency

        ref = self.codes[name]
        size = int(max(ref.max(initial=-1), codes.max(initial=-1))) + 1
        table = np.vstack([np.bincount(ref, minlength=size), np.bincount(codes, minlength=size)])
        table = table[:, table.sum(axis=0) > 0]  # the union of categories seen on either side
        if table.shape[1] < 2:
            return 0.0, 1.0
        stat, p, _, _ = chi2_contingency(table)
        return float(stat), float(p)

    def mmd(self, x: "np.ndarray", seed: int) -> dict:
        """Unbiased MMD² of reference vs ``x``, its permutation p-value and the distance threshold."""
        import numpy as np

        x = np.asarray(x, dtype=np.float64)
        n, m = len(self.x_ref), len(x)
        k = np.empty((n + m, n + m))
        k[:n, :n] = self.k_ref
        k_xy = np.exp(-_sqdist(self.x_ref, x) / (2 * self.sigma**2))
        k[:n, n:], k[n:, :n] = k_xy, k_xy.T
        k[n:, n:] = np.exp(-_sqdist(x, x) / (2 * self.sigma**2))
        np.fill_diagonal(k, 0.0)

        rng = np.random.default_rng(seed)
        b = self.n_permutations
        order = np.argsort(rng.random((b + 1, n + m)), axis=1)
        order[0] = np.arange(n + m)  # column 0: the observed split
        member = np.zeros((n + m, b + 1))
        member[order[:, :n].T, np.arange(b + 1)[None, :]] = 1.0  # the first n after a permutation play reference
        row_sums = k.sum(axis=1)
        s_xx = (member * (k @ member)).sum(axis=0)
        s_x1 = member.T @ row_sums
        s_xy = s_x1 - s_xx
        s_yy = row_sums.sum() - 2 * s_x1 + s_xx
        mmd2 = s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2 * s_xy / (n * m)
        observed, permuted = mmd2[0], mmd2[1:]
        p = float(((observed <= permuted).sum() + 1) / (b + 1))  # (k+1)/(n+1): never 0, exact under the null
        threshold = float(np.sort(permuted)[::-1][int(self.alpha * b)])
        return {"distance": float(observed), "p_value": p, "distance_threshold": threshold, "sigma": self.sigma}

    def correct(self, p_values: "np.ndarray", method: str) -> tuple["np.ndarray", float]:
        return bonferroni(p_values, self.alpha) if method == "bonferroni" else benjamini_hochberg(p_values, self.alpha)


class AlibiBackend:
    """The same tests through alibi-detect (BSL-1.1: non-production use only)."""

    name = "alibi"

    def __init__(self, *, alpha: float, ks_method: str = "asymp", n_permutations: int = 100):
        if ks_method != "asymp":
            raise MonitorError(f"backend 'alibi' computes KS p-values asymptotically only; ks_method={ks_method!r} "
                               "needs backend='scipy'")
        self.alpha, self.n_permutations = alpha, n_permutations

    def fit(self, numeric: dict, codes: dict, x_ref: "np.ndarray | None") -> "AlibiBackend":
        import numpy as np

        _quiet_alibi()
        from alibi_detect.cd import ChiSquareDrift, KSDrift

        # one univariate detector per feature, so each feature's nulls are left out on its own
        self.ks_detectors = {f: KSDrift(v.reshape(-1, 1), p_val=self.alpha) for f, v in numeric.items()}
        self.chi2_detectors = {f: ChiSquareDrift(c.reshape(-1, 1), p_val=self.alpha) for f, c in codes.items()}
        self.mmd_detector = None
        self.sigma = None
        if x_ref is not None:
            from alibi_detect.cd import MMDDrift

            self.mmd_detector = MMDDrift(np.asarray(x_ref, dtype=np.float32), backend="pytorch", p_val=self.alpha,
                                         n_permutations=self.n_permutations, device="cpu")
            self.sigma = float(self.mmd_detector._detector.kernel.sigma.detach().cpu().numpy().ravel()[0])
        return self

    @staticmethod
    def _one(detector, values) -> tuple[float, float]:
        out = detector.predict(values.reshape(-1, 1), return_p_val=True, return_distance=True)["data"]
        return float(out["distance"][0]), float(out["p_val"][0])

    def ks(self, name: str, values: "np.ndarray") -> tuple[float, float]:
        return self._one(self.ks_detectors[name], values)

    def chi2(self, name: str, codes: "np.ndarray") -> tuple[float, float]:
        return self._one(self.chi2_detectors[name], codes)

    def mmd(self, x: "np.ndarray", seed: int) -> dict:
        import numpy as np
        import torch

        torch.manual_seed(seed)  # the permutations come from torch's global generator
        out = self.mmd_detector.predict(np.asarray(x, dtype=np.float32), return_p_val=True,
                                        return_distance=True)["data"]
        k = round(float(out["p_val"]) * self.n_permutations)  # alibi answers k/n; the same (k+1)/(n+1) as scipy
        return {"distance": float(out["distance"]), "p_value": (k + 1) / (self.n_permutations + 1),
                "distance_threshold": float(out["distance_threshold"]), "sigma": self.sigma}

    def correct(self, p_values: "np.ndarray", method: str) -> tuple["np.ndarray", float]:
        if method == "bonferroni":
            return bonferroni(p_values, self.alpha)
        import numpy as np
        from alibi_detect.utils.statstest import fdr

        if len(p_values) == 0:
            return np.zeros(0, dtype=bool), self.alpha
        found, threshold = fdr(p_values, q_val=self.alpha)
        threshold = float(threshold) if found else float(np.min(threshold))
        return (p_values < threshold) if found else np.zeros(len(p_values), dtype=bool), threshold


def make_backend(name: str, *, alpha: float, ks_method: str, n_permutations: int):
    if name == "scipy":
        return ScipyBackend(alpha=alpha, ks_method=ks_method, n_permutations=n_permutations)
    if name == "alibi":
        try:
            import alibi_detect  # noqa: F401
        except ImportError as exc:
            raise MonitorError("backend 'alibi' needs alibi-detect with torch (pip install 'alibi-detect[torch]'); "
                               "or use backend='scipy'") from exc
        return AlibiBackend(alpha=alpha, ks_method=ks_method, n_permutations=n_permutations)
    raise MonitorError(f"unknown drift backend {name!r}; choose scipy or alibi")


def _sqdist(a: "np.ndarray", b: "np.ndarray") -> "np.ndarray":
    import numpy as np

    d = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _quiet_alibi() -> None:
    """alibi-detect logs 'No GPU detected' and config warnings on every detector."""
    for name in ("alibi_detect", "alibi_detect.utils.pytorch.misc", "alibi_detect.cd"):
        logging.getLogger(name).setLevel(logging.ERROR)
