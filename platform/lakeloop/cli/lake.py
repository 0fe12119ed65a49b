"""``lakeloop lake ...``: ingest, list, read, time-travel, restore and profile tables."""

from __future__ import annotations

from typing import Optional

import typer

from lakeloop.cli.output import console, print_json, print_table

app = typer.Typer(help="The versioned Delta lake: ingest, tables, history, read, restore, profile.",
                  no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")


@app.command()
def ingest(
    ctx: typer.Context,
    file: str = typer.Argument(..., help="CSV, TSV, JSON-lines or Parquet file."),
    table: str = typer.Option(..., "--table", "-t", help="Target table, layer.name (e.g. raw.transactions)."),
    key: Optional[str] = typer.Option(None, "--key", help="Primary-key column: rows are upserted by it."),
    rules: Optional[str] = typer.Option(None, "--rules", help="YAML rules file (types, not_null, min, max, ...)."),
    history: Optional[str] = typer.Option(None, "--history", help="Declare the rows history, known at this "
                                          "timestamp column (a backfill), for known-time training frames."),
    as_json: bool = JSON,
):
    """Validate FILE and land it in TABLE; failing rows go to quarantine.<name> with reasons."""
    result = ctx.obj.connect().lake.ingest(file, table, key=key, rules=rules, history=history)
    if as_json:
        return print_json(result.to_dict())
    c = console()
    c.print(f"[bold]{result.table}[/]: {result.accepted} rows accepted ({result.mode}), "
            f"version {result.version}")
    if result.quarantined:
        c.print(f"[yellow]{result.quarantined} rows quarantined[/] in {result.quarantine_table} "
                f"(version {result.quarantine_version}), batch {result.batch_id}")
    else:
        c.print(f"no rows quarantined, batch {result.batch_id}")


@app.command()
def tables(ctx: typer.Context, as_json: bool = JSON):
    """List the lake's tables with their latest version."""
    lake = ctx.obj.connect().lake
    rows = []
    for name in lake.tables():
        t = lake.table(name)
        h = t.history(limit=1)[0]
        rows.append({"table": name, "version": h["version"], "updated": h["timestamp"],
                     "columns": len(t.schema.columns)})
    if as_json:
        return print_json(rows)
    print_table(f"tables in {lake.root}", rows, ["table", "version", "updated", "columns"])


@app.command()
def history(ctx: typer.Context, name: str, limit: Optional[int] = typer.Option(None, "--limit"),
            as_json: bool = JSON):
    """Commits of a table, newest first."""
    rows = ctx.obj.connect().lake.table(name).history(limit)
    if as_json:
        return print_json(rows)
    print_table(f"history of {name}", rows,
                ["version", "timestamp", "operation", "rows_added", "rows_updated", "batch_id"])


@app.command()
def read(
    ctx: typer.Context,
    name: str,
    version: Optional[int] = typer.Option(None, "--version", "-v", help="Read this version (time travel)."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Read the version current at this ISO time."),
    limit: int = typer.Option(20, "--limit", "-n", help="Rows to show."),
    as_json: bool = JSON,
):
    """Show rows of a table, latest or at a version."""
    table = ctx.obj.connect().lake.table(name)
    df = table.to_pandas(version=version, as_of=as_of, limit=limit)
    if as_json:
        return print_json({"table": name, "version": version if version is not None else
                           (table.version_as_of(as_of) if as_of else table.version()),
                           "rows": df.astype(object).where(df.notna(), None).to_dict("records")})
    print_table(f"{name} (version {version if version is not None else 'latest'})",
                df.astype(object).where(df.notna(), None).to_dict("records"), list(df.columns))


@app.command()
def restore(ctx: typer.Context, name: str, version: int = typer.Option(..., "--version", "-v"),
            as_json: bool = JSON):
    """Make an earlier version the latest (as a new commit; history is kept)."""
    result = ctx.obj.connect().lake.table(name).restore(version)
    if as_json:
        return print_json({"table": name, "restored": version, "version": result.version})
    console().print(f"{name} restored to the content of version {version}: new version {result.version}")


@app.command()
def profile(
    ctx: typer.Context,
    name: str,
    version: Optional[int] = typer.Option(None, "--version", "-v"),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for histogram PNGs."),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Also log stats and PNGs as an MLflow run."),
    as_json: bool = JSON,
):
    """Per-column count, nulls, distinct, min/max/mean, top values; histograms as PNG (also in MLflow)."""
    from lakeloop.lake.profile import log_to_mlflow

    ll = ctx.obj.connect()
    prof = ll.lake.profile(name, version=version, out_dir=out)
    run_id = log_to_mlflow(ll, prof) if mlflow else None
    if as_json:
        return print_json({**prof.to_dict(), "mlflow_run_id": run_id})
    rows = [{"column": c.name, "type": c.type, "count": c.count, "nulls": c.nulls, "distinct": c.distinct,
             "min": c.min, "max": c.max, "mean": c.mean,
             "top": ", ".join(f"{v} ({n})" for v, n in c.top[:3])} for c in prof.columns]
    print_table(f"profile of {name} v{prof.version}: {prof.rows} rows", rows)
    if prof.out_dir:
        console().print(f"histograms in {prof.out_dir}" + (f"; MLflow run {run_id}" if run_id else ""))


@app.command()
def optimize(ctx: typer.Context, name: str, as_json: bool = JSON):
    """Compact small files (same rows, a new version)."""
    result = ctx.obj.connect().lake.table(name).optimize()
    if as_json:
        return print_json({"table": name, "version": result.version, "metrics": result.metrics})
    console().print(f"{name} compacted: version {result.version}")


@app.command()
def vacuum(
    ctx: typer.Context,
    name: str,
    retention_hours: float = typer.Option(168, "--retention-hours"),
    dry_run: bool = typer.Option(False, "--dry-run"),
    as_json: bool = JSON,
):
    """Delete files that no version within the retention needs."""
    files = ctx.obj.connect().lake.table(name).vacuum(retention_hours, dry_run=dry_run)
    if as_json:
        return print_json({"table": name, "dry_run": dry_run, "files": files})
    console().print(f"{len(files)} files {'would be ' if dry_run else ''}removed from {name}")
