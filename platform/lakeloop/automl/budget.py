"""The search's time budget, as a Ray Tune stopper that never ends a search empty-handed."""

from __future__ import annotations

import time

from ray.tune import Stopper

GRACE_FACTOR, GRACE_S = 4.0, 120.0


class SearchBudget(Stopper):
    """Stop the search ``budget_s`` seconds after it starts, but not before a trial has reported a score.

    Starting trial workers takes seconds on a busy machine (a process, imports,
    the data from the object store); a search that ended with no score would
    be wasted, so the budget stretches until the first result arrives, up to
    ``4 x budget_s + 120 s``. Trials still running when it stops are stopped.
    """

    def __init__(self, *, budget_s: float):
        self.budget_s = float(budget_s)
        self.start = time.time()
        self.reported = False

    def __repr__(self) -> str:
        return f"SearchBudget(budget_s={self.budget_s:g})"

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.reported = True
        return False

    def stop_all(self) -> bool:
        elapsed = time.time() - self.start
        if elapsed < self.budget_s:
            return False
        return self.reported or elapsed > GRACE_FACTOR * self.budget_s + GRACE_S
