"""Traffic policy of one served model: weighted split, sticky keys, shadow versions.

Plain data, so it crosses into Ray actors and Serve replicas as it is.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from lakeloop.errors import TrafficError


@dataclass(frozen=True)
class TrafficPolicy:
    """``weights`` maps version -> share (any positive scale; shown as percent)."""

    weights: dict[int, float]
    shadow: tuple[int, ...] = ()
    sticky: bool = True

    def __post_init__(self):
        weights = {int(v): float(w) for v, w in self.weights.items()}
        if any(w < 0 for w in weights.values()):
            raise TrafficError(f"traffic weights must not be negative: {weights}")
        if not weights or sum(weights.values()) <= 0:
            raise TrafficError("at least one version needs a positive traffic weight")
        shadow = tuple(int(v) for v in self.shadow)
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
        return cls(weights={int(v): w for v, w in d["weights"].items()}, shadow=tuple(d.get("shadow", ())),
                   sticky=bool(d.get("sticky", True)))


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
