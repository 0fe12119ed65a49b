"""Materialization: source table rows -> bitemporal feature rows in ``features.<view>``, on Ray Data.

Each feature row carries the entity keys, the event time, the feature values
and two known times: ``_known_at``, when the lake first held that value, and
``_known_until``, when a later commit superseded or removed it (null while it
is current). Both come from the source's Delta change data feed: every source
row version is known from the commit that added it until the commit that
removed it (a delete, or the pre-image of an update). A row of a commit
declared *history* (``append(..., history="event_time")``, also at ingest) is
known from its own event time instead. An aggregate changes whenever a row
inside its window comes or goes, so a feature row gets one version per such
change; the versions of the past stay, which is what lets a training frame
answer "what did the lake hold at time L" after deletes, upserts and
backfills. Storage: one extra row per feature value that a later commit
changed; append-only sources in event-time order add none.

*Full* recomputes everything from the whole change feed up to one source
version. *Incremental* reads the changes since the last run: new rows of a
row-level view are transformed and appended; otherwise the affected entities
are recomputed from their earliest changed event minus the longest window,
and all their versions from that time on are replaced in one atomic commit.
Either way the table ends exactly as a full recompute would leave it (tested).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from lakeloop.errors import DefinitionError, SchemaError
from lakeloop.features.definitions import Aggregation, FeatureView
from lakeloop.features.pit import FOREVER, KNOWN_AT, KNOWN_UNTIL, sort_features

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.lake import Lake, Table

_ADDS = ("insert", "update_postimage")
_REMOVES = ("update_preimage", "delete")
_CDF_META = ["_change_type", "_commit_version", "_commit_timestamp"]
_FUNCTIONS = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4}


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
    """Column types of ``features.<view>``: keys, event time, features, ``_known_at``, ``_known_until``."""
    view = view.against_source({c.name: c.type for c in source_schema.columns})  # dtypes left to the source
    cols: dict[str, str] = {}
    for key in view.join_keys:
        cols[key] = source_schema.column(key).type if key in source_schema.names else "string"
    cols[view.timestamp_field] = "timestamp"
    for f in view.features:
        cols[f.output] = f.dtype
    cols[KNOWN_AT] = "timestamp"
    cols[KNOWN_UNTIL] = "timestamp"
    return cols


# -- reading the source with known times ---------------------------------------
def history_commits(table: "Table", version: int) -> dict[int, str]:
    """Versions up to ``version`` declared history, with the event-time column their rows were known at."""
    from lakeloop.lake.table import HISTORY_KEY

    out = {}
    # the latest log: delta-rs numbers the history of a time-travelled table from that version down,
    # newer commits included, so an old version's own history() mislabels them
    for h in table._delta().history():
        column = h.get(HISTORY_KEY)
        if column and h["version"] <= version:
            out[int(h["version"])] = column
    return out


def read_source(table: "Table", version: int, *, since: int | None = None,
                predicate: str | None = None) -> "pd.DataFrame":
    """Every source row version up to ``version`` with its known times; or, with ``since``, the changes after it.

    A version is known from the commit that added it (a history row: from its
    event time, if earlier) until the commit that removed it (``_known_until``
    null while it is current).
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
    return row_versions(df, history_commits(table, version))


def row_versions(changes: "pd.DataFrame", history: dict[int, str] | None = None) -> "pd.DataFrame":
    """The row versions a change feed from version 0 describes, each with ``_known_at`` and ``_known_until``.

    A removal closes the oldest open add of an identical row; an add and a
    removal of an identical row in one commit (an update that changed
    nothing) cancel, so the row stays one version.
    """
    import pandas as pd

    data_cols = [c for c in changes.columns if c not in _CDF_META]
    is_add = changes["_change_type"].isin(_ADDS).to_numpy()
    is_remove = changes["_change_type"].isin(_REMOVES).to_numpy()
    events = changes[is_add | is_remove].assign(_add=is_add[is_add | is_remove])
    events = events.assign(_key=_row_keys(events[data_cols]))
    # cancel identical add/remove pairs within a commit
    events = events.sort_values(["_commit_version"], kind="stable")
    rank = events.groupby(["_key", "_commit_version", "_add"], sort=False).cumcount().to_numpy()
    per_commit = events.groupby(["_key", "_commit_version"], sort=False)["_add"]
    n_add = per_commit.transform("sum").to_numpy().astype(np.int64)
    n_remove = per_commit.transform("size").to_numpy() - n_add
    events = events[rank >= np.minimum(n_add, n_remove)]
    adds = events[events["_add"].to_numpy()]
    removes = events[~events["_add"].to_numpy()]
    known = pd.to_datetime(adds["_commit_timestamp"], utc=True).dt.as_unit("us")
    if history:
        # rows inserted by a commit declared history were known at their event time (if earlier)
        for v, col in history.items():
            if col not in adds.columns:
                continue
            sel = (adds["_commit_version"].to_numpy() == v) & (adds["_change_type"].to_numpy() == "insert")
            if sel.any():
                stamped = pd.to_datetime(adds.loc[sel, col], utc=True).dt.as_unit("us")
                known = known.copy()
                known.loc[sel] = stamped.where(stamped.notna() & (stamped < known.loc[sel]), known.loc[sel])
    out = adds[data_cols].copy()
    out[KNOWN_AT] = pd.to_datetime(known, utc=True).to_numpy()
    out[KNOWN_UNTIL] = pd.Series(pd.NaT, index=out.index, dtype=out[KNOWN_AT].dtype)
    if len(removes):
        # the n-th removal of a row closes its n-th add (in commit order)
        add_n = adds.groupby("_key", sort=False).cumcount()
        rem = removes.assign(_n=removes.groupby("_key", sort=False).cumcount().to_numpy())
        closing = dict(zip(zip(rem["_key"].to_numpy(), rem["_n"].to_numpy()), rem["_commit_timestamp"]))
        until = [closing.get(k) for k in zip(adds["_key"].to_numpy(), add_n.to_numpy())]
        out[KNOWN_UNTIL] = pd.to_datetime(pd.Series(until, index=out.index, dtype=object), utc=True)
    return out.reset_index(drop=True)


def current_at(versions: "pd.DataFrame", when=None) -> "pd.DataFrame":
    """The versions the lake held at ``when`` (default: the current ones), without the known-time columns."""
    import pandas as pd

    if when is None:
        held = versions[KNOWN_UNTIL].isna()
    else:
        when = pd.Timestamp(when)
        held = (versions[KNOWN_AT] <= when) & (versions[KNOWN_UNTIL].isna() | (versions[KNOWN_UNTIL] > when))
    return versions[held.to_numpy()]


def _row_keys(df: "pd.DataFrame"):
    import pandas as pd

    return pd.Series(pd.util.hash_pandas_object(df, index=False).to_numpy(), index=df.index)


# -- computing feature rows -----------------------------------------------------
def compute(view: FeatureView, rows: "pd.DataFrame") -> "pd.DataFrame":
    """Bitemporal feature rows for complete per-entity histories in ``rows``.

    ``rows`` are source row versions with ``_known_at`` (and ``_known_until``;
    absent or null: current). A row-level view gives one feature row per
    version. A windowed aggregate at event time ``t`` covers the entity's
    events in ``(t - window, t]`` that the lake held; it gets a new version at
    every known time inside its window, so each version says what the lake
    would have computed from its content at that time.
    """
    import pandas as pd

    ts, keys = view.timestamp_field, view.join_keys
    if KNOWN_UNTIL not in rows.columns:
        rows = rows.assign(**{KNOWN_UNTIL: pd.Series(pd.NaT, index=rows.index, dtype="datetime64[ns, UTC]")})
    if view.transform is not None and len(rows):
        known, until = rows[KNOWN_AT], rows[KNOWN_UNTIL]
        rows = view.transform(rows.drop(columns=[KNOWN_AT, KNOWN_UNTIL]).copy())
        if not isinstance(rows, pd.DataFrame) or len(rows) != len(known):
            raise DefinitionError(f"transform of view {view.name!r} must return a DataFrame with one row per input row")
        rows = rows.assign(**{KNOWN_AT: known.to_numpy(), KNOWN_UNTIL: until.to_numpy()})
    needed = set(keys) | {ts} | {f.column for f in view.aggregations} | {
        f.name for f in view.features if not isinstance(f, Aggregation)}
    missing = sorted(needed - set(rows.columns))
    if missing:
        raise DefinitionError(f"view {view.name!r} needs column(s) {missing} that its source/transform lacks")
    rows = rows[rows[ts].notna()]
    for k in keys:
        rows = rows[rows[k].notna()]
    row_level = [f.name for f in view.features if not isinstance(f, Aggregation)]
    agg_cols = [c for c in dict.fromkeys(a.column for a in view.aggregations) if c not in row_level]
    # a total order (ties broken by value, the known-until last), so any subset of entities, and any
    # snapshot of the source, computes the same rows and sums its windows in the same order
    rows = rows.sort_values(keys + [ts, KNOWN_AT] + row_level + agg_cols + [KNOWN_UNTIL],
                            kind="stable").reset_index(drop=True)
    if not view.aggregations or not len(rows):
        out = rows[keys + [ts]].copy()
        for f in view.features:
            if not isinstance(f, Aggregation):
                out[f.output] = _typed(rows[f.name], f.dtype)
            else:
                out[f.output] = pd.Series([], dtype="int64" if f.function == "count" else "float64")
        out[KNOWN_AT] = rows[KNOWN_AT].to_numpy()
        out[KNOWN_UNTIL] = rows[KNOWN_UNTIL].to_numpy()
        return out
    src, start, end, values = _aggregate(view, rows)
    out = rows[keys + [ts]].iloc[src].reset_index(drop=True)
    picked = rows.iloc[src].reset_index(drop=True)
    for i, f in enumerate(view.features):
        if not isinstance(f, Aggregation):
            out[f.output] = _typed(picked[f.name], f.dtype).to_numpy()
    for j, a in enumerate(view.aggregations):
        out[a.output] = values[:, j].astype("int64") if a.function == "count" else values[:, j]
    out[KNOWN_AT] = pd.Series(start.astype("datetime64[us]")).dt.tz_localize("UTC")
    until = end.astype("datetime64[us]")
    until[end == FOREVER] = np.datetime64("NaT")
    out[KNOWN_UNTIL] = pd.Series(until).dt.tz_localize("UTC")
    return out


def _us(col) -> np.ndarray:
    import pandas as pd

    return pd.to_datetime(col, utc=True).dt.as_unit("us").astype("int64").to_numpy()


def _aggregate(view: FeatureView, rows: "pd.DataFrame"):
    """Versions of every row's aggregates: (source row, known from, known until, values)."""
    import pandas as pd

    ts, keys = view.timestamp_field, view.join_keys
    n = len(rows)
    same_as_prev = np.ones(max(n - 1, 0), bool)
    for k in keys:
        v = rows[k].to_numpy()
        same_as_prev &= v[1:] == v[:-1]
    group = np.zeros(n, np.int64)
    if n:
        group[1:] = np.cumsum(~same_as_prev)
    until = pd.to_datetime(rows[KNOWN_UNTIL], utc=True)
    ku = np.where(until.isna().to_numpy(), FOREVER, until.dt.as_unit("us").astype("int64").to_numpy())
    aggs = view.aggregations
    vals = np.column_stack([rows[a.column].astype("float64").to_numpy() for a in aggs])
    wins = np.array([int(a.window_delta.total_seconds() * 1_000_000) for a in aggs], np.int64)
    funcs = np.array([_FUNCTIONS[a.function] for a in aggs], np.int64)
    return _versions()(group, _us(rows[ts]), _us(rows[KNOWN_AT]), ku, vals, wins, funcs)


def _versions_kernel():
    from numba import njit

    @njit(cache=True)
    def windows(group, t, wmax):  # pragma: no cover - jitted
        n = t.shape[0]
        lo = np.empty(n, np.int64)
        hi = np.empty(n, np.int64)
        p = 0
        for i in range(n):
            if i == 0 or group[i] != group[i - 1]:
                p = i
            while t[p] <= t[i] - wmax:
                p += 1
            lo[i] = p
        for i in range(n - 1, -1, -1):
            if i == n - 1 or group[i + 1] != group[i] or t[i + 1] != t[i]:
                hi[i] = i
            else:
                hi[i] = hi[i + 1]
        return lo, hi

    @njit(cache=True)
    def points(i, lo, hi, kf, ku, buf):  # pragma: no cover - jitted
        """Sorted distinct known times inside row i's window that fall inside its life, after kf[i]."""
        m = 0
        for j in range(lo, hi + 1):
            if kf[j] > kf[i] and kf[j] < ku[i]:
                buf[m] = kf[j]
                m += 1
            if ku[j] != 9223372036854775807 and ku[j] > kf[i] and ku[j] < ku[i]:
                buf[m] = ku[j]
                m += 1
        if m == 0:
            return 0
        s = np.sort(buf[:m])
        k = 0
        for x in range(m):
            if x == 0 or s[x] != s[x - 1]:
                buf[k] = s[x]
                k += 1
        return k

    @njit(cache=True)
    def versions(group, t, kf, ku, vals, wins, funcs):  # pragma: no cover - jitted
        n = t.shape[0]
        n_aggs = wins.shape[0]
        wmax = wins.max()
        lo, hi = windows(group, t, wmax)
        width = 1
        for i in range(n):
            width = max(width, 2 * (hi[i] - lo[i] + 1))
        buf = np.empty(width, np.int64)
        counts = np.empty(n, np.int64)
        total = 0
        for i in range(n):
            counts[i] = 1 + points(i, lo[i], hi[i], kf, ku, buf)
            total += counts[i]
        src = np.empty(total, np.int64)
        start = np.empty(total, np.int64)
        end = np.empty(total, np.int64)
        out = np.empty((total, n_aggs), np.float64)
        o = 0
        for i in range(n):
            k = points(i, lo[i], hi[i], kf, ku, buf)
            for p in range(k + 1):
                at = kf[i] if p == 0 else buf[p - 1]
                src[o] = i
                start[o] = at
                end[o] = ku[i] if p == k else buf[p]
                for a in range(n_aggs):
                    cnt = 0
                    acc = 0.0
                    best = np.nan
                    for j in range(lo[i], hi[i] + 1):
                        if t[j] <= t[i] - wins[a] or kf[j] > at or ku[j] <= at:
                            continue
                        v = vals[j, a]
                        if np.isnan(v):
                            continue
                        cnt += 1
                        acc += v
                        if funcs[a] == 3:
                            if np.isnan(best) or v < best:
                                best = v
                        elif funcs[a] == 4:
                            if np.isnan(best) or v > best:
                                best = v
                    f = funcs[a]
                    if f == 0:
                        out[o, a] = cnt
                    elif cnt == 0:
                        out[o, a] = np.nan
                    elif f == 1:
                        out[o, a] = acc
                    elif f == 2:
                        out[o, a] = acc / cnt
                    else:
                        out[o, a] = best
                o += 1
        return src, start, end, out

    return versions


_VERSIONS = None


def _versions():
    global _VERSIONS
    if _VERSIONS is None:
        _VERSIONS = _versions_kernel()
    return _VERSIONS


def _typed(values: "pd.Series", dtype: str | None) -> "pd.Series":
    """A row-level feature's values in its dtype (None: left to the source column, kept as read)."""
    return values if dtype is None else values.astype(_pandas_dtype(dtype))


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
    ds = _from_pandas([p for p in parts if len(p)])
    result = ds.map_batches(lambda df: compute(view, df), batch_format="pandas", batch_size=None,
                            num_cpus=0.5, zero_copy_batch=False)
    frames = [b for b in result.iter_batches(batch_format="pandas", batch_size=None)]
    return pd.concat(frames, ignore_index=True) if frames else compute(view, rows.iloc[:0])


def _from_pandas(parts: list) -> "ray.data.Dataset":
    """``ray.data.from_pandas(parts)``, its blocks' metadata computed here instead of in one remote task per
    block. Ray Data gives those tasks a whole CPU, so on a cluster whose nodes each hold a fraction of a
    CPU for actors (replicas, the monitor: a demo on three 1-CPU nodes) they never started and the
    materialization waited forever; the map tasks below ask for half a CPU. (Ray 2.60's own code, pinned.)"""
    import ray
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators.from_operators import FromPandas
    from ray.data._internal.stats import DatasetStats
    from ray.data._internal.util import get_table_block_metadata_schema
    from ray.data.context import DataContext
    from ray.data.dataset import MaterializedDataset
    from ray.data.util.data_batch_conversion import _cast_ndarray_columns_to_tensor_extension

    context = DataContext.get_current()
    if not context.enable_pandas_block:  # Ray converts to Arrow blocks in remote tasks then: its own path
        return ray.data.from_pandas(parts)
    if context.enable_tensor_extension_casting:
        parts = [_cast_ndarray_columns_to_tensor_extension(df.copy()) for df in parts]
    refs = [ray.put(df) for df in parts]
    metadata = [get_table_block_metadata_schema(df) for df in parts]
    stats = DatasetStats(metadata={"FromPandas": metadata}, parent=None)
    ctx = context.copy()
    return MaterializedDataset(LogicalPlan(FromPandas(refs, metadata), ctx), ctx, stats)


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
