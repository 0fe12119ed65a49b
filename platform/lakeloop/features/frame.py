"""Training frames: point-in-time-correct rows with the lineage that made them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class TrainingFrame:
    """Rows for training plus where they came from.

    ``data`` holds the entity rows (keys, timestamp, labels and any other
    columns they came with) joined with feature values; ``features`` names the
    feature columns. ``lineage`` is plain data (JSON-able) that
    :meth:`lakeloop.features.FeatureStore.rebuild_frame` turns back into the
    same frame::

        {
          "entities": {"table": "raw.labels", "version": 3} | {"table": None, "rows": 1000, "hash": "..."},
          "timestamp_column": "event_timestamp",
          "views": {"customer_stats": {"view_version": 2, "definition_hash": "...",
                                        "table": "features.customer_stats", "table_version": 7,
                                        "source": "raw.transactions", "source_version": 5,
                                        "history_versions": [1],   # declared history (if any)
                                        "features": ["txn_count_1d", ...]}},
          "known_time": true,
          "snapshot": {"features.customer_stats": 7, "raw.labels": 3},  # every table read, pinned
        }
    """

    data: "pd.DataFrame"
    features: list[str] = field(default_factory=list)
    entity_keys: list[str] = field(default_factory=list)
    timestamp_column: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)

    def to_pandas(self) -> "pd.DataFrame":
        return self.data

    def to_arrow(self):
        import pyarrow as pa

        return pa.Table.from_pandas(self.data, preserve_index=False)

    def to_ray(self):
        import ray.data

        return ray.data.from_pandas(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:  # rendering: lakeloop.display
        from lakeloop import display
        return display.frame_text(self)

    def _repr_html_(self) -> str:
        from lakeloop import display
        return display.frame_html(self)
