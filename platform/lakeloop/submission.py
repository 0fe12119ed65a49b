"""Submitting ``jobs/*.py`` to a Ray job server: one helper for ``lakeloop job submit`` and the retrain trigger.

A :class:`Submission` is what ``ray job submit`` takes (address, entrypoint, runtime env,
submission id, metadata) as plain data. It submits itself through
``JobSubmissionClient`` with the Ray token as a bearer header, retrying while a fresh job
server has no agent yet, follows the job's logs to its end, and prints the
``ray job submit`` command line that does the same by hand. :func:`package_runtime_env`
ships what a cluster needs to run the jobs: this checkout (the ``jobs/`` scripts and
``examples/``, without the lake, the venv and git) as the working dir, the ``lakeloop``
package as a py_module, and the lake settings as ``LAKELOOP_*`` variables, never secrets
(those come from the cluster's environment or the lake's secrets file).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from lakeloop.errors import ConfigError, ConnectError

if TYPE_CHECKING:
    from lakeloop.config import Config

JOBS = ("automl", "materialize", "retrain")
# never shipped to a cluster: environments, caches, VCS data (the embedded lake is git-ignored, and Ray honours
# .gitignore). Patterns apply to the py_module too, so a bare "lake" would drop the package's lake/ subpackage.
EXCLUDES = [".git", ".venv", "**/__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".hypothesis", "mlruns",
            "*.db", "bench/results"]


def checkout_root() -> Path | None:
    """The source checkout this ``lakeloop`` was imported from (it holds ``jobs/``), or ``None`` for a wheel."""
    import lakeloop

    root = Path(lakeloop.__file__).resolve().parents[2]
    return root if (root / "jobs").is_dir() and (root / "platform" / "lakeloop").is_dir() else None


def job_script(name: str, *, relative: bool = False) -> list[str]:
    """Interpreter arguments that run ``jobs/<name>.py``: relative to the working dir when it is shipped."""
    if name not in JOBS:
        raise ConfigError(f"unknown job {name!r}: choose one of {', '.join(JOBS)}")
    root = checkout_root()
    if root is not None:
        return [f"jobs/{name}.py"] if relative else [str(root / "jobs" / f"{name}.py")]
    if name == "retrain":  # the same code as a module, in an installed package
        return ["-m", "lakeloop.retrain.job"]
    raise ConfigError(f"jobs/{name}.py is not here: lakeloop was installed without its source checkout; "
                      "run from a checkout (pip install -e .)")


def token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def auth_headers() -> dict:
    """The Ray token as a bearer header, when there is one (Ray 2.60 clusters want it on every job API call).

    Ray reads ``RAY_AUTH_MODE`` once per process, so a client made before it was
    set would go without; the header makes the call work either way.
    """
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = token_path()
        token = path.read_text().strip() if path.is_file() else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def is_loopback(address: str) -> bool:
    from lakeloop.client import _is_loopback

    return _is_loopback(address)


def interpreter(address: str) -> str:
    """This venv's Python for a job server on this machine (``python`` alone would be the system one);
    plain ``python`` for a remote cluster, whose nodes have their own (cluster.yaml installs lakeloop)."""
    return sys.executable if is_loopback(address) else "python"


def package_runtime_env(config: "Config", extra_env: dict | None = None) -> dict:
    """The runtime env that lets a cluster run ``jobs/*.py`` of this checkout against this config's lake."""
    from lakeloop.client import worker_env

    root = checkout_root()
    if root is None:
        raise ConfigError("lakeloop job submit ships the source checkout's jobs/ and package: run it from a "
                          "checkout (pip install -e .)")
    excludes = list(EXCLUDES)
    lake = config.lake.root
    if "://" not in lake:
        try:
            rel = Path(lake).resolve().relative_to(root)
        except ValueError:  # outside the checkout: nothing of it is shipped
            rel = None
        if rel is not None and not (root / "platform" / "lakeloop" / rel).exists():
            excludes.append(f"/{rel}")  # anchored; a lake inside the checkout never travels
    env = {**worker_env(config), **(extra_env or {})}
    if os.environ.get("RAY_AUTH_MODE"):
        env.setdefault("RAY_AUTH_MODE", os.environ["RAY_AUTH_MODE"])
    return {"working_dir": str(root), "py_modules": [str(root / "platform" / "lakeloop")],
            "excludes": excludes, "env_vars": env}


class AlreadySubmitted(Exception):
    """A job with this submission id exists (the submission is idempotent by its id)."""


@dataclass(frozen=True)
class Submission:
    """One job for a Ray job server, as ``ray job submit`` would send it (plain data: it pickles)."""

    address: str
    entrypoint: list[str]
    runtime_env: dict = field(default_factory=dict)
    submission_id: str | None = None
    metadata: dict | None = None
    entrypoint_num_cpus: float = 0.0

    def entrypoint_line(self) -> str:
        return shlex.join(self.entrypoint)

    def command_line(self) -> str:
        """The ``ray job submit`` command that submits the same job (token auth env first)."""
        env = ["RAY_AUTH_MODE=token"] if auth_headers() or os.environ.get("RAY_AUTH_MODE") == "token" else []
        if env and os.environ.get("RAY_AUTH_TOKEN_PATH"):
            env.append(f"RAY_AUTH_TOKEN_PATH={shlex.quote(os.environ['RAY_AUTH_TOKEN_PATH'])}")
        args = ["ray", "job", "submit", "--address", self.address]
        if self.submission_id:
            args += ["--submission-id", self.submission_id]
        if self.metadata:
            args += ["--metadata-json", json.dumps(self.metadata, sort_keys=True)]
        if self.entrypoint_num_cpus:
            args += ["--entrypoint-num-cpus", f"{self.entrypoint_num_cpus:g}"]
        if self.runtime_env:
            args += ["--runtime-env-json", json.dumps(self.runtime_env, sort_keys=True)]
        return " ".join([*env, shlex.join(args), "--", self.entrypoint_line()])

    def client(self):
        from ray.job_submission import JobSubmissionClient

        try:
            return JobSubmissionClient(self.address, headers=auth_headers())
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConnectError(f"cannot reach the Ray job server at {self.address}: {exc}. Check the address (the "
                               "dashboard's, e.g. http://127.0.0.1:8265) and RAY_AUTH_MODE=token with its token"
                               ) from None

    def submit(self, client=None, *, timeout_s: float = 60.0) -> str:
        """Submit; returns the submission id. Raises :class:`AlreadySubmitted` when that id exists.

        A job server that has just started may have no agent yet ("try again later"), or drop
        the connection while busy: the same submission (same id) is sent again until ``timeout_s``.
        """
        client = client or self.client()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return client.submit_job(entrypoint=self.entrypoint_line(), submission_id=self.submission_id,
                                         runtime_env=self.runtime_env or None, metadata=self.metadata,
                                         entrypoint_num_cpus=self.entrypoint_num_cpus or None)
            except RuntimeError as exc:
                if "already exists" in str(exc):
                    raise AlreadySubmitted(self.submission_id) from None
                if "try again" not in str(exc):
                    raise ConnectError(f"the Ray job server at {self.address} refused the job: {exc}") from None
                if time.monotonic() >= deadline:
                    raise ConnectError(
                        f"the Ray job server at {self.address} could not take the job within {timeout_s:g} s "
                        f"({exc}); its dashboard agent may not have started, e.g. because another Ray on this "
                        "machine holds the agent port 52365") from None
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise ConnectError(
                        f"the Ray job server at {self.address} did not answer the submission within {timeout_s:g} s "
                        f"({type(exc).__name__}); check that the cluster is up") from None
            time.sleep(1.0)

    def follow(self, submission_id: str, client=None, *, out: TextIO | None = None,
               poll_s: float = 1.0) -> str:
        """Print the job's logs as they grow until it ends; returns its final status (``SUCCEEDED``, ...)."""
        client = client or self.client()
        out = out or sys.stdout
        shown = 0
        while True:
            status = client.get_job_status(submission_id)
            logs = client.get_job_logs(submission_id)
            if len(logs) > shown:
                out.write(logs[shown:])
                out.flush()
                shown = len(logs)
            if status.is_terminal():
                return str(status.value if hasattr(status, "value") else status)
            time.sleep(poll_s)


def job_server(ll, address: str | None = None, *, start: bool = False) -> str:
    """The job server (dashboard URL) for this connection's lake.

    In order: ``address``; the lake's running platform (its record); an ``http(s)://``
    ``ray.address``; the dashboard of the Ray that ``ray.address`` names (attached); and with
    ``start``, the lake's own local Ray, started (and owned by this process) or attached to.
    """
    if address:
        return address if "://" in address else f"http://{address}"
    record = ll.platform
    if record is not None and record.dashboard_url:
        return record.dashboard_url
    configured = ll.config.ray.address
    if configured and configured.startswith(("http://", "https://")):
        return configured
    if configured or start:
        ll.ensure_ray()
        if ll.dashboard_url:
            return ll.dashboard_url
    raise ConnectError(
        f"no job server for lake {ll.config.lake.root}: no platform of it runs here"
        + (f" and the Ray at {configured} has no dashboard" if configured else "")
        + ". Pass --address http://HOST:8265 (a `ray start --head` prints it), set ray.address, or start the "
        "lake's platform (a notebook's or a CLI command's connect())")


def for_job(name: str, args: list[str], config: "Config", address: str, **kwargs: Any) -> Submission:
    """A submission of ``jobs/<name>.py args`` with this checkout and the config's lake settings."""
    entrypoint = [interpreter(address), *job_script(name, relative=True), *args]
    return Submission(address=address, entrypoint=entrypoint, runtime_env=package_runtime_env(config), **kwargs)
