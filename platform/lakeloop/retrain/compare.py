"""Champion against challenger on labelled live traffic: which one is better, and is it more than chance?

A canary splits requests, so each version answers different rows: for
classification the share of correct answers is compared with a two-proportion
z-test; for regression the squared (``rmse``) or absolute (``mae``) errors
with Welch's t-test. A shadow answers the same rows as the champion, so the
comparison is paired: McNemar's exact test on the rows where exactly one of
them is right, or a paired t-test on the error differences.

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

METRICS = ("accuracy", "rmse", "mae")
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


def _value(outcomes, metric: str) -> float | None:
    import numpy as np

    if len(outcomes) == 0:
        return None
    mean = float(np.mean(outcomes))
    return math.sqrt(mean) if metric == "rmse" else mean


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
    lower_is_better = metric != "accuracy"
    if paired:
        merged = champion_rows.merge(challenger_rows, on=["request_id", "row"], suffixes=("_a", "_b"))
        a, keep_a = _outcomes(merged.rename(columns={"output_a": "output", "label_a": "label"}), metric)
        b, keep_b = _outcomes(merged.rename(columns={"output_b": "output", "label_b": "label"}), metric)
        common = sorted(set(keep_a) & set(keep_b))
        pos_a, pos_b = {k: i for i, k in enumerate(keep_a)}, {k: i for i, k in enumerate(keep_b)}
        a = np.array([a[pos_a[k]] for k in common])
        b = np.array([b[pos_b[k]] for k in common])
        n_a = n_b = len(common)
    else:
        a, _ = _outcomes(champion_rows, metric)
        b, _ = _outcomes(challenger_rows, metric)
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
    fmt = (lambda v: "n/a" if v is None else f"{v:.4f}")
    if not enough:
        why = (f"not enough labelled rows yet: {n_a} for the champion v{champion}, {n_b} for the challenger "
               f"v{challenger} (need {min_labelled} each)")
    else:
        why = (f"{metric} challenger v{challenger} {fmt(value_b)} over {n_b} rows vs champion v{champion} "
               f"{fmt(value_a)} over {n_a} rows; {test} p={fmt(p)} (alpha {alpha:g})")
        why += {"promote": ": the challenger is significantly better",
                "rollback": ": the challenger is significantly worse",
                "inconclusive": ": no significant difference"}[verdict]
    return Comparison(metric=metric, test=test, champion=int(champion), challenger=int(challenger),
                      n_champion=n_a, n_challenger=n_b, champion_value=value_a, challenger_value=value_b,
                      statistic=statistic, p_value=p, alpha=alpha, verdict=verdict, reason=why)


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
