"""``lakeloop features ...``: apply, plan, list, describe, materialize, online lookup and serving."""

from __future__ import annotations

import json
from enum import Enum
from typing import List, Optional

import typer

from lakeloop.cli.output import console, print_json, print_table, run_until

app = typer.Typer(help="The feature store: definitions, materialization, online values.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")


class Engine(str, Enum):
    """Where materialize computes."""

    ray = "ray"
    local = "local"


@app.command()
def plan(ctx: typer.Context, definitions: str = typer.Argument(..., help="module:attr of the definitions."),
         as_json: bool = JSON):
    """Show what apply would change, without changing anything."""
    steps = ctx.obj.connect().features.plan(definitions)
    if as_json:
        return print_json(steps)
    print_table("plan", [{**s, "changes": ", ".join(s["changes"])} for s in steps],
                ["view", "action", "from_version", "to_version", "changes"])


@app.command()
def apply(ctx: typer.Context, definitions: str = typer.Argument(..., help="module:attr of the definitions."),
          as_json: bool = JSON):
    """Register definitions in the catalog; a changed view becomes a new version."""
    steps = ctx.obj.connect().features.apply(definitions)
    if as_json:
        return print_json(steps)
    print_table("applied", [{**s, "changes": ", ".join(s["changes"])} for s in steps],
                ["view", "action", "from_version", "to_version", "changes"])


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = JSON):
    """Every feature view with owner, source and freshness."""
    views = ctx.obj.connect().features.list()
    if as_json:
        return print_json(views)
    print_table("feature views", views, ["name", "version", "owner", "source", "last_materialized_source_version",
                                         "newest_event_time", "last_run", "online"])


@app.command()
def describe(ctx: typer.Context, view: str, as_json: bool = JSON):
    """One view: description, owner, schema, source, versions, freshness."""
    info = ctx.obj.connect().features.describe(view)
    if as_json:
        return print_json(info)
    c = console()
    c.print(f"[bold]{info['name']}[/] v{info['version']} ({info['definition_hash']}) owner={info['owner'] or '-'}")
    c.print(info["description"] or "(no description)")
    c.print(f"source {info['source']} -> {info['table']}; materialized from source version "
            f"{info['last_materialized_source_version']}; newest event {info['newest_event_time']}; "
            f"last run {info['last_run']} ({info['last_run_mode']}); ttl {info['ttl']}; versions {info['versions']}")
    if info.get("transform"):
        c.print(f"transform {info['transform']['ref']} (code hash {info['transform']['code_hash']})")
    print_table("schema", [{"column": k, "type": v} for k, v in (info["schema"] or {}).items()])


@app.command()
def materialize(ctx: typer.Context, view: str, full: bool = typer.Option(False, "--full",
                help="Recompute everything instead of reading only new source versions."),
                engine: Engine = typer.Option(Engine.ray, "--engine",
                                              help="ray (Ray Data) or local (in this process; small sources)."),
                as_json: bool = JSON):
    """Bring features.<VIEW> up to date with its source (Ray Data; incremental by default).

    The definition comes from the catalog as any process applied it (a transform: by its reference).
    """
    result = ctx.obj.connect().features.materialize(view, full=full, engine=engine.value)
    if as_json:
        return print_json(result.to_dict())
    console().print(f"{view}: {result.mode}, source version {result.source_version}, "
                    f"{result.rows_written} rows written, table version {result.table_version} "
                    f"in {result.seconds} s")


@app.command()
def lookup(ctx: typer.Context, view: str, keys: List[str] = typer.Argument(..., help="Entity key values."),
           as_json: bool = JSON):
    """Latest online values for entities of a single-key view."""
    df = ctx.obj.connect().features.online_features(view, list(keys))
    rows = json.loads(df.to_json(orient="records"))
    if as_json:
        return print_json(rows)
    print_table(f"online {view}", rows)


@app.command()
def serve(ctx: typer.Context,
          seconds: Optional[float] = typer.Option(None, "--seconds", help="Stop after this long (default: Ctrl-C)."),
          as_json: bool = JSON):
    """Run the online store and its HTTP endpoint until interrupted."""
    from lakeloop.features import online

    ll = ctx.obj.connect()
    online.start(ll)
    info = {"url": online.url(ll), "views": [v["name"] for v in ll.features.list() if v["online"]]}
    if as_json:
        print_json(info)
    else:
        console().print(f"online store at {info['url']} serving {info['views']} (Ctrl-C stops it)")
    try:
        run_until(seconds)
    finally:
        online.stop(ll)


@app.command()
def follow(ctx: typer.Context, view: str,
           interval: float = typer.Option(2.0, "--interval", help="Seconds between checks of the source."),
           max_seconds: Optional[float] = typer.Option(None, "--max-seconds"),
           as_json: bool = JSON):
    """Materialize VIEW whenever its source gets a new version (the streaming path)."""
    results = ctx.obj.connect().features.follow(view, interval_s=interval, max_seconds=max_seconds)
    if as_json:
        return print_json([r.to_dict() for r in results])
    console().print(f"{len(results)} materializations of {view}")
