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
through one dictionary encoding of the feature keys, which query chunks reuse
(:class:`FeatureIndex`), so a large frame can be split across Ray Data blocks.
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


def _kernel():
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def asof(starts, ends, f_ts, f_known, q_code, q_ts, use_known, ttl):  # pragma: no cover - jitted
        n = q_code.shape[0]
        out = np.full(n, -1, np.int64)
        n_blocks = starts.shape[0]
        for i in prange(n):
            c = q_code[i]
            if c < 0 or c >= n_blocks:
                continue
            lo = starts[c]
            hi = ends[c]
            t = q_ts[i]
            # last index in [lo, hi) with f_ts <= t
            a, b = lo, hi
            while a < b:
                m = (a + b) >> 1
                if f_ts[m] <= t:
                    a = m + 1
                else:
                    b = m
            j = a - 1
            if use_known:
                while j >= lo and f_known[j] > t:
                    j -= 1
            if j >= lo and (ttl < 0 or t - f_ts[j] <= ttl):
                out[i] = j
        return out

    return asof


def _bitemporal_kernel():
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def asof_known(starts, ends, f_ts, f_known, f_until, q_code, q_ts, ttl):  # pragma: no cover - jitted
        n = q_code.shape[0]
        out = np.full(n, -1, np.int64)
        lost = np.zeros(n, np.bool_)  # a row by event time alone, but none known at t
        n_blocks = starts.shape[0]
        for i in prange(n):
            c = q_code[i]
            if c < 0 or c >= n_blocks:
                continue
            lo = starts[c]
            hi = ends[c]
            t = q_ts[i]
            a, b = lo, hi
            while a < b:
                m = (a + b) >> 1
                if f_ts[m] <= t:
                    a = m + 1
                else:
                    b = m
            j = a - 1
            by_time = j >= lo and (ttl < 0 or t - f_ts[j] <= ttl)
            # the last version the lake held at t: known from at or before t, not yet superseded
            while j >= lo and (f_known[j] > t or f_until[j] <= t):
                j -= 1
            if j >= lo and (ttl < 0 or t - f_ts[j] <= ttl):
                out[i] = j
            elif by_time:
                lost[i] = True
        return out, lost

    return asof_known


_ASOF = None
_ASOF_KNOWN = None


def _asof():
    global _ASOF
    if _ASOF is None:
        _ASOF = _kernel()
    return _ASOF


def _asof_known():
    global _ASOF_KNOWN
    if _ASOF_KNOWN is None:
        _ASOF_KNOWN = _bitemporal_kernel()
    return _ASOF_KNOWN


def _feature_codes(features: pa.Table, keys: Sequence[str]) -> tuple[np.ndarray, list[pa.Array]]:
    """Integer entity codes of the feature rows, and each key's dictionary (to code queries alike)."""
    codes = np.zeros(features.num_rows, np.int64)
    dictionaries = []
    for key in keys:
        enc = pc.dictionary_encode(features.column(key)).combine_chunks()
        width = np.int64(len(enc.dictionary) + 1)
        idx = enc.indices.to_numpy(zero_copy_only=False)
        codes = codes * width + np.where(np.asarray(enc.is_null()), width - 1, idx)
        dictionaries.append(enc.dictionary)
    return codes, dictionaries


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
        if not presorted:
            features = sort_features(features, keys, ts)
        codes, dictionaries = _feature_codes(features, keys)
        f_ts, f_known = _as_int64_us(features.column(ts)), _as_int64_us(features.column(KNOWN_AT))
        if presorted and not _is_sorted(codes, f_ts, f_known):
            # incremental runs append files out of order: sort fully, so ties break as always
            features = sort_features(features, keys, ts)
            codes, dictionaries = _feature_codes(features, keys)
            f_ts, f_known = _as_int64_us(features.column(ts)), _as_int64_us(features.column(KNOWN_AT))
        if not _is_sorted(codes, f_ts, f_known):
            # several keys make codes that do not follow the key order; a stable sort keeps ties' order
            order = np.lexsort((f_known, f_ts, codes))
            codes, f_ts, f_known = codes[order], f_ts[order], f_known[order]
            features = features.take(pa.array(order))
        self.dictionaries = dictionaries
        self.f_ts, self.f_known = f_ts, f_known
        self.f_until = None
        if known_time and KNOWN_UNTIL in features.column_names:
            until = features.column(KNOWN_UNTIL)
            if until.null_count < len(until):
                self.f_until = _as_int64_us(until, null=FOREVER)
        # entity blocks: codes are sorted, so each code's rows are contiguous
        self.uniq, starts = np.unique(codes, return_index=True)
        self.starts = starts.astype(np.int64)
        self.ends = np.append(starts[1:], len(codes)).astype(np.int64)
        self.values = features.select(self.columns)

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
        take = pa.array(idx, mask=idx < 0)
        return {c: self.values.column(c).take(take) for c in self.columns}


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
    ``presorted`` says it is probably sorted by :func:`sort_features`' order (as
    materialization writes it; checked); otherwise it is sorted here.
    """
    index = FeatureIndex(features, keys=keys, ts=feature_ts, columns=columns, presorted=presorted,
                         known_time=known_time)
    return index.lookup(query, query_ts=query_ts, ttl_us=ttl_us, known_time=known_time)


def _is_sorted(codes: np.ndarray, ts: np.ndarray, known: np.ndarray) -> bool:
    if len(codes) < 2:
        return True
    dc, dt, dk = np.diff(codes), np.diff(ts), np.diff(known)
    return bool(np.all((dc > 0) | ((dc == 0) & ((dt > 0) | ((dt == 0) & (dk >= 0))))))
