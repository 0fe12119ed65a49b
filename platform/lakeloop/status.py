"""``ll.status()`` and ``lakeloop status``: the platform of one lake on one screen.

Tables with versions, feature views with freshness, models with aliases and
gate verdicts, what is served (traffic, shadows, request rates), monitors
with their last window, the last events and the URLs. It reads the lake and
the MLflow registry, and asks the serving endpoint, the Ray dashboard and the
MLflow UI over loopback HTTP whether they answer; it never starts Ray.

>>> import lakeloop                                   # doctest: +SKIP
>>> lakeloop.connect().status()                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lakeloop.client import Lakeloop

RATE_WINDOW_S = 300  # request rates are over the last five minutes of the inference log
SECTIONS = ("tables", "feature_views", "models", "serving", "monitors", "events", "urls")


class PlatformStatus(dict):
    """Plain JSON-able data (``json.dumps`` it as is) that shows itself as one screen."""

    def __reduce__(self):
        return (dict, (dict(self),))

    def __repr__(self) -> str:
        return render_text(self)

    def _repr_html_(self) -> str:
        return render_html(self)


def status(ll: "Lakeloop", *, events_limit: int = 10, probe_timeout_s: float = 1.0) -> PlatformStatus:
    """Everything ``lakeloop status`` shows, as data. Sections that cannot be read say why (``error``)."""
    import os

    from lakeloop.errors import ConfigError

    root = ll.config.lake.root
    if "://" not in root and not os.path.isdir(root):
        raise ConfigError(f"there is no lake at {root}: nothing was ingested there yet (check --lake or "
                            "lake.root)")
    now = datetime.now(timezone.utc)
    out = PlatformStatus(lake=ll.config.lake.root, at=now.isoformat(timespec="seconds"))
    tables = _guard(out, "tables", lambda: _tables(ll))
    _guard(out, "feature_views", lambda: _views(ll, tables or []))
    _guard(out, "models", lambda: _models(ll))
    _guard(out, "serving", lambda: _serving(ll, now, probe_timeout_s))
    _guard(out, "monitors", lambda: _monitors(ll))
    _guard(out, "events", lambda: _events(ll, events_limit))
    out["urls"] = _urls(ll, out.get("serving"), probe_timeout_s)
    return out


def _guard(out: dict, key: str, fn):
    """One section; an unreadable part says why instead of hiding the rest."""
    from lakeloop.errors import LakeloopError

    try:
        out[key] = fn()
    except LakeloopError as exc:
        out[key] = {"error": str(exc)[:500]}
    except Exception as exc:  # MlflowException, delta-rs errors: reported, not fatal to the rest of the screen
        out[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return out[key] if not isinstance(out[key], dict) or "error" not in out[key] else None


def _iso(value) -> str | None:
    if value is None:
        return None
    try:
        import pandas as pd

        if pd.isna(value):
            return None
        return pd.Timestamp(value).isoformat(timespec="seconds")
    except (TypeError, ValueError):
        return str(value)


# -- sections ---------------------------------------------------------------------------
def _tables(ll: "Lakeloop") -> list[dict]:
    rows = []
    for name in ll.lake.tables():
        table = ll.lake.table(name)
        last = table.history(1)
        head = last[0] if last else {}
        rows.append({"table": name, "version": head.get("version"), "last_write": _iso(head.get("timestamp")),
                     "operation": head.get("operation")})
    return rows


def _views(ll: "Lakeloop", tables: list[dict]) -> list[dict]:
    if "catalog.feature_views" not in {t["table"] for t in tables}:
        return []
    versions = {t["table"]: t["version"] for t in tables}
    rows = []
    for info in ll.features.list():
        source_now = versions.get(info["source"])
        done = info["last_materialized_source_version"]
        rows.append({"view": info["name"], "version": info["version"], "source": info["source"],
                     "source_version": source_now, "materialized_source_version": done,
                     "fresh": None if source_now is None else done is not None and done >= source_now,
                     "newest_event_time": _iso(info["newest_event_time"]), "last_run": _iso(info["last_run"]),
                     "last_run_mode": info["last_run_mode"], "table_version": info["table_version"]})
    return rows


def _mlflow_store_exists(ll: "Lakeloop") -> bool:
    """False for a sqlite store whose file is not there yet (opening it would create it)."""
    from pathlib import Path

    uri = ll.config.registry_uri
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).is_file()
    return True


def _models(ll: "Lakeloop") -> list[dict]:
    if not _mlflow_store_exists(ll):
        return []
    client = ll.mlflow
    rows = []
    for m in sorted(client.search_registered_models(), key=lambda m: m.name):
        quoted = m.name.replace("'", "\\'")
        versions = sorted(client.search_model_versions(f"name='{quoted}'"), key=lambda v: int(v.version))
        aliases = {a: int(v) for a, v in (m.aliases or {}).items()}
        for v in versions:
            tags = v.tags or {}
            metric = tags.get("lakeloop.metric")
            gate = tags.get("lakeloop.gate.passed")
            rows.append({"model": m.name, "version": int(v.version),
                         "aliases": sorted(a for a, n in aliases.items() if n == int(v.version)),
                         "family": tags.get("lakeloop.family"), "metric": metric,
                         "score": _float(tags.get(f"lakeloop.holdout.{metric}")) if metric else None,
                         "gate": None if gate is None else gate == "true",
                         "gate_reasons": tags.get("lakeloop.gate.reasons") or None,
                         "canary": tags.get("lakeloop.canary")})
    return rows


def _float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _serving(ll: "Lakeloop", now: datetime, timeout_s: float) -> dict:
    """The endpoint's live view when it serves this lake's state, else the last state the lake recorded."""
    from lakeloop.errors import LakeloopError
    from lakeloop.serving.controller import HISTORY
    from lakeloop.serving.service import http_json

    url = ll.serving.url
    recorded = None
    history = ll.lake.table(HISTORY)
    if history.exists():
        df = history.to_pandas(columns=["at", "state"])
        if len(df):
            recorded = json.loads(df.sort_values("at").iloc[-1]["state"])
    live = None
    try:
        live = http_json("GET", f"{url}/v1/models", timeout=timeout_s)
    except LakeloopError:
        live = None
    ours = live is not None and (recorded is None and not live.get("models")
                                 or recorded is not None and live.get("state_version") == recorded.get("version"))
    models: dict[str, dict] = {}
    if ours:
        for name, m in live["models"].items():
            models[name] = {"traffic": {str(k): v for k, v in m["traffic"].items()}, "shadow": m["shadow"],
                            "versions": {v: {"deployed_at": i.get("deployed_at"),
                                             "shadow_stats": i.get("shadow_stats")}
                                         for v, i in m["versions"].items()}}
    elif recorded is not None:
        from lakeloop.serving.policy import TrafficPolicy

        for name, m in (recorded.get("models") or {}).items():
            policy = TrafficPolicy.from_dict(m["policy"]) if m.get("policy") else None
            models[name] = {"traffic": {str(k): v for k, v in (policy.percent if policy else {}).items()},
                            "shadow": list(policy.shadow) if policy else [],
                            "versions": {v: {"deployed_at": i.get("deployed_at"),
                                             "shadow_stats": None} for v, i in (m.get("versions") or {}).items()}}
    rates = _request_rates(ll, now)
    for name, m in models.items():
        for v, info in m["versions"].items():
            count = rates.get((name, int(v)), 0)
            info["requests_5m"] = count
            info["requests_per_min"] = round(count / (RATE_WINDOW_S / 60), 2)
    return {"running": bool(ours), "url": url, "source": "endpoint" if ours else ("lake" if recorded else None),
            "answering_other_state": live is not None and not ours,
            "state_version": (live or {}).get("state_version") if ours else (recorded or {}).get("version"),
            "models": models}


def _request_rates(ll: "Lakeloop", now: datetime) -> dict[tuple[str, int], int]:
    """Primary predictions (requests) per model and version in the last :data:`RATE_WINDOW_S` s of the log."""
    import pandas as pd

    from lakeloop.serving.logbook import INFERENCE

    table = ll.lake.table(INFERENCE)
    if not table.exists():
        return {}
    since = pd.Timestamp(now - timedelta(seconds=RATE_WINDOW_S))
    df = table.to_pandas(columns=["request_id", "time", "model", "version", "route"],
                         filters=[("time", ">=", since.to_pydatetime())])
    df = df[df["route"] == "primary"]
    if df.empty:
        return {}
    counts = df.groupby(["model", "version"])["request_id"].nunique()
    return {(str(m), int(v)): int(n) for (m, v), n in counts.items()}


def _monitors(ll: "Lakeloop") -> list[dict]:
    from lakeloop.monitoring.monitor import WINDOWS

    table = ll.lake.table(WINDOWS)
    if not table.exists():
        return []
    df = table.to_pandas(columns=["model", "window", "version", "rows", "end_time", "processed_at", "drift",
                                  "prediction_drift", "drifted", "min_p_value", "metric", "metric_value", "labelled"])
    rows = []
    for model, g in df.groupby("model"):
        last = g.sort_values("window").iloc[-1]
        try:
            drifted = json.loads(last["drifted"]) if last["drifted"] else []
        except ValueError:
            drifted = [last["drifted"]]
        rows.append({"model": str(model), "windows": int(len(g)), "last_window": int(last["window"]),
                     "version": int(last["version"]), "rows": int(last["rows"]),
                     "processed_at": _iso(last["processed_at"]),
                     "drift": None if _na(last["drift"]) else bool(last["drift"]),
                     "drifted": drifted, "min_p_value": None if _na(last["min_p_value"]) else float(last["min_p_value"]),
                     "drift_windows": int(g["drift"].fillna(False).astype(bool).sum()),
                     "metric": last["metric"], "metric_value": None if _na(last["metric_value"])
                     else float(last["metric_value"])})
    return rows


def _na(value) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def _events(ll: "Lakeloop", limit: int) -> list[dict]:
    from lakeloop.monitoring import events as ev

    if not ll.lake.table(ev.EVENTS).exists():
        return []
    return ev.as_records(ev.read_events(ll, limit=limit))


def _answers(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status < 500
    except urllib.error.HTTPError as exc:  # 401 from Ray's token auth still means it is up
        return exc.code < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _urls(ll: "Lakeloop", serving: Any, timeout_s: float) -> dict:
    """The endpoint, the Ray dashboard and the MLflow UI, each with whether it answers now."""
    import sys

    cfg = ll.config
    endpoint = ll.serving.url
    dashboard = None
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():  # this process runs Ray: its dashboard
        from ray._private.worker import get_dashboard_url

        found = get_dashboard_url()
        dashboard = (found if "://" in found else f"http://{found}") if found else None
    if dashboard is None:
        host = cfg.ray.dashboard_host
        dashboard = f"http://{host}:{cfg.ray.dashboard_port or 8265}"
    mlflow_ui = "http://127.0.0.1:5000"
    return {
        "endpoint": {"url": endpoint, "docs": f"{endpoint}/docs",
                     "up": bool(serving.get("running")) if isinstance(serving, dict) and "running" in serving
                     else _answers(f"{endpoint}/healthz", timeout_s)},
        "ray_dashboard": {"url": dashboard, "up": _answers(f"{dashboard}/api/version", timeout_s)},
        "mlflow_ui": {"url": mlflow_ui, "up": _answers(f"{mlflow_ui}/health", timeout_s),
                      "tracking_uri": cfg.tracking_uri, "start": "lakeloop ui"},
    }


# -- rendering ---------------------------------------------------------------------------
def _section_rows(data: dict) -> dict[str, tuple[list[dict], list[str]]]:
    """Each section as (rows, columns) for a table."""
    out: dict[str, tuple[list[dict], list[str]]] = {}
    if isinstance(data.get("tables"), list):
        out["tables"] = (data["tables"], ["table", "version", "last_write", "operation"])
    if isinstance(data.get("feature_views"), list):
        rows = [{"view": f"{v['view']} v{v['version']}", "source": f"{v['source']} v{v['source_version']}",
                 "materialized": None if v["materialized_source_version"] is None
                 else f"source v{v['materialized_source_version']}",
                 "fresh": v["fresh"], "newest event": v["newest_event_time"], "last run": v["last_run"]}
                for v in data["feature_views"]]
        out["feature views"] = (rows, ["view", "source", "materialized", "fresh", "newest event", "last run"])
    if isinstance(data.get("models"), list):
        out["models"] = (data["models"], ["model", "version", "aliases", "family", "metric", "score", "gate",
                                          "canary"])
    serving = data.get("serving")
    if isinstance(serving, dict) and "models" in serving:
        rows = []
        for name, m in serving["models"].items():
            for v, info in sorted(m["versions"].items(), key=lambda kv: int(kv[0])):
                stats = info.get("shadow_stats") or {}
                rows.append({"model": name, "version": int(v), "traffic %": m["traffic"].get(str(v), 0.0),
                             "shadow": int(v) in [int(s) for s in m["shadow"]],
                             "req/min (5m)": info.get("requests_per_min"),
                             "shadow agreement": stats.get("agreement_rate"), "shadow errors": stats.get("errors")})
        out["served" + (" (live)" if serving.get("running") else " (last recorded state; not running)")] = (
            rows, ["model", "version", "traffic %", "shadow", "req/min (5m)", "shadow agreement", "shadow errors"])
    if isinstance(data.get("monitors"), list):
        out["monitors"] = (data["monitors"], ["model", "windows", "last_window", "version", "drift", "drifted",
                                              "drift_windows", "metric", "metric_value", "processed_at"])
    if isinstance(data.get("events"), list):
        from lakeloop.display import event_rows

        out["last events"] = (event_rows(data["events"]), ["time", "model", "version", "kind", "reason"])
    urls = data.get("urls") or {}
    out["urls"] = ([{"what": k, "url": u.get("url"), "up": u.get("up")} for k, u in urls.items()],
                   ["what", "url", "up"])
    return out


def _errors(data: dict) -> list[str]:
    return [f"{k}: {v['error']}" for k, v in data.items() if isinstance(v, dict) and "error" in v]


def render_text(data: dict) -> str:
    from lakeloop.display import text_table

    lines = [f"lakeloop status of {data.get('lake')} at {data.get('at')}"]
    for title, (rows, columns) in _section_rows(data).items():
        lines += ["", f"{title}:", text_table(rows, columns, indent="  ")]
    lines += [f"! {e}" for e in _errors(data)]
    return "\n".join(lines)


def render_html(data: dict) -> str:
    from lakeloop.display import box, esc, html_table, section

    parts = [section(title, html_table(rows, columns)) for title, (rows, columns) in _section_rows(data).items()]
    parts += [f"<div class='ll-bad'>{esc(e)}</div>" for e in _errors(data)]
    return box(f"lakeloop status of {data.get('lake')} at {data.get('at')}", *parts)


def print_rich(data: dict) -> None:
    """The CLI's screen: one rich table per section."""
    from lakeloop.cli.output import console, print_table

    c = console()
    c.print(f"[bold]lakeloop status[/] of {data.get('lake')} at {data.get('at')}")
    from lakeloop.display import fmt

    for title, (rows, columns) in _section_rows(data).items():
        print_table(title, [{col: fmt(r.get(col)) for col in columns} for r in rows], columns)
    for e in _errors(data):
        c.print(f"[red]{e}[/]")
