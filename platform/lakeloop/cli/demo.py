"""``lakeloop demo``: the whole loop on a bundled scenario, on embedded defaults."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import typer

from lakeloop.cli.output import console, print_json, print_table


def demo(
    ctx: typer.Context,
    fast: bool = typer.Option(False, "--fast", help="The small variant (what CI runs): less data, shorter budgets."),
    rows: int = typer.Option(None, "--rows", help="Transactions per generated day of history."),
    days: int = typer.Option(None, "--days", help="Days of history (one CSV file each)."),
    seed: int = typer.Option(None, "--seed"),
    keep: bool = typer.Option(False, "--keep", help="Keep serving, the monitor and Ray running until Ctrl-C."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (no progress output)."),
):
    """Ingest, features, AutoML, registry, serving with traffic, drift, the retrain job, canary, promotion."""
    from dataclasses import replace

    from lakeloop.demo import runner

    settings = runner.FAST if fast else runner.DemoSettings()
    changes = {k: v for k, v in (("rows_per_day", rows), ("days", days), ("seed", seed)) if v is not None}
    if changes:
        settings = replace(settings, **changes)
    ll = ctx.obj.connect()
    with _stdout_to_stderr(as_json):  # with --json, stdout carries the JSON only (Ray prints there too)
        summary = runner.run(ll, settings, progress=not as_json, keep=keep)
    if as_json:
        print_json(summary)
    else:
        show(summary)
    if keep:
        from lakeloop.cli.output import run_until

        console().print("serving, the monitor and Ray keep running; Ctrl-C stops them")
        run_until(None)


@contextmanager
def _stdout_to_stderr(active: bool):
    """Point file descriptor 1 at stderr for the duration (Ray's log lines reach the driver's fd 1)."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def show(summary: dict) -> None:
    """The summary as tables: what happened, with its numbers, and where to look next."""
    c = console()
    print_table("ingest", [{**i, "file": i["file"].rsplit("/", 1)[-1]} for i in summary["ingests"]],
                ["file", "accepted", "quarantined", "version", "quarantine_version"])
    print_table("quarantined rows by rule",
                [{"rule": k, "rows": v} for k, v in summary["quarantined_by_rule"].items()])
    print_table("data versions", [{"table": t, **v} for t, v in summary["data_versions"].items()],
                ["table", "after_history", "latest"])
    before, after = summary["models"]["before"], summary["models"]["after"]
    print_table("models (holdout score: the version's own newest rows; previous champion: on the same rows)",
                [{"": "before", **before}, {"": "after", **after}],
                ["", "version", "family", "metric", "score", "previous_champion_score", "aliases"])
    print_table("live traffic (accuracy on labelled feedback)",
                [{"phase": name, "rows": p["rows"], "accuracy": p["accuracy"],
                  "by version": ", ".join(f"{v}: {d['rows']} rows, acc {d['accuracy']}" for v, d in
                                          p["by_version"].items())}
                 for name, p in summary["phases"].items()])
    drift, retrain, canary, traffic = summary["drift"], summary["retrain"], summary["canary"], summary["traffic"]
    rows = [
        ("drift injected", f"{drift['injected_at']} after {drift['rows_served_before_injection']} rows; "
                           f"{drift['false_alarms_before_injection']} of {drift['windows_before_injection']} windows "
                           f"before it were flagged (false alarms; a retrain needs {summary['settings']['consecutive']} "
                           "in a row)"),
        ("drift detected", f"{drift['detected_at']} ({drift['seconds_to_detect']} s later; "
                           f"{', '.join(drift['drifted'] or [])})" if drift["detected_at"] else "no"),
        ("retrain job", f"{retrain['job_id']} ({retrain['status']})" if retrain["job_id"] else "none"),
        ("canary verdict", f"{canary['verdict']} -> {canary['decision']}: {canary['test']} "
                           f"p={_num(canary['p_value'])}; "
                           f"challenger accuracy {_num(canary['challenger_accuracy'])} over {canary['n_challenger']}, "
                           f"champion {_num(canary['champion_accuracy'])} over {canary['n_champion']}"
         if canary["verdict"] else "none"),
        ("outcome", summary["outcome"]),
        ("promoted version", summary["promoted_version"] or "none"),
        ("requests served / failed", f"{traffic['requests'] - traffic['failed']} / {traffic['failed']} "
                                     f"({traffic['rows']} rows predicted)"),
        ("endpoint", summary["endpoint"]),
        ("Ray dashboard", summary["ray_dashboard"]),
        ("MLflow UI", summary["mlflow_ui"]),
        ("lake", summary["lake"]),
        ("plot", f"{summary['plot']} (and MLflow run {summary['demo_mlflow_run']})"),
    ]
    print_table("the loop", [{"what": k, "value": v} for k, v in rows], ["what", "value"])
    style = "bold green" if summary["traffic"]["failed"] == 0 else "bold red"
    c.print(f"[{style}]demo done[/] in {summary['seconds']} s: {summary['outcome']}; "
            f"{summary['traffic']['failed']} failed requests. Summary: {summary['lake']}/_demo/summary.json")


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"
