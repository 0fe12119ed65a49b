"""The promotion gate: may a new version become ``challenger``?

A version passes when, on its holdout (the same rows for both models):

- it beats the current champion's score by at least ``margin`` (in the
  metric's units and direction; no champion: nothing to beat);
- none of its outputs is NaN or infinite;
- the p95 CPU time of its single-row predictions through the pyfunc is at
  most ``max_latency_ratio`` times the champion's, both measured in the same
  run with their calls interleaved (challenger, champion, champion,
  challenger, ...); a ratio over the limit is measured once more and the
  lower of the two counts. CPU time of the calling thread
  (``time.thread_time``), not wall clock: on a busy machine the wall-clock
  tail is the scheduler's (stalls of tens to hundreds of ms that land on
  both models alike and squeeze their ratio towards 1, or stretch it at
  random), while the CPU time a call costs barely moves with load. What CPU
  time misses (waiting on I/O, a lock or a sleep; work on other threads or
  processes) is what the absolute budget is for: ``latency_budget_ms`` on
  the wall-clock p95, applied only when set (default None). The first
  version of a model has nothing to be compared with, so without a budget
  it is never refused for latency;
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
    """The gate's thresholds: ``margin`` over the champion's score; p95 single-row CPU time at most
    ``max_latency_ratio`` times the champion's (interleaved, ``latency_rows`` calls each) and, only if set, a
    wall-clock p95 within ``latency_budget_ms``."""

    margin: float = 0.0
    latency_budget_ms: float | None = None
    max_latency_ratio: float = 1.5
    latency_rows: int = 50

    def __post_init__(self):
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise ValueError(f"latency_budget_ms must be positive (or None: no absolute budget), "
                             f"not {self.latency_budget_ms}")
        if not self.max_latency_ratio >= 1:
            raise ValueError(f"max_latency_ratio must be at least 1, not {self.max_latency_ratio}")
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
    latency_budget_ms: float | None
    schema: str  # "compatible" | "breaking" | "no champion"
    breaking_changes: list[str] = field(default_factory=list)
    rows: int = 0
    checked_at: str = ""
    cpu_p95_ms: float | None = None
    champion_p95_ms: float | None = None
    champion_cpu_p95_ms: float | None = None
    latency_ratio: float | None = None
    max_latency_ratio: float | None = None

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
            "lakeloop.gate.cpu_p95_ms": num(self.cpu_p95_ms),
            "lakeloop.gate.champion_p95_ms": num(self.champion_p95_ms),
            "lakeloop.gate.champion_cpu_p95_ms": num(self.champion_cpu_p95_ms),
            "lakeloop.gate.latency_ratio": num(self.latency_ratio),
            "lakeloop.gate.max_latency_ratio": num(self.max_latency_ratio),
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
    """Wall-clock p95 over ``n`` single-row predictions through the pyfunc (schema checks included)."""
    return interleaved_p95_ms([(model, rows)], n)[0]["wall"]


def interleaved_p95_ms(models: list, n: int) -> list[dict[str, float]]:
    """``{"wall": ms, "cpu": ms}`` p95s of ``n`` single-row predictions of each ``(pyfunc, rows)``.

    Row ``i`` of every model is called in turn, the order alternating
    (A B, B A, ...), so load that comes and goes falls on all of them alike;
    ``cpu`` is the calling thread's CPU time. Three warm-up calls each first.

    Native thread pools (OpenMP, BLAS) are held to one thread while timing, as
    in a serving replica (Ray gives an actor of under one CPU one OpenMP
    thread). With more, a single-row call of a HistGradientBoosting model spins
    the calling thread at OpenMP's barrier while its peer threads wait for a
    core: on a loaded machine that counted 148 ms of CPU against 20 ms for a
    linear champion, a difference serving never sees.

    Python's garbage collector is off while timing, as ``timeit`` does: a
    collection of a big process's heap can land on a few of one model's calls
    and move its p95 (suspected where a challenger 40 ms slower per row passed
    in a loaded test run).
    """
    import gc

    from threadpoolctl import threadpool_limits

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with threadpool_limits(limits=1):
            return _interleaved_p95_ms(models, n)
    finally:
        if was_enabled:
            gc.enable()


def _interleaved_p95_ms(models: list, n: int) -> list[dict[str, float]]:
    import numpy as np

    picks = [[rows.iloc[[i % len(rows)]] for i in range(n)] for _, rows in models]
    for (model, _), rows in zip(models, picks):
        for row in rows[:3]:
            model.predict(row)
    wall: list[list[float]] = [[] for _ in models]
    cpu: list[list[float]] = [[] for _ in models]
    order = list(range(len(models)))
    for i in range(n):
        for j in (order if i % 2 == 0 else order[::-1]):
            start, start_cpu = time.perf_counter(), time.thread_time()
            models[j][0].predict(picks[j][i])
            cpu[j].append((time.thread_time() - start_cpu) * 1000.0)
            wall[j].append((time.perf_counter() - start) * 1000.0)
    return [{"wall": float(np.percentile(w, 95)), "cpu": float(np.percentile(c, 95))} for w, c in zip(wall, cpu)]


def latency_check(gate: Gate, candidate, rows, champion=None, champion_rows=None,
                  champion_version: int | None = None) -> tuple[dict, list[str]]:
    """The latency part of the gate: ``({p95_ms, cpu_p95_ms, champion_p95_ms, champion_cpu_p95_ms,
    latency_ratio}, reasons)``; ``latency_ratio`` is of the CPU-time p95s.

    With a champion (and its rows), both are timed interleaved; a ratio over
    ``gate.max_latency_ratio`` is measured again and the lower ratio counts.
    Without one, only ``gate.latency_budget_ms`` (if set) can refuse.
    """
    reasons: list[str] = []
    out = {"champion_p95_ms": None, "champion_cpu_p95_ms": None, "latency_ratio": None}
    if champion is None or champion_rows is None:
        (mine,) = interleaved_p95_ms([(candidate, rows)], gate.latency_rows)
    else:
        best = None
        for _ in range(2):
            mine, theirs = interleaved_p95_ms([(candidate, rows), (champion, champion_rows)], gate.latency_rows)
            ratio = mine["cpu"] / theirs["cpu"] if theirs["cpu"] > 0 else 1.0
            if best is None or ratio < best[2]:
                best = (mine, theirs, ratio)
            if ratio <= gate.max_latency_ratio:
                break
        mine, theirs, ratio = best
        out = {"champion_p95_ms": theirs["wall"], "champion_cpu_p95_ms": theirs["cpu"], "latency_ratio": ratio}
        if ratio > gate.max_latency_ratio:
            reasons.append(f"p95 single-row CPU time {mine['cpu']:.2f} ms is {ratio:.2f} times champion version "
                           f"{champion_version}'s {theirs['cpu']:.2f} ms, measured interleaved in the same run "
                           f"(at most {gate.max_latency_ratio:g} times allowed; wall-clock p95 "
                           f"{mine['wall']:.2f} vs {theirs['wall']:.2f} ms)")
    if gate.latency_budget_ms is not None and mine["wall"] > gate.latency_budget_ms:
        reasons.append(f"p95 single-row latency {mine['wall']:.2f} ms is over the budget of "
                       f"{gate.latency_budget_ms:g} ms")
    return {"p95_ms": mine["wall"], "cpu_p95_ms": mine["cpu"], **out}, reasons


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
