"""The serving controller: which versions are deployed and how traffic flows, kept in one actor.

It deploys each model version as its own Serve application (``ModelServer``),
changes traffic policies, promotes and rolls back (through the registry's
aliases), and records every change in ``serving.traffic`` so a restart
resumes the same state. Ingress replicas poll :meth:`snapshot`.

A version deployed by alias (``fraud`` = its champion, ``fraud@challenger``)
follows that alias: a thread polls the registry, and when the alias moves
(SDK, CLI, a retrain job) the new version is deployed, and once it answers it
takes the traffic (or the shadow slot) the old one had; the old one stays
deployed at weight 0 (in flight requests finish; ``retire`` removes it).
Versions deployed by number stay pinned.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

from lakeloop.errors import ModelLoadError, ModelNotServedError, TrafficError
from lakeloop.serving.policy import (TrafficPolicy, check_deploy_request, check_promote_request, check_traffic_request,
                                     check_version)

HISTORY = "serving.traffic"
FOLLOW_POLL_S = 1.0  # how often the registry's aliases are read for versions that follow one
REPLICA_SEEN_S = 5.0  # an ingress replica that has not read the state this long is not counted (it polls 4/s)
# one that read it this recently is still taken as up: it does not poll while it loads a version, which took
# over 5 s on a loaded machine (deploy then returned as if no ingress were up, and requests were answered
# 404 "served models: []" by a replica still loading the version)
REPLICA_RECENT_S = 60.0
# fast mode: a version's own deployment (the ingress replicas' fallback) starts once an ingress replica has
# loaded the version itself, so its replicas' start does not slow that load (2 cores); at the latest after this
FALLBACK_WAIT_S = 30.0
log = logging.getLogger("lakeloop.serving")
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
        self.changes = threading.RLock()  # one change at a time: deploys, traffic, promotions, alias moves
        self.follow_errors: dict[str, dict] = {}  # "model@alias" -> the version that could not be rolled out, why
        self.skipped: list[dict] = []  # stored rows (or models in them) that failed validation at load
        history = self.ll.lake.table(HISTORY)
        if history.exists():
            rows = history.to_pandas()
            if len(rows):
                self.state, self.skipped = restore_state(rows)
                for problem in self.skipped:
                    _report_skipped(self.ll, problem)
        self.loadable: set[str] = set()  # versions (URIs) loaded here once: artifacts of a version never change
        self.loading = threading.Lock()
        self.fallbacks: dict[str, tuple] = {}  # app name -> (its Serve app, state version it waits for, since)
        self.replicas: dict[str, tuple[int, float]] = {}  # ingress replica -> (state version it serves, when said)
        self._stop = threading.Event()
        threading.Thread(target=self._follow_loop, name="lakeloop-follow-aliases", daemon=True).start()

    # -- reads -------------------------------------------------------------------
    def snapshot(self, known_version: int = -1, replica: str | None = None) -> dict | None:
        """The serving state, or None when ``known_version`` (what the asking ingress replica serves) is it."""
        with self.lock:
            if replica is not None:
                self.replicas[replica] = (known_version, time.monotonic())
            if known_version == self.state["version"]:
                return None
            return copy.deepcopy(self.state)

    def serving(self, version: int) -> dict:
        """How many live ingress replicas serve state ``version`` (or newer), of how many live ones, and how
        many read the state within ``REPLICA_RECENT_S`` (live ones, and ones busy loading a version)."""
        now = time.monotonic()
        with self.lock:
            self.replicas = {r: (v, at) for r, (v, at) in self.replicas.items() if now - at <= REPLICA_RECENT_S}
            live = {r: v for r, (v, at) in self.replicas.items() if now - at <= REPLICA_SEEN_S}
            recent = len(self.replicas)
        return {"serving": sum(1 for v in live.values() if v >= version), "live": len(live), "recent": recent}

    def status(self) -> dict:
        out = self.snapshot()
        if self.skipped:
            out["skipped_history"] = copy.deepcopy(self.skipped)
        if self.follow_errors:
            out["follow_errors"] = copy.deepcopy(self.follow_errors)
        return out

    # -- following aliases -------------------------------------------------------------
    def _follow_loop(self) -> None:
        """Poll the registry for aliases that served versions follow; roll out the moves."""
        while not self._stop.wait(FOLLOW_POLL_S):
            try:
                self.start_fallbacks()
                self.follow_aliases()
            except Exception:  # the registry unreachable for a moment: serve the last state, try again
                log.warning("following registry aliases failed; retrying", exc_info=True)

    def start_fallbacks(self, now: float | None = None) -> list[str]:
        """Start the deployments of versions an ingress replica serves by now (or that waited FALLBACK_WAIT_S)."""
        from ray import serve

        now = time.monotonic() if now is None else now
        with self.changes:  # not between a retire's state change and its delete of the app
            with self.lock:
                applied = max((v for v, _ in self.replicas.values()), default=-1)  # the newest an ingress serves
                due = {name: app for name, (app, needed, since) in self.fallbacks.items()
                       if applied >= needed or now - since >= FALLBACK_WAIT_S}
                for name in due:
                    del self.fallbacks[name]
            if due:
                serve.run_many([serve.RunTarget(app, name=name, route_prefix=None) for name, app in due.items()],
                               wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
        return sorted(due)

    def follow_aliases(self) -> list[dict]:
        """Roll out every followed alias that moved in the registry since it was deployed; returns the changes."""
        with self.lock:
            follows = {name: dict(m.get("follows") or {}) for name, m in self.state["models"].items()}
        done = []
        for model, aliases in follows.items():
            if not aliases:
                continue
            current = dict(self.ll.mlflow.get_registered_model(model).aliases or {})
            for alias, version in aliases.items():
                target = current.get(alias)
                if target is None or int(target) == int(version):
                    continue  # an alias deleted in the registry leaves the served version as it is
                failed = self.follow_errors.get(f"{model}@{alias}")
                if failed and failed["version"] == int(target):
                    continue  # reported already; a later move of the alias is tried again
                try:
                    done.append(self._move_alias(model, alias, int(target)))
                    self.follow_errors.pop(f"{model}@{alias}", None)
                except Exception as exc:
                    self.follow_errors[f"{model}@{alias}"] = {"version": int(target),
                                                             "error": f"{type(exc).__name__}: {exc}"[:1000]}
                    _report_follow_error(self.ll, model, alias, int(target), exc)
        return done

    def _move_alias(self, model: str, alias: str, target: int) -> dict:
        """``alias`` moved to ``target``: deploy it, then give it the old version's traffic or shadow slot."""
        with self.changes:
            m = self._served(model)
            old = (m.get("follows") or {}).get(alias)
            if old is None or int(old) == target:
                return {"model": model, "alias": alias, "version": target, "changed": False}
            old = int(old)
            mv = self._resolve(model, target)
            self._start_version(model, mv)  # answers before it gets any traffic
            with self.lock:
                m = self._served(model)
                policy = _moved(TrafficPolicy.from_dict(m["policy"]), old, target)
                m["policy"] = policy.to_dict()
                m["follows"] = {**(m.get("follows") or {}), alias: target}
                return self._commit(model, "follow", {"alias": alias, "from": old, "version": target,
                                                      "traffic": policy.percent, "shadow": list(policy.shadow)})

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
        return resolve_version(self.ll.mlflow, model, ref)

    def _signature(self, uri: str) -> tuple[dict, dict]:
        return version_signature(self.ll.config, uri)

    def prepare(self, deploy: list) -> None:
        """What ``deploy`` of these ``(model, ref)`` pairs will check, done now (the registry read, the load),
        while Serve starts. Called by ``serve up``, which does not wait for it."""
        for model, ref in deploy:
            try:
                self._check_loads(f"models:/{model}/{int(self._resolve(model, ref).version)}")
            except Exception:  # deploy raises it again, where it is reported
                continue

    def _check_loads(self, uri: str) -> None:
        """Raise :class:`ModelLoadError` naming why when the version's pyfunc cannot be loaded."""
        from lakeloop.serving import body as bodies
        from lakeloop.serving.predict import load_pyfunc

        with self.loading:  # one load per version: a deploy waits for the prepare that loads it
            if uri in self.loadable:
                return
            try:
                load_pyfunc(uri, self.ll.config.tracking_uri, self.ll.config.registry_uri)
            except Exception as exc:
                raise ModelLoadError(f"{uri} was not deployed: it cannot be loaded "
                                     f"({bodies.public_message(exc, limit=500)})") from None
            self.loadable.add(uri)

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
        checked = check_deploy_request({"weight": weight, "shadow": shadow})  # before anything starts
        weight, shadow = checked["weight"], checked["shadow"]
        alias = None if isinstance(ref, int) or str(ref).isdigit() else str(ref or "champion")
        with self.changes:
            mv = self._resolve(model, ref)
            version = int(mv.version)
            followed = (self.state["models"].get(model, {}).get("follows") or {}).get(alias) if alias else None
            if followed is not None and int(followed) != version and weight is None and not shadow:
                result = self._move_alias(model, alias, version)  # the alias moved: its traffic moves with it
                return {**result, "note": _traffic_note(model, version, alias, result, int(followed))}
            with self.lock:  # the new policy must be valid before a replica starts
                current = self.state["models"].get(model, {}).get("policy")
                _deploy_policy(TrafficPolicy.from_dict(current) if current else None, version, weight, shadow)
            self._start_version(model, mv)
            with self.lock:
                m = self.state["models"].setdefault(model, {"versions": {}, "policy": None})
                policy = _deploy_policy(TrafficPolicy.from_dict(m["policy"]) if m["policy"] else None, version,
                                        weight, shadow)
                m["policy"] = policy.to_dict()
                if alias is not None:
                    m["follows"] = {**(m.get("follows") or {}), alias: version}
                result = self._commit(model, "deploy", {"version": version, "weight": weight, "shadow": shadow,
                                                        "follows": alias})
        champion = "champion" in (getattr(mv, "aliases", None) or []) or alias == "champion"
        if champion or alias:
            result["note"] = _traffic_note(model, version, alias, result, None, champion=champion)
        return result

    def _start_version(self, model: str, mv) -> None:
        """The version's Serve app running (a running one is not restarted) and its entry in the state."""
        from ray import serve

        from lakeloop.credentials import redact_uri
        from lakeloop.serving.deployments import ModelServer, app_name
        from lakeloop.serving.service import spread_options

        version = int(mv.version)
        uri = f"models:/{model}/{version}"
        schema, label = self._signature(uri)
        views = self._feature_views(model, version, schema)
        if views:
            from lakeloop.features import online

            online.start(self.ll, http=False)
        if not app_running(app_name(model, version)) and app_name(model, version) not in self.fallbacks:
            # a running version (or one whose start is due) is not started again
            cpus = self.ll.config.serve.replica_cpus
            replicas = self.ll.config.serve.replicas
            app = ModelServer.options(num_replicas=replicas, **spread_options(replicas),  # one node's loss costs one
                                      ray_actor_options={"num_cpus": cpus}).bind(
                uri, redact_uri(self.ll.config.tracking_uri), redact_uri(self.ll.config.registry_uri),
                self.ll.config.lake.root)  # Serve keeps these arguments: never a password in them
            if in_process(self.ll.config):
                # the ingress replicas answer from their own copy, loaded before they take the new state; the
                # version's deployment (their fallback) starts once one of them has it (start_fallbacks).
                # Loaded here first, so a version no process can load never gets traffic (what waiting for
                # its replicas checked)
                self._check_loads(uri)
                with self.lock:  # the callers commit the state that serves it next
                    self.fallbacks[app_name(model, version)] = (app, self.state["version"] + 1, time.monotonic())
            else:  # isolated: its replicas answer every request, so they run before it can get any
                serve.run(app, name=app_name(model, version), route_prefix=None)
        with self.lock:
            m = self.state["models"].setdefault(model, {"versions": {}, "policy": None})
            m["versions"][str(version)] = {
                "uri": uri, "run_id": mv.run_id, "schema": schema, "label": label,
                "aliases": list(getattr(mv, "aliases", []) or []),  # at deploy time; GET /v1/models reads them live
                "deployed_at": datetime.now(timezone.utc).isoformat()}
            m["feature_views"] = {**m.get("feature_views", {}), **views}

    def set_traffic(self, model: str, weights: dict, shadow: list | tuple = (), sticky: bool = True) -> dict:
        checked = check_traffic_request({"weights": weights, "shadow": list(shadow) if isinstance(
            shadow, (list, tuple)) else shadow, "sticky": sticky})
        weights, shadow, sticky = checked["weights"], checked["shadow"], checked["sticky"]
        with self.changes, self.lock:
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
        with self.changes:
            version = int(self._resolve(model, version if version is not None else "challenger").version)
            self.ll.models.promote(model, version, force=force)
            return self._all_traffic_to(model, version, "promote")

    def rollback(self, model: str) -> dict:
        """Champion alias back to the previous champion, and all traffic to it."""
        with self.changes:
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
            if "champion" in (m.get("follows") or {}):  # the alias moved here: following it is done
                m["follows"] = {**m["follows"], "champion": version}
            return self._commit(model, action, {"version": version})

    def retire(self, model: str, version: int) -> dict:
        """Delete an idle version's deployment (no traffic, not a shadow)."""
        from ray import serve

        from lakeloop.serving.deployments import app_name

        with self.changes, self.lock:
            m = self._served(model)
            policy = TrafficPolicy.from_dict(m["policy"])
            if policy.weights.get(int(version), 0) > 0 or int(version) in policy.shadow:
                raise TrafficError(f"version {version} of {model!r} still gets traffic; move it away first")
            held = sorted(a for a, v in (m.get("follows") or {}).items() if int(v) == int(version))
            if held:
                raise TrafficError(f"version {version} of {model!r} is served for alias(es) {held}; "
                                   "it is replaced when the alias moves")
            m["versions"].pop(str(version), None)
            m["policy"] = TrafficPolicy(weights={v: w for v, w in policy.weights.items() if v != int(version)},
                                        shadow=policy.shadow, sticky=policy.sticky).to_dict()
            result = self._commit(model, "retire", {"version": int(version)})
        with self.lock:
            self.fallbacks.pop(app_name(model, int(version)), None)
        serve.delete(app_name(model, int(version)))
        return result

    def undeploy_all(self, wait: bool = True) -> list[str]:
        from ray import serve
        from ray.serve.context import _get_global_client  # serve.delete takes one app; Serve's client many

        from lakeloop.serving.deployments import app_name

        names = [app_name(m, int(v)) for m, info in self.state["models"].items() for v in info["versions"]]
        with self.lock:
            self.fallbacks.clear()
        if not wait:  # Serve stops next and waits for them: all at once, without waiting here
            if names:
                _get_global_client().delete_apps(names, blocking=False)
            return names
        for name in names:
            serve.delete(name)
        return names

    def _served(self, model: str) -> dict:
        m = self.state["models"].get(model)
        if m is None:
            raise ModelNotServedError(f"model {model!r} is not served; served: {sorted(self.state['models'])}")
        return m


def resolve_version(client, model: str, ref) -> Any:
    """The registry's model version for ``ref``: a number, an alias, or None (the champion)."""
    from mlflow.exceptions import MlflowException

    try:
        if ref is None:
            return client.get_model_version_by_alias(model, "champion")
        if isinstance(ref, int) or str(ref).isdigit():
            return client.get_model_version(model, str(ref))
        return client.get_model_version_by_alias(model, str(ref))
    except MlflowException as exc:
        raise ModelNotServedError(f"model {model!r} has no version or alias {ref!r} in the registry: "
                                  f"{exc.message if hasattr(exc, 'message') else exc}") from None


def version_signature(cfg, uri: str) -> tuple[dict, dict]:
    """A version's input columns, and what a feedback label of it must be (one read of its MLmodel)."""
    import mlflow
    from mlflow.models import get_model_info

    from lakeloop.serving.feedback import label_kind

    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.registry_uri)
    info = get_model_info(uri)
    label = label_kind(info.metadata or {}, info.signature)
    schema = info.signature
    if schema is None or schema.inputs is None:
        return {}, label
    return {c.name: {"type": str(getattr(c.type, "name", c.type)), "required": bool(c.required)}
            for c in schema.inputs.inputs if c.name}, label


def _moved(policy: TrafficPolicy, old: int, new: int) -> TrafficPolicy:
    """``new`` takes ``old``'s weight (added to its own) or its shadow slot; ``old`` stays at weight 0."""
    weights = {**policy.weights}
    weights[new] = weights.get(new, 0.0) + weights.get(old, 0.0)
    weights[old] = 0.0
    shadow = [v for v in policy.shadow if v != new]
    if old in shadow:
        shadow = [new if v == old else v for v in shadow] if weights[new] == 0 else [v for v in shadow if v != old]
    return TrafficPolicy(weights=weights, shadow=tuple(sorted(set(shadow))), sticky=policy.sticky)


def _traffic_note(model: str, version: int, alias: str | None, result: dict, moved_from: int | None,
                  champion: bool = False) -> str:
    """What a deploy did to the traffic, in words (a version that is the champion may still get none)."""
    share = (result.get("policy") or {}).get("weights", {}).get(str(version))
    total = sum((result.get("policy") or {}).get("weights", {}).values()) or 1.0
    pct = round(100 * (share or 0.0) / total, 3)
    if moved_from is not None:
        return (f"{model}@{alias} moved from v{moved_from} to v{version}: v{version} took v{moved_from}'s traffic "
                f"and now gets {pct}%; v{moved_from} stays deployed at 0% (retire it when done)")
    what = f"v{version} is {model}'s champion" if champion else f"v{version} is {model}@{alias}"
    if alias:
        what += f"; {model}@{alias} is followed: when the alias moves, its traffic moves with it"
    if pct == 0 and version not in (result.get("policy") or {}).get("shadow", []):
        return (f"{what}. It gets 0% of the traffic: other versions were deployed pinned and keep theirs; "
                f"move it with `lakeloop serve traffic {model} {version}=100` or promote")
    return f"{what}. It gets {pct}% of the traffic"


def _report_follow_error(ll, model: str, alias: str, version: int, exc: Exception) -> None:
    """An alias moved to a version that could not be rolled out: the old one keeps serving; say so."""
    log.warning("%s@%s moved to v%s, which could not be rolled out: %s", model, alias, version, exc)
    try:
        from lakeloop.monitoring.events import record_event

        record_event(ll, "alert", model, version=version, source="serving",
                     reason=f"{model}@{alias} moved to v{version}, which could not be rolled out; the previous "
                            f"version keeps serving: {type(exc).__name__}: {exc}"[:1000])
    except Exception:
        log.exception("could not record the failed roll-out in logs.events")


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


def in_process(cfg) -> bool:
    """Whether the ingress replicas answer from their own copy of each live version (mode ``fast``)."""
    return cfg.serve.mode == "fast" or bool(cfg.serve.in_process)


def app_running(name: str) -> bool:
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
    if unknown:
        return [f"traffic names version(s) {unknown} that are not deployed"]
    follows = m.get("follows") or {}
    if not isinstance(follows, dict) or any(not isinstance(a, str) or str(v) not in m["versions"]
                                            for a, v in follows.items()):
        return ["'follows' must map aliases to deployed versions"]
    return []


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
