"""New rows of ``logs.inference`` for one model, per served version, read by Delta version cursor.

Rows come from the table's change data feed, commit by commit. Within a
commit they are put in a fixed order (time, request id, row, features), so a
position ``(commit, offset)`` names one row for good: the ``offset``-th row
of that commit among this model's rows of one served version. A stream's
cursor is the position of its first row not yet counted in a window.

The monitor persists every stream's cursor with each window it writes (one
Delta commit, see :mod:`lakeloop.monitoring.monitor`); a restarted monitor
re-reads from the oldest cursor and skips, per stream, what was counted, so
nothing is skipped and nothing is counted twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeloop.errors import MonitorError

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.lake.table import Table

INFERENCE = "logs.inference"
COLUMNS = ["request_id", "row", "time", "model", "version", "route", "features", "output", "prediction", "error"]
ORDER = ["_commit_version", "time", "request_id", "row", "features"]
MAX_COMMITS_PER_READ = 500


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


class InferenceStream:
    """Buffers of unread rows per served version; ``peek`` a window, ``consume`` it once persisted.

    ``cursors`` (``{version: [commit, offset]}``) and ``read_to`` come from the
    last persisted window; without them the stream starts at ``start_version``.
    """

    def __init__(self, table: "Table", model: str, route: str, *, start_version: int = 0,
                 cursors: dict | None = None, read_to: int | None = None):
        self.table, self.model, self.route = table, model, route
        self.cursors = {int(v): (int(c[0]), int(c[1])) for v, c in (cursors or {}).items()}
        persisted = start_version - 1 if read_to is None else int(read_to)
        self.persisted_read_to = persisted
        # re-read from the oldest unconsumed position; rows before each stream's cursor are skipped
        self.read_to = min([c for c, _ in self.cursors.values()] + [persisted + 1]) - 1
        self.buffers: dict[int, "pd.DataFrame"] = {}

    def __repr__(self) -> str:
        return f"InferenceStream({self.model!r}, route={self.route!r}, read_to={self.read_to}, pending={self.pending()})"

    # -- reading -------------------------------------------------------------------
    def poll(self) -> int:
        """Read commits after ``read_to`` (at most 500 per call); returns how many new rows were buffered."""
        import pandas as pd
        import pyarrow as pa

        if not self.table.exists():
            return 0
        latest = self.table.version()
        if latest <= self.read_to:
            return 0
        start, end = self.read_to + 1, min(latest, self.read_to + MAX_COMMITS_PER_READ)
        dt = self.table._delta()
        if dt.metadata().configuration.get("delta.enableChangeDataFeed") != "true":
            raise MonitorError(f"{self.table.name} has no change data feed, so the monitor cannot read it by version; "
                               "create it through lakeloop (feeds are on by default)")
        try:
            reader = dt.load_cdf(starting_version=start, ending_version=end,
                                 columns=COLUMNS + ["_commit_version", "_change_type"],
                                 predicate=f"model = {_quote(self.model)} AND route = {_quote(self.route)}")
            changes = pa.table(reader)
        except Exception as exc:
            raise MonitorError(f"cannot read versions {start}..{end} of {self.table.name}: {exc}. If its files were "
                               "vacuumed, those rows are gone: restart the monitor with start='latest'") from exc
        changes = changes.cast(pa.schema([pa.field(f.name, pa.string()) if pa.types.is_string_view(f.type)
                                          else f for f in changes.schema]))
        df = changes.to_pandas()
        self.read_to = end
        df = df[df["_change_type"] == "insert"].drop(columns="_change_type")
        if df.empty:
            return 0
        df["_commit_version"] = df["_commit_version"].astype("int64")
        df = df.sort_values(ORDER, kind="stable", na_position="first").reset_index(drop=True)
        added = 0
        for version, rows in df.groupby("version", sort=True, dropna=False):
            if pd.isna(version):
                continue
            version = int(version)
            rows = rows.copy()
            rows["_offset"] = rows.groupby("_commit_version").cumcount().astype("int64")
            commit, offset = self.floor(version)
            keep = (rows["_commit_version"] > commit) | ((rows["_commit_version"] == commit) & (rows["_offset"] >= offset))
            rows = rows[keep]
            if rows.empty:
                continue
            buf = self.buffers.get(version)
            self.buffers[version] = rows if buf is None or buf.empty else pd.concat([buf, rows], ignore_index=True)
            added += len(rows)
        return added

    def caught_up(self) -> bool:
        """Whether every committed version has been read."""
        return not self.table.exists() or self.table.version() <= self.read_to

    # -- windows -------------------------------------------------------------------
    def pending(self) -> dict[int, int]:
        return {v: len(b) for v, b in sorted(list(self.buffers.items())) if len(b)}  # a copy: live() reads it too

    def ready(self, window_rows: int) -> list[int]:
        """Versions with a full window waiting, oldest first row first."""
        full = [v for v, b in self.buffers.items() if len(b) >= window_rows]
        return sorted(full, key=lambda v: (int(self.buffers[v]["_commit_version"].iloc[0]),
                                           int(self.buffers[v]["_offset"].iloc[0]), v))

    def floor(self, version: int) -> tuple[int, int]:
        """Where a version's uncounted rows begin, as persisted (new versions: after the persisted ``read_to``)."""
        return self.cursors.get(version, (self.persisted_read_to + 1, 0))

    def cursor(self, version: int, skip: int = 0) -> tuple[int, int]:
        """The position of the version's first row after ``skip`` buffered rows.

        With nothing buffered: just past ``read_to``, but never before the
        persisted cursor (a re-read after a restart may not have reached it yet).
        """
        buf = self.buffers.get(version)
        if buf is not None and len(buf) > skip:
            row = buf.iloc[skip]
            return int(row["_commit_version"]), int(row["_offset"])
        return max(self.floor(version), (self.read_to + 1, 0))

    def peek(self, version: int, n: int) -> tuple["pd.DataFrame", dict]:
        """The next ``n`` rows of a version and the cursors once they are consumed (to persist with them)."""
        rows = self.buffers[version].iloc[:n]
        cursors = {str(v): list(self.cursor(v, n if v == version else 0))
                   for v in sorted(set(self.buffers) | set(self.cursors))}
        first = (int(rows["_commit_version"].iloc[0]), int(rows["_offset"].iloc[0]))
        return rows, {"cursors": cursors, "read_to": self.read_to, "first": first,
                      "next": tuple(cursors[str(version)])}

    def consume(self, version: int, n: int) -> None:
        """Drop the rows of a window that has been persisted."""
        self.buffers[version] = self.buffers[version].iloc[n:].reset_index(drop=True)
        self.cursors[version] = self.cursor(version)
