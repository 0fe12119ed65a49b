"""The lake on object storage: every lake operation, the feature store, the inference log and the monitor on
``s3://bucket/lake``, served by a real S3 API server (moto, ``tests/s3_server.py``) on loopback.

Credentials reach every process the way they reach a cluster's nodes: the session fixture ``s3`` exports
them (``AWS_*``) before the session Ray starts. One bucket and lake serve the whole module.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest

import lakeloop
from lakeloop.errors import ConnectError, VersionNotFoundError

from conftest import clean_env

EVENTS = {"user_id": "string", "shop": "string", "amount": "float64", "event_time": "timestamp"}
START = (pd.Timestamp.now(tz="UTC") - pd.Timedelta("12h")).floor("h")  # recent: inside the online ttl


@pytest.fixture(scope="module")
def root(s3) -> str:
    return f"{s3.bucket('lakeloop-s3-' + uuid.uuid4().hex[:8])}/lake"


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def ll(root, mlflow_uri):
    """A client on the module's s3 lake; credentials from the environment, as on a cluster node."""
    return lakeloop.connect(lake_root=root, mlflow_tracking_uri=mlflow_uri)


def events(n: int, *, seed: int, start=START, users: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user_id": [f"u{i}" for i in rng.integers(0, users, n)],
                         "shop": rng.choice(["s1", "s2"], n),
                         "amount": np.round(rng.gamma(2.0, 10.0, n), 2),
                         "event_time": start + pd.to_timedelta(np.sort(rng.integers(0, 6 * 3600, n)), unit="s")})


def test_every_lake_operation_runs_on_s3(ll, root, s3):
    t = ll.lake.create("raw.ops", {"id": "string", "value": "float64", "at": "timestamp"}, primary_key="id")
    assert t.uri == f"{root}/raw/ops"
    v1 = t.append(pd.DataFrame({"id": ["a", "b"], "value": [1.0, 2.0], "at": pd.to_datetime(["2026-01-01"] * 2, utc=True)}))
    v2 = t.upsert(pd.DataFrame({"id": ["b", "c"], "value": [20.0, 3.0]}))
    assert (v1.version, v2.version) == (1, 2)
    assert sorted(t.read(version=1)["id"]) == ["a", "b"]                               # time travel by version
    assert t.read().set_index("id")["value"].to_dict() == {"a": 1.0, "b": 20.0, "c": 3.0}
    at_v1 = t.history()[1]["timestamp"]
    assert len(t.read(as_of=at_v1)) == 2                                                # ... and by time
    assert t.restore(1).version == 3 and sorted(t.read()["id"]) == ["a", "b"]
    for i in range(3):                                                                  # small files to compact
        t.append(pd.DataFrame({"id": [f"x{i}"], "value": [float(i)]}))
    assert t.delete("id = 'x0'").version == 7
    files_before = len(t._delta().file_uris())
    compacted = t.optimize()
    assert compacted.version == 8 and len(t._delta().file_uris()) < files_before
    assert sorted(t.read()["id"]) == ["a", "b", "x1", "x2"]
    assert [h["version"] for h in t.history()] == list(range(8, -1, -1))
    assert [h["operation"] for h in t.history()[:2]] == ["OPTIMIZE", "DELETE"]
    removed = t.vacuum(retention_hours=0)                                               # files no version needs
    assert removed and all(not r.startswith("s3://") or r.startswith(t.uri) for r in removed)
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=root[5:].split("/")[0], Prefix="lake/raw/ops/")["Contents"]]
    assert not any(k.endswith(removed[0]) for k in keys)                                # really gone from the bucket
    assert sorted(t.read()["id"]) == ["a", "b", "x1", "x2"]
    with pytest.raises(VersionNotFoundError):
        t.read(version=1)                                                               # its files were vacuumed
    assert "raw.ops" in ll.lake.tables()
    assert t._delta().metadata().configuration["delta.checkpointInterval"] == "10"     # short log replays on s3


def test_ingest_lands_good_rows_and_quarantines_bad_ones_on_s3(ll, tmp_path):
    from lakeloop.demo import scenario

    path = scenario.write_csv(scenario.generate(300, seed=3), str(tmp_path / "tx.csv"))
    result = ll.lake.ingest(path, "raw.transactions", rules=scenario.RULES_FILE, history="event_time")
    assert result.accepted + result.quarantined == 300 and result.quarantined > 0
    assert len(ll.lake.table("raw.transactions").read()) == result.accepted
    bad = ll.lake.table("quarantine.transactions").read()
    assert len(bad) == result.quarantined and set(bad["_rule"]) <= {r for r in bad["_rule"]}
    assert bad["_reason"].str.len().min() > 0
    assert {"raw.transactions", "quarantine.transactions"} <= set(ll.lake.tables())


@pytest.mark.slow
def test_feature_store_materializes_incrementally_from_the_change_feed_on_s3(ll, ray_session):
    source = ll.lake.create("raw.events", EVENTS, exist_ok=True)
    source.append(events(300, seed=1))
    ll.features.apply("fs_defs:definitions")
    full = ll.features.materialize("user_windows")
    assert full.mode == "full" and full.rows_written > 0
    assert source.read(format="ray").count() == 300                                   # Ray Data reads the s3 table
    source.append(events(200, seed=2, start=START + pd.Timedelta("3h")))              # the change feed's next rows
    source.delete("amount > 60")                                                       # removals travel in it too
    incremental = ll.features.materialize("user_windows")
    assert incremental.mode == "incremental" and incremental.previous_source_version == full.source_version
    assert incremental.source_version == source.version()
    table = ll.lake.table("features.user_windows")
    order = ["user_id", "event_time", "_known_at"]
    after_incremental = table.read().sort_values(order).reset_index(drop=True)
    assert ll.features.materialize("user_windows", full=True).mode == "full"           # a full recompute agrees
    after_full = table.read().sort_values(order).reset_index(drop=True)
    pd.testing.assert_frame_equal(after_incremental, after_full)

    labels = pd.DataFrame({"user_id": ["u1", "u2", "nobody"], "event_timestamp": [START + pd.Timedelta("9h")] * 3,
                           "label": [0, 1, 0]})
    frame = ll.features.training_frame(labels, ["user_windows:amount_mean_1d", "user_windows:amount_count_1h"],
                                       known_time=False)
    assert frame.features == ["amount_mean_1d", "amount_count_1h"] and frame.data["label"].tolist() == [0, 1, 0]
    assert frame.data["amount_count_1h"].iloc[:2].notna().all() and np.isnan(frame.data["amount_count_1h"].iloc[2])
    assert frame.lineage["views"]["user_windows"]["source_version"] == source.version()
    from lakeloop.features import online

    try:                                                                  # the online store actor loads from s3
        values = ll.features.online_features("user_windows", ["u1", "nobody"])
    finally:
        online.stop(ll)
    assert values["_missing"].tolist() == [False, True] and values["amount_sum_1h"].notna().iloc[0]


def _records(n: int, *, version: int, shift: float = 0.0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    now = pd.Timestamp.now(tz="UTC")
    out = []
    for i in range(n):
        amount = float(rng.normal(10 + 8 * shift, 3))
        out.append({"request_id": f"req-{seed}-{i}", "row": 0, "time": now, "model": "credit", "version": version,
                    "route": "primary", "features": json.dumps({"amount": amount}),
                    "output": json.dumps({"prediction": int(amount > 10)}), "prediction": str(int(amount > 10)),
                    "latency_ms": 1.0, "error": None})
    return out


@pytest.mark.slow
def test_inference_log_commits_through_its_wal_and_the_monitor_reads_it_from_s3(ll, ray_session):
    from lakeloop import monitoring
    from lakeloop.monitoring import MonitorSettings
    from lakeloop.serving.logbook import APP_ID, INFERENCE, Logbook, LogShipper, stop_writer, wal_root

    assert not str(wal_root(ll)).startswith("s3:")                     # the WAL is on the writer node's disk
    try:
        shipper = LogShipper(ll)                                         # the ingress side: the real writer actor

        async def log_and_stop():
            await shipper.log(INFERENCE, _records(100, version=1, seed=1))  # spooled on this node's disk
            await shipper.drain()                                            # shipped to the writer

        asyncio.run(log_and_stop())
        assert shipper.sent == 1 and not shipper.spool.folder.exists()
        assert stop_writer(ll)[INFERENCE] == 100                          # flushed to Delta on s3 as it stops
        book = Logbook(ll.config.to_dict(), autoflush=False)             # in process: same WAL, same table
        assert book.log(_records(100, version=1, shift=1.0, seed=2)) == 100
        assert book.flush() == {INFERENCE: 100}
        assert book.close() == {}                                         # nothing owed, nothing written twice
    finally:
        shutil.rmtree(wal_root(ll), ignore_errors=True)
    log = ll.lake.table(INFERENCE)
    assert len(log.read()) == 200 and log.read()["request_id"].is_unique
    assert log._delta().transaction_version(APP_ID.format(table=INFERENCE)) is not None

    reference = pd.DataFrame({"amount": np.random.default_rng(9).normal(10, 3, 2000)})
    monitor = monitoring.local_monitor(ll, "credit", settings=MonitorSettings(window_rows=100, n_permutations=50),
                                       reference=reference)
    done = monitor.run_once()
    assert [(d["version"], d["rows"]) for d in done] == [(1, 100), (1, 100)]
    assert [d["drift"] for d in done] == [False, True]                  # the shifted second batch drifts
    assert list(monitoring.read_events(ll, "credit")["kind"]) == ["drift_detected"]
    assert monitoring.windows(ll, "credit")["rows"].sum() == 200


_APPENDER = """
import sys
import lakeloop
ll = lakeloop.connect(lake_root=sys.argv[1])
table = ll.lake.table("raw.concurrent")
for i in range(20):
    table.append([{"writer": sys.argv[2], "i": i}])
"""


@pytest.mark.slow
def test_two_processes_appending_20_times_each_lose_no_commit(ll, root, s3):
    """delta-rs commits with a conditional PUT (If-None-Match: *) on S3; a writer that loses the race retries."""
    table = ll.lake.create("raw.concurrent", {"writer": "string", "i": "int64"})
    env = clean_env()
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, root, w], env=env, stderr=subprocess.PIPE, text=True)
             for w in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    assert table.version() == 40
    rows = table.read()
    assert len(rows) == 40
    assert sorted(zip(rows["writer"], rows["i"])) == sorted((w, i) for w in "ab" for i in range(20))
    assert [h["operation"] for h in table.history()].count("WRITE") == 40
    bucket, prefix = root[len("s3://"):].split("/", 1)
    log = [o["Key"].rsplit("/", 1)[1] for o in s3.client().list_objects_v2(
        Bucket=bucket, Prefix=f"{prefix}/raw/concurrent/_delta_log/")["Contents"]]
    assert {f"{v:020d}.checkpoint.parquet" for v in (9, 19, 29, 39)} <= set(log)


def test_credentials_for_an_s3_lake_never_travel(root, mlflow_uri, s3, tmp_path):
    from lakeloop.client import ray_init_kwargs
    from lakeloop.credentials import secrets_path
    from lakeloop.lake.store import plain_options

    secret = s3.storage_options["AWS_SECRET_ACCESS_KEY"]
    ll = lakeloop.connect(lake_root=root, mlflow_tracking_uri=mlflow_uri, lake_storage_options=s3.storage_options)
    ll.lake.create("raw.creds", {"a": "int64"}, exist_ok=True).append([{"a": 1}])  # the driver uses them
    shipped = json.dumps([ll.config.to_dict(), ray_init_kwargs(ll.config)], default=str)
    assert secret not in shipped and s3.storage_options["AWS_ACCESS_KEY_ID"] not in shipped
    assert s3.endpoint in shipped                                         # where, not who, travels
    assert ll.keep_secrets() is None and secrets_path(root) is None      # and they are written nowhere
    assert secret not in json.dumps(plain_options(ll.lake.storage_options))
    assert not list(tmp_path.rglob("*.json"))
    assert secret not in repr(ll) and secret not in repr(ll.config) and secret not in repr(ll.lake)


def test_a_missing_bucket_and_an_unreachable_endpoint_are_clear_errors(s3, mlflow_uri):
    missing = lakeloop.connect(lake_root="s3://no-such-bucket-lakeloop/lake", mlflow_tracking_uri=mlflow_uri)
    for action in (lambda: missing.lake.table("raw.x").read(), lambda: missing.lake.tables(),
                   lambda: missing.lake.create("raw.x", {"a": "int64"})):
        with pytest.raises(ConnectError) as err:
            action()
        text = str(err.value)
        assert "bucket 'no-such-bucket-lakeloop'" in text and "does not exist" in text
        assert "s3://no-such-bucket-lakeloop/lake" in text and "lake.root" in text

    from conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    down = lakeloop.connect(lake_root="s3://somewhere/lake", mlflow_tracking_uri=mlflow_uri,
                            lake_storage_options={"AWS_ENDPOINT_URL": dead})
    with pytest.raises(ConnectError) as err:
        down.lake.table("raw.x").read()
    text = str(err.value)
    assert "does not answer" in text and dead in text and "s3://somewhere/lake" in text
    assert "AWS_ENDPOINT_URL" in text and "Traceback" not in text and "\x1b[" not in text


def _moto_auth(s3, count: str) -> None:
    """moto checks request signatures against its IAM after ``count`` requests ("inf": never, its default)."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{s3.endpoint}/moto-api/reset-auth", data=count.encode(),
                                                  headers={"Content-Type": "text/plain"}, method="POST"),
                           timeout=10).read()


def test_refused_credentials_are_a_clear_error(ll, root, s3):
    ll.lake.create("raw.auth", {"a": "int64"}, exist_ok=True)
    _moto_auth(s3, "0")                       # from now on the test key is unknown to the server's IAM
    try:
        with pytest.raises(ConnectError) as err:
            ll.lake.table("raw.auth").read()
    finally:
        _moto_auth(s3, "inf")
    text = str(err.value)
    assert "refused this process's credentials" in text and root in text and "InvalidAccessKeyId" in text
    assert "AWS_ACCESS_KEY_ID" in text and "Ray workers" in text
