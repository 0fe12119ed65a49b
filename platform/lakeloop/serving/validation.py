"""Request validation from a model's MLflow signature, with size limits.

Every problem is an :class:`~lakeloop.errors.InputError` whose message names
the row and the field; the HTTP layer answers it as a 4xx.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from lakeloop.errors import InputError

NUMERIC = {"double", "float", "long", "integer"}
INTEGRAL = {"long", "integer"}


class PayloadTooLarge(InputError):
    http_status = 413


class MalformedRequest(InputError):
    http_status = 400


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
        if not self.columns:
            return
        extra = sorted(k for k in row if k not in self.columns and k not in entity_keys)
        if extra:
            raise InputError(f"row {i}: unexpected field(s) {extra}; the model takes {sorted(self.columns)}")
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


def _check_type(i: int, name: str, kind: str, value) -> None:
    if kind in NUMERIC:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"row {i}: field {name!r} must be a number ({kind}), got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"row {i}: field {name!r} is {value!r}; NaN and infinity are not allowed")
        if kind in INTEGRAL and isinstance(value, float) and not value.is_integer():
            raise InputError(f"row {i}: field {name!r} must be an integer ({kind}), got {value!r}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise InputError(f"row {i}: field {name!r} must be true or false, got {value!r}")
    elif kind in ("string", "datetime"):
        if not isinstance(value, str):
            raise InputError(f"row {i}: field {name!r} must be a string, got {value!r}")


def parse_request(body: bytes, limits: Limits) -> dict:
    """The JSON object of a predict request, with its size checked first."""
    if len(body) > limits.max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {limits.max_bytes}")
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc}") from exc
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
    if key is not None and not isinstance(key, (str, int)):
        raise InputError('"routing_key" must be a string or an integer')
    unknown = sorted(set(data) - {"rows", "routing_key", "version"})
    if unknown:
        raise InputError(f"unknown request field(s) {unknown}; use rows, routing_key, version")
    return data


def _reject_constant(name: str):
    raise InputError(f"{name} is not allowed in requests (JSON has no NaN or infinity)")
