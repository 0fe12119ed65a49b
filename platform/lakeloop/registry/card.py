"""The model card: one Markdown page per version with its metrics, data, features and lineage."""

from __future__ import annotations

import json
from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def render(*, name: str, version: int | str, spec: dict, metrics: dict[str, float], lineage: dict | None,
           schema: dict[str, dict], holdout_rows: int, train_rows: int | None, verdict: dict | None,
           search: dict | None, class_balance: dict | None) -> str:
    """The card as Markdown."""
    lineage = lineage or {}
    frame = lineage.get("frame") or {}
    data = lineage.get("data") or {}
    code = lineage.get("code") or {}
    out = [f"# Model card: {name} version {version}", ""]
    out += [
        "## Model",
        "",
        f"- task: **{spec.get('task')}**, target `{spec.get('target')}`, optimised metric `{spec.get('metric')}`",
        f"- family: **{spec.get('family')}**, seed {spec.get('seed')}"
        + (f", epochs {spec.get('epochs')}" if spec.get("epochs") else ""),
        f"- parameters: `{json.dumps(spec.get('params') or {}, sort_keys=True, default=str)}`",
        "- serving: MLflow pyfunc; send raw feature rows, get `prediction`"
        + (" and `probability`" if spec.get("task") == "classification" else ""),
        "",
        "## Metrics on the holdout",
        "",
        _table(["metric", "value"], [[k, v] for k, v in sorted(metrics.items())]),
        "",
    ]
    if verdict:
        out += ["## Promotion gate", "", f"- passed: **{verdict.get('passed')}**"]
        out += [f"- {k}: {verdict.get(k)}" for k in ("score", "champion_version", "champion_score", "margin",
                                                    "nonfinite", "p95_ms", "champion_p95_ms", "latency_ratio",
                                                    "max_latency_ratio", "latency_budget_ms", "schema")]
        out += [f"- reason: {r}" for r in verdict.get("reasons") or []]
        out.append("")
    split = "time-ordered (last rows by `%s`)" % spec.get("timestamp_column") if spec.get("timestamp_column") \
        else f"random{' stratified' if spec.get('task') == 'classification' else ''} (seed {spec.get('seed')})"
    validation = f"{spec.get('cv_folds')}-fold CV" if spec.get("cv_folds") else \
        f"{spec.get('validation_fraction')} validation split"
    out += [
        "## Data",
        "",
        f"- rows: {data.get('rows')} (training {train_rows}, holdout {holdout_rows}); "
        f"content hash `{data.get('hash')}`",
        f"- holdout: {spec.get('holdout_fraction')} of rows, {split}; search validation: {validation}",
    ]
    entities = frame.get("entities") or {}
    if entities.get("table"):
        out.append(f"- labels / entity rows: lake table `{entities['table']}` version {entities.get('version')}")
    elif entities:
        out.append(f"- labels / entity rows: an in-memory frame ({entities.get('rows')} rows, hash "
                   f"`{entities.get('hash')}`); not rebuildable from the lake")
    if class_balance:
        out.append("- classes: " + ", ".join(f"{k}: {v}" for k, v in class_balance.items()))
    out += ["", "## Features", ""]
    kinds = {c: "numeric" for c in spec.get("numeric") or []}
    kinds.update({c: "categorical" for c in spec.get("categorical") or []})
    out.append(_table(["feature", "kind", "input type", "required"],
                      [[f, kinds.get(f), (schema.get(f) or {}).get("type"), (schema.get(f) or {}).get("required")]
                       for f in spec.get("features") or []]))
    out += ["", "## Lineage", ""]
    views = frame.get("views") or {}
    if views:
        out.append(_table(["feature view", "view version", "definition hash", "table@version", "source@version"],
                          [[n, v.get("view_version"), v.get("definition_hash"),
                            f"{v.get('table')}@{v.get('table_version')}",
                            f"{v.get('source')}@{v.get('source_version')}"]
                           for n, v in views.items()]))
        out.append("")
    else:
        out.append("- feature views: none (features read from the frame as given)")
    out.append(f"- code: git `{code.get('git_sha')}`{' (dirty checkout)' if code.get('git_dirty') else ''}")
    ray = lineage.get("ray") or {}
    if ray.get("submission_id") or ray.get("ray_job_id"):
        out.append(f"- Ray job: {ray.get('ray_job_id')} (submission {ray.get('submission_id')})")
    packages = lineage.get("packages") or {}
    if packages:
        out.append("- packages: " + ", ".join(f"{k} {v}" for k, v in packages.items() if v))
    if search:
        out += ["", "## Search", ""]
        out += [f"- {k}: {v}" for k, v in search.items()]
    out += ["", "## Use and limits", "",
            "Scores are on the holdout above; data drifting from it makes them stale. "
            "`lakeloop models rebuild` retrains this version from the lineage recorded here.", ""]
    return "\n".join(out)
