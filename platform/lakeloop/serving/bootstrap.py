"""``serve up``'s bootstrap server: predictions from the first seconds, while Ray and Serve start.

Ray, Serve and the ingress take most of a minute to start on a small machine;
loading a model takes a few seconds. So ``lakeloop serve up`` first binds
``serve.host:serve.port`` itself, loads what it is about to serve, and answers
``POST /v1/models/{name}/predict`` from its own process: the same validation
(:mod:`lakeloop.serving.validation`), traffic policy (weights, sticky keys;
shadows get their copies), answers and inference log records
(:mod:`lakeloop.serving.predict`) as the ingress. Every answered prediction is
in a spool on this node's disk (fsync'd) before its 2xx, as in an ingress
replica; when the bootstrap stops, an ingress replica adopts that spool and
ships it to the log writer (:mod:`lakeloop.serving.spool`).

It runs as a child process of ``serve up`` (``python -m
lakeloop.serving.bootstrap``), so its imports and model load take the other
core instead of the GIL that ``serve up``'s own start of Ray needs. ``serve
up`` binds the socket and hands it down, keeping no copy (the port is free
the moment the child is gone); the child reads its config on stdin, says
``ready`` (or why it cannot serve) on stdout, on the word ``drain`` switches
new connections to HAProxy, and on ``stop`` (or its stdin's end: ``serve
up`` gone) answers what is open and exits, printing what it answered.

The port handover. The bootstrap's socket has ``SO_REUSEPORT``, and Serve's
HAProxy is started with it too (``SERVE_SOCKET_REUSE_PORT_ENABLED=1``), so
both listen on the port at once. A classic BPF program on the socket group
(``SO_ATTACH_REUSEPORT_CBPF``, no privilege needed) sends every new
connection to the bootstrap's socket (index 0 of the group) until the
ingress is healthy and serves the new state (checked through Serve's own
proxy port, not the public one); then the program sends them to HAProxy's
(index 1). The bootstrap keeps answering the connections it has, each answer
with ``Connection: close``, until they are gone (at most ``DRAIN_S``), then
closes its socket: its accept queue is empty by then, since no new
connection reaches it. A client sees no refused or reset connection.

What it does not do: rows that carry entity ids for online features (a model
whose inputs come from feature views is answered 503 with ``Retry-After``
until the ingress runs), requests that pin a version (whether their labels
count is the ingress's to record), feedback, the admin API and ``GET
/v1/models`` (503 with ``Retry-After``: the endpoint is starting), Ray's metrics (its
predictions are in the inference log). ``/healthz`` answers 503 until the
ingress answers it. It runs only where it can hand over: Serve started by
this ``serve up`` with the HAProxy ingress, in a local Ray, on Linux, with
the port free; ``serve.bootstrap: false`` turns it off.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import random
import socket
import struct
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING

from lakeloop.errors import LakeloopError, ModelNotServedError, ServiceUnavailableError
from lakeloop.serving import body as bodies
from lakeloop.serving import predict as answers

if TYPE_CHECKING:
    from lakeloop.client import Lakeloop

SO_ATTACH_REUSEPORT_CBPF = 51  # Linux >= 4.5
DRAIN_S = 5.0  # the longest the bootstrap keeps answering its open connections after the handover
READY_S = 60.0  # how much longer than Ray and Serve's start its models may take to load
STARTING = "lakeloop serving is starting: serve up answers predictions meanwhile; retry shortly"
log = logging.getLogger("lakeloop.serving")


def steer(sock: socket.socket, index: int) -> None:
    """Send every new connection of ``sock``'s SO_REUSEPORT group to the socket at ``index`` (join order);
    an index past the group's end falls back to the kernel's hash."""
    code = (ctypes.c_uint8 * 8).from_buffer_copy(struct.pack("HBBI", 0x06, 0, 0, index))  # BPF_RET|BPF_K
    program = struct.pack("HxxxxxxQ", 1, ctypes.addressof(code))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, program)


def _listen(host: str, port: int) -> socket.socket | None:
    """The port's listening socket, shareable with HAProxy; None when anything holds the port now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:  # without SO_REUSEPORT: fails on any listener, a Serve's or a bootstrap's of another serve up
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (connections in TIME_WAIT do not count)
        probe.bind((host, port))
    except OSError:
        return None
    finally:
        probe.close()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        steer(sock, 0)  # this socket is the group's first: every connection comes here until the handover
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def why_not(ll: "Lakeloop") -> str | None:
    """Why ``serve up`` cannot bootstrap with this config here, or None when it can."""
    from lakeloop.client import ray_init_kwargs
    from lakeloop.serving.service import haproxy_binary

    cfg = ll.config
    if not cfg.serve.bootstrap:
        return "serve.bootstrap is false"
    if not sys.platform.startswith("linux"):
        return "the port handover needs Linux (SO_ATTACH_REUSEPORT_CBPF)"
    if cfg.serve.ingress != "haproxy" or haproxy_binary() is None:
        return "the port handover needs Serve's HAProxy ingress"
    if ray_init_kwargs(cfg).get("address") != "local":
        return "Serve runs in a Ray cluster (ray.address), not necessarily on this machine"
    return None


class Server:
    """The bootstrap server, in the child process (see the module docstring)."""

    def __init__(self, ll: "Lakeloop", sock: socket.socket, models: dict, waiting: dict):
        from lakeloop.serving.logbook import TABLES, wal_root
        from lakeloop.serving.service import admin_token
        from lakeloop.serving.spool import Spool
        from lakeloop.serving.validation import Limits

        self.ll, self.sock = ll, sock
        self.models = models  # name -> {"policy", "versions": {v: {"model", "schema"}}}
        self.waiting = waiting  # name -> why the ingress serves it, not the bootstrap
        self.limits = Limits(max_rows=ll.config.serve.max_rows, max_bytes=ll.config.serve.max_bytes)
        self.admin_token = admin_token(ll)  # its holder may name a request (X-Request-Id), as at the ingress
        self.spool = Spool(wal_root(ll) / "spool", TABLES)  # adopted by an ingress replica once released
        self.rng = random.Random()
        self.draining = False
        self.stats = {"answered": 0, "rejected": 0, "failed": 0, "logged_rows": 0}
        self._write_lock: asyncio.Lock | None = None
        self._background: set = set()

    async def serve(self, commands) -> None:
        """Answer on the socket until told to stop; ``commands``: an async iterator of ``drain``/``stop``."""
        import uvicorn

        self._write_lock = asyncio.Lock()
        server = uvicorn.Server(uvicorn.Config(
            self.app, interface="asgi3", log_level="warning", lifespan="off", access_log=False, proxy_headers=False,
            timeout_keep_alive=5, timeout_graceful_shutdown=DRAIN_S))
        task = asyncio.ensure_future(server.serve(sockets=[self.sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.005)
        if not server.started:
            await task  # its exception, else:
            raise LakeloopError("the bootstrap's HTTP server did not start")
        emit({"ready": True, "models": {n: sorted(map(int, m["versions"])) for n, m in self.models.items()},
              "waiting": self.waiting})
        async for word in commands:
            if word == "drain":  # new connections go to HAProxy; the answers here close their connections
                steer(self.sock, 1)
                self.draining = True
                emit({"handed_over": True})
            else:
                break
        deadline = time.monotonic() + DRAIN_S
        while self.draining and server.server_state.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # clients close after the answer that said Connection: close
        server.should_exit = True
        await task
        if self._background:  # shadow copies still being answered and logged
            await asyncio.wait(set(self._background), timeout=10)
        self.spool.close()  # what it holds stays on disk, for an ingress replica to ship

    async def app(self, scope, receive, send):
        """The ASGI app: predictions; everything else is 503 until the ingress takes over."""
        from starlette.requests import Request

        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] == "POST" and path.startswith("/v1/models/") and path.endswith("/predict"):
            response = await self.predict(path[len("/v1/models/"):-len("/predict")], Request(scope, receive))
        else:
            response = answers.rejection(ServiceUnavailableError(STARTING, retry_after_s=1))
        response.headers["x-lakeloop-bootstrap"] = "1"
        if self.draining:  # the client's next request opens a new connection, which HAProxy gets
            response.headers["connection"] = "close"
        await response(scope, receive, send)

    def _model(self, name: str) -> dict:
        if name in self.waiting:
            raise ServiceUnavailableError(f"model {name[:100]!r} is served once the ingress runs: "
                                          f"{self.waiting[name]}; retry shortly", retry_after_s=1)
        if name not in self.models:
            raise ModelNotServedError(f"model {name[:100]!r} is not served; served models: "
                                      f"{sorted([*self.models, *self.waiting])}")
        return self.models[name]

    async def predict(self, name: str, request):
        from lakeloop.serving.validation import check_predict

        try:
            request_id = answers.request_id(request, self.admin_token)
            model = self._model(name)
            body = check_predict(await bodies.read_json(request, self.limits.max_bytes), self.limits)
            if body.get("version") is not None:  # whether labels may count for it needs the ingress's record
                raise ServiceUnavailableError(f"a request that pins its version is answered once the ingress "
                                              f"runs; {STARTING}", retry_after_s=1)
            key = body.get("routing_key") or request.headers.get("x-routing-key")
            version = model["policy"].choose(None if key is None else str(key), self.rng)
            info = model["versions"][str(version)]
            for i, row in enumerate(body["rows"]):
                info["schema"].check_row(i, row)
        except LakeloopError as exc:
            self.stats["rejected"] += 1
            return answers.rejection(exc)
        rows = body["rows"]
        t0 = time.perf_counter()
        try:
            outputs = answers.predict_rows(info["model"], rows)
        except Exception as exc:
            self.stats["failed"] += 1
            error = f"{type(exc).__name__}: {exc}"
            try:  # the error row is worth keeping; a log outage does not change this answer
                await self._log(answers.inference_records(request_id, name, version, "primary", rows, None,
                                                          (time.perf_counter() - t0) * 1000, error))
            except LakeloopError:
                pass
            return answers.model_failed(request_id, name, version, exc)
        latency = (time.perf_counter() - t0) * 1000
        try:  # answered 2xx only once the prediction is in the spool
            await self._log(answers.inference_records(request_id, name, version, "primary", rows, outputs, latency))
        except LakeloopError as exc:
            self.stats["rejected"] += 1
            return answers.rejection(exc)
        for shadow in model["policy"].shadow:
            task = asyncio.get_running_loop().create_task(self._shadow(request_id, name, shadow, rows))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self.stats["answered"] += 1
        return answers.answer(request_id, name, version, outputs)

    async def _shadow(self, request_id: str, name: str, version: int, rows: list[dict]) -> None:
        """A shadow's answer, logged and never returned (its failures are logged too, never raised)."""
        t0 = time.perf_counter()
        model = self.models[name]["versions"][str(version)]["model"]
        try:
            outputs, error = answers.predict_rows(model, rows), None
        except Exception as exc:
            outputs, error = None, bodies.public_message(exc)
        try:
            await self._log(answers.inference_records(request_id, name, version, "shadow", rows, outputs,
                                                      (time.perf_counter() - t0) * 1000, error))
        except LakeloopError:
            pass

    async def _log(self, records: list[dict]) -> None:
        """Records in the spool, fsync'd (one write at a time: the spool is not thread-safe)."""
        from lakeloop.serving.logbook import INFERENCE

        batch_id = uuid.uuid4().hex
        async with self._write_lock:
            try:
                seq = await asyncio.to_thread(self.spool.write, INFERENCE, batch_id, records)
            except Exception as exc:  # the disk: nothing was accepted
                raise ServiceUnavailableError(f"the log spool could not be written ({bodies.public_message(exc)}); "
                                              "retry", retry_after_s=2) from None
            self.spool.track(INFERENCE, seq, batch_id, records)
        self.stats["logged_rows"] += len(records)


def plan(ll: "Lakeloop", deploy: list) -> tuple[dict, dict]:
    """What the ingress will serve first: the stored state (``serving.traffic``) and the first version of each
    model in ``deploy`` that it does not have yet (all its traffic). Returns the models the bootstrap
    serves (versions loaded) and those it leaves to the ingress, with why."""
    from lakeloop.serving.controller import HISTORY, resolve_version, restore_state, version_signature
    from lakeloop.serving.policy import TrafficPolicy
    from lakeloop.serving.validation import InputSchema

    history = ll.lake.table(HISTORY)
    state = restore_state(history.to_pandas())[0] if history.exists() else {"models": {}}
    entries: dict = {}
    for name, m in state["models"].items():
        entries[name] = {"policy": m["policy"], "versions": {v: info["uri"] for v, info in m["versions"].items()},
                         "schemas": {v: info.get("schema") or {} for v, info in m["versions"].items()},
                         "views": bool(m.get("feature_views"))}
    for name, ref in deploy:
        if name in entries:
            continue  # its deploy may change its traffic once the controller runs; served as stored until then
        mv = resolve_version(ll.mlflow, name, ref)
        v = str(int(mv.version))
        uri = f"models:/{name}/{v}"
        try:
            frame = (ll.models.lineage(name, int(v)).get("lineage") or {}).get("frame") or {}
        except Exception:  # not trained by lakeloop: no recorded frame, as the controller finds
            frame = {}
        entries[name] = {"policy": {"weights": {v: 100.0}, "shadow": [], "sticky": True}, "versions": {v: uri},
                         "schemas": {v: version_signature(ll.config, uri)[0]}, "views": bool(frame.get("views"))}
    models, waiting = {}, {}
    cfg = ll.config
    for name, e in entries.items():
        if e["views"]:
            waiting[name] = "its rows may carry entity ids for online features"
            continue
        policy = TrafficPolicy.from_dict(e["policy"])
        live = {str(v) for v, w in policy.weights.items() if w > 0} | {str(v) for v in policy.shadow}
        versions = {}
        for v in sorted(live, key=int):
            versions[v] = {"model": answers.load_pyfunc(e["versions"][v], cfg.tracking_uri, cfg.registry_uri),
                           "schema": InputSchema(e["schemas"].get(v) or {})}
        models[name] = {"policy": policy, "versions": versions}
    return models, waiting


_out = sys.stdout  # the child's line to serve up (main() keeps the stdout it started with; prints go to stderr)


def emit(message: dict) -> None:
    """One line to ``serve up``."""
    _out.write(json.dumps(message, default=str) + "\n")
    _out.flush()


async def _commands():
    """Words from ``serve up`` on stdin; its end (``serve up`` gone) is ``stop``."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        word = line.strip()
        if not line or word == "stop":
            yield "stop"
            return
        if word:
            yield word


def main(argv: list[str] | None = None) -> int:
    """The child: ``python -m lakeloop.serving.bootstrap FD``, ``{"config", "deploy"}`` on stdin's first line."""
    import lakeloop

    global _out
    fd = int((argv or sys.argv[1:])[0])
    _out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    request = json.loads(sys.stdin.readline())
    sock = socket.socket(fileno=fd)
    try:
        ll = lakeloop.connect(request["config"])
        models, waiting = plan(ll, [tuple(d) for d in request["deploy"]])
        if not models:
            raise LakeloopError(f"no model it can serve before the ingress runs ({waiting})")
        server = Server(ll, sock, models, waiting)
        asyncio.run(server.serve(_commands()))
    except Exception as exc:  # the ingress serves it all, as without a bootstrap
        emit({"error": bodies.public_message(exc)})
        return 1
    emit({"summary": server.stats})
    return 0


class Bootstrap:
    """``serve up``'s side of its bootstrap server: the child and the handover. Only the child holds the
    socket, so the port is free the moment the child is gone, however it ends."""

    def __init__(self, proc):
        self.proc = proc
        self.started_at = time.monotonic()
        self.ready: dict | None = None
        self.error: str | None = None
        self.answered: dict = {}
        self.handed_over_after_s: float | None = None
        self._said = threading.Event()  # ready or error said, or the child gone
        self._steered = threading.Event()  # the child switched new connections to HAProxy, or is gone
        self._stopped = False
        threading.Thread(target=self._listen, name="lakeloop-bootstrap", daemon=True).start()

    def _listen(self) -> None:
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "ready" in message:
                self.ready = message
            elif "handed_over" in message:
                self._steered.set()
            elif "error" in message:
                self.error = message["error"]
                log.warning("serve up answers once the ingress runs (no bootstrap server): %s", self.error)
            elif "summary" in message:
                self.answered = message["summary"]
            self._said.set()
        self._said.set()
        self._steered.set()

    def _tell(self, word: str) -> None:
        try:
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):  # it exited
            pass

    def hand_over(self) -> None:
        """New connections go to HAProxy from now; the child's answers close their connections."""
        if not self._said.wait(READY_S):  # it loads while Ray and Serve start: long done by then, or stuck
            log.warning("the bootstrap server did not load its models within %s s more; stopping it", READY_S)
            self.proc.terminate()  # its socket closes with it: HAProxy then gets every connection
            return
        if self.ready is None or self.proc.poll() is not None:  # it did not serve, or it is gone
            return
        self._tell("drain")
        self._steered.wait(30)
        self.handed_over_after_s = round(time.monotonic() - self.started_at, 3)

    def stop(self) -> dict:
        """The child answers what is open (at most ``DRAIN_S``) and exits, and the port's socket with it. Its
        spool stays on disk for an ingress replica of this node to ship (at once after a handover; else at
        the next start)."""
        if not self._stopped:
            self._stopped = True
            if self.ready is None:  # still loading (a stop while starting): it has answered nothing
                self.proc.terminate()
            self._tell("stop")
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(DRAIN_S + 30)
            except Exception:  # subprocess.TimeoutExpired: a hung child
                self.proc.kill()
                self.proc.wait(10)
        return self.summary()

    def summary(self) -> dict:
        ready = self.ready or {}
        return {**({"answered": 0} | self.answered), "models": ready.get("models", {}),
                "waiting": ready.get("waiting", {}), "handed_over_after_s": self.handed_over_after_s,
                "error": self.error}


def start(ll: "Lakeloop", deploy: list) -> Bootstrap | None:
    """Bind the port now and start the child that answers on it once its models are loaded (the caller starts
    Ray and Serve meanwhile), or None (logged) where the handover cannot be done here."""
    import subprocess

    reason = why_not(ll)
    if reason is not None:
        log.info("serve up starts without a bootstrap server: %s", reason)
        return None
    cfg = ll.config.serve
    sock = _listen(cfg.host, cfg.port)
    if sock is None:
        log.info("serve up starts without a bootstrap server: %s:%s is taken", cfg.host, cfg.port)
        return None
    try:  # its own session: a Ctrl-C reaches serve up, which stops it after its last answers
        proc = subprocess.Popen([sys.executable, "-m", "lakeloop.serving.bootstrap", str(sock.fileno())],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=[sock.fileno()],
                                start_new_session=True)
        proc.stdin.write(json.dumps({"config": ll.config.to_dict(secrets=True), "deploy": list(deploy)}) + "\n")
        proc.stdin.flush()
    except OSError as exc:
        log.warning("serve up starts without a bootstrap server: %s", exc)
        return None
    finally:
        sock.close()  # the child's now
    return Bootstrap(proc)


if __name__ == "__main__":
    sys.exit(main())
