"""Data profile of one table version: per-column statistics and histogram PNGs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lakeloop.lake.table import Table

TOP_VALUES = 5


@dataclass(frozen=True)
class ColumnProfile:
    name: str
    type: str
    count: int
    nulls: int
    distinct: int
    min: object = None
    max: object = None
    mean: float | None = None
    top: list = field(default_factory=list)
    histogram: str | None = None


@dataclass(frozen=True)
class Profile:
    table: str
    version: int
    rows: int
    columns: list[ColumnProfile]
    out_dir: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def _plain(v):
    """A JSON-friendly scalar."""
    if v is None:
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def profile_table(table: "Table", version: int | None = None, out_dir: str | None = None) -> Profile:
    import pandas as pd

    version = table.version() if version is None else version
    df = table.to_pandas(version=version)
    schema = {c.name: c.type for c in table.schema.columns}
    if out_dir is None and table.lake.is_local:
        out_dir = str(Path(table.lake.root, "_profiles", table.name, f"v{version}"))
    cols = []
    for name in df.columns:
        s = df[name]
        kind = schema.get(name, str(s.dtype))
        nn = s.dropna()
        numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        temporal = pd.api.types.is_datetime64_any_dtype(s)
        top = [[_plain(k), int(v)] for k, v in nn.astype(str).value_counts().head(TOP_VALUES).items()]
        hist = None
        if out_dir and len(nn) and (numeric or temporal):
            hist = _histogram(nn, name, table.name, version, Path(out_dir))
        cols.append(ColumnProfile(
            name=name,
            type=kind,
            count=int(len(s)),
            nulls=int(s.isna().sum()),
            distinct=int(nn.nunique()),
            min=_plain(nn.min()) if len(nn) and (numeric or temporal or kind == "string") else None,
            max=_plain(nn.max()) if len(nn) and (numeric or temporal or kind == "string") else None,
            mean=_plain(float(nn.mean())) if len(nn) and numeric else None,
            top=top,
            histogram=hist,
        ))
    return Profile(table.name, version, int(len(df)), cols, out_dir)


def _histogram(values, column: str, table: str, version: int, out_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.hist(values, bins=30, color="#3b7dd8", edgecolor="white")
    ax.set_title(f"{table} v{version}: {column}")
    ax.set_xlabel(column)
    ax.set_ylabel("rows")
    if hasattr(values, "dt"):
        fig.autofmt_xdate()
    fig.tight_layout()
    path = out_dir / f"{column}.png"
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def log_to_mlflow(ll, profile: Profile) -> str:
    """Record a profile as an MLflow run: row count, per-column stats (JSON) and the histogram PNGs.

    Returns the run id. Runs go to the ``<experiment>-profiles`` experiment, tagged with
    the table and version, so a table's profiles line up in the MLflow UI.
    """
    import json
    import tempfile

    client = ll.mlflow
    experiment = ll.experiment_id(f"{ll.config.mlflow.experiment}-profiles")
    run = client.create_run(experiment, run_name=f"{profile.table} v{profile.version}",
                            tags={"lakeloop.table": profile.table, "lakeloop.table_version": str(profile.version)})
    run_id = run.info.run_id
    client.log_metric(run_id, "rows", profile.rows)
    for col in profile.columns:
        client.log_metric(run_id, f"nulls.{col.name}", col.nulls)
        client.log_metric(run_id, f"distinct.{col.name}", col.distinct)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "profile.json")
        path.write_text(json.dumps(profile.to_dict(), indent=2, default=str))
        client.log_artifact(run_id, str(path))
    if profile.out_dir and Path(profile.out_dir).is_dir():
        client.log_artifacts(run_id, profile.out_dir, artifact_path="histograms")
    client.set_terminated(run_id)
    return run_id
