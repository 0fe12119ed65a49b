"""What a retrain does, as plain data: which data, how long to search, how to prove the challenger.

Everything left as ``None`` comes from the champion's record: the entity
table, feature refs, timestamp column, target and known-time rule of the
frame it was trained on (its lineage), and its model family and parameters
(the search's warm start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from lakeloop.errors import RetrainError
from lakeloop.monitoring.settings import from_plain, name_tuples, to_plain

MODES = ("canary", "shadow")
ON_INCONCLUSIVE = ("rollback", "promote")


@dataclass(frozen=True, kw_only=True)
class RetrainSpec:
    """How one model is retrained, canaried and promoted or rolled back.

    Data: ``entities`` (lake table of labelled entity rows), ``features``
    (``view:feature`` refs), ``target``, ``timestamp_column``: default from the
    champion's lineage. ``train_rows`` keeps only the newest rows (by
    timestamp) of the entity table; ``materialize`` brings the views up to
    date first (incremental).

    Search: ``families`` (default: the champion's and ``linear``, ``hgb``),
    ``budget_s``, ``max_trials``, ``seed``; the champion's configuration is
    tried first. Gate: ``margin`` over the champion on the new holdout; p95
    single-row latency at most ``max_latency_ratio`` times the champion's,
    measured interleaved in the same run; an absolute p95
    ``latency_budget_ms`` only if set.

    Proof: ``mode`` ``canary`` (the challenger gets ``canary_percent`` of the
    requests, sticky by routing key) or ``shadow`` (it answers a copy of every
    request; paired test). ``sequential`` (default): from ``min_labelled``
    labelled rows per arm on, every poll is a look of an always-valid test
    (:mod:`lakeloop.retrain.sequential`) that stops at the first clear win
    (promote: champion alias, 100% traffic) or loss (roll back), at ``alpha``
    each way, up to ``max_labelled`` rows per arm. ``sequential=False``: one
    fixed-sample test once both arms have ``min_labelled`` rows.
    ``on_inconclusive`` decides a tie, and what happens when
    ``decision_timeout_s`` passes first. ``retire`` removes the loser's
    deployment afterwards.
    """

    model: str
    entities: str | None = None
    features: tuple[str, ...] | None = None
    target: str | None = None
    timestamp_column: str | None = None
    train_rows: int | None = None
    materialize: bool = True
    families: tuple[str, ...] | None = None
    budget_s: float | None = 60.0
    max_trials: int | None = None
    seed: int = 0
    margin: float = 0.0
    latency_budget_ms: float | None = None
    max_latency_ratio: float = 1.5
    mode: str = "canary"
    canary_percent: float = 20.0
    min_labelled: int = 100
    max_labelled: int = 2000
    sequential: bool = True
    alpha: float = 0.05
    on_inconclusive: str = "rollback"
    decision_timeout_s: float = 900.0
    poll_s: float = 2.0
    retire: bool = True

    def __post_init__(self):
        def bad(name: str, why: str):
            raise RetrainError(f"retrain setting {name}={getattr(self, name)!r} is not valid: {why}")

        if not isinstance(self.model, str) or not self.model:
            bad("model", "the registered model's name")
        if self.train_rows is not None and (not isinstance(self.train_rows, int) or self.train_rows < 50):
            bad("train_rows", "at least 50 rows, or None for all of them")
        if self.budget_s is not None and self.budget_s <= 0:
            bad("budget_s", "must be positive (or None with max_trials)")
        if self.max_trials is not None and self.max_trials < 1:
            bad("max_trials", "at least 1")
        if self.budget_s is None and self.max_trials is None:
            bad("budget_s", "give a time budget or max_trials")
        if self.mode not in MODES:
            bad("mode", f"choose one of {', '.join(MODES)}")
        if not 0 < self.canary_percent < 100:
            bad("canary_percent", "a share of requests strictly between 0 and 100")
        if not isinstance(self.min_labelled, int) or self.min_labelled < 10:
            bad("min_labelled", "at least 10 labelled rows per version")
        if not isinstance(self.max_labelled, int) or self.max_labelled < self.min_labelled:
            bad("max_labelled", f"a whole number of labelled rows per version, at least min_labelled "
                                f"({self.min_labelled})")
        if not isinstance(self.sequential, bool):
            bad("sequential", "true (look as labels arrive) or false (one look at min_labelled)")
        if not 0 < self.alpha < 0.5:
            bad("alpha", "the significance level must be in (0, 0.5)")
        if self.on_inconclusive not in ON_INCONCLUSIVE:
            bad("on_inconclusive", f"choose one of {', '.join(ON_INCONCLUSIVE)}")
        if self.decision_timeout_s <= 0 or self.poll_s <= 0:
            bad("decision_timeout_s" if self.decision_timeout_s <= 0 else "poll_s", "must be positive")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            bad("latency_budget_ms", "must be positive, or None for no absolute budget")
        if not self.max_latency_ratio >= 1:
            bad("max_latency_ratio", "at least 1 (the challenger's p95 over the champion's)")
        name_tuples(self, ("features", "families"), bad)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "RetrainSpec":
        """From plain data; an unknown key is an error that names it and the known ones."""
        return from_plain(cls, data, "retrain setting", RetrainError)
