"""The shared feature catalog: definitions and materialization runs, as lake tables.

``catalog.feature_views`` holds one row per applied version of each view (its
spec, definition hash, owner, description, tags, and the ``module:attr`` it
was loaded from); a changed definition becomes a new version and old ones
stay readable. ``catalog.entities`` holds entities. ``catalog.materializations``
records every run (source version read, feature table version written).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from lakeloop.errors import FeatureViewNotFoundError
from lakeloop.features.definitions import Entity, FeatureView

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.lake import Lake

VIEWS = "catalog.feature_views"
ENTITIES = "catalog.entities"
RUNS = "catalog.materializations"

VIEW_COLUMNS = {
    "name": {"type": "string", "required": True}, "version": "int64", "definition_hash": "string",
    "spec": "string", "description": "string", "owner": "string", "tags": "string", "online": "bool",
    "source": "string", "definitions_ref": "string", "applied_at": "timestamp",
}
ENTITY_COLUMNS = {"name": {"type": "string", "required": True}, "join_keys": "string",
                  "description": "string", "applied_at": "timestamp"}
RUN_COLUMNS = {
    "view": {"type": "string", "required": True}, "view_version": "int64", "definition_hash": "string",
    "mode": "string", "source_table": "string", "source_version": "int64", "table_version": "int64",
    "rows_written": "int64", "entities_recomputed": "int64", "newest_event_time": "timestamp",
    "started_at": "timestamp", "finished_at": "timestamp",
}
_DESCRIPTIVE = ("description", "owner", "tags", "online")


class Catalog:
    def __init__(self, lake: "Lake"):
        self.lake = lake

    def _table(self, name: str, columns: dict):
        return self.lake.create(name, columns, exist_ok=True)

    def _read(self, name: str) -> "pd.DataFrame":
        import pandas as pd

        t = self.lake.table(name)
        return t.to_pandas() if t.exists() else pd.DataFrame()

    # -- views -----------------------------------------------------------------
    def view_rows(self) -> "pd.DataFrame":
        """Every applied row (all versions), oldest first."""
        df = self._read(VIEWS)
        return df.sort_values("applied_at", kind="stable") if len(df) else df

    def latest(self, name: str) -> dict | None:
        df = self.view_rows()
        if df.empty:
            return None
        df = df[df["name"] == name]
        return None if df.empty else df.iloc[-1].to_dict()

    def applied(self, name: str) -> "pd.DataFrame":
        """Every applied row of one view, oldest first; a clear error when there is none."""
        df = self.view_rows()
        rows = df[df["name"] == name] if len(df) else df
        if rows.empty:
            raise FeatureViewNotFoundError(
                f"feature view {name!r} is not in the catalog; apply its definitions first "
                "(lakeloop features apply module:attr)")
        return rows

    def version(self, name: str, version: int | None = None) -> dict:
        rows = self.applied(name)
        if version is not None:
            rows = rows[rows["version"] == version]
            if rows.empty:
                raise FeatureViewNotFoundError(f"feature view {name!r} has no version {version}")
        return rows.iloc[-1].to_dict()

    def plan(self, definitions: list) -> list[dict]:
        """What :meth:`apply` would do for each definition, without doing it."""
        out = []
        for d in definitions:
            if isinstance(d, Entity):
                continue
            current = self.latest(d.name)
            if current is None:
                out.append({"view": d.name, "action": "create", "from_version": None, "to_version": 1,
                            "definition_hash": d.definition_hash, "changes": []})
                continue
            old_spec = json.loads(current["spec"])
            if current["definition_hash"] != d.definition_hash:
                new_spec = d.spec()
                changes = sorted(k for k in new_spec if new_spec.get(k) != old_spec.get(k))
                out.append({"view": d.name, "action": "new_version", "from_version": int(current["version"]),
                            "to_version": int(current["version"]) + 1,
                            "definition_hash": d.definition_hash, "changes": changes})
                continue
            changes = [k for k in _DESCRIPTIVE if _descriptive(d)[k] != _descriptive_row(current)[k]]
            action = "update" if changes else "unchanged"
            out.append({"view": d.name, "action": action, "from_version": int(current["version"]),
                        "to_version": int(current["version"]), "definition_hash": d.definition_hash,
                        "changes": changes})
        return out

    def apply(self, definitions: list, ref: str | None = None) -> list[dict]:
        import pandas as pd

        now = pd.Timestamp(datetime.now(timezone.utc))
        entities = [d for d in definitions if isinstance(d, Entity)]
        views = [d for d in definitions if isinstance(d, FeatureView)]
        for v in views:
            entities += [e for e in v.entities if e not in entities]
        if entities:
            known = self._read(ENTITIES)
            known = {} if known.empty else {r["name"]: r for r in known.to_dict("records")}
            new = [{"name": e.name, "join_keys": json.dumps(list(e.join_keys)), "description": e.description,
                    "applied_at": now} for e in entities
                   if e.name not in known or known[e.name]["join_keys"] != json.dumps(list(e.join_keys))
                   or known[e.name]["description"] != e.description]
            if new:
                self._table(ENTITIES, ENTITY_COLUMNS).append(pd.DataFrame(new))
        plan = self.plan(views)
        rows = []
        for v, step in zip(views, plan):
            if step["action"] == "unchanged":
                continue
            rows.append({"name": v.name, "version": step["to_version"], "definition_hash": v.definition_hash,
                         "spec": json.dumps(v.spec(), sort_keys=True), **_descriptive(v),
                         "tags": json.dumps(v.tags, sort_keys=True), "source": v.source,
                         "definitions_ref": ref, "applied_at": now})
        if rows:
            self._table(VIEWS, VIEW_COLUMNS).append(pd.DataFrame(rows))
        return plan

    def entities(self) -> list[dict]:
        df = self._read(ENTITIES)
        if df.empty:
            return []
        df = df.sort_values("applied_at").drop_duplicates("name", keep="last")
        return [{"name": r["name"], "join_keys": json.loads(r["join_keys"]), "description": r["description"]}
                for r in df.to_dict("records")]

    # -- runs --------------------------------------------------------------------
    def record_run(self, run: dict) -> None:
        import pandas as pd

        self._table(RUNS, RUN_COLUMNS).append(pd.DataFrame([run]))

    def runs(self, view: str | None = None) -> "pd.DataFrame":
        df = self._read(RUNS)
        if len(df) and view is not None:
            df = df[df["view"] == view]
        return df.sort_values("finished_at", kind="stable") if len(df) else df

    def last_run(self, view: str, definition_hash: str | None = None) -> dict | None:
        df = self.runs(view)
        if len(df) and definition_hash is not None:
            df = df[df["definition_hash"] == definition_hash]
        df = df[df["mode"] != "noop"] if len(df) else df
        return None if df.empty else df.iloc[-1].to_dict()


def _descriptive(v: FeatureView) -> dict:
    return {"description": v.description, "owner": v.owner, "tags": json.dumps(v.tags, sort_keys=True),
            "online": bool(v.online)}


def _descriptive_row(row: dict) -> dict:
    return {k: (bool(row[k]) if k == "online" else row[k]) for k in _DESCRIPTIVE}
