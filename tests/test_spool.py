"""The ingress's log spool: fsync'd before the answer, shipped to the writer after, adopted when its owner dies.

The spool is tested on disk directly (no Ray); then a :class:`LogShipper`
ships to the real writer actor of a lake, and adopts the spool of a process
killed with SIGKILL right after its answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import pytest

import lakeloop
from lakeloop.serving.logbook import FEEDBACK, INFERENCE, TABLES, LogShipper, stop_writer
from lakeloop.serving.spool import Spool, orphans, read_folder, release


def records(ids):
    now = datetime.now(timezone.utc)
    return [{"request_id": rid, "row": 0, "time": now, "model": "m", "version": 1, "route": "primary",
             "features": "{}", "output": "{}", "prediction": "1", "latency_ms": 1.0, "error": None} for rid in ids]


def spooled(spool: Spool, table: str, batch_id: str, recs: list[dict]) -> None:
    spool.track(table, spool.write(table, batch_id, recs), batch_id, recs)


def segment_files(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("segment-*.jsonl"))


def test_batches_stay_on_disk_until_the_writer_has_every_batch_of_a_sealed_segment(tmp_path):
    spool = Spool(tmp_path / "spool", TABLES, segment_rows=3)
    b1, b2 = records(["a", "b"]), records(["c", "d"])
    spooled(spool, INFERENCE, "b1", b1)
    spooled(spool, INFERENCE, "b2", b2)  # 4 rows >= 3: the segment is sealed
    spooled(spool, FEEDBACK, "f1", records(["a"]))
    assert spool.pending_rows == 5 and len(segment_files(spool.folder)) == 2
    assert spool.next_group(max_rows=10) == (INFERENCE, [("b1", b1), ("b2", b2)])  # one table per group
    assert [b for b, _ in spool.next_group(max_rows=3)[1]] == ["b1"]  # at least one batch, then up to max_rows
    spool.acknowledged(1)
    assert len(segment_files(spool.folder)) == 2, "b2 of the sealed segment is not acknowledged yet"
    spool.acknowledged(1)
    assert segment_files(spool.folder) == ["segment-000000000001.jsonl"]  # only feedback's active one
    assert spool.next_group(10)[0] == FEEDBACK
    spool.acknowledged(1)
    assert spool.pending_rows == 0 and spool.close() and not spool.folder.exists()


def test_a_closed_spool_with_batches_left_is_kept_for_adoption(tmp_path):
    spool = Spool(tmp_path / "spool", TABLES)
    spooled(spool, INFERENCE, "b1", records(["a"]))
    assert orphans(tmp_path / "spool") == [], "a live spool's lock is held"
    assert spool.close() is False and spool.folder.exists()
    [(folder, fd)] = orphans(tmp_path / "spool")
    assert folder == spool.folder and orphans(tmp_path / "spool") == [], "one adopter at a time"
    [(table, batch_id, recs)] = read_folder(folder, TABLES)
    assert (table, batch_id, [r["request_id"] for r in recs]) == (INFERENCE, "b1", ["a"])
    release(folder, fd, remove=True)
    assert not folder.exists()


_KILLED = textwrap.dedent("""
    import sys, time
    from datetime import datetime, timezone
    from lakeloop.serving.logbook import INFERENCE, TABLES
    from lakeloop.serving.spool import Spool
    spool = Spool(sys.argv[1], TABLES)
    for i in range(int(sys.argv[2])):
        recs = [{"request_id": f"dead-{i}", "row": 0, "time": datetime.now(timezone.utc), "model": "m",
                 "version": 1, "route": "primary", "features": "{}", "output": "{}", "prediction": "1",
                 "latency_ms": 1.0, "error": None}]
        spool.track(INFERENCE, spool.write(INFERENCE, f"batch-{i}", recs), f"batch-{i}", recs)
    print("answered", flush=True)  # as the ingress answers 2xx here
    time.sleep(600)
""")


@pytest.mark.timeout(300)
def test_the_shipper_delivers_its_own_spool_and_that_of_a_killed_replica_exactly_once(tmp_path, ray_session):
    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"), ray_namespace="spool-tests")
    root = tmp_path / "spool"
    dead = subprocess.Popen([sys.executable, "-c", _KILLED, str(root), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert dead.stdout.readline().strip() == "answered"
        os.kill(dead.pid, signal.SIGKILL)  # no chance to ship anything
    finally:
        dead.wait(timeout=30)

    async def serve():
        shipper = LogShipper(ll, spool_root=root)
        shipper.start()
        await asyncio.gather(*(shipper.log(INFERENCE, records([f"live-{i}"])) for i in range(50)))
        assert shipper.spool.pending_rows + shipper.sent >= 1  # answered once spooled, shipped after
        deadline = time.monotonic() + 60
        while (shipper.spool.pending or shipper.adopted < 30) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await shipper.log(INFERENCE, records(["last"]))  # drained at the stop
        await shipper.drain()
        return shipper

    try:
        shipper = asyncio.run(serve())
        assert shipper.adopted == 30 and shipper.rejected == 0
        assert not any(root.iterdir()), "both spools are gone once shipped"
        # the killed replica's spool shipped again (as after a lost acknowledgement) is written once
        dup = Spool(root, TABLES)
        spooled(dup, INFERENCE, "batch-0", records(["dead-0"]))
        dup.close()
        again = asyncio.run(_drain_new(ll, root))
        assert again.adopted == 1
    finally:
        flushed = stop_writer(ll)
    assert flushed is not None
    ids = sorted(ll.lake.table(INFERENCE).to_pandas()["request_id"])
    assert ids == sorted([f"dead-{i}" for i in range(30)] + [f"live-{i}" for i in range(50)] + ["last"])


async def _drain_new(ll, root) -> LogShipper:
    shipper = LogShipper(ll, spool_root=root)
    await shipper.drain()  # adopts what it finds, then closes
    return shipper


@pytest.mark.timeout(120)
def test_a_full_spool_answers_503_and_takes_nothing(tmp_path, ray_session):
    from lakeloop.errors import ServiceUnavailableError

    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"), ray_namespace="spool-tests-full")

    async def go():
        shipper = LogShipper(ll, max_waiting_rows=3, spool_root=tmp_path / "spool")
        shipper.start = lambda: None  # the writer never acknowledges
        await shipper.log(INFERENCE, records(["a", "b"]))
        with pytest.raises(ServiceUnavailableError, match="limit 3"):
            await shipper.log(INFERENCE, records(["c", "d"]))
        assert shipper.spool.pending_rows == 2
        return shipper

    shipper = asyncio.run(go())
    assert shipper.spool.close() is False  # kept on disk for the next replica


def test_a_label_finds_a_request_a_sibling_answered_in_that_siblings_spool_with_no_wait(tmp_path, monkeypatch):
    """The answering replica's shipper never runs (a writer slow for longer than any grace): the label is
    checked against the sibling's spool, which keeps the records until the writer has them; no 404."""
    from lakeloop.serving import feedback
    from lakeloop.serving.feedback import FeedbackBook, UnknownRequestError

    monkeypatch.setattr(feedback, "SPOOL_GRACE_S", 0.0)
    monkeypatch.setattr(feedback, "SIBLING_GRACE_S", 0.0)
    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"))

    async def go():
        answering, other = (LogShipper(ll, spool_root=tmp_path / "spool") for _ in range(2))
        answering.start = other.start = lambda: None  # nothing is shipped: no writer at all
        two_rows = records(["r-1", "r-2"]) + [{**records(["r-1"])[0], "row": 1}]
        await answering.log(INFERENCE, two_rows)
        await answering.log(FEEDBACK, [{"request_id": "r-1", "row": 1, "label": "1", "time": two_rows[0]["time"]}])
        book = FeedbackBook(ll, siblings=other.siblings, spooled=other.spooled)
        found = await book.find("r-1")
        with pytest.raises(UnknownRequestError):  # a made-up id is still a 404
            await book.find("r-3")
        assert answering.spooled("r-1") is None  # a replica's own spool is not a sibling's: its index has it
        for shipper in (answering, other):
            shipper.spool.close()
        return found

    found = asyncio.run(go())
    assert (found.model, found.version, found.rows, found.labelled) == ("m", 1, 2, {1})


@pytest.mark.timeout(180)
def test_a_label_sent_to_another_replica_finds_a_request_still_on_its_way_from_a_spool(tmp_path, ray_session,
                                                                                      monkeypatch):
    """The answering replica's shipper is late (a writer that just restarted); the label is not a 404."""
    from lakeloop.serving import feedback
    from lakeloop.serving.feedback import FeedbackBook, UnknownRequestError

    monkeypatch.setattr(feedback, "SPOOL_GRACE_S", 0.0)  # no sibling spool on the node: no wait
    monkeypatch.setattr(feedback, "SIBLING_GRACE_S", 1.0)

    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"), ray_namespace="spool-tests-label")

    async def go():
        answering = LogShipper(ll, spool_root=tmp_path / "spool")
        start = answering.start
        answering.start = lambda: None  # nothing shipped yet
        other = LogShipper(ll, spool_root=tmp_path / "spool")
        alone = LogShipper(ll, spool_root=tmp_path / "alone")
        assert other.siblings() and answering.siblings() and not alone.siblings()
        alone.spool.close()
        book = FeedbackBook(ll, recent=other.recent, siblings=other.siblings)
        with pytest.raises(UnknownRequestError):  # a made-up id is still a 404 (after the grace)
            await book.find("f" * 32)
        # found only by waiting because a sibling spool is there; a loaded machine's Ray calls can take
        # seconds: the wait, not its length, is what this checks
        feedback.SIBLING_GRACE_S = 60.0
        await answering.log(INFERENCE, records(["r-1"]))  # answered 2xx, in the spool only

        async def ship_late():
            await asyncio.sleep(0.3)
            start()

        found, _ = await asyncio.gather(book.find("r-1"), ship_late())
        await answering.drain()
        await other.drain()
        return found

    try:
        found = asyncio.run(go())
    finally:
        stop_writer(ll)
    assert (found.model, found.version, found.rows) == ("m", 1, 1)
