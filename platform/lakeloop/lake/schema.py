"""Table schemas: column types, required columns, an optional primary key.

A :class:`TableSchema` is plain data, stored as JSON in the Delta table's
configuration (``lakeloop.schema``), so any reader of the table finds it.
``conform`` checks a batch against it and returns the batch in the table's
exact Arrow types, or raises :class:`SchemaError` naming the column.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import pyarrow as pa

from lakeloop.errors import SchemaError

TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "float32": pa.float32(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}
_ALIASES = {"str": "string", "int": "int64", "float": "float64", "double": "float64",
            "boolean": "bool", "datetime": "timestamp"}
SPEC_KEY = "lakeloop.schema"


def type_name(arrow_type: pa.DataType) -> str:
    """The lakeloop type name for an Arrow type (inverse of ``TYPES``)."""
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return "string"
    if pa.types.is_dictionary(arrow_type):
        return type_name(arrow_type.value_type)
    for name, t in TYPES.items():
        if t == arrow_type:
            return name
    if pa.types.is_integer(arrow_type):
        return "int64"
    if pa.types.is_floating(arrow_type):
        return "float64"
    if pa.types.is_date(arrow_type):
        return "date"
    raise SchemaError(f"Arrow type {arrow_type} has no lakeloop column type; use one of {', '.join(TYPES)}")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    required: bool = False

    @property
    def arrow_type(self) -> pa.DataType:
        return TYPES[self.type]


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = field(default=())

    @classmethod
    def build(
        cls,
        columns: Mapping[str, Any],
        *,
        required: list[str] | tuple[str, ...] = (),
        primary_key: str | list[str] | tuple[str, ...] | None = None,
        partition_by: str | list[str] | tuple[str, ...] | None = None,
    ) -> "TableSchema":
        """From ``{"col": "float64"}`` or ``{"col": {"type": ..., "required": true}}``."""
        cols = []
        for name, spec in columns.items():
            spec = {"type": spec} if isinstance(spec, str) else dict(spec)
            raw_type = str(spec.get("type", "")).lower()
            tname = _ALIASES.get(raw_type, raw_type)
            if tname not in TYPES:
                raise SchemaError(
                    f"column {name!r} has unknown type {spec.get('type')!r}; use one of {', '.join(TYPES)}"
                )
            cols.append(Column(str(name), tname, bool(spec.get("required", False)) or name in required))
        pk = _names(primary_key)
        parts = _names(partition_by)
        known = {c.name for c in cols}
        for name in (*pk, *parts, *required):
            if name not in known:
                raise SchemaError(f"column {name!r} is named as a key, partition or required column "
                                  f"but is not in the schema ({', '.join(sorted(known))})")
        # key columns are always required
        cols = [Column(c.name, c.type, c.required or c.name in pk) for c in cols]
        return cls(tuple(cols), pk, parts)

    @classmethod
    def from_arrow(cls, schema: pa.Schema, primary_key=None, partition_by=None) -> "TableSchema":
        cols = {f.name: {"type": type_name(f.type), "required": not f.nullable} for f in schema}
        return cls.build(cols, primary_key=primary_key, partition_by=partition_by)

    @classmethod
    def from_json(cls, text: str) -> "TableSchema":
        data = json.loads(text)
        return cls(
            tuple(Column(**c) for c in data["columns"]),
            tuple(data.get("primary_key", ())),
            tuple(data.get("partition_by", ())),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise SchemaError(f"no column {name!r} in schema ({', '.join(self.names)})")

    def to_arrow(self) -> pa.Schema:
        # Nullability is enforced by lakeloop's own checks (with named errors and
        # quarantine), so Delta columns stay nullable and schema evolution stays easy.
        return pa.schema([pa.field(c.name, c.arrow_type, nullable=True) for c in self.columns])

    def conform(self, data: pa.Table, *, table: str = "") -> pa.Table:
        """Check and cast a batch to this schema; raise :class:`SchemaError` naming the column.

        Missing required columns, columns the schema does not have, and columns
        whose type cannot be converted without loss are errors; missing optional
        columns are filled with nulls; safe widenings (int32 to int64, int to
        float, naive timestamps read as UTC) are applied.
        """
        where = f" for table {table}" if table else ""
        present = set(data.column_names)
        unexpected = [n for n in data.column_names if n not in set(self.names)]
        if unexpected:
            raise SchemaError(
                f"unexpected column(s) {', '.join(map(repr, unexpected))}{where}; the schema has "
                f"{', '.join(self.names)}. Drop them, or add them to the table's schema first."
            )
        missing = [c.name for c in self.columns if c.required and c.name not in present]
        if missing:
            raise SchemaError(f"missing required column(s) {', '.join(map(repr, missing))}{where}")
        arrays = []
        for col in self.columns:
            if col.name not in present:
                arrays.append(pa.nulls(data.num_rows, col.arrow_type))
                continue
            arrays.append(_cast_column(data.column(col.name), col, where))
        return pa.Table.from_arrays(arrays, schema=self.to_arrow())


def _cast_column(arr: pa.ChunkedArray, col: Column, where: str) -> pa.ChunkedArray:
    src, dst = arr.type, col.arrow_type
    if src == dst:
        return arr
    if pa.types.is_null(src):
        return pa.chunked_array([pa.nulls(len(arr), dst)]) if len(arr) else pa.chunked_array([], dst)
    ok = (
        (pa.types.is_integer(src) and (pa.types.is_integer(dst) or pa.types.is_floating(dst)))
        or (pa.types.is_floating(src) and pa.types.is_floating(dst))
        or (pa.types.is_timestamp(src) and pa.types.is_timestamp(dst))
        or (pa.types.is_date(src) and pa.types.is_date(dst))
        or (_is_stringish(src) and col.type == "string")
        or (pa.types.is_dictionary(src) and _is_stringish(src.value_type) and col.type == "string")
    )
    if not ok:
        raise SchemaError(
            f"column {col.name!r}{where} has type {src} but the schema says {col.type}; "
            "convert it before writing"
        )
    try:
        if pa.types.is_timestamp(src) and src.tz is None:
            arr = arr.cast(pa.timestamp(src.unit, tz="UTC"))
        return arr.cast(dst, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"column {col.name!r}{where} cannot be converted to {col.type}: {exc}") from exc


def _is_stringish(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _names(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)
