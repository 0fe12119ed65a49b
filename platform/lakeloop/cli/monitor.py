"""``lakeloop monitor ...``: what the drift monitors saw, and the events log."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from lakeloop.cli.output import console, print_json, print_table

app = typer.Typer(help="Drift monitoring: start and stop monitors, their status and the events log.",
                  no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of tables.")


@app.command()
def status(ctx: typer.Context, model: str,
           live: bool = typer.Option(False, "--live", help="Also ask the running monitor actor (needs Ray)."),
           as_json: bool = JSON):
    """Windows, cursor, last p-values and drift flags per served version, live and estimated metric, bad rows,
    recent events."""
    from lakeloop import monitoring

    info = monitoring.status(ctx.obj.connect(), model, live=live)
    if as_json:
        return print_json(info)
    c = console()
    c.print(f"[bold]{model}[/]: {info['windows']} windows, {info['rows']} rows, running={info['running']}, "
            f"backend={info['backend']}, cursor={info['cursor'] and info['cursor']['read_to']}")
    rows = [{"version": v, "windows": s["windows"], "drift now": s["drift"], "drift windows": s["drift_windows"],
             "drifted": ", ".join(s["drifted"]), "mmd p": (s["mmd"] or {}).get("p_value"),
             "metric": s["metric"], "value": s["metric_value"], "estimated": _estimated(s),
             "bad rows": f"{s['bad_rows'] or 0} (total {s['bad_rows_total']})",
             "failed windows": s["failed_windows"]} for v, s in info["versions"].items()]
    print_table("versions", rows)
    print_table("recent events", [{k: e.get(k) for k in ("time", "kind", "version", "reason")}
                                  for e in info["events"]])


def _estimated(version: dict) -> str | None:
    """The label-free estimate of the monitor's metric, with its spread; or why there is none."""
    est = version.get("estimate") or {}
    value = version.get("estimated_value")
    if value is None:
        return f"- ({est['error'][:60]})" if est.get("error") else None
    sd = est.get("accuracy_sd") if version.get("metric") == "accuracy" else None
    return f"{value:.4f}" + (f" ± {sd:.3f}" if sd else "")


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


@app.command()
def start(
    ctx: typer.Context,
    model: str,
    window_rows: int = typer.Option(200, "--window-rows", help="Rows of one served version per window."),
    backend: str = typer.Option("scipy", "--backend", help="scipy, or alibi (alibi-detect: BSL 1.1, non-production)."),
    consecutive: int = typer.Option(3, "--consecutive", help="Retrain after drift in this many windows in a row."),
    metric_drop: Optional[float] = typer.Option(None, "--metric-drop",
                                                help="...or when the live metric drops this much."),
    estimated_drop: Optional[float] = typer.Option(None, "--estimated-drop",
                                                   help="...or when the metric estimated without labels (CBPE/DLE) "
                                                        "drops this much below the holdout score."),
    cooldown_s: float = typer.Option(3600.0, "--cooldown-s", help="Seconds between two retrains."),
    retrain: bool = typer.Option(True, "--retrain/--no-retrain", help="Submit jobs/retrain.py when the policy fires."),
    retrain_json: str = typer.Option("{}", "--retrain-json", help='Retrain settings, e.g. \'{"canary_percent": 20}\'.'),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Stop after this long (default: Ctrl-C)."),
    detach: bool = typer.Option(False, "--detach", help="Leave the actor running (needs a Ray cluster: ray.address)."),
    as_json: bool = JSON,
):
    """Start the model's drift monitor actor (and its retrain trigger); stop it on exit unless --detach."""
    from lakeloop import monitoring
    from lakeloop.cli.output import run_until
    from lakeloop.errors import LakeloopError

    ll = ctx.obj.connect()
    if detach and not ll.config.ray.address:
        raise LakeloopError("--detach needs a Ray cluster that outlives this command (ray.address, "
                            "LAKELOOP_RAY_ADDRESS); a local Ray ends with it")
    try:
        spec = json.loads(retrain_json)
    except ValueError as exc:
        raise LakeloopError(f"--retrain-json is not valid JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise LakeloopError("--retrain-json must be a JSON object of retrain settings")
    policy = monitoring.Policy(consecutive=consecutive, metric_drop=metric_drop, estimated_drop=estimated_drop,
                               cooldown_s=cooldown_s)
    trigger = None
    if retrain:
        from lakeloop.retrain import JobTrigger

        trigger = JobTrigger.for_lake(ll, {**spec, "model": model})
    monitoring.start(ll, model, window_rows=window_rows, backend=backend, policy=policy, trigger=trigger)
    info = {"model": model, "monitor": monitoring.monitor_name(ll.config.lake.root, model),
            "window_rows": window_rows, "backend": backend, "policy": policy.to_dict(),
            "retrain": None if trigger is None else {"address": trigger.address, "spec": trigger.spec},
            "dashboard": ll.dashboard_url}
    if as_json:
        print_json(info)
    else:
        console().print(f"monitoring {model} (windows of {window_rows} rows, {backend}); "
                        + (f"retrain jobs go to {trigger.address}" if trigger else "no retrain trigger")
                        + ("" if detach else "; Ctrl-C stops it"))
    if detach:
        return
    try:
        run_until(seconds)
    finally:
        monitoring.stop(ll, model)


@app.command()
def stop(ctx: typer.Context, model: str, as_json: bool = JSON):
    """Stop the model's monitor actor (its windows, cursor and events stay in the lake)."""
    from lakeloop import monitoring

    live = monitoring.stop(ctx.obj.connect(), model)
    if as_json:
        return print_json({"model": model, "stopped": True, "last": live})
    console().print(f"stopped the monitor of {model}")
