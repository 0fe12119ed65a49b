"""``lakeloop demo``: the bundled scenario on embedded defaults."""

from __future__ import annotations

import typer

from lakeloop.cli.output import console, print_json, print_table


def demo(
    ctx: typer.Context,
    rows: int = typer.Option(5000, "--rows", help="Transactions per generated day."),
    days: int = typer.Option(2, "--days", help="Generated days (one CSV file each)."),
    seed: int = typer.Option(7, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Ingest generated transactions (with bad rows), time-travel and profile them."""
    from lakeloop.demo import runner

    summary = runner.run(ctx.obj.connect(), rows_per_day=rows, days=days, seed=seed, progress=not as_json)
    if as_json:
        return print_json(summary)
    c = console()
    print_table("ingest", [{**i, "file": i["file"].rsplit("/", 1)[-1]} for i in summary["ingests"]],
                ["file", "accepted", "quarantined", "version", "quarantine_version", "batch_id"])
    print_table("quarantined rows by rule",
                [{"rule": k, "rows": v} for k, v in summary["quarantined_by_rule"].items()])
    tt = summary["time_travel"]
    c.print(f"time travel: version {tt['first_version']} has {tt['rows_at_first']} rows; "
            f"version {tt['latest_version']} has {tt['rows_at_latest']}")
    prof = summary["profile"]
    print_table(f"profile of {prof['table']} v{prof['version']}",
                [{k: col[k] for k in ("name", "type", "count", "nulls", "distinct", "min", "max", "mean")}
                 for col in prof["columns"]])
    if prof["out_dir"]:
        c.print(f"histograms: {prof['out_dir']} (and MLflow run {summary['profile_mlflow_run']} in "
                f"{summary['mlflow_tracking_uri']})")
    c.print(f"[bold green]demo done[/] in {summary['seconds']} s: {summary['accepted']} rows accepted, "
            f"{summary['quarantined']} quarantined, lake at {summary['lake']}")
