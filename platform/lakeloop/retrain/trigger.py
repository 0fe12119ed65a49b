"""From a monitor's policy to a Ray job: :class:`JobTrigger` submits ``jobs/retrain.py`` through the job server.

>>> trigger = JobTrigger.for_lake(ll, {"model": "fraud", "budget_s": 30, "canary_percent": 25})  # doctest: +SKIP
>>> monitoring.start(ll, "fraud", policy=Policy(consecutive=3), trigger=trigger)                  # doctest: +SKIP

The monitor calls it (inside its actor) when the policy fires; what it returns
(the submission id) is recorded in the ``retrain_submitted`` event. The
submission id is derived from the model and the window, so a monitor that
restarts and fires again for the same window cannot submit twice, and while a
retrain job of the model is still pending or running no second one starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from lakeloop.errors import ConnectError, RetrainError
from lakeloop.retrain.spec import RetrainSpec
from lakeloop.submission import AlreadySubmitted, Submission, auth_headers  # noqa: F401 (auth_headers: re-exported)
from lakeloop.submission import job_script as submission_script

if TYPE_CHECKING:
    from lakeloop.client import Lakeloop

METADATA_MODEL = "lakeloop.retrain"
METADATA_LAKE = "lakeloop.lake"


def job_script() -> list[str]:
    """``jobs/retrain.py`` of this checkout when there is one, else the same code as a module."""
    return submission_script("retrain")


def config_for_job(ll: "Lakeloop") -> dict:
    """The connection's config as plain data for the job, without secrets (the Ray address comes from the job's RAY_ADDRESS).

    The secrets go to the lake's ``_secrets/config.json`` (0600), where the job's ``connect()``
    finds them by lake root (:mod:`lakeloop.credentials`); never to its command line or runtime env.
    """
    ll.keep_secrets()
    data = ll.config.to_dict()
    data.pop("source", None)
    data.get("ray", {})["address"] = None
    return data


def submission_id(lake_root: str, model: str, window: Any, monitor_run: str | None = None) -> str:
    """One id per lake, model, monitor (its MLflow run, kept across restarts) and window."""
    lake = hashlib.sha1(lake_root.encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", model)[:40]
    return f"lakeloop-retrain-{slug}-{lake}" + (f"-{monitor_run[:8]}" if monitor_run else "") + f"-w{window}"


@dataclass(frozen=True)
class JobTrigger:
    """Submit the retrain of a model as a Ray job (picklable: it travels into the monitor actor)."""

    address: str
    spec: dict
    config: dict
    python: str = sys.executable
    entrypoint_num_cpus: float = 0.0
    extra_env: dict = field(default_factory=dict)
    submit_timeout_s: float = 60.0

    def __post_init__(self):
        RetrainSpec.from_dict(self.spec)  # a bad setting fails here, not later inside the job
        from lakeloop.credentials import save, split

        public, secret = split(self.config)
        if secret:  # a config given with its secrets: keep them in the lake, ship the rest
            save(self.config)
            object.__setattr__(self, "config", public)

    @classmethod
    def for_lake(cls, ll: "Lakeloop", spec: RetrainSpec | Mapping[str, Any], *, address: str | None = None,
                 **kwargs) -> "JobTrigger":
        """A trigger for this connection's lake; ``address`` is the Ray dashboard (default: the running Ray's)."""
        if not isinstance(spec, RetrainSpec):
            RetrainSpec.from_dict(spec)  # a bad setting fails here, before Ray starts
            spec = dict(spec)
        else:
            spec = spec.to_dict()
        if not address:
            ll.ensure_ray()
            address = ll.dashboard_url
        if not address:
            raise ConnectError("no Ray dashboard (job server) to submit the retrain to; start Ray with its dashboard "
                               "or pass address='http://127.0.0.1:8265'")
        return cls(address=address, spec=spec, config=config_for_job(ll), **kwargs)

    def entrypoint(self, context: Mapping[str, Any]) -> str:
        return self.submission(context).entrypoint_line()

    def submission(self, context: Mapping[str, Any], sid: str | None = None) -> Submission:
        """The retrain job for ``context`` as a :class:`~lakeloop.submission.Submission` (the shared helper)."""
        args = [self.python, *job_script(), "--spec-json", json.dumps(self.spec), "--config-json",
                json.dumps(self._job_config(), default=str), "--reason",
                str(context.get("reason") or "retrain requested"), "--context-json",
                json.dumps(dict(context), default=str)]
        env = {"RAY_AIR_NEW_OUTPUT": "0", **self.extra_env}
        if os.environ.get("RAY_AUTH_MODE"):
            env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"]
        return Submission(address=self.address, entrypoint=args, runtime_env={"env_vars": env}, submission_id=sid,
                          metadata={METADATA_MODEL: self.spec["model"], METADATA_LAKE: self.config["lake"]["root"]},
                          entrypoint_num_cpus=self.entrypoint_num_cpus)

    def _job_config(self) -> dict:
        """The config for the job, pinned to the cluster this trigger runs in (its GCS address).

        A job driver otherwise finds its cluster with ``RAY_ADDRESS=auto``, which picks the wrong
        one when two Ray instances run on the machine.
        """
        config = self.config
        if "ray" in sys.modules and not (config.get("ray") or {}).get("address"):
            import ray

            if ray.is_initialized() and self._is_this_cluster():
                gcs = ray.get_runtime_context().gcs_address
                config = {**config, "ray": {**(config.get("ray") or {}), "address": gcs}}
        return config

    def _is_this_cluster(self) -> bool:
        """Whether the job server at ``address`` is the dashboard of the Ray this process runs in.

        Only then is this process's GCS address the job's cluster; a trigger that submits to another
        cluster leaves the job to the address its own job server gives it.
        """
        from urllib.parse import urlparse

        import ray

        own = ray._private.worker.get_dashboard_url() or ""
        theirs = urlparse(self.address if "://" in self.address else f"http://{self.address}")
        mine = urlparse(f"http://{own.split('://')[-1]}") if own else None
        local = {"127.0.0.1", "localhost", "::1"}

        def host(h):
            return "127.0.0.1" if h in local else h
        return bool(mine and mine.port == theirs.port and host(mine.hostname) == host(theirs.hostname))

    def running(self, client) -> list[str]:
        """Submission ids of this model's retrain jobs (in this lake) that are pending or running."""
        out = []
        for job in client.list_jobs():
            meta = job.metadata or {}
            ours = (meta.get(METADATA_MODEL) == self.spec["model"]
                    and meta.get(METADATA_LAKE) == self.config["lake"]["root"])
            if ours and not job.status.is_terminal():
                out.append(job.submission_id)
        return out

    def client(self):
        return Submission(address=self.address, entrypoint=[]).client()

    def __call__(self, context: Mapping[str, Any]) -> dict:
        model = self.spec["model"]
        if context.get("model", model) != model:
            raise RetrainError(f"this trigger retrains {model!r}, not {context.get('model')!r}")
        client = self.client()
        busy = self.running(client)
        if busy:
            return {"submission_id": busy[0], "already_running": True}
        sid = submission_id(self.config["lake"]["root"], model, context.get("window", "manual"),
                            context.get("run_id"))
        try:
            self.submission(context, sid).submit(client, timeout_s=self.submit_timeout_s)
        except AlreadySubmitted:
            return {"submission_id": sid, "already_submitted": True}
        return {"submission_id": sid, "address": self.address}
