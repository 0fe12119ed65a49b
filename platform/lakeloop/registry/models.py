"""``ll.models``: the MLflow model registry with lineage, a promotion gate, aliases and rebuilds.

A registered version is a standard MLflow pyfunc (``mlflow models serve``
and ``mlflow.pyfunc.load_model`` use it as is). Its run keeps, under
``lakeloop/``: the training spec, the lineage, the holdout rows and the
model card. Aliases ``champion`` and ``challenger`` replace MLflow's
deprecated stages; the registered model's ``lakeloop.champion_history`` tag
lists past champions, so ``rollback`` knows where to go back to.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakeloop.automl import training
from lakeloop.automl.spec import TrainingSpec
from lakeloop.credentials import redact_uri
from lakeloop.errors import ModelNotFoundError, PromotionError, RegistrationError
from lakeloop.registry import card as cards
from lakeloop.registry import gate as gates
from lakeloop.registry import lineage as lineages
from lakeloop.registry import package

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop
    from lakeloop.registry.rebuild import RebuildResult

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "lakeloop.champion_history"
SPEC_FILE, LINEAGE_FILE, HOLDOUT_FILE, CARD_FILE = (
    "lakeloop/training_spec.json", "lakeloop/lineage.json", "lakeloop/holdout.parquet", "lakeloop/model_card.md")


@dataclass(frozen=True, kw_only=True)
class ModelVersionInfo:
    """A registered version: where it is, how it scored, what the gate said."""

    name: str
    version: int
    run_id: str
    metrics: dict[str, float]
    gate: dict | None = None
    aliases: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict:
        return {**asdict(self), "uri": self.uri}


def _is_missing(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return "RESOURCE_DOES_NOT_EXIST" in str(code) or "not found" in str(exc).lower() or "does not exist" in str(exc)


class ModelRegistry:
    """Registered models of one lakeloop deployment (its MLflow registry)."""

    def __init__(self, ll: "Lakeloop"):
        self.ll = ll

    def __repr__(self) -> str:
        return f"ModelRegistry(registry={redact_uri(self.ll.config.registry_uri)!r})"

    @property
    def client(self):
        return self.ll.mlflow

    # -- resolving -----------------------------------------------------------------
    def _model(self, name: str):
        try:
            return self.client.get_registered_model(name)
        except Exception as exc:
            if _is_missing(exc):
                known = [m.name for m in self.client.search_registered_models()]
                raise ModelNotFoundError(
                    f"no registered model {name!r} in {redact_uri(self.ll.config.registry_uri)}; "
                    f"registered: {', '.join(known) or 'none yet'}") from exc
            raise

    def _versions(self, name: str) -> list:
        found = self.client.search_model_versions(name_filter(name)) if name_filter(name) else [
            v for v in self.client.search_model_versions() if v.name == name]  # quotes of both kinds: no filter
        return sorted(found, key=lambda v: int(v.version))

    def version(self, name: str, ref: int | str | None = None):
        """A version by number, by alias (``champion``), or ``None``: the champion, else the newest."""
        model = self._model(name)
        aliases = dict(model.aliases or {})
        if ref is None:
            ref = aliases.get(CHAMPION) or (self._versions(name)[-1].version if self._versions(name) else None)
            if ref is None:
                raise ModelNotFoundError(f"registered model {name!r} has no versions yet")
        ref = str(ref)
        try:
            if ref.isdigit():
                return self.client.get_model_version(name, ref)
            return self.client.get_model_version_by_alias(name, ref)
        except Exception as exc:
            if _is_missing(exc):
                versions = [v.version for v in self._versions(name)]
                raise ModelNotFoundError(
                    f"model {name!r} has no version or alias {ref!r}; versions: {versions}, "
                    f"aliases: {aliases or 'none'}") from exc
            raise

    # -- artifacts -------------------------------------------------------------------
    def _download(self, run_id: str, path: str, dst: str) -> Path:
        with package.quiet():
            return Path(self.client.download_artifacts(run_id, path, dst))

    def _json(self, run_id: str, path: str) -> dict | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return json.loads(self._download(run_id, path, tmp).read_text())
            except Exception as exc:
                if isinstance(exc, (OSError, ValueError)) or "not found" in str(exc).lower() or _is_missing(exc):
                    return None
                raise

    def spec(self, name: str, ref: int | str | None = None) -> TrainingSpec:
        mv = self.version(name, ref)
        data = self._json(mv.run_id, SPEC_FILE)
        if data is None:
            raise ModelNotFoundError(f"model {name} version {mv.version} has no {SPEC_FILE}; it was not "
                                     "registered by lakeloop")
        return TrainingSpec.from_dict(data)

    def holdout(self, name: str, ref: int | str | None = None) -> "pd.DataFrame":
        """The rows the version was scored on (and that the gate compares on)."""
        import pandas as pd

        mv = self.version(name, ref)
        with tempfile.TemporaryDirectory() as tmp:
            return pd.read_parquet(self._download(mv.run_id, HOLDOUT_FILE, tmp))

    def load(self, name: str, ref: int | str | None = None):
        """The version as an MLflow pyfunc model (``predict(raw rows) -> DataFrame``)."""
        mv = self.version(name, ref)
        from mlflow.artifacts import download_artifacts

        uri = self.client.get_model_version_download_uri(name, mv.version)
        with tempfile.TemporaryDirectory() as tmp:
            with package.quiet():
                path = download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=self.ll.config.tracking_uri)
            return package.load(path)

    def card(self, name: str, ref: int | str | None = None) -> str:
        mv = self.version(name, ref)
        with tempfile.TemporaryDirectory() as tmp:
            return self._download(mv.run_id, CARD_FILE, tmp).read_text()

    # -- register ----------------------------------------------------------------------
    def register(self, name: str, model: Any, *, holdout: "pd.DataFrame", spec: TrainingSpec | dict | None = None,
                 target: str | None = None, task: str | None = None, metric: str | None = None,
                 features: list[str] | None = None, train: "pd.DataFrame | None" = None, lineage: dict | None = None,
                 run_id: str | None = None, gate: "gates.Gate | bool | None" = True, search: dict | None = None,
                 description: str | None = None) -> ModelVersionInfo:
        """Log ``model`` (a fitted pipeline taking raw feature rows) as a pyfunc and register it.

        ``holdout`` is where it is scored (and where the gate compares it with the
        champion); ``spec`` says target, task, metric and features (or pass those
        four). ``run_id`` logs into an existing run (the search's parent run);
        otherwise a run is made. ``gate=True`` runs :meth:`gate` with defaults,
        a :class:`Gate` with its thresholds, ``False`` skips it.
        """
        spec = self._spec_for(spec, holdout, target, task, metric, features)
        metrics = _safe_score(model, holdout, spec)
        own_run = run_id is None
        if own_run:
            run_id = self.client.create_run(self.ll.experiment_id(), run_name=f"register-{name}",
                                            tags={"lakeloop.kind": "register"}).info.run_id
        try:
            info = self._register(name, model, spec, metrics, holdout, train, lineage, run_id, gate, search,
                                  description)
        except BaseException:
            if own_run:
                self.client.set_terminated(run_id, "FAILED")
            raise
        if own_run:
            self.client.set_terminated(run_id, "FINISHED")
        return info

    def _spec_for(self, spec, holdout, target, task, metric, features) -> TrainingSpec:
        if isinstance(spec, TrainingSpec):
            return spec
        if isinstance(spec, dict):
            return TrainingSpec.from_dict(spec)
        if not target or not task:
            raise RegistrationError("register needs spec=, or target= and task= (and optionally metric=, "
                                    "features=)")
        from lakeloop.automl import metric as metrics

        features = list(features or [c for c in holdout.columns if c != target])
        numeric, categorical, unusable = training.column_kinds(holdout, features)
        m = metrics.resolve(task, metric, holdout[target].nunique() if task == "classification" else None)
        return TrainingSpec(target=target, task=task, metric=m.name, features=tuple(numeric + categorical),
                            numeric=tuple(numeric), categorical=tuple(categorical))

    def _register(self, name, model, spec, metrics, holdout, train, lineage, run_id, gate, search, description):
        from mlflow.entities import Metric

        train_features = training.raw_features(train if train is not None else holdout, spec)
        with tempfile.TemporaryDirectory() as tmp:
            package.save(Path(tmp, "model"), pipeline=model, task=spec.task, features=list(spec.features),
                         data=train_features, metadata={"target": spec.target, "task": spec.task,
                                                        "metric": spec.metric, "family": spec.family,
                                                        "classes": _classes(model)})
            extra = Path(tmp, "lakeloop")
            extra.mkdir()
            (extra / "training_spec.json").write_text(json.dumps(spec.to_dict(), indent=2, default=str))
            if lineage is not None:
                (extra / "lineage.json").write_text(json.dumps(lineage, indent=2, default=str))
            holdout[[c for c in spec.columns if c in holdout.columns]].to_parquet(extra / "holdout.parquet",
                                                                                index=False)
            self.client.log_artifacts(run_id, str(Path(tmp, "model")), "model")
            self.client.log_artifacts(run_id, str(extra), "lakeloop")
        import time

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(f"holdout_{k}", float(v), now, 0) for k, v in metrics.items()])
        try:
            self.client.get_registered_model(name)
        except Exception as exc:
            if not _is_missing(exc):
                raise
            self.client.create_registered_model(
                name, tags={"lakeloop.target": spec.target, "lakeloop.task": spec.task},
                description=f"{spec.task} of {spec.target!r}, registered by lakeloop")
        tags = {
            "lakeloop.target": spec.target, "lakeloop.task": spec.task, "lakeloop.metric": spec.metric,
            "lakeloop.family": str(spec.family), "lakeloop.params": json.dumps(spec.params, sort_keys=True,
                                                                               default=str)[:4000],
            "lakeloop.run_id": run_id, "lakeloop.holdout_rows": str(len(holdout)),
            **{f"lakeloop.holdout.{k}": f"{v:.6g}" for k, v in metrics.items()},
        }
        if lineage is not None:
            tags.update(lineages.tags(lineage))
        mv = self.client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags=tags,
                                              description=description)
        version = int(mv.version)
        verdict = None
        if gate is not False and gate is not None:
            verdict = self.gate(name, version, gate if isinstance(gate, gates.Gate) else None)
        model_loaded = self.load(name, version)
        text = cards.render(
            name=name, version=version, spec=spec.to_dict(), metrics=metrics, lineage=lineage,
            schema=package.input_schema(model_loaded), holdout_rows=len(holdout),
            train_rows=None if train is None else len(train), verdict=verdict.to_dict() if verdict else None,
            search=search, class_balance=_balance(holdout, spec))
        self.client.log_text(run_id, text, CARD_FILE)
        self.client.set_model_version_tag(name, str(version), "lakeloop.model_card", CARD_FILE)
        aliases = list(self.client.get_model_version(name, str(version)).aliases or [])
        return ModelVersionInfo(name=name, version=version, run_id=run_id, metrics=metrics,
                                gate=verdict.to_dict() if verdict else None, aliases=aliases)

    # -- gate -------------------------------------------------------------------------
    def gate(self, name: str, version: int | str, gate: "gates.Gate | None" = None) -> "gates.Verdict":
        """Check ``version`` against the champion (see :mod:`lakeloop.registry.gate`); challenger if it passes."""
        gate = gate or gates.Gate()
        mv = self.version(name, version)
        version = int(mv.version)
        spec = self.spec(name, version)
        from lakeloop.automl import metric as metrics
        from lakeloop.registry.pyfunc import split_outputs

        m = metrics.resolve(spec.task, spec.metric)
        holdout = self.holdout(name, version)
        y = training.target_values(holdout, spec)
        candidate = self.load(name, version)
        classes = (candidate.metadata.metadata or {}).get("lakeloop", {}).get("classes")
        reasons: list[str] = []
        X = training.raw_features(holdout, spec)
        score, nonfinite, answered = None, 0, False
        try:
            answer = candidate.predict(X)
        except Exception as exc:  # a model that cannot answer its holdout fails the gate; it does not crash it
            reasons.append(f"the version cannot predict its own holdout: {type(exc).__name__}: {exc}"[:1000])
        else:
            nonfinite = gates.nonfinite_count(answer)
            if nonfinite:
                reasons.append(f"{nonfinite} NaN/inf value(s) in the outputs on {len(holdout)} holdout rows")
            else:
                try:
                    pred, proba = split_outputs(answer, spec.task, classes)
                    score = m.score(y, pred, proba, classes)
                except ValueError as exc:  # e.g. roc_auc on a holdout holding one class
                    reasons.append(f"{m.name} cannot be computed on the holdout: {exc}"[:1000])
            answered = True

        champion_version = champion_score = improvement = None
        champion = champion_rows = None  # for the latency check: the champion and rows it answers
        schema, breaking = "no champion", []
        champion_mv = (self._model(name).aliases or {}).get(CHAMPION)
        if champion_mv is not None and int(champion_mv) != version:
            champion_version = int(champion_mv)
            champion = self.load(name, champion_version)
            breaking = gates.schema_changes(package.input_schema(champion), package.input_schema(candidate))
            schema = "breaking" if breaking else "compatible"
            if breaking:
                reasons.append("breaking change against champion version "
                               f"{champion_version}'s input schema: " + "; ".join(breaking))
            champion_spec = self.spec(name, champion_version)
            try:
                cx = training.raw_features(holdout, champion_spec)
                champion_answer = champion.predict(cx)
                champion_rows = cx
                cpred, cproba = split_outputs(champion_answer, spec.task,
                                              (champion.metadata.metadata or {}).get("lakeloop", {}).get("classes"))
                champion_score = m.score(y, cpred, cproba, classes)
            except Exception as exc:  # e.g. the holdout lacks a column the champion needs (MlflowException)
                reasons.append(f"champion version {champion_version} cannot be scored on this holdout: "
                               f"{type(exc).__name__}: {exc}"[:1000])
            if score is not None and champion_score is not None:
                improvement = m.improvement(score, champion_score)
                if not m.better(score, champion_score, gate.margin):
                    reasons.append(f"{m.name} {score:.6g} does not beat champion version {champion_version}'s "
                                   f"{champion_score:.6g} by the margin {gate.margin}")
        elif champion_mv is not None:
            schema = "compatible"
        latency = {"p95_ms": float("nan")}
        if answered:  # CPU time against the champion's in the same run (interleaved): load does not refuse
            latency, slow = gates.latency_check(gate, candidate, X, champion, champion_rows, champion_version)
            reasons.extend(slow)
        verdict = gates.Verdict(
            passed=not reasons, reasons=reasons, metric=m.name, score=score, champion_version=champion_version,
            champion_score=champion_score, margin=gate.margin, improvement=improvement, nonfinite=nonfinite,
            latency_budget_ms=gate.latency_budget_ms, schema=schema, breaking_changes=breaking, rows=len(holdout),
            checked_at=gates.now(), max_latency_ratio=gate.max_latency_ratio, **latency)
        for k, v in verdict.tags().items():
            self.client.set_model_version_tag(name, str(version), k, v)
        if verdict.passed and (champion_mv is None or int(champion_mv) != version):
            self.client.set_registered_model_alias(name, CHALLENGER, str(version))
        elif not verdict.passed and str((self._model(name).aliases or {}).get(CHALLENGER)) == str(version):
            self.client.delete_registered_model_alias(name, CHALLENGER)
        return verdict

    # -- aliases -----------------------------------------------------------------------
    def _history(self, name: str) -> list[int]:
        raw = (self._model(name).tags or {}).get(HISTORY_TAG)
        return [int(v) for v in json.loads(raw)] if raw else []

    def promote(self, name: str, version: int | str | None = None, *, force: bool = False) -> dict:
        """Make ``version`` (default: the challenger) the champion; it must have passed the gate unless ``force``."""
        model = self._model(name)
        aliases = dict(model.aliases or {})
        if version is None:
            if CHALLENGER not in aliases:
                raise PromotionError(f"model {name!r} has no challenger to promote; pass a version "
                                     f"(lakeloop models promote {name} VERSION)")
            version = aliases[CHALLENGER]
        mv = self.version(name, version)
        version = int(mv.version)
        previous = int(aliases[CHAMPION]) if CHAMPION in aliases else None
        if previous == version:
            return {"name": name, "champion": version, "previous": previous, "changed": False}
        passed = (mv.tags or {}).get("lakeloop.gate.passed")
        if passed != "true" and not force:
            why = (mv.tags or {}).get("lakeloop.gate.reasons") if passed == "false" else "it has not been gated"
            raise PromotionError(f"model {name} version {version} did not pass the gate ({why}); run "
                                 f"`lakeloop models gate {name} {version}` or promote with --force")
        history = self._history(name)
        if previous is not None and (not history or history[-1] != previous):
            history.append(previous)
        history.append(version)
        self.client.set_registered_model_alias(name, CHAMPION, str(version))
        self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        self.client.set_model_version_tag(name, str(version), "lakeloop.promoted_at", gates.now())
        if aliases.get(CHALLENGER) is not None and int(aliases[CHALLENGER]) == version:
            self.client.delete_registered_model_alias(name, CHALLENGER)
        return {"name": name, "champion": version, "previous": previous, "changed": True}

    def rollback(self, name: str) -> dict:
        """Make the previous champion the champion again."""
        aliases = dict(self._model(name).aliases or {})
        if CHAMPION not in aliases:
            raise PromotionError(f"model {name!r} has no champion, so there is nothing to roll back")
        current = int(aliases[CHAMPION])
        history = self._history(name)
        if not history or history[-1] != current:
            history.append(current)
        if len(history) < 2:
            raise PromotionError(f"model {name!r} has had no champion before version {current}; "
                                 "nothing to roll back to (promote another version instead)")
        history.pop()
        target = history[-1]
        self.client.set_registered_model_alias(name, CHAMPION, str(target))
        self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        self.client.set_model_version_tag(name, str(current), "lakeloop.rolled_back_at", gates.now())
        return {"name": name, "champion": target, "previous": current, "changed": True}

    # -- reading -----------------------------------------------------------------------
    def list(self) -> list[dict]:
        """Every registered model: versions, champion, challenger and the champion's holdout score."""
        rows = []
        for m in sorted(self.client.search_registered_models(), key=lambda m: m.name):
            versions = self._versions(m.name)
            aliases = dict(m.aliases or {})
            champion = str(aliases.get(CHAMPION))
            head = next((v for v in versions if str(v.version) == champion), versions[-1] if versions else None)
            tags = (head.tags or {}) if head else {}
            metric = tags.get("lakeloop.metric")
            rows.append({"name": m.name, "versions": len(versions),
                         "latest": int(versions[-1].version) if versions else None,
                         "champion": int(aliases[CHAMPION]) if CHAMPION in aliases else None,
                         "challenger": int(aliases[CHALLENGER]) if CHALLENGER in aliases else None,
                         "metric": metric, "score": _float(tags.get(f"lakeloop.holdout.{metric}")),
                         "family": tags.get("lakeloop.family")})
        return rows

    def show(self, name: str, ref: int | str | None = None) -> dict:
        """One version: aliases, metrics, family and parameters, gate verdict, input schema, tags."""
        mv = self.version(name, ref)
        tags = dict(mv.tags or {})
        run = self.client.get_run(mv.run_id)
        metrics = {k[len("holdout_"):]: v for k, v in run.data.metrics.items() if k.startswith("holdout_")}
        gate = json.loads(tags["lakeloop.gate"]) if tags.get("lakeloop.gate") else None
        return {
            "name": name, "version": int(mv.version), "aliases": list(mv.aliases or []), "run_id": mv.run_id,
            "created": mv.creation_timestamp, "status": mv.status, "source": mv.source,
            "uri": f"models:/{name}/{mv.version}",
            "family": tags.get("lakeloop.family"), "params": json.loads(tags.get("lakeloop.params") or "{}"),
            "metric": tags.get("lakeloop.metric"), "metrics": metrics, "gate": gate,
            "tags": {k: v for k, v in tags.items() if k != "lakeloop.gate"},
        }

    def get(self, name: str, ref: int | str | None = None):
        """One version as a :class:`~lakeloop.registry.view.ModelVersion` (shows itself in Jupyter)."""
        from lakeloop.registry.view import get
        return get(self, name, ref)

    def lineage(self, name: str, ref: int | str | None = None) -> dict:
        """The recorded lineage of a version, with its training spec."""
        mv = self.version(name, ref)
        return {"name": name, "version": int(mv.version), "run_id": mv.run_id,
                "lineage": self._json(mv.run_id, LINEAGE_FILE), "spec": self._json(mv.run_id, SPEC_FILE)}

    def compare(self, name: str, versions: list[int | str] | None = None) -> dict:
        """Versions side by side: recorded metrics, and scores on one common holdout (the newest version's).

        Default versions: champion and challenger when both exist, else the two newest.
        """
        if not versions:
            aliases = dict(self._model(name).aliases or {})
            if CHAMPION in aliases and CHALLENGER in aliases:
                versions = [aliases[CHAMPION], aliases[CHALLENGER]]
            else:
                versions = [v.version for v in self._versions(name)[-2:]]
        mvs = [self.version(name, v) for v in versions]
        newest = max(int(mv.version) for mv in mvs)
        spec = self.spec(name, newest)
        from lakeloop.automl import metric as metrics
        from lakeloop.registry.pyfunc import split_outputs

        m = metrics.resolve(spec.task, spec.metric)
        holdout = self.holdout(name, newest)
        y = training.target_values(holdout, spec)
        rows = []
        for mv in mvs:
            info = self.show(name, mv.version)
            lin = self._json(mv.run_id, LINEAGE_FILE) or {}
            entities = (lin.get("frame") or {}).get("entities") or {}
            common = None
            try:
                model = self.load(name, mv.version)
                vspec = self.spec(name, mv.version)
                pred, proba = split_outputs(model.predict(training.raw_features(holdout, vspec)), spec.task,
                                            (model.metadata.metadata or {}).get("lakeloop", {}).get("classes"))
                common = m.score(y, pred, proba, (model.metadata.metadata or {}).get("lakeloop", {}).get("classes"))
            except Exception:  # a version that cannot read this holdout (other columns) gets no common score
                common = None
            rows.append({"version": info["version"], "aliases": info["aliases"], "family": info["family"],
                         "recorded": info["metrics"].get(info["metric"]) if info["metric"] else None,
                         f"{m.name}_on_common_holdout": common,
                         "data": (f"{entities['table']}@{entities.get('version')}" if entities.get("table")
                                  else "in-memory frame"),
                         "git_sha": (lin.get("code") or {}).get("git_sha"),
                         "gate_passed": (info["gate"] or {}).get("passed"), "params": info["params"]})
        return {"name": name, "metric": m.name, "holdout_of": newest, "holdout_rows": len(holdout), "versions": rows}

    # -- rebuild -----------------------------------------------------------------------
    def rebuild(self, name: str, version: int | str, *, register: bool = False,
                gate: "gates.Gate | bool" = True) -> "RebuildResult":
        """Re-create the training frame from the lineage and retrain with the recorded parameters and seed.

        ``register=True`` also registers the rebuilt model as a new version (through ``gate``).
        """
        from lakeloop.registry.rebuild import rebuild

        return rebuild(self, name, version, register=register, gate=gate)


def name_filter(name: str) -> str | None:
    """An MLflow filter string matching the model ``name`` exactly, or None when none can be written.

    MLflow's filter strings have no escapes: a value is whatever lies between
    its quotes. So the name is quoted with a quote character it does not hold
    (a name with both kinds gets None: filter in Python instead), and a name
    can never end the string early and add conditions of its own.
    """
    for quote in ("'", '"'):
        if quote not in name:
            return f"name={quote}{name}{quote}"
    return None


def _float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _classes(model) -> list | None:
    classes = getattr(model, "classes_", None)
    return None if classes is None else [c.item() if hasattr(c, "item") else c for c in classes]


def _balance(frame: "pd.DataFrame", spec: TrainingSpec) -> dict | None:
    if spec.task != "classification":
        return None
    return {str(k): int(v) for k, v in frame[spec.target].value_counts().sort_index().items()}


def _safe_score(model, holdout: "pd.DataFrame", spec: TrainingSpec) -> dict[str, float]:
    """Holdout metrics; a model whose outputs cannot be scored (NaN) gets none (the gate says why)."""
    try:
        return training.score(model, holdout, spec)
    except ValueError:
        return {}
