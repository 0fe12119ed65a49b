"""MLflow as a service for the tests: ``mlflow server`` on PostgreSQL with its artifacts on S3.

The server is started with the README's line (:data:`README_LINE`, which the README quotes
verbatim), only with a bucket and a free port of the test's own. The database URI travels in
``MLFLOW_BACKEND_STORE_URI`` and the S3 credentials in ``AWS_*`` (plus ``MLFLOW_S3_ENDPOINT_URL``
for an S3 that is not AWS): the server's environment, never its command line. Clients log and load
artifacts through the server (``mlflow-artifacts:/``), so they need no S3 credentials of their own.

It runs in its own process group (uvicorn and its workers) and is stopped by that group, by id.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import BIN, clean_env, free_port

# the README's line ("MLflow as a service"); the test runs it with its own bucket and port
README_LINE = "mlflow server --artifacts-destination s3://lakeloop/mlflow --host 127.0.0.1 --port 5000 --workers 2"
README_ENV = "MLFLOW_BACKEND_STORE_URI"  # the database URI, password included, goes here
# the README's advice: lakeloop runs no MLflow server jobs, and without this the server keeps five huey
# consumer processes (~270 MB each) polling for them
README_NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass(frozen=True)
class MlflowServer:
    url: str  # http://127.0.0.1:PORT
    pid: int
    artifacts: str  # s3://bucket/mlflow
    argv: tuple[str, ...]


def server_argv(bucket: str, port: int) -> list[str]:
    """:data:`README_LINE` as an argv, with this bucket and port (and the venv's ``mlflow``)."""
    argv = shlex.split(README_LINE)
    argv[argv.index("--artifacts-destination") + 1] = f"s3://{bucket}/mlflow"
    argv[argv.index("--port") + 1] = str(port)
    argv[0] = str(BIN / "mlflow")
    return argv


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


@contextmanager
def running_mlflow(backend_uri: str, bucket: str, log_dir: str | os.PathLike, timeout: float = 180):
    """Start ``mlflow server`` (PostgreSQL at ``backend_uri``, artifacts in ``s3://bucket/mlflow``);
    wait for ``/health``; yield an :class:`MlflowServer`; stop its whole process group."""
    port = free_port()
    argv = server_argv(bucket, port)
    env = clean_env(drop=("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"))
    env[README_ENV] = backend_uri
    env.update(README_NO_JOBS)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # it starts uvicorn from PATH
    url = f"http://127.0.0.1:{port}"
    log = open(Path(log_dir, "mlflow-server.log"), "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer {url}/health (exit {proc.poll()}): "
                                   f"{Path(log.name).read_text()[-3000:]}")
            time.sleep(0.3)
        yield MlflowServer(url=url, pid=proc.pid, artifacts=f"s3://{bucket}/mlflow", argv=tuple(argv))
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (uvicorn and its workers), SIGKILL what is left after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=10)
