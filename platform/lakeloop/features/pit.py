"""The point-in-time join: for each (entity, t), the newest feature row at or before t.

Feature rows are sorted by (entity, event time, known time). For every query
row a binary search inside its entity's block finds the last row with
``event_time <= t``; with known-time on, it steps back past rows committed
after ``t``; a row older than the ttl is no match. The search is a numba
kernel run in parallel over query rows; entities are matched through one
dictionary encoding of query and feature keys, so strings are hashed once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KNOWN_AT = "_known_at"
_NO_TTL = np.int64(-1)


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


_ASOF = None


def _asof():
    global _ASOF
    if _ASOF is None:
        _ASOF = _kernel()
    return _ASOF


def _entity_codes(query: pa.Table, features: pa.Table, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes per row such that equal entity keys get equal codes in both tables."""
    codes_q = np.zeros(query.num_rows, np.int64)
    codes_f = np.zeros(features.num_rows, np.int64)
    missing_q = np.zeros(query.num_rows, bool)
    for key in keys:
        fcol = features.column(key)
        qcol = query.column(key).cast(fcol.type) if query.column(key).type != fcol.type else query.column(key)
        both = pa.chunked_array(fcol.chunks + qcol.chunks, type=fcol.type)
        enc = pc.dictionary_encode(both).combine_chunks()
        idx = enc.indices.to_numpy(zero_copy_only=False)
        nulls = np.asarray(enc.is_null())
        width = np.int64(len(enc.dictionary) + 1)
        f_idx, q_idx = idx[: features.num_rows], idx[features.num_rows:]
        missing_q |= nulls[features.num_rows:]
        codes_f = codes_f * width + np.where(nulls[: features.num_rows], width - 1, f_idx)
        codes_q = codes_q * width + np.where(nulls[features.num_rows:], width - 1, q_idx)
    codes_q[missing_q] = -1
    return codes_q, codes_f


def _as_int64_us(col) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_timestamp(arr.type) and arr.type.unit != "us":
        arr = arr.cast(pa.timestamp("us", tz=arr.type.tz))
    return arr.cast(pa.int64()).to_numpy(zero_copy_only=False)


def sort_features(features: pa.Table, keys: Sequence[str], ts: str) -> pa.Table:
    """Rows in the join's order: entity keys, event time, known time, then the values (ties)."""
    rest = [c for c in features.column_names if c not in (*keys, ts, KNOWN_AT)]
    order = [(c, "ascending") for c in (*keys, ts, KNOWN_AT, *rest)]
    return features.take(pc.sort_indices(features, sort_keys=order))


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

    ``features`` must hold ``keys``, ``feature_ts``, ``_known_at`` and ``columns``;
    ``presorted`` promises it is already sorted by :func:`sort_features`' order
    (as materialization writes it); otherwise it is sorted here.
    """
    if features.num_rows == 0 or query.num_rows == 0:
        return {c: pa.nulls(query.num_rows, features.schema.field(c).type) for c in columns}
    if not presorted:
        features = sort_features(features, keys, feature_ts)
    codes_q, codes_f, f_ts, f_known = _encode(query, features, keys, feature_ts)
    if presorted and not _is_sorted(codes_f, f_ts, f_known):
        # incremental runs append files out of order: sort fully, so ties break as always
        features = sort_features(features, keys, feature_ts)
        codes_q, codes_f, f_ts, f_known = _encode(query, features, keys, feature_ts)
    if not _is_sorted(codes_f, f_ts, f_known):
        # several keys make codes that do not follow the key order; a stable sort keeps ties' order
        order = np.lexsort((f_known, f_ts, codes_f))
        codes_f, f_ts, f_known = codes_f[order], f_ts[order], f_known[order]
        features = features.take(pa.array(order))
    # entity blocks: codes are sorted, so each code's rows are contiguous
    uniq, starts = np.unique(codes_f, return_index=True)
    ends = np.append(starts[1:], len(codes_f))
    # map query codes to block numbers (codes are sparse when there are several keys)
    pos = np.searchsorted(uniq, codes_q)
    pos_clipped = np.minimum(pos, len(uniq) - 1)
    block_q = np.where((codes_q >= 0) & (uniq[pos_clipped] == codes_q), pos_clipped, -1)
    q_ts = _as_int64_us(query.column(query_ts))
    q_null = np.asarray(query.column(query_ts).is_null())
    block_q[q_null] = -1
    idx = _asof()(starts.astype(np.int64), ends.astype(np.int64), f_ts, f_known, block_q.astype(np.int64),
                  q_ts, known_time, np.int64(-1 if ttl_us is None else ttl_us))
    take = pa.array(idx, mask=idx < 0)
    return {c: features.column(c).take(take) for c in columns}


def _encode(query: pa.Table, features: pa.Table, keys: Sequence[str], ts: str):
    codes_q, codes_f = _entity_codes(query, features, keys)
    return codes_q, codes_f, _as_int64_us(features.column(ts)), _as_int64_us(features.column(KNOWN_AT))


def _is_sorted(codes: np.ndarray, ts: np.ndarray, known: np.ndarray) -> bool:
    if len(codes) < 2:
        return True
    dc, dt, dk = np.diff(codes), np.diff(ts), np.diff(known)
    return bool(np.all((dc > 0) | ((dc == 0) & ((dt > 0) | ((dt == 0) & (dk >= 0))))))
