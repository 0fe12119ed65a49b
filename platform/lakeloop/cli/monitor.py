"""``lakeloop monitor ...``: what the drift monitors saw, and the events log."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from lakeloop.cli.output import console, print_json, print_table

app = typer.Typer(help="Drift monitoring: monitor status and the events log.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of tables.")


@app.command()
def status(ctx: typer.Context, model: str,
           live: bool = typer.Option(False, "--live", help="Also ask the running monitor actor (needs Ray)."),
           as_json: bool = JSON):
    """Windows, cursor, last p-values and drift flags per served version, live metric, recent events."""
    from lakeloop import monitoring

    info = monitoring.status(ctx.obj.connect(), model, live=live)
    if as_json:
        return print_json(info)
    c = console()
    c.print(f"[bold]{model}[/]: {info['windows']} windows, {info['rows']} rows, running={info['running']}, "
            f"backend={info['backend']}, cursor={info['cursor'] and info['cursor']['read_to']}")
    rows = [{"version": v, "windows": s["windows"], "drift now": s["drift"], "drift windows": s["drift_windows"],
             "drifted": ", ".join(s["drifted"]), "mmd p": (s["mmd"] or {}).get("p_value"),
             "metric": s["metric"], "value": s["metric_value"]} for v, s in info["versions"].items()]
    print_table("versions", rows)
    print_table("recent events", [{k: e.get(k) for k in ("time", "kind", "version", "reason")}
                                  for e in info["events"]])


@app.command()
def events(ctx: typer.Context, model: Optional[str] = typer.Argument(None),
           kind: List[str] = typer.Option([], "--kind", help="Only these kinds (drift_detected, promoted, ...)."),
           limit: int = typer.Option(20, "--limit", "-n"), as_json: bool = JSON):
    """The events log (logs.events), newest first."""
    from lakeloop import monitoring

    df = monitoring.read_events(ctx.obj.connect(), model, kinds=kind or None, limit=limit)
    rows = json.loads(df.to_json(orient="records", date_format="iso"))
    if as_json:
        return print_json(rows)
    print_table("events", [{k: r.get(k) for k in ("time", "model", "version", "kind", "reason")} for r in rows])
