"""``lakeloop.connect()``: the one object notebooks, the CLI, jobs and Serve apps start from."""

from __future__ import annotations

import os
import time
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

    No address: a fresh local Ray whose node IP is loopback (every socket of it on
    127.0.0.1; dashboard on ``ray.dashboard_host``), unless this process runs inside a
    Ray job, whose ``RAY_ADDRESS`` is then joined. Workers get the config as
    ``LAKELOOP_*`` variables without its secrets (URIs with the password as ``***``),
    so a ``connect()`` inside a task or actor sees the same lake and MLflow store and
    reads the secrets from the lake's ``_secrets/`` file (see :mod:`lakeloop.credentials`).
    """
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    inherited = _job_env_vars()  # inside a Ray job: Ray refuses a driver env var its job's runtime env sets too
    kwargs: dict[str, Any] = {
        "namespace": config.ray.namespace,
        "runtime_env": {"env_vars": {k: v for k, v in worker_env(config).items() if k not in inherited}},
        "log_to_driver": False,
    }
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(
            address="local",
            include_dashboard=True,
            dashboard_host=config.ray.dashboard_host,
            _node_ip_address=LOOPBACK,
        )
        if config.ray.dashboard_port is not None:
            kwargs["dashboard_port"] = config.ray.dashboard_port
        if config.ray.num_cpus is not None:
            kwargs["num_cpus"] = config.ray.num_cpus
    return kwargs


def _job_env_vars() -> dict:
    """The env vars of the runtime env of the Ray job this process is the driver of (``{}`` outside a job).

    A job submitted with the lake settings in its runtime env (``lakeloop job submit``) already gives
    them to every worker of the job; the driver's ``ray.init`` then leaves them out.
    """
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def worker_env(config: Config) -> dict[str, str]:
    """The config as ``LAKELOOP_*`` variables for Ray workers and jobs, without its secrets.

    Shared by the local Ray's runtime env and by submitted jobs (:mod:`lakeloop.submission`).
    """
    import json

    from lakeloop.credentials import is_secret_option, redact_uri

    env = {
        "LAKELOOP_LAKE_ROOT": config.lake.root,
        "LAKELOOP_RAY_NAMESPACE": config.ray.namespace,
    }
    plain = {k: v for k, v in config.lake.storage_options.items() if not is_secret_option(k)}
    if plain:
        env["LAKELOOP_LAKE_STORAGE_OPTIONS"] = json.dumps(plain)
    if config.mlflow.tracking_uri or not config.lake_is_remote:
        shown = redact_uri(config.tracking_uri)
        env["LAKELOOP_MLFLOW_TRACKING_URI"] = shown
        if shown == config.tracking_uri:  # MLflow in a worker reads it as is; never with a password in it
            env["MLFLOW_TRACKING_URI"] = shown
    if config.mlflow.registry_uri:
        env["LAKELOOP_MLFLOW_REGISTRY_URI"] = redact_uri(config.mlflow.registry_uri)
    return env


LOOPBACK = "127.0.0.1"
# Ray turns a loopback node IP into the machine's address unless it believes it runs a one-machine
# Ray (as on Windows/macOS); this documented switch makes it keep 127.0.0.1, and it is inherited by
# every process of the local Ray (GCS, raylet, agents, workers). `ray start` reads it too.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# how long the raylet waits for its agents (to register, to write their ports): Ray's defaults are too
# short on a busy machine, where the raylet then aborts and the start fails ("timed out during startup")
SLOW_START_ENV = {"RAY_agent_register_timeout_ms": "120000", "RAY_raylet_start_wait_time_s": "60"}


@contextmanager
def loopback_node(local: bool = True):
    """While a local Ray starts: its node IP stays 127.0.0.1, so all its sockets bind loopback."""
    if not local:
        yield
        return
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in (SINGLE_MACHINE_ENV, *SLOW_START_ENV)}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    for key, value in SLOW_START_ENV.items():
        os.environ.setdefault(key, value)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _is_loopback(address: str) -> bool:
    """Whether a Ray address (``host:port``, ``ray://host:port``, ``http://host:port``) names this machine's loopback."""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def loopback_worker_setup() -> None:
    """Runs in every worker of a local Ray (``worker_process_setup_hook``): gRPC servers that Ray code binds
    to all interfaces (Serve replicas' inter-deployment server binds ``[::]:0`` whatever the node IP)
    bind 127.0.0.1 instead, when this node's IP is loopback. Ray offers no setting for that port."""
    if os.environ.get(SINGLE_MACHINE_ENV) != "0":
        return
    try:
        from ray._common import tls_utils
    except ImportError:  # pragma: no cover - Ray moved it: nothing to adjust
        return
    original = tls_utils.add_port_to_grpc_server
    if getattr(original, "_lakeloop_loopback", False):
        return

    def add_port_on_loopback(server, address):
        host, _, port = str(address).rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"{LOOPBACK}:{port}"
        return original(server, address)

    add_port_on_loopback._lakeloop_loopback = True
    tls_utils.add_port_to_grpc_server = add_port_on_loopback


@contextmanager
def keeping_sigterm_handler():
    """A driver's ``ray.init`` installs Ray's own SIGTERM handler, which ends the process at once; a Python
    handler this process had set before (``serve up``'s, which stops what it started) is put back after it."""
    import signal
    import threading

    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def start_local_ray(**kwargs):
    """``ray.init(address="local", **kwargs)`` on loopback; a failed start frees what it bound.

    Ray's own failure ("The current node timed out during startup", a dashboard that
    could not start, ...) becomes a :class:`ConnectError` that names the ports and what
    to do; the processes that start left behind are stopped by PID, so a retry finds
    the ports free.
    """
    import ray

    kwargs = {"address": "local", "_node_ip_address": LOOPBACK, **kwargs}
    local = kwargs.get("address") == "local"
    if local:
        runtime_env = dict(kwargs.get("runtime_env") or {})
        runtime_env.setdefault("worker_process_setup_hook", "lakeloop.client.loopback_worker_setup")
        kwargs["runtime_env"] = runtime_env
        # the workers Ray starts ahead for the first driver have no runtime env, so none of this driver's tasks
        # and actors (which have one) can use them: on 2 cores they cost ~1.5 s of CPU while Serve starts
        # (`serve up` to the first 200 took 27.1-27.7 s without them, 29.2-29.3 s with, in alternating runs)
        kwargs["_system_config"] = {"prestart_worker_first_driver": False, **(kwargs.get("_system_config") or {})}
    error: BaseException | None = None
    left = 0
    for _attempt in range(2):  # a start that timed out on a busy machine is tried once more, from clean
        before = _descendants()
        started = time.time()
        try:
            with loopback_node(local), _free_agent_port(local):
                return ray.init(**kwargs)
        except BaseException as exc:
            if local and isinstance(exc, KeyboardInterrupt):  # stopped while it starts: what started stops too
                _clean_failed_start(before, started)
            if not local or isinstance(exc, KeyboardInterrupt):
                raise
            error = exc
            left += _clean_failed_start(before, started)
            if "timed out during startup" not in str(exc):
                break
    ports = ", ".join(f"{k.lstrip('_')}={v}" for k, v in sorted(kwargs.items()) if k.endswith("port")) or \
        "Ray's defaults (dashboard 8265, agent 52365)"
    raise ConnectError(
        f"the local Ray did not start ({type(error).__name__}: {_first_line(error)}); ports asked for: {ports}. "
        f"Stopped {left} process(es) it had started, so its ports are free again. Retry; if it keeps "
        "failing, the machine may be overloaded (raise RAY_agent_register_timeout_ms / "
        "RAY_DASHBOARD_STARTUP_TIMEOUT_S), another Ray may hold the port (set ray.dashboard_port, or "
        "ray.address to attach to it), or see the logs under /tmp/ray/session_latest/logs"
    ) from None


def attach_local_ray(record, **kwargs):
    """``ray.init`` onto the running local Ray that ``record`` (:mod:`lakeloop.platform_record`) names.

    Only the driver's settings of ``kwargs`` apply (namespace, runtime env, log_to_driver):
    the Ray is already started. This process does not own it: its ``ray.shutdown()`` (or
    exit) disconnects and leaves the Ray running for its owner. A Ray started with token
    auth needs it here too (``RAY_AUTH_MODE=token``; the token file the record names).
    """
    import ray

    if record.auth_mode == "token" and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        default = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
        if record.token_path and record.token_path != default:
            os.environ.setdefault("RAY_AUTH_TOKEN_PATH", record.token_path)
        try:  # Ray caches its config per process: make it see the mode just set
            from ray._raylet import Config as _RayConfig

            _RayConfig.initialize("")
        except Exception:  # pragma: no cover - Ray moved it; a Ray not yet initialised reads the env anyway
            pass
    attach = {k: kwargs[k] for k in ("namespace", "log_to_driver") if k in kwargs}
    runtime_env = dict(kwargs.get("runtime_env") or {})
    runtime_env.setdefault("worker_process_setup_hook", "lakeloop.client.loopback_worker_setup")
    try:
        with loopback_node(True):
            return ray.init(address=record.gcs_address, _node_ip_address=LOOPBACK, runtime_env=runtime_env,
                            **attach)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        raise ConnectError(
            f"the Ray of lake {record.lake_root} runs (GCS {record.gcs_address}, owner pid {record.pid}) but this "
            f"process cannot attach to it: {_first_line(exc)}. Check RAY_AUTH_MODE=token and the token file "
            f"({record.token_path or '~/.ray/auth_token'}), or set ray.address to the Ray to use") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _descendants() -> set[int]:
    try:
        import psutil

        return {p.pid for p in psutil.Process().children(recursive=True)}
    except Exception:  # psutil comes with Ray; without it nothing is tracked
        return set()


def _clean_failed_start(before: set[int], started: float) -> int:
    """``ray.shutdown()``, then stop by PID every process this start left running: new children of this
    process, and processes of the Ray session it created (orphans that outlived their parent)."""
    import glob
    import signal

    import ray

    try:
        ray.shutdown()
    except Exception:
        pass
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return 0
    sessions = [os.path.basename(d) for d in glob.glob(f"/tmp/ray/session_*_{os.getpid()}")
                if os.path.getmtime(d) >= started - 1]
    victims = {}
    for p in psutil.Process().children(recursive=True):
        if p.pid not in before:
            victims[p.pid] = p
    if sessions:
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info.get("cmdline") or [])
            if any(s in cmd for s in sessions):
                victims.setdefault(p.pid, p)
    victims.pop(os.getpid(), None)
    for p in victims.values():
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(list(victims.values()), timeout=10)
    return len(victims)


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
    from lakeloop.ports import free_port

    port = free_port()
    init.__defaults__ = saved[:index] + (port,) + saved[index + 1:]
    try:
        yield
    finally:
        init.__defaults__ = saved


def _redact_text(text: str, uri: str | None) -> str:
    """``text`` with the full ``uri`` (and its password) replaced by the redacted URI."""
    from lakeloop.credentials import redact_uri

    shown = redact_uri(uri)
    if not uri or shown == uri:
        return text
    from urllib.parse import urlsplit

    text = text.replace(uri, shown)
    password = urlsplit(uri).password
    return text.replace(password, "***") if password else text


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
            from lakeloop.credentials import redact_uri

            return redact_uri(self.config.tracking_uri)
        except Exception:  # a remote lake without MLflow configured
            return "<unset>"

    @cached_property
    def lake(self) -> "Lake":
        from lakeloop.lake import Lake

        if "://" not in self.config.lake.root:
            try:
                os.makedirs(self.config.lake.root, exist_ok=True)
            except OSError as exc:
                from lakeloop.errors import LakeStorageError

                raise LakeStorageError(
                    f"cannot create the lake folder {self.config.lake.root} ({exc.strerror or exc}): point "
                    "lake.root (--lake, LAKELOOP_LAKE_ROOT) at a folder this user can write") from None
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

        if not self.__dict__.get("_secrets_kept"):  # before any config goes to an actor or a job
            self.keep_secrets()
            self._secrets_kept = True
        if ray.is_initialized():
            return ray
        kwargs = ray_init_kwargs(self.config)
        if kwargs.get("address") == "local":
            with keeping_sigterm_handler():
                self._start_or_attach(kwargs)
            return ray
        try:
            # Ray rewrites a loopback address to the machine's IP unless it is told the cluster is one
            # machine; a Ray on loopback listens only there, so keep the address as given
            with loopback_node(_is_loopback(str(kwargs.get("address") or ""))), keeping_sigterm_handler():
                ray.init(**kwargs)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            raise ConnectError(
                f"cannot connect to Ray at {kwargs.get('address')!r}: {exc}. Check ray.address "
                "(LAKELOOP_RAY_ADDRESS), that the cluster is up, and RAY_AUTH_MODE=token with its token"
            ) from exc
        return ray

    def _start_or_attach(self, kwargs: dict) -> None:
        """One Ray per lake: attach to the one this lake's record names, else start it and record it.

        Under the lake's platform lock, so two processes starting at once make one Ray. The
        process that starts it owns it (it stops when that process exits, and the record goes
        with it); a stale record (owner or GCS gone) is replaced by the fresh start.
        """
        import atexit
        import logging

        from lakeloop import platform_record

        root = self.config.lake.root
        with platform_record.locked(root):
            record = platform_record.read(root)
            if record is not None:
                stale = record.stale_reason()
                if stale is None:
                    attach_local_ray(record, **kwargs)
                    return
                logging.getLogger(__name__).info("replacing the stale Ray record of lake %s: %s", root, stale)
            start_local_ray(**kwargs)
            record = platform_record.capture(root)
            platform_record.write(record)
        # runs before Ray's own exit hook (registered earlier, atexit runs last-in first-out)
        atexit.register(platform_record.remove, root, record.pid, record.session_dir)

    @property
    def platform(self):
        """The running local Ray of this lake (:class:`~lakeloop.platform_record.PlatformRecord`), or ``None``.

        Read from the lake's record; a stale record counts as none. Starts nothing.
        """
        from lakeloop import platform_record

        record = platform_record.read(self.config.lake.root)
        return record if record is not None and record.stale_reason() is None else None

    def keep_secrets(self):
        """Write this config's secrets to the lake's ``_secrets/config.json`` (0600) for actors and jobs."""
        from lakeloop.credentials import save

        return save(self.config.to_dict(secrets=True))

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
        from lakeloop.credentials import mlflow_client

        return mlflow_client(self.config.tracking_uri, self.config.registry_uri)

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
                    f"cannot reach the MLflow tracking store at {self._tracking_repr()}: "
                    f"{_redact_text(str(exc), self.config.tracking_uri)}. Check mlflow.tracking_uri "
                    "(LAKELOOP_MLFLOW_TRACKING_URI), that the server is up, and its credentials"
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

    def status(self, *, events_limit: int = 10):
        """The platform of this lake on one screen (:func:`lakeloop.status.status`); never starts Ray."""
        from lakeloop.status import status
        return status(self, events_limit=events_limit)


def connect(config: str | os.PathLike | Mapping[str, Any] | Config | None = None, **overrides: Any) -> Lakeloop:
    """Connect to a lakeloop deployment.

    ``connect()`` uses embedded defaults (``./lake``, sqlite MLflow under it,
    local Ray on demand); ``connect("lakeloop.yaml")`` reads a file; keyword
    overrides such as ``connect(lake_root="/tmp/lake")`` win over both. See
    :mod:`lakeloop.config` for the precedence.
    """
    return Lakeloop(load_config(config, **overrides))
