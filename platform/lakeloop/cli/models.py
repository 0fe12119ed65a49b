"""``lakeloop models ...``: the registry: list, show, lineage, compare, gate, promote, rollback, rebuild."""

from __future__ import annotations

from typing import List, Optional

import typer

from lakeloop.cli.output import console, print_json, print_table

app = typer.Typer(help="Registered models: versions, lineage, the promotion gate, champion/challenger, rebuilds.",
                  no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")
VERSION = typer.Argument(None, help="Version number or alias (champion, challenger); default: champion, else newest.")


def _fmt(v) -> str:
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = JSON):
    """Registered models with their champion, challenger and the champion's holdout score."""
    rows = ctx.obj.connect().models.list()
    if as_json:
        return print_json(rows)
    print_table("registered models", rows, ["name", "versions", "latest", "champion", "challenger", "family",
                                            "metric", "score"])


@app.command()
def show(ctx: typer.Context, name: str, version: Optional[str] = VERSION, as_json: bool = JSON):
    """One version: aliases, holdout metrics, family and parameters, gate verdict."""
    info = ctx.obj.connect().models.show(name, version)
    if as_json:
        return print_json(info)
    c = console()
    c.print(f"[bold]{name}[/] version {info['version']} {' '.join('@' + a for a in info['aliases'])}  "
            f"({info['uri']}, run {info['run_id']})")
    c.print(f"family {info['family']}, params {info['params']}")
    print_table(f"holdout metrics (optimised: {info['metric']})",
                [{"metric": k, "value": v} for k, v in sorted(info["metrics"].items())])
    gate = info.get("gate")
    if gate:
        c.print(f"gate: {'[green]passed[/]' if gate['passed'] else '[red]failed[/]'}: "
                + ("; ".join(gate["reasons"]) or "all checks passed"))
    lineage = {k: v for k, v in info["tags"].items() if k.startswith(("lakeloop.data.", "lakeloop.view.",
                                                                     "lakeloop.git", "lakeloop.seed"))}
    print_table("lineage", [{"tag": k, "value": v} for k, v in sorted(lineage.items())])


@app.command()
def lineage(ctx: typer.Context, name: str, version: Optional[str] = VERSION, as_json: bool = JSON):
    """What made a version: tables and Delta versions, feature views, code, packages, seed."""
    info = ctx.obj.connect().models.lineage(name, version)
    if as_json:
        return print_json(info)
    lin = info["lineage"] or {}
    frame = lin.get("frame") or {}
    entities = frame.get("entities") or {}
    c = console()
    c.print(f"[bold]{name}[/] version {info['version']} (run {info['run_id']})")
    if entities.get("table"):
        c.print(f"labels / entity rows: {entities['table']} @ version {entities.get('version')}")
    else:
        c.print(f"labels / entity rows: in-memory frame ({entities.get('rows')} rows, hash {entities.get('hash')})")
    views = frame.get("views") or {}
    if views:
        print_table("feature views", [{"view": n, "view_version": v.get("view_version"),
                                       "definition_hash": v.get("definition_hash"),
                                       "table": f"{v.get('table')}@{v.get('table_version')}",
                                       "source": f"{v.get('source')}@{v.get('source_version')}"}
                                      for n, v in views.items()])
    data, code = lin.get("data") or {}, lin.get("code") or {}
    c.print(f"rows {data.get('rows')}, content hash {data.get('hash')}, seed {lin.get('seed')}")
    c.print(f"code: git {code.get('git_sha')}{' (dirty)' if code.get('git_dirty') else ''}; "
            f"ray job {(lin.get('ray') or {}).get('ray_job_id')}")
    c.print("packages: " + ", ".join(f"{k} {v}" for k, v in (lin.get("packages") or {}).items() if v))


@app.command()
def compare(ctx: typer.Context, name: str,
            versions: Optional[List[str]] = typer.Argument(None, help="Versions or aliases (default: champion "
                                                                     "and challenger, else the two newest)."),
            as_json: bool = JSON):
    """Versions side by side, each also scored on the newest version's holdout."""
    result = ctx.obj.connect().models.compare(name, versions)
    if as_json:
        return print_json(result)
    metric = result["metric"]
    rows = [{**r, "aliases": " ".join(r["aliases"]), "params": str(r["params"])} for r in result["versions"]]
    print_table(f"{name}: {metric} recorded, and on the holdout of version {result['holdout_of']} "
                f"({result['holdout_rows']} rows)", rows,
                ["version", "aliases", "family", "recorded", f"{metric}_on_common_holdout", "data", "gate_passed",
                 "git_sha"])


@app.command()
def gate(ctx: typer.Context, name: str, version: str,
         margin: float = typer.Option(0.0, "--margin", help="How much the metric must beat the champion by."),
         latency_budget_ms: Optional[float] = typer.Option(
             None, "--latency-budget-ms", help="An absolute p95 single-row budget (default: none)."),
         max_latency_ratio: float = typer.Option(
             1.5, "--max-latency-ratio", help="p95 at most this many times the champion's, timed interleaved."),
         as_json: bool = JSON):
    """Check VERSION against the champion; it becomes challenger if it passes."""
    from lakeloop.registry import Gate

    verdict = ctx.obj.connect().models.gate(name, version, Gate(margin=margin, latency_budget_ms=latency_budget_ms,
                                                                max_latency_ratio=max_latency_ratio))
    if as_json:
        return print_json(verdict.to_dict())
    c = console()
    c.print(f"{name} version {version}: "
            + ("[green]passed[/], now challenger" if verdict.passed else "[red]failed[/]"))
    for r in verdict.reasons:
        c.print(f"  - {r}")
    c.print(f"  {verdict.metric} {_fmt(verdict.score)} vs champion {_fmt(verdict.champion_version)}: "
            f"{_fmt(verdict.champion_score)} (margin {verdict.margin}); p95 {verdict.p95_ms:.2f} ms "
            + (f"({verdict.latency_ratio:.2f}x the champion's {verdict.champion_p95_ms:.2f} ms, at most "
               f"{verdict.max_latency_ratio:g}x)" if verdict.latency_ratio is not None else "(no champion to time)")
            + (f" (budget {verdict.latency_budget_ms:g} ms)" if verdict.latency_budget_ms is not None else "")
            + f"; schema {verdict.schema}")


@app.command()
def promote(ctx: typer.Context, name: str,
            version: Optional[str] = typer.Argument(None, help="Version to promote (default: the challenger)."),
            force: bool = typer.Option(False, "--force", help="Promote even if the version did not pass the gate."),
            as_json: bool = JSON):
    """Make a version (default: the challenger) the champion."""
    result = ctx.obj.connect().models.promote(name, version, force=force)
    if as_json:
        return print_json(result)
    console().print(f"{name}: champion is version {result['champion']}"
                    + (f" (was {result['previous']})" if result["previous"] is not None else ""))


@app.command()
def rollback(ctx: typer.Context, name: str, as_json: bool = JSON):
    """Make the previous champion the champion again."""
    result = ctx.obj.connect().models.rollback(name)
    if as_json:
        return print_json(result)
    console().print(f"{name}: champion rolled back from version {result['previous']} to {result['champion']}")


@app.command()
def rebuild(ctx: typer.Context, name: str, version: str,
            register: bool = typer.Option(False, "--register", help="Register the rebuilt model as a new version."),
            margin: float = typer.Option(0.0, "--margin", help="Gate of --register: margin over the champion."),
            latency_budget_ms: Optional[float] = typer.Option(
                None, "--latency-budget-ms", help="Gate of --register: an absolute p95 budget (default: none)."),
            as_json: bool = JSON):
    """Re-create the training frame from the lineage, retrain with the recorded params and seed, compare."""
    from lakeloop.registry import Gate

    with console().status(f"rebuilding {name} version {version}"):
        result = ctx.obj.connect().models.rebuild(
            name, version, register=register, gate=Gate(margin=margin, latency_budget_ms=latency_budget_ms))
    if as_json:
        return print_json(result.to_dict())
    rows = [{"metric": k, "original": v, "rebuilt": result.rebuilt.get(k),
             "equal": v == result.rebuilt.get(k)} for k, v in sorted(result.original.items())]
    print_table(f"{name} version {result.version} rebuilt (run {result.run_id})", rows)
    c = console()
    c.print(("[green]metrics equal[/]" if result.equal else f"[red]metrics differ[/] (max |diff| "
             f"{result.max_abs_diff:.3g})") + f"; training frame {'matches' if result.frame_matches else 'differs'} "
            f"(hash {result.frame_hash})")
    if result.rebuilt_version:
        c.print(f"registered as version {result.rebuilt_version}")


@app.command()
def card(ctx: typer.Context, name: str, version: Optional[str] = VERSION):
    """Print a version's model card (Markdown)."""
    print(ctx.obj.connect().models.card(name, version))
