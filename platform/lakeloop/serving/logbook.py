"""The inference log: every prediction to ``logs.inference``, every label to ``logs.feedback``.

Exactly once, through any single process kill. An ingress replica answers a
prediction or a label 2xx only after its records are in the replica's spool
on the node's disk (:mod:`lakeloop.serving.spool`, fsync'd); a background
task ships the spool to the writer actor, which acknowledges a batch only once
it is in its own write-ahead log on disk (:mod:`lakeloop.serving.wal`,
fsync'd). Concurrent requests share one spool write (group commit,
:class:`LogShipper`). The spool of a replica that dies is shipped by another
ingress replica of the lake on that node (a sibling, or its replacement).

The writer seals the active segment every ``flush_s`` seconds or
``flush_rows`` rows and appends sealed segments to Delta in one commit per
table, carrying the segment number as a Delta app transaction
(``lakeloop.logbook/<table>``): a writer that restarts after the commit but
before it forgot the segment sees the number in the table and does not write
it again. Each batch has an id; a batch sent again because its
acknowledgement was lost, or from an adopted spool, is recognised and
written once (the writer remembers the last ``KNOWN_BATCHES`` ids, and the
ids of the segments it keeps for ``RETAIN_S`` after their commit across a
restart of its own).

Memory and disk are bounded: an ingress holds at most ``MAX_WAITING_ROWS``
rows spooled and not yet acknowledged, and the writer at most
``max_backlog_rows`` rows not yet in Delta (beyond that it pushes back, and
the spools fill); beyond that, requests are answered 503 with ``Retry-After``
(nothing answered 2xx is then owed to the log).

The write-ahead log lives in ``<lake>/_wal/<table>/`` and the spools in
``<lake>/_wal/spool/``; for a remote lake (``s3://`` ...) both live on the
local disk of their node (``~/.cache/lakeloop/wal/<lake hash>``), so there
they survive a process kill but not the loss of that node.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from lakeloop.errors import LakeloopError, SchemaError, ServiceUnavailableError

if TYPE_CHECKING:
    from lakeloop.client import Lakeloop

INFERENCE = "logs.inference"
FEEDBACK = "logs.feedback"
TABLES = (INFERENCE, FEEDBACK)
INFERENCE_COLUMNS = {
    "request_id": {"type": "string", "required": True}, "row": "int64", "time": "timestamp",
    "model": "string", "version": "int64", "route": "string", "features": "string", "output": "string",
    "prediction": "string", "latency_ms": "float64", "error": "string",
}
FEEDBACK_COLUMNS = {"request_id": {"type": "string", "required": True}, "row": "int64",
                    "label": "string", "time": "timestamp"}
APP_ID = "lakeloop.logbook/{table}"  # Delta app transaction id: the last segment committed
MAX_WAITING_ROWS = 20_000  # per ingress replica, spooled and not yet acknowledged by the writer
SHIP_ROWS = 2000  # rows per call to the writer
SHIP_BATCHES = 200  # batches per call when shipping an adopted spool
RETRY_MAX_S = 0.2  # the shipper's longest wait between tries (labels sent elsewhere wait for the records)
SPOOL_SCAN_S = 2.0  # how often an ingress replica looks for the spools of replicas that died
ACK_TIMEOUT_S = 10.0  # how long one call of the shipper to the writer may take before it is sent again
RETRY_AFTER_S = 2
KNOWN_BATCHES = 200_000  # batch ids remembered per table (covers RETAIN_S of traffic)


class LogBacklogError(ServiceUnavailableError):
    """The writer has too many rows not yet in Delta; the request should be retried later."""


def writer_name(lake_root: str) -> str:
    return "lakeloop-logbook-" + hashlib.sha256(lake_root.encode()).hexdigest()[:10]


def wal_root(ll: "Lakeloop") -> Path:
    """Where the write-ahead log of this lake lives (see the module docstring)."""
    if ll.lake.is_local:
        return Path(ll.lake.root, "_wal")
    digest = hashlib.sha256(ll.lake.root.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "lakeloop" / "wal" / digest


class Logbook:
    """The writer (runs as a Ray actor; a plain class for tests and in-process use).

    :meth:`log` returns once the batch is on disk. A background thread moves
    the log into Delta; :meth:`flush` does it now, :meth:`close` at shutdown.
    """

    def __init__(self, config: dict, flush_rows: int = 500, flush_s: float = 1.0,
                 max_backlog_rows: int = 500_000, autoflush: bool = True):
        import lakeloop
        from lakeloop.serving.wal import WriteAheadLog

        self.ll = lakeloop.connect(config)
        self.flush_rows, self.flush_s, self.max_backlog_rows = flush_rows, flush_s, max_backlog_rows
        self.lock = threading.Lock()  # the WAL and the counters
        self.flush_lock = threading.Lock()  # one Delta commit at a time
        self.written = {t: 0 for t in TABLES}
        self.errors, self.last_error = 0, None
        self.schemas: dict = {}
        self.ll.lake.create(INFERENCE, INFERENCE_COLUMNS, exist_ok=True,
                            description="every prediction served: request, version, route, features, output")
        self.ll.lake.create(FEEDBACK, FEEDBACK_COLUMNS, exist_ok=True, description="ground-truth labels by request")
        root = wal_root(self.ll)
        self.wal = {t: WriteAheadLog(root / t) for t in TABLES}
        self.known: dict[str, OrderedDict] = {t: OrderedDict() for t in TABLES}
        self.requests: OrderedDict[str, dict] = OrderedDict()  # recent primary predictions, for feedback checks
        self.backlog = {t: 0 for t in TABLES}  # rows on disk, not yet in Delta
        for table in TABLES:  # replay: what an earlier writer accepted is still owed to Delta
            done = self._committed(table)
            self.wal[table].start_after(done)
            for seq in self.wal[table].segments():
                for batch_id, records in self.wal[table].read(seq):
                    self._remember(table, batch_id)
                    self._index(table, records)
                    if seq > done:
                        self.backlog[table] += len(records)
        self._stop = threading.Event()
        self._due = threading.Event()
        self._due.set()  # flush what the replay found right away
        self._timer = threading.Thread(target=self._tick, daemon=True, name="logbook-flush")
        if autoflush:  # False: only flush() and close() move the log to Delta
            self._timer.start()

    # -- accepting -----------------------------------------------------------------
    def log(self, records: list[dict], table: str = INFERENCE, batch_id: str | None = None) -> int:
        """Make ``records`` durable; returns how many were new (0 for a batch already written)."""
        return self.log_many([(batch_id or uuid.uuid4().hex, records)], table)

    def log_many(self, batches: list[tuple[str, list[dict]]], table: str = INFERENCE) -> int:
        """Make batches ``[(batch_id, records)]`` durable (one fsync); returns the rows that were new.

        A batch whose id was written before is skipped; all or none of the new ones are taken.
        """
        if table not in self.wal:
            raise LakeloopError(f"unknown log table {table!r}; the log tables are {', '.join(TABLES)}")
        batches = [(str(b), list(r)) for b, r in batches if r]
        if not batches:
            return 0
        self._arrow(table, [r for _, rs in batches for r in rs])  # a record the table cannot take is refused now
        with self.lock:
            seen: set = set()
            new = []
            for batch_id, records in batches:
                if batch_id not in self.known[table] and batch_id not in seen:
                    seen.add(batch_id)
                    new.append((batch_id, records))
            rows = sum(len(r) for _, r in new)
            if not new:
                return 0
            if self.backlog[table] + rows > self.max_backlog_rows:
                raise LogBacklogError(
                    f"the inference log writer has {self.backlog[table]} rows of {table} not yet in the lake "
                    f"(limit {self.max_backlog_rows}; last write error: {self.last_error}); retry later")
            self.wal[table].append_many(new)
            for batch_id, records in new:
                self._remember(table, batch_id)
                self._index(table, records)
            self.backlog[table] += rows
            due = self.wal[table].active_rows >= self.flush_rows
        if due:
            self._due.set()
        return rows

    def _remember(self, table: str, batch_id: str) -> None:
        known = self.known[table]
        known[batch_id] = None
        while len(known) > KNOWN_BATCHES:
            known.popitem(last=False)

    def _index(self, table: str, records: list[dict]) -> None:
        """Remember recent requests (model, version, rows, labelled rows), bounded like the batch ids."""
        index_requests(self.requests, table, records)
        while len(self.requests) > KNOWN_BATCHES:
            self.requests.popitem(last=False)

    def recent(self, request_id: str) -> dict | None:
        """A recent primary prediction as logged (any ingress replica): model, version, rows, time, labelled rows.

        Covers what the write-ahead log holds and what went to Delta lately, so a label sent to another
        ingress replica right after the prediction finds it before the Delta commit.
        """
        with self.lock:
            entry = self.requests.get(request_id)
            return None if entry is None else {**entry, "labelled": sorted(entry["labelled"])}

    def _arrow(self, table: str, records: list[dict]):
        import pyarrow as pa

        if table not in self.schemas:
            self.schemas[table] = self.ll.lake.table(table).schema
        rows = [{**r, "time": _utc(r["time"])} if "time" in r else r for r in records]
        try:
            data = pa.Table.from_pylist(rows)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise SchemaError(f"log records for {table} do not fit its schema: {exc}") from None
        return self.schemas[table].conform(data, table=table)

    # -- moving to Delta -------------------------------------------------------------
    def _tick(self):
        while not self._stop.is_set():
            self._due.wait(self.flush_s)
            if self._stop.is_set():
                return
            self._due.clear()
            try:
                self.flush()
            except Exception:  # counted in self.errors; the segments stay for the next attempt
                time.sleep(min(5.0, self.flush_s))

    def _committed(self, table: str) -> int:
        from deltalake import DeltaTable

        t = self.ll.lake.table(table)
        version = DeltaTable(t.uri, storage_options=self.ll.lake.storage_options or None).transaction_version(
            APP_ID.format(table=table))
        return -1 if version is None else int(version)

    def flush(self) -> dict:
        """Seal the active segments and append every sealed one to Delta; returns rows written per table."""
        out = {}
        with self.flush_lock:
            with self.lock:
                for wal in self.wal.values():
                    wal.seal()
            for table, wal in self.wal.items():
                try:
                    n = self._commit(table, wal)
                except Exception as exc:
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                    raise
                if n:
                    out[table] = n
        return out

    def _commit(self, table: str, wal) -> int:
        from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

        sealed = wal.sealed()
        done = self._committed(table)
        todo = [s for s in sealed if s > done]
        seen, records, logged = set(), [], 0
        for seq in todo:
            for batch_id, batch in wal.read(seq):
                logged += len(batch)
                if batch_id not in seen:  # the same batch twice in the log is written once
                    seen.add(batch_id)
                    records.extend(batch)
        if records:
            t = self.ll.lake.table(table)
            storage = self.ll.lake.storage_options or None
            props = CommitProperties(
                custom_metadata={"lakeloop.operation": "append",
                                 "lakeloop.logbook.segments": f"{todo[0]}-{todo[-1]}"},
                app_transactions=[Transaction(APP_ID.format(table=table), todo[-1])], max_commit_retries=20)
            write_deltalake(DeltaTable(t.uri, storage_options=storage), self._arrow(table, records),
                            mode="append", commit_properties=props, storage_options=storage)
        with self.lock:
            self.backlog[table] = max(0, self.backlog[table] - logged)
            self.written[table] += len(records)
        for seq in sealed:  # committed: forgotten once a retried batch can no longer arrive
            if seq in todo and not records:  # only torn lines: nothing was acknowledged
                wal.remove(seq)
            elif seq <= (todo[-1] if records else done) and (self._stop.is_set() or wal.age_s(seq) > _retain_s()):
                wal.remove(seq)
        return len(records)

    # -- status and shutdown -----------------------------------------------------------
    def stats(self) -> dict:
        with self.lock:
            backlog = dict(self.backlog)
        return {"written": dict(self.written), "pending": backlog, "errors": self.errors,
                "last_error": self.last_error}

    def close(self) -> dict:
        """Stop the timer and write everything to Delta (graceful shutdown)."""
        self._stop.set()
        self._due.set()
        if self._timer.is_alive():
            self._timer.join(timeout=30)
        written = self.flush()
        with self.lock:
            for wal in self.wal.values():
                wal.close()
        return written

    def __ray_shutdown__(self):  # Ray calls this when the actor exits gracefully
        self.close()


def _utc(value):
    """A record's time (a datetime, or its ISO text as read back from the write-ahead log) in UTC."""
    from datetime import datetime, timezone

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def _short(exc: BaseException) -> str:
    """An exception's type and first line, without a traceback (it goes into an HTTP answer)."""
    cause = getattr(exc, "cause", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first[:200]}"


def _retain_s() -> float:
    from lakeloop.serving.wal import RETAIN_S

    return RETAIN_S


def writer(ll: "Lakeloop"):
    """The detached writer actor of this lake (started if not running; restarted by Ray if it dies)."""
    import ray

    ll.ensure_ray()
    return ray.remote(Logbook).options(
        name=writer_name(ll.config.lake.root), namespace=ll.config.ray.namespace, lifetime="detached",
        get_if_exists=True, num_cpus=0.1, max_concurrency=8, max_restarts=-1,
    ).remote(ll.config.to_dict())


def stop_writer(ll: "Lakeloop") -> dict | None:
    """Flush and stop the writer actor, if it runs."""
    import ray

    ll.ensure_ray()
    try:
        actor = ray.get_actor(writer_name(ll.config.lake.root), namespace=ll.config.ray.namespace)
    except ValueError:
        return None
    written = ray.get(actor.close.remote())
    ray.kill(actor, no_restart=True)
    return written


def index_requests(requests: dict, table: str, records: list[dict]) -> None:
    """Add log records to ``{request_id: {model, version, rows, time, labelled}}`` (primary predictions, and
    the rows their labels name): what a label is checked against."""
    for r in records:
        if table == INFERENCE and r.get("route") != "primary":
            continue
        entry = requests.get(r["request_id"])
        if entry is None:
            if table != INFERENCE:
                continue
            entry = requests[r["request_id"]] = {
                "model": r.get("model"), "version": r.get("version"), "rows": 0, "time": str(r.get("time")),
                "labelled": set()}
        if table == INFERENCE:
            entry["rows"] = max(entry["rows"], int(r.get("row") or 0) + 1)
        else:
            entry["labelled"].add(int(r.get("row") or 0))


class LogShipper:
    """The ingress side: log records spooled on this node's disk, then shipped to the writer.

    ``await shipper.log(table, records)`` returns once the records are in this
    replica's spool (:mod:`lakeloop.serving.spool`, fsync'd), or raises
    :class:`~lakeloop.errors.ServiceUnavailableError` (answer 503 with
    ``Retry-After``) when ``max_waiting_rows`` rows are already spooled and not
    yet acknowledged by the writer. Concurrent calls share one write (group
    commit). A background task ships spooled batches to the writer, oldest
    first, retrying while the writer is dead, restarting or pushing back, and
    adopts the spool of a replica of this lake that died on this node.
    """

    def __init__(self, ll: "Lakeloop", max_waiting_rows: int = MAX_WAITING_ROWS, ack_timeout_s: float = ACK_TIMEOUT_S,
                 spool_root: str | Path | None = None):
        from lakeloop.serving.spool import Spool

        self.ll = ll
        self.max_waiting_rows, self.ack_timeout_s = max_waiting_rows, ack_timeout_s
        self.actor = None
        self.spool_root = Path(spool_root) if spool_root is not None else wal_root(ll) / "spool"
        self.spool = Spool(self.spool_root, TABLES)
        self.waiting: list[tuple[str, list[dict], asyncio.Future]] = []
        self.waiting_rows = 0
        self.task: asyncio.Task | None = None  # the group commit into the spool
        self.shipper: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self.sent = 0  # calls that reached the writer
        self.retries = 0
        self.adopted = 0  # batches shipped from the spools of replicas that died
        self.rejected = 0  # batches the writer refused for good (kept in <spool root>/rejected.jsonl)
        self.last_error: str | None = None

    def stats(self) -> dict:
        """This replica's side of the inference log (``/healthz`` shows it): rows in its spool that the writer
        has not acknowledged, rows waiting for the spool write, the limit past which predictions are answered
        503, calls that reached the writer, retries, batches adopted from dead replicas' spools and refused
        by the writer for good, and the last error."""
        return {"spooled_rows": self.spool.pending_rows, "waiting_rows": self.waiting_rows,
                "limit_rows": self.max_waiting_rows, "shipped_calls": self.sent, "retries": self.retries,
                "adopted_batches": self.adopted, "rejected_batches": self.rejected, "last_error": self.last_error}

    async def log(self, table: str, records: list[dict]) -> None:
        if not records:
            return
        if self.spool.pending_rows + self.waiting_rows + len(records) > self.max_waiting_rows:
            raise ServiceUnavailableError(
                f"{self.spool.pending_rows + self.waiting_rows} log rows are waiting for the inference log writer "
                f"(limit {self.max_waiting_rows}; last error: {self.last_error}); retry later",
                retry_after_s=RETRY_AFTER_S)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((table, records, future))
        self.waiting_rows += len(records)
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._run())
        self.start()
        await asyncio.shield(future)  # a cancelled request does not cancel the others' commit

    async def _run(self):
        while self.waiting:
            batch, self.waiting = self.waiting, []
            self.waiting_rows -= sum(len(r) for _, r, _ in batch)
            tables: dict[str, list] = {}
            for table, records, future in batch:
                tables.setdefault(table, []).append((records, future))
            for table, items in tables.items():
                records = [r for rs, _ in items for r in rs]
                batch_id = uuid.uuid4().hex
                try:
                    seq = await asyncio.to_thread(self.spool.write, table, batch_id, records)
                except Exception as exc:  # the disk: nothing was accepted
                    error = ServiceUnavailableError(f"the log spool could not be written ({_short(exc)}); retry",
                                                    retry_after_s=RETRY_AFTER_S)
                    for _, future in items:
                        if not future.done():
                            future.set_exception(error)
                    continue
                self.spool.track(table, seq, batch_id, records)
                for _, future in items:
                    if not future.done():
                        future.set_result(None)
            if self._wake is not None:
                self._wake.set()

    # -- shipping ------------------------------------------------------------------------
    def siblings(self) -> bool:
        """Whether another ingress replica on this node has a spool (alive, or dead and not yet adopted)."""
        from lakeloop.serving.spool import other_folders

        return bool(other_folders(self.spool_root, self.spool.folder))

    def spooled(self, request_id: str) -> dict | None:
        """A primary prediction still in the spool of another ingress replica on this node (alive, or dead and
        not yet adopted), as :meth:`Logbook.recent` gives it, or None. Blocking (reads files): run it in a
        thread. A sibling answers 2xx once the records are in its spool and removes them only after the
        writer has them, so a label for a request it answered is found here or at the writer, however late
        its shipper is (a fixed wait for the shipper once answered a served request's label with a 404).
        """
        from lakeloop.serving.spool import other_folders
        from lakeloop.serving.wal import read_segment, segment_numbers, segment_path

        needle = request_id.encode()
        found: dict[str, list] = {table: [] for table in TABLES}
        for folder in other_folders(self.spool_root, self.spool.folder):
            for table in TABLES:
                for seq in segment_numbers(Path(folder, table)):  # none: shipped and removed, or never written
                    path = segment_path(Path(folder, table), seq)
                    try:
                        if needle not in path.read_bytes():  # most segments: no JSON parsed
                            continue
                        batches = read_segment(path)
                    except OSError:  # removed meanwhile: its batches are with the writer
                        continue
                    for _, records in batches:
                        found[table] += [r for r in records if r.get("request_id") == request_id]
        requests: dict = {}
        for table in TABLES:  # the prediction first: a label in one sibling's spool names a row of another's
            index_requests(requests, table, found[table])
        entry = requests.get(request_id)
        return None if entry is None else {**entry, "labelled": sorted(entry["labelled"])}

    def start(self) -> None:
        """Start shipping (and adopting orphaned spools), if not running; call on the event loop (the ingress
        calls it before its first request)."""
        if self.shipper is None or self.shipper.done():
            self._wake = asyncio.Event()
            self.shipper = asyncio.get_running_loop().create_task(self._ship_forever())

    async def _ship_forever(self):
        """Ship the spool as it fills; look for orphaned spools at start and every ``SPOOL_SCAN_S``."""
        next_scan = 0.0
        while True:
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + SPOOL_SCAN_S
                try:
                    await self._adopt()
                except Exception as exc:  # kept for the next scan
                    self.last_error = _short(exc)
            group = self.spool.next_group(SHIP_ROWS)
            if group is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.01, next_scan - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
                continue
            table, batches = group
            await self._ship(table, batches)
            self.spool.acknowledged(len(batches))

    async def _adopt(self):
        """Ship and remove the spool folders of this lake's replicas that died on this node."""
        from lakeloop.serving.spool import orphans, read_folder, release

        for folder, fd in await asyncio.to_thread(orphans, self.spool_root, self.spool.folder):
            shipped = False
            try:
                entries = await asyncio.to_thread(read_folder, folder, TABLES)
                for table in TABLES:
                    mine = [(b, r) for t, b, r in entries if t == table and r]
                    for i in range(0, len(mine), SHIP_BATCHES):
                        chunk = mine[i:i + SHIP_BATCHES]
                        await self._ship(table, chunk)
                        self.adopted += len(chunk)
                shipped = True
            finally:
                release(folder, fd, remove=shipped)

    async def _ship(self, table: str, batches: list[tuple[str, list[dict]]]) -> None:
        """Batches to the writer, retried (same ids) until it takes them; refused for good: set aside."""
        import ray

        delay = 0.05
        while True:
            try:
                if self.actor is None:
                    self.actor = await asyncio.to_thread(writer, self.ll)
                await asyncio.wait_for(self.actor.log_many.remote(batches, table), self.ack_timeout_s)
                self.sent += 1
                return
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, LakeloopError) and not isinstance(cause, ServiceUnavailableError):
                    self._reject(table, batches, cause)  # e.g. records the table refuses: retrying cannot help
                    return
                self.last_error = _short(exc)  # back-pressure, or the writer failed on this call: retried
            except ray.exceptions.ActorDiedError as exc:  # killed for good: a new writer (get_if_exists)
                self.last_error, self.actor = _short(exc), None
            except (ray.exceptions.RayActorError, asyncio.TimeoutError) as exc:  # restarting: same handle
                self.last_error = _short(exc)
            except Exception as exc:  # e.g. the named actor vanished between lookups: look it up again
                self.last_error, self.actor = _short(exc), None
            self.retries += 1
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX_S, delay * 2)

    def _reject(self, table: str, batches: list, exc: BaseException) -> None:
        import json

        from lakeloop.serving.wal import _default

        self.rejected += len(batches)
        self.last_error = _short(exc)
        logging.getLogger("lakeloop.serving").error("the log writer refused %d batch(es) of %s: %s; kept in %s",
                                                    len(batches), table, self.last_error, self.spool_root)
        with open(self.spool_root / "rejected.jsonl", "a") as fh:
            for batch_id, records in batches:
                fh.write(json.dumps({"table": table, "batch": batch_id, "error": self.last_error,
                                     "records": records}, default=_default) + "\n")

    async def recent(self, request_id: str) -> dict | None:
        """The writer's :meth:`Logbook.recent`, retried while it restarts (it rebuilds its index from the
        write-ahead log); :class:`ServiceUnavailableError` when it cannot answer within the deadline."""
        import ray

        deadline = time.monotonic() + self.ack_timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                if self.actor is None:
                    self.actor = await asyncio.to_thread(writer, self.ll)
                return await asyncio.wait_for(self.actor.recent.remote(request_id), max(left, 0.1))
            except ray.exceptions.ActorDiedError as exc:
                last, self.actor = exc, None
            except (ray.exceptions.RayError, asyncio.TimeoutError, ValueError) as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(
                    f"the inference log writer cannot tell whether request id {request_id!r} was served "
                    f"({_short(last)}); retry the label", retry_after_s=RETRY_AFTER_S)
            await asyncio.sleep(0.2)

    async def drain(self, timeout_s: float = 20.0) -> None:
        """Graceful shutdown: what is spooled reaches the writer (within ``timeout_s``), then the spool closes.

        What the writer has not taken by then stays on disk and is adopted by another replica.
        """
        deadline = time.monotonic() + timeout_s
        if self.task is not None and not self.task.done():
            await asyncio.wait({self.task}, timeout=timeout_s)
        try:  # a replica that died here lately may not have been adopted yet: its records go first
            await asyncio.wait_for(self._adopt(), max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # left for the next replica to start here
            self.last_error = _short(exc)
        if self.spool.pending:
            self.start()
            self._wake.set()
            while self.spool.pending and time.monotonic() < deadline and not self.shipper.done():
                await asyncio.sleep(0.02)
        if self.shipper is not None:
            self.shipper.cancel()
        self.spool.close()
