"""When drift or a falling live metric should start a retrain: the policy, as a pure function.

A :class:`Policy` fires when one served version drifted in ``consecutive``
windows in a row, or when its live metric fell more than ``metric_drop``
below its baseline (the version's recorded holdout score unless
``metric_baseline`` is given) over at least ``min_labelled`` labelled rows,
or (opt-in) when the metric *estimated without labels*
(:mod:`lakeloop.monitoring.performance`) fell more than ``estimated_drop``
below that baseline: before any label arrives.

``estimated_drop`` is off by default. The estimate only moves when the
inputs move into regions where the model was less sure, which the drift
rule already sees; it is blind to concept drift; and a retrain fired before
labels of the new regime exist has little new to learn from. Turn it on
where a drop in expected accuracy should act before labels come (an early
retrain or alert on a model whose labels take weeks).
It then waits ``cooldown_s`` before firing again, and never fires while a
retrain it started is in flight (until a resolving event such as
``promoted`` or ``gate_failed`` appears, or ``in_flight_timeout_s`` passes).

The state is plain data, persisted with each window, so a restarted monitor
continues the count where it stopped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from lakeloop.errors import MonitorError
from lakeloop.monitoring.settings import from_plain

HIGHER_IS_BETTER = {"accuracy": True, "roc_auc": True, "rmse": False, "mae": False}


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Drift in ``consecutive`` windows, or a metric drop beyond ``metric_drop``, fires a trigger."""

    consecutive: int = 3
    metric_drop: float | None = None
    estimated_drop: float | None = None
    metric_baseline: float | None = None
    min_labelled: int = 20
    cooldown_s: float = 3600.0
    in_flight_timeout_s: float | None = 6 * 3600.0

    def __post_init__(self):
        if not isinstance(self.consecutive, int) or self.consecutive < 1:
            raise MonitorError(f"policy consecutive={self.consecutive!r} must be a whole number of windows >= 1")
        if self.metric_drop is not None and self.metric_drop <= 0:
            raise MonitorError(f"policy metric_drop={self.metric_drop!r} must be positive (or None to ignore the "
                               "live metric)")
        if self.estimated_drop is not None and not self.estimated_drop > 0:
            raise MonitorError(f"policy estimated_drop={self.estimated_drop!r} must be positive (or None to ignore "
                               "the estimated metric)")
        if self.cooldown_s < 0:
            raise MonitorError(f"policy cooldown_s={self.cooldown_s!r} may not be negative")
        if self.min_labelled < 1:
            raise MonitorError(f"policy min_labelled={self.min_labelled!r} must be at least 1")
        if self.in_flight_timeout_s is not None and self.in_flight_timeout_s <= 0:
            raise MonitorError(f"policy in_flight_timeout_s={self.in_flight_timeout_s!r} must be positive or None")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Policy":
        return from_plain(cls, data, "policy setting")

    @staticmethod
    def initial_state() -> dict:
        return {"consecutive": {}, "last_trigger": None, "in_flight": None, "triggers": 0}

    def decide(self, state: Mapping[str, Any] | None, *, version: int, window: int, drift: bool | None,
               metric: str | None = None, value: float | None = None, labelled: int = 0,
               baseline: float | None = None, now: float, resolved: bool = False,
               estimated: float | None = None) -> tuple[dict, dict]:
        """The decision for one window and the state after it.

        ``drift`` is the window's corrected drift flag (None: not tested);
        ``value`` the live ``metric`` over ``labelled`` rows; ``resolved`` says
        the in-flight retrain has been settled (a resolving event was seen);
        ``estimated`` the ``metric`` estimated without labels on the window.
        The decision is ``{"trigger": bool, "reason": str | None, "suppressed":
        "cooldown" | "in_flight" | None, "consecutive": n, "metric_drop": d,
        "estimated_drop": e}``.
        """
        state = _copy(state or self.initial_state())
        key = str(version)
        in_flight = state.get("in_flight")
        if in_flight and (resolved or (self.in_flight_timeout_s is not None
                                       and now - in_flight["since"] >= self.in_flight_timeout_s)):
            state["in_flight"] = in_flight = None
        count = state["consecutive"].get(key, 0)
        count = count + 1 if drift else 0
        state["consecutive"][key] = count
        baseline = self.metric_baseline if self.metric_baseline is not None else baseline
        drop = None
        if value is not None and baseline is not None and metric in HIGHER_IS_BETTER and labelled >= self.min_labelled:
            drop = (baseline - value) if HIGHER_IS_BETTER[metric] else (value - baseline)
        estimated_drop = None
        if estimated is not None and baseline is not None and metric in HIGHER_IS_BETTER:
            estimated_drop = (baseline - estimated) if HIGHER_IS_BETTER[metric] else (estimated - baseline)
        reasons = []
        if count >= self.consecutive:
            reasons.append(f"drift in {count} consecutive windows of version {version}")
        if self.metric_drop is not None and drop is not None and drop > self.metric_drop:
            reasons.append(f"{metric} of version {version} is {value:.4g} over {labelled} labelled rows, "
                           f"{drop:.4g} worse than its baseline {baseline:.4g} (allowed {self.metric_drop:g})")
        if self.estimated_drop is not None and estimated_drop is not None and estimated_drop > self.estimated_drop:
            reasons.append(f"estimated {metric} of version {version} (no labels needed) is {estimated:.4g}, "
                           f"{estimated_drop:.4g} worse than its baseline {baseline:.4g} "
                           f"(allowed {self.estimated_drop:g})")
        decision = {"trigger": False, "reason": "; ".join(reasons) or None, "suppressed": None,
                    "consecutive": count, "metric_drop": drop, "baseline": baseline,
                    "estimated": estimated, "estimated_drop": estimated_drop}
        if reasons:
            last = state.get("last_trigger")
            if in_flight:
                decision["suppressed"] = "in_flight"
            elif last is not None and now - last["time"] < self.cooldown_s:
                decision["suppressed"] = "cooldown"
            else:
                decision["trigger"] = True
                state["last_trigger"] = {"time": now, "window": window, "version": version}
                state["in_flight"] = {"since": now, "window": window, "version": version}
                state["triggers"] = state.get("triggers", 0) + 1
                state["consecutive"][key] = 0  # the next trigger needs a fresh run of drifting windows
        return decision, state


def _copy(state: Mapping[str, Any]) -> dict:
    import json

    return json.loads(json.dumps(state))
