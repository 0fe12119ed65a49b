"""Request validation from a model's MLflow signature, with size limits.

Every problem is an :class:`~lakeloop.errors.InputError` whose message names
the row and the field; the HTTP layer answers it as a 4xx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lakeloop.errors import InputError
from lakeloop.serving.body import MalformedRequest, PayloadTooLarge, parse_json_now

__all__ = ["InputSchema", "Limits", "MalformedRequest", "PayloadTooLarge", "check_predict", "parse_request"]

NUMERIC = {"double", "float", "long", "integer"}
INTEGRAL = {"long", "integer"}


@dataclass(frozen=True)
class Limits:
    max_rows: int = 1000
    max_bytes: int = 1_000_000


@dataclass(frozen=True)
class InputSchema:
    """``columns``: name -> {"type": MLflow type name, "required": bool}."""

    columns: dict = field(default_factory=dict)

    def check_row(self, i: int, row, provided_by_features: frozenset = frozenset(),
                  entity_keys: frozenset = frozenset()) -> None:
        """``provided_by_features`` may be absent (the online store fills them by ``entity_keys``)."""
        if not isinstance(row, dict):
            raise InputError(f"row {i} must be an object of field: value, got {type(row).__name__}")
        for key in entity_keys:  # looked up in the online store: one hashable, finite value
            value = row.get(key)
            if value is not None and (not isinstance(value, (str, int, float)) or
                                      (isinstance(value, float) and not math.isfinite(value))):
                raise InputError(f"row {i}: entity key {key!r} must be a string or a number, got {_short(value)}")
        if not self.columns:
            return
        extra = sorted(k for k in row if k not in self.columns and k not in entity_keys)
        if extra:
            raise InputError(f"row {i}: unexpected field(s) {[_short(e, 60) for e in extra[:10]]}; "
                             f"the model takes {sorted(self.columns)}")
        for name, spec in self.columns.items():
            value = row.get(name)
            if value is None:
                if name in provided_by_features:
                    continue
                if spec["required"]:
                    what = "missing" if name not in row else "null"
                    raise InputError(f"row {i}: field {name!r} is {what} but required")
                continue
            _check_type(i, name, spec["type"], value)
            if spec["type"] in ("double", "float") and isinstance(value, int):
                row[name] = float(value)  # JSON has one number type; MLflow's schema check refuses int for double
            elif spec["type"] in INTEGRAL and isinstance(value, float):
                row[name] = int(value)  # integral (checked above)


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_type(i: int, name: str, kind: str, value) -> None:
    if kind in NUMERIC:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"row {i}: field {name!r} must be a number ({kind}), got {_short(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"row {i}: field {name!r} is {_short(value)}; NaN and infinity are not allowed")
        if kind in INTEGRAL and isinstance(value, float) and not value.is_integer():
            raise InputError(f"row {i}: field {name!r} must be an integer ({kind}), got {_short(value)}")
        if kind in INTEGRAL and not -2**63 <= value < 2**63:
            raise InputError(f"row {i}: field {name!r} is outside the 64-bit integer range ({kind})")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise InputError(f"row {i}: field {name!r} must be true or false, got {_short(value)}")
    elif kind in ("string", "datetime"):
        if not isinstance(value, str):
            raise InputError(f"row {i}: field {name!r} must be a string, got {_short(value)}")


def parse_request(body: bytes, limits: Limits) -> dict:
    """The JSON object of a predict request, with its size checked first (see :mod:`lakeloop.serving.body`)."""
    if len(body) > limits.max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {limits.max_bytes}")
    return check_predict(parse_json_now(body), limits)


def check_predict(data, limits: Limits) -> dict:
    """A parsed predict body: ``rows`` a non-empty list within ``max_rows``, known fields only."""
    if not isinstance(data, dict):
        raise InputError('request body must be an object like {"rows": [{...}]}')
    rows = data.get("rows")
    if rows is None:
        raise InputError('request body needs "rows": a list of objects (feature values and/or entity ids)')
    if not isinstance(rows, list):
        raise InputError(f'"rows" must be a list of objects, got {type(rows).__name__}')
    if not rows:
        raise InputError('"rows" is empty: send at least one row')
    if len(rows) > limits.max_rows:
        raise PayloadTooLarge(f'"rows" has {len(rows)} rows; the limit is {limits.max_rows}')
    key = data.get("routing_key")
    if key is not None and (isinstance(key, bool) or not isinstance(key, (str, int))):
        raise InputError('"routing_key" must be a string or an integer')
    if isinstance(key, str) and len(key) > 256:
        raise InputError(f'"routing_key" is {len(key)} characters; the limit is 256')
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, str))
                                or not str(version).isdigit() or len(str(version)) > 12):
        raise InputError(f'"version" must be a version number, got {str(version)[:40]!r}')
    unknown = sorted(set(data) - {"rows", "routing_key", "version"})
    if unknown:
        raise InputError(f"unknown request field(s) {[str(u)[:40] for u in unknown][:10]}; "
                         "use rows, routing_key, version")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"row {i} must be an object of field: value, got {type(row).__name__}")
    return data
