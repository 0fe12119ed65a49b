"""Run the demo on a lakeloop connection and return its summary as plain data."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import TYPE_CHECKING

from lakeloop.demo import scenario

if TYPE_CHECKING:
    from lakeloop.client import Lakeloop

TABLE = "raw.transactions"


def run(ll: "Lakeloop", *, rows_per_day: int = 5000, days: int = 2, seed: int = 7,
        progress: bool = True) -> dict:
    """Ingest ``days`` generated CSV files (bad rows included), time-travel, profile.

    Returns a summary: per-file accepted/quarantined counts and versions, the
    row counts at the first and latest versions, and the profile.
    """
    from rich.progress import Progress

    started = time.perf_counter()
    lake = ll.lake
    work = f"{lake.root}/_demo" if lake.is_local else None
    if work is None:
        import tempfile

        work = tempfile.mkdtemp(prefix="lakeloop-demo-")
    steps = days + 3
    bar = Progress(transient=False) if progress else None
    ingests = []
    with bar or nullcontext():
        task = bar.add_task("demo", total=steps) if bar else None

        def step(msg: str):
            if bar:
                bar.update(task, advance=1, description=msg)

        for day in range(days):
            rows = scenario.generate(rows_per_day, seed=seed, day=day, first_id=day * rows_per_day)
            path = scenario.write_csv(rows, f"{work}/transactions_day{day}.csv")
            result = lake.ingest(path, TABLE, rules=scenario.RULES_FILE)
            ingests.append({"file": str(path), **result.to_dict()})
            step(f"ingested day {day}: {result.accepted} accepted, {result.quarantined} quarantined")

        table = lake.table(TABLE)
        first = next(i["version"] for i in ingests if i["version"] is not None)
        latest = table.version()
        at_first = len(table.to_pandas(version=first, columns=["txn_id"]))
        at_latest = len(table.to_pandas(columns=["txn_id"]))
        step(f"time travel: {at_first} rows at version {first}, {at_latest} now")

        quarantine = lake.table(ingests[0]["quarantine_table"]).to_pandas(columns=["_rule", "_batch_id"])
        batches = {i["batch_id"] for i in ingests}
        by_rule = (quarantine[quarantine["_batch_id"].isin(batches)]["_rule"]
                   .str.split(", ").explode().value_counts().to_dict())
        step("quarantine reasons counted")

        from lakeloop.lake.profile import log_to_mlflow

        prof = lake.profile(TABLE)
        profile_run = log_to_mlflow(ll, prof)
        step("profiled (histograms logged to MLflow)")

    return {
        "lake": lake.root,
        "table": TABLE,
        "ingests": ingests,
        "accepted": sum(i["accepted"] for i in ingests),
        "quarantined": sum(i["quarantined"] for i in ingests),
        "quarantined_by_rule": {k: int(v) for k, v in by_rule.items()},
        "time_travel": {"first_version": first, "rows_at_first": at_first,
                        "latest_version": latest, "rows_at_latest": at_latest},
        "profile": prof.to_dict(),
        "profile_mlflow_run": profile_run,
        "mlflow_tracking_uri": ll.config.tracking_uri,
        "seconds": round(time.perf_counter() - started, 2),
    }
