"""Rebuild a model version from its record: same frame, same spec, same seed, same metrics.

The frame comes back from the lineage: a lake table read at its recorded
Delta version, or, when feature views were joined, the feature store's
``rebuild_frame(lineage)``, which loads the views' definitions as recorded
(catalog version and hash) from the catalog, in any process. The recorded training spec (family, parameters,
seed, split) is fitted again and scored on the re-created holdout. Every
family here is deterministic for a seed, so the metrics match exactly.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from lakeloop.automl import training
from lakeloop.errors import RebuildError, VersionNotFoundError
from lakeloop.registry import lineage as lineages

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop
    from lakeloop.registry.models import ModelRegistry


@dataclass(frozen=True, kw_only=True)
class RebuildResult:
    """The original and rebuilt holdout metrics, side by side."""

    name: str
    version: int
    run_id: str
    metric: str
    original: dict[str, float]
    rebuilt: dict[str, float]
    equal: bool
    max_abs_diff: float
    frame_hash: str
    original_frame_hash: str | None
    frame_matches: bool
    rebuilt_version: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def frame_from_lineage(ll: "Lakeloop", frame: dict) -> "pd.DataFrame":
    """The training frame a lineage record describes."""
    entities = frame.get("entities") or {}
    if not entities.get("table"):
        raise RebuildError(
            f"it was trained on entity rows from an in-memory frame ({entities.get('rows')} rows, hash "
            f"{entities.get('hash')}), which the lake cannot give back; write training (or entity) rows to a lake "
            "table and train from the table to make versions rebuildable")
    views = frame.get("views") or {}
    if views:
        try:
            store = ll.features
        except AttributeError:
            store = None
        if store is None or not hasattr(store, "rebuild_frame"):
            raise RebuildError(
                f"it joined feature views {sorted(views)}, and rebuilding them needs the feature store "
                "(ll.features.rebuild_frame), which this lakeloop does not have")
        from lakeloop.errors import DefinitionError, FeatureViewNotFoundError

        try:  # the definitions as they were at training time, from the catalog: no user module needed
            return store.rebuild_frame(frame).data
        except (FeatureViewNotFoundError, DefinitionError) as exc:
            raise RebuildError(f"its feature views {sorted(views)} cannot be joined again as recorded: "
                               f"{exc.message}") from exc
    return ll.lake.table(entities["table"]).read(version=entities.get("version"))


def rebuild(registry: "ModelRegistry", name: str, version, *, register: bool = False, gate=True) -> RebuildResult:
    from mlflow.entities import Metric, Param

    from lakeloop.registry.models import LINEAGE_FILE

    mv = registry.version(name, version)
    version = int(mv.version)
    spec = registry.spec(name, version)
    recorded = registry._json(mv.run_id, LINEAGE_FILE)
    if recorded is None:
        raise RebuildError(f"model {name} version {version} has no recorded lineage ({LINEAGE_FILE}); "
                           "only versions trained by lakeloop can be rebuilt")
    frame = recorded.get("frame") or {}
    try:
        df = frame_from_lineage(registry.ll, frame)
    except RebuildError as exc:
        raise RebuildError(f"cannot rebuild model {name} version {version}: {exc.message}") from exc
    except VersionNotFoundError as exc:
        entities = frame.get("entities") or {}
        raise VersionNotFoundError(
            f"cannot rebuild model {name} version {version}: it was trained on "
            f"{entities.get('table')} version {entities.get('version')}, which can no longer be read. A Delta "
            f"version whose data files were removed by vacuum cannot be brought back; retrain on a current "
            f"version instead. ({exc.message})") from exc
    ll = registry.ll
    original = {k[len("holdout_"):]: v for k, v in registry.client.get_run(mv.run_id).data.metrics.items()
                if k.startswith("holdout_")}
    run = registry.client.create_run(ll.experiment_id(), run_name=f"rebuild-{name}-v{version}",
                                     tags={"lakeloop.kind": "rebuild", "lakeloop.rebuild_of": f"{name}/{version}",
                                           "lakeloop.rebuild_of_run": mv.run_id})
    run_id = run.info.run_id
    try:
        fitted = training.fit(df, spec)
        now = int(time.time() * 1000)
        registry.client.log_batch(
            run_id,
            params=[Param("family", str(spec.family)), Param("seed", str(spec.seed)),
                    *[Param(k, str(v)) for k, v in sorted(spec.params.items())]],
            metrics=[Metric(f"holdout_{k}", float(v), now, 0) for k, v in fitted.metrics.items()])
        new_lineage = {**lineages.record(frame=frame, rows=fitted.prepared.rows,
                                         frame_hash=fitted.prepared.frame_hash, target=spec.target,
                                         features=list(spec.features), seed=spec.seed,
                                         experiment_id=ll.experiment_id(), run_id=run_id),
                       "rebuild_of": {"name": name, "version": version, "run_id": mv.run_id}}
        registry.client.log_text(run_id, json.dumps(new_lineage, indent=2, default=str), LINEAGE_FILE)
        diffs = [abs(fitted.metrics[k] - v) for k, v in original.items() if k in fitted.metrics]
        shared = [k for k in original if k in fitted.metrics]
        equal = bool(shared) and all(fitted.metrics[k] == original[k] for k in shared)
        rebuilt_version = None
        if register:
            info = registry.register(name, fitted.pipeline, holdout=fitted.prepared.holdout, spec=spec,
                                     train=fitted.prepared.train, lineage=new_lineage, run_id=run_id, gate=gate,
                                     description=f"rebuild of version {version}")
            rebuilt_version = info.version
        registry.client.set_tag(run_id, "lakeloop.rebuild_equal", str(equal).lower())
    except BaseException:
        registry.client.set_terminated(run_id, "FAILED")
        raise
    registry.client.set_terminated(run_id, "FINISHED")
    original_hash = (recorded.get("data") or {}).get("hash")
    return RebuildResult(
        name=name, version=version, run_id=run_id, metric=spec.metric, original=original, rebuilt=fitted.metrics,
        equal=equal, max_abs_diff=max(diffs) if diffs else float("nan"), frame_hash=fitted.prepared.frame_hash,
        original_frame_hash=original_hash, frame_matches=original_hash == fitted.prepared.frame_hash,
        rebuilt_version=rebuilt_version)
