"""What a training needs to be repeated exactly: columns, split, metric, seed, family, parameters.

A ``TrainingSpec`` is plain data. The search writes it next to the model
(``lakeloop/training_spec.json``); ``rebuild`` reads it back and, with the
frame re-created from the lineage, fits the same pipeline again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lakeloop.errors import AutoMLError


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    """How to split, fit and score. ``family``/``params``/``epochs`` are set once the best is known."""

    target: str
    task: str
    metric: str
    features: tuple[str, ...]
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    timestamp_column: str | None = None
    seed: int = 0
    holdout_fraction: float = 0.2
    validation_fraction: float = 0.2
    cv_folds: int | None = None
    max_epochs: int = 30
    family: str | None = None
    params: dict = field(default_factory=dict)
    epochs: int | None = None

    def __post_init__(self):
        if not 0.0 < self.holdout_fraction < 0.9:
            raise AutoMLError(f"holdout_fraction must be in (0, 0.9), not {self.holdout_fraction}")
        if not 0.0 < self.validation_fraction < 0.9:
            raise AutoMLError(f"validation_fraction must be in (0, 0.9), not {self.validation_fraction}")
        if self.cv_folds is not None and self.cv_folds < 2:
            raise AutoMLError(f"cv must be at least 2 folds (or None for a validation split), not {self.cv_folds}")
        if self.max_epochs < 1:
            raise AutoMLError(f"max_epochs must be at least 1, not {self.max_epochs}")

    @property
    def columns(self) -> list[str]:
        """Every column a training reads: features, target and the timestamp."""
        extra = [self.timestamp_column] if self.timestamp_column else []
        return [*self.features, self.target, *[c for c in extra if c not in self.features]]

    def best(self, family: str, params: dict, epochs: int | None = None) -> "TrainingSpec":
        return dataclasses.replace(self, family=family, params=dict(params), epochs=epochs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("features", "numeric", "categorical"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for k in ("features", "numeric", "categorical"):
            kwargs[k] = tuple(kwargs.get(k) or ())
        return cls(**kwargs)
