"""The inference log: every prediction to ``logs.inference``, every label to ``logs.feedback``.

Replicas hand records to one detached writer actor per lake, which batches
them and appends to Delta when ``flush_rows`` records are waiting or
``flush_s`` seconds have passed, and on ``close()`` (graceful shutdown), so
nothing accepted is lost. Writes are single Delta commits; a failed write
keeps its records for the next attempt.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lakeloop.client import Lakeloop

INFERENCE = "logs.inference"
FEEDBACK = "logs.feedback"
INFERENCE_COLUMNS = {
    "request_id": {"type": "string", "required": True}, "row": "int64", "time": "timestamp",
    "model": "string", "version": "int64", "route": "string", "features": "string", "output": "string",
    "prediction": "string", "latency_ms": "float64", "error": "string",
}
FEEDBACK_COLUMNS = {"request_id": {"type": "string", "required": True}, "row": "int64",
                    "label": "string", "time": "timestamp"}


def writer_name(lake_root: str) -> str:
    return "lakeloop-logbook-" + hashlib.sha256(lake_root.encode()).hexdigest()[:10]


class Logbook:
    """The batching writer (runs as a Ray actor; plain class for tests and in-process use)."""

    def __init__(self, config: dict, flush_rows: int = 500, flush_s: float = 1.0):
        import lakeloop

        self.ll = lakeloop.connect(config)
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.pending: dict[str, list[dict]] = {INFERENCE: [], FEEDBACK: []}
        self.lock = threading.Lock()
        self.written = {INFERENCE: 0, FEEDBACK: 0}
        self.last_flush = time.monotonic()
        self.errors = 0
        self.ll.lake.create(INFERENCE, INFERENCE_COLUMNS, exist_ok=True,
                            description="every prediction served: request, version, route, features, output")
        self.ll.lake.create(FEEDBACK, FEEDBACK_COLUMNS, exist_ok=True, description="ground-truth labels by request")
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._tick, daemon=True)
        self._timer.start()

    def _tick(self):
        while not self._stop.wait(self.flush_s / 2):
            if time.monotonic() - self.last_flush >= self.flush_s:
                self.flush()

    def log(self, records: list[dict], table: str = INFERENCE) -> int:
        with self.lock:
            self.pending[table].extend(records)
            due = len(self.pending[table]) >= self.flush_rows
        if due:
            self.flush()
        return len(records)

    def flush(self) -> dict:
        """Write everything waiting; returns rows written per table."""
        import pandas as pd

        out = {}
        with self.lock:
            batches = {t: rows for t, rows in self.pending.items() if rows}
            self.pending = {INFERENCE: [], FEEDBACK: []}
            self.last_flush = time.monotonic()
        for table, rows in batches.items():
            try:
                self.ll.lake.table(table).append(pd.DataFrame(rows))
            except Exception:
                self.errors += 1
                with self.lock:  # keep them for the next flush
                    self.pending[table] = rows + self.pending[table]
                raise
            self.written[table] += len(rows)
            out[table] = len(rows)
        return out

    def stats(self) -> dict:
        with self.lock:
            waiting = {t: len(r) for t, r in self.pending.items()}
        return {"written": dict(self.written), "pending": waiting, "errors": self.errors}

    def close(self) -> dict:
        self._stop.set()
        return self.flush()

    def __ray_shutdown__(self):  # Ray calls this when the actor exits gracefully
        self.close()


def writer(ll: "Lakeloop"):
    """The detached writer actor of this lake (started if not running)."""
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
