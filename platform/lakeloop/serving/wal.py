"""The write-ahead log of the inference log writer: accepted records on disk before they are acknowledged.

One folder per table holds numbered segments (``segment-<seq>.jsonl``).
Each line is one batch, ``{"batch": id, "records": [...]}``, written and
fsync'd before :meth:`WriteAheadLog.append` returns, so a batch that was
acknowledged survives a kill of the process. A kill during a write can only
leave a torn last line, of a batch that was never acknowledged; reading skips
it. Writing always goes to a new segment after a (re)start, so a torn line is
always the last of its segment.

The writer seals the active segment, commits sealed segments to Delta with the
segment number as the commit's app transaction version, and removes them a
while later (:data:`RETAIN_S`): their batch ids stay known, so a batch sent
again after a lost acknowledgement is recognised and not written twice.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import date, datetime
from pathlib import Path

SEGMENT = re.compile(r"segment-(\d{12})\.jsonl")
RETAIN_S = 120.0  # committed segments are kept this long, so retried batches are still recognised


def _default(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"a log record holds a {type(value).__name__}, which JSON cannot store: {value!r}")


class WriteAheadLog:
    """The segments of one table under ``folder``; not thread-safe (the writer holds a lock)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self.active: int | None = None  # the segment being written, if any
        self.active_rows = 0
        self.next_seq = max(self.segments(), default=0) + 1

    def path(self, seq: int) -> Path:
        return segment_path(self.folder, seq)

    def segments(self) -> list[int]:
        """Every segment on disk, oldest first (the active one included)."""
        return segment_numbers(self.folder)

    def start_after(self, seq: int) -> None:
        """New segments get numbers above ``seq`` (the last one committed to Delta)."""
        self.next_seq = max(self.next_seq, seq + 1)

    def append(self, batch_id: str, records: list[dict]) -> None:
        """Write one batch durably (write + fsync) to the active segment."""
        self.append_many([(batch_id, records)])

    def append_many(self, batches: list[tuple[str, list[dict]]]) -> None:
        """Write batches durably, a line each, with one fsync."""
        data = b"".join((json.dumps({"batch": batch_id, "records": records}, default=_default,
                                    allow_nan=False) + "\n").encode() for batch_id, records in batches)
        if self._fd is None:
            self.active, self.next_seq = self.next_seq, self.next_seq + 1
            self._fd = os.open(self.path(self.active), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            _fsync_dir(self.folder)  # the new file's name is durable too
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        self.active_rows += sum(len(records) for _, records in batches)

    def seal(self) -> int | None:
        """Close the active segment (later appends open a new one); returns its number."""
        if self._fd is None:
            return None
        os.close(self._fd)
        sealed, self._fd, self.active, self.active_rows = self.active, None, None, 0
        return sealed

    def sealed(self) -> list[int]:
        return [s for s in self.segments() if s != self.active]

    def read(self, seq: int) -> list[tuple[str, list[dict]]]:
        """The batches of a segment: ``[(batch_id, records)]``; a torn last line is skipped."""
        return read_segment(self.path(seq))

    def remove(self, seq: int) -> None:
        self.path(seq).unlink(missing_ok=True)

    def age_s(self, seq: int) -> float:
        try:
            return time.time() - self.path(seq).stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    def close(self) -> None:
        self.seal()


def segment_path(folder: str | os.PathLike, seq: int) -> Path:
    return Path(folder, f"segment-{seq:012d}.jsonl")


def segment_numbers(folder: str | os.PathLike) -> list[int]:
    """The numbers of the segments in ``folder``, oldest first; none when it is missing (creates nothing:
    for reading another process's log, which may remove the folder once shipped)."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(m.group(1)) for name in names if (m := SEGMENT.fullmatch(name)))


def read_segment(path: str | os.PathLike) -> list[tuple[str, list[dict]]]:
    """A segment file's batches: ``[(batch_id, records)]``; a torn last line (a write cut short by a kill,
    or one still being written by its owner) is skipped."""
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:  # never acknowledged (yet)
                continue
            out.append((entry["batch"], entry["records"]))
    return out


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
