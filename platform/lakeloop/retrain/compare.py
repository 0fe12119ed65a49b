"""Champion against challenger on labelled live traffic: which one is better, and is it more than chance?

A canary splits requests, so each version answers different rows: for
classification the share of correct answers is compared with a two-proportion
z-test; for regression the squared (``rmse``) or absolute (``mae``) errors
with Welch's t-test. A shadow answers the same rows as the champion, so the
comparison is paired: McNemar's exact test on the rows where exactly one of
them is right, or a paired t-test on the error differences.

ROC AUC has no per-row meaning, so a model selected on it is compared on
the AUC of the labelled rows with DeLong's test: paired (the covariance of
the two AUCs on the same rows) for a shadow, independent arms (their
variances add) for a canary.

These are fixed-sample tests, valid for one look at the data. The retrain
looks as labels arrive with the always-valid versions of the same statistics
in :mod:`lakeloop.retrain.sequential`.

The test is two-sided at ``alpha``. The verdict is ``promote`` when the
challenger is significantly better, ``rollback`` when it is significantly
worse, and ``inconclusive`` otherwise (the caller decides what that means).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from lakeloop.errors import RetrainError
from lakeloop.monitoring.detectors import category
from lakeloop.monitoring.metric import labelled_predictions

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop

METRICS = ("accuracy", "rmse", "mae", "roc_auc")
VERDICTS = ("promote", "rollback", "inconclusive")


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """The numbers behind a verdict: per-arm size and metric, the test, its statistic and p-value."""

    metric: str
    test: str
    champion: int
    challenger: int
    n_champion: int
    n_challenger: int
    champion_value: float | None
    challenger_value: float | None
    statistic: float | None
    p_value: float | None
    alpha: float
    verdict: str
    reason: str
    sequential: bool = False
    looks: int = 1
    log_likelihood_ratio: float | None = None
    max_labelled: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _outcomes(joined: "pd.DataFrame", metric: str):
    """Per labelled row: 1/0 correct (accuracy), else the squared or absolute error."""
    import numpy as np

    _, preds, labels, keep = labelled_predictions(joined)
    if metric == "accuracy":
        return np.array([float(category(preds[i]) == category(labels[i])) for i in keep]), keep
    try:
        err = np.array([float(preds[i]) - float(labels[i]) for i in keep])
    except (TypeError, ValueError) as exc:
        raise RetrainError(f"metric {metric} needs numeric predictions and labels: {exc}") from exc
    return (err**2 if metric == "rmse" else np.abs(err)), keep


def arm_outcomes(champion_rows: "pd.DataFrame", challenger_rows: "pd.DataFrame", *, metric: str, paired: bool):
    """Per-row outcomes of both arms (:func:`_outcomes`); paired: the same requests, in the same order."""
    import numpy as np

    if not paired:
        return _outcomes(champion_rows, metric)[0], _outcomes(challenger_rows, metric)[0]
    merged = champion_rows.merge(challenger_rows, on=["request_id", "row"], suffixes=("_a", "_b"))
    a, keep_a = _outcomes(merged.rename(columns={"output_a": "output", "label_a": "label"}), metric)
    b, keep_b = _outcomes(merged.rename(columns={"output_b": "output", "label_b": "label"}), metric)
    common = sorted(set(keep_a) & set(keep_b))
    pos_a, pos_b = {k: i for i, k in enumerate(keep_a)}, {k: i for i, k in enumerate(keep_b)}
    return np.array([a[pos_a[k]] for k in common]), np.array([b[pos_b[k]] for k in common])


def _value(outcomes, metric: str) -> float | None:
    import numpy as np

    if len(outcomes) == 0:
        return None
    mean = float(np.mean(outcomes))
    return math.sqrt(mean) if metric == "rmse" else mean


def auc_inputs(joined: "pd.DataFrame") -> tuple[list[float | None], list[str], list[str]]:
    """Per row: the logged ``probability`` (None where it, the prediction or the label is missing), the
    predicted class and the label, as categories."""
    outputs, preds, labels, keep = labelled_predictions(joined)
    kept = set(keep)
    probs = []
    for i, o in enumerate(outputs):
        p = o.get("probability") if isinstance(o, dict) and i in kept else None
        try:
            p = None if p is None else float(p)
        except (TypeError, ValueError):
            p = None
        probs.append(p if p is not None and math.isfinite(p) else None)
    return probs, [category(v) for v in preds], [category(v) for v in labels]


def positive_class(preds: list[str], probs: list[float | None]) -> str | None:
    """The class the logged ``probability`` is of: the one predicted when it is >= 0.5 (most often)."""
    counts: dict[str, int] = {}
    for c, p in zip(preds, probs):
        if p is not None and p >= 0.5:
            counts[c] = counts.get(c, 0) + 1
    return max(sorted(counts), key=counts.get) if counts else None


def delong(y, *scores) -> tuple["np.ndarray", "np.ndarray"]:
    """ROC AUCs of each score vector on binary ``y`` and their DeLong covariance matrix (midrank algorithm).

    DeLong, DeLong and Clarke-Pearson (1988); Sun and Xu (2014) for the ranks.
    """
    import numpy as np
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise RetrainError(f"ROC AUC needs at least 2 rows of each class, not {m} positive and {n} negative")
    aucs, v10, v01 = [], [], []
    for s in scores:
        s = np.asarray(s, dtype=np.float64)
        pos, neg = s[y], s[~y]
        tz = rankdata(np.concatenate([pos, neg]))
        tx, ty = rankdata(pos), rankdata(neg)
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)       # per positive: share of negatives ranked below it
        v01.append(1.0 - (tz[m:] - ty) / m)  # per negative: share of positives ranked above it
    s10 = np.atleast_2d(np.cov(np.array(v10)))
    s01 = np.atleast_2d(np.cov(np.array(v01)))
    return np.array(aucs), s10 / m + s01 / n


def auc_difference(champion_rows: "pd.DataFrame", challenger_rows: "pd.DataFrame", *, paired: bool) -> dict:
    """AUC of each arm on its labelled rows, the difference (challenger - champion) and its DeLong variance.

    ``n_champion``/``n_challenger`` count rows with a probability and a label;
    ``problem`` says why no difference could be computed yet (else None).
    """
    import numpy as np

    out = {"auc_champion": None, "auc_challenger": None, "difference": None, "variance": None, "problem": None}
    if paired:
        merged = champion_rows.merge(challenger_rows, on=["request_id", "row"], suffixes=("_a", "_b"))
        pa, preds_a, la = auc_inputs(merged.rename(columns={"output_a": "output", "label_a": "label"}))
        pb, preds_b, lb = auc_inputs(merged.rename(columns={"output_b": "output", "label_b": "label"}))
        arms = [(pa, preds_a, la), (pb, preds_b, lb)]
    else:
        arms = [auc_inputs(champion_rows), auc_inputs(challenger_rows)]
    keep = [[i for i, p in enumerate(probs) if p is not None] for probs, _, _ in arms]
    if paired:
        both = sorted(set(keep[0]) & set(keep[1]))
        keep = [both, both]
    out.update(n_champion=len(keep[0]), n_challenger=len(keep[1]))
    positive = positive_class([c for (_, preds, _), k in zip(arms, keep) for c in [preds[i] for i in k]],
                              [p for (probs, _, _), k in zip(arms, keep) for p in [probs[i] for i in k]])
    classes = {arms[j][2][i] for j in (0, 1) for i in keep[j]}
    if positive is None or len(classes) != 2 or positive not in classes:
        out["problem"] = (f"ROC AUC needs binary labels and logged probabilities; the labels have {len(classes)} "
                          "class(es) so far")
        return out
    ys = [np.array([arms[j][2][i] == positive for i in keep[j]]) for j in (0, 1)]
    ss = [np.array([arms[j][0][i] for i in keep[j]]) for j in (0, 1)]
    try:
        if paired:
            aucs, cov = delong(ys[0], ss[0], ss[1])
            variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
        else:
            (auc_a,), cov_a = delong(ys[0], ss[0])
            (auc_b,), cov_b = delong(ys[1], ss[1])
            aucs, variance = np.array([auc_a, auc_b]), float(cov_a[0, 0] + cov_b[0, 0])
    except RetrainError as exc:
        out["problem"] = exc.message
        return out
    out.update(auc_champion=float(aucs[0]), auc_challenger=float(aucs[1]), difference=float(aucs[1] - aucs[0]),
               variance=max(variance, 0.0))
    return out


def _verdict(better: bool | None, p: float | None, alpha: float, enough: bool) -> str:
    if not enough or p is None or better is None or p >= alpha:
        return "inconclusive"
    return "promote" if better else "rollback"


def two_proportion(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """z and two-sided p of H0: p1 == p2 for k1/n1 against k2/n2 (pooled standard error)."""
    from scipy import stats

    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0  # both arms all right (or all wrong): no difference to test
    z = (k2 / n2 - k1 / n1) / se
    return z, float(2 * stats.norm.sf(abs(z)))


def compare(champion_rows: "pd.DataFrame", challenger_rows: "pd.DataFrame", *, metric: str, paired: bool,
            champion: int, challenger: int, alpha: float = 0.05, min_labelled: int = 100) -> Comparison:
    """Compare two versions' labelled rows (``request_id``, ``row``, ``output``, ``label`` each).

    ``paired``: the rows are the same requests (a shadow), matched on
    ``(request_id, row)``. A verdict other than inconclusive needs at least
    ``min_labelled`` labelled rows in each arm.
    """
    import numpy as np
    from scipy import stats

    if metric not in METRICS:
        raise RetrainError(f"the champion/challenger comparison supports {', '.join(METRICS)}, not {metric!r}")
    if metric == "roc_auc":
        return _compare_auc(champion_rows, challenger_rows, paired=paired, champion=champion,
                            challenger=challenger, alpha=alpha, min_labelled=min_labelled)
    lower_is_better = metric != "accuracy"
    a, b = arm_outcomes(champion_rows, challenger_rows, metric=metric, paired=paired)
    n_a, n_b = len(a), len(b)
    value_a, value_b = _value(a, metric), _value(b, metric)
    enough = n_a >= min_labelled and n_b >= min_labelled
    statistic = p = None
    if metric == "accuracy":
        if paired:
            test = "mcnemar_exact"
            only_b = int(np.sum((b == 1) & (a == 0)))
            only_a = int(np.sum((a == 1) & (b == 0)))
            statistic = float(only_b - only_a)
            p = float(stats.binomtest(only_b, only_b + only_a, 0.5).pvalue) if only_a + only_b else 1.0
        else:
            test = "two_proportion_z"
            if n_a and n_b:
                statistic, p = two_proportion(int(a.sum()), n_a, int(b.sum()), n_b)
    else:
        test = "paired_t" if paired else "welch_t"
        if n_a >= 2 and n_b >= 2:
            res = stats.ttest_rel(b, a) if paired else stats.ttest_ind(b, a, equal_var=False)
            statistic, p = float(res.statistic), float(res.pvalue)
            if not math.isfinite(p):  # identical errors everywhere
                statistic, p = 0.0, 1.0
    better = None if value_a is None or value_b is None or value_a == value_b else \
        (value_b < value_a if lower_is_better else value_b > value_a)
    verdict = _verdict(better, p, alpha, enough)
    why = describe(metric=metric, test=test, champion=champion, challenger=challenger, value_a=value_a,
                   value_b=value_b, n_a=n_a, n_b=n_b, p=p, alpha=alpha, verdict=verdict,
                   waiting=None if enough else min_labelled)
    return Comparison(metric=metric, test=test, champion=int(champion), challenger=int(challenger),
                      n_champion=n_a, n_challenger=n_b, champion_value=value_a, challenger_value=value_b,
                      statistic=statistic, p_value=p, alpha=alpha, verdict=verdict, reason=why)


def _compare_auc(champion_rows, challenger_rows, *, paired: bool, champion: int, challenger: int, alpha: float,
                 min_labelled: int) -> Comparison:
    """DeLong's z-test of the two AUCs (paired for a shadow), one look."""
    from scipy import stats

    d = auc_difference(champion_rows, challenger_rows, paired=paired)
    n_a, n_b = d["n_champion"], d["n_challenger"]
    enough = n_a >= min_labelled and n_b >= min_labelled
    test = "delong_paired" if paired else "delong"
    statistic = p = None
    if d["difference"] is not None:
        se = d["variance"] ** 0.5
        statistic = d["difference"] / se if se > 0 else 0.0
        p = float(2 * stats.norm.sf(abs(statistic)))
    better = None if not d["difference"] else d["difference"] > 0
    verdict = _verdict(better, p, alpha, enough and d["problem"] is None)
    why = describe(metric="roc_auc", test=test, champion=champion, challenger=challenger, value_a=d["auc_champion"],
                   value_b=d["auc_challenger"], n_a=n_a, n_b=n_b, p=p, alpha=alpha, verdict=verdict,
                   waiting=None if enough else min_labelled, problem=d["problem"])
    return Comparison(metric="roc_auc", test=test, champion=int(champion), challenger=int(challenger),
                      n_champion=n_a, n_challenger=n_b, champion_value=d["auc_champion"],
                      challenger_value=d["auc_challenger"], statistic=statistic, p_value=p, alpha=alpha,
                      verdict=verdict, reason=why)


def describe(*, metric: str, test: str, champion: int, challenger: int, value_a, value_b, n_a: int, n_b: int, p,
             alpha: float, verdict: str, waiting: int | None = None, problem: str | None = None,
             extra: str = "") -> str:
    """The verdict's reason in words."""
    fmt = (lambda v: "n/a" if v is None else f"{v:.4f}")
    if waiting is not None:
        return (f"not enough labelled rows yet: {n_a} for the champion v{champion}, {n_b} for the challenger "
                f"v{challenger} (need {waiting} each)")
    why = (f"{metric} challenger v{challenger} {fmt(value_b)} over {n_b} rows vs champion v{champion} "
           f"{fmt(value_a)} over {n_a} rows; {test} p={'n/a' if p is None else f'{p:.3g}'} (alpha {alpha:g})"
           f"{extra}")
    if problem:
        return f"{why}: {problem}"
    return why + {"promote": ": the challenger is significantly better",
                  "rollback": ": the challenger is significantly worse",
                  "inconclusive": ": no significant difference"}[verdict]


def labelled_rows(ll: "Lakeloop", model: str, version: int, *, route: str, since) -> "pd.DataFrame":
    """A version's logged rows on ``route`` since a time, with their feedback labels (inner join)."""
    import pandas as pd

    from lakeloop.monitoring.metric import read_feedback
    from lakeloop.serving.logbook import INFERENCE

    columns = ["request_id", "row", "output", "label"]
    table = ll.lake.table(INFERENCE)
    if not table.exists():
        return pd.DataFrame(columns=columns)
    rows = table.to_pandas(columns=["request_id", "row", "output", "error"],
                           filters=[("model", "=", model), ("version", "=", int(version)), ("route", "=", route),
                                    ("time", ">=", pd.Timestamp(since))])  # polled: read only the canary period
    rows = rows[rows["error"].isna() & rows["output"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    labels = read_feedback(ll, rows["request_id"])
    return rows[["request_id", "row", "output"]].merge(labels, on=["request_id", "row"], how="inner")[columns]
