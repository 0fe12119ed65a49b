"""Drift report images: reference against the current window, one PNG per feature (matplotlib, Agg)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.monitoring.detectors import DriftDetector


def safe_name(name: str) -> str:
    """A feature name usable as a file name and an MLflow metric key."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))[:120] or "_"


def write(detector: "DriftDetector", window: "pd.DataFrame", result: dict, out_dir: str | Path, *,
          title: str = "", max_features: int = 12) -> list[Path]:
    """Histograms (numeric) or category shares (categorical) per feature, most drifted first.

    Writes ``<feature>.png`` per feature (at most ``max_features``) and
    ``summary.json`` (the result) into ``out_dir``; returns the paths.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    feats = result["features"]
    order = sorted(feats, key=lambda f: (feats[f]["p_value"] is None, feats[f]["p_value"] or 0.0))[:max_features]
    paths = []
    for f in order:
        entry = feats[f]
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
        if entry["kind"] == "numeric":
            ref = detector.ref_numeric_[f]
            cur = detector.numeric_values(window, f)
            cur = cur[~np.isnan(cur)]
            both = np.concatenate([ref, cur]) if len(cur) else ref
            lo, hi = (float(np.nanmin(both)), float(np.nanmax(both))) if len(both) else (0.0, 1.0)
            bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
            ax.hist(ref, bins=bins, density=True, alpha=0.5, label=f"reference ({len(ref)})")
            if len(cur):
                ax.hist(cur, bins=bins, density=True, alpha=0.5, label=f"window ({len(cur)})")
        else:
            ref_vals = [detector.categories_[f][c] for c in detector.ref_codes_[f]]
            cur_vals = detector.category_values(window, f)
            cats = list(dict.fromkeys(detector.categories_[f] + sorted(set(cur_vals))))[:30]
            x = np.arange(len(cats))
            ref_share = [ref_vals.count(c) / max(1, len(ref_vals)) for c in cats]
            cur_share = [cur_vals.count(c) / max(1, len(cur_vals)) for c in cats]
            ax.bar(x - 0.2, ref_share, width=0.4, label="reference")
            ax.bar(x + 0.2, cur_share, width=0.4, label="window")
            ax.set_xticks(x, [c[:12] for c in cats], rotation=45, ha="right", fontsize=7)
            ax.set_ylabel("share")
        p = entry["p_value"]
        ax.set_title(f"{title} {f}: {entry['test']} p={'n/a' if p is None else f'{p:.3g}'}"
                     f"{'  DRIFT' if entry['drift'] else ''}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{safe_name(f)}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    summary = out / "summary.json"
    summary.write_text(json.dumps(result, indent=2, default=str))
    paths.append(summary)
    return paths
