"""``ll.models.get(name, version)``: one registered version as an object that shows itself.

The registry's other calls keep answering plain dicts (``show``, ``lineage``);
this view gathers them for a notebook: metrics, gate verdict, aliases and
where the version came from (data, feature views, runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lakeloop.registry.models import ModelRegistry


@dataclass(frozen=True, kw_only=True)
class ModelVersion:
    name: str
    version: int
    aliases: list[str] = field(default_factory=list)
    family: str | None = None
    params: dict = field(default_factory=dict)
    metric: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    gate: dict | None = None
    run_id: str | None = None
    data: str | None = None
    links: dict[str, str] = field(default_factory=dict)
    lineage: dict | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def score(self) -> float | None:
        return self.metrics.get(self.metric) if self.metric else None

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "uri": self.uri}

    def __repr__(self) -> str:
        from lakeloop import display

        return display.model_version_text(self)

    def _repr_html_(self) -> str:
        from lakeloop import display

        return display.model_version_html(self)


def get(registry: "ModelRegistry", name: str, ref: int | str | None = None) -> ModelVersion:
    """The version (number, alias, or None: the champion, else the newest) as a :class:`ModelVersion`."""
    shown = registry.show(name, ref)
    record = registry.lineage(name, shown["version"])
    lineage = record.get("lineage") or {}
    frame = lineage.get("frame") or {}
    entities = frame.get("entities") or {}
    data = (f"{entities['table']} v{entities.get('version')}" if entities.get("table")
            else "in-memory frame" if frame else None)
    links: dict[str, Any] = {"model": shown["uri"], "run": f"runs:/{shown['run_id']}"}
    if data:
        links["entity rows"] = data
    for view, v in (frame.get("views") or {}).items():
        links[f"view {view}"] = (f"v{v.get('view_version')} ({v.get('definition_hash', '')[:12]}), "
                                 f"{v.get('table')} v{v.get('table_version')}, source {v.get('source')} "
                                 f"v{v.get('source_version')}")
    code = lineage.get("code") or {}
    if code.get("git_sha"):
        links["code"] = f"git {code['git_sha'][:12]}" + (" (dirty)" if code.get("git_dirty") else "")
    rows = (lineage.get("data") or {}).get("rows")
    if rows is not None:
        links["training rows"] = f"{rows} (hash {str((lineage.get('data') or {}).get('hash', ''))[:12]})"
    search = (lineage.get("mlflow") or {}).get("run_id") or shown["tags"].get("lakeloop.run_id")
    if search and search != shown["run_id"]:
        links["search run"] = f"runs:/{search}"
    if lineage.get("seed") is not None:
        links["seed"] = str(lineage["seed"])
    return ModelVersion(name=name, version=shown["version"], aliases=shown["aliases"], family=shown["family"],
                        params=shown["params"], metric=shown["metric"], metrics=shown["metrics"], gate=shown["gate"],
                        run_id=shown["run_id"], data=data, links={k: str(v) for k, v in links.items()},
                        lineage=lineage or None)
