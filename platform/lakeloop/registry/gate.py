"""The promotion gate: may a new version become ``challenger``?

A version passes when, on its holdout (the same rows for both models):

- it beats the current champion's score by at least ``margin`` (in the
  metric's units and direction; no champion: nothing to beat);
- none of its outputs is NaN or infinite;
- the p95 latency of single-row predictions through the pyfunc stays within
  ``latency_budget_ms``;
- it accepts the champion's input schema: every column it requires is one the
  champion's callers send, with a type MLflow converts safely. Anything else
  is a breaking change.

The verdict and its numbers are written on the version as ``lakeloop.gate.*``
tags.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

# MLflow schema types a column of the first type converts into without loss (its enforcement rules).
SAFE = {
    ("integer", "integer"), ("integer", "long"), ("integer", "double"), ("long", "long"),
    ("float", "float"), ("float", "double"), ("double", "double"), ("boolean", "boolean"),
    ("string", "string"), ("binary", "binary"), ("datetime", "datetime"),
}


@dataclass(frozen=True, kw_only=True)
class Gate:
    """The gate's thresholds."""

    margin: float = 0.0
    latency_budget_ms: float = 50.0
    latency_rows: int = 50

    def __post_init__(self):
        if self.latency_budget_ms <= 0:
            raise ValueError(f"latency_budget_ms must be positive, not {self.latency_budget_ms}")
        if self.latency_rows < 5:
            raise ValueError(f"latency_rows must be at least 5, not {self.latency_rows}")


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """What the gate found; ``passed`` only if every check did."""

    passed: bool
    reasons: list[str]
    metric: str
    score: float | None
    champion_version: int | None
    champion_score: float | None
    margin: float
    improvement: float | None
    nonfinite: int
    p95_ms: float
    latency_budget_ms: float
    schema: str  # "compatible" | "breaking" | "no champion"
    breaking_changes: list[str] = field(default_factory=list)
    rows: int = 0
    checked_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        def num(v):
            return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)

        return {
            "lakeloop.gate.passed": str(self.passed).lower(),
            "lakeloop.gate.reasons": "; ".join(self.reasons)[:4000] or "all checks passed",
            "lakeloop.gate.metric": self.metric,
            "lakeloop.gate.score": num(self.score),
            "lakeloop.gate.champion_version": num(self.champion_version),
            "lakeloop.gate.champion_score": num(self.champion_score),
            "lakeloop.gate.margin": num(self.margin),
            "lakeloop.gate.improvement": num(self.improvement),
            "lakeloop.gate.nonfinite": str(self.nonfinite),
            "lakeloop.gate.p95_ms": num(self.p95_ms),
            "lakeloop.gate.latency_budget_ms": num(self.latency_budget_ms),
            "lakeloop.gate.schema": self.schema,
            "lakeloop.gate.breaking_changes": "; ".join(self.breaking_changes)[:4000],
            "lakeloop.gate.rows": str(self.rows),
            "lakeloop.gate.checked_at": self.checked_at,
            "lakeloop.gate": json.dumps(self.to_dict(), default=str)[:7900],
        }


def schema_changes(champion: dict[str, dict], candidate: dict[str, dict]) -> list[str]:
    """Why ``candidate`` would refuse input the champion accepts (empty: it accepts all of it)."""
    changes = []
    for col, spec in candidate.items():
        old = champion.get(col)
        if old is None:
            if spec["required"]:
                changes.append(f"requires column {col!r} ({spec['type']}) that the champion's input does not have")
            continue
        if (old["type"], spec["type"]) not in SAFE:
            changes.append(f"column {col!r} was {old['type']}, is now {spec['type']}")
        if spec["required"] and not old["required"]:
            changes.append(f"column {col!r} was optional, is now required")
    return changes


def nonfinite_count(answer) -> int:
    """Non-finite values among the numeric outputs of a pyfunc answer."""
    import numpy as np

    values = answer.select_dtypes(include=["number", "bool"]).to_numpy(dtype=np.float64)
    return int((~np.isfinite(values)).sum())


def p95_latency_ms(model, rows, n: int) -> float:
    """p95 over ``n`` single-row predictions through the pyfunc (schema checks included), after warm-up."""
    import numpy as np

    picks = [rows.iloc[[i % len(rows)]] for i in range(n)]
    for row in picks[:3]:
        model.predict(row)
    times = []
    for row in picks:
        start = time.perf_counter()
        model.predict(row)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(times, 95))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
