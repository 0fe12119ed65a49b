"""One named Delta table: typed writes that return their version, time travel, history.

Every write is one atomic Delta commit: a failed or killed write leaves the
table at its previous version. Concurrent writers that collide are retried
with backoff; each write returns the version it made.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal

import pyarrow as pa
import pyarrow.compute as pc

from lakeloop.errors import (
    LakeStorageError,
    SchemaError,
    TableDamagedError,
    TableNotFoundError,
    VersionNotFoundError,
    WriteConflictError,
)
from lakeloop.lake.schema import SPEC_KEY, TableSchema

if TYPE_CHECKING:
    import pandas as pd
    from deltalake import DeltaTable

    from lakeloop.lake.catalog import Lake

WRITE_ATTEMPTS = 12
BATCH_ID_KEY = "lakeloop.batch_id"
HISTORY_KEY = "lakeloop.history_column"  # commit metadata: rows known at this event-time column (a backfill)
# writes that build on the current files; overwrite and restore replace them, so they may repair a table
BUILDS_ON_FILES = ("append", "upsert", "insert_missing", "delete", "optimize")
_COMMIT_NAME = re.compile(r"(\d{20})\.json")


def storage_error(exc: BaseException, action: str, table: str, where: str) -> LakeStorageError:
    """A delta-rs / object-store / Rust panic failure of the lake's storage, as a lakeloop error with a fix."""
    from lakeloop.lake.catalog import _detail

    detail = _detail(exc) if str(exc).strip() else type(exc).__name__
    text = f"{exc} {detail}".lower()
    if any(s in text for s in ("permission denied", "permissiondenied", "read-only file system", "os error 13",
                               "os error 30", "code: 13", "code: 30", "operation not permitted")):
        fix = ("the lake folder is not writable by this user: fix its permissions, mount it read-write, "
               "or point lake.root at a writable folder")
    elif any(s in text for s in ("no space left", "os error 28", "code: 28", "file too large", "os error 27",
                                 "code: 27", "quota", "os error 122")):
        fix = ("the disk is full (or a file-size limit was hit): free space or move lake.root; the table "
               "stays at its previous version")
    else:
        fix = "check lake.root and lake.storage_options; the table stays at its previous version"
    return LakeStorageError(f"cannot {action} table {table} at {where}: {detail}. {fix}")


def _is_panic(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


@dataclass(frozen=True)
class WriteResult:
    """What a write made: the table, the new version, how many rows went in."""

    table: str
    version: int
    rows: int
    operation: str
    batch_id: str | None = None
    metrics: dict = field(default_factory=dict)


def as_arrow(data: Any) -> pa.Table:
    """pandas, Arrow, a record batch reader, or a list of row dicts, as an Arrow table."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pa.RecordBatchReader):
        return data.read_all()
    if isinstance(data, list):
        return pa.Table.from_pylist(data)
    if isinstance(data, dict):
        return pa.table(data)
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    raise SchemaError(
        f"cannot write data of type {type(data).__name__}: pass a pandas DataFrame, a pyarrow "
        "Table or RecordBatchReader, or a list of row dicts"
    )


class Table:
    """A handle on ``layer.name`` in a :class:`~lakeloop.lake.catalog.Lake`.

    Handles are cheap; nothing is read until a method needs it.
    """

    def __init__(self, lake: "Lake", name: str):
        self.lake = lake
        self.name = name
        self.uri = lake.table_uri(name)

    def __repr__(self) -> str:
        return f"Table({self.name!r}, uri={self.uri!r})"

    # -- state ---------------------------------------------------------------
    def exists(self) -> bool:
        from deltalake import DeltaTable

        try:
            return DeltaTable.is_deltatable(self.uri, storage_options=self.lake.storage_options)
        except OSError as exc:
            raise self._failure(exc, "open") from None

    def _local_path(self) -> str | None:
        if "://" in self.uri and not self.uri.startswith("file://"):
            return None
        return self.uri[len("file://"):] if self.uri.startswith("file://") else self.uri

    def _read_filesystem(self):
        """Where Arrow reads a local table's data files: pyarrow's own local filesystem, rooted at the table.

        deltalake's default is its object-store client wrapped as a Python ``PyFileSystem``, so every
        file read calls back into Python. Besides the cost, Arrow's I/O threads can drop the last
        reference to that Python filesystem after the interpreter started to exit, and the process then
        aborts (``terminate called without an active exception``, exit -6; a CLI command after printing
        its answer; 10-60% of runs here with pyarrow 25 and deltalake 1.6). An object-store lake keeps
        delta-rs's client (one set of options and credentials for every operation); None selects it.
        """
        local = self._local_path()
        if local is None:
            return None
        import pyarrow.fs as pafs

        return pafs.SubTreeFileSystem(os.path.abspath(local), pafs.LocalFileSystem())

    def _failure(self, exc: BaseException, action: str):
        """A storage failure of this table: :class:`LakeStorageError` on a local lake (permissions, full
        disk), :class:`~lakeloop.errors.ConnectError` naming bucket/endpoint/credentials on an object store."""
        if self.lake.is_local:
            return storage_error(exc, action, self.name, self.uri)
        return self.lake.unreachable(exc, f"{action} table {self.name} at {self.uri}")

    def check_commit(self, version: int | None = None) -> None:
        """A local table's commit ``version`` (default: the latest) must be a readable, non-empty JSON log entry.

        delta-rs takes an empty commit file for an empty commit: the version counts, its rows are
        gone, and the next write would build on it. This makes that a :class:`TableDamagedError`.
        """
        path = self._local_path()
        if path is None:
            return
        log = os.path.join(path, "_delta_log")
        if version is None:
            try:
                names = os.listdir(log)
            except (FileNotFoundError, NotADirectoryError):
                return
            except OSError as exc:
                raise storage_error(exc, "read", self.name, log) from None
            found = [int(m.group(1)) for m in map(_COMMIT_NAME.fullmatch, names) if m]
            if not found:
                return
            version = max(found)
        commit = os.path.join(log, f"{version:020d}.json")
        try:
            with open(commit, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return  # before the log's retention, or not committed: delta-rs answers for those
        except OSError as exc:
            raise self._damaged(version, commit, f"it cannot be read ({exc.strerror or exc})") from None
        problem = None
        if not raw.strip():
            problem = "it is empty (zero bytes)" if not raw else "it holds no actions"
        else:
            try:
                for line in raw.decode("utf-8").splitlines():
                    if line.strip() and not isinstance(json.loads(line), dict):
                        raise ValueError("a line is not a JSON object")
            except (UnicodeDecodeError, ValueError) as exc:
                problem = f"it is not valid JSON ({exc})"
        if problem:
            raise self._damaged(version, commit, problem)

    def _damaged(self, version: int, commit: str, problem: str) -> TableDamagedError:
        return TableDamagedError(
            f"table {self.name} is damaged: its commit {version} ({commit}) {problem}, so version {version} "
            f"cannot be trusted and nothing is read from or written on top of it. Fix: restore the last good "
            f"version (ll.lake.table({self.name!r}).restore({max(version - 1, 0)}), or `lakeloop lake restore "
            f"{self.name} --version {max(version - 1, 0)}`), or move that file aside if the commit never finished")

    def check_files(self, dt: "DeltaTable | None" = None) -> None:
        """Every data file the version references must exist (local lakes); else :class:`TableDamagedError`."""
        path = self._local_path()
        if path is None:
            return
        dt = dt if dt is not None else self._delta()
        for uri in dt.file_uris():
            local = uri[len("file://"):] if uri.startswith("file://") else uri
            if "://" not in local and not os.path.exists(local):
                raise TableDamagedError(
                    f"table {self.name} is damaged: version {dt.version()} references the data file {local}, "
                    "which is missing, so its rows cannot be read and nothing is appended on top of it. Fix: "
                    "put the file back from a backup, or restore a version whose files exist "
                    f"(ll.lake.table({self.name!r}).restore(N); see its history), or overwrite the table")

    def _delta(self, version: int | None = None, *, check: bool = True) -> "DeltaTable":
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError
        from deltalake.exceptions import TableNotFoundError as DeltaTableNotFound

        if check:
            self.check_commit(version)
        try:
            return DeltaTable(self.uri, version=version, storage_options=self.lake.storage_options)
        except OSError as exc:
            raise self._failure(exc, "open") from None
        except DeltaTableNotFound as exc:
            raise TableNotFoundError(
                f"table {self.name} does not exist in the lake at {self.lake.root}; "
                f"create it, or ingest a file into it (lakeloop lake ingest FILE --table {self.name})"
            ) from exc
        except DeltaError as exc:
            if version is None:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise TableDamagedError(
                    f"table {self.name} at {self.uri} cannot be loaded: {first}. Its log (_delta_log) is damaged: "
                    "move the broken newest commit file aside, or restore a good version (see its history)") from None
            latest = self.version()
            raise VersionNotFoundError(
                f"table {self.name} has no version {version}; its versions are 0..{latest}"
            ) from exc

    def version(self) -> int:
        """The latest committed version."""
        return self._delta().version()

    @property
    def schema(self) -> TableSchema:
        return self._schema_of(self._delta())

    @staticmethod
    def _schema_of(dt: "DeltaTable") -> TableSchema:
        spec = dt.metadata().configuration.get(SPEC_KEY)
        if spec:
            return TableSchema.from_json(spec)
        return TableSchema.from_arrow(pa.schema(dt.schema().to_arrow()))

    @property
    def description(self) -> str:
        return self._delta().metadata().description or ""

    def history(self, limit: int | None = None) -> list[dict]:
        """Commits newest first: version, UTC timestamp, operation, rows added, batch id.

        It works on a damaged table too, to find the version to restore.
        """
        rows = []
        for h in self._delta(check=False).history(limit):
            metrics = h.get("operationMetrics") or {}
            rows.append(
                {
                    "version": h["version"],
                    "timestamp": datetime.fromtimestamp(h["timestamp"] / 1000, tz=timezone.utc),
                    "operation": h.get("operation"),
                    "mode": (h.get("operationParameters") or {}).get("mode"),
                    "rows_added": metrics.get("num_added_rows", metrics.get("num_target_rows_inserted")),
                    "rows_updated": metrics.get("num_target_rows_updated"),
                    "batch_id": h.get(BATCH_ID_KEY),
                    "lakeloop_operation": h.get("lakeloop.operation"),
                    "history_column": h.get(HISTORY_KEY),
                }
            )
        return rows

    def version_as_of(self, when: datetime | str) -> int:
        """The newest version committed at or before ``when`` (UTC if naive)."""
        ts = _as_utc(when)
        for h in self.history():
            if h["timestamp"] <= ts:
                return h["version"]
        first = self.history()[-1]["timestamp"]
        raise VersionNotFoundError(
            f"table {self.name} did not exist at {ts.isoformat()}; its first commit is at "
            f"{first.isoformat()}"
        )

    def commit_times(self) -> dict[int, datetime]:
        """Version -> commit timestamp (UTC), for every version in the log."""
        return {h["version"]: h["timestamp"] for h in self.history()}

    # -- reads ---------------------------------------------------------------
    def _resolve(self, version: int | None, as_of: datetime | str | None) -> int | None:
        if version is not None and as_of is not None:
            raise VersionNotFoundError("pass either version or as_of, not both")
        if as_of is not None:
            return self.version_as_of(as_of)
        return version

    def to_arrow(
        self,
        version: int | None = None,
        as_of: datetime | str | None = None,
        columns: list[str] | None = None,
        filters: Any = None,
        limit: int | None = None,
    ) -> pa.Table:
        """The table (latest, at ``version``, or as of a time) as Arrow."""
        resolved = self._resolve(version, as_of)
        dt = self._delta(resolved)
        if resolved is None:  # the latest version's files must all be there (older ones may be vacuumed)
            self.check_files(dt)
        try:
            fs = self._read_filesystem()
            if limit is not None and filters is None:  # stop reading once there are enough rows
                return dt.to_pyarrow_dataset(filesystem=fs).head(limit, columns=columns)
            data = dt.to_pyarrow_table(columns=columns, filters=filters, filesystem=fs)
        except (OSError, pa.ArrowException) as exc:
            if not self.lake.is_local and _is_unreachable(exc):
                raise self._failure(exc, "read") from None
            raise VersionNotFoundError(
                f"cannot read version {dt.version()} of table {self.name}: {exc}. Its data files "
                "may have been removed by vacuum; read a newer version or restore from a backup"
            ) from exc
        except Exception as exc:  # delta-rs raises its own errors for missing files
            if "not found" in str(exc).lower() or "no such file" in str(exc).lower():
                raise VersionNotFoundError(
                    f"cannot read version {dt.version()} of table {self.name}: its data files were "
                    f"removed (vacuumed?): {exc}"
                ) from exc
            raise
        return data.slice(0, limit) if limit is not None else data

    def to_pandas(self, version=None, as_of=None, columns=None, filters=None, limit=None) -> "pd.DataFrame":
        return self.to_arrow(version, as_of, columns, filters, limit).to_pandas()

    def read(
        self,
        version: int | None = None,
        as_of: datetime | str | None = None,
        *,
        columns: list[str] | None = None,
        filters: Any = None,
        limit: int | None = None,
        format: Literal["pandas", "arrow", "ray"] = "pandas",
    ):
        """Read as pandas (default), Arrow, or a Ray Dataset."""
        if format == "pandas":
            return self.to_pandas(version, as_of, columns, filters, limit)
        if format == "arrow":
            return self.to_arrow(version, as_of, columns, filters, limit)
        if format == "ray":
            ds = self.to_ray(version, as_of, columns)
            return ds.limit(limit) if limit is not None else ds
        raise ValueError(f"format must be pandas, arrow or ray, not {format!r}")

    def to_ray(self, version: int | None = None, as_of=None, columns: list[str] | None = None):
        """A Ray Dataset over the table's Parquet files at one version, read in parallel."""
        import ray.data

        self.lake.ensure_ray()
        resolved = self._resolve(version, as_of)
        dt = self._delta(resolved)
        if not dt.file_uris():
            return ray.data.from_arrow(self.schema.to_arrow().empty_table()).select_columns(
                columns or self.schema.names
            )
        from lakeloop.lake.store import plain_options

        # the read tasks get no credentials: on an object store each worker finds its own in its environment
        # (lakeloop.lake.store); the plain options (endpoint, region) travel
        return ray.data.read_delta(
            self.uri, version=dt.version(), columns=columns,
            storage_options=(self.lake.storage_options if self.lake.is_local
                             else plain_options(self.lake.storage_options)) or None,
        )

    # -- writes --------------------------------------------------------------
    def _commit(self, operation: str, write: Callable[["DeltaTable", Any], dict | None],
                rows: int | Callable[[], int], batch_id: str | None, attempts: int = WRITE_ATTEMPTS,
                history: str | None = None, current: "DeltaTable | None" = None) -> WriteResult:
        """Run ``write(delta_table, commit_properties)`` with conflict retries.

        delta-rs retries a commit that lost a race by itself when the operations
        do not overlap (appends); conflicts it cannot resolve (merges, overwrites)
        re-run the whole write here, ``attempts`` times with jittered backoff.
        ``current``: the table as just loaded by the caller, used for the first
        attempt (on an object store each load lists and reads the log).
        """
        from deltalake import CommitProperties
        from deltalake.exceptions import CommitFailedError, DeltaError

        meta = {"lakeloop.operation": operation}
        if batch_id:
            meta[BATCH_ID_KEY] = batch_id
        if history:
            meta[HISTORY_KEY] = history
        last: Exception | None = None
        for attempt in range(attempts):
            dt = current if attempt == 0 and current is not None else \
                self._delta(check=operation != "restore")  # restore is how a damaged table is fixed
            if operation in BUILDS_ON_FILES:
                self.check_files(dt)
            try:
                metrics = write(dt, CommitProperties(custom_metadata=meta, max_commit_retries=20))
                n = rows() if callable(rows) else rows
                return WriteResult(self.name, dt.version(), n, operation, batch_id, metrics or {})
            except CommitFailedError as exc:
                last = exc
            except DeltaError as exc:
                if "conflict" not in str(exc).lower() and "already exists" not in str(exc).lower():
                    if _is_storage_failure(exc):
                        raise self._failure(exc, operation) from None
                    raise
                last = exc
            except OSError as exc:
                raise self._failure(exc, operation) from None
            except BaseException as exc:
                if _is_panic(exc):  # delta-rs panicked (seen on full disks): the commit did not happen
                    raise self._failure(exc, operation) from None
                raise
            time.sleep(min(2.0, 0.02 * 2**attempt) * (0.5 + random.random()))
        raise WriteConflictError(
            f"{operation} on table {self.name} conflicted with concurrent writers "
            f"{attempts} times; retry later or give the table one writer: {last}"
        )

    def append(self, data: Any, *, batch_id: str | None = None,
               target_file_size: int | None = None, history: str | None = None) -> WriteResult:
        """Append rows; the batch must match the schema (named :class:`SchemaError` if not).

        A ``pyarrow.RecordBatchReader`` is streamed: each batch is checked as it
        arrives and written out in files of about ``target_file_size`` bytes; the
        commit happens once, at the end. ``history="event_time"`` declares the
        rows genuine history, known at their ``event_time`` (a backfill): the
        commit records it, and known-time training frames use those times.
        """
        from deltalake import write_deltalake

        self._check_history(history)
        if isinstance(data, pa.RecordBatchReader):
            return self._append_stream(data, batch_id, target_file_size, history)
        current = self._delta()
        batch = self._schema_of(current).conform(as_arrow(data), table=self.name)
        return self._commit(
            "append",
            lambda dt, props: write_deltalake(dt, batch, mode="append", commit_properties=props,
                                              target_file_size=target_file_size,
                                              storage_options=self.lake.storage_options or None),
            batch.num_rows, batch_id, history=history, current=current,
        )

    def _check_history(self, history: str | None) -> None:
        if history is None:
            return
        schema = self.schema
        if history not in schema.names or schema.column(history).type != "timestamp":
            stamps = [c.name for c in schema.columns if c.type == "timestamp"]
            raise SchemaError(
                f"history={history!r} must name a timestamp column of table {self.name} (the time each "
                f"row was known at); its timestamp columns are {stamps or 'none'}"
            )

    def _append_stream(self, reader: pa.RecordBatchReader, batch_id: str | None,
                       target_file_size: int | None, history: str | None = None) -> WriteResult:
        from deltalake import write_deltalake

        schema = self.schema
        schema.conform(reader.schema.empty_table(), table=self.name)  # fail before writing
        count = [0]

        def batches():
            for b in reader:
                conformed = schema.conform(pa.Table.from_batches([b]), table=self.name)
                count[0] += conformed.num_rows
                yield from conformed.to_batches()

        stream = pa.RecordBatchReader.from_batches(schema.to_arrow(), batches())
        return self._commit(
            "append",
            lambda dt, props: write_deltalake(dt, stream, mode="append", commit_properties=props,
                                              target_file_size=target_file_size,
                                              storage_options=self.lake.storage_options or None),
            lambda: count[0], batch_id, attempts=1, history=history,  # a stream cannot be read twice
        )

    def overwrite(self, data: Any, *, batch_id: str | None = None,
                  schema: TableSchema | None = None) -> WriteResult:
        """Replace the table's content (earlier versions stay readable).

        With ``schema``, the table takes that schema (columns may come and go).
        """
        from deltalake import write_deltalake

        current = self.schema
        new_schema = schema if schema is not None and schema != current else None
        batch = (new_schema or current).conform(as_arrow(data), table=self.name)

        def write(dt, props):
            write_deltalake(dt, batch, mode="overwrite", commit_properties=props,
                            schema_mode="overwrite" if new_schema else None,
                            storage_options=self.lake.storage_options or None)
            if new_schema:
                dt.update_incremental()
                dt.alter.set_table_properties({SPEC_KEY: new_schema.to_json()}, raise_if_not_exists=False,
                                              commit_properties=props)  # our key is not a Delta property

        return self._commit("overwrite", write, batch.num_rows, batch_id)

    def upsert(self, data: Any, *, key: str | Iterable[str] | None = None,
               batch_id: str | None = None, history: str | None = None) -> WriteResult:
        """Insert new keys and update existing ones (a Delta MERGE on the primary key).

        ``history`` as in :meth:`append`: inserted rows were known at that column's
        time; updates count from the commit.
        """
        self._check_history(history)
        schema = self.schema
        keys = (key,) if isinstance(key, str) else tuple(key or schema.primary_key)
        if not keys:
            raise SchemaError(
                f"upsert into {self.name} needs a key: the table has no primary key, so pass key=..."
            )
        batch = schema.conform(as_arrow(data), table=self.name)
        for k in keys:
            if batch.column(k).null_count:
                raise SchemaError(f"key column {k!r} has null values; every upserted row needs a key")
        dupes = _duplicate_keys(batch, keys)
        if dupes:
            raise SchemaError(
                f"upsert into {self.name}: key {'/'.join(keys)} repeats within the batch "
                f"(e.g. {dupes[:3]}); each key may appear once"
            )
        predicate = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)

        def merge(dt, props):
            return (
                dt.merge(batch, predicate, source_alias="s", target_alias="t", commit_properties=props)
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )

        return self._commit("upsert", merge, batch.num_rows, batch_id, history=history)

    def insert_missing(self, data: Any, predicate: str, *, batch_id: str | None = None) -> WriteResult:
        """Insert the rows no row of the table matches, as one commit (a Delta MERGE that only inserts).

        ``predicate`` relates a table row (``t.``) to a new row (``s.``), e.g.
        ``"t.name = s.name AND t.version >= s.version"``. Unlike an append, a
        concurrent writer's rows count: the merge that loses the race is run again
        on the table as it then is, and skips the rows the winner's now match.
        ``metrics["num_target_rows_inserted"]`` says how many went in.
        """
        batch = self.schema.conform(as_arrow(data), table=self.name)

        def merge(dt, props):
            return (dt.merge(batch, predicate, source_alias="s", target_alias="t", commit_properties=props)
                    .when_not_matched_insert_all()
                    .execute())

        return self._commit("insert_missing", merge, batch.num_rows, batch_id)

    def delete(self, predicate: str) -> WriteResult:
        """Delete rows matching a SQL predicate (e.g. ``"amount < 0"``)."""
        return self._commit("delete", lambda dt, props: dt.delete(predicate, commit_properties=props),
                            0, None)

    def restore(self, version: int) -> WriteResult:
        """Make ``version``'s content the latest, as a new commit (history is kept)."""
        self._delta(version)  # names a missing version clearly
        return self._commit("restore", lambda dt, props: dt.restore(version, commit_properties=props),
                            0, None)

    def optimize(self) -> WriteResult:
        """Compact small files into larger ones (a new version with the same rows)."""
        return self._commit("optimize", lambda dt, props: dt.optimize.compact(commit_properties=props),
                            0, None)

    def vacuum(self, retention_hours: float = 168, dry_run: bool = False) -> list[str]:
        """Delete data files no version newer than ``retention_hours`` needs; returns them.

        Also removes files that no commit references (left by failed or killed
        writes) once they are older than the retention. Versions older than the
        retention lose their files and can no longer be read.
        """
        dt = self._delta()
        try:
            return dt.vacuum(retention_hours=int(retention_hours), dry_run=dry_run, enforce_retention_duration=False,
                             full=True)
        except OSError as exc:
            raise self._failure(exc, "vacuum") from None


def _detail_of(exc: BaseException) -> str:
    from lakeloop.lake.catalog import _detail

    return _detail(exc)


def _is_storage_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("os error", "os {", "localfilesystem", "permission denied", "permissiondenied",
                                   "no space", "read-only", "file too large", "unable to", "i/o error",
                                   "could not create"))


def _is_unreachable(exc: BaseException) -> bool:
    """Whether a read failed because the object store failed (not because a data file is gone)."""
    text = str(exc).lower()
    return any(s in text for s in ("nosuchbucket", "connection refused", "error sending request", "dns error",
                                   "timed out", "accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch"))


def _duplicate_keys(batch: pa.Table, keys: tuple[str, ...]) -> list:
    counts = batch.group_by(list(keys)).aggregate([([], "count_all")])
    dup = counts.filter(pc.greater(counts.column("count_all"), 1))
    return dup.select(list(keys)).to_pylist()


def _as_utc(when: datetime | str) -> datetime:
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError as exc:
            raise VersionNotFoundError(f"as_of {when!r} is not an ISO date or time") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def new_batch_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
