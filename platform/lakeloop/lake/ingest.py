"""Ingest a file into the lake: read, check the schema, apply row rules, land or quarantine.

Schema problems (missing, unexpected or mistyped columns) stop the whole file
and write nothing. Row problems (a value that does not parse as its column's
type, or a broken rule) send just that row to ``quarantine.<table>``, with the
rule and a reason; the rest lands. Both writes share one batch id.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import pyarrow as pa

from lakeloop.errors import IngestFileError, SchemaError
from lakeloop.lake.rules import Rules, load_rules
from lakeloop.lake.schema import TableSchema
from lakeloop.lake.table import new_batch_id

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.lake.catalog import Lake

NULL_TEXT = ["", "NA", "N/A", "null", "NULL", "None"]
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
QUARANTINE_META = ["_row", "_rule", "_reason", "_batch_id", "_source", "_quarantined_at"]


@dataclass(frozen=True)
class IngestResult:
    table: str
    batch_id: str
    accepted: int
    quarantined: int
    version: int | None
    quarantine_table: str
    quarantine_version: int | None
    mode: str
    by_rule: dict = field(default_factory=dict)  # rule -> quarantined rows it caught
    history: str | None = None  # the rows were declared history, known at this column's time

    def to_dict(self) -> dict:
        return asdict(self)

    def __repr__(self) -> str:  # rendering: lakeloop.display
        from lakeloop import display
        return display.ingest_text(self)

    def _repr_html_(self) -> str:
        from lakeloop import display
        return display.ingest_html(self)


def read_file(path: str | os.PathLike) -> tuple[pa.Table, bool]:
    """The file as Arrow; the flag says whether its values are untyped text (CSV)."""
    path = Path(path)
    if not path.is_file():
        raise IngestFileError(f"input file {path} does not exist")
    if path.stat().st_size == 0:
        raise IngestFileError(f"input file {path} is empty (0 bytes): nothing to ingest")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ","), True
    if suffix in (".jsonl", ".json", ".ndjson"):
        _check_utf8(path)
        import pyarrow.json as pajson

        try:
            return pajson.read_json(path), False
        except pa.ArrowInvalid as exc:
            raise IngestFileError(f"input file {path} is not valid JSON lines: {exc}") from exc
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path), False
        except (pa.ArrowInvalid, OSError) as exc:
            raise IngestFileError(f"input file {path} is not a readable Parquet file "
                                  f"(truncated?): {exc}") from exc
    raise IngestFileError(f"input file {path} has unknown format {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def _check_utf8(path: Path) -> bytes:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise IngestFileError(
            f"input file {path} is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} "
            f"(line {line}) cannot be decoded; re-encode the file as UTF-8"
        ) from exc
    return data


def _read_csv(path: Path, delimiter: str) -> pa.Table:
    import io

    import pyarrow.csv as pacsv

    data = _check_utf8(path)
    text = data.decode("utf-8")
    header = text.split("\n", 1)[0].rstrip("\r")
    if not header.strip():
        raise IngestFileError(f"input file {path} has no header line")
    import csv

    names = next(csv.reader([header], delimiter=delimiter))
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise IngestFileError(f"input file {path} repeats column name(s) {dup} in its header")
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                null_values=NULL_TEXT,
                strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise IngestFileError(
            f"input file {path} is not well-formed CSV (truncated or a broken row?): {exc}. "
            "Nothing was written."
        ) from exc
    if table.num_rows == 0:
        raise IngestFileError(f"input file {path} has a header but no data rows: nothing to ingest")
    return table


def _parse_text(df: "pd.DataFrame", schema: TableSchema):
    """Parse text columns to the schema's types; cells that fail become row failures."""
    import numpy as np
    import pandas as pd

    parsed = {}
    failures = []
    for col in schema.columns:
        if col.name not in df.columns:
            continue
        raw = df[col.name]
        present = raw.notna().to_numpy()
        if col.type == "string":
            parsed[col.name] = raw
            continue
        if col.type in ("int64", "int32", "float64", "float32"):
            value = pd.to_numeric(raw, errors="coerce")
            bad = present & value.isna().to_numpy()
            if col.type.startswith("int"):
                nonint = present & ~bad & (value.fillna(0) % 1 != 0).to_numpy()
                bad |= nonint
                value = value.where(~bad).astype("Int64")
        elif col.type == "timestamp":
            value = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
            bad = present & value.isna().to_numpy()
        elif col.type == "date":
            value = pd.to_datetime(raw, errors="coerce", format="ISO8601").dt.date
            bad = present & pd.isna(value).to_numpy()
        elif col.type == "bool":
            low = raw.str.strip().str.lower()
            value = low.map(lambda v: True if v in _TRUE else False if v in _FALSE else None)
            bad = present & value.isna().to_numpy()
            value = value.astype("boolean")
        else:  # pragma: no cover - TYPES is closed
            raise SchemaError(f"cannot parse text as {col.type}")
        if bad.any():
            idx = np.flatnonzero(bad)
            failures.append(pd.DataFrame({
                "row": idx,
                "rule": f"{col.name}.type",
                "reason": [f"{col.name}={raw.iloc[i]!r} is not a valid {col.type}" for i in idx],
            }))
        parsed[col.name] = value.where(~bad)
    out = pd.DataFrame(parsed, index=df.index)
    return out, failures


def _target_schema(lake: "Lake", table: str, data: pa.Table, is_text: bool, rules: Rules,
                   key: str | None) -> tuple[TableSchema, bool]:
    handle = lake.table(table)
    if handle.exists():
        return handle.schema, True
    import pyarrow.csv as pacsv

    typed = rules.typed_columns
    inferred = {}
    for name in data.column_names:
        if name in typed:
            continue
        arr = data.column(name)
        if is_text:  # infer the way a CSV reader would, on the clean text
            import io

            sample = "\n".join(["v"] + ["" if v is None else _csv_cell(v) for v in arr.to_pylist()])
            arr = pacsv.read_csv(io.BytesIO(sample.encode()), convert_options=pacsv.ConvertOptions(
                null_values=NULL_TEXT, strings_can_be_null=True)).column("v")
        inferred[name] = {"type": "string" if pa.types.is_null(arr.type) else
                          TableSchema.from_arrow(pa.schema([pa.field(name, arr.type)])).columns[0].type}
    columns = {**typed, **inferred}
    # keep the file's column order, then any rule-typed columns the file lacks
    ordered = {n: columns[n] for n in data.column_names if n in columns}
    ordered.update({n: v for n, v in columns.items() if n not in ordered})
    pk = key or rules.primary_key
    return TableSchema.build(ordered, primary_key=pk), False


def _csv_cell(v: str) -> str:
    return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n\r') else v


def ingest_file(lake: "Lake", path, table: str, *, key: str | None = None,
                rules: str | os.PathLike | Mapping | Rules | None = None, history: str | None = None) -> IngestResult:
    """Land ``path`` in ``table``; ``history`` names the timestamp column the rows were known at (a backfill)."""
    import pandas as pd

    lake.table_uri(table)  # reject a bad name before reading anything
    rules = load_rules(rules)
    data, is_text = read_file(path)
    schema, exists = _target_schema(lake, table, data, is_text, rules, key)
    key = key or rules.primary_key or (",".join(schema.primary_key) or None)
    if history is not None and (history not in schema.names or schema.column(history).type != "timestamp"):
        stamps = [c.name for c in schema.columns if c.type == "timestamp"]
        raise SchemaError(f"history={history!r} must name a timestamp column of table {table} (the time each row "
                          f"was known at); its timestamp columns are {stamps or 'none'}; nothing was written")

    # Schema-level checks: the whole file is refused, nothing is written.
    unexpected = [n for n in data.column_names if n not in schema.names]
    if unexpected:
        raise SchemaError(
            f"file {path} has unexpected column(s) {', '.join(map(repr, unexpected))} for table "
            f"{table}, whose columns are {', '.join(schema.names)}; nothing was written"
        )
    missing = [c.name for c in schema.columns if c.required and c.name not in data.column_names]
    if missing:
        raise SchemaError(f"file {path} lacks required column(s) {', '.join(map(repr, missing))} "
                          f"for table {table}; nothing was written")
    if key and key not in schema.names:
        raise SchemaError(f"key column {key!r} is not a column of table {table} ({', '.join(schema.names)})")

    raw = data.to_pandas(types_mapper=None) if is_text else None
    if is_text:
        frame, failures = _parse_text(raw, schema)
    else:
        frame = schema.conform(data, table=table).to_pandas()
        raw = frame
        failures = []
    check = rules.check(frame)
    if key:
        # a key names one row: later repeats in the same file are quarantined
        dup = frame[key].notna() & frame[key].duplicated(keep="first")
        if dup.any() and not any(c.name == key and c.unique for c in rules.columns):
            idx = dup.to_numpy().nonzero()[0]
            failures.append(pd.DataFrame({"row": idx, "rule": f"{key}.unique",
                                          "reason": [f"{key}={frame[key].iloc[i]!r} repeats an earlier row (key)"
                                                     for i in idx]}))
        nullkey = frame[key].isna().to_numpy()
        if nullkey.any():
            idx = nullkey.nonzero()[0]
            failures.append(pd.DataFrame({"row": idx, "rule": f"{key}.not_null",
                                          "reason": f"{key} is null (key)"}))
    failures = pd.concat([*failures, check], ignore_index=True) if failures else check
    failures = failures.drop_duplicates(["row", "rule"])
    # a value that did not parse is reported once, as a type failure, not also as a null
    unparsed = {(r, rule[: -len(".type")]) for r, rule in zip(failures["row"], failures["rule"])
                if rule.endswith(".type")}
    if unparsed:
        echo = [(r, rule[: -len(".not_null")]) in unparsed if rule.endswith(".not_null") else False
                for r, rule in zip(failures["row"], failures["rule"])]
        failures = failures[~pd.Series(echo, index=failures.index, dtype=bool)]

    batch_id = new_batch_id()
    quarantine_name = "quarantine." + table.split(".", 1)[1]
    bad_rows = sorted(set(failures["row"].tolist()))
    quarantine_version = None
    if bad_rows:
        grouped = failures.sort_values(["row", "rule"]).groupby("row")
        q = raw.iloc[bad_rows].astype(object).where(raw.iloc[bad_rows].notna(), None)
        q = q.apply(lambda s: s.map(lambda v: None if v is None else str(v)))
        q = q.reset_index(drop=True)
        q["_row"] = [r + 1 for r in bad_rows]
        q["_rule"] = [", ".join(grouped.get_group(r)["rule"]) for r in bad_rows]
        q["_reason"] = ["; ".join(grouped.get_group(r)["reason"]) for r in bad_rows]
        q["_batch_id"] = batch_id
        q["_source"] = str(Path(path).resolve())
        q["_quarantined_at"] = pd.Timestamp(datetime.now(timezone.utc))
        qtable = lake.table(quarantine_name)
        if not qtable.exists():
            qcols = {n: "string" for n in schema.names}
            qcols.update({"_row": "int64", "_rule": "string", "_reason": "string",
                          "_batch_id": "string", "_source": "string", "_quarantined_at": "timestamp"})
            lake.create(quarantine_name, qcols, exist_ok=True,
                        description=f"rows of {table} refused at ingest, with the rule and reason")
        # the quarantine table was shaped by the table's first schema; it keeps those columns
        known = set(qtable.schema.names)
        q = q[[c for c in q.columns if c in known]]
        quarantine_version = qtable.append(q, batch_id=batch_id).version

    good = frame.drop(index=frame.index[bad_rows]) if bad_rows else frame
    if not exists:
        lake.create(table, schema, exist_ok=True)
    target = lake.table(table)
    version = None
    mode = "upsert" if key else "append"
    if len(good):
        arrow = pa.Table.from_pandas(good.reset_index(drop=True), preserve_index=False,
                                     schema=pa.schema([schema.to_arrow().field(c) for c in good.columns]))
        if key:
            version = target.upsert(arrow, key=key, batch_id=batch_id, history=history).version
        else:
            version = target.append(arrow, batch_id=batch_id, history=history).version
    return IngestResult(table, batch_id, len(good), len(bad_rows), version, quarantine_name,
                        quarantine_version, mode,
                        {str(r): int(n) for r, n in failures.groupby("rule")["row"].nunique().items()},
                        history)
