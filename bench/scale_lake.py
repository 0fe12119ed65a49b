"""The lake on local disk beside the lake on an S3 API server, same rows, same code, in one run.

    .venv/bin/python bench/scale_lake.py                 # 1M rows, 3 repeats
    .venv/bin/python bench/scale_lake.py --rows 200000 --repeats 5 --json-out lake.json

The S3 side is moto's standalone server (``tests/s3_server.py``) on 127.0.0.1: a
Python server holding objects in memory, so the ratio measures lakeloop and
delta-rs over the S3 protocol (HTTP, signing, conditional commit PUTs, listing
the log) plus moto's own cost, not a network or a real S3. Per backend and
repeat: a fresh table, one timed ``append`` of ``rows`` rows (one commit),
then one timed ``read()`` of them into pandas; and ten timed one-row appends
(the per-commit cost). Medians are printed with the ratio s3/local and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _frame(rows: int, seed: int = 7):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(rows, dtype=np.int64),
        "user": np.char.add("u", rng.integers(0, 50_000, rows).astype(str)),
        "amount": rng.gamma(2.0, 10.0, rows),
        "at": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86_400 * 30, rows), unit="s"),
    })


SCHEMA = {"id": "int64", "user": "string", "amount": "float64", "at": "timestamp"}


def _measure(ll, frame, repeats: int) -> dict:
    """Median seconds of a big append, a full read, and a one-row append, on fresh tables of this lake."""
    append, read, small = [], [], []
    one = frame.head(1)
    for rep in range(repeats):
        table = ll.lake.create(f"bench.t{rep}", SCHEMA)
        t0 = time.perf_counter()
        table.append(frame)
        append.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = table.read()
        read.append(time.perf_counter() - t0)
        assert len(got) == len(frame), (len(got), len(frame))
        for _ in range(10):
            t0 = time.perf_counter()
            table.append(one)
            small.append(time.perf_counter() - t0)
    return {"append_s": statistics.median(append), "read_s": statistics.median(read),
            "append_1row_s": statistics.median(small), "append_all_s": append, "read_all_s": read}


def lake_local_vs_s3(rows: int = 1_000_000, repeats: int = 3) -> dict:
    """Time per append and per read of ``rows`` rows on a local lake and on an s3:// lake (moto on loopback).

    Returns ``{"rows", "repeats", "local": {...}, "s3": {...}, "ratio": {"append", "read", "append_1row"},
    "load_avg"}``; a ratio is s3 seconds / local seconds (medians).
    """
    sys.path.insert(0, str(REPO / "tests"))
    from s3_server import running_s3

    import lakeloop

    frame = _frame(rows)
    with tempfile.TemporaryDirectory() as tmp:
        local = lakeloop.connect(lake_root=str(Path(tmp, "lake")))
        result: dict = {"rows": rows, "repeats": repeats, "local": _measure(local, frame, repeats)}
        with running_s3(tmp) as server:
            saved = {k: os.environ.get(k) for k in server.env}
            os.environ.update(server.env)  # as on a cluster node: credentials in the environment
            try:
                bucket = server.bucket(f"bench-{uuid.uuid4().hex[:8]}")
                remote = lakeloop.connect(lake_root=f"{bucket}/lake", mlflow_tracking_uri=f"sqlite:///{tmp}/m.db")
                result["s3"] = _measure(remote, frame, repeats)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
    result["ratio"] = {k: result["s3"][f"{k}_s"] / result["local"][f"{k}_s"]
                       for k in ("append", "read", "append_1row")}
    result["load_avg"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", help="also write the JSON here")
    args = parser.parse_args(argv)
    result = lake_local_vs_s3(args.rows, args.repeats)
    print(f"lake, {result['rows']:,} rows, medians of {result['repeats']} (load avg "
          f"{', '.join(f'{x:.1f}' for x in result['load_avg'])})")
    print(f"{'':14}{'local s':>10}{'s3 s':>10}{'s3/local':>10}")
    for key, label in (("append", "append"), ("read", "read"), ("append_1row", "append 1 row")):
        print(f"{label:14}{result['local'][key + '_s']:>10.3f}{result['s3'][key + '_s']:>10.3f}"
              f"{result['ratio'][key]:>9.2f}x")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
