"""The Ray Serve deployments: one ``ModelServer`` app per model version, one FastAPI ingress.

The ingress validates each request against the version's signature, joins
online features for rows that carry entity ids, routes by the model's
traffic policy (weights, sticky keys), copies it to shadow versions without
waiting for them, logs every prediction, and answers with the version and a
request id. It follows the serving controller's state (polled), so traffic
changes need no restart.
"""


import asyncio
import json
import random
import time
import uuid
from datetime import datetime, timezone

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from lakeloop.errors import AuthError, ConnectError, LakeloopError, ModelNotServedError
from lakeloop.serving.policy import TrafficPolicy
from lakeloop.serving.validation import InputSchema, Limits, MalformedRequest, parse_request

POLL_S = 0.25
SHADOW_TIMEOUT_S = 10.0


def _same(a: dict, b: dict) -> bool:
    pa, pb = a.get("prediction"), b.get("prediction")
    if isinstance(pa, (int, float)) and isinstance(pb, (int, float)) and not isinstance(pa, bool):
        return abs(pa - pb) <= 1e-9 * max(1.0, abs(pa), abs(pb))
    return pa == pb


def app_name(model: str, version: int) -> str:
    return f"lakeloop-{model}-v{version}"


def load_pyfunc(model_uri: str, tracking_uri: str, registry_uri: str):
    import warnings

    import mlflow
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.pyfunc.load_model(model_uri)


def predict_rows(model, rows: list[dict]) -> list[dict]:
    """A pyfunc's answer for JSON rows, as one JSON object per row."""
    import numpy as np
    import pandas as pd

    out = model.predict(pd.DataFrame(rows))
    if isinstance(out, pd.DataFrame):
        return json.loads(out.to_json(orient="records"))
    if isinstance(out, pd.Series):
        out = out.to_numpy()
    return [{"prediction": v} for v in np.asarray(out).tolist()]


@serve.deployment(max_ongoing_requests=16, graceful_shutdown_timeout_s=20, health_check_period_s=5)
class ModelServer:
    """One registered model version, loaded from the MLflow registry."""

    def __init__(self, model_uri: str, tracking_uri: str, registry_uri: str):
        self.model = load_pyfunc(model_uri, tracking_uri, registry_uri)
        self.uri = model_uri

    def __call__(self, rows: list[dict]) -> list[dict]:
        return predict_rows(self.model, rows)


api = FastAPI(title="lakeloop serving", version="1",
              description="Predictions from registered model versions, with traffic splitting and logging.")


@serve.deployment(max_ongoing_requests=64, graceful_shutdown_timeout_s=20)
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict, controller_name: str, namespace: str, admin_token: str):
        import lakeloop
        from lakeloop.serving import logbook

        self.ll = lakeloop.connect(config)
        self.controller_name, self.namespace = controller_name, namespace
        self.admin_token = admin_token
        self.limits = Limits(max_rows=config["serve"]["max_rows"], max_bytes=config["serve"]["max_bytes"])
        self.logbook = logbook.writer(self.ll)
        self.state_version = -1
        self.models: dict[str, dict] = {}
        self.handles: dict[tuple[str, int], object] = {}
        self.shadow_stats: dict[tuple[str, int], dict] = {}
        self.rng = random.Random()
        self._metrics()
        self._poller = None
        self._log_buffer: list[dict] = []
        self._feedback_buffer: list[dict] = []
        # in-process mode: this replica also holds each live version and answers without a second hop
        self.in_process = bool(config["serve"].get("in_process"))
        self.local_models: dict[tuple[str, int], object] = {}

    def _metrics(self):
        from ray.util import metrics

        keys = ("model", "version", "route")
        self.m_requests = metrics.Counter("lakeloop_predictions", "rows predicted", tag_keys=keys)
        self.m_errors = metrics.Counter("lakeloop_prediction_errors", "failed predictions", tag_keys=keys)
        self.m_latency = metrics.Histogram("lakeloop_prediction_latency_ms", "model call latency (ms)",
                                           boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000],
                                           tag_keys=keys)
        self.m_rejected = metrics.Counter("lakeloop_rejected_requests", "requests answered 4xx",
                                          tag_keys=("model", "status"))

    # -- state -------------------------------------------------------------------
    async def _ensure_state(self):
        if self._poller is None:
            await self._refresh()
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self):
        """Follow the controller's state and hand buffered log records to the writer."""
        while True:
            await asyncio.sleep(POLL_S)
            self._ship_logs()
            try:
                await self._refresh()
            except Exception:  # the controller restarting: keep serving the last state
                continue

    def _ship_logs(self) -> list:
        """Send buffered records to the writer actor (one call per table); returns the calls' refs."""
        from lakeloop.serving.logbook import FEEDBACK, INFERENCE

        refs = []
        for table, attr in ((INFERENCE, "_log_buffer"), (FEEDBACK, "_feedback_buffer")):
            batch = getattr(self, attr)
            if batch:
                setattr(self, attr, [])
                refs.append(self.logbook.log.remote(batch, table))
        return refs

    async def __del__(self):
        """Graceful shutdown (Serve awaits this): the writer has every buffered record before we exit."""
        for ref in self._ship_logs():
            await ref

    async def _refresh(self):
        import ray

        controller = ray.get_actor(self.controller_name, namespace=self.namespace)
        snap = await controller.snapshot.remote(self.state_version)
        if snap is None:
            return
        models = snap["models"]
        handles = {}
        for name, m in models.items():
            m["policy_obj"] = TrafficPolicy.from_dict(m["policy"]) if m.get("policy") else None
            for v, info in m["versions"].items():
                key = (name, int(v))
                handles[key] = self.handles.get(key) or serve.get_deployment_handle(
                    "ModelServer", app_name=app_name(name, int(v)))
                info["schema_obj"] = InputSchema(info.get("schema") or {})
        if self.in_process:
            for key in handles:
                if key not in self.local_models:
                    uri = models[key[0]]["versions"][str(key[1])]["uri"]
                    cfg = self.ll.config
                    self.local_models[key] = await asyncio.to_thread(load_pyfunc, uri, cfg.tracking_uri,
                                                                     cfg.registry_uri)
            self.local_models = {k: m for k, m in self.local_models.items() if k in handles}
        self.models, self.handles, self.state_version = models, handles, snap["version"]

    async def _call_version(self, key: tuple[str, int], rows: list[dict]) -> list[dict]:
        local = self.local_models.get(key)
        if local is not None:
            return predict_rows(local, rows)
        return await self.handles[key].remote(rows)

    # -- helpers -----------------------------------------------------------------
    def _model(self, name: str) -> dict:
        m = self.models.get(name)
        if m is None or not m.get("policy_obj"):
            raise ModelNotServedError(f"model {name!r} is not served; served models: {sorted(self.models)}")
        return m

    def _check_admin(self, request: Request):
        header = request.headers.get("authorization", "")
        if header != f"Bearer {self.admin_token}":
            raise AuthError("admin endpoints need 'Authorization: Bearer <token>' (the token is serve.admin_token, "
                            "or the file _serve/admin_token in the lake)")

    async def _features(self, model: dict, rows: list[dict]) -> list[dict]:
        """Fill feature values from the online store for rows that carry entity ids instead.

        Rows it fills are new dicts; the caller's are not changed.
        """
        views = model["feature_views"]
        import ray

        from lakeloop.features import online

        store = None
        for view, info in views.items():
            keys, columns = info["keys"], info["features"]  # columns: model column -> view feature
            need = [i for i, r in enumerate(rows) if all(k in r for k in keys) and any(c not in r for c in columns)]
            if not need:
                continue
            if store is None:
                store = ray.get_actor(online.actor_name(self.ll), namespace=self.namespace)
            found = await store.lookup.remote(view, [{k: rows[i][k] for k in keys} for i in need])
            for i, hit in zip(need, found):
                rows[i] = {**{c: hit.get(f) for c, f in columns.items()}, **rows[i]}
        model_inputs = set(next(iter(model["versions"].values()))["schema"] or {})
        if model_inputs:
            rows = [{k: v for k, v in r.items() if k in model_inputs} for r in rows]
        return rows

    def _log(self, request_id, name, version, route, rows, outputs, latency_ms, error=None):
        now = datetime.now(timezone.utc)
        records = []
        for i, row in enumerate(rows):
            out = outputs[i] if outputs and i < len(outputs) else None
            records.append({"request_id": request_id, "row": i, "time": now, "model": name, "version": version,
                            "route": route, "features": json.dumps(row, default=str),
                            "output": None if out is None else json.dumps(out, default=str),
                            "prediction": None if out is None else str(out.get("prediction")),
                            "latency_ms": latency_ms, "error": error})
        self._log_buffer.extend(records)  # shipped every POLL_S in one actor call, not one per request

    async def _shadow(self, request_id, name, version, rows, primary_future, primary_version):
        """Ask a shadow version too; log and compare its answer, never return it."""
        stats = self.shadow_stats.setdefault((name, version), {
            "requests": 0, "agree": 0.0, "errors": 0, "latency_ms_sum": 0.0, "primary_version": primary_version})
        t0 = time.perf_counter()
        try:
            out = await asyncio.wait_for(self.handles[(name, version)].remote(rows), SHADOW_TIMEOUT_S)  # own replica
        except Exception as exc:  # a shadow's failure never reaches the caller
            error = f"{type(exc).__name__}: {exc}"[:500]
            stats["requests"] += 1
            stats["errors"] += 1
            stats["last_error"] = error
            self._log(request_id, name, version, "shadow", rows, None, (time.perf_counter() - t0) * 1000, error)
            self.m_errors.inc(1, tags={"model": name, "version": str(version), "route": "shadow"})
            return
        latency = (time.perf_counter() - t0) * 1000
        try:
            primary = await primary_future
        except Exception:  # the primary failed: nothing to compare with
            primary = [{}] * len(out)
        stats["requests"] += 1
        stats["latency_ms_sum"] += latency
        stats["agree"] += sum(1 for a, b in zip(out, primary) if _same(a, b)) / max(1, len(out))
        self._log(request_id, name, version, "shadow", rows, out, latency)
        self.m_requests.inc(len(rows), tags={"model": name, "version": str(version), "route": "shadow"})

    def _reject(self, name: str, exc: LakeloopError) -> JSONResponse:
        self.m_rejected.inc(1, tags={"model": name, "status": str(exc.http_status)})
        return JSONResponse({"error": str(exc), "type": type(exc).__name__}, status_code=exc.http_status)

    # -- routes ------------------------------------------------------------------
    @api.get("/healthz")
    async def health(self):
        await self._ensure_state()
        return {"status": "ok", "state_version": self.state_version}

    @api.get("/v1/models")
    async def list_models(self):
        """Served models, their versions and traffic, and what shadows have shown."""
        await self._ensure_state()
        out = {}
        for name, m in self.models.items():
            versions = {}
            for v, info in m["versions"].items():
                stats = dict(self.shadow_stats.get((name, int(v)), {}))
                if stats.get("requests"):
                    ok = stats["requests"] - stats["errors"]
                    stats["agreement_rate"] = round(stats["agree"] / ok, 4) if ok else None
                    stats["mean_latency_ms"] = round(stats["latency_ms_sum"] / ok, 3) if ok else None
                versions[v] = {k: info[k] for k in ("uri", "run_id", "aliases", "deployed_at") if k in info}
                versions[v]["shadow_stats"] = stats or None
                versions[v]["in_process"] = (name, int(v)) in self.local_models
            policy = m["policy_obj"]
            out[name] = {"versions": versions,
                         "traffic": {str(k): w for k, w in policy.percent.items()} if policy else {},
                         "shadow": list(policy.shadow) if policy else [], "sticky": policy.sticky if policy else None}
        return {"models": out, "state_version": self.state_version}

    @api.post("/v1/models/{name}/predict")
    async def predict(self, name: str, request: Request):
        """Predict for ``{"rows": [{...}], "routing_key": optional}``; rows hold features and/or entity ids."""
        await self._ensure_state()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            model = self._model(name)
            body = parse_request(await request.body(), self.limits)
            policy = model["policy_obj"]
            pinned = body.get("version")
            if pinned is not None:
                if str(pinned) not in model["versions"]:
                    raise ModelNotServedError(f"model {name!r} has no served version {pinned!r}; "
                                              f"served: {sorted(model['versions'], key=int)}")
                version = int(pinned)
            else:
                key = body.get("routing_key") or request.headers.get("x-routing-key")
                version = policy.choose(None if key is None else str(key), self.rng)
            info = model["versions"][str(version)]
            views = model.get("feature_views") or {}
            provided = frozenset(c for v in views.values() for c in v["features"])
            keys = frozenset(k for v in views.values() for k in v["keys"])
            for i, row in enumerate(body["rows"]):
                info["schema_obj"].check_row(i, row, provided, keys)
            rows = body["rows"]
            if views:  # rows with entity ids get their feature values, then are checked as complete rows
                rows = await self._features(model, list(rows))
                for i, row in enumerate(rows):
                    info["schema_obj"].check_row(i, row)
        except LakeloopError as exc:
            return self._reject(name, exc)
        tags = {"model": name, "version": str(version), "route": "primary"}
        t0 = time.perf_counter()
        primary = asyncio.ensure_future(self._call_version((name, version), rows))
        for shadow in policy.shadow:
            if (name, shadow) in self.handles:
                asyncio.get_running_loop().create_task(
                    self._shadow(request_id, name, shadow, rows, primary, version))
        try:
            outputs = await primary
        except Exception as exc:
            latency = (time.perf_counter() - t0) * 1000
            self.m_errors.inc(1, tags=tags)
            self._log(request_id, name, version, "primary", rows, None, latency, error=f"{type(exc).__name__}: {exc}")
            return JSONResponse({"error": f"model {name} v{version} failed on this input: {exc}",
                                 "request_id": request_id}, status_code=422)
        latency = (time.perf_counter() - t0) * 1000
        self.m_requests.inc(len(rows), tags=tags)
        self.m_latency.observe(latency, tags=tags)
        self._log(request_id, name, version, "primary", rows, outputs, latency)
        return {"request_id": request_id, "model": name, "version": version,
                "versions": [version] * len(outputs), "predictions": outputs}

    @api.post("/v1/feedback")
    async def feedback(self, request: Request):
        """Ground truth: ``{"request_id": ..., "label": ...}`` or ``"labels": [...]`` (one per row)."""
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
                raise ValueError('send {"request_id": "<id from predict>", "label": value}')
            labels = body.get("labels", [body.get("label")] if "label" in body else None)
            if not isinstance(labels, list) or not labels or any(lb is None for lb in labels):
                raise ValueError('"label" (or "labels", one per row) is required and may not be null')
        except ValueError as exc:
            return JSONResponse({"error": f"bad feedback: {exc}"}, status_code=400)
        now = datetime.now(timezone.utc)
        self._feedback_buffer.extend({"request_id": body["request_id"], "row": i, "label": json.dumps(lb),
                                      "time": now} for i, lb in enumerate(labels))
        await self._ensure_state()  # starts the loop that ships the buffer
        return {"request_id": body["request_id"], "labels": len(labels)}

    # -- admin -------------------------------------------------------------------
    async def _admin(self, request: Request, method: str, build):
        """Check the token, build the controller call's arguments from the JSON body, run it."""
        import ray

        try:
            self._check_admin(request)
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError as exc:
                raise MalformedRequest(f"request body is not valid JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise MalformedRequest("request body must be a JSON object")
            try:
                controller = ray.get_actor(self.controller_name, namespace=self.namespace)
            except ValueError as exc:
                raise ConnectError("the serving controller is not running; restart with lakeloop serve up") from exc
            try:
                result = await getattr(controller, method).remote(**build(body))
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, LakeloopError):
                    raise exc.cause from None
                raise
            await self._refresh()
            return result
        except LakeloopError as exc:
            return JSONResponse({"error": str(exc), "type": type(exc).__name__}, status_code=exc.http_status)

    @api.post("/v1/admin/models/{name}/deploy")
    async def admin_deploy(self, name: str, request: Request):
        """Deploy ``{"version": 3}`` or ``{"alias": "challenger"}``, optionally ``"weight"`` or ``"shadow": true``."""
        return await self._admin(request, "deploy", lambda b: {
            "model": name, "ref": b.get("version", b.get("alias")), "weight": b.get("weight"),
            "shadow": bool(b.get("shadow", False))})

    @api.put("/v1/admin/models/{name}/traffic")
    async def admin_traffic(self, name: str, request: Request):
        """Set ``{"weights": {"3": 90, "4": 10}, "shadow": [5], "sticky": true}``."""
        return await self._admin(request, "set_traffic", lambda b: {
            "model": name, "weights": b.get("weights") or {}, "shadow": b.get("shadow", []),
            "sticky": b.get("sticky", True)})

    @api.post("/v1/admin/models/{name}/promote")
    async def admin_promote(self, name: str, request: Request):
        """Make ``{"version": N}`` champion and give it all traffic (``"force": true`` skips the gate)."""
        return await self._admin(request, "promote", lambda b: {"model": name, "version": b.get("version"),
                                                                "force": bool(b.get("force", False))})

    @api.post("/v1/admin/models/{name}/rollback")
    async def admin_rollback(self, name: str, request: Request):
        """Give the champion alias and all traffic back to the previous champion."""
        return await self._admin(request, "rollback", lambda b: {"model": name})
