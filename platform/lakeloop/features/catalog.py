"""The shared feature catalog: definitions and materialization runs, as lake tables.

``catalog.feature_views`` holds one row per applied version of each view: the
whole definition as data (``spec``: :meth:`FeatureView.to_data`, a transform
by ``module:qualname`` and source hash), its definition hash, owner,
description, tags, and the ``module:attr`` it was applied from, if any. Any
process loads a view from it (:meth:`Catalog.load`) without the project's
module; a changed definition becomes a new version and old ones stay
loadable. ``catalog.entities`` holds entities. ``catalog.materializations``
records every run (source version read, feature table version written).

:meth:`Catalog.revision` (the Delta version of ``catalog.feature_views``) tells
cheaply whether any definition changed; the rows are read again only then.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from lakeloop.errors import DefinitionError, FeatureViewNotFoundError, TableNotFoundError, WriteConflictError
from lakeloop.features.definitions import DATA_FORMAT, Entity, FeatureView, check_transform, load_definitions

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
APPLY_ATTEMPTS = 5  # plans made again after another apply took the versions this one planned


class Catalog:
    def __init__(self, lake: "Lake"):
        self.lake = lake
        self._views_log = None  # a DeltaTable of VIEWS, brought up to date incrementally
        self._rows: tuple[int, "pd.DataFrame", dict[str, list[dict]]] | None = None  # (revision, rows, by name)

    def __getstate__(self) -> dict:  # a DeltaTable handle does not travel
        return {**self.__dict__, "_views_log": None, "_rows": None}

    def _table(self, name: str, columns: dict):
        return self.lake.create(name, columns, exist_ok=True)

    def _read(self, name: str) -> "pd.DataFrame":
        import pandas as pd

        t = self.lake.table(name)
        return t.to_pandas() if t.exists() else pd.DataFrame()

    # -- views -----------------------------------------------------------------
    def revision(self) -> int:
        """The catalog's definitions revision: the Delta version of ``catalog.feature_views`` (-1 before any).

        It changes exactly when an apply recorded something (a new version or a
        descriptive update), whichever process did it. Cheap to ask (the log is
        followed incrementally: ~2 ms on a local lake), so a cache of view
        shapes can check it before each use and reload only when it moved.
        """
        if self._views_log is None:
            try:
                self._views_log = self.lake.table(VIEWS)._delta(check=False)
            except TableNotFoundError:
                return -1
        else:
            self._views_log.update_incremental()
        return int(self._views_log.version())

    def view_rows(self) -> "pd.DataFrame":
        """Every applied row (all versions), by version and time; read again only when :meth:`revision` moved."""
        return self._current()[1]

    def _current(self) -> tuple[int, "pd.DataFrame", dict[str, list[dict]]]:
        """(revision, rows, rows by view name by version and time), read once per revision."""
        import pandas as pd

        revision = self.revision()
        if self._rows is not None and self._rows[0] == revision:
            return self._rows
        df = self.lake.table(VIEWS).to_pandas(version=revision) if revision >= 0 else pd.DataFrame()
        # by version, then time: a view's last row is its latest version (as described last); an apply that lost a
        # race to record a version and took the next one may have started, so stamped its rows, first
        df = df.sort_values(["version", "applied_at"], kind="stable").reset_index(drop=True) if len(df) else df
        by_name: dict[str, list[dict]] = {}
        for r in df.to_dict("records"):
            by_name.setdefault(r["name"], []).append(r)
        self._rows = (revision, df, by_name)
        return self._rows

    def view_hashes(self) -> dict[str, dict]:
        """Each view's latest ``{"version", "definition_hash"}`` (from the cached rows; see :meth:`revision`)."""
        return {name: {"version": int(rows[-1]["version"]), "definition_hash": rows[-1]["definition_hash"]}
                for name, rows in self._current()[2].items()}

    def load(self, row: dict) -> FeatureView:
        """The :class:`FeatureView` a catalog row holds, built from its stored data (no user module needed).

        A transform comes back as a :class:`~lakeloop.features.definitions.TransformRef`,
        imported and checked only when the view is materialized. Rows applied
        before the catalog stored views as data load through their ``module:attr``.
        """
        name, version = row["name"], int(row["version"])
        data = json.loads(row["spec"])
        if data.get("format") == DATA_FORMAT:
            view = FeatureView.from_data(data, description=row["description"], owner=row["owner"],
                                         tags=json.loads(row["tags"] or "{}"), online=bool(row["online"]))
        elif row.get("definitions_ref"):
            found = [d for d in load_definitions(row["definitions_ref"])
                     if isinstance(d, FeatureView) and d.name == name]
            if not found:
                raise FeatureViewNotFoundError(f"feature view {name!r} version {version} was applied from "
                                               f"{row['definitions_ref']}, which no longer defines it; re-apply it")
            view = found[0]
        else:
            raise FeatureViewNotFoundError(
                f"feature view {name!r} version {version} was applied by an older lakeloop that did not store it "
                "in a loadable form; re-apply its definitions once (lakeloop features apply module:attr)")
        if view.definition_hash != row["definition_hash"]:
            raise DefinitionError(
                f"feature view {name!r} version {version} as loaded here hashes to {view.definition_hash}, not the "
                f"applied {row['definition_hash']}" + (
                    f" (its module {row['definitions_ref']} changed since)" if data.get("format") != DATA_FORMAT
                    else " (the catalog row was written by another lakeloop version)")
                + "; re-apply its definitions (lakeloop features plan shows the change)")
        return view

    def latest(self, name: str) -> dict | None:
        rows = self._current()[2].get(name)
        return dict(rows[-1]) if rows else None

    def applied(self, name: str) -> "pd.DataFrame":
        """Every applied row of one view, by version and time; a clear error when there is none."""
        df = self.view_rows()
        rows = df[df["name"] == name] if len(df) else df
        if rows.empty:
            raise FeatureViewNotFoundError(
                f"feature view {name!r} is not in the catalog; apply its definitions first "
                "(lakeloop features apply module:attr)")
        return rows

    def version(self, name: str, version: int | None = None) -> dict:
        """The catalog row of one version of a view (default: its latest row)."""
        rows = self._current()[2].get(name)
        if not rows:
            self.applied(name)  # its clear error
        if version is not None:
            rows = [r for r in rows if int(r["version"]) == int(version)]
            if not rows:
                raise FeatureViewNotFoundError(f"feature view {name!r} has no version {version}")
        return dict(rows[-1])

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
            if old_spec.get("docs") != d.to_data()["docs"]:
                changes.append("docs")  # descriptions of its entities or features
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
        for v in views:  # before anything is written: a transform other processes cannot import is refused
            check_transform(v)
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
        written: dict[str, dict] = {}  # view name -> the step that wrote its row
        for attempt in range(APPLY_ATTEMPTS):
            now = now if attempt == 0 else pd.Timestamp(datetime.now(timezone.utc))
            pending = [v for v in views if v.name not in written]
            plan = dict(zip([v.name for v in pending], self.plan(pending)))
            rows = [{"name": v.name, "version": plan[v.name]["to_version"], "definition_hash": v.definition_hash,
                     "spec": json.dumps(v.to_data(), sort_keys=True), **_descriptive(v),
                     "tags": json.dumps(v.tags, sort_keys=True), "source": v.source,
                     "definitions_ref": ref, "applied_at": now}
                    for v in pending if plan[v.name]["action"] != "unchanged"]
            if rows:
                result = self._table(VIEWS, VIEW_COLUMNS).insert_missing(pd.DataFrame(rows), _claim(rows, plan))
                if result.metrics.get("num_target_rows_inserted") != len(rows):
                    # another apply recorded a version of some of these views since they were planned: the rows
                    # that went in are done; the others are planned again against what it wrote (a version is never
                    # recorded twice)
                    now_rows = self._current()[2]
                    written.update({r["name"]: plan[r["name"]] for r in rows
                                    if any(o["applied_at"] == now and int(o["version"]) == r["version"]
                                           for o in now_rows.get(r["name"], []))})
                    continue
            written.update(plan)
            return [written[v.name] for v in views]
        raise WriteConflictError(f"feature views {sorted(v.name for v in views if v.name not in written)}: other "
                                 f"applies recorded new versions {APPLY_ATTEMPTS} times while this one planned; "
                                 "apply again")

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


def _claim(rows: list[dict], plan: dict[str, dict]) -> str:
    """The MERGE predicate under which a planned row is not written: its view has, by now, a row at the version it
    creates, or (a descriptive update of version N) a row of a later version. View names are identifiers."""
    floors = " OR ".join(f"(s.name = '{r['name']}' AND t.version >= "
                         f"{r['version'] + (plan[r['name']]['action'] == 'update')})" for r in rows)
    return f"t.name = s.name AND ({floors})"


def _descriptive(v: FeatureView) -> dict:
    return {"description": v.description, "owner": v.owner, "tags": json.dumps(v.tags, sort_keys=True),
            "online": bool(v.online)}


def _descriptive_row(row: dict) -> dict:
    return {k: (bool(row[k]) if k == "online" else row[k]) for k in _DESCRIPTIVE}
