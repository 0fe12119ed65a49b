"""The search's leaderboard: every trial ranked by validation score, as a table and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.automl.tracking import TrialRecord

FAMILY_COLOURS = {"linear": "#4c72b0", "forest": "#55a868", "hgb": "#c44e52", "mlp": "#8172b2"}


def table(records: list["TrialRecord"], *, metric: str, greater_is_better: bool) -> "pd.DataFrame":
    """One row per trial, best first; trials without a score (stopped before reporting) last."""
    import pandas as pd

    rows = []
    for r in records:
        best, best_epoch = r.best()
        rows.append({
            "trial_id": r.trial_id,
            "family": r.family,
            f"val_{metric}": best,
            "best_epoch": best_epoch,
            "epochs_run": len(r.history),
            "duration_s": None if r.duration_s is None else round(r.duration_s, 3),
            "status": r.status,
            "run_id": r.run_id,
            "params": json.dumps(r.params, sort_keys=True, default=str),
        })
    df = pd.DataFrame(rows, columns=["trial_id", "family", f"val_{metric}", "best_epoch", "epochs_run",
                                     "duration_s", "status", "run_id", "params"])
    if df.empty:
        return df.assign(rank=pd.Series(dtype="Int64"))
    df = df.sort_values(f"val_{metric}", ascending=not greater_is_better, na_position="last", kind="stable")
    df.insert(0, "rank", range(1, len(df) + 1))
    return df.reset_index(drop=True)


def plot(board: "pd.DataFrame", path: str | Path, *, metric: str, title: str) -> Path:
    """A horizontal bar per scored trial (top 30), coloured by family; written as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    col = f"val_{metric}"
    scored = board[board[col].notna()].head(30)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * max(len(scored), 1)))
    try:
        labels = [f"#{r['rank']} {r['family']} ({r['trial_id']})" for _, r in scored.iterrows()]
        colours = [FAMILY_COLOURS.get(f, "#999999") for f in scored["family"]]
        ax.barh(range(len(scored)), scored[col].astype(float), color=colours)
        ax.set_yticks(range(len(scored)), labels, fontsize=8)
        ax.invert_yaxis()
        if len(scored):
            lo, hi = float(scored[col].min()), float(scored[col].max())
            pad = (hi - lo) * 0.1 or abs(hi) * 0.05 or 0.05
            ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel(f"validation {metric}")
        ax.set_title(title, fontsize=10)
        present = set(scored["family"])
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for f, c in FAMILY_COLOURS.items() if f in present]
        names = [f for f in FAMILY_COLOURS if f in present]
        if handles:
            ax.legend(handles, names, loc="lower right", fontsize=8)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
