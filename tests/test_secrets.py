"""Secrets stay secret: a distinct secret planted in every credential field of the config never shows up in a
command line (/proc/*/cmdline), a Ray job's info (entrypoint, metadata, runtime env) or logs, the runtime env
of a local Ray, what actors receive, or MLflow; jobs and actors read them back from the lake's 0600 file.
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from pathlib import Path

import pytest

import lakeloop
from lakeloop.client import ray_init_kwargs
from lakeloop.config import load_config


def planted(lake_root: str, mlflow_host: str = "127.0.0.1:9") -> tuple[dict, dict[str, str]]:
    """A config with a distinct secret in each credential field, and those secrets by field."""
    tag = uuid.uuid4().hex[:10]
    secrets = {name: f"planted-{name}-{tag}" for name in
               ("s3_secret_key", "s3_key_id", "s3_session", "mlflow_password", "registry_password",
                "admin_token", "feedback_token", "read_token")}
    config = {
        "lake": {"root": lake_root, "storage_options": {
            "AWS_SECRET_ACCESS_KEY": secrets["s3_secret_key"], "AWS_ACCESS_KEY_ID": secrets["s3_key_id"],
            "AWS_SESSION_TOKEN": secrets["s3_session"], "AWS_REGION": "eu-west-1"}},
        "mlflow": {"tracking_uri": f"http://lakeloop:{secrets['mlflow_password']}@{mlflow_host}",
                   "registry_uri": f"http://lakeloop:{secrets['registry_password']}@{mlflow_host}"},
        "serve": {"admin_token": secrets["admin_token"], "feedback_token": secrets["feedback_token"]},
        "online": {"read_token": secrets["read_token"]},
    }
    return config, secrets


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


def test_what_leaves_the_driver_has_no_secret_and_connect_reads_them_back_from_the_lake(tmp_path):
    config, secrets = planted(str(tmp_path / "lake"))
    ll = lakeloop.connect(config)
    cfg = ll.config
    shipped = cfg.to_dict()
    env = ray_init_kwargs(cfg)["runtime_env"]
    for name, text in [("to_dict", json.dumps(shipped)), ("runtime_env", json.dumps(env)),
                       ("repr", repr(cfg) + repr(ll))]:
        assert not leaks(text, secrets), (name, leaks(text, secrets))
    assert shipped["lake"]["storage_options"] == {"AWS_REGION": "eu-west-1"}  # plain settings travel
    assert shipped["mlflow"]["tracking_uri"] == "http://lakeloop:***@127.0.0.1:9"
    assert "MLFLOW_TRACKING_URI" not in env["env_vars"]  # MLflow would read a password-less URI as is

    path = ll.keep_secrets()
    assert path == tmp_path / "lake" / "_secrets" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # an actor's or job's connect() with the shipped config (or only the env) gets the full values back
    for again in (load_config(shipped, environ={}),
                  load_config(environ={k: v for k, v in env["env_vars"].items() if k.startswith("LAKELOOP_")})):
        assert again.to_dict(secrets=True)["lake"]["storage_options"] == config["lake"]["storage_options"]
        assert again.tracking_uri == config["mlflow"]["tracking_uri"]
        assert again.registry_uri == config["mlflow"]["registry_uri"]
    full = load_config(shipped, environ={})
    assert full.serve.admin_token == secrets["admin_token"] and full.online.read_token == secrets["read_token"]
    assert full.serve.feedback_token == secrets["feedback_token"]
    # what the driver set explicitly wins over the file
    assert load_config({**shipped, "online": {"read_token": "mine"}}, environ={}).online.read_token == "mine"


def test_the_retrain_entrypoint_and_a_trigger_given_secrets_carry_none(tmp_path):
    from lakeloop.retrain.trigger import JobTrigger, config_for_job

    config, secrets = planted(str(tmp_path / "lake"))
    ll = lakeloop.connect(config)
    trigger = JobTrigger(address="http://127.0.0.1:1", spec={"model": "m"}, config=config_for_job(ll))
    assert not leaks(trigger.entrypoint({"reason": "drift", "window": 3}), secrets)
    direct = JobTrigger(address="http://127.0.0.1:1", spec={"model": "m"}, config=ll.config.to_dict(secrets=True))
    assert not leaks(json.dumps(direct.config) + direct.entrypoint({}), secrets)
    assert (tmp_path / "lake" / "_secrets" / "config.json").is_file()


def _cmdlines() -> dict[int, str]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    "utf-8", "replace")
            except OSError:
                continue
    return out


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_submitted_retrain_job_shows_no_secret_in_cmdlines_job_info_or_logs(tmp_path, ray_head):
    from ray.job_submission import JobStatus

    from lakeloop.retrain.trigger import JobTrigger, config_for_job

    address, env, _ = ray_head
    config, secrets = planted(str(tmp_path / "lake"))
    ll = lakeloop.connect(config)
    trigger = JobTrigger(address=address, spec={"model": "secretive"}, config=config_for_job(ll),
                         extra_env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"},
                         submit_timeout_s=240)
    os.environ["RAY_AUTH_MODE"] = env["RAY_AUTH_MODE"]
    try:
        sid = trigger({"reason": "secrets test", "window": 1})["submission_id"]
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)
    client = trigger.client()
    seen_job, seen = False, {}
    deadline = time.monotonic() + 300
    while True:  # every process's command line, as long as the job runs
        for pid, cmd in _cmdlines().items():
            seen[(pid, cmd)] = True
            seen_job = seen_job or ("--config-json" in cmd and "secretive" in cmd)
        info = client.get_job_info(sid)
        if info.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        assert time.monotonic() < deadline, "the retrain job did not finish"
        time.sleep(0.1)
    assert seen_job, "the job's own process was among the command lines searched"
    leaked = [(pid, leaks(cmd, secrets)) for (pid, cmd) in seen if leaks(cmd, secrets)]
    assert not leaked, leaked
    details = json.dumps({"entrypoint": info.entrypoint, "metadata": info.metadata, "runtime_env": info.runtime_env,
                          "message": info.message}, default=str)
    assert info.entrypoint and "--config-json" in details
    assert not leaks(details, secrets), leaks(details, secrets)
    logs = client.get_job_logs(sid)
    assert "secretive" in logs, logs[-2000:]  # the job ran and said what failed (no MLflow server here) ...
    assert "lakeloop:***@127.0.0.1:9" in logs, logs[-2000:]  # ... naming the URI without its password
    assert not leaks(logs, secrets), leaks(logs, secrets)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_automl_run_logs_no_secret_to_mlflow(tmp_path, ray_session):
    from test_automl import make_rows, write_table

    config, secrets = planted(str(tmp_path / "lake"))
    config.pop("mlflow")  # sqlite under the lake: a URI without a password; the other secrets stay
    secrets = {k: v for k, v in secrets.items() if "password" not in k}
    ll = lakeloop.connect(config)
    write_table(ll, "raw.secretdata", make_rows(120, seed=5))
    result = ll.automl.run("raw.secretdata", target="label", features=["x1", "x2", "count", "color"],
                           timestamp_column="at", families=["linear"], max_trials=2, seed=1, budget_s=60,
                           register=False)
    runs = ll.mlflow.search_runs([result.experiment_id])
    assert len(runs) >= 3  # the parent and its trials
    for run in runs:
        text = json.dumps({"params": run.data.params, "tags": run.data.tags, "metrics": run.data.metrics})
        artifacts = ll.mlflow.list_artifacts(run.info.run_id, "lakeloop")
        for art in artifacts:
            if art.path.endswith(".json"):
                text += Path(ll.mlflow.download_artifacts(run.info.run_id, art.path, str(tmp_path))).read_text()
        assert not leaks(text, secrets), (run.info.run_id, leaks(text, secrets))
