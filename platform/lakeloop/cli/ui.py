"""``lakeloop ui``: the MLflow UI on this lake's tracking store and registry, on loopback."""

from __future__ import annotations

import typer

from lakeloop.cli.output import console, print_json


def ui_command(ll, host: str, port: int, workers: int) -> list[str]:
    """The ``mlflow ui`` command line for this lake (runs and models, artifacts where the runs logged them)."""
    import sys

    from lakeloop.credentials import redact_uri

    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port), "--workers", str(workers)]
    if redact_uri(ll.config.tracking_uri) == ll.config.tracking_uri:  # one with a password goes by env (ui_env)
        cmd += ["--backend-store-uri", ll.config.tracking_uri]
    registry = ll.config.registry_uri
    if registry and registry != ll.config.tracking_uri and redact_uri(registry) == registry:
        cmd += ["--registry-store-uri", registry]
    return cmd


def served_ui(ll) -> str | None:
    """The UI's URL when the tracking store is an MLflow server (``http(s)://``), without its password.

    That server already is the UI (runs, models, artifacts): a second one on this machine would
    need the server's database, which the client never sees. None for a database or file store.
    """
    from urllib.parse import urlsplit

    from lakeloop.credentials import redact_uri

    uri = ll.config.tracking_uri
    if urlsplit(uri).scheme.lower() not in ("http", "https"):
        return None
    parts = urlsplit(redact_uri(uri))
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"


def ui_env(ll) -> dict:
    """The environment for ``mlflow ui``: store URIs that carry a password go here, never on its command line."""
    import os

    from lakeloop.credentials import redact_uri

    env = dict(os.environ)
    tracking, registry = ll.config.tracking_uri, ll.config.registry_uri
    if redact_uri(tracking) != tracking:
        env["MLFLOW_BACKEND_STORE_URI"] = tracking
    if registry and registry != tracking and redact_uri(registry) != registry:
        env["MLFLOW_REGISTRY_STORE_URI"] = registry
    return env


def ui(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(5000, "--port", "-p"),
    workers: int = typer.Option(1, "--workers"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the URL and command instead of starting it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with --dry-run, or for a tracking server)."),
):
    """Start the MLflow UI on this lake's runs and models (Ctrl-C stops it)."""
    import os
    import signal
    import subprocess

    ll = ctx.obj.connect()
    served = served_ui(ll)
    if served is not None:  # the tracking server is the UI: say where, start nothing
        info = {"url": served, "command": None, "tracking_uri": ll._tracking_repr()}
        return print_json(info) if as_json else console().print(
            f"{served}\nthe MLflow UI of this lake is its tracking server (mlflow.tracking_uri); nothing to start")
    cmd = ui_command(ll, host, port, workers)
    url = f"http://{host}:{port}"
    if dry_run:
        info = {"url": url, "command": cmd, "tracking_uri": ll._tracking_repr()}
        return print_json(info) if as_json else console().print(f"{url}\n{' '.join(cmd)}")
    console().print(f"MLflow UI for {ll._tracking_repr()} at {url} (Ctrl-C stops it)")
    proc = subprocess.Popen(cmd, start_new_session=True, env=ui_env(ll))

    def _stop(signum, frame):  # SIGTERM stops it as Ctrl-C does (and a background job ignores SIGINT)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:  # its server and workers: the whole process group it leads
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
