"""``ll.serving``: start and stop the serving system; deploy, split traffic, promote, roll back."""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakeloop.errors import ConfigError, ConnectError, LakeloopError

if TYPE_CHECKING:
    from lakeloop.client import Lakeloop

INGRESS_APP = "lakeloop"


def admin_token(ll: "Lakeloop") -> str:
    """``serve.admin_token``, else the token file in the lake (generated, mode 0600, on first use)."""
    if ll.config.serve.admin_token:
        return ll.config.serve.admin_token
    if not ll.lake.is_local:
        raise ConnectError("serve.admin_token must be set when the lake is remote (no local file to keep it in)")
    path = Path(ll.lake.root, "_serve", "admin_token")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


class Serving:
    """The serving system of one lake: Serve apps, the controller actor, the inference log writer."""

    def __init__(self, ll: "Lakeloop"):
        self.ll = ll

    @property
    def url(self) -> str:
        return f"http://{self.ll.config.serve.host}:{self.ll.config.serve.port}"

    # -- lifecycle -----------------------------------------------------------------
    def _controller(self, create: bool = False):
        import ray

        from lakeloop.serving.controller import ServingController, controller_name

        self.ll.ensure_ray()
        name = controller_name(self.ll.config.lake.root)
        try:
            return ray.get_actor(name, namespace=self.ll.config.ray.namespace)
        except ValueError:
            if not create:
                raise ConnectError("lakeloop serving is not running here; start it with ll.serving.up() "
                                   "or `lakeloop serve up`") from None
        return ray.remote(ServingController).options(
            name=name, namespace=self.ll.config.ray.namespace, lifetime="detached", get_if_exists=True,
            num_cpus=0.05, max_concurrency=4, max_restarts=-1,
        ).remote(self.ll.config.to_dict())

    def prepare(self):
        """The controller and log writer running, earlier versions redeployed; returns the ingress app."""
        import ray
        from ray import serve

        from lakeloop.serving import logbook
        from lakeloop.serving.controller import controller_name
        from lakeloop.serving.deployments import Ingress, app_name

        cfg = self.ll.config
        for key in ("replicas", "ingress_replicas"):
            if getattr(cfg.serve, key) < 1:
                raise ConfigError(f"serve.{key} must be at least 1, got {getattr(cfg.serve, key)}; "
                                  "2 or more keep serving through a replica's death")
        controller = self._controller(create=True)
        logbook.writer(self.ll)
        state = ray.get(controller.snapshot.remote(-1))
        running = set(serve.status().applications)
        for model, info in state["models"].items():
            for v in info["versions"]:
                if app_name(model, int(v)) not in running:
                    ray.get(controller.deploy.remote(model, int(v)))
        cfg = self.ll.config
        return Ingress.options(num_replicas=cfg.serve.ingress_replicas,
                               ray_actor_options={"num_cpus": cfg.serve.replica_cpus}).bind(
            cfg.to_dict(), controller_name(cfg.lake.root), cfg.ray.namespace, admin_token(self.ll))

    def up(self, timeout_s: float = 120) -> str:
        """Start Serve on ``serve.host:serve.port``, the controller and the ingress; returns the URL.

        Versions deployed before (recorded in ``serving.traffic``) are deployed again.
        """
        from ray import serve

        self.ll.ensure_ray()
        serve.start(http_options={"host": self.ll.config.serve.host, "port": self.ll.config.serve.port})
        serve.run(self.prepare(), name=INGRESS_APP, route_prefix="/")
        self._wait_healthy(timeout_s)
        return self.url

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = exc
            time.sleep(0.2)
        raise ConnectError(f"lakeloop serving did not answer at {self.url}/healthz within {timeout_s} s: {last}")

    def down(self) -> dict:
        """Stop the ingress and every version's app, flush the inference log, stop the actors."""
        import ray
        from ray import serve

        from lakeloop.serving import logbook

        controller = self._controller(create=True)
        serve.delete(INGRESS_APP)  # first: requests in flight finish, shadow answers reach the writer
        removed = ray.get(controller.undeploy_all.remote())
        flushed = logbook.stop_writer(self.ll)
        ray.kill(controller, no_restart=True)
        return {"apps_removed": removed, "log_flushed": flushed}

    # -- changes (through the controller) ------------------------------------------------
    def _call(self, method: str, **kwargs) -> dict:
        """Run a controller method; a change returns once the ingress serves its new state."""
        import ray

        try:
            result = ray.get(getattr(self._controller(), method).remote(**kwargs))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, LakeloopError):
                raise exc.cause from None
            raise
        if "state_version" in result:
            self._wait_applied(result["state_version"])
        return result

    def _wait_applied(self, state_version: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if http_json("GET", f"{self.url}/healthz", timeout=5)["state_version"] >= state_version:
                    return
            except ConnectError:
                return  # the ingress is not up (yet): it reads the state when it starts
            time.sleep(0.05)
        raise ConnectError(f"the ingress at {self.url} did not apply serving state {state_version} "
                           f"within {timeout_s} s")

    def deploy(self, model: str, version: int | str | None = None, *, weight: float | None = None,
               shadow: bool = False) -> dict:
        """Deploy a version (number or alias; default the champion) into its own deployment."""
        return self._call("deploy", model=model, ref=version, weight=weight, shadow=shadow)

    def traffic(self, model: str, weights: dict[int, float], *, shadow: list[int] = (), sticky: bool = True) -> dict:
        """Set the split, e.g. ``traffic("fraud", {3: 90, 4: 10}, shadow=[5])``; applies without restarts."""
        return self._call("set_traffic", model=model, weights=weights, shadow=list(shadow), sticky=sticky)

    def promote(self, model: str, version: int | None = None, *, force: bool = False) -> dict:
        return self._call("promote", model=model, version=version, force=force)

    def rollback(self, model: str) -> dict:
        return self._call("rollback", model=model)

    def retire(self, model: str, version: int) -> dict:
        return self._call("retire", model=model, version=version)

    def status(self) -> dict:
        """The controller's state (a dict) plus, when the endpoint answers, shadow stats; shows itself in Jupyter."""
        from lakeloop.display import serving_status
        return serving_status(self._call("status"), self.url)

    # -- HTTP client -----------------------------------------------------------------------
    def predict(self, model: str, rows: list[dict], *, routing_key: str | None = None) -> dict:
        """POST rows to the endpoint (a convenience for notebooks and tests)."""
        body: dict[str, Any] = {"rows": rows}
        if routing_key is not None:
            body["routing_key"] = routing_key
        return http_json("POST", f"{self.url}/v1/models/{model}/predict", body)


def build_app(ll: "Lakeloop"):
    """The ingress application bound for ``serve run`` (see ``serve_apps/inference.py``)."""
    return Serving(ll).prepare()


def http_json(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30) -> Any:
    """One JSON request; an error answer raises :class:`LakeloopError` with the server's message."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read())
            message = answer.get("error") or answer.get("detail")
        except ValueError:
            message = None
        error = LakeloopError(f"{method} {url} answered {exc.code}: {message or exc.reason}")
        error.http_status = exc.code
        raise error from None
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectError(f"cannot reach lakeloop serving at {url}: {exc}") from exc
