"""Model calls, log records and answers shared by the Serve ingress and ``serve up``'s bootstrap server.

Nothing here imports Ray: the bootstrap (:mod:`lakeloop.serving.bootstrap`) answers with it while Ray
and Serve start, and the ingress (:mod:`lakeloop.serving.deployments`) answers with it afterwards, so
both give the same answers, the same errors and the same inference log records.
"""

from __future__ import annotations

import hmac
import json
import uuid
from datetime import datetime, timezone

import orjson
from starlette.responses import JSONResponse, Response

from lakeloop.errors import LakeloopError, ServiceUnavailableError
from lakeloop.serving import body as bodies
from lakeloop.serving.body import MalformedRequest


def same(a: dict, b: dict) -> bool:
    """Whether two answers' predictions agree (numbers to a relative 1e-9): a shadow against its primary."""
    pa, pb = a.get("prediction"), b.get("prediction")
    if isinstance(pa, (int, float)) and isinstance(pb, (int, float)) and not isinstance(pa, bool):
        return abs(pa - pb) <= 1e-9 * max(1.0, abs(pa), abs(pb))
    return pa == pb


def import_pyfunc() -> None:
    """Import mlflow's pyfunc ahead of the first load (a failure is raised again by that load)."""
    try:
        import mlflow.pyfunc  # noqa: F401
    except Exception:  # load_pyfunc raises it again, where it is reported
        pass


def load_pyfunc(model_uri: str, tracking_uri: str, registry_uri: str, lake_root: str | None = None):
    """The version's pyfunc. With ``lake_root``, the URIs are as shipped to Serve (a password as ``***``,
    see :mod:`lakeloop.credentials`) and the full ones come from that lake's secrets file or this node's
    ``LAKELOOP_MLFLOW_*`` environment: a deployment's arguments are kept by Serve in plain text."""
    import warnings

    import mlflow
    import mlflow.pyfunc

    if lake_root is not None:
        from lakeloop.config import load_config

        cfg = load_config({"lake": {"root": lake_root},
                           "mlflow": {"tracking_uri": tracking_uri, "registry_uri": registry_uri}})
        tracking_uri, registry_uri = cfg.tracking_uri, cfg.registry_uri

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
        if all(k in "biuf" for k in out.dtypes.map(lambda d: d.kind)):  # numbers: plain Python values directly
            return [{k: (None if v != v else v) for k, v in r.items()} for r in out.to_dict("records")]
        return json.loads(out.to_json(orient="records"))
    if isinstance(out, pd.Series):
        out = out.to_numpy()
    return [{"prediction": v} for v in np.asarray(out).tolist()]


def predict_grouped(models: dict, items: list[tuple]) -> list:
    """One model call per (version, columns) for many requests' rows; each item gets its rows' answers.

    ``items`` are ``(key, rows)``; an item's answer is its list of outputs, or the exception its own rows
    raise (a batch that fails is retried request by request, so one bad request fails alone).
    """
    out: list = [None] * len(items)
    groups: dict = {}
    for i, (key, rows) in enumerate(items):
        groups.setdefault((key, frozenset(c for r in rows for c in r)), []).append(i)
    for (key, _), idx in groups.items():
        model = models.get(key)
        if model is None:
            for i in idx:
                out[i] = ServiceUnavailableError(f"model {key[0]} v{key[1]} is not loaded here; retry shortly")
            continue
        rows = [r for i in idx for r in items[i][1]]
        try:
            answers = predict_rows(model, rows)
            if len(answers) != len(rows):
                raise ValueError(f"the model answered {len(answers)} rows for {len(rows)}")
        except Exception:
            answers = None
        if answers is None or len(idx) == 1:
            for i in idx:
                try:
                    out[i] = answers if answers is not None else predict_rows(model, items[i][1])
                except Exception as exc:  # this request's own failure
                    out[i] = exc
            continue
        at = 0
        for i in idx:
            n = len(items[i][1])
            out[i], at = answers[at:at + n], at + n
    return out


def inference_records(request_id: str, name: str, version: int, route: str, rows: list[dict], outputs,
                      latency_ms: float, error: str | None = None) -> list[dict]:
    """One prediction's rows as ``logs.inference`` records (``outputs`` None: it failed with ``error``)."""
    now = datetime.now(timezone.utc)
    records = []
    for i, row in enumerate(rows):
        out = outputs[i] if outputs and i < len(outputs) else None
        records.append({"request_id": request_id, "row": i, "time": now, "model": name, "version": version,
                        "route": route, "features": json.dumps(row, default=str),
                        "output": None if out is None else json.dumps(out, default=str),
                        "prediction": None if out is None else str(out.get("prediction")),
                        "latency_ms": latency_ms, "error": error})
    return records


def answer(request_id: str, name: str, version: int, outputs: list[dict]) -> Response:
    """The 200 of a prediction."""
    return Response(orjson.dumps({"request_id": request_id, "model": name, "version": version,
                                  "versions": [version] * len(outputs), "predictions": outputs},
                                 option=orjson.OPT_SERIALIZE_NUMPY, default=str),
                    media_type="application/json")


def model_failed(request_id: str, name: str, version: int, exc: BaseException) -> JSONResponse:
    """The 422 of a model that failed on this input."""
    return JSONResponse({"error": f"model {name} v{version} failed on this input: {bodies.public_message(exc)}",
                         "request_id": request_id}, status_code=422)


def rejection(exc: LakeloopError) -> JSONResponse:
    """A refused request: its status, what was wrong, the error's type (503s say when to retry)."""
    headers = {"Retry-After": str(getattr(exc, "retry_after_s", 2))} if exc.http_status == 503 else None
    return JSONResponse({"error": bodies.public_message(str(exc), limit=2000), "type": type(exc).__name__},
                        status_code=exc.http_status, headers=headers)


def bearer(request, token: str | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (compared in constant time)."""
    if not token:
        return False
    header = request.headers.get("authorization", "")
    return hmac.compare_digest(header.encode("utf-8", "replace"), f"Bearer {token}".encode())


def request_id(request, admin_token: str | None) -> str:
    """A new id; a caller holding the admin token may supply its own (``X-Request-Id``)."""
    from lakeloop.serving.feedback import REQUEST_ID

    given = request.headers.get("x-request-id")
    if given is None or not bearer(request, admin_token):
        return uuid.uuid4().hex
    if not REQUEST_ID.fullmatch(given):
        raise MalformedRequest("X-Request-Id must be 1-128 letters, digits, '.', '_', ':' or '-'")
    return given
