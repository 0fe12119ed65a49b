"""`lakeloop serve up` and `serve run serve_apps.inference:app` as separate processes, driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lakeloop
import serving_models
from conftest import BIN, REPO, free_port, run_cli
from lakeloop.serving.service import http_json

pytestmark = pytest.mark.slow
ROW = {"amount": 150.0, "country": "US"}


def output(proc: subprocess.Popen, chars: int = 8000) -> str:
    """The end of what a process started by :func:`start` printed (stdout and stderr, in a file: a pipe nobody
    reads fills up, and a process blocked writing its shutdown logs to it never exits)."""
    return Path(proc.log_path).read_text(errors="replace")[-chars:]


# SIGINT back to its default, then exec the command (same PID): an xdist worker ignores SIGINT, its children
# inherit that, and Python then installs no KeyboardInterrupt handler, so the test's Ctrl-C did nothing and
# the stop waited out its timeout (seen as `serve run` idle in wait_for_interrupt after the signal)
SIGINT_DEFAULT = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


def start(argv: list[str], tmp_path: Path, **kwargs) -> subprocess.Popen:
    log_path = tmp_path / f"{Path(argv[0]).name}-{len(list(tmp_path.glob('*.log')))}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", SIGINT_DEFAULT, *argv], cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, text=True, **kwargs)
    proc.log_path = log_path
    return proc


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, output(proc)
        try:
            http_json("GET", f"{url}/healthz", timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise AssertionError(f"{url} never became healthy")


def stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 150) -> int:
    """Signal it and wait; the timeout finds a hang (loaded test runs have taken over 90 s to stop). A process
    that does not stop in time gets its Python stacks (py-spy) written to its log before it is killed."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            spy = subprocess.run([str(BIN / "py-spy"), "dump", "--pid", str(proc.pid)], capture_output=True,
                                 text=True, timeout=60)
            stacks = spy.stdout + spy.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:  # py-spy comes with ray[default]; say if it failed
            stacks = f"(no py-spy dump: {exc})"
        with open(proc.log_path, "a") as log:
            log.write(f"\n--- still running {timeout} s after signal {int(sig)}; py-spy dump:\n{stacks}")
        proc.kill()
        return proc.wait(timeout=30)


@pytest.fixture
def registered(tmp_path):
    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"), serve_port=free_port())
    versions = [serving_models.register(ll, "fraud", t) for t in (100.0, 200.0)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKELOOP_")}
    env.update({"LAKELOOP_LAKE_ROOT": ll.config.lake.root, "LAKELOOP_SERVE_PORT": str(ll.config.serve.port),
                "PYTHONPATH": str(Path(serving_models.__file__).parent)})
    return ll, versions, env


class Traffic:
    """Predictions sent from before `serve up` listens until stopped, over keep-alive connections and new ones:
    every answer after the first 200 must be a 200 (a refused, reset or 5xx request is a failure)."""

    def __init__(self, port: int):
        import threading

        self.port, self.stop = port, threading.Event()
        self.ok: list[tuple[str, bool]] = []  # (request_id, answered by the bootstrap)
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.run, args=(keep,), daemon=True) for keep in (True, False)]
        for t in self.threads:
            t.start()

    def run(self, keep_alive: bool):
        import http.client

        body = json.dumps({"rows": [ROW]})
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("POST", "/v1/models/fraud/predict", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                if r.status == 200:
                    self.ok.append((json.loads(data)["request_id"], r.getheader("x-lakeloop-bootstrap") == "1"))
                elif self.ok:
                    self.failures.append(f"{r.status}: {data[:300]!r}")
                if not keep_alive or r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                if self.ok:  # before the first 200 nothing listens yet
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            time.sleep(0.01)

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_serve_up_answers_at_once_hands_over_then_deploy_promote_rollback_from_the_cli(registered, tmp_path):
    """`serve up` answers from its own process (its bootstrap server) within seconds, then Serve's HAProxy takes
    the port: from the first 200 on, not one request refused, reset or failed, through the handover and the
    deploy, promotions and rollback after it, and every 200 is in the inference log. Also the in-process mode:
    the ingress answers from its own copy of each live version."""
    ll, (v1, v2), env = registered
    env = {**env, "LAKELOOP_SERVE_IN_PROCESS": "true"}
    traffic = Traffic(ll.config.serve.port)  # from before serve up listens
    proc = start([str(BIN / "lakeloop"), "serve", "up", "--model", f"fraud:{v1}", "--seconds", "300"], tmp_path,
                 env=env)
    try:
        wait_healthy(ll.serving.url, proc)
        deadline = time.monotonic() + 60
        while "while Ray and Serve started, serve up answered" not in output(proc):  # after the bootstrap's drain
            assert time.monotonic() < deadline and proc.poll() is None, output(proc)
            time.sleep(0.2)
        deadline = time.monotonic() + 120
        while "fraud" not in http_json("GET", f"{ll.serving.url}/v1/models")["models"]:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        cli = {"env": env, "cwd": tmp_path}
        out = json.loads(run_cli("serve", "deploy", "fraud", "--version", str(v2), "--weight", "50", "--json",
                                 **cli).stdout)
        assert out["policy"]["weights"] == {str(v1): 50.0, str(v2): 50.0}
        answers = {ll.serving.predict("fraud", [ROW])["version"] for _ in range(30)}
        assert answers == {v1, v2}
        listing = http_json("GET", f"{ll.serving.url}/v1/models")["models"]["fraud"]["versions"]
        assert all(info["in_process"] for info in listing.values())
        run_cli("serve", "promote", "fraud", str(v1), "--force", **cli)
        promoted = json.loads(run_cli("serve", "promote", "fraud", str(v2), "--force", "--json", **cli).stdout)
        assert promoted["version"] == v2
        assert {ll.serving.predict("fraud", [ROW])["version"] for _ in range(10)} == {v2}
        back = json.loads(run_cli("serve", "rollback", "fraud", "--json", **cli).stdout)
        assert back["version"] == v1
        assert {ll.serving.predict("fraud", [ROW])["version"] for _ in range(10)} == {v1}
        rid = ll.serving.predict("fraud", [ROW])["request_id"]
    finally:
        traffic.close()
        code = stop(proc, signal.SIGTERM)  # a supervisor's stop (systemd, docker): the same cleanup as Ctrl-C
    assert code == 0, output(proc)
    assert not traffic.failures, traffic.failures[:10]
    booted = [r for r, boot in traffic.ok if boot]
    assert booted and len(booted) < len(traffic.ok), (len(booted), len(traffic.ok))
    with pytest.raises(OSError):  # Serve's haproxy went with it (Python's default SIGTERM left it on the port)
        socket.create_connection(("127.0.0.1", ll.config.serve.port), timeout=2).close()
    # graceful shutdown flushed the inference log: every answered request is in the lake
    log = ll.lake.table("logs.inference").to_pandas()
    assert rid in set(log["request_id"]) and len(log[log["route"] == "primary"]) >= 51
    assert {r for r, _ in traffic.ok} <= set(log[log["route"] == "primary"]["request_id"])  # the bootstrap's too
    history = ll.lake.table("serving.traffic").to_pandas()
    assert {"deploy", "promote", "rollback"} <= set(history["action"])


def listeners(port: int) -> list[int]:
    """PIDs of the processes listening on a loopback TCP port."""
    import psutil

    return sorted({c.pid for c in psutil.net_connections(kind="tcp")
                   if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid})


def parent(pid: int) -> int | None:
    import psutil

    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def test_serve_up_stopped_while_starting(registered, tmp_path):
    """A supervisor's stop while `serve up` starts (Serve's haproxy already on the port, the ingress not yet
    answering): it stops what it started, haproxy included, and exits 0; before, the stop skipped the cleanup."""
    import psutil

    ll, (v1, _), env = registered
    port = ll.config.serve.port
    proc = start([str(BIN / "lakeloop"), "serve", "up", "--model", f"fraud:{v1}"], tmp_path, env=env)
    deadline = time.monotonic() + 180
    try:
        # Serve's haproxy binds the port before the ingress's replica has started (serve up's bootstrap server,
        # its child, listens there from the start; haproxy is a child of a Ray worker)
        while not [pid for pid in listeners(port) if proc.pid not in (pid, parent(pid))]:
            assert proc.poll() is None, output(proc)
            assert time.monotonic() < deadline, output(proc)
            time.sleep(0.1)
        started = listeners(port)
        assert "serving at" not in output(proc), "the window was missed: it had started"
    finally:
        code = stop(proc, signal.SIGTERM)
    assert code == 0, output(proc)
    assert "stopped while starting" in output(proc)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


def test_serve_run_import_path(registered, tmp_path):
    ll, (v1, _), env = registered
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.skip("port 8000 is taken; `serve run` has no port flag")
    env = {**env, "RAY_AUTH_MODE": "token", "LAKELOOP_SERVE_PORT": "8000"}
    proc = start([str(BIN / "serve"), "run", "--address", "local", "--app-dir", str(REPO),
                  "serve_apps.inference:app"], tmp_path, env=env, start_new_session=True)
    try:
        wait_healthy("http://127.0.0.1:8000", proc)
        assert http_json("GET", "http://127.0.0.1:8000/v1/models")["models"] == {}
        from lakeloop.serving.service import admin_token

        token = admin_token(ll)
        out = http_json("POST", "http://127.0.0.1:8000/v1/admin/models/fraud/deploy", {"version": v1}, token=token,
                        timeout=180)  # starts the version's replicas: slow on a busy machine
        assert out["version"] == v1
        answer = http_json("POST", "http://127.0.0.1:8000/v1/models/fraud/predict", {"rows": [ROW]})
        assert answer["version"] == v1 and answer["predictions"][0]["prediction"] == 1
    finally:
        stop(proc, signal.SIGINT)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
