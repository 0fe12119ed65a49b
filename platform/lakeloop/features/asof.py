"""The point-in-time join's numba kernels (imported on first join: numba is slow to import).

Module-level functions, so numba's on-disk cache (``cache=True``) finds them again in a new
process: a first join in a fresh process loads machine code instead of compiling it (~5 s here).
Both kernels share one jitted binary search.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always", cache=True)
def last_at_or_before(f_ts, lo, hi, t):  # pragma: no cover - jitted
    """The last index in [lo, hi) whose event time is <= t (lo - 1 when none is)."""
    a, b = lo, hi
    while a < b:
        m = (a + b) >> 1
        if f_ts[m] <= t:
            a = m + 1
        else:
            b = m
    return a - 1


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
        t = q_ts[i]
        j = last_at_or_before(f_ts, lo, ends[c], t)
        if use_known:
            while j >= lo and f_known[j] > t:
                j -= 1
        if j >= lo and (ttl < 0 or t - f_ts[j] <= ttl):
            out[i] = j
    return out


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
        t = q_ts[i]
        j = last_at_or_before(f_ts, lo, ends[c], t)
        by_time = j >= lo and (ttl < 0 or t - f_ts[j] <= ttl)
        # the last version the lake held at t: known from at or before t, not yet superseded
        while j >= lo and (f_known[j] > t or f_until[j] <= t):
            j -= 1
        if j >= lo and (ttl < 0 or t - f_ts[j] <= ttl):
            out[i] = j
        elif by_time:
            lost[i] = True
    return out, lost


@njit(cache=True)
def is_sorted(codes, ts, known):  # pragma: no cover - jitted
    """Whether rows are ordered by (code, ts, known); stops at the first row out of order."""
    for i in range(1, codes.shape[0]):
        if codes[i] != codes[i - 1]:
            if codes[i] < codes[i - 1]:
                return False
        elif ts[i] != ts[i - 1]:
            if ts[i] < ts[i - 1]:
                return False
        elif known[i] < known[i - 1]:
            return False
    return True


@njit(parallel=True, cache=True)
def block_order(codes, n_blocks, ts, known):  # pragma: no cover - jitted
    """Rows ordered by (code, ts, known), stably: the permutation, the sorted ts and known, each block's start.

    A counting sort by code (codes are dense, 0 <= code < n_blocks) that also moves ts and known
    into place, then each block sorted by event time and known time in parallel, on its own
    contiguous slice: O(n) plus many small sorts, instead of one big multi-key sort. ``ties``
    counts neighbours equal on all three (the caller breaks those).
    """
    n = codes.shape[0]
    starts = np.zeros(n_blocks + 1, np.int64)
    for i in range(n):
        starts[codes[i] + 1] += 1
    for b in range(n_blocks):
        starts[b + 1] += starts[b]
    pos = starts[:-1].copy()
    perm = np.empty(n, np.int64)
    s_ts = np.empty(n, np.int64)
    s_known = np.empty(n, np.int64)
    for i in range(n):
        c = codes[i]
        p = pos[c]
        perm[p] = i
        s_ts[p] = ts[i]
        s_known[p] = known[i]
        pos[c] = p + 1
    ties = np.zeros(n_blocks, np.int64)
    for b in prange(n_blocks):
        lo = starts[b]
        hi = starts[b + 1]
        if hi - lo < 2:
            continue
        t = s_ts[lo:hi]
        k = s_known[lo:hi]
        if not is_sorted(np.zeros(hi - lo, np.int64), t, k):
            order = np.argsort(k, kind="mergesort")
            order = order[np.argsort(t[order], kind="mergesort")]
            perm[lo:hi] = perm[lo:hi][order]
            s_ts[lo:hi] = t[order]
            s_known[lo:hi] = k[order]
        for j in range(lo + 1, hi):
            if s_ts[j] == s_ts[j - 1] and s_known[j] == s_known[j - 1]:
                ties[b] += 1
    return perm, s_ts, s_known, starts, ties.sum()
