"""The serving controller: which versions are deployed and how traffic flows, kept in one actor.

It deploys each model version as its own Serve application (``ModelServer``),
changes traffic policies, promotes and rolls back (through the registry's
aliases), and records every change in ``serving.traffic`` so a restart
resumes the same state. Ingress replicas poll :meth:`snapshot`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from datetime import datetime, timezone
from typing import Any

from lakeloop.errors import ModelNotServedError, TrafficError
from lakeloop.serving.policy import (TrafficPolicy, check_deploy_request, check_promote_request, check_traffic_request,
                                     check_version)

HISTORY = "serving.traffic"
HISTORY_COLUMNS = {"at": {"type": "timestamp", "required": True}, "model": "string", "action": "string",
                   "detail": "string", "state": "string"}


def controller_name(lake_root: str) -> str:
    return "lakeloop-serving-" + hashlib.sha256(lake_root.encode()).hexdigest()[:10]


class ServingController:
    def __init__(self, config: dict):
        import lakeloop

        self.ll = lakeloop.connect(config)
        self.lock = threading.RLock()
        self.state: dict[str, Any] = {"version": 0, "models": {}}
        self.skipped: list[dict] = []  # stored rows (or models in them) that failed validation at load
        history = self.ll.lake.table(HISTORY)
        if history.exists():
            rows = history.to_pandas()
            if len(rows):
                self.state, self.skipped = restore_state(rows)
                for problem in self.skipped:
                    _report_skipped(self.ll, problem)

    # -- reads -------------------------------------------------------------------
    def snapshot(self, known_version: int = -1) -> dict | None:
        with self.lock:
            if known_version == self.state["version"]:
                return None
            return copy.deepcopy(self.state)

    def status(self) -> dict:
        out = self.snapshot()
        if self.skipped:
            out["skipped_history"] = copy.deepcopy(self.skipped)
        return out

    # -- changes -----------------------------------------------------------------
    def _commit(self, model: str, action: str, detail: dict) -> dict:
        import pandas as pd

        self.state["version"] += 1
        self.ll.lake.create(HISTORY, HISTORY_COLUMNS, exist_ok=True,
                            description="every serving change: deploys, traffic, promotions, rollbacks")
        self.ll.lake.table(HISTORY).append(pd.DataFrame([{
            "at": pd.Timestamp(datetime.now(timezone.utc)), "model": model, "action": action,
            "detail": json.dumps(detail, default=str), "state": json.dumps(self.state, default=str)}]))
        m = self.state["models"].get(model, {})
        return {"model": model, "action": action, **detail, "policy": m.get("policy"),
                "state_version": self.state["version"]}

    def _resolve(self, model: str, ref) -> Any:
        from mlflow.exceptions import MlflowException

        client = self.ll.mlflow
        try:
            if ref is None:
                return client.get_model_version_by_alias(model, "champion")
            if isinstance(ref, int) or str(ref).isdigit():
                return client.get_model_version(model, str(ref))
            return client.get_model_version_by_alias(model, str(ref))
        except MlflowException as exc:
            raise ModelNotServedError(f"model {model!r} has no version or alias {ref!r} in the registry: "
                                      f"{exc.message if hasattr(exc, 'message') else exc}") from None

    def _signature(self, uri: str) -> tuple[dict, dict]:
        """The version's input columns, and what a feedback label of it must be (one read of its MLmodel)."""
        import mlflow
        from mlflow.models import get_model_info

        from lakeloop.serving.feedback import label_kind

        mlflow.set_tracking_uri(self.ll.config.tracking_uri)
        mlflow.set_registry_uri(self.ll.config.registry_uri)
        info = get_model_info(uri)
        label = label_kind(info.metadata or {}, info.signature)
        schema = info.signature
        if schema is None or schema.inputs is None:
            return {}, label
        return {c.name: {"type": str(getattr(c.type, "name", c.type)), "required": bool(c.required)}
                for c in schema.inputs.inputs if c.name}, label

    def _feature_views(self, model: str, version: int, schema: dict) -> dict:
        """Views whose features the model takes: join keys and model column -> view feature.

        Found through the version's lineage (the training frame's views), so a
        request may carry entity ids instead of those feature values.
        """
        from lakeloop.features import online

        try:
            record = self.ll.models.lineage(model, version).get("lineage") or {}
        except Exception:  # not trained by lakeloop: no recorded frame
            return {}
        frame = record.get("frame") or {}
        full = bool(frame.get("full_feature_names"))
        out = {}
        for view in frame.get("views") or {}:
            try:
                keys, _, features, _ = online.view_shape(self.ll, view)
            except Exception:
                continue
            columns = {(f"{view}__{f}" if full else f): f for f in features}
            taken = {col: f for col, f in columns.items() if col in schema}
            if taken:
                out[view] = {"keys": keys, "features": taken}
        return out

    def deploy(self, model: str, ref=None, weight: float | None = None, shadow: bool = False) -> dict:
        """Deploy a version (by number or alias; default champion) as its own Serve application.

        The first version of a model takes all traffic; later ones join with
        ``weight`` percent (the others keep their proportions), as a shadow, or
        idle (weight 0) until traffic is moved to them.
        """
        from ray import serve

        from lakeloop.serving.deployments import ModelServer, app_name

        checked = check_deploy_request({"weight": weight, "shadow": shadow})  # before anything starts
        weight, shadow = checked["weight"], checked["shadow"]
        mv = self._resolve(model, ref)
        version = int(mv.version)
        with self.lock:  # the new policy must be valid before a replica starts
            current = self.state["models"].get(model, {}).get("policy")
            _deploy_policy(TrafficPolicy.from_dict(current) if current else None, version, weight, shadow)
        uri = f"models:/{model}/{version}"
        schema, label = self._signature(uri)
        views = self._feature_views(model, version, schema)
        if views:
            from lakeloop.features import online

            online.start(self.ll, http=False)
        if not _app_running(app_name(model, version)):  # a running version is not restarted
            cpus = self.ll.config.serve.replica_cpus
            serve.run(ModelServer.options(num_replicas=self.ll.config.serve.replicas,
                                          ray_actor_options={"num_cpus": cpus}).bind(
                uri, self.ll.config.tracking_uri, self.ll.config.registry_uri),
                name=app_name(model, version), route_prefix=None)
        with self.lock:
            m = self.state["models"].setdefault(model, {"versions": {}, "policy": None})
            policy = _deploy_policy(TrafficPolicy.from_dict(m["policy"]) if m["policy"] else None, version, weight,
                                    shadow)
            m["versions"][str(version)] = {
                "uri": uri, "run_id": mv.run_id, "schema": schema, "label": label,
                "aliases": list(getattr(mv, "aliases", []) or []),
                "deployed_at": datetime.now(timezone.utc).isoformat()}
            m["feature_views"] = {**m.get("feature_views", {}), **views}
            m["policy"] = policy.to_dict()
            return self._commit(model, "deploy", {"version": version, "weight": weight, "shadow": shadow})

    def set_traffic(self, model: str, weights: dict, shadow: list | tuple = (), sticky: bool = True) -> dict:
        checked = check_traffic_request({"weights": weights, "shadow": list(shadow) if isinstance(
            shadow, (list, tuple)) else shadow, "sticky": sticky})
        weights, shadow, sticky = checked["weights"], checked["shadow"], checked["sticky"]
        with self.lock:
            m = self._served(model)
            unknown = sorted({*weights, *shadow} - {int(v) for v in m["versions"]})
            if unknown:
                raise TrafficError(f"version(s) {unknown} of {model!r} are not deployed; deployed: "
                                   f"{sorted(int(v) for v in m['versions'])}. Deploy them first.")
            full = {int(v): 0.0 for v in m["versions"]}
            full.update(weights)
            policy = TrafficPolicy(weights=full, shadow=tuple(int(v) for v in shadow), sticky=bool(sticky))
            m["policy"] = policy.to_dict()
            return self._commit(model, "traffic", {"traffic": policy.percent, "shadow": list(policy.shadow)})

    def promote(self, model: str, version: int | None = None, force: bool = False) -> dict:
        """Champion alias to ``version`` (default: the challenger) and all traffic to it.

        The version must have passed the registry's gate unless ``force``.
        """
        version = check_promote_request({"version": version, "force": force})["version"]
        version = int(self._resolve(model, version if version is not None else "challenger").version)
        self.ll.models.promote(model, version, force=force)
        return self._all_traffic_to(model, version, "promote")

    def rollback(self, model: str) -> dict:
        """Champion alias back to the previous champion, and all traffic to it."""
        self._served(model)
        self.ll.models.rollback(model)
        return self._all_traffic_to(model, int(self._resolve(model, "champion").version), "rollback")

    def _all_traffic_to(self, model: str, version: int, action: str) -> dict:
        """Deploy ``version`` if needed, then route every request of ``model`` to it."""
        if str(version) not in self._served(model)["versions"]:
            self.deploy(model, version)
        with self.lock:
            m = self._served(model)
            old = TrafficPolicy.from_dict(m["policy"])
            policy = TrafficPolicy(weights={int(v): 100.0 if int(v) == version else 0.0 for v in m["versions"]},
                                   shadow=tuple(s for s in old.shadow if s != version), sticky=old.sticky)
            m["policy"] = policy.to_dict()
            return self._commit(model, action, {"version": version})

    def retire(self, model: str, version: int) -> dict:
        """Delete an idle version's deployment (no traffic, not a shadow)."""
        from ray import serve

        from lakeloop.serving.deployments import app_name

        with self.lock:
            m = self._served(model)
            policy = TrafficPolicy.from_dict(m["policy"])
            if policy.weights.get(int(version), 0) > 0 or int(version) in policy.shadow:
                raise TrafficError(f"version {version} of {model!r} still gets traffic; move it away first")
            m["versions"].pop(str(version), None)
            m["policy"] = TrafficPolicy(weights={v: w for v, w in policy.weights.items() if v != int(version)},
                                        shadow=policy.shadow, sticky=policy.sticky).to_dict()
            result = self._commit(model, "retire", {"version": int(version)})
        serve.delete(app_name(model, int(version)))
        return result

    def undeploy_all(self) -> list[str]:
        from ray import serve

        from lakeloop.serving.deployments import app_name

        names = [app_name(m, int(v)) for m, info in self.state["models"].items() for v in info["versions"]]
        for name in names:
            serve.delete(name)
        return names

    def _served(self, model: str) -> dict:
        m = self.state["models"].get(model)
        if m is None:
            raise ModelNotServedError(f"model {model!r} is not served; served: {sorted(self.state['models'])}")
        return m


def _deploy_policy(policy: TrafficPolicy | None, version: int, weight: float | None, shadow: bool) -> TrafficPolicy:
    """The traffic policy after deploying ``version`` (raises :class:`TrafficError` when it cannot be)."""
    if policy is None:
        return TrafficPolicy(weights={version: 100.0})
    if shadow:
        return TrafficPolicy(weights={**policy.weights, version: 0.0},
                             shadow=tuple(sorted(set(policy.shadow) | {version})), sticky=policy.sticky)
    if weight is not None:
        return _with_share(policy, version, float(weight))
    if version not in policy.weights:
        return TrafficPolicy(weights={**policy.weights, version: 0.0}, shadow=policy.shadow, sticky=policy.sticky)
    return policy


def _app_running(name: str) -> bool:
    from ray import serve

    try:
        app = serve.status().applications.get(name)
    except Exception:  # Serve not reachable: deploy as before
        return False
    return app is not None and str(getattr(app.status, "value", app.status)) == "RUNNING"


def check_state(state) -> list[str]:
    """Problems of one stored serving state (empty when every model in it can be served as recorded)."""
    if not isinstance(state, dict) or not isinstance(state.get("models"), dict) \
            or isinstance(state.get("version"), bool) or not isinstance(state.get("version"), int):
        return ["the state is not an object with an integer 'version' and 'models'"]
    return [f"model {name!r}: {problem}" for name, m in state["models"].items()
            for problem in check_model_state(m)]


def check_model_state(m) -> list[str]:
    """Problems of one model's stored entry: its versions and its traffic policy."""
    if not isinstance(m, dict) or not isinstance(m.get("versions"), dict):
        return ["no 'versions' object"]
    try:
        deployed = {check_version(v, "a deployed version") for v in m["versions"]}
        if any(not isinstance(info, dict) or not isinstance(info.get("uri"), str) for info in m["versions"].values()):
            return ["a deployed version has no model uri"]
        if m.get("policy") is None:
            return []
        policy = TrafficPolicy.from_dict(m["policy"])
    except TrafficError as exc:
        return [str(exc)]
    unknown = sorted({*policy.weights, *policy.shadow} - deployed)
    return [f"traffic names version(s) {unknown} that are not deployed"] if unknown else []


def restore_state(rows) -> tuple[dict, list[dict]]:
    """The serving state to resume from ``serving.traffic`` rows, and what was skipped.

    The newest row gives the state; a model whose entry there fails validation
    (a NaN or unknown weight, damaged JSON) keeps its newest valid entry from
    an older row, or is left out when none is valid. Each skipped entry is
    reported with the row's time and why.
    """
    states, skipped = [], []
    for _, row in rows.sort_values("at", kind="stable").iterrows():
        try:
            state = json.loads(row["state"])
        except (TypeError, ValueError) as exc:
            skipped.append({"at": str(row["at"]), "model": row.get("model"), "problem": f"state is not JSON: {exc}"})
            continue
        if not isinstance(state, dict) or not isinstance(state.get("models"), dict):
            skipped.append({"at": str(row["at"]), "model": row.get("model"),
                            "problem": "; ".join(check_state(state))})
            continue
        states.append((str(row["at"]), state))
    if not states:
        return {"version": 0, "models": {}}, skipped
    at, newest = states[-1]
    version = newest.get("version")
    result = {"version": version if isinstance(version, int) and not isinstance(version, bool) else len(states),
              "models": {}}
    for name, m in newest["models"].items():
        problems = check_model_state(m)
        if not problems:
            result["models"][name] = m
            continue
        skipped.append({"at": at, "model": name, "problem": "; ".join(problems)})
        for _, older in reversed(states[:-1]):
            candidate = older["models"].get(name)
            if candidate is not None and not check_model_state(candidate):
                result["models"][name] = candidate
                break
    return result, skipped


def _report_skipped(ll, problem: dict) -> None:
    """A stored row that is not served: a warning in the log and an ``alert`` event in ``logs.events``."""
    import logging

    log = logging.getLogger("lakeloop.serving")
    log.warning("serving.traffic row at %s skipped: %s", problem["at"], problem["problem"])
    try:
        from lakeloop.monitoring.events import record_event

        record_event(ll, "alert", str(problem.get("model") or "serving"), source="serving",
                     reason=f"serving.traffic row at {problem['at']} is not valid and is not served: "
                            f"{problem['problem']}"[:1000], details={"skipped_history": problem})
    except Exception:  # reporting must not stop serving from starting
        log.exception("could not record the skipped serving.traffic row in logs.events")


def _with_share(policy: TrafficPolicy, version: int, share: float) -> TrafficPolicy:
    """``version`` gets ``share`` percent; the others keep their proportions of the rest."""
    if not 0 <= share <= 100:
        raise TrafficError(f"weight must be a percentage in 0..100, got {share}")
    others = {v: w for v, w in policy.weights.items() if v != version}
    total = sum(others.values())
    if total <= 0 and share < 100:
        raise TrafficError("no other version takes traffic; give this one 100")
    scaled = {v: (100 - share) * w / total for v, w in others.items()} if total > 0 else {}
    return TrafficPolicy(weights={**scaled, version: share}, shadow=tuple(s for s in policy.shadow if s != version),
                         sticky=policy.sticky)
