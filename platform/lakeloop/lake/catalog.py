"""The lake: named Delta tables ``layer.name`` under one root (a folder or an object store)."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Callable, Mapping

from lakeloop.errors import ConnectError, TableExistsError, TableNameError
from lakeloop.lake.schema import SPEC_KEY, TableSchema
from lakeloop.lake.table import Table, WriteResult, as_arrow

if TYPE_CHECKING:
    from lakeloop.lake.ingest import IngestResult
    from lakeloop.lake.profile import Profile

_PART = r"[A-Za-z][A-Za-z0-9_]{0,127}"
NAME_RE = re.compile(rf"{_PART}\.{_PART}")  # always with fullmatch: "$" would let "raw.x\n" through


def _detail(exc: Exception) -> str:
    """The innermost line of a delta-rs / object-store error chain, without colour codes."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m|↳", "", x).strip() for x in str(exc).splitlines()]
    return next((x for x in reversed(lines) if x), type(exc).__name__)


def check_table_name(name: str) -> tuple[str, str]:
    """Split ``layer.name``; anything else (paths, dots, ``..``) is a :class:`TableNameError`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise TableNameError(
            f"table name {name!r} is not a plain 'layer.name' (letters, digits and '_', starting "
            "with a letter, e.g. raw.transactions); paths are not table names"
        )
    layer, table = name.split(".")
    return layer, table


class Lake:
    """Delta tables under ``root``, addressed as ``layer.name``.

    >>> lake = Lake(tmp_root)  # doctest: +SKIP
    >>> lake.create("raw.events", {"id": "string", "value": "float64"}, primary_key="id")
    """

    def __init__(self, root: str, storage_options: Mapping[str, str] | None = None,
                 ensure_ray: Callable[[], Any] | None = None):
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._ensure_ray = ensure_ray

    def __repr__(self) -> str:
        return f"Lake({self.root!r})"

    @property
    def is_local(self) -> bool:
        return "://" not in self.root

    def unreachable(self, exc: BaseException, action: str = "use the lake") -> ConnectError:
        """The error for an object store that fails: no such bucket, refused credentials, endpoint down."""
        from lakeloop.lake.store import store_error

        return store_error(exc, self.root, self.storage_options, action)

    def ensure_ray(self):
        if self._ensure_ray is not None:
            return self._ensure_ray()
        import ray

        if not ray.is_initialized():
            from lakeloop.client import start_local_ray

            start_local_ray(include_dashboard=False, log_to_driver=False)
        return ray

    def table_uri(self, name: str) -> str:
        layer, table = check_table_name(name)
        return f"{self.root}/{layer}/{table}"

    def table(self, name: str) -> Table:
        """A handle on a table (it need not exist yet)."""
        return Table(self, name)

    def tables(self) -> list[str]:
        """Every table in the lake, sorted."""
        found = []
        for layer, names in self._listing().items():
            for name in names:
                full = f"{layer}.{name}"
                if NAME_RE.fullmatch(full):
                    found.append(full)
        return sorted(found)

    def _listing(self) -> dict[str, list[str]]:
        if self.is_local:
            if not os.path.isdir(self.root):
                return {}
            out = {}
            for layer in os.scandir(self.root):
                if layer.is_dir():
                    out[layer.name] = [
                        t.name for t in os.scandir(layer.path)
                        if os.path.isdir(os.path.join(t.path, "_delta_log"))
                    ]
            return out
        return self._remote_listing()

    def _remote_listing(self) -> dict[str, list[str]]:
        """Layers and tables of an object-store lake: one listing of the root, one per layer, one probe per table."""
        import pyarrow.fs as pafs

        from lakeloop.lake.store import filesystem

        try:
            fs = filesystem(self.root, self.storage_options)
            layers = [i.base_name for i in fs.get_file_info(pafs.FileSelector("", allow_not_found=True))
                      if i.type == pafs.FileType.Directory]
            candidates = [f"{layer}/{t.base_name}" for layer in layers
                          for t in fs.get_file_info(pafs.FileSelector(layer, allow_not_found=True))
                          if t.type == pafs.FileType.Directory]
            logs = fs.get_file_info([f"{c}/_delta_log" for c in candidates]) if candidates else []
        except OSError as exc:
            raise self.unreachable(exc, "list the tables") from None
        out: dict[str, list[str]] = {}
        for path, info in zip(candidates, logs):
            if info.type == pafs.FileType.Directory:
                layer, table = path.split("/")
                out.setdefault(layer, []).append(table)
        return out

    def create(
        self,
        name: str,
        schema: TableSchema | Mapping[str, Any],
        *,
        primary_key: str | list[str] | None = None,
        partition_by: str | list[str] | None = None,
        description: str | None = None,
        exist_ok: bool = False,
        change_data_feed: bool = True,
    ) -> Table:
        """Create an empty table (version 0) with a typed schema and an optional primary key."""
        if not isinstance(schema, TableSchema):
            schema = TableSchema.build(schema, primary_key=primary_key, partition_by=partition_by)
        table = self.table(name)
        if table.exists():
            if exist_ok:
                return table
            raise TableExistsError(f"table {name} already exists (version {table.version()})")
        config = {SPEC_KEY: schema.to_json()}
        if change_data_feed:
            config["delta.enableChangeDataFeed"] = "true"
        if not self.is_local:  # opening a table reads every commit since its last checkpoint: keep that short
            from lakeloop.lake.store import CHECKPOINT_INTERVAL

            config["delta.checkpointInterval"] = str(CHECKPOINT_INTERVAL)
        try:
            self._create(table, schema, name, description, config, exist_ok)
        except TableExistsError:
            raise
        except BaseException as exc:
            from lakeloop.lake.table import _is_panic, _is_storage_failure, storage_error

            if not (_is_panic(exc) or isinstance(exc, OSError) or (
                    isinstance(exc, Exception) and _is_storage_failure(exc))):
                raise
            if not self.is_local:
                raise self.unreachable(exc, f"create table {name}") from None
            raise storage_error(exc, "create", name, table.uri) from None
        return table

    def _create(self, table: Table, schema: TableSchema, name: str, description: str | None, config: dict,
                exist_ok: bool) -> None:
        from deltalake import DeltaTable

        DeltaTable.create(
            table.uri,
            schema.to_arrow(),
            mode="ignore" if exist_ok else "error",
            partition_by=list(schema.partition_by) or None,
            name=name,
            description=description,
            configuration=config,
            storage_options=self.storage_options or None,
            raise_if_key_not_exists=False,
        )

    def write(self, name: str, data: Any, *, mode: str = "append", key=None,
              batch_id: str | None = None) -> WriteResult:
        """Write to a table, creating it from the data's own schema if it is new."""
        table = self.table(name)
        if not table.exists():
            arrow = as_arrow(data)
            self.create(name, TableSchema.from_arrow(arrow.schema, primary_key=key), exist_ok=True)
            data = arrow
        if mode == "append":
            return table.append(data, batch_id=batch_id)
        if mode == "overwrite":
            return table.overwrite(data, batch_id=batch_id)
        if mode == "upsert":
            return table.upsert(data, key=key, batch_id=batch_id)
        raise ValueError(f"mode must be append, overwrite or upsert, not {mode!r}")

    def ingest(self, path: str | os.PathLike, table: str, *, key: str | None = None,
               rules: str | os.PathLike | Mapping | None = None, history: str | None = None) -> "IngestResult":
        """Validate a file and land it: passing rows to ``table``, failing ones to quarantine.

        ``history="event_time"`` declares the rows genuine history, known at that
        column's time (a backfill); known-time training frames then use them.
        """
        from lakeloop.lake.ingest import ingest_file

        return ingest_file(self, path, table, key=key, rules=rules, history=history)

    def profile(self, name: str, version: int | None = None, out_dir: str | None = None) -> "Profile":
        """Per-column statistics and histogram PNGs for one version of a table."""
        from lakeloop.lake.profile import profile_table

        return profile_table(self.table(name), version=version, out_dir=out_dir)
