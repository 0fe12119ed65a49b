"""The point-in-time join: for each (entity, t), the newest feature row at or before t.

Feature rows are bitemporal: each version carries ``_known_at`` (when the
lake first held it) and ``_known_until`` (when a later commit superseded or
removed it; null while current). Rows are sorted by (entity, event time,
known time). For every query row a binary search inside its entity's block
finds the last row with ``event_time <= t``; with known-time on, it steps
back to the last version the lake held at ``t`` (``_known_at <= t <
_known_until``); without it only current versions take part. A row older
than the ttl is no match. The search is a numba
kernel run in parallel over query rows; entity keys become integer codes
through one dictionary encoding of the feature keys (an integer key over a
compact range is its own code, no hashing), which query chunks reuse
(:class:`FeatureIndex`), so a large frame can be split across Ray Data blocks.

Rows that do not come sorted (materialization writes them sorted) are put in
order without one big multi-key sort: a counting sort by entity code, then each
entity's few rows sorted by time, in parallel (``asof.block_order``); only the
matched rows' values are taken, never a sorted copy of the whole table.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KNOWN_AT = "_known_at"
KNOWN_UNTIL = "_known_until"
_NO_TTL = np.int64(-1)
FOREVER = np.iinfo(np.int64).max  # the known-until of a current version


def _asof():
    from lakeloop.features.asof import asof

    return asof


def _asof_known():
    from lakeloop.features.asof import asof_known

    return asof_known


def _feature_codes(features: pa.Table, keys: Sequence[str]) -> tuple[np.ndarray, list[pa.Array]]:
    """Integer entity codes of the feature rows, and each key's dictionary (to code queries alike)."""
    if len(keys) == 1:
        dense = _range_codes(features.column(keys[0]))
        if dense is not None:
            return dense
    codes = np.zeros(features.num_rows, np.int64)
    dictionaries = []
    for key in keys:
        enc = pc.dictionary_encode(features.column(key)).combine_chunks()
        width = np.int64(len(enc.dictionary) + 1)
        idx = enc.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        codes = codes * width + np.where(np.asarray(enc.is_null()), width - 1, idx)
        dictionaries.append(enc.dictionary)
    return codes, dictionaries


def _range_codes(col: pa.ChunkedArray) -> tuple[np.ndarray, list[pa.Array]] | None:
    """One integer key without nulls over a range at most ~2x its rows: ``key - min`` is the code
    (no hashing), the dictionary is every value of the range. None when that does not fit."""
    if not pa.types.is_integer(col.type) or col.null_count or len(col) == 0:
        return None
    bounds = pc.min_max(col)
    lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
    if hi - lo + 1 > 2 * len(col) + 1024:
        return None
    values = col.combine_chunks().to_numpy().astype(np.int64)
    dictionary = pa.array(np.arange(lo, hi + 1, dtype=np.int64)).cast(col.type)
    return values - np.int64(lo), [dictionary]


def _query_codes(query: pa.Table, keys: Sequence[str], dictionaries: list[pa.Array]) -> np.ndarray:
    """Codes of the query rows in the features' coding; -1 for a key the features never saw."""
    codes = np.zeros(query.num_rows, np.int64)
    missing = np.zeros(query.num_rows, bool)
    for key, dictionary in zip(keys, dictionaries):
        col = query.column(key)
        if col.type != dictionary.type:
            col = col.cast(dictionary.type)
        idx = pc.index_in(col, value_set=dictionary)
        missing |= np.asarray(idx.is_null())
        codes = codes * np.int64(len(dictionary) + 1) + idx.fill_null(0).to_numpy(zero_copy_only=False)
    codes[missing] = -1
    return codes


def _as_int64_us(col, null: int | None = None) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_timestamp(arr.type) and arr.type.unit != "us":
        arr = arr.cast(pa.timestamp("us", tz=arr.type.tz))
    ints = arr.cast(pa.int64())
    if null is not None and ints.null_count:
        ints = ints.fill_null(np.int64(null))
    return ints.to_numpy(zero_copy_only=False)


def sort_features(features: pa.Table, keys: Sequence[str], ts: str) -> pa.Table:
    """Rows in the join's order: entity keys, event time, known time, then the values (ties)."""
    rest = [c for c in features.column_names if c not in (*keys, ts, KNOWN_AT, KNOWN_UNTIL)]
    tail = [KNOWN_UNTIL] if KNOWN_UNTIL in features.column_names else []
    order = [(c, "ascending") for c in (*keys, ts, KNOWN_AT, *rest, *tail)]
    return features.take(pc.sort_indices(features, sort_keys=order))


def current_versions(features: pa.Table) -> pa.Table:
    """The versions nothing has superseded (all rows of a table without ``_known_until``)."""
    if KNOWN_UNTIL not in features.column_names:
        return features
    until = features.column(KNOWN_UNTIL)
    if until.null_count == len(until):
        return features
    return features.filter(pc.is_null(until))


class FeatureIndex:
    """Feature rows sorted for the join, with their entity blocks: build once, look up many chunks.

    ``known_time=True`` keeps every version (bitemporal lookups); ``False``
    keeps only the current ones (plain event-time lookups, as fast as before
    versions existed). Plain arrays, so it goes into Ray's object store as it is.
    """

    def __init__(self, features: pa.Table, *, keys: Sequence[str], ts: str, columns: Sequence[str],
                 presorted: bool = False, known_time: bool = True):
        self.keys, self.columns = list(keys), list(columns)
        self.known_time = known_time
        self.types = {c: features.schema.field(c).type for c in columns}
        if not known_time:
            features = current_versions(features)
        if features.num_rows == 0:
            self.values = None
            return
        codes, dictionaries = _feature_codes(features, keys)
        if len(keys) == 1:  # dictionary indices are dense already (the null key last)
            self.uniq = np.arange(len(dictionaries[0]) + 1, dtype=np.int64)
        else:  # several keys: mixed-radix codes are sparse, number the ones present
            self.uniq, codes = np.unique(codes, return_inverse=True)
            codes = codes.astype(np.int64)
        f_ts, f_known = _as_int64_us(features.column(ts)), _as_int64_us(features.column(KNOWN_AT))
        until = None
        if known_time and KNOWN_UNTIL in features.column_names:
            col = features.column(KNOWN_UNTIL)
            if col.null_count < len(col):
                until = _as_int64_us(col, null=FOREVER)
        n_blocks = len(self.uniq)
        if _is_sorted(codes, f_ts, f_known):  # as materialization writes it: no reordering at all
            perm = None
            bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=n_blocks))]).astype(np.int64)
        else:
            perm, s_ts, s_known, bounds, ties = _block_order()(codes, n_blocks, f_ts, f_known)
            if ties and features.num_columns > len(keys) + 2:
                perm = _tie_broken_order(features, keys, ts, codes)
                s_ts, s_known = f_ts[perm], f_known[perm]
            f_ts, f_known = s_ts, s_known
        self.dictionaries = dictionaries
        self.perm = perm  # sorted position -> row of ``values`` (None: the rows came sorted)
        self.f_ts, self.f_known = f_ts, f_known
        self.f_until = until if until is None or perm is None else until[perm]
        self.starts, self.ends = bounds[:-1].copy(), bounds[1:].copy()
        self.values = features.select(self.columns)  # in its own order: only the matched rows are taken

    def lookup(self, query: pa.Table, *, query_ts: str, ttl_us: int | None = None,
               known_time: bool | None = None, lost: np.ndarray | None = None) -> dict[str, pa.Array]:
        """Feature ``columns`` for each query row (nulls where no row qualifies).

        ``known_time`` defaults to the index's; an index of current versions
        cannot answer known-time lookups. With known time, ``lost`` (a bool
        array, one per query row) is or-ed with "a row by event time exists,
        but none the lake held at t".
        """
        known_time = self.known_time if known_time is None else known_time
        if known_time and not self.known_time:
            raise ValueError("this FeatureIndex holds only current versions; build it with known_time=True")
        if self.values is None or query.num_rows == 0:
            return {c: pa.nulls(query.num_rows, self.types[c]) for c in self.columns}
        codes_q = _query_codes(query, self.keys, self.dictionaries)
        # map query codes to block numbers (codes are sparse when there are several keys)
        pos = np.minimum(np.searchsorted(self.uniq, codes_q), len(self.uniq) - 1)
        block_q = np.where((codes_q >= 0) & (self.uniq[pos] == codes_q), pos, -1)
        block_q[np.asarray(query.column(query_ts).is_null())] = -1
        ttl = np.int64(-1 if ttl_us is None else ttl_us)
        q_ts = _as_int64_us(query.column(query_ts))
        if known_time:
            until = self.f_until if self.f_until is not None else np.full(len(self.f_ts), FOREVER, np.int64)
            idx, missed = _asof_known()(self.starts, self.ends, self.f_ts, self.f_known, until,
                                        block_q.astype(np.int64), q_ts, ttl)
            if lost is not None:
                lost |= missed
        else:
            idx = _asof()(self.starts, self.ends, self.f_ts, self.f_known, block_q.astype(np.int64), q_ts, False, ttl)
        missing = idx < 0
        idx = np.where(missing, 0, idx) if self.perm is None else self.perm[np.where(missing, 0, idx)]
        return {c: _take(self.values.column(c), idx, missing) for c in self.columns}


def asof_join(
    query: pa.Table,
    features: pa.Table,
    *,
    keys: Sequence[str],
    query_ts: str,
    feature_ts: str,
    columns: Sequence[str],
    ttl_us: int | None = None,
    known_time: bool = True,
    presorted: bool = False,
) -> dict[str, pa.Array]:
    """Feature ``columns`` for each query row (nulls where no row qualifies).

    ``features`` must hold ``keys``, ``feature_ts``, ``_known_at`` and ``columns``
    (and ``_known_until`` when it holds superseded versions);
    ``presorted`` is kept for callers that know the rows come in :func:`sort_features`'
    order; the order is always checked (cheaply) and the rows ordered here when needed.
    """
    index = FeatureIndex(features, keys=keys, ts=feature_ts, columns=columns, presorted=presorted,
                         known_time=known_time)
    return index.lookup(query, query_ts=query_ts, ttl_us=ttl_us, known_time=known_time)


def _take(col: pa.ChunkedArray, idx: np.ndarray, missing: np.ndarray) -> pa.ChunkedArray:
    """``col`` at rows ``idx``, null where ``missing``: numpy's take for one chunk of plain numbers
    (several times faster than Arrow's take with a null mask), Arrow's otherwise."""
    t = col.type
    if col.num_chunks == 1 and col.null_count == 0 and (
            pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_timestamp(t)):
        values = col.chunk(0).to_numpy(zero_copy_only=True)
        return pa.chunked_array([pa.array(values.take(idx), type=t, mask=missing if missing.any() else None)])
    return col.take(pa.array(idx, mask=missing))


def _block_order():
    from lakeloop.features.asof import block_order

    return block_order


def _tie_broken_order(features: pa.Table, keys: Sequence[str], ts: str, codes: np.ndarray) -> np.ndarray:
    """Rows equal on (entity, event time, known time): :func:`sort_features`' full order breaks
    the tie (by the values, as materialization writes them), then rows are grouped by code."""
    rest = [c for c in features.column_names if c not in (*keys, ts, KNOWN_AT, KNOWN_UNTIL)]
    tail = [KNOWN_UNTIL] if KNOWN_UNTIL in features.column_names else []
    order = [(c, "ascending") for c in (*keys, ts, KNOWN_AT, *rest, *tail)]
    perm = pc.sort_indices(features, sort_keys=order).to_numpy().astype(np.int64)
    return perm[np.argsort(codes[perm], kind="stable")]


def _is_sorted(codes: np.ndarray, ts: np.ndarray, known: np.ndarray) -> bool:
    from lakeloop.features.asof import is_sorted

    return len(codes) < 2 or bool(is_sorted(codes, ts, known))
