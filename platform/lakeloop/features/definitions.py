"""Feature definitions in plain Python: entities, row-level features, windowed aggregations.

Definitions are keyword-only and immutable; a project exports them from one
module attribute and loads them explicitly by ``module:attr``
(:func:`load_definitions`), never by importing every file in a folder.

Applied definitions live in the catalog as data (:meth:`FeatureView.to_data`,
:meth:`FeatureView.from_data`), so any process on any node loads them without
the project's module. The one piece of code, a row-level ``transform``, is
kept by importable reference (``module:qualname``) with a hash of its source
(:class:`TransformRef`): a process that materializes imports it and refuses
code whose hash differs from the applied one.

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

import dataclasses
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
DATA_FORMAT = 2  # the catalog's stored form of a view (to_data); rows without it predate it
DTYPES = ("string", "int64", "int32", "float64", "float32", "bool", "timestamp", "date")
_DTYPE_ALIASES = {"str": "string", "int": "int64", "float": "float64", "double": "float64",
                  "boolean": "bool", "datetime": "timestamp"}
DERIVED_DTYPE = "float64"  # a column a transform derives (absent from the source) unless a dtype is given
# which declared dtype can hold the values of which source column type
_HOLDS = {
    "float64": {"float64", "float32", "int64", "int32", "bool"},
    "float32": {"float32", "float64", "int32", "bool"},
    "int64": {"int64", "int32", "bool"},
    "int32": {"int32", "bool"},
    "bool": {"bool"},
    "string": {"string"},
    "timestamp": {"timestamp", "date"},
    "date": {"date"},
}
_NUMERIC = {"float64", "float32", "int64", "int32", "bool"}
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def utc_timestamp(value):
    """``value`` (a datetime, ISO text or pandas Timestamp) as a pandas Timestamp in UTC; naive means UTC.
    Unparseable input raises pandas' ValueError or TypeError; None stays NaT."""
    import pandas as pd

    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


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
    """A row-level feature: a column of the (transformed) source, as of each event.

    ``dtype`` defaults to the source column's type (checked at plan/apply); a
    column the transform derives is ``float64`` unless given.
    """

    name: str
    dtype: str | None = None
    description: str = ""

    def __post_init__(self):
        _check_name("feature", self.name)
        if self.dtype is not None:
            dtype = _DTYPE_ALIASES.get(str(self.dtype), self.dtype)
            if dtype not in DTYPES:
                raise DefinitionError(f"feature {self.name!r} has dtype {self.dtype!r}; use one of {', '.join(DTYPES)} "
                                      "(or leave it out: it then comes from the source column)")
            object.__setattr__(self, "dtype", dtype)

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


@dataclass(frozen=True)
class TransformRef:
    """A row-level transform by importable reference (``module:qualname``) and the hash of its source.

    This is how the catalog keeps a view's code: a view loaded from the catalog
    holds one, and :meth:`resolve` imports the function on this node, refusing
    code whose source hash differs from the applied one (never silently other
    code). Calling it resolves and calls.
    """

    ref: str
    code_hash: str | None
    view: str = field(default="", compare=False)

    def __call__(self, df):
        return self.resolve()(df)

    def resolve(self) -> Callable:
        """The applied function, imported here; a :class:`DefinitionError` saying what to do otherwise."""
        where = f"feature view {self.view!r}" if self.view else "a feature view"
        try:
            fn = import_reference(self.ref)
        except DefinitionError as exc:
            raise DefinitionError(
                f"{where} transforms its rows with {self.ref}, which cannot be loaded on this node: {exc.message}. "
                f"Deploy that module here (install it, put it on PYTHONPATH, or ship it in the Ray job's "
                f"working_dir/py_modules), or re-apply the view with a transform that is importable") from None
        got = code_hash(fn)
        if got != self.code_hash:
            raise DefinitionError(
                f"{where} was applied with transform {self.ref} at code hash {self.code_hash}, but the code "
                f"importable on this node hashes to {got}: it is different code, and lakeloop will not run it in "
                f"place of the applied one. Deploy the applied version of that module here, or re-apply the "
                f"definitions (lakeloop features apply module:attr) to make this code a new version of the view")
        return fn


def code_hash(fn: Callable) -> str | None:
    """A hash of a function's source text (None when its source cannot be read)."""
    try:
        source = textwrap.dedent(inspect.getsource(fn)).strip()
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def reference_of(fn: Callable) -> str:
    """``module:qualname`` of a function (what an importing process looks up)."""
    return f"{getattr(fn, '__module__', None) or '?'}:{getattr(fn, '__qualname__', None) or repr(fn)}"


def import_reference(ref: str) -> Callable:
    """The object at ``module:qualname``, imported (the current folder importable, as for ``module:attr``)."""
    import os
    import sys

    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise DefinitionError(f"reference {ref!r} is not 'module:qualname'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or the module failing while it runs
        raise DefinitionError(f"module {module_name!r} cannot be imported ({type(exc).__name__}: {exc})") from None
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise DefinitionError(f"module {module_name!r} has no {qualname!r}") from None
    return obj


def check_transform(view: "FeatureView") -> None:
    """At apply: the view's transform must be importable by reference from any process, or a clear refusal."""
    fn = view.transform
    if fn is None or isinstance(fn, TransformRef):
        return
    where = f"feature view {view.name!r}"
    ref = reference_of(fn)
    move = ("define it as a top-level function (def name(df): ...) in a module that every node can import, "
            "and pass that function")
    if not inspect.isfunction(fn):
        raise DefinitionError(f"{where}: its transform {fn!r} is not a plain function, so the catalog cannot keep "
                              f"it by reference; {move}")
    if fn.__name__ == "<lambda>" or "<locals>" in fn.__qualname__:
        kind = "a lambda" if fn.__name__ == "<lambda>" else "defined inside another function"
        raise DefinitionError(f"{where}: its transform {ref} is {kind}, which no other process can import; {move}")
    if fn.__module__ == "__main__":
        raise DefinitionError(f"{where}: its transform {fn.__qualname__} is defined in __main__ (a notebook or a "
                              f"script), which no other process can import; {move}")
    if code_hash(fn) is None:
        raise DefinitionError(f"{where}: the source of its transform {ref} cannot be read, so its code cannot be "
                              f"hashed and checked where it runs; {move}")
    try:
        found = import_reference(ref)
    except DefinitionError as exc:
        raise DefinitionError(f"{where}: its transform {ref} cannot be imported back by reference ({exc.message}); "
                              f"{move}") from None
    if found is not fn and code_hash(found) != code_hash(fn):
        raise DefinitionError(f"{where}: {ref} imports as different code than the transform passed; {move}")


@dataclass(frozen=True, kw_only=True)
class FeatureView:
    """Features of one or more entities, computed from one lake table.

    ``transform`` (optional) maps a pandas batch of source rows to a batch with
    the entity keys, the timestamp field and the columns the features read; it
    runs row by row in parallel blocks, so it must not depend on other rows. It
    must be a top-level function of an importable module: the catalog keeps it
    by reference and source hash, and other processes import it from there.
    ``ttl`` bounds how old a value may be when joined into a training frame.
    """

    name: str
    entities: tuple[Entity, ...]
    source: str
    timestamp_field: str
    features: tuple[Feature | Aggregation, ...]
    transform: Callable[[Any], Any] | TransformRef | None = None
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
        if self.transform is not None and not callable(self.transform):
            raise DefinitionError(f"feature view {self.name!r}: transform must be a function, not "
                                  f"{type(self.transform).__name__}")
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
        """What determines the values, as plain data (what the definition hash covers)."""
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
            "transform": self._transform_spec(),
            "ttl": _duration_text(self.ttl),
        }

    def _transform_spec(self) -> dict | None:
        """``{"ref", "code_hash"}``, worked out once per object (the source read when first asked)."""
        cached = self.__dict__.get("_transform_cache")
        if cached is None:
            fn = self.transform
            if fn is None:
                cached = (None,)
            elif isinstance(fn, TransformRef):
                cached = ({"ref": fn.ref, "code_hash": fn.code_hash},)
            else:
                cached = ({"ref": reference_of(fn), "code_hash": code_hash(fn)},)
            object.__setattr__(self, "_transform_cache", cached)
        return cached[0]

    @property
    def definition_hash(self) -> str:
        """A stable hash of what determines the values (not description, owner, tags)."""
        return hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()[:16]

    def to_data(self) -> dict:
        """The whole definition as JSON-able data: the spec plus the per-part descriptions (the catalog's form)."""
        docs = {"entities": {e.name: e.description for e in self.entities if e.description},
                "features": {f.output: f.description for f in self.features if f.description}}
        return {**self.spec(), "format": DATA_FORMAT, "docs": docs}

    @classmethod
    def from_data(cls, data: dict, *, description: str = "", owner: str = "", tags: dict | None = None,
                  online: bool = True) -> "FeatureView":
        """The view :meth:`to_data` describes; its transform (if any) as a :class:`TransformRef`."""
        docs = data.get("docs") or {}
        ent_docs, feat_docs = docs.get("entities") or {}, docs.get("features") or {}
        features: list[Feature | Aggregation] = []
        for f in data["features"]:
            if f["kind"] == "aggregation":
                default = f"{f['column']}_{f['function']}_{f['window']}"
                features.append(Aggregation(column=f["column"], function=f["function"], window=f["window"],
                                            name=None if f["output"] == default else f["output"],
                                            description=feat_docs.get(f["output"], "")))
            else:
                features.append(Feature(name=f["name"], dtype=f.get("dtype"), description=feat_docs.get(f["name"], "")))
        t = data.get("transform")
        return cls(
            name=data["name"], source=data["source"], timestamp_field=data["timestamp_field"],
            entities=[Entity(name=e["name"], join_keys=e["join_keys"], description=ent_docs.get(e["name"], ""))
                      for e in data["entities"]],
            features=features, ttl=data.get("ttl"),
            transform=None if t is None else TransformRef(ref=t["ref"], code_hash=t["code_hash"], view=data["name"]),
            description=description or "", owner=owner or "", tags=dict(tags or {}), online=bool(online))

    def with_code(self) -> "FeatureView":
        """This view with its transform imported here (a :class:`TransformRef` resolved and checked)."""
        if isinstance(self.transform, TransformRef):
            resolved = dataclasses.replace(self, transform=self.transform.resolve())
            object.__setattr__(resolved, "_transform_cache", (self._transform_spec(),))
            return resolved
        return self

    def against_source(self, columns: dict[str, str], source: str | None = None) -> "FeatureView":
        """This view with every feature's dtype settled by its source's column types (``{name: type}``).

        A feature without a dtype takes its column's type; a column the
        transform derives (absent from the source) is ``float64`` unless given.
        A declared dtype that cannot hold the column's values, a sum/mean/min/max
        over a non-numeric column, or (without a transform) a column the source
        lacks is a :class:`DefinitionError` naming the view, the feature and the column.
        """
        table = source or self.source
        where = f"feature view {self.name!r}"
        has = ", ".join(sorted(columns))
        if self.transform is None:
            for col, what in [*((k, "join key") for k in self.join_keys),
                              (self.timestamp_field, "timestamp field")]:
                if col not in columns:
                    raise DefinitionError(f"{where}: its {what} {col!r} is not a column of its source {table} "
                                          f"(columns: {has})")
        settled: list[Feature | Aggregation] = []
        for f in self.features:
            col = f.name if isinstance(f, Feature) else f.column
            kind = columns.get(col)
            label = (f"feature {f.output!r}" if isinstance(f, Feature)
                     else f"aggregation {f.output!r} ({f.function} of {col!r})")
            if kind is None and self.transform is None:
                raise DefinitionError(f"{where}: {label} reads column {col!r}, which its source {table} does not "
                                      f"have (columns: {has}); fix the name, or derive it in a transform")
            if isinstance(f, Aggregation):
                if kind is not None and f.function != "count" and kind not in _NUMERIC:
                    raise DefinitionError(
                        f"{where}: {label} needs a numeric column, but column {col!r} of {table} is {kind}; "
                        f"aggregate a numeric column, or count it (function='count')")
                settled.append(f)
                continue
            dtype = f.dtype or kind or DERIVED_DTYPE
            if kind is not None and kind not in _HOLDS.get(dtype, {dtype}):
                raise DefinitionError(
                    f"{where}: {label} is declared {dtype}, which cannot hold column {col!r} of {table} ({kind} "
                    f"values); declare dtype={kind!r} or leave dtype out (it then comes from the column)")
            settled.append(f if f.dtype == dtype else dataclasses.replace(f, dtype=dtype))
        if all(a is b for a, b in zip(settled, self.features)):
            return self
        out = dataclasses.replace(self, features=settled)
        object.__setattr__(out, "_transform_cache", (self._transform_spec(),))
        return out


def _duration_text(value: str | timedelta | None) -> str | None:
    """A ttl as stored: as written, or a timedelta in whole seconds (``"604800s"``), which parses back."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return f"{int(value.total_seconds())}s"
    return str(value)


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
