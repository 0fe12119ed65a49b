"""Concurrent writers both land; a write killed part-way leaves the table at its previous version."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import clean_env

pytestmark = pytest.mark.slow

APPENDER = textwrap.dedent("""
    import sys, lakeloop, pandas as pd
    root, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    table = lakeloop.connect(lake_root=root).lake.table("raw.events")
    versions = []
    for i in range(n):
        r = table.append(pd.DataFrame({"id": [f"{who}-{i}"], "value": [float(i)]}))
        versions.append(r.version)
    print(" ".join(map(str, versions)))
""")

STALLED_WRITER = textwrap.dedent("""
    import sys, time, lakeloop, pyarrow as pa
    root, marker = sys.argv[1], sys.argv[2]
    table = lakeloop.connect(lake_root=root).lake.table("raw.events")
    schema = table.schema.to_arrow()
    def batches():
        for i in range(40):
            ids = [f"big-{i}-{j}" for j in range(50_000)]
            yield pa.RecordBatch.from_pydict({"id": ids, "value": [1.0] * len(ids)}, schema=schema)
        open(marker, "w").close()
        time.sleep(600)   # stalled mid-write: the test kills us here
    table.append(pa.RecordBatchReader.from_batches(schema, batches()), target_file_size=1_000_000)
""")


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = clean_env()
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.fixture
def events(ll):
    return ll.lake.create("raw.events", {"id": "string", "value": "float64"})


def test_two_processes_appending_at_once_both_land(events, lake_root):
    n = 15
    procs = [_python(APPENDER, str(lake_root), who, str(n)) for who in ("a", "b")]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        outs.append([int(v) for v in out.split()])
    df = events.to_pandas()
    assert len(df) == 2 * n and df["id"].is_unique
    versions = outs[0] + outs[1]
    assert sorted(versions) == list(range(1, 2 * n + 1)), "each write reports the version it made"
    assert events.version() == 2 * n


def test_write_killed_part_way_leaves_previous_version(events, lake_root, tmp_path):
    import pandas as pd

    events.append(pd.DataFrame({"id": ["kept"], "value": [1.0]}))
    marker = tmp_path / "stalled"
    proc = _python(STALLED_WRITER, str(lake_root), str(marker))
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "writer never reached the stall point"
            time.sleep(0.1)
        data_dir = Path(events.uri)
        written = list(data_dir.glob("*.parquet"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert events.version() == 1
    assert events.to_pandas()["id"].tolist() == ["kept"]
    assert events.append(pd.DataFrame({"id": ["after"], "value": [2.0]})).version == 2
    assert sorted(events.to_pandas()["id"]) == ["after", "kept"]
    # the killed write's data files were never committed: vacuum removes them
    orphans = events.vacuum(retention_hours=0, dry_run=True)
    assert len(written) > 1, "the killed writer had flushed data files before its commit"
    assert len(orphans) == len(written) - 1, "every file but the committed one is an orphan"
    events.vacuum(retention_hours=0)
    assert sorted(events.to_pandas()["id"]) == ["after", "kept"]
