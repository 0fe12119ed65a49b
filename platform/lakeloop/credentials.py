"""Secrets in the config: kept out of everything that leaves the driver, read back where they are needed.

The credential fields are ``lake.storage_options`` (every key but the few plain
settings in :data:`PLAIN_STORAGE_OPTIONS`), the password (user info and
secret-looking query parameters) of ``mlflow.tracking_uri`` and
``mlflow.registry_uri``, ``serve.admin_token``, ``serve.feedback_token`` and
``online.read_token``.

:meth:`lakeloop.config.Config.to_dict` (what crosses into Ray actors and jobs)
drops them: URIs travel with the password replaced by ``***``. A driver that
holds secrets writes them to ``<lake>/_secrets/config.json`` (mode 0600, folder
0700) before it hands a config to Ray; :func:`lakeloop.config.load_config` reads
that file back by lake root, so a ``connect()`` inside an actor or a job gets the
full values.

A remote lake (``s3://``) has no such file, and its secrets are written nowhere:
every process finds the object store's credentials in its own environment, as
a cluster's nodes do (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, or an instance / web-identity role; MLflow's in
``LAKELOOP_MLFLOW_TRACKING_URI``). Secret ``lake.storage_options`` given to
``connect()`` serve that process only: Ray workers, actors, Ray Data read tasks
and jobs get the plain options (endpoint, region, ``AWS_ALLOW_HTTP``) and their
own environment's credentials (:mod:`lakeloop.lake.store`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"
SECRETS_DIR = "_secrets"
SECRETS_FILE = "config.json"

# storage options that say where and how, not who: they travel; every other key is a secret
PLAIN_STORAGE_OPTIONS = re.compile(
    r"(AWS_|AZURE_|GOOGLE_)?(REGION|DEFAULT_REGION|ENDPOINT|ENDPOINT_URL|ALLOW_HTTP|ALLOW_INVALID_CERTIFICATES|"
    r"S3_ALLOW_UNSAFE_RENAME|ALLOW_UNSAFE_RENAME|VIRTUAL_HOSTED_STYLE_REQUEST|S3_LOCKING_PROVIDER|"
    r"CONDITIONAL_PUT|USE_EMULATOR|STORAGE_ACCOUNT_NAME|ACCOUNT_NAME|BUCKET|BUCKET_NAME|TIMEOUT|CONNECT_TIMEOUT|"
    r"POOL_IDLE_TIMEOUT|MAX_RETRIES|RETRY_TIMEOUT|USE_FABRIC_ENDPOINT|DISABLE_TAGGING|PROXY_URL)",
    re.IGNORECASE,
)
_SECRET_QUERY = re.compile(r"pass|secret|token|key|credential|signature|sig|auth", re.IGNORECASE)
TOKEN_FIELDS = (("serve", "admin_token"), ("serve", "feedback_token"), ("online", "read_token"))
URI_FIELDS = (("mlflow", "tracking_uri"), ("mlflow", "registry_uri"))


def is_secret_option(key: str) -> bool:
    return not PLAIN_STORAGE_OPTIONS.fullmatch(str(key))


def redact_uri(uri: str | None) -> str | None:
    """The URI with its password (or bare user-info token) and secret-looking query values as ``***``."""
    if not uri or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user}:{REDACTED}@{host}" if user else f"{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_QUERY.search(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:  # nothing secret: as given (urlunsplit would turn
        return uri                                        # sqlite:////abs/path into sqlite://abs/path)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def split(data: Mapping[str, Any]) -> tuple[dict, dict]:
    """A config dict -> (public copy, secrets): the public copy keeps no credential."""
    public = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    secret: dict[str, dict] = {}
    lake = public.get("lake") or {}
    options = dict(lake.get("storage_options") or {})
    hidden = {k: v for k, v in options.items() if is_secret_option(k)}
    if hidden:
        lake["storage_options"] = {k: v for k, v in options.items() if k not in hidden}
        secret.setdefault("lake", {})["storage_options"] = hidden
    for section, key in URI_FIELDS:
        value = (public.get(section) or {}).get(key)
        shown = redact_uri(value)
        if shown != value:
            public[section][key] = shown
            secret.setdefault(section, {})[key] = value
    for section, key in TOKEN_FIELDS:
        value = (public.get(section) or {}).get(key)
        if value:
            public[section][key] = None
            secret.setdefault(section, {})[key] = value
    return public, secret


def secrets_path(lake_root: str) -> Path | None:
    """``<lake>/_secrets/config.json`` for a local lake; None for a remote one."""
    root = lake_root[len("file://"):] if lake_root.startswith("file://") else lake_root
    if "://" in root:
        return None
    return Path(root, SECRETS_DIR, SECRETS_FILE)


def private_dir(lake_root: str) -> Path | None:
    path = secrets_path(lake_root)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    return path.parent


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(data: Mapping[str, Any]) -> Path | None:
    """Keep the secrets of a (full) config dict in its lake's secrets file; merged with what is there.

    Returns the path written, or None when there is nothing secret or the lake is remote.
    """
    from lakeloop.errors import ConfigError

    root = (data.get("lake") or {}).get("root") or ""
    path = secrets_path(root)
    _, secret = split(data)
    if path is None or not secret:
        return None
    current = load(root)
    merged = {s: dict(current.get(s) or {}) for s in set(current) | set(secret)}
    for section, values in secret.items():
        for key, value in values.items():
            if isinstance(value, Mapping):
                merged[section][key] = {**(merged[section].get(key) or {}), **value}
            else:
                merged[section][key] = value
    if merged == current:
        return path
    try:
        private_dir(root)
        write_private(path, json.dumps(merged, sort_keys=True))
    except OSError as exc:
        raise ConfigError(f"cannot keep the config's secrets in {path} ({exc.strerror or exc}): the lake root "
                          f"{root} must be writable, or give the secrets to every Ray node in its "
                          "environment (LAKELOOP_* variables)") from exc
    return path


def load(lake_root: str) -> dict:
    """The lake's secrets file as a dict ({} when there is none or it cannot be read)."""
    path = secrets_path(lake_root)
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def hydrate(data: dict) -> dict:
    """Fill what :func:`split` took out of a config dict back in from its lake's secrets file.

    A token or storage option is filled where the config has none; a URI where the
    config holds exactly the redacted form of the file's URI.
    """
    root = (data.get("lake") or {}).get("root") or ""
    stored = load(root)
    if not stored:
        return data
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    options = ((stored.get("lake") or {}).get("storage_options")) or {}
    if options:
        current = dict(out["lake"].get("storage_options") or {})
        out["lake"]["storage_options"] = {**{k: str(v) for k, v in options.items()}, **current}
    for section, key in URI_FIELDS:
        full = (stored.get(section) or {}).get(key)
        if full and out[section].get(key) == redact_uri(full):
            out[section][key] = full
    for section, key in TOKEN_FIELDS:
        value = (stored.get(section) or {}).get(key)
        if value and section in out and key in out[section] and not out[section].get(key):
            out[section][key] = value
    return out


def secret_values(data: Mapping[str, Any]) -> list[str]:
    """Every secret string of a config dict (for checks that nothing leaked)."""
    _, secret = split(data)
    out = []
    for values in secret.values():
        for value in values.values():
            out += [str(v) for v in value.values()] if isinstance(value, Mapping) else [str(value)]
    return out


def uri_secrets(*uris: str | None) -> dict[str, str]:
    """What to replace in text so that none of these URIs' passwords shows: full URI -> redacted, password -> ***."""
    from urllib.parse import quote, unquote

    out: dict[str, str] = {}
    for uri in uris:
        shown = redact_uri(uri)
        if not uri or shown == uri:
            continue
        out[uri] = shown
        parts = urlsplit(uri)
        userinfo = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
        secret = userinfo.split(":", 1)[1] if ":" in userinfo else userinfo
        for form in {secret, unquote(secret), quote(unquote(secret), safe="")}:
            if len(form) >= 4:
                out[form] = REDACTED
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if _SECRET_QUERY.search(key) and len(value) >= 4:
                out[value] = REDACTED
    return dict(sorted(out.items(), key=lambda kv: -len(kv[0])))  # longest first: a URI before its password


def scrub(text: str, replacements: Mapping[str, str]) -> str:
    for secret, shown in replacements.items():
        text = text.replace(secret, shown)
    return text


def scrub_exception(exc: BaseException, replacements: Mapping[str, str]) -> None:
    """Take the secrets out of an exception's message (and its causes') in place; its type stays."""
    seen = 0
    while exc is not None and seen < 8:
        exc.args = tuple(scrub(a, replacements) if isinstance(a, str) else a for a in exc.args)
        if isinstance(getattr(exc, "message", None), str):
            try:
                exc.message = scrub(exc.message, replacements)
            except AttributeError:  # a read-only property
                pass
        exc = exc.__cause__ or exc.__context__
        seen += 1


_CLIENT_CLASS = None


def _no_run_url(run_id: str) -> None:
    """Stands in for MLflow's run-URL print on a client whose tracking URI carries a password."""


def _redacting_client_class():
    """``MlflowClient`` whose public methods raise exceptions without the store URIs' passwords.

    MLflow puts the request URL, user info included, in its error messages; those reach
    job logs and HTTP answers. Built on first use (MLflow is a heavy import).
    """
    global _CLIENT_CLASS
    if _CLIENT_CLASS is None:
        import functools

        from mlflow.tracking import MlflowClient

        class RedactingMlflowClient(MlflowClient):
            def __init__(self, tracking_uri=None, registry_uri=None):
                super().__init__(tracking_uri=tracking_uri, registry_uri=registry_uri)
                self._lakeloop_redact = uri_secrets(tracking_uri, registry_uri)
                # on a tracking server, MLflow prints "View run ... at: <tracking URI>/#/..." to stdout
                # (worker and job logs) when a run ends, user info and all; its only switch is the
                # process-wide MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT, so this client just says nothing
                tracking = getattr(self, "_tracking_client", None)
                if tracking is not None and hasattr(tracking, "_log_url"):
                    tracking._log_url = _no_run_url

            def __getattribute__(self, name):
                attr = super().__getattribute__(name)
                if name.startswith("_") or not callable(attr):
                    return attr
                replacements = super().__getattribute__("_lakeloop_redact")

                @functools.wraps(attr)
                def call(*args, **kwargs):
                    try:
                        return attr(*args, **kwargs)
                    except Exception as exc:
                        scrub_exception(exc, replacements)
                        raise

                return call

        RedactingMlflowClient.__module__ = __name__
        RedactingMlflowClient.__qualname__ = "RedactingMlflowClient"
        _CLIENT_CLASS = RedactingMlflowClient
    return _CLIENT_CLASS


def __getattr__(name: str):  # lets pickle find the lazily built class
    if name == "RedactingMlflowClient":
        return _redacting_client_class()
    raise AttributeError(name)


def mlflow_client(tracking_uri: str, registry_uri: str | None = None):
    """An MLflow client; when a store URI carries a password, one whose errors never show it."""
    from mlflow.tracking import MlflowClient

    if not uri_secrets(tracking_uri, registry_uri):
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    return _redacting_client_class()(tracking_uri=tracking_uri, registry_uri=registry_uri)
