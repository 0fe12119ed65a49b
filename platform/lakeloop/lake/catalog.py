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

    def unreachable(self, exc: Exception) -> ConnectError:
        """The error for a lake store that cannot be reached (object store down, wrong endpoint)."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        endpoint = next((v for k, v in self.storage_options.items() if k.upper().endswith("ENDPOINT_URL")), None)
        where = f"{self.root} (endpoint {endpoint})" if endpoint else self.root
        return ConnectError(f"cannot reach the lake store at {where}: {first} ({_detail(exc)}). "
                            "Check lake.root and lake.storage_options (endpoint, region, credentials)")

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
        import pyarrow.fs as pafs

        fs, base = pafs.FileSystem.from_uri(self.root)
        if isinstance(fs, pafs.S3FileSystem) and "AWS_ENDPOINT_URL" in self.storage_options:
            fs = pafs.S3FileSystem(endpoint_override=self.storage_options["AWS_ENDPOINT_URL"])
        out: dict[str, list[str]] = {}
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, max_recursion=2)):
            rel = info.path[len(base):].strip("/").split("/")
            if len(rel) == 3 and rel[2] == "_delta_log":
                out.setdefault(rel[0], []).append(rel[1])
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
                raise self.unreachable(exc) from exc
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
