"""``ll.features``: apply definitions, materialize them, build training frames, serve online values."""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from lakeloop.errors import (
    DefinitionError,
    NotMaterializedError,
    SchemaError,
)
from lakeloop.features import materialize as mat
from lakeloop.features.catalog import Catalog
from lakeloop.features.definitions import FeatureView, check_transform, load_definitions, utc_timestamp
from lakeloop.features.frame import TrainingFrame
from lakeloop.features.pit import KNOWN_AT, KNOWN_UNTIL, FeatureIndex
from lakeloop.lake.schema import TableSchema

if TYPE_CHECKING:
    from datetime import datetime

    import pandas as pd

    from lakeloop.client import Lakeloop

DEFAULT_TIMESTAMP = "event_timestamp"
RAY_ENGINE_ROWS = 5_000_000  # entity rows from which training_frame joins on Ray Data by default
KNOWN_TIME_WARN_SHARE = 0.5  # training_frame warns when known time nulls more rows than this share
_LOST = "__lakeloop_known_time_lost"


class FeatureStore:
    """Feature views defined once in Python, served offline (training frames) and online."""

    def __init__(self, ll: "Lakeloop"):
        self.ll = ll
        self.lake = ll.lake
        self.catalog = Catalog(ll.lake)
        self._views: dict[str, FeatureView] = {}  # by definition hash: applied here or loaded from the catalog

    # -- definitions ---------------------------------------------------------------
    def plan(self, definitions: str | Iterable) -> list[dict]:
        """What :meth:`apply` would change: create, new_version, update or unchanged per view.

        The same checks as apply run first: each view against its source's
        columns (when the table exists) and its transform for importability.
        """
        defs = load_definitions(definitions)
        self._check_definitions(defs)
        return self.catalog.plan(defs)

    def apply(self, definitions: str | Iterable) -> list[dict]:
        """Register definitions (``module:attr`` or objects); a changed definition gets a new version.

        The catalog stores them as data (a transform by importable reference
        and source hash), so every process loads them from there: materialize,
        training frames, rebuilds, jobs and the CLI need no user module.
        """
        defs = load_definitions(definitions)
        self._check_definitions(defs)
        plan = self.catalog.apply(defs, ref=definitions if isinstance(definitions, str) else None)
        for d in defs:
            if isinstance(d, FeatureView):
                self._views[d.definition_hash] = d
        return plan

    def _check_definitions(self, defs) -> None:
        """Each view against its source table, now rather than at materialize (the source may not exist yet)."""
        for d in defs:
            if not isinstance(d, FeatureView):
                continue
            check_transform(d)
            self.lake.table_uri(d.source)  # the name is valid
            source = self.lake.table(d.source)
            if source.exists():
                d.against_source(_columns(source.schema))

    def view(self, name: str, version: int | None = None) -> FeatureView:
        """The applied definition of ``name`` (its latest version, or ``version``), loaded from the catalog.

        The catalog holds each version as data, so this works in any process;
        a definition applied by this process is reused as it is. A transform
        comes as a reference, imported and checked when the view is materialized.
        """
        row = self.catalog.version(name, version)
        digest = row["definition_hash"]
        view = self._views.get(digest)
        if view is None or view.name != name:
            view = self.catalog.load(row)
            self._views[digest] = view
        return view

    def list(self) -> list[dict]:
        """Every view's latest version with its freshness."""
        df = self.catalog.view_rows()
        if df.empty:
            return []
        return [self.describe(name) for name in sorted(df["name"].unique())]

    def describe(self, name: str) -> dict:
        """Owner, description, schema, source, versions, and freshness of one view."""
        applied = self.catalog.applied(name)  # each catalog table is read once here
        row = applied.iloc[-1].to_dict()
        spec = json.loads(row["spec"])
        table = self.lake.table(f"features.{name}")
        runs = self.catalog.runs(name)
        done = runs[runs["mode"] != "noop"] if len(runs) else runs
        last = None if done.empty else done.iloc[-1]
        info = {
            "name": name, "version": int(row["version"]), "definition_hash": row["definition_hash"],
            "description": row["description"], "owner": row["owner"], "tags": json.loads(row["tags"] or "{}"),
            "online": bool(row["online"]), "source": row["source"], "entities": spec["entities"],
            "timestamp_field": spec["timestamp_field"], "ttl": spec["ttl"], "features": spec["features"],
            "transform": spec.get("transform") if isinstance(spec.get("transform"), dict) else None,
            "versions": sorted(int(v) for v in applied["version"].unique()),
            "table": table.name, "schema": None, "last_materialized_source_version": None,
            "table_version": None, "newest_event_time": None, "last_run": None, "last_run_mode": None,
        }
        if table.exists():
            info["schema"] = {c.name: c.type for c in table.schema.columns}
            info["table_version"] = table.version()
            # a dtype left to the source column: the type it was materialized with
            info["features"] = [{**f, "dtype": info["schema"].get(f["name"])}
                                if f["kind"] == "feature" and f.get("dtype") is None else f
                                for f in info["features"]]
        if last is not None:
            info["last_materialized_source_version"] = int(last["source_version"])
            info["newest_event_time"] = last["newest_event_time"]
        if len(runs):
            info["last_run"] = runs.iloc[-1]["finished_at"]
            info["last_run_mode"] = runs.iloc[-1]["mode"]
        return info

    # -- materialization ------------------------------------------------------------
    def materialize(self, name: str, *, full: bool = False, refresh_online: bool = True,
                    source_version: int | None = None, engine: str = "ray") -> mat.MaterializeResult:
        """Bring ``features.<name>`` up to the source's latest version (incremental when it can).

        Runs on Ray Data. A second run on an unchanged source is a no-op. With
        ``refresh_online`` the online store (if running) picks up the new values.
        ``source_version`` pins the source version to compute from (a job that
        reads several tables at one snapshot); a view already past it is left as it is.
        ``engine="local"`` computes in this process instead of on Ray Data (small sources).
        """
        if engine not in ("ray", "local"):
            raise ValueError(f"engine must be ray or local, not {engine!r}")
        self._engine = engine
        result, changed = self._materialize(name, full=full, pinned=source_version)
        if refresh_online and result.mode != "noop":
            from lakeloop.features import online

            online.notify(self.ll, name, changed)
        return result

    def materialize_many(self, names: Sequence[str], *, refresh_online: bool = True, engine: str = "ray"
                         ) -> dict[str, mat.MaterializeResult]:
        """Materialize several views from one pinned version of each source table (a consistent snapshot)."""
        pinned: dict[str, int] = {}
        out = {}
        for name in names:
            source = self.view(name).source
            if source not in pinned:
                pinned[source] = self.lake.table(source).version()
            out[name] = self.materialize(name, refresh_online=refresh_online, source_version=pinned[source],
                                         engine=engine)
        return out

    def _materialize(self, name: str, *, full: bool, pinned: int | None = None):
        import pandas as pd

        started = pd.Timestamp(mat.now_utc())
        t0 = time.perf_counter()
        row = self.catalog.version(name)
        applied_hash = row["definition_hash"]
        view = self.view(name, int(row["version"]))
        source = self.lake.table(view.source)
        source_version = source.version() if pinned is None else int(pinned)
        target = self.lake.table(view.table)
        last = self.catalog.last_run(name, applied_hash)
        view = view.against_source(_columns(source.schema))  # dtypes settled (checked at apply when it could be)
        schema = TableSchema.build(mat.feature_schema(view, source.schema))
        if last is not None and target.exists() and target.schema != schema:
            last = None  # the table's shape changed with the definition: rebuild it
        prev = None if (full or last is None or not target.exists()) else int(last["source_version"])

        changed = None
        entities = None
        if prev is not None and prev >= source_version:
            # unchanged source, or already past the pinned version: nothing to do
            mode, table_version, written, source_version = "noop", target.version(), 0, prev
        elif prev is None:
            rows = mat.read_source(source, source_version)
            computed = self._compute(view, rows)
            arrow = mat.to_feature_arrow(view, computed, schema)
            self.lake.create(view.table, schema, exist_ok=True,
                             description=f"features of view {name} (materialized from {view.source})")
            # the whole content in one commit; a changed definition may change the columns too
            table_version = target.overwrite(arrow, schema=schema).version
            mode, written, changed = "full", arrow.num_rows, None
        else:
            mode = "incremental"
            table_version, written, entities, changed = self._incremental(view, source, prev, source_version,
                                                                          target, schema)
        newest = None
        if target.exists():
            ts = target.to_arrow(columns=[view.timestamp_field]).column(0)
            newest = pc.max(ts).as_py() if len(ts) else None
        result = mat.MaterializeResult(name, int(row["version"]), mode, view.source, source_version, prev,
                                       table_version, written, entities, round(time.perf_counter() - t0, 3))
        self.catalog.record_run({
            "view": name, "view_version": int(row["version"]), "definition_hash": applied_hash,
            "mode": mode, "source_table": view.source, "source_version": source_version,
            "table_version": table_version, "rows_written": written, "entities_recomputed": entities,
            "newest_event_time": pd.Timestamp(newest) if newest is not None else None,
            "started_at": started, "finished_at": pd.Timestamp(mat.now_utc()),
        })
        return result, changed

    def _compute(self, view, rows):
        view = view.with_code()  # the transform imported and checked here, on the driver, before any task runs
        if getattr(self, "_engine", "ray") == "local":
            return mat.compute(view, rows)
        return mat.compute_on_ray(view, rows, self.lake)

    def _incremental(self, view, source, prev: int, version: int, target, schema):
        import pandas as pd
        from deltalake import write_deltalake

        changes = mat.read_source(source, version, since=prev)
        keys, ts = view.join_keys, view.timestamp_field
        if changes.empty:
            return target.version(), 0, 0, changes
        append_only = changes["_change_type"].eq("insert").all() and not view.aggregations
        if append_only:
            rows = mat.row_versions(changes, mat.history_commits(source, version))
            computed = self._compute(view, rows)
            arrow = mat.to_feature_arrow(view, computed, schema)
            return target.append(arrow).version, arrow.num_rows, int(computed[keys].drop_duplicates().shape[0]), computed
        # recompute the affected entities from their earliest changed event minus the longest window
        affected = changes[keys].dropna().drop_duplicates()
        since = pd.Timestamp(changes[ts].min())
        window_start = since - view.max_window
        # rows before the window start cannot change any recomputed value; the feed is filtered
        # on the event time, which an add and its later removal share, so the reconciliation holds
        history = mat.read_source(source, version, predicate=f"`{ts}` >= '{_iso(window_start)}'")
        history = history[history[ts] >= window_start]
        history = history.merge(affected, on=keys, how="inner")
        computed = self._compute(view, history)
        computed = computed[computed[ts] >= since]
        arrow = mat.to_feature_arrow(view, computed, schema)
        predicate = _replace_predicate(affected, keys, ts, since)

        def replace(dt, props):
            write_deltalake(dt, arrow, mode="overwrite", predicate=predicate, commit_properties=props,
                            storage_options=self.lake.storage_options or None)

        result = target._commit("replace", replace, arrow.num_rows, None)
        return result.version, arrow.num_rows, len(affected), computed

    # -- training frames ----------------------------------------------------------------
    def training_frame(
        self,
        entities: "pd.DataFrame | str",
        features: Sequence[str],
        *,
        timestamp_column: str | None = None,
        known_time: bool = True,
        entities_version: int | None = None,
        feature_versions: dict[str, int] | None = None,
        full_feature_names: bool = False,
        format: str = "frame",
        engine: str = "auto",
        since: "datetime | str | None" = None,
        view_versions: dict[str, int] | None = None,
    ):
        """Point-in-time-correct features for each (entity keys, timestamp) row.

        ``entities`` is a DataFrame or a lake table name (read at
        ``entities_version``). ``features`` are refs ``"view:feature"`` or
        ``"view:*"``. A row gets, per view, the newest feature row whose event
        time is at or before its timestamp and within the view's ttl; with
        ``known_time`` (default) the version the lake held at that timestamp
        (what the view computed from the source as of then gives), so deletes,
        upserts and backfills committed later cannot leak into the past; a
        :class:`~lakeloop.errors.KnownTimeWarning` says when that empties most
        rows (undeclared history). Tables are read at one pinned set of versions
        (:meth:`snapshot`, in the lineage). Returns a :class:`TrainingFrame`
        (``format="frame"``), or ``"pandas"``, ``"arrow"``, ``"ray"`` (a Ray
        Dataset, joined block by block and never gathered on the driver).
        ``engine="ray"`` runs the join on Ray Data blocks (the default for
        ``format="ray"`` and for frames of ``RAY_ENGINE_ROWS`` rows or more);
        ``"local"`` runs it in this process (a parallel kernel). ``since`` keeps
        only entity rows at or after that time (a retrain on the newest data); it
        is part of the lineage, so the frame can be rebuilt. ``view_versions``
        joins with those catalog versions of the views' definitions (keys,
        timestamp, features, ttl) instead of the latest: :meth:`rebuild_frame`
        passes the ones recorded at training time.
        """
        import pandas as pd

        by_view = _parse_refs(features)
        snap = self.snapshot(list(by_view), entities if isinstance(entities, str) else None,
                             feature_versions=feature_versions, entities_version=entities_version,
                             view_versions=view_versions)
        entity_lineage: dict[str, Any]
        if isinstance(entities, str):
            version = snap["entities_version"]
            entity_df = self.lake.table(entities).to_pandas(version=version)
            entity_lineage = {"table": entities, "version": version}
        else:
            entity_df = entities.reset_index(drop=True)
            digest = hashlib.sha256(pd.util.hash_pandas_object(entity_df, index=False).to_numpy().tobytes())
            entity_lineage = {"table": None, "rows": len(entity_df), "hash": digest.hexdigest()[:16]}
        ts_col = timestamp_column or _guess_timestamp(entity_df)
        if ts_col not in entity_df.columns:
            raise SchemaError(f"entity rows have no timestamp column {ts_col!r}; pass timestamp_column=")
        entity_df = entity_df.copy()
        entity_df[ts_col] = pd.to_datetime(entity_df[ts_col], utc=True)
        if since is not None:
            cutoff = utc_timestamp(since)
            entity_df = entity_df[entity_df[ts_col] >= cutoff].reset_index(drop=True)
            entity_lineage["since"] = cutoff.isoformat()
        query = pa.Table.from_pandas(entity_df, preserve_index=False)

        plans = []  # per view: its feature index and which columns it adds under which names
        views_lineage = {}
        all_features: list[str] = list(query.column_names)
        entity_keys: list[str] = []
        for name, wanted in by_view.items():
            row = self.catalog.version(name, (view_versions or {}).get(name))
            view = self.view(name, int(row["version"]))
            missing_keys = [k for k in view.join_keys if k not in entity_df.columns]
            if missing_keys:
                raise SchemaError(f"entity rows lack join key(s) {missing_keys} of view {name!r}")
            entity_keys += [k for k in view.join_keys if k not in entity_keys]
            cols = view.feature_names if wanted == ["*"] else wanted
            unknown = [c for c in cols if c not in view.feature_names]
            if unknown:
                raise DefinitionError(f"view {name!r} has no feature(s) {unknown}; it has {view.feature_names}")
            table = self.lake.table(view.table)
            pin = snap["views"][name]
            version = pin["table_version"]
            stored = table._delta(version).schema().to_arrow()
            stored_names = [f.name for f in stored]
            extra = [KNOWN_UNTIL] if KNOWN_UNTIL in stored_names else []
            feats = table.to_arrow(version=version,
                                   columns=view.join_keys + [view.timestamp_field, KNOWN_AT] + extra + cols)
            names = {c: f"{name}__{c}" if full_feature_names else c for c in cols}
            for out in names.values():
                if out in all_features:
                    raise SchemaError(f"feature column {out!r} collides with another column; use full_feature_names=True")
                all_features.append(out)
            ttl = view.ttl_delta
            plans.append({"index": FeatureIndex(feats, keys=view.join_keys, ts=view.timestamp_field, columns=cols,
                                                presorted=True, known_time=known_time),
                          "names": names, "ttl_us": None if ttl is None else int(ttl.total_seconds() * 1_000_000)})
            views_lineage[name] = {
                "view_version": int(row["version"]), "definition_hash": row["definition_hash"],
                "table": view.table, "table_version": int(version), "source": view.source,
                "source_version": pin["source_version"], "features": list(cols),
            }
            if pin.get("history_versions"):
                views_lineage[name]["history_versions"] = pin["history_versions"]
        all_features = all_features[query.num_columns:]
        lineage = {"entities": entity_lineage, "timestamp_column": ts_col, "views": views_lineage,
                   "known_time": known_time, "full_feature_names": full_feature_names,
                   "feature_refs": list(features), "snapshot": snap["tables"]}
        if engine == "auto":
            engine = "ray" if format == "ray" or query.num_rows >= RAY_ENGINE_ROWS else "local"
        if engine == "ray":
            ds = self._join_on_ray(query, plans, ts_col, known_time)
            if format == "ray":
                return ds.drop_columns([_LOST]) if known_time else ds
            arrow = pa.concat_tables(ray_blocks(ds)) if query.num_rows else _join(query, plans, ts_col, known_time)
        elif engine == "local":
            arrow = _join(query, plans, ts_col, known_time)
        else:
            raise ValueError(f"engine must be auto, local or ray, not {engine!r}")
        if known_time:
            lost = arrow.column(_LOST)
            arrow = arrow.drop_columns([_LOST])
            _warn_if_mostly_unknown(int(pc.sum(lost).as_py() or 0), arrow.num_rows, views_lineage)
        if format == "arrow":
            return arrow
        frame = TrainingFrame(arrow.to_pandas(), all_features, entity_keys, ts_col, lineage)
        if format == "pandas":
            return frame.data
        if format == "ray":
            return frame.to_ray()
        return frame

    def snapshot(self, views: Sequence[str], entities: str | None = None, *,
                 feature_versions: dict[str, int] | None = None, entities_version: int | None = None,
                 view_versions: dict[str, int] | None = None) -> dict:
        """One pinned set of versions for a job that reads several tables.

        Each view's feature table at ``feature_versions`` (default: its latest
        version, read once), the source version it was computed from, and the
        entity table: at ``entities_version``, else, when it is the source of
        some of the views, at the oldest source version those views were
        computed from (so every entity row has its features), else its latest.
        ``view_versions``: the catalog versions of the definitions (default: the
        latest), as in :meth:`training_frame`.
        """
        out: dict[str, Any] = {"views": {}, "tables": {}}
        for name in views:
            view = self.view(name, (view_versions or {}).get(name))
            table = self.lake.table(view.table)
            if not table.exists():
                raise NotMaterializedError(f"feature view {name!r} is not materialized yet; run "
                                           f"lakeloop features materialize {name}")
            version = int((feature_versions or {}).get(name, table.version()))
            runs = self.catalog.runs(name)
            runs = runs[runs["table_version"] <= version] if len(runs) else runs
            source_version = int(runs.iloc[-1]["source_version"]) if len(runs) else None
            pin = {"table_version": version, "source": view.source, "source_version": source_version}
            if source_version is not None:
                declared = mat.history_commits(self.lake.table(view.source), source_version)
                if declared:
                    pin["history_versions"] = sorted(declared)
            out["views"][name] = pin
            out["tables"][view.table] = version
        if entities is not None:
            if entities_version is None:
                sources = [p["source_version"] for p in out["views"].values()
                           if p["source"] == entities and p["source_version"] is not None]
                entities_version = min(sources) if sources else self.lake.table(entities).version()
            out["entities_version"] = int(entities_version)
            out["tables"][entities] = int(entities_version)
        return out

    def _join_on_ray(self, query: pa.Table, plans: list[dict], ts_col: str, known_time: bool):
        """The join on Ray Data: feature indexes go to the object store once; query blocks run as tasks."""
        self.lake.ensure_ray()
        import ray
        import ray.data

        shared = [{**p, "index": ray.put(p["index"])} for p in plans]
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        n_blocks = max(1, min(200, query.num_rows // 250_000 + 1))
        ds = ray.data.from_arrow(query).repartition(n_blocks)
        return ds.map_batches(_join, batch_format="pyarrow", batch_size=None, num_cpus=0.5,
                              fn_kwargs={"plans": shared, "ts_col": ts_col, "known_time": known_time})

    def rebuild_frame(self, lineage: dict, entities: "pd.DataFrame | None" = None) -> TrainingFrame:
        """The same training frame again, from a lineage record, in any process.

        Same Delta versions, and the view definitions as they were at training
        time (the recorded catalog version of each, its hash checked), loaded
        from the catalog: a definition applied since does not change the frame.
        """
        src = lineage["entities"]
        recorded = {v: info["view_version"] for v, info in lineage["views"].items() if info.get("view_version")}
        for v, version in recorded.items():
            row = self.catalog.version(v, int(version))
            want = lineage["views"][v].get("definition_hash")
            if want and row["definition_hash"] != want:
                raise DefinitionError(
                    f"the frame was built with view {v!r} version {version} at definition hash {want}, but the "
                    f"catalog's version {version} has hash {row['definition_hash']}: this catalog is not the one "
                    "the frame came from (a different lake?), so it cannot be rebuilt from it")
        if src.get("table"):
            entities = src["table"]
        elif entities is None:
            raise DefinitionError("this frame's entity rows came from a DataFrame, not a lake table; "
                                  "pass entities= (their recorded hash is checked)")
        frame = self.training_frame(
            entities, lineage.get("feature_refs") or [f"{v}:{f}" for v, info in lineage["views"].items()
                                                     for f in info["features"]],
            timestamp_column=lineage["timestamp_column"], known_time=lineage.get("known_time", True),
            entities_version=src.get("version"),
            feature_versions={v: info["table_version"] for v, info in lineage["views"].items()},
            full_feature_names=lineage.get("full_feature_names", False), since=src.get("since"),
            view_versions={v: int(n) for v, n in recorded.items()},
        )
        if not src.get("table") and frame.lineage["entities"]["hash"] != src.get("hash"):
            raise DefinitionError("the entity rows passed to rebuild_frame differ from the recorded ones")
        return frame

    # -- online ---------------------------------------------------------------------
    def online_features(self, name: str, entities, *, now=None) -> "pd.DataFrame":
        """Latest values per entity from the online store (started on demand).

        ``entities``: a DataFrame or list of dicts with the join keys, or a list of
        key values for a single-key view. Unknown entities get nulls and
        ``_missing=True``. ``now`` (a timestamp, default the clock) is the time the
        view's ``ttl`` is measured from: a value older than ``now - ttl`` is missing.
        The online store holds each entity's newest value only; for values as of a
        past time, build a training frame.
        """
        from lakeloop.features import online

        return online.lookup(self.ll, name, entities, now=now)

    def push(self, name: str, rows) -> dict:
        """Stream rows into a view: land them in its source, update the offline table and online store."""
        view = self.view(name)
        written = self.lake.table(view.source).append(rows)
        result = self.materialize(name)
        return {"source_version": written.version, "rows": written.rows, **result.to_dict()}

    def follow(self, name: str, *, interval_s: float = 2.0, max_seconds: float | None = None,
               max_runs: int | None = None) -> list[mat.MaterializeResult]:
        """Materialize ``name`` whenever its source gets a new version (the streaming job's loop)."""
        view = self.view(name)
        source = self.lake.table(view.source)
        results = []
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        seen = None
        while (deadline is None or time.monotonic() < deadline) and (max_runs is None or len(results) < max_runs):
            version = source.version()
            if version != seen:
                result = self.materialize(name)
                seen = version
                if result.mode != "noop":
                    results.append(result)
            time.sleep(interval_s)
        return results


def _join(block: pa.Table, plans: list[dict], ts_col: str, known_time: bool) -> pa.Table:
    """One block of entity rows with every view's feature columns appended.

    With known time, a last column flags rows that lost a view's features to it
    (an event-time join would have filled them).
    """
    import numpy as np

    lost = np.zeros(block.num_rows, bool)
    for plan in plans:
        index = plan["index"]
        if not isinstance(index, FeatureIndex):  # an object-store reference, on a Ray worker
            import ray

            index = ray.get(index)
        got = index.lookup(block, query_ts=ts_col, ttl_us=plan["ttl_us"], known_time=known_time, lost=lost)
        for col, out in plan["names"].items():
            block = block.append_column(out, got[col])
    if known_time:
        block = block.append_column(_LOST, pa.array(lost))
    return block


def _warn_if_mostly_unknown(lost: int, rows: int, views: dict) -> None:
    import warnings

    from lakeloop.errors import KnownTimeWarning

    if not rows or lost / rows <= KNOWN_TIME_WARN_SHARE:
        return
    declared = any(v.get("history_versions") for v in views.values())
    warnings.warn(KnownTimeWarning(
        f"known_time=True left {lost / rows:.0%} of the frame's rows ({lost} of {rows}) without features "
        f"that an event-time join fills: the lake got those feature rows only after the rows' timestamps "
        f"(they were committed later than the events they describe). "
        + ("Part of the source is declared history, but not these rows. " if declared else "")
        + "If the source rows are genuine history, declare it when writing them "
          "(ingest(..., history='event_time') or append(..., history='event_time')); "
          "known_time=False ignores commit times altogether (and lets later commits leak into the past)."),
        stacklevel=3)


def ray_blocks(ds) -> list[pa.Table]:
    """A Ray Dataset's blocks as Arrow tables, in order."""
    return [b for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]


def _parse_refs(features: Sequence[str]) -> dict[str, list[str]]:
    by_view: dict[str, list[str]] = {}
    for ref in features:
        if not isinstance(ref, str) or ":" not in ref:
            raise DefinitionError(f"feature ref {ref!r} must be 'view:feature' or 'view:*'")
        view, feat = ref.split(":", 1)
        cur = by_view.setdefault(view, [])
        if feat == "*":
            by_view[view] = ["*"]
        elif cur != ["*"] and feat not in cur:
            cur.append(feat)
    return by_view


def _guess_timestamp(df: "pd.DataFrame") -> str:
    import pandas as pd

    if DEFAULT_TIMESTAMP in df.columns:
        return DEFAULT_TIMESTAMP
    stamps = [c for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c])]
    if len(stamps) == 1:
        return stamps[0]
    raise SchemaError(f"cannot tell which column of the entity rows is the timestamp (candidates: {stamps}); "
                      "pass timestamp_column=")


def _replace_predicate(affected: "pd.DataFrame", keys: list[str], ts: str, since) -> str:
    def lit(v):
        return "'" + str(v).replace("'", "''") + "'" if isinstance(v, str) else repr(v.item() if hasattr(v, "item") else v)

    if len(keys) == 1:
        match = f"`{keys[0]}` IN ({', '.join(lit(v) for v in affected[keys[0]])})"
    else:
        match = " OR ".join("(" + " AND ".join(f"`{k}` = {lit(r[k])}" for k in keys) + ")"
                            for r in affected.to_dict("records"))
    return f"({match}) AND `{ts}` >= '{_iso(since)}'"


def _iso(ts) -> str:
    """A UTC timestamp literal delta-rs predicates parse."""
    return ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _columns(schema: TableSchema) -> dict[str, str]:
    """``{column: lakeloop type}`` of a table schema."""
    return {c.name: c.type for c in schema.columns}
