"""``logs.events``: what happened to a model, one row per event, appended by anyone.

Monitors write ``drift_detected``, ``alert`` and ``retrain_submitted``; the
retrain job (:mod:`lakeloop.retrain`) writes ``retrain_started``,
``materialized``, ``challenger_registered``, ``gate_failed``,
``canary_started``, ``canary_verdict``, ``promoted``, ``rolled_back`` and
``retrain_failed`` through the same :func:`record_event`.

>>> record_event(ll, "promoted", "fraud", version=4, reason="canary passed")   # doctest: +SKIP
>>> read_events(ll, "fraud", kinds=["promoted"]).iloc[0]["version"]                  # doctest: +SKIP
4

An event id makes a write idempotent where the writer may repeat itself
(a restarted monitor re-records the events of its last window by id).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from lakeloop.errors import EventError

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop

EVENTS = "logs.events"
EVENT_COLUMNS = {
    "event_id": {"type": "string", "required": True}, "time": "timestamp", "model": "string", "version": "int64",
    "kind": "string", "reason": "string", "details": "string", "source": "string",
}
KINDS = ("drift_detected", "alert", "retrain_submitted", "retrain_started", "materialized", "challenger_registered",
         "retrain_failed", "gate_failed", "canary_started", "canary_verdict", "promoted", "rolled_back",
         "feedback_corrected")  # the last: an audited change of a label (serving/feedback.py)
# events after which a submitted retrain is no longer in flight
RESOLVING = ("retrain_failed", "gate_failed", "promoted", "rolled_back")


def ensure_table(ll: "Lakeloop"):
    return ll.lake.create(EVENTS, EVENT_COLUMNS, exist_ok=True,
                          description="what happened to each model: drift, alerts, retrains, promotions, rollbacks")


def make_event(kind: str, model: str, *, version: int | None = None, reason: str = "",
               details: Mapping[str, Any] | None = None, source: str = "sdk", event_id: str | None = None,
               time: datetime | None = None) -> dict:
    """One event row, checked (the kind must be one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise EventError(f"unknown event kind {kind!r}; the kinds are {', '.join(KINDS)}")
    if not isinstance(model, str) or not model:
        raise EventError(f"an event needs the model's name, got {model!r}")
    try:
        details_json = json.dumps(dict(details or {}), default=str, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise EventError(f"event details must be a JSON-able mapping: {exc}") from exc
    return {"event_id": event_id or uuid.uuid4().hex, "time": time or datetime.now(timezone.utc), "model": model,
            "version": None if version is None else int(version), "kind": kind, "reason": str(reason or ""),
            "details": details_json, "source": source}


def append(ll: "Lakeloop", rows: Iterable[dict]) -> int:
    """Append checked event rows in one commit; returns how many."""
    import pandas as pd

    rows = list(rows)
    if not rows:
        return 0
    table = ensure_table(ll)
    frame = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    frame["version"] = frame["version"].astype("Int64")
    table.append(frame)
    return len(rows)


def record_event(ll: "Lakeloop", kind: str, model: str, *, version: int | None = None, reason: str = "",
                 details: Mapping[str, Any] | None = None, source: str = "sdk", event_id: str | None = None) -> dict:
    """Append one event to ``logs.events`` and return it (``details`` as a dict)."""
    row = make_event(kind, model, version=version, reason=reason, details=details, source=source,
                     event_id=event_id)
    append(ll, [row])
    return {**row, "details": json.loads(row["details"])}


def read_events(ll: "Lakeloop", model: str | None = None, *, kinds: Iterable[str] | None = None,
           since: datetime | None = None, limit: int | None = None) -> "pd.DataFrame":
    """Events newest first, optionally for one model, some kinds, after a time."""
    import pandas as pd

    table = ll.lake.table(EVENTS)
    if not table.exists():
        return pd.DataFrame(columns=list(EVENT_COLUMNS))
    filters = []
    if model is not None:
        filters.append(("model", "=", model))
    kinds = list(kinds) if kinds is not None else None
    if kinds:
        filters.append(("kind", "in", kinds))
    df = table.to_pandas(filters=filters or None)
    if since is not None:
        df = df[df["time"] > pd.Timestamp(since)]
    df = df.sort_values(["time", "event_id"], ascending=False, kind="stable").reset_index(drop=True)
    return df.head(limit) if limit is not None else df


def existing_ids(ll: "Lakeloop", ids: Iterable[str]) -> set[str]:
    """Which of these event ids are already in ``logs.events``."""
    ids = list(ids)
    table = ll.lake.table(EVENTS)
    if not ids or not table.exists():
        return set()
    found = table.to_arrow(columns=["event_id"], filters=[("event_id", "in", ids)])
    return set(found.column("event_id").to_pylist())


def as_records(frame: "pd.DataFrame") -> list[dict]:
    """Event rows as JSON-able dicts (details parsed, time in ISO 8601)."""
    import pandas as pd

    out = []
    for row in frame.to_dict(orient="records"):
        row["time"] = None if pd.isna(row.get("time")) else row["time"].isoformat()
        row["version"] = None if pd.isna(row.get("version")) else int(row["version"])
        try:
            row["details"] = json.loads(row["details"]) if row.get("details") else {}
        except ValueError:
            pass
        out.append(row)
    return out
