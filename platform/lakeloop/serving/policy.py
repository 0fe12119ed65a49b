"""Traffic policy of one served model: weighted split, sticky keys, shadow versions.

Plain data, so it crosses into Ray actors and Serve replicas as it is.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import random
from collections.abc import Mapping
from dataclasses import dataclass

from lakeloop.errors import TrafficError


@dataclass(frozen=True)
class TrafficPolicy:
    """``weights`` maps version -> share (any positive scale; shown as percent)."""

    weights: dict[int, float]
    shadow: tuple[int, ...] = ()
    sticky: bool = True

    def __post_init__(self):
        weights = check_weights(self.weights, allow_zero_sum=False)
        shadow = check_versions(self.shadow, "shadow")
        both = sorted(set(shadow) & {v for v, w in weights.items() if w > 0})
        if both:
            raise TrafficError(f"version(s) {both} cannot be both live and shadow")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "shadow", shadow)

    @property
    def percent(self) -> dict[int, float]:
        total = sum(self.weights.values())
        return {v: round(100 * w / total, 3) for v, w in sorted(self.weights.items())}

    @property
    def live(self) -> list[int]:
        return [v for v, w in sorted(self.weights.items()) if w > 0]

    def choose(self, key: str | None = None, rng: random.Random | None = None) -> int:
        """The version for one request: by the key's hash when sticky and given, else at random."""
        if key is not None and self.sticky:
            u = int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "big") / 2**64
        else:
            u = (rng or random).random()
        total = sum(self.weights.values())
        acc = 0.0
        for v, w in sorted(self.weights.items()):
            acc += w / total
            if u < acc and w > 0:
                return v
        return self.live[-1]

    def to_dict(self) -> dict:
        return {"weights": {str(v): w for v, w in self.weights.items()}, "shadow": list(self.shadow),
                "sticky": self.sticky}

    @classmethod
    def from_dict(cls, d: dict) -> "TrafficPolicy":
        """From :meth:`to_dict`'s form; anything else (a damaged stored row) is a :class:`TrafficError`."""
        if not isinstance(d, Mapping) or not isinstance(d.get("weights"), Mapping):
            raise TrafficError(f"a traffic policy is an object with 'weights', got {str(d)[:200]}")
        sticky = d.get("sticky", True)
        if not isinstance(sticky, bool):
            raise TrafficError(f"'sticky' must be true or false, got {str(sticky)[:40]!r}")
        return cls(weights=d["weights"], shadow=tuple(check_versions(d.get("shadow") or (), "shadow")),
                   sticky=sticky)


def parse_weights(specs: list[str]) -> dict[int, float]:
    """``["3=90", "4=10"]`` -> ``{3: 90.0, 4: 10.0}``."""
    out = {}
    for spec in specs:
        try:
            v, w = spec.split("=", 1)
            out[int(v)] = float(w)
        except ValueError as exc:
            raise TrafficError(f"traffic spec {spec!r} is not VERSION=WEIGHT (e.g. 3=90)") from exc
    return out


# -- checking what users (and stored rows) say -------------------------------------------
MAX_VERSION = 10**9


def check_version(value, what: str = "version") -> int:
    """A version number: a positive integer, or a string of digits."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise TrafficError(f"{what} must be a version number, got {_show(value)}")
    text = str(int(value)) if isinstance(value, numbers.Integral) else value.strip()
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_VERSION:
        raise TrafficError(f"{what} must be a version number (1, 2, ...), got {_show(value)}")
    return int(text)


def check_versions(values, what: str = "shadow") -> tuple[int, ...]:
    """A list of version numbers."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, (list, tuple)):
        raise TrafficError(f"{what} must be a list of version numbers, e.g. [5], got {_show(values)}")
    return tuple(check_version(v, f"{what} entry") for v in values)


def check_number(value, what: str) -> float:
    """A finite, non-negative number (not a boolean, not a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy numbers too
        raise TrafficError(f"{what} must be a number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise TrafficError(f"{what} is too large to be a weight") from None
    if not math.isfinite(number):
        raise TrafficError(f"{what} is {number}; weights must be finite numbers")
    if number < 0:
        raise TrafficError(f"{what} is {number}; weights must not be negative")
    return number


def check_weights(weights, allow_zero_sum: bool = False) -> dict[int, float]:
    """``{version: weight}``: known-looking versions, finite non-negative numbers, a positive sum."""
    if not isinstance(weights, Mapping):
        raise TrafficError(f'weights must be an object of version -> weight, e.g. {{"3": 90, "4": 10}}, '
                           f"got {_show(weights)}")
    out: dict[int, float] = {}
    for v, w in weights.items():
        version = check_version(v, "a weights key")
        out[version] = check_number(w, f"the weight of version {version}")
    if not allow_zero_sum and (not out or sum(out.values()) <= 0):
        raise TrafficError("at least one version needs a positive traffic weight")
    if not math.isfinite(sum(out.values())):
        raise TrafficError("the weights add up to infinity; use percentages")
    return out


def check_traffic_request(body) -> dict:
    """The admin traffic body ``{"weights": {...}, "shadow": [...], "sticky": bool}`` as controller arguments."""
    _only(body, ("weights", "shadow", "sticky"), "a traffic change")
    if "weights" not in body:
        raise TrafficError('a traffic change needs "weights", e.g. {"weights": {"3": 90, "4": 10}}')
    sticky = body.get("sticky", True)
    if not isinstance(sticky, bool):
        raise TrafficError(f'"sticky" must be true or false, got {_show(sticky)}')
    return {"weights": check_weights(body["weights"]), "shadow": list(check_versions(body.get("shadow", []))),
            "sticky": sticky}


def check_deploy_request(body) -> dict:
    """The admin deploy body ``{"version": 3 | "alias": "x", "weight": 10, "shadow": false}``."""
    _only(body, ("version", "alias", "weight", "shadow"), "a deploy")
    if "version" in body and "alias" in body:
        raise TrafficError('send "version" or "alias", not both')
    ref = None
    if body.get("version") is not None:
        ref = check_version(body["version"])
    elif body.get("alias") is not None:
        alias = body["alias"]
        if not isinstance(alias, str) or not alias or len(alias) > 64:
            raise TrafficError(f'"alias" must be an alias name like "champion", got {_show(alias)}')
        ref = alias
    weight = body.get("weight")
    if weight is not None:
        weight = check_number(weight, '"weight"')
        if weight > 100:
            raise TrafficError(f'"weight" is a percentage in 0..100, got {weight}')
    shadow = body.get("shadow", False)
    if not isinstance(shadow, bool):
        raise TrafficError(f'"shadow" must be true or false, got {_show(shadow)}')
    if shadow and weight:
        raise TrafficError('a shadow gets no traffic: send "shadow": true or a "weight", not both')
    return {"ref": ref, "weight": weight, "shadow": shadow}


def check_promote_request(body) -> dict:
    _only(body, ("version", "force"), "a promotion")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise TrafficError(f'"force" must be true or false, got {_show(force)}')
    version = body.get("version")
    return {"version": None if version is None else check_version(version), "force": force}


def _only(body, allowed: tuple, what: str) -> None:
    if not isinstance(body, Mapping):
        raise TrafficError(f"{what} needs a JSON object, got {_show(body)}")
    unknown = sorted(str(k)[:40] for k in body if k not in allowed)
    if unknown:
        raise TrafficError(f"unknown field(s) {unknown[:10]} in {what}; use {', '.join(allowed)}")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."
