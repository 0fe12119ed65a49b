"""An ingress replica's spool: log records on disk before the answer, shipped to the writer after it.

The ingress answers a prediction or a label once its log records are in the
replica's own write-ahead log (``<wal root>/spool/<pid>-<id>/<table>/``,
written and fsync'd by :class:`~lakeloop.serving.wal.WriteAheadLog`); a
background task (:class:`~lakeloop.serving.logbook.LogShipper`) sends the
spooled batches to the writer actor in order, each with its batch id (the
writer writes a batch it already has once), and a segment is removed once
it is sealed and the writer has acknowledged every batch in it. So the
request's latency holds one local fsync instead of a round trip to the writer.

The replica holds an exclusive ``flock`` on its folder's ``owner.lock`` for
its lifetime. A folder whose lock can be taken belongs to a replica that
died: another ingress replica of the lake on that node (a sibling, or the one
Serve starts in its place) takes the lock, ships what the folder holds and
removes it (:func:`orphans`, :func:`read_folder`). A batch the dead replica
had already shipped is sent again and recognised by the writer (it remembers
batch ids, and replays them from its own log after a restart).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections import Counter, deque
from pathlib import Path

from lakeloop.serving.wal import WriteAheadLog, read_segment, segment_numbers, segment_path

LOCK = "owner.lock"
SEGMENT_ROWS = 2000  # a spool segment is sealed at this many rows (and removed once all of it is acknowledged)


def _take_lock(folder: Path, block: bool) -> int | None:
    """An fd holding ``folder``'s owner lock, or None when another process holds it."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Spool:
    """This process's spooled batches: written durably, then tracked until the writer acknowledges them.

    Not thread-safe: :meth:`write` may run in a worker thread while no other call runs (the shipper
    awaits it), every other call runs on the event loop.
    """

    def __init__(self, root: str | os.PathLike, tables: tuple[str, ...], segment_rows: int = SEGMENT_ROWS):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.folder = self.root / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.folder.mkdir()
        self._lock_fd = _take_lock(self.folder, block=True)
        self.segment_rows = segment_rows
        self.wal = {t: WriteAheadLog(self.folder / t) for t in tables}
        self.pending: deque = deque()  # (table, seq, batch_id, records), oldest first
        self.pending_rows = 0
        self._open: Counter = Counter()  # (table, seq) -> batches of that segment not yet acknowledged

    def write(self, table: str, batch_id: str, records: list[dict]) -> int:
        """Append one batch durably; returns its segment number (then :meth:`track` it)."""
        wal = self.wal[table]
        wal.append(batch_id, records)
        return wal.active

    def track(self, table: str, seq: int, batch_id: str, records: list[dict]) -> None:
        self.pending.append((table, seq, batch_id, records))
        self.pending_rows += len(records)
        self._open[(table, seq)] += 1
        if self.wal[table].active_rows >= self.segment_rows:
            self._seal(table)

    def next_group(self, max_rows: int) -> tuple[str, list[tuple[str, list[dict]]]] | None:
        """The oldest pending batches of one table, up to ``max_rows`` rows (at least one batch)."""
        if not self.pending:
            return None
        table, group, rows = self.pending[0][0], [], 0
        for t, _, batch_id, records in self.pending:
            if t != table or (group and rows + len(records) > max_rows):
                break
            group.append((batch_id, records))
            rows += len(records)
        return table, group

    def acknowledged(self, n: int) -> None:
        """The oldest ``n`` pending batches are with the writer: sealed segments left with none go."""
        for _ in range(n):
            table, seq, _, records = self.pending.popleft()
            self.pending_rows -= len(records)
            self._open[(table, seq)] -= 1
            if not self._open[(table, seq)]:
                del self._open[(table, seq)]
                if seq != self.wal[table].active:
                    self.wal[table].remove(seq)

    def _seal(self, table: str) -> None:
        seq = self.wal[table].seal()
        if seq is not None and not self._open.get((table, seq)):
            self.wal[table].remove(seq)

    def close(self) -> bool:
        """Seal every segment; with nothing pending, remove the folder. Returns whether it was removed.

        The lock is released either way: what is left is adopted by another replica.
        """
        for table in self.wal:
            self._seal(table)
        removed = not self.pending
        if self._lock_fd is not None:
            release(self.folder, self._lock_fd, remove=removed)
            self._lock_fd = None
        elif removed:
            shutil.rmtree(self.folder, ignore_errors=True)
        return removed


def other_folders(root: str | os.PathLike, own: Path | None = None) -> list[Path]:
    """The spool folders under ``root`` but ``own``: other ingress replicas' on this node (alive, or dead and not
    yet adopted), by name; none when ``root`` is missing."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries if e.is_dir() and Path(e.path) != own]


def orphans(root: str | os.PathLike, own: Path | None = None) -> list[tuple[Path, int]]:
    """The spool folders under ``root`` whose owner is gone, each with an fd holding its lock now."""
    found = []
    for folder in other_folders(root, own):
        try:
            fd = _take_lock(folder, block=False)
        except FileNotFoundError:  # removed meanwhile by its owner or another adopter
            continue
        if fd is not None:
            found.append((folder, fd))
    return found


def read_folder(folder: Path, tables: tuple[str, ...]) -> list[tuple[str, str, list[dict]]]:
    """A spool folder's batches: ``[(table, batch_id, records)]``, each table's oldest first."""
    out = []
    for table in tables:
        for seq in segment_numbers(folder / table):
            batches = read_segment(segment_path(folder / table, seq))
            out.extend((table, batch_id, records) for batch_id, records in batches)
    return out


def release(folder: Path, fd: int, remove: bool) -> None:
    """Done with an adopted folder: removed (everything shipped) or left for a later try; lock released."""
    if remove:
        shutil.rmtree(folder, ignore_errors=True)
    os.close(fd)
