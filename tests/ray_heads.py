"""A Ray head for tests, started with the README's single-machine line on ports of its own.

`ray start --head --block` runs in its own process group with its own temp dir, so it never
touches the test session's Ray (or anyone else's); it is stopped by that process group, by id,
never by `ray stop`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from conftest import BIN, clean_env
from lakeloop.client import SLOW_START_ENV
from lakeloop.ports import free_ports  # below the ephemeral range: see lakeloop/ports.py

# the README's line for a single-machine head (Configuration), plus ports of its own for the test, and the
# agent waits lakeloop's own local Ray sets: in clean-clone `make test` runs on the loaded 2-core box the
# head's raylet aborted ("Timed out waiting for file .../dashboard_agent_listen_port_...", 17 s after it
# started its agent, which registered 30 s later) and the job tests that share the head failed
HEAD_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **SLOW_START_ENV}
HEAD_ARGS = ["start", "--head", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1"]


def start_head(temp_dir: str, num_cpus: int = 1):
    """Start the head; returns (process, dashboard address, env for Ray clients, its agent's HTTP address)."""
    gcs, dash, client, agent, agent_grpc, runtime_env_agent, metrics = free_ports(7)
    env = {**os.environ, **HEAD_ENV, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env = clean_env(env, drop=("RAY_ADDRESS",))
    with open(Path(temp_dir, "head.log"), "w") as log:
        head = subprocess.Popen(
            [str(BIN / "ray"), *HEAD_ARGS, "--block", "--port", str(gcs), "--dashboard-port", str(dash),
             "--num-cpus", str(num_cpus), "--ray-client-server-port", str(client),
             "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
             "--runtime-env-agent-port", str(runtime_env_agent), "--metrics-export-port", str(metrics),
             "--temp-dir", temp_dir],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return head, f"http://127.0.0.1:{dash}", env, f"http://127.0.0.1:{agent}"


def stop_head(head: subprocess.Popen) -> None:
    head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(head.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(head.pid, signal.SIGKILL)  # what is left of that head: its own process group, by id


def _raylet_aborted(temp_dir: str) -> bool:
    """Whether the head's raylet aborted (a failed check, logged to its ``raylet.err``): ``ray start --block``
    outlived its raylet by more than the 47 s left of the wait, in a clean-clone run here."""
    try:
        return "Check failed" in Path(temp_dir, "session_latest", "logs", "raylet.err").read_text(errors="replace")
    except OSError:
        return False


def _answers(head: subprocess.Popen, urls: list[str], deadline: float, temp_dir: str) -> bool:
    """Whether every URL answers 200 (in turn) before ``deadline``; False as soon as the head or its raylet
    has died."""
    from lakeloop.retrain.trigger import auth_headers

    for url in urls:
        while True:
            try:
                req = urllib.request.Request(url, headers=auth_headers())
                with urllib.request.urlopen(req, timeout=3) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if head.poll() is not None or _raylet_aborted(temp_dir):
                return False
            assert time.monotonic() < deadline, f"the Ray head did not answer {url} in time"
            time.sleep(1)
    return True


@contextmanager
def running_head(num_cpus: int = 1, timeout_s: float = 120, failed: Callable[[], bool] = lambda: False,
                 attempts: int = 5, calm_s: float = 30):
    """A head whose job server and dashboard agent answer; yields (dashboard address, env for Ray clients,
    head pid).

    The job server hands each submission to the head's dashboard agent and gives up after 10 s without
    one ("No available agent to submit job", 500); on the loaded box the agent came up half a minute after
    the job server, so both are waited for. A head that dies while starting, or whose raylet does (it
    aborts when the agent is slow to write its port file: "Timed out waiting for file
    .../dashboard_agent_listen_port", seen in clean-clone runs here), is started again from scratch, up
    to ``attempts`` times in all; before each new start it waits, up to ``calm_s``, for the machine's load
    to drop below its CPU count (the three aborts of one clean-clone run here came two minutes apart, all
    while the demo test loaded both cores: Ray waits a fixed 15 s for that port file, with no setting).
    Its logs are copied out of its temp dir (removed at teardown) when it dies or fails to come up, when
    the body raises, or when ``failed()`` says so at teardown (a test that used it failed)."""
    for attempt in range(1, attempts + 1):
        temp_dir = tempfile.mkdtemp(prefix="llray-", dir="/tmp")  # short: Unix socket paths have a length limit
        head, address, env, agent = start_head(temp_dir, num_cpus)
        try:
            up = _answers(head, [f"{address}/api/jobs/", f"{agent}/api/healthz"], time.monotonic() + timeout_s,
                          temp_dir)
        except BaseException as exc:
            exc.add_note(f"the head's logs are kept in {keep_logs(temp_dir)}")
            stop_head(head)
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        if up:
            break
        print(f"the Ray head died while starting (attempt {attempt} of {attempts}); its logs are kept in "
              f"{keep_logs(temp_dir)}")
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
        if attempt < attempts:
            _wait_for_calm(calm_s)
    else:
        raise AssertionError(f"the Ray head died while starting, {attempts} times (logs in /tmp/llray-failed-*)")
    try:
        yield address, env, head.pid
    except Exception as exc:
        exc.add_note(f"the head's logs are kept in {keep_logs(temp_dir)}")
        raise
    else:
        if failed():
            print(f"a test that used the Ray head failed; its logs are kept in {keep_logs(temp_dir)}")
    finally:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_calm(timeout_s: float) -> None:
    """Until the 1-minute load average is below the CPU count, or ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while os.getloadavg()[0] >= (os.cpu_count() or 1) and time.monotonic() < deadline:
        time.sleep(2)


def keep_logs(temp_dir: str) -> str:
    """Copy a failed head's logs (``head.log`` and its session's ``logs/``) out of its temp dir, which
    teardown removes; returns where they are."""
    kept = tempfile.mkdtemp(prefix="llray-failed-", dir="/tmp")
    shutil.copy2(Path(temp_dir, "head.log"), kept)
    logs = Path(temp_dir, "session_latest", "logs")
    if logs.is_dir():
        shutil.copytree(logs, Path(kept, "logs"), ignore=shutil.ignore_patterns("*.sock"), dirs_exist_ok=True)
    return kept
