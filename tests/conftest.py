"""Shared fixtures: a fresh lake per test, one local Ray per test session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No LAKELOOP_* from the caller's shell leaks in; the cwd has no lakeloop.yaml."""
    for var in list(os.environ):  # mlflow.set_tracking_uri/set_registry_uri export these to subprocesses
        if var.startswith("LAKELOOP_") or var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def lake_root(tmp_path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def ll(lake_root):
    import lakeloop

    return lakeloop.connect(lake_root=str(lake_root))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (init ~5 s, so only once)."""
    import ray

    from lakeloop.client import start_local_ray

    if not ray.is_initialized():  # node IP 127.0.0.1: every socket of this Ray on loopback (test_sockets.py)
        start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="lakeloop-tests")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_head():
    """One Ray head with its job server for the session, started with the README's single-machine line
    (`tests/ray_heads.py`); yields (dashboard address, env for Ray clients, head pid)."""
    from ray_heads import running_head

    with running_head(num_cpus=2) as head:
        yield head


def run_cli(*args: str, cwd=None, env=None, check=True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed ``lakeloop`` console script, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LAKELOOP_")}
    full_env.update(env or {})
    proc = subprocess.run([str(BIN / "lakeloop"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lakeloop {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
