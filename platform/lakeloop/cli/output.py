"""What every CLI command shares: the connection it builds and how it prints."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Iterable


@dataclass
class State:
    config: str | None = None
    lake_root: str | None = None
    _ll: Any = field(default=None, repr=False)

    def connect(self):
        if self._ll is None:
            import lakeloop

            overrides = {"lake_root": self.lake_root} if self.lake_root else {}
            self._ll = lakeloop.connect(self.config, **overrides)
        return self._ll


def _default(o):
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def print_json(data: Any) -> None:
    print(json.dumps(data, default=_default, indent=2))


def console():
    from rich.console import Console

    return Console(highlight=False)


def print_table(title: str | None, rows: Iterable[dict], columns: list[str] | None = None) -> None:
    from rich.table import Table

    rows = list(rows)
    columns = columns or (list(rows[0]) if rows else [])
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(str(c), overflow="fold")
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in columns])
    console().print(table)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.isoformat(timespec="seconds")
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


@contextmanager
def sigterm_as_interrupt():
    """Within it, SIGTERM raises KeyboardInterrupt, as Ctrl-C does (in the main thread; elsewhere a no-op).

    SIGTERM is how a supervisor (systemd, docker, kubernetes, ``kill``) stops a process: with this, the
    caller's cleanup runs (``serve up`` flushes the inference log and stops Serve and its haproxy; Python's
    default SIGTERM left haproxy holding the port and Ray's agents running). The previous handler is back
    after it, so a second SIGTERM during a cleanup that follows stops the process at once.
    """
    import signal
    import threading

    def _stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_until(seconds: float | None) -> None:
    """Block until ``seconds`` have passed (``None``: until stopped), Ctrl-C or SIGTERM (see
    :func:`sigterm_as_interrupt`)."""
    import time

    deadline = None if seconds is None else time.monotonic() + seconds
    with sigterm_as_interrupt():
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
