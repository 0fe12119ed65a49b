"""Typed configuration from one YAML file plus ``LAKELOOP_*`` environment.

Precedence, lowest to highest:

1. built-in defaults (embedded: ``./lake``, sqlite MLflow under the lake, local Ray);
2. the YAML file: the ``config`` argument of :func:`lakeloop.connect`, else
   ``$LAKELOOP_CONFIG``, else ``./lakeloop.yaml`` when it exists;
3. environment variables ``LAKELOOP_<SECTION>_<KEY>`` (e.g. ``LAKELOOP_LAKE_ROOT``,
   ``LAKELOOP_RAY_ADDRESS``, ``LAKELOOP_MLFLOW_TRACKING_URI``);
4. keyword overrides passed to ``connect`` as ``section_key=value``
   (e.g. ``connect(lake_root="/tmp/lake")``).

An unknown key at any level is a :class:`~lakeloop.errors.ConfigError` that
names it. A relative ``lake.root`` in a file is resolved against the file's
folder; elsewhere against the current directory. What crosses into Ray
actors is :meth:`Config.to_dict`, plain data.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lakeloop.errors import ConfigError

ENV_PREFIX = "LAKELOOP_"
CONFIG_FILE_ENV = "LAKELOOP_CONFIG"
DEFAULT_CONFIG_FILE = "lakeloop.yaml"


@dataclass(frozen=True)
class LakeConfig:
    root: str = "./lake"
    storage_options: dict = field(default_factory=dict, repr=False)  # may hold credentials


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment: str = "lakeloop"

    def __repr__(self) -> str:  # URIs may carry a password
        from lakeloop.credentials import redact_uri

        return (f"MlflowConfig(tracking_uri={redact_uri(self.tracking_uri)!r}, "
                f"registry_uri={redact_uri(self.registry_uri)!r}, experiment={self.experiment!r})")


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None
    namespace: str = "lakeloop"
    num_cpus: int | None = None
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int | None = None  # None: 8265, or the next free port


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: str | None = field(default=None, repr=False)  # None: generated into <lake>/_serve/admin_token on first start
    feedback_token: str | None = field(default=None, repr=False)  # set: POST /v1/feedback needs it as a bearer token
    feedback_window_s: float = 604800.0  # labels are accepted for predictions answered this long ago (7 days)
    max_rows: int = 1000
    max_bytes: int = 1_000_000
    replica_cpus: float = 0.125  # per replica (ingress and model versions)
    replicas: int = 2  # per served model version: one may die and its requests are retried on another
    ingress_replicas: int = 1  # 2 keep the endpoint answering through an ingress replica's death
    # fast mode: with other requests in flight in an ingress replica, a model call waits up to this long for
    # them to join its batch (0: never waits); a lone request never waits
    batch_wait_ms: float = 2.0
    in_process: bool = False  # kept for old configs: true is mode "fast"
    # "fast": each ingress replica loads the live versions and answers without a hop (isolation by several
    # ingress replicas); "isolated": each version in its own deployment, one Ray hop per request
    mode: str = "fast"
    # "haproxy": Serve's HAProxy ingress (its stats/metrics listeners rewritten to loopback, a declared body over
    # max_bytes answered 413 before it is read), more requests/s than the Python proxy here (README, Serving);
    # where there is no haproxy binary (Ray ships one for Linux), `serve up` warns and uses the proxy. "proxy":
    # Ray Serve's Python proxy. Applies when lakeloop starts Serve in its Ray (a running Serve keeps its own).
    ingress: str = "haproxy"
    # `serve up` answers predictions from its own process while Ray and Serve start, then hands the port to
    # Serve's HAProxy (lakeloop.serving.bootstrap); false: nothing answers until the ingress does
    bootstrap: bool = True


@dataclass(frozen=True)
class OnlineConfig:
    """The online feature store's HTTP endpoint (served by its Ray actor)."""

    host: str = "127.0.0.1"
    port: int = 6566
    read_token: str | None = field(default=None, repr=False)  # None: generated into <lake>/_secrets/online_read_token on first start
    max_entities: int = 1000  # per HTTP lookup
    max_bytes: int = 1_000_000  # per HTTP request body


_SECTIONS = {"lake": LakeConfig, "mlflow": MlflowConfig, "ray": RayConfig, "serve": ServeConfig,
             "online": OnlineConfig}


@dataclass(frozen=True)
class Config:
    lake: LakeConfig = field(default_factory=LakeConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    source: str = "defaults"

    @property
    def lake_is_remote(self) -> bool:
        return "://" in self.lake.root and not self.lake.root.startswith("file://")

    @property
    def tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        if self.lake_is_remote:
            raise ConfigError(
                f"mlflow.tracking_uri is not set and lake.root {self.lake.root!r} is remote, "
                "so there is no local folder for the sqlite store; set mlflow.tracking_uri "
                "(e.g. http://mlflow:5000) in lakeloop.yaml or LAKELOOP_MLFLOW_TRACKING_URI"
            )
        return f"sqlite:///{Path(self.lake.root, 'mlflow.db')}"

    @property
    def registry_uri(self) -> str:
        return self.mlflow.registry_uri or self.tracking_uri

    @property
    def artifact_location(self) -> str | None:
        """Where new experiments keep artifacts: ``<lake>/mlartifacts`` for a local lake whose MLflow is a
        database (the embedded sqlite, or one named in ``mlflow.tracking_uri``); None lets a tracking
        server decide (or MLflow, for a lake on object storage). MLflow's own default for a database is
        ``./mlruns`` in the working directory of whichever process made the experiment."""
        server = (self.mlflow.tracking_uri or "").split(":", 1)[0].lower() in ("http", "https", "databricks")
        if server or self.lake_is_remote:
            return None
        return Path(self.lake.root, "mlartifacts").as_uri()

    def to_dict(self, *, secrets: bool = False) -> dict:
        """Plain data for Ray actors and jobs: without credentials unless ``secrets=True``.

        See :mod:`lakeloop.credentials`: the receiving ``connect()`` reads them back from
        the lake's ``_secrets/`` file or its own environment.
        """
        data = dataclasses.asdict(self)
        if secrets:
            return data
        from lakeloop.credentials import split

        return split(data)[0]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "dict") -> "Config":
        sections = {}
        for name, value in data.items():
            if name == "source":
                continue
            if name not in _SECTIONS:
                raise ConfigError(
                    f"unknown config section {name!r} in {source}; known: {', '.join(_SECTIONS)}"
                )
            sections[name] = _build_section(name, value or {}, source)
        return cls(**sections, source=source)


def _build_section(name: str, values: Mapping[str, Any], source: str):
    cls = _SECTIONS[name]
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section {name!r} in {source} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key {name}.{key} in {source}; known keys of {name!r}: "
                f"{', '.join(fields)}"
            )
        kwargs[key] = _coerce(f"{name}.{key}", fields[key], value, source)
    return cls(**kwargs)


def _coerce(path: str, f: dataclasses.Field, value: Any, source: str):
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"config key {path} in {source} may not be null")
    try:
        if kind.startswith("int"):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "bool":
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.strip().lower() in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind.startswith("str"):
            return str(value)
        if kind == "dict":
            if isinstance(value, str):
                import json

                value = json.loads(value)
            if not isinstance(value, Mapping):
                raise ValueError
            return {str(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"config key {path} in {source} has value {value!r}, which is not a valid {kind}"
        ) from exc
    return value


def _merge(base: dict, update: Mapping[str, Any]) -> dict:
    merged = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for section, values in update.items():
        if isinstance(values, Mapping) and section in merged:
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _env_layer(environ: Mapping[str, str]) -> dict:
    layer: dict[str, dict] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_FILE_ENV:
            continue
        rest = var[len(ENV_PREFIX):].lower()
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(
                f"unknown environment variable {var}: expected LAKELOOP_<SECTION>_<KEY> with a "
                f"section among {', '.join(_SECTIONS)} (or LAKELOOP_CONFIG for the file)"
            )
        key = rest[len(section) + 1:]
        layer.setdefault(section, {})[key] = value
    return layer


def _overrides_layer(overrides: Mapping[str, Any]) -> dict:
    layer: dict[str, dict] = {}
    for name, value in overrides.items():
        section = next((s for s in _SECTIONS if name.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(
                f"unknown override {name!r}: use section_key, e.g. lake_root=..., ray_address=..."
            )
        layer.setdefault(section, {})[name[len(section) + 1:]] = value
    return layer


def load_config(
    config: str | os.PathLike | Mapping[str, Any] | Config | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Config:
    """Build the effective :class:`Config` (see the module docstring for precedence)."""
    if isinstance(config, Config) and not overrides:
        return config
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, dict]] = []
    base_dir = Path.cwd()
    if isinstance(config, Config):
        layers.append(("config object", config.to_dict(secrets=True)))
    elif isinstance(config, Mapping):
        layers.append(("config mapping", dict(config)))
    else:
        path = config or environ.get(CONFIG_FILE_ENV)
        if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
            path = DEFAULT_CONFIG_FILE
        if path is not None:
            path = Path(path).expanduser().resolve()
            layers.append((str(path), _read_yaml(path)))
            base_dir = path.parent
    layers.append(("environment", _env_layer(environ)))
    layers.append(("connect() arguments", _overrides_layer(overrides)))

    merged = {name: dataclasses.asdict(cls()) for name, cls in _SECTIONS.items()}
    sources = []
    for source, layer in layers:
        Config.from_dict(layer, source)  # names the unknown key and its source
        if layer:
            sources.append(source)
        if source != "environment" and source != "connect() arguments":
            root = (layer.get("lake") or {}).get("root")
            if root and "://" not in str(root) and not Path(str(root)).expanduser().is_absolute():
                layer = _merge({}, layer)
                layer["lake"]["root"] = str(base_dir / str(root))
        merged = _merge(merged, layer)
    cfg = Config.from_dict(merged, " + ".join(sources) or "defaults")
    root = cfg.lake.root
    if root.startswith("file://"):
        root = root[len("file://"):]
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    cfg = dataclasses.replace(cfg, lake=dataclasses.replace(cfg.lake, root=root))
    from lakeloop.credentials import hydrate, secrets_path

    path = secrets_path(root)
    if path is not None and path.is_file():  # secrets a driver kept for this lake (lakeloop.credentials)
        cfg = Config.from_dict(hydrate(cfg.to_dict(secrets=True)), cfg.source)
    return cfg
