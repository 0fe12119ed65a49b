"""Materialization: source table rows -> feature rows in ``features.<view>``, on Ray Data.

Each feature row carries the entity keys, the event time, the feature values
and ``_known_at``: when the newest source row it depends on was committed to
the lake (from the Delta change data feed). Training frames use it to keep
backfilled data out of the past.

*Full* recomputes everything from one source version. *Incremental* reads the
source's change feed since the last run: new rows of a row-level view are
transformed and appended; otherwise (aggregations, updates, deletes) the
affected entities are recomputed from their earliest changed event minus
the longest window, and their rows from that time on are replaced in one
atomic commit. Either way the table ends exactly as a full recompute would
leave it (tested).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from lakeloop.errors import DefinitionError, SchemaError
from lakeloop.features.definitions import Aggregation, FeatureView
from lakeloop.features.pit import KNOWN_AT, sort_features

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.lake import Lake, Table

_ADDS = ("insert", "update_postimage")
_REMOVES = ("update_preimage", "delete")
_CDF_META = ["_change_type", "_commit_version", "_commit_timestamp"]


@dataclass(frozen=True)
class MaterializeResult:
    view: str
    view_version: int
    mode: str  # full | incremental | noop
    source_table: str
    source_version: int
    previous_source_version: int | None
    table_version: int | None
    rows_written: int
    entities_recomputed: int | None
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def feature_schema(view: FeatureView, source_schema) -> dict:
    """Column types of ``features.<view>``: keys, event time, features, ``_known_at``."""
    cols: dict[str, str] = {}
    for key in view.join_keys:
        cols[key] = source_schema.column(key).type if key in source_schema.names else "string"
    cols[view.timestamp_field] = "timestamp"
    for f in view.features:
        cols[f.output] = f.dtype
    cols[KNOWN_AT] = "timestamp"
    return cols


# -- reading the source with known times ---------------------------------------
def read_source(table: "Table", version: int, *, since: int | None = None,
                predicate: str | None = None) -> "pd.DataFrame":
    """Source rows current at ``version`` with ``_known_at``; or, with ``since``, the changes after it.

    Known time of a row = commit time of the version that wrote its current value.
    """
    import pandas as pd

    dt = table._delta(version)
    if dt.metadata().configuration.get("delta.enableChangeDataFeed") != "true":
        raise SchemaError(
            f"source table {table.name} has no change data feed, so known times cannot be traced; "
            "create it through lakeloop (feeds are on by default) or enable delta.enableChangeDataFeed"
        )
    start = 0 if since is None else since + 1
    if start > version:
        return pd.DataFrame()
    reader = dt.load_cdf(starting_version=start, ending_version=version, predicate=predicate)
    changes = pa.table(reader)
    changes = changes.set_column(changes.schema.get_field_index("_change_type"), "_change_type",
                                 changes.column("_change_type").cast(pa.string()))
    df = changes.to_pandas()
    df["_commit_timestamp"] = pd.to_datetime(df["_commit_timestamp"], utc=True)
    if since is not None:
        return df
    return current_rows(df)


def current_rows(changes: "pd.DataFrame") -> "pd.DataFrame":
    """The rows a change feed from version 0 leaves, each with the time its value was committed."""
    data_cols = [c for c in changes.columns if c not in _CDF_META]
    adds = changes[changes["_change_type"].isin(_ADDS)]
    removes = changes[changes["_change_type"].isin(_REMOVES)]
    if removes.empty:
        out = adds[data_cols].copy()
        out[KNOWN_AT] = adds["_commit_timestamp"].to_numpy()
        return out.reset_index(drop=True)
    # multiset difference on the data columns: each removal cancels the oldest matching add
    adds = adds.sort_values("_commit_version", kind="stable")
    key = _row_keys(adds[data_cols])
    rkey = _row_keys(removes[data_cols])
    adds = adds.assign(_key=key, _n=adds.groupby(key).cumcount().to_numpy())
    removed = rkey.value_counts()
    keep = adds["_n"].to_numpy() >= adds["_key"].map(removed).fillna(0).to_numpy()
    adds = adds[keep]
    out = adds[data_cols].copy()
    out[KNOWN_AT] = adds["_commit_timestamp"].to_numpy()
    return out.reset_index(drop=True)


def _row_keys(df: "pd.DataFrame"):
    import pandas as pd

    return pd.Series(pd.util.hash_pandas_object(df, index=False).to_numpy(), index=df.index)


# -- computing feature rows -----------------------------------------------------
def compute(view: FeatureView, rows: "pd.DataFrame") -> "pd.DataFrame":
    """Feature rows for complete per-entity histories in ``rows`` (source columns + ``_known_at``)."""
    import pandas as pd

    ts, keys = view.timestamp_field, view.join_keys
    if view.transform is not None and len(rows):
        known = rows[KNOWN_AT]
        rows = view.transform(rows.drop(columns=[KNOWN_AT]).copy())
        if not isinstance(rows, pd.DataFrame) or len(rows) != len(known):
            raise DefinitionError(f"transform of view {view.name!r} must return a DataFrame with one row per input row")
        rows = rows.assign(**{KNOWN_AT: known.to_numpy()})
    needed = set(keys) | {ts} | {f.column for f in view.aggregations} | {
        f.name for f in view.features if not isinstance(f, Aggregation)}
    missing = sorted(needed - set(rows.columns))
    if missing:
        raise DefinitionError(f"view {view.name!r} needs column(s) {missing} that its source/transform lacks")
    rows = rows[rows[ts].notna()]
    for k in keys:
        rows = rows[rows[k].notna()]
    row_level = [f.name for f in view.features if not isinstance(f, Aggregation)]
    # a total order (ties broken by value), so any subset of entities computes the same rows
    rows = rows.sort_values(keys + [ts, KNOWN_AT] + row_level, kind="stable").reset_index(drop=True)
    out = rows[keys + [ts]].copy()
    for f in view.features:
        if not isinstance(f, Aggregation):
            out[f.output] = rows[f.name].astype(_pandas_dtype(f.dtype))
    if view.aggregations and len(rows):
        _aggregate(view, rows, out)
        # every row at one event time gets the aggregates (and known time) after the last of them
        last = _last_of_ties(out, keys + [ts])
        for col in [a.output for a in view.aggregations] + [KNOWN_AT]:
            out[col] = out[col].to_numpy()[last]
    else:
        out[KNOWN_AT] = rows[KNOWN_AT].to_numpy()
    return out


def _last_of_ties(df: "pd.DataFrame", cols: list[str]) -> np.ndarray:
    """For each row of a frame sorted by ``cols``, the position of the last row equal on ``cols``."""
    n = len(df)
    same_as_next = np.ones(max(n - 1, 0), bool)
    for c in cols:
        v = df[c].to_numpy()
        same_as_next &= v[1:] == v[:-1]
    is_last = np.append(~same_as_next, True)
    pos = np.where(is_last, np.arange(n), n)
    return np.minimum.accumulate(pos[::-1])[::-1]


def _aggregate(view: FeatureView, rows: "pd.DataFrame", out: "pd.DataFrame") -> None:
    """Rolling (t - window, t] aggregates per entity, evaluated at each row, into ``out``."""
    import pandas as pd

    ts, keys = view.timestamp_field, view.join_keys
    # known time of a windowed value: the newest commit among the rows inside the longest window
    frame = rows.set_index(ts)
    by_entity = [frame[k] for k in keys]
    win = f"{int(view.max_window.total_seconds())}s"
    known_us = frame[KNOWN_AT].dt.as_unit("us").astype("int64")  # microseconds stay exact in float64
    out[KNOWN_AT] = pd.to_datetime(
        known_us.groupby(by_entity, sort=False).rolling(win, closed="right").max()
        .to_numpy().astype("int64"), unit="us", utc=True)
    for a in view.aggregations:
        col = frame[a.column].astype("float64")
        r = col.groupby(by_entity, sort=False).rolling(f"{int(a.window_delta.total_seconds())}s", closed="right")
        values = getattr(r, a.function)().to_numpy()
        out[a.output] = values.astype("int64") if a.function == "count" else values


def _pandas_dtype(dtype: str):
    return {"float64": "float64", "float32": "float32", "int64": "Int64", "int32": "Int32",
            "bool": "boolean", "string": "object", "timestamp": "datetime64[ns, UTC]"}.get(dtype, "object")


def compute_on_ray(view: FeatureView, rows: "pd.DataFrame", lake: "Lake") -> "pd.DataFrame":
    """:func:`compute` in parallel on Ray Data: rows are split by entity, blocks run as tasks."""
    import pandas as pd

    if len(rows) == 0:
        return compute(view, rows)
    lake.ensure_ray()
    import ray.data

    _ship_user_code(view)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)

    keys = view.join_keys
    if view.aggregations:
        # one entity's history must stay in one block: bucket by a hash of the keys
        n_blocks = max(1, min(64, len(rows) // 50_000 + 1))
        bucket = pd.util.hash_pandas_object(rows[keys], index=False).to_numpy() % n_blocks
        parts = [rows[bucket == b] for b in range(n_blocks)]
    else:
        n_blocks = max(1, min(64, len(rows) // 200_000 + 1))
        bounds = np.linspace(0, len(rows), n_blocks + 1).astype(int)
        parts = [rows.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    ds = ray.data.from_pandas([p for p in parts if len(p)])
    result = ds.map_batches(lambda df: compute(view, df), batch_format="pandas", batch_size=None,
                            num_cpus=0.5, zero_copy_batch=False)
    frames = [b for b in result.iter_batches(batch_format="pandas", batch_size=None)]
    return pd.concat(frames, ignore_index=True) if frames else compute(view, rows.iloc[:0])


def _ship_user_code(view: FeatureView) -> None:
    """Send the transform's module to Ray workers by value when workers could not import it."""
    import sys

    from ray import cloudpickle

    module = getattr(view.transform, "__module__", None)
    if module in (None, "__main__") or module.split(".")[0] == "lakeloop":
        return
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", "") or ""
    if mod is not None and "site-packages" not in path:
        cloudpickle.register_pickle_by_value(mod)


def to_feature_arrow(view: FeatureView, df: "pd.DataFrame", schema) -> pa.Table:
    """Feature rows in the table's types, sorted for the point-in-time join."""
    arrow = schema.conform(pa.Table.from_pandas(df, preserve_index=False), table=view.table)
    return sort_features(arrow, view.join_keys, view.timestamp_field)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
