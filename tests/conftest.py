"""Shared fixtures: a fresh lake per test, one local Ray per test session."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping

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
def s3(tmp_path_factory):
    """One S3-compatible server (moto) on loopback for the session; its credentials are exported to
    the environment before any Ray of the session starts, as a cluster's nodes would have them."""
    from s3_server import running_s3

    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        saved = {k: os.environ.get(k) for k in server.env}
        os.environ.update(server.env)
        yield server
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def ray_session(s3):
    """One local Ray for the whole test session (init ~5 s, so only once); it starts after the S3
    server so that its workers have the object store's credentials in their environment."""
    import ray

    if not ray.is_initialized():  # node IP 127.0.0.1: every socket of this Ray on loopback (test_sockets.py)
        start_session_ray()
    yield ray
    ray.shutdown()


def start_session_ray():
    """The session's local Ray (also restarted by tests/test_cluster.py after it drove its own cluster)."""
    from lakeloop.client import start_local_ray

    return start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="lakeloop-tests")


@pytest.fixture(scope="session")
def ray_head(s3, request):
    """One Ray head with its job server for the session, started with the README's single-machine line
    (`tests/ray_heads.py`); yields (dashboard address, env for Ray clients, head pid). Its logs are kept
    when a test fails while it runs. Every module that uses it is in HEAD_GROUP, so one worker starts it, and
    it is stopped right after its last test (its dashboard, agents and job server otherwise idle on the two
    cores for the rest of the run)."""
    from ray_heads import running_head

    failed_before = request.session.testsfailed
    with contextlib.ExitStack() as stack:
        head = stack.enter_context(running_head(num_cpus=2,
                                                failed=lambda: request.session.testsfailed > failed_before))
        _early_close["ray_head"] = stack.close
        try:
            yield head
        finally:
            _early_close.pop("ray_head", None)


# -- one served platform for tests/test_serving.py, test_fuzz.py and test_serving_features.py -------------
SERVE_GROUP = ("test_serving.py", "test_fuzz.py", "test_serving_features.py",  # run together, in this order:
               "test_faults.py")  # the first three share `serve_platform`; faults kills, on a Serve of its own
# every module that uses `ray_head`, run together on one worker: spread over both, each worker started a head
# of its own, the second one while the demo loaded both cores (in clean-clone runs that start took 186-399 s,
# with one or two aborted heads; tests/ray_heads.py)
HEAD_GROUP = ("test_jobs.py", "test_job_submit.py", "test_secrets.py", "test_sockets.py")
GROUPS = {"serve": SERVE_GROUP, "head": HEAD_GROUP}


def _group(name: str) -> str | None:
    """The group (a key of GROUPS) a module runs in, or None."""
    return next((key for key, modules in GROUPS.items() if name in modules), None)


_early_close: dict[str, Callable[[], None]] = {}  # session fixtures stopped right after their last user


@pytest.fixture(scope="session")
def serve_platform(tmp_path_factory, ray_session):
    """(ll, versions): `tests/shared_platform.py` started once for SERVE_GROUP's first three modules (~45 s on 2
    cores); stopped after the last test that uses it (pytest_runtest_teardown), so a later module starting
    its own Serve in this Ray finds none running."""
    import shared_platform

    state = {"closed": False}

    def close():
        if not state["closed"]:
            state["closed"] = True
            shared_platform.stop(ll)

    ll, versions = shared_platform.start(tmp_path_factory.mktemp("platform") / "lake")
    _early_close["serve_platform"] = close
    try:
        yield ll, versions, state
    finally:
        _early_close.pop("serve_platform", None)
        close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the last test (of those still to run here) that uses an `_early_close` fixture, stop it."""
    yield
    if not _early_close:
        return
    items = item.session.items
    later = items[items.index(item) + 1:] if item in items else []
    for name, close in list(_early_close.items()):
        if name in item.fixturenames and not any(name in other.fixturenames for other in later):
            del _early_close[name]
            close()


# the order xdist hands modules (and groups) out in, with `-n 2 --dist loadfile` (Makefile): a worker gets the
# next one when it has two tests or fewer left. Times from a clean-clone `make test` (2026-12-01 19:54 UTC, 2
# cores): retrain 598 s (the demo 403 of it), the head group 418, the serve group 229 (with serving_features'
# 87 now in it), registry 225, serve_cli 212, monitoring 190, features_cli 150, mlflow_server 128, cli 108,
# readme 63, s3 56, automl 53, drift 48, spool 42, bitemporal 39, shared_catalog 30, platform_record 28,
# status 26.
# - retrain, with the demo, first: the long pole. The head group beside it starts the head at once, before
#   the demo loads the machine.
# - DURING_DEMO next: light modules, for the other worker while the demo runs. In a run that gave it the
#   registry (whose gate test loads the CPU on purpose) and serve_cli instead, the demo's retrain job took 8
#   minutes to train and the demo 824 s, against 403 s beside lighter ones.
# - then the heavy rest, longest first, and the smallest last, so that the two workers finish close together.
# The `scale` suites (cluster, fastpath, alias, notebook) come early for `make test-scale`; in `make test` they
# take a few seconds.
DURING_DEMO = ("test_drift.py", "test_spool.py", "test_bitemporal.py", "test_shared_catalog.py",
               "test_platform_record.py", "test_status.py", "test_online.py", "test_prometheus.py", "test_pit.py",
               "test_features.py")
HEAVY_FIRST = ("test_cluster.py", "test_retrain.py", "head", *DURING_DEMO, "serve", "test_registry.py",
               "test_serve_cli.py", "test_monitoring.py", "test_features_cli.py", "test_mlflow_server.py",
               "test_serving_fastpath.py", "test_serving_alias.py", "test_notebook.py", "test_cli.py",
               "test_readme.py", "test_s3.py", "test_automl.py")


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


# the slow tests of these modules are `scale` (make test-scale): a 3-node cluster, the HAProxy ingress, the
# champion rollout under load and a second run of the whole loop (the notebook; `make test` runs the loop as
# `lakeloop demo --fast` and checks the notebook's committed outputs) cost ~10 minutes on 2 cores. The
# PostgreSQL-backed `mlflow server` suite stays in `make test` (~75 s alone).
SCALE_SUITES = ("test_cluster.py", "test_serving_fastpath.py", "test_serving_alias.py", "test_notebook.py")


def pytest_collection_modifyitems(config, items):
    """Modules in HEAVY_FIRST's order (the rest after them, as collected), each group's modules (GROUPS) together
    and in the group's order; the slow tests of SCALE_SUITES marked `scale`."""
    for item in items:
        if _module(item.nodeid) in SCALE_SUITES and item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.scale)
    def rank(item) -> tuple[int, int]:
        name = _module(item.nodeid)
        group = _group(name)
        key = group or name
        heavy = HEAVY_FIRST.index(key) if key in HEAVY_FIRST else len(HEAVY_FIRST)
        return heavy, GROUPS[group].index(name) if group else 0

    items.sort(key=rank)  # stable: the order inside a module and among the rest is kept


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With `--dist loadfile` (or loadgroup): each module runs whole on one worker (its module fixtures are built
    once), and each group's modules together on one worker, in order: SERVE_GROUP's share `serve_platform`,
    HEAD_GROUP's `ray_head`.
    (xdist's own loadgroup cannot do that under pytest 9.2: it renames `item._nodeid`, which 9.2 no longer reads.)"""
    if config.getvalue("dist") not in ("loadfile", "loadgroup"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(_module(nodeid)) or nodeid.split("::", 1)[0]

    return ModuleGroups(config, log)


def clean_env(base: Mapping[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """``base`` (this process's environment) for a child process: no ``LAKELOOP_*`` setting of this test run
    (a child reads its own from the test) and none of ``drop``."""
    base = os.environ if base is None else base
    return {k: v for k, v in base.items() if not k.startswith("LAKELOOP_") and k not in drop}


def run_cli(*args: str, cwd=None, env=None, check=True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed ``lakeloop`` console script, as a user would."""
    full_env = clean_env() | (env or {})
    proc = subprocess.run([str(BIN / "lakeloop"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lakeloop {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def free_port() -> int:
    """A loopback port nothing holds now, outside the kernel's ephemeral range (`lakeloop.ports`)."""
    from lakeloop.ports import free_port as pick

    return pick()
