"""Exactly-once logs and availability through process kills: the writer, an ingress replica, a model replica.

The writer's write-ahead log is tested directly (no Ray) for replay, torn writes,
retried batches, idempotent Delta commits and back-pressure; then one Serve app
runs under continuous load while each process is killed in turn (``bench/faults.py``
does the killing and the bookkeeping), and is stopped gracefully.
"""

from __future__ import annotations

import sys
import json
from datetime import datetime, timezone

import pytest

import lakeloop
from conftest import REPO, free_port
from lakeloop.serving.logbook import FEEDBACK, INFERENCE, LogBacklogError, Logbook, wal_root
from lakeloop.serving.service import stop_node_haproxies

sys.path.insert(0, str(REPO / "bench"))
import faults  # noqa: E402 - bench/faults.py: the load loop, the kills and the log check

ROW = {"amount": 150.0, "country": "US"}


def records(ids, route="primary"):
    now = datetime.now(timezone.utc)
    return [{"request_id": rid, "row": 0, "time": now, "model": "m", "version": 1, "route": route,
             "features": "{}", "output": "{}", "prediction": "1", "latency_ms": 1.0, "error": None} for rid in ids]


@pytest.fixture
def config(lake_root):
    return lakeloop.connect(lake_root=str(lake_root)).config.to_dict()


def logged(config, table=INFERENCE) -> list[str]:
    return sorted(lakeloop.connect(config).lake.table(table).to_pandas()["request_id"])


def test_acknowledged_batches_survive_a_kill_and_are_written_once(config, lake_root):
    first = Logbook(config, autoflush=False)  # everything stays in the write-ahead log
    assert first.log(records(["a", "b"]), INFERENCE, "batch-1") == 2
    assert first.log([{"request_id": "a", "row": 0, "label": "1", "time": datetime.now(timezone.utc)}],
                     FEEDBACK, "fb-1") == 1
    with open(first.wal[INFERENCE].path(first.wal[INFERENCE].active), "ab") as fh:
        fh.write(b'{"batch": "torn", "records": [{"request_id": "x"')  # a kill in the middle of a write
    # the process dies here (nothing flushed); a new writer replays the log
    second = Logbook(config, autoflush=False)
    assert second.log(records(["a", "b"]), INFERENCE, "batch-1") == 0, "a batch sent again is recognised"
    second.flush()
    assert logged(config) == ["a", "b"] and logged(config, FEEDBACK) == ["a"]
    # the Delta commit is done but the segment is still there (as after a kill before it was removed)
    assert second.wal[INFERENCE].sealed(), "committed segments are kept a while"
    third = Logbook(config, autoflush=False)
    third.log(records(["c"]), INFERENCE, "batch-2")
    assert third.close()[INFERENCE] == 1
    assert logged(config) == ["a", "b", "c"], "nothing twice after replaying a committed segment"
    assert not any(w.segments() for w in third.wal.values()), "a graceful stop leaves no segment behind"
    assert (lake_root / "_wal" / INFERENCE).is_dir()


def test_a_full_backlog_pushes_back_instead_of_growing(config):
    book = Logbook(config, autoflush=False, max_backlog_rows=3)
    book.log(records(["a", "b"]), INFERENCE, "one")
    with pytest.raises(LogBacklogError, match="not yet in the lake"):
        book.log(records(["c", "d"]), INFERENCE, "two")
    assert LogBacklogError.http_status == 503
    book.flush()
    book.log(records(["c", "d"]), INFERENCE, "two")  # room again once the backlog is in Delta
    book.close()
    assert logged(config) == ["a", "b", "c", "d"]


def test_a_record_the_table_cannot_take_is_refused_when_logged(config):
    from lakeloop.errors import SchemaError

    book = Logbook(config, autoflush=False)
    with pytest.raises(SchemaError):
        book.log([{"request_id": "a", "row": "not a number", "time": datetime.now(timezone.utc)}], FEEDBACK, "bad")
    book.close()


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, ray_session):
    """One served model (2 ingress and 2 model replicas) under load through three kills, then stopped."""
    from ray import serve

    import serving_models

    root = tmp_path_factory.mktemp("faults") / "lake"
    ll = lakeloop.connect(lake_root=str(root), serve_port=free_port(), ray_namespace="fault-tests",
                          serve_replicas=2, serve_ingress_replicas=2)
    version = serving_models.register(ll, "fraud", 100.0)
    ll.serving.up()
    try:
        ll.serving.deploy("fraud", version)
        result = faults.run_faults(ll, "fraud", version, ROW, threads=4, settle_s=2.0, after_s=2.0)
    finally:
        serve.shutdown()
        stop_node_haproxies(ll.serving.node_id)  # a haproxy can outlive Serve
    spools = wal_root(ll) / "spool"  # the killed ingress replica's spool was adopted and shipped
    result["spools_left"] = sorted(p.name for p in spools.iterdir() if p.is_dir()) if spools.is_dir() else []
    return result


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module's Serve app starts in this test's setup
def test_every_answer_2xx_is_in_the_log_exactly_once_after_each_kill(fault_run):
    log = fault_run["log"]
    assert log["predictions_answered_2xx"] > 50 and log["feedback_answered_2xx"] > 50, fault_run
    assert (log["predictions_lost"], log["inference_duplicates"]) == (0, 0), log
    assert (log["feedback_lost"], log["feedback_duplicates"]) == (0, 0), log
    assert fault_run["spools_left"] == [], "every ingress spool, the killed replica's too, was shipped and removed"


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module's Serve app starts in this test's setup
def test_a_kill_fails_at_most_the_requests_in_flight_and_never_with_a_bare_5xx(fault_run):
    kills = fault_run["kills"]
    assert set(kills) == {"writer", "ingress", "model"}, kills
    # deploy returns once both ingress replicas serve the version: no request of the load before the kills failed
    assert fault_run["warmup_failed"] == 0, [(e[0], e[3], e[7]) for e in fault_run["events"] if e[3] != 200][:10]
    failures = [e for e in fault_run["events"] if e[3] != 200]
    for what, k in kills.items():
        assert k["answered_2xx"] > 0 and k["max_gap_s"] is not None, (what, k)
        # a writer or model replica death is waited out or retried: what fails is answered 503 + Retry-After
        assert k["failed"] <= k["in_flight_at_kill"], (what, json.dumps(k), failures[:10])
        if what != "ingress":
            assert set(k["failed_by_status"]) <= {"503+Retry-After"}, (what, json.dumps(k), failures[:10])
    bare = [e for e in fault_run["events"] if isinstance(e[3], int) and e[3] >= 500 and not (e[3] == 503 and e[4])]
    assert len(bare) <= kills["ingress"]["failed"], bare  # Serve's proxy answers 500 for a dead ingress replica
    assert not [e for e in fault_run["events"] if e[3] == 422], "a replica death is never the input's fault"
