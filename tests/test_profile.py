"""Data profile: per-column statistics and histogram PNGs."""

from __future__ import annotations

import pandas as pd


def test_profile_counts_nulls_distinct_ranges_and_top_values(ll, tmp_path):
    t = ll.lake.create("raw.p", {"k": "string", "x": "float64", "at": "timestamp"})
    t.append(pd.DataFrame({"k": ["a", "a", "b", None], "x": [1.0, 3.0, None, 5.0],
                           "at": pd.to_datetime(["2026-01-01", "2026-01-02", None, "2026-01-03"], utc=True)}))
    t.append(pd.DataFrame({"k": ["c"], "x": [100.0]}))
    prof = ll.lake.profile("raw.p", version=1, out_dir=str(tmp_path / "png"))
    cols = {c.name: c for c in prof.columns}
    assert prof.rows == 4 and prof.version == 1
    assert (cols["k"].count, cols["k"].nulls, cols["k"].distinct) == (4, 1, 2)
    assert cols["k"].top[0] == ["a", 2]
    assert (cols["x"].min, cols["x"].max, cols["x"].mean) == (1.0, 5.0, 3.0)
    assert cols["at"].min.startswith("2026-01-01")
    png = tmp_path / "png" / "x.png"
    assert cols["x"].histogram == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "png" / "at.png").is_file()
    assert cols["k"].histogram is None
    latest = ll.lake.profile("raw.p")
    assert latest.rows == 5 and latest.out_dir.endswith("v2")
