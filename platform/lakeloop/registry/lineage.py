"""What made a model: data versions, feature definitions, code version, packages, Ray job.

``record(...)`` builds the lineage document a search stores beside its model
(``lakeloop/lineage.json`` on the run); ``tags(...)`` flattens the parts people
filter on into MLflow tags (values stay under MLflow's tag limit; the JSON
artifact holds everything).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("lakeloop", "ray", "mlflow", "scikit-learn", "torch", "optuna", "pandas", "numpy", "pyarrow",
            "deltalake", "cloudpickle")
TAG_LIMIT = 4000


def code_version() -> dict[str, Any]:
    """The git commit of the lakeloop checkout (else of the current directory) and whether it is dirty.

    ``LAKELOOP_GIT_SHA`` wins when set (an image built from a known commit
    has no .git). Untracked files do not make a checkout dirty.
    """
    if os.environ.get("LAKELOOP_GIT_SHA"):
        return {"git_sha": os.environ["LAKELOOP_GIT_SHA"], "git_dirty": None, "source": "LAKELOOP_GIT_SHA"}
    import lakeloop

    for where in (Path(lakeloop.__file__).resolve().parent, Path.cwd()):
        try:
            sha = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        return {"git_sha": sha, "git_dirty": bool(status.strip()), "source": str(where)}
    return {"git_sha": None, "git_dirty": None, "source": None}


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def ray_job() -> dict[str, str | None]:
    """The Ray job id of this driver and, under ``ray job submit``, the submission id."""
    submission = None
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw:
        try:
            submission = (json.loads(raw).get("metadata") or {}).get("job_submission_id")
        except ValueError:
            submission = None
    job_id = None
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            job_id = ray.get_runtime_context().get_job_id()
    return {"ray_job_id": job_id, "submission_id": submission}


def record(*, frame: dict, rows: int, frame_hash: str, target: str, features: list[str], seed: int,
           experiment_id: str, run_id: str) -> dict[str, Any]:
    """The lineage document of one training."""
    return {
        "frame": frame,
        "data": {"rows": rows, "hash": frame_hash, "target": target, "features": list(features),
                 "labels": label_source(frame)},
        "code": code_version(),
        "packages": package_versions(),
        "ray": ray_job(),
        "seed": seed,
        "mlflow": {"experiment_id": experiment_id, "run_id": run_id},
    }


def label_source(frame: dict) -> dict | None:
    """The table and version the labels (entity rows) came from, when it was a lake table."""
    entities = (frame or {}).get("entities") or {}
    if entities.get("table"):
        return {"table": entities["table"], "version": entities.get("version")}
    return None


def tags(lineage: dict) -> dict[str, str]:
    """Flat ``lakeloop.*`` tags for a run or a model version."""
    out: dict[str, str] = {}
    frame = lineage.get("frame") or {}
    entities = frame.get("entities") or {}
    if entities.get("table"):
        out["lakeloop.data.table"] = str(entities["table"])
        out["lakeloop.data.version"] = str(entities.get("version"))
    elif entities:
        out["lakeloop.data.table"] = "<in-memory frame>"
    data = lineage.get("data") or {}
    out["lakeloop.data.rows"] = str(data.get("rows"))
    out["lakeloop.data.hash"] = str(data.get("hash"))
    views = frame.get("views") or {}
    for name, v in views.items():
        out[f"lakeloop.view.{name}"] = _clip(
            f"v{v.get('view_version')} hash={v.get('definition_hash')} "
            f"table={v.get('table')}@{v.get('table_version')} source={v.get('source')}@{v.get('source_version')}"
        )
    code = lineage.get("code") or {}
    out["lakeloop.git_sha"] = str(code.get("git_sha"))
    out["lakeloop.git_dirty"] = str(code.get("git_dirty")).lower()
    out["lakeloop.seed"] = str(lineage.get("seed"))
    ray = lineage.get("ray") or {}
    if ray.get("ray_job_id"):
        out["lakeloop.ray_job_id"] = str(ray["ray_job_id"])
    if ray.get("submission_id"):
        out["lakeloop.ray_submission_id"] = str(ray["submission_id"])
    out["lakeloop.packages"] = _clip(json.dumps(lineage.get("packages") or {}, sort_keys=True))
    return out


def _clip(text: str) -> str:
    return text if len(text) <= TAG_LIMIT else text[: TAG_LIMIT - 3] + "..."
