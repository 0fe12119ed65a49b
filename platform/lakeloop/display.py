"""How lakeloop objects look in Jupyter (``_repr_html_``) and in a terminal (``__repr__``), and progress bars.

The classes of other modules keep only two-line hooks that call in here, so
the rendering lives in one place. Everything here is plain string building
(html-escaped); matplotlib loads only when a drift report draws its plots.

>>> print(text_table([{"a": 1, "b": 0.5}], ["a", "b"]))
a  b
-  ---
1  0.5
"""

from __future__ import annotations

import base64
import html
import math
import sys
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.features.frame import TrainingFrame
    from lakeloop.lake.ingest import IngestResult

STYLE = ("<style>.ll-box{font-family:sans-serif;font-size:13px} .ll-box table{border-collapse:collapse;"
         "margin:4px 0} .ll-box th,.ll-box td{border:1px solid #ddd;padding:2px 6px;text-align:left} "
         ".ll-box th{background:#f4f4f4} .ll-ok{color:#17803d;font-weight:bold} "
         ".ll-bad{color:#b42318;font-weight:bold} .ll-dim{color:#777}</style>")


# -- small pieces -------------------------------------------------------------------
def fmt(value: Any) -> str:
    """A cell as short text: 4 significant digits for floats, ISO time, '' for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    if hasattr(value, "isoformat"):  # pandas Timestamp
        return value.isoformat()
    return str(value)


def esc(value: Any) -> str:
    return html.escape(fmt(value))


def verdict_html(passed: bool | None, yes: str = "passed", no: str = "failed") -> str:
    if passed is None:
        return '<span class="ll-dim">n/a</span>'
    return f'<span class="ll-ok">{yes}</span>' if passed else f'<span class="ll-bad">{no}</span>'


def html_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
               raw: Sequence[str] = ()) -> str:
    """An HTML table; values are escaped except in the ``raw`` columns (already HTML)."""
    rows = list(rows)
    columns = list(columns or (list(rows[0]) if rows else []))
    if not rows:
        return '<p class="ll-dim">(none)</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{r.get(c, '') if c in raw else esc(r.get(c))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def text_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None, indent: str = "") -> str:
    """A plain text table with aligned columns."""
    rows = list(rows)
    columns = list(columns or (list(rows[0]) if rows else []))
    if not rows:
        return indent + "(none)"
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(str(c)), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(indent + line.rstrip() for line in lines)


def box(title: str, *parts: str) -> str:
    return f'{STYLE}<div class="ll-box"><b>{html.escape(title)}</b>{"".join(parts)}</div>'


def section(title: str, body: str) -> str:
    return f"<div><b>{html.escape(title)}</b>{body}</div>"


def png_html(png: bytes, alt: str = "") -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:420px;margin:2px"/>'


# -- training frames ------------------------------------------------------------------
def frame_summary(frame: "TrainingFrame") -> dict:
    data = frame.data
    nulls = {f: float(data[f].isna().mean()) if len(data) and f in data.columns else None for f in frame.features}
    lineage = frame.lineage or {}
    entities = lineage.get("entities") or {}
    views = lineage.get("views") or {}
    return {
        "rows": len(data), "features": list(frame.features), "null_share": nulls,
        "entities": (f"{entities['table']} v{entities.get('version')}" if entities.get("table")
                     else f"in-memory rows ({entities.get('rows', len(data))})" if entities else "unknown"),
        "views": [{"view": name, "view version": v.get("view_version"), "table": v.get("table"),
                   "table version": v.get("table_version"), "source": v.get("source"),
                   "source version": v.get("source_version"), "features": len(v.get("features") or [])}
                  for name, v in views.items()],
        "known_time": lineage.get("known_time"), "timestamp_column": frame.timestamp_column,
    }


def frame_text(frame: "TrainingFrame") -> str:
    s = frame_summary(frame)
    views = ", ".join(f"{v['view']} v{v['view version']} (source v{v['source version']})" for v in s["views"])
    worst = sorted(((n, f) for f, n in s["null_share"].items() if n), reverse=True)[:3]
    nulls = ", ".join(f"{f} {n:.0%}" for n, f in worst) or "none"
    return (f"TrainingFrame({s['rows']} rows, {len(s['features'])} features, entities {s['entities']}; "
            f"views: {views or 'none'}; known_time={s['known_time']}; most nulls: {nulls})")


def frame_html(frame: "TrainingFrame") -> str:
    s = frame_summary(frame)
    feats = [{"feature": f, "dtype": str(frame.data[f].dtype) if f in frame.data.columns else "",
              "null share": f"{n:.1%}" if n is not None else ""} for f, n in s["null_share"].items()]
    head = frame.data.head(5)
    return box(
        f"TrainingFrame: {s['rows']} rows, {len(s['features'])} features",
        f"<div>entities: {esc(s['entities'])}; timestamp column: {esc(s['timestamp_column'])}; "
        f"known time: {esc(s['known_time'])}</div>",
        section("lineage", html_table(s["views"])),
        section("features", html_table(feats)),
        section("first rows", head.to_html(index=False, max_cols=20)),
    )


# -- ingest -------------------------------------------------------------------------
def ingest_text(result: "IngestResult") -> str:
    rules = ", ".join(f"{r} {n}" for r, n in sorted((result.by_rule or {}).items())) or "none"
    return (f"IngestResult({result.table} v{result.version}: {result.accepted} accepted, "
            f"{result.quarantined} quarantined to {result.quarantine_table}"
            f"{'' if result.quarantine_version is None else f' v{result.quarantine_version}'}; by rule: {rules}; "
            f"{result.mode}, batch {result.batch_id})")


def ingest_html(result: "IngestResult") -> str:
    total = result.accepted + result.quarantined
    rules = [{"rule": r, "rows": n} for r, n in sorted((result.by_rule or {}).items(), key=lambda kv: -kv[1])]
    return box(
        f"Ingest into {result.table}",
        html_table([{"accepted": result.accepted, "quarantined": result.quarantined, "rows read": total,
                     "table version": result.version, "quarantine": result.quarantine_table,
                     "quarantine version": result.quarantine_version, "mode": result.mode,
                     "batch": result.batch_id}]),
        section("quarantined rows by rule (a row can break several)", html_table(rules)),
    )


# -- model versions -----------------------------------------------------------------
def gate_line(gate: Mapping | None) -> str:
    if not gate:
        return "not gated"
    word = "passed" if gate.get("passed") else "failed"
    vs = (f" vs champion v{gate['champion_version']} {fmt(gate.get('champion_score'))}"
          if gate.get("champion_version") is not None else f" ({gate.get('schema') or 'no champion'})")
    why = f": {'; '.join(gate.get('reasons') or [])}" if gate.get("reasons") else ""
    return f"{word}: {gate.get('metric')} {fmt(gate.get('score'))}{vs}, p95 {fmt(gate.get('p95_ms'))} ms{why}"


def model_version_text(mv) -> str:
    metrics = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(mv.metrics.items())) or "none"
    return (f"ModelVersion({mv.name} v{mv.version}, aliases [{', '.join(mv.aliases)}], {mv.family}; "
            f"holdout {metrics}; gate {gate_line(mv.gate)}; data {mv.data or 'unknown'})")


def model_version_html(mv) -> str:
    gate = mv.gate or {}
    metrics = [{"metric": k, "holdout": v} for k, v in sorted(mv.metrics.items())]
    gate_rows = [{"check": "verdict", "value": verdict_html(gate.get("passed") if gate else None)},
                 {"check": "score", "value": esc(f"{gate.get('metric')} {fmt(gate.get('score'))}") if gate else ""},
                 {"check": "champion", "value": esc(
                     f"v{gate['champion_version']} {fmt(gate.get('champion_score'))}"
                     if gate.get("champion_version") is not None else gate.get("schema", ""))},
                 {"check": "p95 latency", "value": esc(f"{fmt(gate.get('p95_ms'))} ms (budget "
                                                       f"{fmt(gate.get('latency_budget_ms'))})") if gate else ""},
                 {"check": "reasons", "value": esc("; ".join(gate.get("reasons") or [])) if gate else ""}]
    links = [{"what": k, "where": v} for k, v in mv.links.items()]
    return box(
        f"{mv.name} v{mv.version}" + (f"  [{', '.join(mv.aliases)}]" if mv.aliases else ""),
        f"<div>{esc(mv.family)} {esc(mv.params)}; {esc(mv.uri)}</div>",
        section("holdout metrics", html_table(metrics)),
        section("gate", html_table(gate_rows, ["check", "value"], raw=["value"])),
        section("lineage", html_table(links)),
    )


# -- drift reports ------------------------------------------------------------------
class DriftReport(dict):
    """A drift detector's answer: still the plain dict it always was, plus a display.

    It remembers the detector and window it came from, so Jupyter shows the
    per-feature histograms inline; a pickled or copied report is a plain dict.
    """

    def __init__(self, result: Mapping, *, detector=None, window=None):
        super().__init__(result)
        self._detector, self._window = detector, window

    def __reduce__(self):
        return (dict, (dict(self),))

    def __repr__(self) -> str:
        return drift_text(self)

    def _repr_html_(self) -> str:
        return drift_html(self, self.plots())

    def plots(self, max_features: int = 4) -> list[bytes]:
        """PNG images of the most drifted features (reference against window), when the window is known."""
        if self._detector is None or self._window is None:
            return []
        import tempfile
        from pathlib import Path

        from lakeloop.monitoring import report

        with tempfile.TemporaryDirectory() as tmp:
            paths = report.write(self._detector, self._window, dict(self), tmp, max_features=max_features)
            return [Path(p).read_bytes() for p in paths if str(p).endswith(".png")]


def drift_rows(report: Mapping) -> list[dict]:
    rows = []
    for name, e in sorted((report.get("features") or {}).items(),
                          key=lambda kv: (kv[1].get("p_value") is None, kv[1].get("p_value") or 0.0)):
        rows.append({"feature": name, "test": e.get("test"), "p-value": e.get("p_value"),
                     "statistic": e.get("statistic"), "missing": e.get("missing_rate"),
                     "unseen": e.get("unseen") or None, "drift": e.get("drift")})
    mmd = report.get("mmd")
    if mmd:
        rows.append({"feature": "(all: MMD)", "test": "mmd", "p-value": mmd.get("p_value"),
                     "statistic": mmd.get("distance"), "drift": mmd.get("drift")})
    return rows


def drift_text(report: Mapping) -> str:
    head = (f"DriftReport(drift={report.get('drift')}, drifted={report.get('drifted')}, rows={report.get('rows')}, "
            f"reference_rows={report.get('reference_rows')}, {report.get('tests')} tests, "
            f"{report.get('correction')} at alpha {report.get('alpha')})")
    return head + "\n" + text_table(drift_rows(report), ["feature", "test", "p-value", "drift"], indent="  ")


def drift_html(report: Mapping, plots: Sequence[bytes] = ()) -> str:
    rows = drift_rows(report)
    for r in rows:
        r["flag"] = verdict_html(not r["drift"], "ok", "DRIFT")
    images = "".join(png_html(p, "drift plot") for p in plots)
    return box(
        f"Drift report: {'DRIFT' if report.get('drift') else 'no drift'} "
        f"({report.get('rows')} rows against {report.get('reference_rows')} reference rows)",
        f"<div>{esc(report.get('tests'))} tests, {esc(report.get('correction'))} at alpha "
        f"{esc(report.get('alpha'))} (per-test threshold {esc(report.get('threshold'))}); drifted: "
        f"{esc(report.get('drifted') or 'none')}</div>",
        html_table(rows, ["feature", "test", "p-value", "statistic", "missing", "unseen", "flag"], raw=["flag"]),
        f"<div>{images}</div>" if images else "",
    )


# -- serving ------------------------------------------------------------------------
class ServingStatus(dict):
    """``ll.serving.status()``: the controller's state (a dict, as before) with a display.

    ``live`` (when the endpoint answered) adds each version's shadow statistics.
    """

    def __init__(self, state: Mapping, live: Mapping | None = None):
        super().__init__(state)
        if live is not None:
            self["live"] = dict(live)

    def __reduce__(self):
        return (dict, (dict(self),))

    def rows(self) -> list[dict]:
        return serving_rows(self)

    def __repr__(self) -> str:
        return (f"ServingStatus(state {self.get('version')}, {len(self.get('models') or {})} model(s))\n"
                + text_table(self.rows(), SERVING_COLUMNS, indent="  "))

    def _repr_html_(self) -> str:
        return box(f"Serving (state version {self.get('version')})", html_table(self.rows(), SERVING_COLUMNS))


def serving_status(state: Mapping, url: str, timeout_s: float = 2.0) -> ServingStatus:
    """The controller state with the endpoint's ``GET /v1/models`` (shadow statistics) when it answers."""
    from lakeloop.errors import LakeloopError
    from lakeloop.serving.service import http_json

    try:
        live = http_json("GET", f"{url}/v1/models", timeout=timeout_s)
    except LakeloopError:  # the ingress is not up: the controller's state alone
        live = None
    return ServingStatus(state, live)


SERVING_COLUMNS = ["model", "version", "traffic %", "shadow", "shadow requests", "agreement", "shadow errors",
                   "deployed at"]


def serving_rows(state: Mapping) -> list[dict]:
    """One row per served version from a controller state (``{"models": {name: {"versions", "policy"}}}``)."""
    live = ((state.get("live") or {}).get("models")) or {}
    rows = []
    for name, m in sorted((state.get("models") or {}).items()):
        policy = m.get("policy") or {}
        weights = {str(k): float(v) for k, v in (policy.get("weights") or {}).items()}
        total = sum(weights.values()) or 1.0
        shadow = {str(v) for v in policy.get("shadow") or []}
        for v, info in sorted((m.get("versions") or {}).items(), key=lambda kv: int(kv[0])):
            stats = (((live.get(name) or {}).get("versions") or {}).get(str(v)) or {}).get("shadow_stats") or {}
            rows.append({"model": name, "version": int(v), "traffic %": round(100 * weights.get(str(v), 0.0) / total, 2),
                         "shadow": str(v) in shadow,
                         "shadow requests": stats.get("requests"), "agreement": stats.get("agreement_rate"),
                         "shadow errors": stats.get("errors"), "deployed at": info.get("deployed_at")})
    return rows


# -- events -------------------------------------------------------------------------
def event_rows(records: Iterable[Mapping]) -> list[dict]:
    return [{"time": str(r.get("time") or "")[:19], "model": r.get("model"), "version": r.get("version"), "kind": r.get("kind"),
             "reason": (str(r.get("reason") or ""))[:120]} for r in records]


# -- progress -----------------------------------------------------------------------
def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell), where stderr is no terminal but HTML renders."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


class ProgressBar:
    """A progress bar: rich on stderr in a terminal, an HTML bar updated in place in Jupyter.

    ``with ProgressBar("AutoML search", total=10) as bar: bar.update(completed=3, description=...)``.
    ``enabled=None`` shows it in a terminal or a notebook and stays quiet otherwise (pipes, CI logs).
    """

    def __init__(self, description: str, total: float | None = None, *, enabled: bool | None = None,
                 info: str = "", stderr: bool = True):
        self.description, self.total, self.info, self.stderr = description, total, info, stderr
        self.completed = 0.0
        self.notebook = in_notebook()
        self.enabled = (sys.stderr.isatty() or self.notebook) if enabled is None else bool(enabled)
        self._rich = self._task = self._handle = None

    def __enter__(self) -> "ProgressBar":
        if not self.enabled:
            return self
        if self.notebook:
            from IPython.display import display

            self._handle = display(self._bundle(), raw=True, display_id=True)
        else:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._rich = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                                  console=Console(stderr=self.stderr), transient=False)
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, info=self.info)
        return self

    def update(self, *, completed: float | None = None, advance: float | None = None, description: str | None = None,
               info: str | None = None, total: float | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if advance:
            self.completed += advance
        self.description = description or self.description
        self.info = self.info if info is None else info
        self.total = self.total if total is None else total
        if self._rich is not None:
            self._rich.update(self._task, completed=self.completed, description=self.description, info=self.info,
                              total=self.total)
        elif self._handle is not None:
            self._handle.update(self._bundle(), raw=True)

    def print(self, message: str) -> None:
        """A line above the bar (rich markup such as ``[cyan]x[/]`` is rendered, or dropped in Jupyter)."""
        if self._rich is not None:
            self._rich.console.print(message)
        elif self.enabled:
            from rich.text import Text

            print(Text.from_markup(message).plain)

    def _html(self) -> str:
        total = self.total
        share = "" if not total else f' value="{self.completed:g}" max="{total:g}"'
        count = f"{self.completed:g}/{total:g}" if total else f"{self.completed:g}"
        return (f'<div class="ll-progress"><b>{html.escape(self.description)}</b> '
                f'<progress{share} style="width:240px"></progress> {html.escape(count)} '
                f'<span>{html.escape(self.info)}</span></div>')

    def _bundle(self) -> dict:
        return {"text/html": self._html(), "text/plain": self.text()}

    def text(self) -> str:
        count = f"{self.completed:g}/{self.total:g}" if self.total else f"{self.completed:g}"
        return f"{self.description} {count} {self.info}".strip()

    def __exit__(self, *exc) -> bool:
        if self._rich is not None:
            self._rich.stop()
        return False
