"""``lakeloop status``: the platform of one lake on one screen (``ll.status()``)."""

from __future__ import annotations

import typer

from lakeloop.cli.output import print_json


def status(
    ctx: typer.Context,
    events: int = typer.Option(10, "--events", "-n", help="How many of the last events to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts instead of tables."),
):
    """Tables, feature views, models, what is served, monitors, last events and URLs (starts nothing)."""
    from lakeloop.status import print_rich

    data = ctx.obj.connect().status(events_limit=events)
    if as_json:
        return print_json(data)
    print_rich(data)
