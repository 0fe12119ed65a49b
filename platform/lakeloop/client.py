"""``lakeloop.connect()``: the one object notebooks, the CLI, jobs and Serve apps start from."""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, Mapping

from lakeloop.config import Config, load_config
from lakeloop.errors import ConnectError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from lakeloop.features.store import FeatureStore
    from lakeloop.lake import Lake


def ray_init_kwargs(config: Config) -> dict:
    """What :meth:`Lakeloop.ensure_ray` passes to ``ray.init`` for this config.

    No address: a fresh local Ray (dashboard on ``ray.dashboard_host``), unless
    this process runs inside a Ray job, whose ``RAY_ADDRESS`` is then joined.
    Workers get the config as ``LAKELOOP_*`` variables, so a ``connect()`` inside a
    task or actor sees the same lake and MLflow store.
    """
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    env = {
        "LAKELOOP_LAKE_ROOT": config.lake.root,
        "LAKELOOP_RAY_NAMESPACE": config.ray.namespace,
    }
    if config.lake.storage_options:
        import json

        env["LAKELOOP_LAKE_STORAGE_OPTIONS"] = json.dumps(config.lake.storage_options)
    if config.mlflow.tracking_uri or not config.lake_is_remote:
        env["LAKELOOP_MLFLOW_TRACKING_URI"] = config.tracking_uri
        env["MLFLOW_TRACKING_URI"] = config.tracking_uri
    if config.mlflow.registry_uri:
        env["LAKELOOP_MLFLOW_REGISTRY_URI"] = config.mlflow.registry_uri
    kwargs: dict[str, Any] = {
        "namespace": config.ray.namespace,
        "runtime_env": {"env_vars": env},
        "log_to_driver": False,
    }
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(
            address="local",
            include_dashboard=True,
            dashboard_host=config.ray.dashboard_host,
        )
        if config.ray.dashboard_port is not None:
            kwargs["dashboard_port"] = config.ray.dashboard_port
        if config.ray.num_cpus is not None:
            kwargs["num_cpus"] = config.ray.num_cpus
    return kwargs


AGENT_PORT = 52365  # Ray's fixed default for the dashboard agent, which runs the job server's jobs


def _port_taken(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@contextmanager
def _free_agent_port(local: bool):
    """While a local Ray starts: a free dashboard-agent port if another Ray on this machine holds 52365.

    ``ray.init()`` takes no argument for that port, and a second local Ray whose agent cannot bind it
    has no job agent ("No available agent to submit job"), so retrain jobs could never be submitted.
    This swaps the default of ``RayParams`` (a private Ray API) for the duration of ``ray.init``; if
    that API changes shape, nothing is swapped.
    """
    import inspect

    if not local or not _port_taken(AGENT_PORT):
        yield
        return
    try:
        from ray._private.parameter import RayParams

        init = RayParams.__init__
        names = [p.name for p in inspect.signature(init).parameters.values()
                 if p.default is not inspect.Parameter.empty]
        index = names.index("dashboard_agent_listen_port")
        saved = init.__defaults__
        if len(saved) != len(names) or saved[index] != AGENT_PORT:
            raise ValueError("RayParams changed")
    except (ImportError, ValueError, TypeError, AttributeError):
        yield
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init.__defaults__ = saved[:index] + (port,) + saved[index + 1:]
    try:
        yield
    finally:
        init.__defaults__ = saved


class Lakeloop:
    """Entry point to the lake, and (as later parts land) features, models and serving.

    Build it with :func:`lakeloop.connect`. Heavy libraries (Ray, MLflow) load
    on first use, so creating one is cheap.
    """

    def __init__(self, config: Config):
        self.config = config

    def __repr__(self) -> str:
        return f"Lakeloop(lake={self.config.lake.root!r}, mlflow={self._tracking_repr()!r})"

    def _tracking_repr(self) -> str:
        try:
            return self.config.tracking_uri
        except Exception:  # a remote lake without MLflow configured
            return "<unset>"

    @cached_property
    def lake(self) -> "Lake":
        from lakeloop.lake import Lake

        if "://" not in self.config.lake.root:
            os.makedirs(self.config.lake.root, exist_ok=True)
        return Lake(self.config.lake.root, self.config.lake.storage_options, ensure_ray=self.ensure_ray)

    @cached_property
    def features(self) -> "FeatureStore":
        """The feature store: definitions, materialization, training frames, online values."""
        from lakeloop.features.store import FeatureStore

        return FeatureStore(self)

    # -- Ray -------------------------------------------------------------------
    def ensure_ray(self):
        """Ray, initialised on first use from the config (see :func:`ray_init_kwargs`)."""
        import ray

        if ray.is_initialized():
            return ray
        kwargs = ray_init_kwargs(self.config)
        try:
            with _free_agent_port(kwargs.get("address") == "local"):
                ray.init(**kwargs)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            raise ConnectError(
                f"cannot connect to Ray at {kwargs.get('address')!r}: {exc}. Check ray.address "
                "(LAKELOOP_RAY_ADDRESS), that the cluster is up, and RAY_AUTH_MODE=token with its token"
            ) from exc
        return ray

    @property
    def dashboard_url(self) -> str | None:
        """The Ray dashboard's URL, once Ray runs in this process."""
        import ray

        if not ray.is_initialized():
            return None
        url = ray.worker.get_dashboard_url()
        return f"http://{url}" if url and "://" not in url else url or None

    # -- MLflow ----------------------------------------------------------------
    @cached_property
    def mlflow(self) -> "MlflowClient":
        """An MLflow client on this lake's tracking store and registry (no global state)."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.config.tracking_uri, registry_uri=self.config.registry_uri)

    def experiment_id(self, name: str | None = None) -> str:
        """The experiment's id, created (artifacts under the lake root) on first use."""
        name = name or self.config.mlflow.experiment
        client = self.mlflow
        try:
            exp = client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            return client.create_experiment(name, artifact_location=self.config.artifact_location)
        except Exception as exc:
            if type(exc).__name__ == "MlflowException" and "already exists" in str(exc):
                return client.get_experiment_by_name(name).experiment_id
            if type(exc).__name__ in ("MlflowException", "ConnectionError", "RestException") or isinstance(
                exc, OSError
            ):
                raise ConnectError(
                    f"cannot reach the MLflow tracking store at {self.config.tracking_uri}: {exc}"
                ) from exc
            raise

    # -- AutoML and the model registry -------------------------------------------
    @cached_property
    def automl(self):
        """AutoML on Ray Tune (:class:`lakeloop.automl.AutoML`): ``ll.automl.run(frame, target=...)``."""
        from lakeloop.automl import AutoML

        return AutoML(self)

    @cached_property
    def models(self):
        """The model registry (:class:`lakeloop.registry.ModelRegistry`): versions, gate, aliases, rebuild."""
        from lakeloop.registry import ModelRegistry

        return ModelRegistry(self)

    @cached_property
    def serving(self):
        """Serving on Ray Serve (:class:`lakeloop.serving.service.Serving`): up, deploy, traffic, promote."""
        from lakeloop.serving.service import Serving

        return Serving(self)


def connect(config: str | os.PathLike | Mapping[str, Any] | Config | None = None, **overrides: Any) -> Lakeloop:
    """Connect to a lakeloop deployment.

    ``connect()`` uses embedded defaults (``./lake``, sqlite MLflow under it,
    local Ray on demand); ``connect("lakeloop.yaml")`` reads a file; keyword
    overrides such as ``connect(lake_root="/tmp/lake")`` win over both. See
    :mod:`lakeloop.config` for the precedence.
    """
    return Lakeloop(load_config(config, **overrides))
