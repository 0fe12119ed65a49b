"""Feature definitions in plain Python: entities, row-level features, windowed aggregations.

Definitions are keyword-only and immutable; a project exports them from one
module attribute and loads them explicitly by ``module:attr``
(:func:`load_definitions`), never by importing every file in a folder.

.. code-block:: python

    customer = Entity(name="customer", join_keys=["customer_id"])
    customer_stats = FeatureView(
        name="customer_stats",
        entities=[customer],
        source="raw.transactions",
        timestamp_field="event_time",
        features=[
            Feature(name="amount", dtype="float64"),
            Aggregation(column="amount", function="sum", window="1d"),
            Aggregation(column="amount", function="count", window="1h"),
        ],
        ttl="30d",
    )
    definitions = [customer, customer_stats]
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import textwrap
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterable, Literal

from lakeloop.errors import DefinitionError

FUNCTIONS = ("count", "sum", "mean", "min", "max")
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def parse_duration(value: str | timedelta | None, what: str = "duration") -> timedelta | None:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"``, ``"2w"`` or a timedelta."""
    if value is None or isinstance(value, timedelta):
        return value
    m = _DURATION.fullmatch(str(value).strip())
    if not m:
        raise DefinitionError(f"{what} {value!r} is not a duration like 30s, 15m, 1h, 7d or 2w")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DefinitionError(f"{kind} name {name!r} must start with a letter and hold letters, digits, '_'")


@dataclass(frozen=True, kw_only=True)
class Entity:
    """What features describe (a customer, a merchant), identified by its join keys."""

    name: str
    join_keys: tuple[str, ...]
    description: str = ""

    def __post_init__(self):
        _check_name("entity", self.name)
        keys = (self.join_keys,) if isinstance(self.join_keys, str) else tuple(self.join_keys)
        if not keys:
            raise DefinitionError(f"entity {self.name!r} needs at least one join key")
        object.__setattr__(self, "join_keys", keys)


@dataclass(frozen=True, kw_only=True)
class Feature:
    """A row-level feature: a column of the (transformed) source, as of each event."""

    name: str
    dtype: str = "float64"
    description: str = ""

    def __post_init__(self):
        _check_name("feature", self.name)

    @property
    def output(self) -> str:
        return self.name


@dataclass(frozen=True, kw_only=True)
class Aggregation:
    """A per-entity time-window aggregation, evaluated at each event of the entity.

    The value at event time ``t`` covers the entity's events in ``(t - window, t]``.
    """

    column: str
    function: Literal["count", "sum", "mean", "min", "max"]
    window: str
    name: str | None = None
    description: str = ""

    def __post_init__(self):
        if self.function not in FUNCTIONS:
            raise DefinitionError(f"aggregation function {self.function!r} is not one of {', '.join(FUNCTIONS)}")
        parse_duration(self.window, f"window of {self.function}({self.column})")
        if self.name is not None:
            _check_name("aggregation", self.name)

    @property
    def output(self) -> str:
        return self.name or f"{self.column}_{self.function}_{self.window}"

    @property
    def window_delta(self) -> timedelta:
        return parse_duration(self.window)

    @property
    def dtype(self) -> str:
        return "int64" if self.function == "count" else "float64"


@dataclass(frozen=True, kw_only=True)
class FeatureView:
    """Features of one or more entities, computed from one lake table.

    ``transform`` (optional) maps a pandas batch of source rows to a batch with
    the entity keys, the timestamp field and the columns the features read; it
    runs row by row in parallel blocks, so it must not depend on other rows.
    ``ttl`` bounds how old a value may be when joined into a training frame.
    """

    name: str
    entities: tuple[Entity, ...]
    source: str
    timestamp_field: str
    features: tuple[Feature | Aggregation, ...]
    transform: Callable[[Any], Any] | None = None
    ttl: str | timedelta | None = None
    online: bool = True
    description: str = ""
    owner: str = ""
    tags: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_name("feature view", self.name)
        ents = (self.entities,) if isinstance(self.entities, Entity) else tuple(self.entities)
        feats = tuple(self.features)
        if not ents:
            raise DefinitionError(f"feature view {self.name!r} needs at least one entity")
        if not feats:
            raise DefinitionError(f"feature view {self.name!r} defines no features")
        outputs = [f.output for f in feats]
        dup = sorted({o for o in outputs if outputs.count(o) > 1})
        if dup:
            raise DefinitionError(f"feature view {self.name!r} defines {dup} more than once")
        clash = set(outputs) & (set(k for e in ents for k in e.join_keys) | {self.timestamp_field})
        if clash:
            raise DefinitionError(f"feature view {self.name!r}: feature(s) {sorted(clash)} clash with key/time columns")
        object.__setattr__(self, "entities", ents)
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "tags", dict(self.tags))
        parse_duration(self.ttl, f"ttl of {self.name}")

    def __hash__(self) -> int:
        return hash(self.definition_hash)

    @property
    def join_keys(self) -> list[str]:
        keys: list[str] = []
        for e in self.entities:
            keys += [k for k in e.join_keys if k not in keys]
        return keys

    @property
    def feature_names(self) -> list[str]:
        return [f.output for f in self.features]

    @property
    def aggregations(self) -> list[Aggregation]:
        return [f for f in self.features if isinstance(f, Aggregation)]

    @property
    def max_window(self) -> timedelta:
        return max((a.window_delta for a in self.aggregations), default=timedelta(0))

    @property
    def ttl_delta(self) -> timedelta | None:
        return parse_duration(self.ttl)

    @property
    def table(self) -> str:
        return f"features.{self.name}"

    def spec(self) -> dict:
        """The definition as plain data (what the hash covers, plus descriptive fields)."""
        return {
            "name": self.name,
            "entities": [{"name": e.name, "join_keys": list(e.join_keys)} for e in self.entities],
            "source": self.source,
            "timestamp_field": self.timestamp_field,
            "features": [
                {"kind": "aggregation", "column": f.column, "function": f.function, "window": f.window,
                 "output": f.output} if isinstance(f, Aggregation)
                else {"kind": "feature", "name": f.name, "dtype": f.dtype}
                for f in self.features
            ],
            "transform": _source_of(self.transform),
            "ttl": None if self.ttl is None else str(self.ttl),
        }

    @property
    def definition_hash(self) -> str:
        """A stable hash of what determines the values (not description, owner, tags)."""
        return hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()[:16]


def _source_of(fn: Callable | None) -> str | None:
    if fn is None:
        return None
    try:
        return textwrap.dedent(inspect.getsource(fn)).strip()
    except (OSError, TypeError):
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def load_definitions(ref: str | Iterable) -> list:
    """Definitions from ``"package.module:attr"`` (a list, tuple or single definition)."""
    if not isinstance(ref, str):
        return list(ref)
    if ":" not in ref:
        raise DefinitionError(f"definitions reference {ref!r} must be 'module:attr', e.g. 'examples.fraud.features:definitions'")
    module_name, attr = ref.split(":", 1)
    import os
    import sys

    if os.getcwd() not in sys.path:  # like `uvicorn module:app`: the current folder is importable
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DefinitionError(f"cannot import module {module_name!r} for definitions {ref!r}: {exc}") from exc
    try:
        value = getattr(module, attr)
    except AttributeError as exc:
        raise DefinitionError(f"module {module_name!r} has no attribute {attr!r}") from exc
    items = list(value) if isinstance(value, (list, tuple, set)) else [value]
    bad = [type(v).__name__ for v in items if not isinstance(v, (Entity, FeatureView))]
    if bad:
        raise DefinitionError(f"{ref} holds {bad}: expected Entity and FeatureView objects")
    return items
