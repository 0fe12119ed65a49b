"""MLflow as a service: `mlflow server` on a real PostgreSQL with its artifacts on the S3 server.

A local lake (tmp dir) with ``mlflow.tracking_uri: http://...`` pointing at a server started with the
README's line (``tests/mlflow_server.py``). One AutoML search and one rebuild, shared by the module:
runs and metrics land in PostgreSQL, model files in the S3 bucket (through the server, so clients and
Serve replicas hold no S3 credentials), aliases and lineage tags in the registry, and the champion
answers over HTTP from Ray Serve replicas that loaded it from the server. The tracking URI carries a
(planted) password, which the server ignores: it must never reach a log, Serve's stored arguments or
the CLI's output.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

import lakeloop
from conftest import REPO, free_port, run_cli
from mlflow_server import README_ENV, README_LINE, README_NO_JOBS, running_mlflow
from pg_server import running_postgres
from test_automl import FEATURES, make_rows, write_table

pytestmark = pytest.mark.timeout(600)
BUCKET = "lakeloop-mlflow-tests"
SECTION = (REPO / "README.md").read_text().split("### MLflow as a service", 1)[-1].split("\n## ", 1)[0]
README_YAML = re.search(r"```yaml\n(mlflow:\n.*?)```", SECTION, re.S)  # the lakeloop.yaml lines shown


@pytest.fixture(scope="module")
def server(s3, tmp_path_factory):
    """PostgreSQL and `mlflow server` (artifacts in s3://BUCKET/mlflow) for this module."""
    s3.bucket(BUCKET)
    with running_postgres() as pg, running_mlflow(pg.uri, BUCKET, tmp_path_factory.mktemp("mlflow")) as srv:
        yield pg, srv


@pytest.fixture(scope="module")
def scenario(server, ray_session, tmp_path_factory):
    """AutoML registers v1 (challenger, then promoted champion); a rebuild from its lineage registers v2
    (challenger); the champion is served."""
    from lakeloop.registry import Gate

    pg, srv = server
    password = f"planted-{uuid.uuid4().hex[:12]}"
    tracking = srv.url.replace("http://", f"http://lakeloop:{password}@")
    root = tmp_path_factory.mktemp("mlflow-service") / "lake"
    config = root.parent / "lakeloop.yaml"  # the README's lines, with this server's port and a password
    config.write_text(README_YAML.group(1).replace("http://127.0.0.1:5000", tracking))
    ll = lakeloop.connect(str(config), lake_root=str(root), serve_port=free_port(),
                          ray_namespace="mlflow-service-tests", serve_replicas=1)
    write_table(ll, "raw.credit", make_rows(240, seed=7))
    out = {"ll": ll, "pg": pg, "srv": srv, "password": password, "tracking": tracking, "root": root}
    out["first"] = ll.automl.run("raw.credit", target="label", features=FEATURES, timestamp_column="at",
                                 families=["linear"], max_trials=2, seed=5, name="credit", progress=False,
                                 gate=Gate())
    out["promoted"] = ll.models.promote("credit")
    out["rebuild"] = ll.models.rebuild("credit", 1, register=True, gate=Gate())
    ll.serving.up()
    out["deployed"] = ll.serving.deploy("credit", "champion")
    rows = json.loads(make_rows(4, seed=11)[FEATURES].to_json(orient="records"))
    out["rows"] = rows
    out["answer"] = post(ll.config.serve.port, "/v1/models/credit/predict", {"rows": rows})
    yield out
    ll.serving.down()  # its apps and actors; Serve's proxy keeps its port until Serve stops:
    from ray import serve

    serve.shutdown()  # so that a later module on this worker's Ray starts Serve on a port of its own


def post(port: int, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def query(pg, sql: str, *args) -> list[tuple]:
    conn = pg.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_automl_trials_and_their_metrics_are_rows_in_the_servers_postgresql(scenario):
    ll, pg, first = scenario["ll"], scenario["pg"], scenario["first"]
    assert ll.config.tracking_uri.startswith("http://lakeloop:") and first.trials == 2
    runs = dict(query(pg, "SELECT run_uuid, status FROM runs WHERE experiment_id = %s", int(first.experiment_id)))
    assert runs[first.run_id] == "FINISHED"
    trials = [r for r, in query(pg, "SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND value = %s",
                                 first.run_id)]
    assert len(trials) == 2 and all(runs[t] == "FINISHED" for t in trials)
    metric = first.spec.metric
    logged = {r: v for r, v in query(pg, "SELECT run_uuid, value FROM latest_metrics WHERE key LIKE %s "
                                         "AND run_uuid = ANY(%s)", f"%{metric}%", trials)}
    assert set(logged) == set(trials)  # every trial's score is in the database
    assert ll.mlflow.get_run(first.run_id).info.experiment_id == first.experiment_id  # and over HTTP


@pytest.mark.slow
def test_versions_with_signature_aliases_and_lineage_tags_live_in_the_registry(scenario):
    from mlflow.models import get_model_info

    import mlflow

    ll, pg = scenario["ll"], scenario["pg"]
    assert scenario["promoted"]["champion"] == 1 and scenario["rebuild"].rebuilt_version == 2
    aliases = dict(query(pg, "SELECT alias, version FROM registered_model_aliases WHERE name = 'credit'"))
    assert aliases == {"champion": 1, "challenger": 2}
    assert {k: int(v) for k, v in ll.mlflow.get_registered_model("credit").aliases.items()} == aliases
    versions = dict(query(pg, "SELECT version, run_id FROM model_versions WHERE name = 'credit'"))
    assert set(versions) == {1, 2} and versions[1] == scenario["first"].run_id
    tags = ll.mlflow.get_model_version("credit", "1").tags
    assert (tags["lakeloop.data.table"], tags["lakeloop.data.version"], tags["lakeloop.seed"]) == ("raw.credit", "1", "5")
    lineage = ll.models.lineage("credit", 1)
    assert lineage["lineage"]["frame"]["entities"] == {"table": "raw.credit", "version": 1}
    mlflow.set_tracking_uri(ll.config.tracking_uri)
    mlflow.set_registry_uri(ll.config.registry_uri)  # an earlier test of this process may have set another one
    try:
        signature = get_model_info("models:/credit@champion").signature
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert signature is not None and set(FEATURES) <= set(signature.inputs.input_names())


@pytest.mark.slow
def test_rebuild_from_the_lineage_record_reproduces_the_metrics(scenario):
    rebuilt, first = scenario["rebuild"], scenario["first"]
    assert rebuilt.equal and rebuilt.frame_matches and rebuilt.max_abs_diff == 0.0
    assert rebuilt.rebuilt == rebuilt.original == first.metrics


@pytest.mark.slow
def test_model_files_are_in_the_s3_bucket_and_not_on_local_disk(scenario, s3):
    ll, first, root = scenario["ll"], scenario["first"], scenario["root"]
    assert ll.mlflow.get_experiment(first.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    keys = [o["Key"] for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="mlflow/")
            for o in page.get("Contents", [])]
    models = [k for k in keys if k.endswith("/MLmodel")]
    assert len(models) >= 2, keys[:20]  # the searched version and the rebuilt one
    assert any(k.startswith(f"mlflow/{first.experiment_id}/") for k in keys)
    assert not (root / "mlartifacts").exists() and not list(root.rglob("MLmodel"))


@pytest.mark.slow
def test_the_champion_answers_from_serve_replicas_that_loaded_it_from_the_server(scenario):
    status, body = scenario["answer"]
    assert status == 200, body
    assert body["version"] == 1 and len(body["predictions"]) == len(scenario["rows"])
    assert scenario["deployed"]["version"] == 1  # "champion" resolved in the server's registry


@pytest.mark.slow
def test_the_tracking_uris_password_reaches_no_log_and_no_stored_serve_argument(scenario):
    import ray
    from ray.experimental import internal_kv
    from ray.serve._private.storage.kv_store import SERVE_INTERNAL_KV_NAMESPACE

    from lakeloop.serving.controller import app_running
    from lakeloop.serving.deployments import app_name

    # the version's own deployment starts once the ingress serves it (fast mode): its replicas have loaded
    # the version, and logged what they log, once it runs
    deadline = time.monotonic() + 180
    while not app_running(app_name("credit", 1)) and time.monotonic() < deadline:
        time.sleep(0.5)
    password = scenario["password"].encode()
    stored = b"".join(internal_kv._internal_kv_get(k, namespace=SERVE_INTERNAL_KV_NAMESPACE) or b""
                      for k in internal_kv._internal_kv_list(b"", namespace=SERVE_INTERNAL_KV_NAMESPACE))
    assert b"models:/credit/1" in stored  # the search below looks where the version's arguments are kept
    assert password not in stored
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    leaked = [p.name for p in logs.rglob("*") if p.is_file() and password in p.read_bytes()]
    assert not leaked, leaked
    assert scenario["password"] not in repr(scenario["ll"]) + json.dumps(scenario["ll"].config.to_dict())


@pytest.mark.slow
def test_a_run_ending_on_the_server_prints_no_url_with_the_password(scenario):
    import contextlib
    import io

    from mlflow.tracking import MlflowClient

    ll, password = scenario["ll"], scenario["password"]
    printed = {}
    for name, client in (("lakeloop", ll.mlflow), ("plain", MlflowClient(scenario["tracking"]))):
        run_id = client.create_run(ll.experiment_id(), tags={"lakeloop.kind": "probe"}).info.run_id
        with contextlib.redirect_stdout(io.StringIO()) as out:
            client.set_terminated(run_id, "FINISHED")
        printed[name] = out.getvalue()
    assert password in printed["plain"]  # MLflow's own client shows it ("View run ... at: <URI>/#/...")
    assert printed["lakeloop"] == ""


@pytest.mark.slow
def test_lakeloop_ui_names_the_tracking_server_instead_of_starting_a_second_ui(scenario):
    srv, password = scenario["srv"], scenario["password"]
    env = {"LAKELOOP_MLFLOW_TRACKING_URI": scenario["tracking"]}
    shown = json.loads(run_cli("--lake", str(scenario["root"]), "ui", "--json", env=env).stdout)
    assert shown["url"] == srv.url and shown["command"] is None
    assert shown["tracking_uri"] == srv.url.replace("http://", "http://lakeloop:***@")
    text = run_cli("--lake", str(scenario["root"]), "ui", env=env).stdout
    assert srv.url in text and password not in text
    with urllib.request.urlopen(srv.url, timeout=30) as resp:  # that URL is the UI
        assert resp.status == 200 and b"<html" in resp.read().lower()


def test_the_readme_shows_the_server_line_the_tests_run_and_the_config_pointing_at_it():
    assert f"```sh\n{README_LINE}\n```" in SECTION and f"{README_ENV}=postgresql+psycopg2://" in SECTION
    assert all(f"`{k}={v}`" in SECTION for k, v in README_NO_JOBS.items())
    assert README_YAML and README_YAML.group(1) == "mlflow:\n  tracking_uri: http://127.0.0.1:5000\n"


@pytest.mark.slow
def test_postgres_stops_by_pid_and_leaves_no_server_or_data_behind():
    import psutil

    with running_postgres(database="probe") as pg:
        assert query(pg, "SELECT current_database()") == [("probe",)]
        pid, port, data = pg.pid, pg.port, pg.data_dir
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not data.exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_a_database_or_server_uri_with_a_password_is_a_secret_everywhere_it_could_travel(tmp_path):
    from lakeloop.cli.ui import served_ui, ui_command, ui_env
    from lakeloop.client import ray_init_kwargs
    from lakeloop.config import load_config

    password = f"planted-{uuid.uuid4().hex[:12]}"
    database = f"postgresql+psycopg2://mlflow:{password}@db-host:5432/mlflow"
    ll = lakeloop.connect(lake_root=str(tmp_path / "lake"), mlflow_tracking_uri=database)
    shipped = ll.config.to_dict()
    assert shipped["mlflow"]["tracking_uri"] == "postgresql+psycopg2://mlflow:***@db-host:5432/mlflow"
    assert password not in json.dumps(shipped) + json.dumps(ray_init_kwargs(ll.config)) + repr(ll)
    ll.keep_secrets()  # an actor's connect() with what was shipped gets the full URI back from the lake
    assert load_config(shipped, environ={}).tracking_uri == database
    assert password not in " ".join(ui_command(ll, "127.0.0.1", 5000, 1)) and served_ui(ll) is None
    assert ui_env(ll)["MLFLOW_BACKEND_STORE_URI"] == database  # `mlflow ui` gets it by environment
    server = lakeloop.connect(lake_root=str(tmp_path / "lake2"),
                              mlflow_tracking_uri=f"https://lakeloop:{password}@mlflow.example:5443/base")
    assert served_ui(server) == "https://mlflow.example:5443/base"
