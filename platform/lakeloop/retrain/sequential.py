"""The canary's always-valid test: look as labels arrive, stop at the first clear win or loss.

A mixture sequential probability ratio test (mSPRT: Robbins 1970; Johari,
Pekelis and Walsh, "Always valid inference", 2017). The difference between
the arms (challenger minus champion, oriented so that positive is better) is
estimated by the same statistic as the fixed-sample test in
:mod:`lakeloop.retrain.compare`, approximately normal with z-score ``z`` and
variance ``v``. Mixing the likelihood ratio of a true difference ``d`` against
``d = 0`` over a half-normal prior of scale ``tau`` on ``d > 0`` gives

    Lambda+ = 2 sqrt(v / (v + tau^2)) exp(tau^2 z^2 / (2 (v + tau^2))) Phi(z tau / sqrt(v + tau^2))

(``Lambda-``: ``Phi(-...)``, for ``d < 0``). Under ``d = 0`` each is a
nonnegative martingale in the information ``1/v``, so by Ville's inequality
it ever reaches ``1/alpha`` with probability at most ``alpha``: the test may
look after every label, at any times, and stop whenever it likes.

- ``promote`` at the first look with ``Lambda+ >= 1/alpha``: a challenger
  that is no better is promoted with probability at most ``alpha``;
- ``rollback`` at the first look with ``Lambda- >= 1/alpha``: one that is no
  worse is rolled back with probability at most ``alpha``;
- neither by ``max_labelled`` rows per arm (or the decision timeout):
  ``inconclusive``. Truncation only makes the test more conservative.

The p-value reported is the always-valid one, ``min(1, 1 / max Lambda)``
over the looks so far, for the side that is ahead.

Statistics (``v`` in units of one row's standard deviation, so one ``tau``
fits every metric): accuracy, canary: the pooled two-proportion z, ``v =
1/n_a + 1/n_b``; shadow: McNemar's z ``(b - c) / sqrt(b + c)``, ``v = 1/n``;
rmse/mae: Welch's z on the squared or absolute errors (shadow: the paired
z), ``v`` the Welch variance over the mean per-row variance. ROC AUC: the
DeLong z of the AUC difference (paired in a shadow), ``v`` the DeLong
variance itself and ``tau`` in AUC units (``TAU_AUC``). ``TAU`` was chosen
by simulation (``bench/canary.py``): at a 75% base accuracy it decides a
10-point lift in fewer labels than the single look at 300, and finds a
5-point lift far more often.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lakeloop.errors import RetrainError
from lakeloop.retrain.compare import (METRICS, Comparison, _value, arm_outcomes, auc_difference, describe,
                                      two_proportion)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

TAU = 0.2       # the mixture's scale, in per-row standard deviations (about 8.5 accuracy points at 75%)
TAU_AUC = 0.05  # the mixture's scale for a difference of ROC AUCs


def log_mixture_ratio(z, v, tau: float, side: int):
    """``log Lambda+`` (``side=1``) or ``log Lambda-`` (``side=-1``) for z-scores ``z`` with variances ``v``.

    Vectorised: ``z`` and ``v`` may be arrays of the same shape.
    """
    import numpy as np
    from scipy.special import log_ndtr

    z, v = np.asarray(z, dtype=np.float64), np.asarray(v, dtype=np.float64)
    t2 = tau * tau
    return (math.log(2.0) + 0.5 * np.log(v / (v + t2)) + t2 * z * z / (2.0 * (v + t2))
            + log_ndtr(side * z * tau / np.sqrt(v + t2)))


def statistic(a: "np.ndarray", b: "np.ndarray", *, metric: str, paired: bool) -> tuple[float, float, str]:
    """``(z, v, test)`` of per-row outcomes ``a`` (champion) and ``b`` (challenger); ``z > 0``: b is better."""
    import numpy as np

    n_a, n_b = len(a), len(b)
    if metric == "accuracy":
        if paired:
            only_b, only_a = int(np.sum((b == 1) & (a == 0))), int(np.sum((a == 1) & (b == 0)))
            z = (only_b - only_a) / math.sqrt(only_b + only_a) if only_a + only_b else 0.0
            return z, 1.0 / n_a, "msprt_mcnemar"
        z, _ = two_proportion(int(a.sum()), n_a, int(b.sum()), n_b)
        return float(z), 1.0 / n_a + 1.0 / n_b, "msprt_two_proportion"
    # errors: lower is better, so the champion's minus the challenger's
    if paired:
        d = a - b
        sd = float(np.std(d, ddof=1)) if n_a >= 2 else 0.0
        z = float(np.mean(d)) / (sd / math.sqrt(n_a)) if sd > 0 else 0.0
        return z, 1.0 / n_a, "msprt_paired_t"
    var_a = float(np.var(a, ddof=1)) if n_a >= 2 else 0.0
    var_b = float(np.var(b, ddof=1)) if n_b >= 2 else 0.0
    se2 = var_a / n_a + var_b / n_b
    if se2 <= 0:
        return 0.0, 1.0 / n_a + 1.0 / n_b, "msprt_welch"
    return (float(np.mean(a)) - float(np.mean(b))) / math.sqrt(se2), se2 / ((var_a + var_b) / 2), "msprt_welch"


def sequential_compare(champion_rows: "pd.DataFrame", challenger_rows: "pd.DataFrame", *, metric: str, paired: bool,
                       champion: int, challenger: int, alpha: float = 0.05, min_labelled: int = 100,
                       max_labelled: int = 2000, previous: Comparison | None = None) -> Comparison:
    """One look of the always-valid test at both arms' labelled rows (as :func:`~lakeloop.retrain.compare.compare`).

    ``previous`` is the last look's result (its running always-valid p-value
    and look count carry over). Before ``min_labelled`` rows per arm it is no
    look yet: ``inconclusive``, waiting. After ``max_labelled`` rows in the
    smaller arm without a decision the caller stops: ``inconclusive``.
    """
    if metric not in METRICS:
        raise RetrainError(f"the champion/challenger comparison supports {', '.join(METRICS)}, not {metric!r}")
    if max_labelled < min_labelled:
        raise RetrainError(f"max_labelled={max_labelled} is below min_labelled={min_labelled}")
    problem = None
    z = v = None
    if metric == "roc_auc":
        d = auc_difference(champion_rows, challenger_rows, paired=paired)
        n_a, n_b = d["n_champion"], d["n_challenger"]
        value_a, value_b, problem = d["auc_champion"], d["auc_challenger"], d["problem"]
        test, tau = ("msprt_delong_paired" if paired else "msprt_delong"), TAU_AUC
        if d["difference"] is not None:
            v = d["variance"]
            z = d["difference"] / math.sqrt(v) if v > 0 else 0.0
            v = v if v > 0 else 1e-12
    else:
        a, b = arm_outcomes(champion_rows, challenger_rows, metric=metric, paired=paired)
        n_a, n_b = len(a), len(b)
        value_a, value_b = _value(a, metric), _value(b, metric)
        tau = TAU
        test = (("msprt_mcnemar" if paired else "msprt_two_proportion") if metric == "accuracy"
                else ("msprt_paired_t" if paired else "msprt_welch"))
        if n_a and n_b:
            z, v, test = statistic(a, b, metric=metric, paired=paired)
    looks = previous.looks if previous is not None and previous.sequential else 0
    p_before = previous.p_value if previous is not None and previous.sequential and previous.looks else 1.0
    common = dict(metric=metric, test=test, champion=int(champion), challenger=int(challenger), n_champion=n_a,
                  n_challenger=n_b, champion_value=value_a, challenger_value=value_b, alpha=alpha, sequential=True,
                  max_labelled=max_labelled)
    if n_a < min_labelled or n_b < min_labelled:
        why = describe(metric=metric, test=test, champion=champion, challenger=challenger, value_a=value_a,
                       value_b=value_b, n_a=n_a, n_b=n_b, p=None, alpha=alpha, verdict="inconclusive",
                       waiting=min_labelled)
        return Comparison(**common, statistic=z, p_value=p_before if looks else None, verdict="inconclusive",
                          reason=why, looks=looks, log_likelihood_ratio=None)
    looks += 1
    if z is None:  # e.g. the labels hold one class so far: this look cannot tell anything
        why = describe(metric=metric, test=test, champion=champion, challenger=challenger, value_a=value_a,
                       value_b=value_b, n_a=n_a, n_b=n_b, p=None, alpha=alpha, verdict="inconclusive",
                       problem=problem or "no statistic yet")
        return Comparison(**common, statistic=None, p_value=p_before, verdict="inconclusive", reason=why,
                          looks=looks, log_likelihood_ratio=None)
    up = float(log_mixture_ratio(z, v, tau, 1))
    down = float(log_mixture_ratio(z, v, tau, -1))
    threshold = math.log(1.0 / alpha)
    verdict = "promote" if up >= threshold else "rollback" if down >= threshold else "inconclusive"
    p = min(p_before, math.exp(-max(up, down)), 1.0)
    extra = (f" (always valid, look {looks}, likelihood ratio {math.exp(max(up, down)):.3g} against the "
             f"boundary {1 / alpha:g})")
    why = describe(metric=metric, test=test, champion=champion, challenger=challenger, value_a=value_a,
                   value_b=value_b, n_a=n_a, n_b=n_b, p=p, alpha=alpha, verdict=verdict, extra=extra)
    if verdict == "inconclusive" and min(n_a, n_b) >= max_labelled:
        why += f" within the budget of {max_labelled} labelled rows per version"
    return Comparison(**common, statistic=float(z), p_value=p, verdict=verdict, reason=why, looks=looks,
                      log_likelihood_ratio=max(up, down))


def simulate(lift: float, *, base: float = 0.75, sims: int = 2000, min_labelled: int = 100, max_labelled: int = 2000,
             step: int = 10, alpha: float = 0.05, tau: float = TAU, seed: int = 0) -> dict:
    """Simulated balanced canaries on accuracy (vectorised): promotion and rollback rates, labels to decision.

    Each canary draws ``max_labelled`` right/wrong answers per arm (champion
    ``base``, challenger ``base + lift``) and looks every ``step`` labels per
    arm from ``min_labelled``; labels to decision are per arm (the budget when
    it never decides).
    """
    import numpy as np

    if not 0 < base < 1 or not 0 < base + lift < 1:
        raise RetrainError(f"accuracies must lie in (0, 1): base {base}, base + lift {base + lift}")
    rng = np.random.default_rng(seed)
    looks = np.arange(min_labelled, max_labelled + 1, step)
    promote = np.zeros(sims, dtype=bool)
    rollback = np.zeros(sims, dtype=bool)
    labels = np.full(sims, looks[-1], dtype=np.float64)
    threshold = math.log(1.0 / alpha)
    for start in range(0, sims, 500):  # bounded memory: 500 x max_labelled booleans per arm at a time
        k = min(500, sims - start)
        ca = np.cumsum(rng.random((k, max_labelled)) < base, axis=1)[:, looks - 1]
        cb = np.cumsum(rng.random((k, max_labelled)) < base + lift, axis=1)[:, looks - 1]
        n = looks[None, :].astype(np.float64)
        pooled = (ca + cb) / (2 * n)
        se = np.sqrt(pooled * (1 - pooled) * 2 / n)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, (cb - ca) / n / np.where(se > 0, se, 1.0), 0.0)
        v = np.broadcast_to(2.0 / n, z.shape)
        up = log_mixture_ratio(z, v, tau, 1) >= threshold
        down = log_mixture_ratio(z, v, tau, -1) >= threshold
        cross = up | down
        hit = cross.any(axis=1)
        first = np.where(hit, cross.argmax(axis=1), len(looks) - 1)
        rows = np.arange(k)
        promote[start:start + k] = hit & up[rows, first]
        rollback[start:start + k] = hit & down[rows, first] & ~up[rows, first]
        labels[start:start + k] = looks[first]
    return {"lift": lift, "promote": float(promote.mean()), "rollback": float(rollback.mean()),
            "mean_labels": float(labels.mean()), "sims": sims}


def simulate_single_look(lift: float, *, base: float = 0.75, sims: int = 2000, labelled: int = 300,
                         alpha: float = 0.05, two_sided: bool = True, seed: int = 0) -> dict:
    """The fixed-sample test at one look after ``labelled`` rows per arm, on the same terms as :func:`simulate`."""
    import numpy as np
    from scipy import stats

    rng = np.random.default_rng(seed)
    ka = rng.binomial(labelled, base, sims)
    kb = rng.binomial(labelled, base + lift, sims)
    pooled = (ka + kb) / (2 * labelled)
    se = np.sqrt(pooled * (1 - pooled) * 2 / labelled)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (kb - ka) / labelled / np.where(se > 0, se, 1.0), 0.0)
    crit = stats.norm.isf(alpha / 2 if two_sided else alpha)
    return {"lift": lift, "promote": float((z >= crit).mean()), "rollback": float((z <= -crit).mean()),
            "mean_labels": float(labelled), "sims": sims}
