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
import logging
import random
import re
import threading
import time
import uuid
from datetime import datetime, timezone

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import Request as PlainRequest
from ray import serve

from lakeloop.errors import AuthError, ConnectError, LakeloopError, ModelNotServedError, ServiceUnavailableError
from lakeloop.serving import body as bodies
from lakeloop.serving import feedback as fb
from lakeloop.serving import predict as answers
from lakeloop.serving.policy import TrafficPolicy, check_deploy_request, check_promote_request, check_traffic_request
from lakeloop.serving.predict import import_pyfunc, load_pyfunc, predict_grouped, predict_rows, same
from lakeloop.serving.validation import InputSchema, Limits, MalformedRequest, check_predict

POLL_S = 0.25
SHADOW_TIMEOUT_S = 10.0
MAX_BATCH = 64  # requests predicted together by one model call in fast mode


def replica_died(exc: BaseException) -> bool:
    """Whether a DeploymentHandle call failed because its replica (not the model) failed.

    Ray raises ``ActorDiedError``/``ActorUnavailableError`` (both ``RayActorError``) for a replica
    killed mid-request, sometimes wrapped in a ``RayTaskError`` or a ``RayServeException``; Serve
    raises ``ReplicaUnavailableError``/``DeploymentUnavailableError`` when none can take it.
    """
    import ray
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, (ray.exceptions.RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)):
            return True
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    return False


def metric_tag(name: str) -> str:
    """A model name as a metric tag value: ASCII (escaped), bounded."""
    return name.encode("ascii", "backslashreplace").decode()[:200]


def name_of(request: Request) -> str:
    """The model name in a request's path, or "" (helpers live above the classes Serve pickles)."""
    return str(request.path_params.get("name", ""))


def _only_empty(body: dict, arguments: dict) -> dict:
    if body:
        raise MalformedRequest(f"a rollback takes no fields, got {sorted(str(k)[:40] for k in body)[:10]}")
    return arguments


def app_name(model: str, version: int) -> str:
    return f"lakeloop-{model}-v{version}"


@serve.deployment(max_ongoing_requests=16, graceful_shutdown_timeout_s=20, health_check_period_s=5)
class ModelServer:
    """One registered model version, loaded from the MLflow registry."""

    def __init__(self, model_uri: str, tracking_uri: str, registry_uri: str, lake_root: str | None = None):
        self.model = load_pyfunc(model_uri, tracking_uri, registry_uri, lake_root)
        self.uri = model_uri

    def __call__(self, rows: list[dict]) -> list[dict]:
        return predict_rows(self.model, rows)


api = FastAPI(title="lakeloop serving", version="1",
              description="Predictions from registered model versions, with traffic splitting and logging.")
PREDICT_PATH = re.compile(r"/v1/models/([^/]+)/predict")
_serving: list = []  # this process's Ingress (Serve runs one replica per process), for the predict fast path


class PredictFastPath:
    """``POST /v1/models/{name}/predict`` straight to this replica's :meth:`Ingress.predict`, past FastAPI's
    router, dependency solving and exception middleware (a tenth of the replica's CPU per request at c=8
    here); every other request goes through FastAPI as before. It sits inside FastAPI's outer middleware,
    so its body limit and its 500 for an error the route does not answer itself apply as they did."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        serving = _this_module()._serving
        if serving and scope["type"] == "http" and scope["method"] == "POST":
            match = PREDICT_PATH.fullmatch(route_path(scope))
            if match:
                response = await serving[0].predict(match.group(1), PlainRequest(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


api.add_middleware(PredictFastPath)


def _this_module():
    """This module as imported: Serve ships the app and the deployment class to the replica by value
    (cloudpickle), each with its own copy of this module's globals, so they meet here instead."""
    import lakeloop.serving.deployments as module

    return module


def route_path(scope) -> str:
    """The path the app's routes match against, as Starlette's router finds it: ``root_path`` taken off
    only where it is followed by a ``/`` (Serve sets ``root_path`` to ``/`` under route prefix ``/``)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] == "/":
        return path[len(root):]
    return path


@serve.deployment(max_ongoing_requests=64, graceful_shutdown_timeout_s=20)
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict, controller_name: str, namespace: str, admin_token: str):
        import lakeloop
        from lakeloop.serving import logbook

        self.ll = lakeloop.connect(config)
        self.controller_name, self.namespace = controller_name, namespace
        self.admin_token = admin_token
        _this_module()._serving[:] = [self]
        self.limits = Limits(max_rows=config["serve"]["max_rows"], max_bytes=config["serve"]["max_bytes"])
        self.feedback_token = self.ll.config.serve.feedback_token  # None: feedback needs no token
        self.logbook = logbook.LogShipper(self.ll)  # answers wait until their log records are spooled (fsync'd)
        self.feedback_book = fb.FeedbackBook(self.ll, getattr(self.ll.config.serve, "feedback_window_s", fb.WINDOW_S),
                                             recent=self.logbook.recent, siblings=self.logbook.siblings,
                                             spooled=self.logbook.spooled)
        self.state_version = -1
        self.replica_id = uuid.uuid4().hex[:12]  # named in state reads: the controller knows who serves what
        self.models: dict[str, dict] = {}
        self.handles: dict[tuple[str, int], object] = {}
        self.shadow_stats: dict[tuple[str, int], dict] = {}
        self.rng = random.Random()
        self.inflight = 0  # predict requests in this replica now (received, not yet answered)
        self.batch_wait_s = self.ll.config.serve.batch_wait_ms / 1000
        self._metrics()
        self._poller = None
        self._first: asyncio.Future | None = None  # the first state read, shared by requests that wait for it
        self._background: set[asyncio.Task] = set()  # shadow calls and their log writes
        # fast mode: this replica also holds each live version and answers without a second hop
        from lakeloop.serving.controller import in_process

        self.in_process = in_process(self.ll.config)
        self.local_models: dict[tuple[str, int], object] = {}
        if self.in_process:  # loading a version imports mlflow's pyfunc: done while this replica starts
            threading.Thread(target=import_pyfunc, name="lakeloop-import-pyfunc", daemon=True).start()

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
        """The first state read once (requests that arrive meanwhile wait for the same read), then polled."""
        if self._poller is not None:
            return
        if self._first is None:
            self.logbook.start()  # ships this replica's spool and adopts those of replicas that died here
            self._first = asyncio.ensure_future(self._refresh())
        first = self._first
        try:
            await asyncio.shield(first)
        except Exception:
            if self._first is first:
                self._first = None  # the controller not reachable yet: the next request reads again
            raise
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self):
        """Follow the controller's state."""
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self._refresh()
            except Exception:  # the controller restarting: keep serving the last state
                continue

    async def __del__(self):
        """Graceful shutdown (Serve awaits this): shadow calls finish and their records reach the writer.

        Answered requests need nothing more: each waited for its records to be in this replica's spool;
        what the spool holds is shipped to the writer here (or adopted by another replica if this fails).
        """
        if self._background:
            await asyncio.wait(set(self._background), timeout=SHADOW_TIMEOUT_S)
        await self.logbook.drain(timeout_s=8.0)  # within Serve's graceful_shutdown_timeout_s with the wait above

    async def _refresh(self):
        import ray

        controller = ray.get_actor(self.controller_name, namespace=self.namespace)
        snap = await controller.snapshot.remote(self.state_version, self.replica_id)
        if snap is None:
            return
        models = snap["models"]
        handles = {}
        for name, m in models.items():
            try:
                m["policy_obj"] = TrafficPolicy.from_dict(m["policy"]) if m.get("policy") else None
            except LakeloopError as exc:  # not served (404) rather than failing every request (500)
                m["policy_obj"], m["policy_error"] = None, str(exc)
            for v, info in m["versions"].items():
                key = (name, int(v))
                handles[key] = self.handles.get(key) or serve.get_deployment_handle(  # in fast mode its app may
                    "ModelServer", app_name=app_name(name, int(v)), _check_exists=False)  # start after this
                info["schema_obj"] = InputSchema(info.get("schema") or {})
        if self.in_process:
            for key in handles:
                if key not in self.local_models:
                    uri = models[key[0]]["versions"][str(key[1])]["uri"]
                    cfg = self.ll.config
                    try:
                        self.local_models[key] = await asyncio.to_thread(load_pyfunc, uri, cfg.tracking_uri,
                                                                         cfg.registry_uri)
                    except Exception:  # served through its own deployment (one hop) rather than not at all
                        logging.getLogger("lakeloop.serving").exception("could not load %s here", uri)
            self.local_models = {k: m for k, m in self.local_models.items() if k in handles}
        self.models, self.handles, self.state_version = models, handles, snap["version"]

    async def _call_version(self, key: tuple[str, int], rows: list[dict]) -> list[dict]:
        """The version's answer; a request whose replica died is sent once more (Serve picks a live replica).

        Raises :class:`ServiceUnavailableError` (503, ``Retry-After``) when the retry fails the same way;
        any other exception is the model's own failure on this input.
        """
        if key in self.local_models:
            out = await self._batched(key, rows)
            if isinstance(out, BaseException):
                raise out
            return out
        try:
            return await self.handles[key].remote(rows)
        except Exception as exc:
            if not replica_died(exc):
                raise
            first = exc
        try:
            return await self.handles[key].remote(rows)
        except Exception as exc:
            if not replica_died(exc):
                raise
            raise ServiceUnavailableError(
                f"model {key[0]} v{key[1]} is unavailable: its replica died during the request and the retry "
                f"failed too ({type(first).__name__}, then {type(exc).__name__}); retry shortly") from None

    def _batched(self, key: tuple[str, int], rows: list[dict]):
        """Queue rows for the version's next model call (an awaitable of their answers, or of their exception).

        A model call costs about the same for 1 row as for 8 (the pipeline's fixed cost), so under load a
        batch waits up to ``serve.batch_wait_ms`` for the requests this replica is already handling to
        join it; a lone request (nothing else in flight here) is predicted at once. At c=8 here a 2 ms
        wait made the average batch 7.5-7.8 requests instead of 4.4-5.1, and this one cut the replica's
        CPU per request by a fifth (README, Serving).
        """
        self._predict_local.set_batch_wait_timeout_s(self.batch_wait_s if self.inflight > 1 else 0.0)
        return self._predict_local((key, rows))

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.0)
    async def _predict_local(self, items: list[tuple]) -> list:
        """Requests queued together are predicted together (one call per version); see :meth:`_batched`."""
        return predict_grouped(self.local_models, items)

    # -- helpers -----------------------------------------------------------------
    def _model(self, name: str) -> dict:
        m = self.models.get(name)
        if m is None or not m.get("policy_obj"):
            why = f" (its stored traffic is not valid: {m['policy_error']})" if m and m.get("policy_error") else ""
            raise ModelNotServedError(f"model {name[:100]!r} is not served{why}; served models: {sorted(self.models)}")
        return m

    @staticmethod
    def _bearer(request: Request, token: str | None) -> bool:
        return answers.bearer(request, token)

    def _check_admin(self, request: Request):
        if not self._bearer(request, self.admin_token):
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

    async def _log_durable(self, table: str, records: list[dict]) -> None:
        """Spool records for the log writer; returns once they are on this node's disk (fsync'd).

        Answer 2xx only after this returns: it raises :class:`ServiceUnavailableError` (answer 503 with
        ``Retry-After``) when the spool is full (the writer unreachable or pushing back for a while) or
        cannot be written. Concurrent calls share one write (group commit); a background task ships the
        spool to the writer (:class:`~lakeloop.serving.logbook.LogShipper`).
        """
        await self.logbook.log(table, records)

    async def _log(self, request_id, name, version, route, rows, outputs, latency_ms, error=None):
        """Log one prediction's rows to ``logs.inference`` durably (see :meth:`_log_durable`)."""
        from lakeloop.serving.logbook import INFERENCE

        await self._log_durable(INFERENCE, answers.inference_records(request_id, name, version, route, rows,
                                                                       outputs, latency_ms, error))

    async def _log_quietly(self, stats: dict, *args, **kwargs) -> None:
        """Log a shadow's answer; nobody waits for it, so a log outage is counted, not raised."""
        try:
            await self._log(*args, **kwargs)
        except LakeloopError as exc:
            stats["unlogged"] = stats.get("unlogged", 0) + 1
            stats["last_log_error"] = str(exc)[:300]

    async def _shadow(self, request_id, name, version, rows, primary_future, primary_version):
        """Ask a shadow version too; log and compare its answer, never return it."""
        stats = self.shadow_stats.setdefault((name, version), {
            "requests": 0, "agree": 0.0, "errors": 0, "latency_ms_sum": 0.0, "primary_version": primary_version})
        t0 = time.perf_counter()
        try:
            if (name, version) in self.local_models:  # fast mode: predicted here, batched with other requests
                out = await asyncio.wait_for(self._batched((name, version), rows), SHADOW_TIMEOUT_S)
                if isinstance(out, BaseException):
                    raise out
            else:  # its own replica
                out = await asyncio.wait_for(self.handles[(name, version)].remote(rows), SHADOW_TIMEOUT_S)
        except Exception as exc:  # a shadow's failure never reaches the caller
            error = bodies.public_message(exc)  # shown by GET /v1/models: no traceback
            stats["requests"] += 1
            stats["errors"] += 1
            stats["last_error"] = error
            await self._log_quietly(stats, request_id, name, version, "shadow", rows, None,
                                    (time.perf_counter() - t0) * 1000, error)
            self.m_errors.inc(1, tags={"model": metric_tag(name), "version": str(version), "route": "shadow"})
            return
        latency = (time.perf_counter() - t0) * 1000
        try:
            primary = await primary_future
        except Exception:  # the primary failed: nothing to compare with
            primary = [{}] * len(out)
        stats["requests"] += 1
        stats["latency_ms_sum"] += latency
        stats["agree"] += sum(1 for a, b in zip(out, primary) if same(a, b)) / max(1, len(out))
        self.m_requests.inc(len(rows), tags={"model": metric_tag(name), "version": str(version), "route": "shadow"})
        await self._log_quietly(stats, request_id, name, version, "shadow", rows, out, latency)

    def _registry_aliases(self, names: list[str]) -> dict:
        """Each model's aliases (alias -> version) as the registry has them now, or why it could not say."""
        out: dict = {}
        for name in names:
            try:
                out[name] = dict(self.ll.mlflow.get_registered_model(name).aliases or {})
            except Exception as exc:  # the registry down: the listing still answers, saying so
                out[name] = f"the registry did not answer: {bodies.public_message(exc, limit=300)}"
        return out

    def _reject(self, name: str, exc: LakeloopError) -> JSONResponse:
        tag = metric_tag(name) if name in self.models else "-"  # a client's made-up name is never a tag
        self.m_rejected.inc(1, tags={"model": tag, "status": str(exc.http_status)})
        return answers.rejection(exc)

    # -- routes ------------------------------------------------------------------
    @api.get("/healthz")
    async def health(self):
        await self._ensure_state()
        return {"status": "ok", "state_version": self.state_version, "inference_log": self.logbook.stats()}

    @api.get("/v1/models")
    async def list_models(self):
        """Served models, their versions and traffic, and what shadows have shown."""
        await self._ensure_state()
        live = await asyncio.to_thread(self._registry_aliases, list(self.models))
        out = {}
        for name, m in self.models.items():
            versions = {}
            for v, info in m["versions"].items():
                stats = dict(self.shadow_stats.get((name, int(v)), {}))
                if stats.get("requests"):
                    ok = stats["requests"] - stats["errors"]
                    stats["agreement_rate"] = round(stats["agree"] / ok, 4) if ok else None
                    stats["mean_latency_ms"] = round(stats["latency_ms_sum"] / ok, 3) if ok else None
                versions[v] = {k: info[k] for k in ("uri", "run_id", "deployed_at") if k in info}
                aliases = live.get(name)
                versions[v]["aliases"] = sorted(a for a, av in aliases.items() if str(av) == v) \
                    if isinstance(aliases, dict) else None  # None: the registry did not answer
                versions[v]["shadow_stats"] = stats or None
                versions[v]["in_process"] = (name, int(v)) in self.local_models
            policy = m.get("policy_obj")
            out[name] = {"versions": versions,
                         "traffic": {str(k): w for k, w in policy.percent.items()} if policy else {},
                         "shadow": list(policy.shadow) if policy else [], "sticky": policy.sticky if policy else None}
            out[name]["follows"] = {a: int(v) for a, v in (m.get("follows") or {}).items()}
            if not isinstance(live.get(name), dict):
                out[name]["aliases_error"] = live.get(name)
            if m.get("policy_error"):
                out[name]["error"] = m["policy_error"]
        return {"models": out, "state_version": self.state_version}

    @api.post("/v1/models/{name}/predict", openapi_extra=bodies.openapi_body(bodies.PREDICT_SCHEMA))
    async def predict(self, name: str, request: Request):
        """Predict for ``{"rows": [{...}], "routing_key": optional}``; rows hold features and/or entity ids."""
        self.inflight += 1
        try:
            return await self._predict(name, request)
        finally:
            self.inflight -= 1

    async def _predict(self, name: str, request: Request):
        await self._ensure_state()
        try:
            request_id = self._request_id(request)
            model = self._model(name)
            body = check_predict(await bodies.read_json(request, self.limits.max_bytes), self.limits)
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
                try:
                    rows = await self._features(model, list(rows))
                except LakeloopError:
                    raise
                except Exception as exc:  # the online store down or restarting: not the input's fault
                    raise ServiceUnavailableError(f"the online feature store did not answer: "
                                                  f"{bodies.public_message(exc)}; retry shortly") from None
                for i, row in enumerate(rows):
                    info["schema_obj"].check_row(i, row)
        except LakeloopError as exc:
            return self._reject(name, exc)
        tags = {"model": metric_tag(name), "version": str(version), "route": "primary"}
        t0 = time.perf_counter()
        primary = asyncio.ensure_future(self._call_version((name, version), rows))
        for shadow in policy.shadow:
            if (name, shadow) in self.handles:
                task = asyncio.get_running_loop().create_task(
                    self._shadow(request_id, name, shadow, rows, primary, version))
                self._background.add(task)  # awaited at graceful shutdown
                task.add_done_callback(self._background.discard)
        try:
            outputs = await primary
        except ServiceUnavailableError as exc:  # the replica died and so did the retry: not the input's fault
            self.m_errors.inc(1, tags=tags)
            return self._reject(name, exc)
        except Exception as exc:
            latency = (time.perf_counter() - t0) * 1000
            self.m_errors.inc(1, tags=tags)
            try:  # the error row is worth keeping; a log outage does not change this answer
                await self._log(request_id, name, version, "primary", rows, None, latency,
                                error=f"{type(exc).__name__}: {exc}")
            except LakeloopError:
                pass
            return answers.model_failed(request_id, name, version, exc)
        latency = (time.perf_counter() - t0) * 1000
        self.m_requests.inc(len(rows), tags=tags)
        self.m_latency.observe(latency, tags=tags)
        try:  # answered 2xx only once the prediction is durably logged
            await self._log(request_id, name, version, "primary", rows, outputs, latency)
        except LakeloopError as exc:
            return self._reject(name, exc)
        # labels may now name this request; one whose client pinned the version does not count (a label for it
        # would let anyone choose which version the canary's labels land on), unless the caller is trusted
        self.feedback_book.served(request_id, name, version, len(rows),
                                  pinned=pinned is not None and not self._bearer(request, self.admin_token))
        return answers.answer(request_id, name, version, outputs)

    def _request_id(self, request: Request) -> str:
        return answers.request_id(request, self.admin_token)

    @api.post("/v1/feedback", openapi_extra=bodies.openapi_body(bodies.FEEDBACK_SCHEMA))
    async def feedback(self, request: Request):
        """Ground truth for a served request: ``{"request_id", "label"}`` (``"row"``: which) or ``"labels"``.

        Once per row; see :mod:`lakeloop.serving.feedback` for what is accepted.
        """
        return await self._label(request, correction=False)

    @api.post("/v1/feedback/correct", openapi_extra=bodies.openapi_body(bodies.FEEDBACK_SCHEMA))
    async def feedback_correct(self, request: Request):
        """Replace labels already given (admin or feedback token); audited in ``logs.events``."""
        return await self._label(request, correction=True)

    async def _label(self, request: Request, correction: bool):
        from lakeloop.serving.logbook import FEEDBACK

        await self._ensure_state()
        try:
            if correction:
                if not (self._bearer(request, self.admin_token) or self._bearer(request, self.feedback_token)):
                    raise AuthError("corrections need 'Authorization: Bearer <token>': the admin token, or "
                                    "serve.feedback_token when it is set")
            elif self.feedback_token and not (self._bearer(request, self.feedback_token)
                                              or self._bearer(request, self.admin_token)):
                raise AuthError("feedback needs 'Authorization: Bearer <serve.feedback_token>'")
            request_id, given, reason = fb.check_body(
                await bodies.read_json(request, self.limits.max_bytes, "feedback body"), self.limits.max_rows)
            served = await self.feedback_book.find(request_id)
            if served.pinned:
                raise fb.LabelConflictError(
                    f"request {request_id} pinned its version, so its labels do not count: labels are accepted "
                    "for requests the traffic policy routed (or pinned by a caller with the admin token)")
            labels = fb.rows_of(given, served)
            info = (self.models.get(served.model) or {}).get("versions", {}).get(str(served.version)) or {}
            kind = info.get("label") or {"kind": "scalar"}
            for row, label in labels.items():
                fb.check_label(label, kind, f"row {row}")
            if not correction:
                taken = sorted(set(labels) & served.labelled)
                if taken:
                    raise fb.LabelConflictError(
                        f"row(s) {taken[:20]} of request {request_id} already have a label; a label is given once "
                        "per row. To change one, POST /v1/feedback/correct with the admin or feedback token")
                served.labelled.update(labels)  # before any await: a concurrent second label is refused
            else:
                await asyncio.to_thread(self._audit_correction, request_id, served, labels, reason)
                served.labelled.update(labels)
            now = datetime.now(timezone.utc)
            try:  # answered 2xx only once the labels are durably logged
                await self._log_durable(FEEDBACK, [{"request_id": request_id, "row": row, "label": json.dumps(lb),
                                                    "time": now} for row, lb in sorted(labels.items())])
            except LakeloopError:
                if not correction:
                    served.labelled.difference_update(labels)  # not logged: the client may send it again
                raise
        except LakeloopError as exc:
            return self._reject("", exc)
        return {"request_id": request_id, "labels": len(labels), "rows": sorted(labels),
                "model": served.model, "version": served.version, "corrected": correction}

    def _audit_correction(self, request_id: str, served, labels: dict, reason) -> None:
        from lakeloop.monitoring.events import record_event

        record_event(self.ll, "feedback_corrected", served.model, version=served.version, source="serving",
                     reason=(reason or "label corrected")[:1000],
                     details={"request_id": request_id, "labels": {str(r): lb for r, lb in labels.items()},
                              "corrected": True})

    # -- admin -------------------------------------------------------------------
    async def _admin(self, request: Request, method: str, build):
        """Check the token, build the controller call's arguments from the JSON body, run it."""
        import ray

        try:
            self._check_admin(request)
            try:
                body = await bodies.read_json(request, self.limits.max_bytes, "admin request body", empty={})
            except LakeloopError as exc:  # every admin payload problem is a 400 that says what was wrong
                if exc.http_status == 422:
                    raise MalformedRequest(str(exc)) from None
                raise
            if not isinstance(body, dict):
                raise MalformedRequest(f"request body must be a JSON object, got {type(body).__name__}")
            arguments = build(body)  # checked here: nothing changes or restarts for a bad payload
            try:
                controller = ray.get_actor(self.controller_name, namespace=self.namespace)
            except ValueError as exc:
                raise ConnectError("the serving controller is not running; restart with lakeloop serve up") from exc
            try:
                result = await getattr(controller, method).remote(**arguments)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, LakeloopError):
                    raise exc.cause from None
                return JSONResponse({"error": f"the serving controller failed: {bodies.public_message(exc)}",
                                     "type": type(exc.cause or exc).__name__}, status_code=500)
            await self._refresh()
            return result
        except LakeloopError as exc:
            return self._reject(name_of(request), exc)

    @api.post("/v1/admin/models/{name}/deploy", openapi_extra=bodies.openapi_body(bodies.DEPLOY_SCHEMA))
    async def admin_deploy(self, name: str, request: Request):
        """Deploy ``{"version": 3}`` or ``{"alias": "challenger"}``, optionally ``"weight"`` or ``"shadow": true``."""
        return await self._admin(request, "deploy", lambda b: {"model": name, **check_deploy_request(b)})

    @api.put("/v1/admin/models/{name}/traffic", openapi_extra=bodies.openapi_body(bodies.TRAFFIC_SCHEMA))
    async def admin_traffic(self, name: str, request: Request):
        """Set ``{"weights": {"3": 90, "4": 10}, "shadow": [5], "sticky": true}``."""
        return await self._admin(request, "set_traffic", lambda b: {"model": name, **check_traffic_request(b)})

    @api.post("/v1/admin/models/{name}/promote", openapi_extra=bodies.openapi_body(bodies.PROMOTE_SCHEMA))
    async def admin_promote(self, name: str, request: Request):
        """Make ``{"version": N}`` champion and give it all traffic (``"force": true`` skips the gate)."""
        return await self._admin(request, "promote", lambda b: {"model": name, **check_promote_request(b)})

    @api.post("/v1/admin/models/{name}/rollback", openapi_extra=bodies.openapi_body(bodies.EMPTY_SCHEMA))
    async def admin_rollback(self, name: str, request: Request):
        """Give the champion alias and all traffic back to the previous champion."""
        return await self._admin(request, "rollback", lambda b: _only_empty(b, {"model": name}))

