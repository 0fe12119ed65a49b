"""What a drift monitor does, as plain data: window size, detector backend, tests, outputs.

``MonitorSettings`` is a frozen dataclass; what crosses into the monitor actor
is :meth:`MonitorSettings.to_dict`. Every value is checked on construction and
a bad one is a :class:`~lakeloop.errors.MonitorError` that names it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from lakeloop.errors import MonitorError


def from_plain(cls, data: Mapping[str, Any] | None, what: str, error: type = MonitorError):
    """A settings dataclass from plain data; an unknown key is an ``error`` naming it and the known ones."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise error(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**data)

def name_tuples(obj, names: tuple[str, ...], bad) -> None:
    """Freeze the list-of-names fields of a frozen settings dataclass as tuples; one string is ``bad``."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, str):
            bad(name, "a list of names, not one string")
        if value is not None:
            object.__setattr__(obj, name, tuple(value))


def to_plain(obj) -> dict[str, Any]:
    """A settings dataclass as plain data (tuples as lists): what crosses into actors and jobs."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


BACKENDS = ("scipy", "alibi")
CORRECTIONS = ("bonferroni", "fdr")
METRICS = ("accuracy", "roc_auc", "rmse", "mae")
REPORTS = ("drift", "always", "never")


@dataclass(frozen=True, kw_only=True)
class MonitorSettings:
    """How one model's monitor reads, tests and reports.

    Detection (also the :class:`~lakeloop.monitoring.detectors.DriftDetector` parameters):

    - ``backend``: ``"scipy"`` (our own, Apache-2.0 dependencies) or ``"alibi"``
      (alibi-detect; BSL-1.1 from 0.11.5 on, non-production use only).
    - ``alpha`` and ``correction`` (``bonferroni`` or ``fdr``) across the
      per-feature tests and the multivariate MMD test of a window.
    - ``mmd``, ``n_permutations``, ``mmd_reference_rows``: the MMD test and its
      reference subsample (``n_permutations`` is a floor: a window uses at least
      ``(features + 1) / alpha`` permutations, so MMD's smallest p-value can pass
      its share of ``alpha``); ``reference_rows`` caps the univariate reference.

    Stream: ``window_rows`` rows of one served version make a window; ``route``
    (``primary``) is the traffic tested; ``start`` (``earliest`` or ``latest``)
    is where a new monitor begins in ``logs.inference``; ``poll_s`` how often
    it looks for new rows.

    Robustness: rows that cannot be tested are counted as ``bad_rows`` and
    skipped (:mod:`lakeloop.monitoring.rows`); a window that raises for any
    other reason is tried ``window_attempts`` times, then recorded as failed
    and passed.

    Skew: for ``skew_views``, up to ``skew_sample`` rows per window that carry
    the view's join keys are recomputed offline at their request time
    (:mod:`lakeloop.monitoring.skew`); a mismatch rate above
    ``skew_alert_rate`` raises an ``alert``.

    Outputs: ``metric`` (live metric from feedback; default accuracy for
    classification, rmse for regression) over the last ``metric_windows``
    windows; ``estimate`` (on by default) the metric without labels per window
    (:mod:`lakeloop.monitoring.performance`: CBPE for classifiers, DLE for
    regressors, learnt on the version's labelled holdout); ``report`` PNGs on drifting windows (``drift``), every window
    (``always``) or ``never``; with ``drift``, a streak of drifting windows gets one on its first window and then on
    every ``report_every``-th (a drifting model at 100 requests/s would otherwise log a near-identical report
    every few seconds, and drawing them was half the monitor's CPU); ``webhook_url`` gets a JSON POST for each event
    whose kind is in ``webhook_kinds``.
    """

    window_rows: int = 200
    backend: str = "scipy"
    alpha: float = 0.05
    correction: str = "bonferroni"
    mmd: bool = True
    n_permutations: int = 100
    mmd_reference_rows: int = 1000
    reference_rows: int | None = 5000
    ks_method: str = "asymp"
    min_rows: int = 5
    seed: int = 0
    features: tuple[str, ...] | None = None
    categorical: tuple[str, ...] | None = None
    route: str = "primary"
    start: str = "earliest"
    poll_s: float = 2.0
    metric: str | None = None
    task: str | None = None
    metric_windows: int = 5
    report: str = "drift"
    report_max_features: int = 12
    report_every: int = 10
    skew_views: tuple[str, ...] | None = None
    skew_sample: int = 50
    skew_alert_rate: float | None = 0.1
    webhook_url: str | None = None
    webhook_kinds: tuple[str, ...] = ("alert",)
    webhook_timeout_s: float = 5.0
    num_cpus: float = 0.1
    estimate: bool = True
    window_attempts: int = 3

    def __post_init__(self):
        def bad(name: str, why: str):
            raise MonitorError(f"monitor setting {name}={getattr(self, name)!r} is not valid: {why}")

        if not isinstance(self.window_rows, int) or self.window_rows < 10:
            bad("window_rows", "a window needs at least 10 rows to test anything")
        if self.backend not in BACKENDS:
            bad("backend", f"choose one of {', '.join(BACKENDS)}")
        if not 0.0 < self.alpha < 0.5:
            bad("alpha", "the significance level must be in (0, 0.5)")
        if self.correction not in CORRECTIONS:
            bad("correction", f"choose one of {', '.join(CORRECTIONS)}")
        if self.n_permutations < 10:
            bad("n_permutations", "the MMD permutation test needs at least 10 permutations")
        if self.mmd_reference_rows < 10:
            bad("mmd_reference_rows", "at least 10 reference rows")
        if self.reference_rows is not None and self.reference_rows < 10:
            bad("reference_rows", "at least 10 reference rows, or None for all of them")
        if self.ks_method not in ("asymp", "exact", "auto"):
            bad("ks_method", "asymp (what alibi-detect uses), exact or auto")
        if self.min_rows < 2:
            bad("min_rows", "a test needs at least 2 values on each side")
        if self.start not in ("earliest", "latest"):
            bad("start", "earliest (all logged rows) or latest (rows logged from now on)")
        if self.poll_s <= 0:
            bad("poll_s", "must be positive")
        if self.metric is not None and self.metric not in METRICS:
            bad("metric", f"choose one of {', '.join(METRICS)}, or None for the task's default")
        if self.task is not None and self.task not in ("classification", "regression"):
            bad("task", "classification or regression (None: from the registry or the outputs)")
        if self.metric_windows < 1:
            bad("metric_windows", "at least 1")
        if self.report not in REPORTS:
            bad("report", f"choose one of {', '.join(REPORTS)}")
        if not isinstance(self.report_every, int) or self.report_every < 1:
            bad("report_every", "a whole number of windows, at least 1 (1: every drifting window)")
        if self.webhook_url is not None and not str(self.webhook_url).startswith(("http://", "https://")):
            bad("webhook_url", "an http:// or https:// URL")
        if not 0 < self.num_cpus <= 4:
            bad("num_cpus", "a fraction of a CPU such as 0.1")
        if not isinstance(self.estimate, bool):
            bad("estimate", "True or False")
        if not isinstance(self.window_attempts, int) or isinstance(self.window_attempts, bool) \
                or not 1 <= self.window_attempts <= 100:
            bad("window_attempts", "a whole number of tries from 1 to 100")
        if self.skew_sample < 1:
            bad("skew_sample", "at least 1 row")
        if self.skew_alert_rate is not None and not 0 <= self.skew_alert_rate < 1:
            bad("skew_alert_rate", "a share of rows in [0, 1), or None for no alert")
        name_tuples(self, ("features", "categorical", "webhook_kinds", "skew_views"), bad)

    def detector_kwargs(self) -> dict[str, Any]:
        """The :class:`DriftDetector` parameters among these settings."""
        return {k: getattr(self, k) for k in ("backend", "alpha", "correction", "mmd", "n_permutations",
                                              "mmd_reference_rows", "reference_rows", "ks_method", "min_rows",
                                              "seed", "features", "categorical")}

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "MonitorSettings":
        """From plain data; an unknown key is an error that names it and the known ones."""
        return from_plain(cls, data, "monitor setting")
