"""Configuration: defaults, one YAML file, LAKELOOP_* environment, overrides; one precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

import lakeloop
from lakeloop.client import ray_init_kwargs
from lakeloop.config import load_config
from lakeloop.errors import ConfigError, ConnectError


def test_embedded_defaults_put_lake_and_mlflow_under_cwd(tmp_path):
    cfg = load_config(environ={})
    assert cfg.lake.root == str(tmp_path / "lake")
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'lake' / 'mlflow.db'}"
    assert cfg.registry_uri == cfg.tracking_uri
    assert cfg.ray.address is None and cfg.ray.dashboard_host == "127.0.0.1"
    assert cfg.serve.host == "127.0.0.1"


def test_precedence_is_defaults_then_file_then_env_then_arguments(tmp_path):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    f = conf_dir / "lakeloop.yaml"
    f.write_text("lake:\n  root: data\nray:\n  namespace: from-file\n  num_cpus: 1\nserve:\n  port: 9000\n")
    env = {"LAKELOOP_RAY_NAMESPACE": "from-env", "LAKELOOP_SERVE_PORT": "9100"}
    cfg = load_config(f, environ=env, serve_port=9200)
    assert cfg.lake.root == str(conf_dir / "data"), "relative root resolves against the file's folder"
    assert cfg.ray.num_cpus == 1  # file only
    assert cfg.ray.namespace == "from-env"  # env beats file
    assert cfg.serve.port == 9200  # arguments beat env
    assert "lakeloop.yaml" in cfg.source and "environment" in cfg.source


def test_config_file_found_through_env_and_cwd(tmp_path):
    (tmp_path / "lakeloop.yaml").write_text("mlflow:\n  experiment: cwd-file\n")
    assert load_config(environ={}).mlflow.experiment == "cwd-file"
    other = tmp_path / "other.yaml"
    other.write_text("mlflow:\n  experiment: env-file\n")
    assert load_config(environ={"LAKELOOP_CONFIG": str(other)}).mlflow.experiment == "env-file"


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"config": {"lake": {"rot": "x"}}}, "lake.rot"),
        ({"config": {"lakes": {}}}, "lakes"),
        ({"environ": {"LAKELOOP_RAY_ADRESS": "x"}}, "ray.adress"),
        ({"environ": {"LAKELOOP_NOPE": "x"}}, "LAKELOOP_NOPE"),
        ({"environ": {"LAKELOOP_SERVE_PORT": "eighty"}}, "serve.port"),
        ({"environ": {}, "ray_adress": "x"}, "ray.adress"),
        ({"environ": {}, "colour": "x"}, "colour"),
    ],
)
def test_unknown_or_bad_key_is_an_error_naming_it(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(**kwargs)


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    f = tmp_path / "lakeloop.yaml"
    f.write_text("ray:\n  adress: 127.0.0.1:6379\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, environ={})
    assert "ray.adress" in str(err.value) and str(f) in str(err.value)


def test_remote_lake_root_and_services_are_wired(tmp_path):
    cfg = load_config(
        {"lake": {"root": "s3://bucket/lake", "storage_options": {"AWS_REGION": "eu-west-1"}},
         "mlflow": {"tracking_uri": "http://127.0.0.1:5999"},
         "ray": {"address": "ray://127.0.0.1:10001"}},
        environ={},
    )
    ll = lakeloop.connect(cfg)
    assert ll.lake.root == "s3://bucket/lake"
    assert ll.lake.table_uri("raw.events") == "s3://bucket/lake/raw/events"
    assert ll.lake.storage_options == {"AWS_REGION": "eu-west-1"}
    assert ll.mlflow.tracking_uri == "http://127.0.0.1:5999"
    kw = ray_init_kwargs(cfg)
    assert kw["address"] == "ray://127.0.0.1:10001"
    assert kw["runtime_env"]["env_vars"]["LAKELOOP_LAKE_ROOT"] == "s3://bucket/lake"
    assert kw["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"


def test_remote_lake_without_mlflow_uri_says_what_to_set():
    cfg = load_config({"lake": {"root": "s3://bucket/lake"}}, environ={})
    with pytest.raises(ConfigError, match="mlflow.tracking_uri"):
        cfg.tracking_uri


def test_unreachable_mlflow_server_is_a_connect_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    ll = lakeloop.connect(mlflow_tracking_uri="http://127.0.0.1:9", lake_root="./lake")
    with pytest.raises(ConnectError, match=r"127\.0\.0\.1:9"):
        ll.experiment_id()


def test_local_ray_defaults_bind_loopback_dashboard():
    kw = ray_init_kwargs(load_config(environ={}))
    assert kw["address"] == "local"
    assert kw["dashboard_host"] == "127.0.0.1"


def test_config_crosses_into_ray_as_plain_data():
    import pickle

    cfg = load_config(environ={})
    data = cfg.to_dict()
    assert isinstance(data["lake"], dict)
    assert load_config(pickle.loads(pickle.dumps(data)), environ={}).lake.root == cfg.lake.root


def test_mlflow_store_is_a_sqlite_file_under_the_lake(ll, lake_root):
    exp = ll.experiment_id()
    run = ll.mlflow.create_run(exp)
    ll.mlflow.log_metric(run.info.run_id, "auc", 0.91)
    ll.mlflow.set_terminated(run.info.run_id)
    assert (lake_root / "mlflow.db").is_file()
    again = lakeloop.connect(lake_root=str(lake_root))
    assert again.mlflow.get_run(run.info.run_id).data.metrics["auc"] == 0.91
    assert again.experiment_id() == exp
    assert Path(lake_root / "mlartifacts").as_uri() in ll.mlflow.get_experiment(exp).artifact_location


def test_a_named_database_keeps_artifacts_under_the_lake_and_a_server_decides_its_own(tmp_path):
    """MLflow's default for a database is ./mlruns in whatever directory the process ran in (a cluster's
    nodes each had their own, and a bench run left one in the repository)."""
    named = lakeloop.connect(lake_root=str(tmp_path / "lake"), mlflow_tracking_uri=f"sqlite:///{tmp_path}/other.db")
    exp = named.mlflow.get_experiment(named.experiment_id())
    assert exp.artifact_location == (tmp_path / "lake" / "mlartifacts").as_uri()
    assert not (tmp_path / "mlruns").exists()
    served = lakeloop.connect(lake_root=str(tmp_path / "lake2"), mlflow_tracking_uri="http://127.0.0.1:5000")
    assert served.config.artifact_location is None


def test_s3_lake_root_is_wired_to_delta_up_to_the_connection():
    """An s3:// root reaches delta-rs' object store with the storage options (a closed loopback endpoint)."""
    cfg = load_config({"lake": {"root": "s3://bucket/lake", "storage_options": {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "max_retries": "0", "connect_timeout": "1s"}},
        "mlflow": {"tracking_uri": "http://127.0.0.1:9"}}, environ={})
    ll = lakeloop.connect(cfg)
    with pytest.raises(ConnectError, match=r"s3://bucket/lake.*127\.0\.0\.1:9"):
        ll.lake.table("raw.events").exists()
    with pytest.raises(ConnectError, match="storage_options"):
        ll.lake.create("raw.events", {"id": "string"})
