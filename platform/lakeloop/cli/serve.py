"""``lakeloop serve ...``: run the endpoint, and change what it serves while it runs.

``up`` runs Serve in this process's Ray until stopped. The other commands talk
to a running endpoint over its admin API (the bearer token comes from
``serve.admin_token`` or the lake's ``_serve/admin_token`` file).
"""

from __future__ import annotations

from typing import List, Optional

import typer

from lakeloop.cli.output import console, print_json, print_table, run_until, sigterm_as_interrupt

app = typer.Typer(help="Serving on Ray Serve: run the endpoint, deploy versions, split traffic.",
                  no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of text.")


def _admin(ctx: typer.Context, method: str, path: str, body=None):
    from lakeloop.serving.service import admin_token, http_json

    ll = ctx.obj.connect()
    return http_json(method, ll.serving.url + path, body, token=admin_token(ll))


def _parse_model(spec: str) -> tuple[str, str | None]:
    """``fraud``, ``fraud@challenger`` or ``fraud:3``."""
    for sep in ("@", ":"):
        if sep in spec:
            name, ref = spec.split(sep, 1)
            return name, ref
    return spec, None


@app.command()
def up(
    ctx: typer.Context,
    model: List[str] = typer.Option([], "--model", "-m", help="Serve NAME (its champion), NAME@ALIAS or NAME:VERSION."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Stop after this long (default: Ctrl-C)."),
    as_json: bool = JSON,
):
    """Start the endpoint on serve.host:serve.port and serve models until stopped.

    NAME and NAME@ALIAS follow the alias: when it moves in the registry, the new version takes the old
    one's traffic. NAME:VERSION stays pinned. Predictions are answered within seconds, from a bootstrap
    server of its own while Ray and Serve start (serve.bootstrap); the port then goes to Serve.
    """
    import sys

    from lakeloop.serving import bootstrap

    ll = ctx.obj.connect()
    deploy = [_parse_model(spec) for spec in model]
    boot = None
    try:  # stopped while it starts, it stops what it started (its haproxy may hold the port already)
        with sigterm_as_interrupt():
            boot = bootstrap.start(ll, deploy)  # predictions answered from here while Ray and Serve start
            url = ll.serving.up(deploy=deploy, bootstrap=boot)  # versions start with the ingress
    except KeyboardInterrupt:  # as after the wait below, a second SIGTERM during the cleanup stops it at once
        import ray

        print("stopped while starting: stopping what it started", file=sys.stderr, flush=True)
        if boot is not None:  # what it answered stays in its spool, shipped by the next ingress on this node
            boot.stop()
        if ray.is_initialized():  # else its Ray's start was interrupted, and stopped what it had started
            ll.serving.down()
        return
    finally:
        if boot is not None:
            boot.stop()  # after a failed start too (a no-op once handed over)
    deployed = ll.serving.deployed
    info = {"url": url, "docs": f"{url}/docs", "dashboard": ll.dashboard_url,
            "deployed": [{"model": d["model"], "version": d["version"], "note": d.get("note")} for d in deployed],
            "bootstrap": ll.serving.bootstrap}
    if as_json:
        print_json(info)
    else:
        console().print(f"serving at {url} (OpenAPI: {url}/docs; Ray dashboard: {info['dashboard']}); "
                        f"Ctrl-C stops it")
        boot_info = info["bootstrap"]
        if boot_info and boot_info["answered"]:
            console().print(f"while Ray and Serve started, serve up answered {boot_info['answered']} prediction(s) "
                            f"itself; the port went to Serve after {boot_info['handed_over_after_s']} s")
    try:
        run_until(seconds)
    finally:
        ll.serving.down()


@app.command()
def status(ctx: typer.Context, as_json: bool = JSON):
    """Served models, versions, traffic and shadow comparisons."""
    from lakeloop.serving.service import http_json

    data = http_json("GET", ctx.obj.connect().serving.url + "/v1/models")
    if as_json:
        return print_json(data)
    rows = []
    for name, m in data["models"].items():
        for v, info in m["versions"].items():
            shadow = info.get("shadow_stats") or {}
            rows.append({"model": name, "version": v, "traffic %": m["traffic"].get(v, 0.0),
                         "shadow": int(v) in m["shadow"], "agreement": shadow.get("agreement_rate"),
                         "shadow errors": shadow.get("errors"), "uri": info.get("uri")})
    print_table("served models", rows)


@app.command()
def deploy(
    ctx: typer.Context,
    model: str,
    version: Optional[str] = typer.Option(None, "--version", "-v", help="Version number or alias (default champion)."),
    weight: Optional[float] = typer.Option(None, "--weight", help="Percent of traffic for it (others scale down)."),
    shadow: bool = typer.Option(False, "--shadow", help="Deploy as a shadow: gets copies, never answers."),
    as_json: bool = JSON,
):
    """Deploy a model version into its own deployment on the running endpoint."""
    body = {"shadow": shadow}
    if version is not None:
        body["version" if version.isdigit() else "alias"] = int(version) if version.isdigit() else version
    if weight is not None:
        body["weight"] = weight
    result = _admin(ctx, "POST", f"/v1/admin/models/{model}/deploy", body)
    if as_json:
        return print_json(result)
    console().print(f"{model} v{result['version']} deployed; traffic {result['policy']['weights']}, "
                    f"shadow {result['policy']['shadow']}")
    if result.get("note"):  # e.g. a champion deployed next to pinned versions gets no traffic until moved
        console().print(result["note"])


@app.command()
def traffic(
    ctx: typer.Context,
    model: str,
    weights: List[str] = typer.Argument(..., help="VERSION=WEIGHT pairs, e.g. 3=90 4=10."),
    shadow: List[int] = typer.Option([], "--shadow", help="Version(s) that get a copy of each request."),
    sticky: bool = typer.Option(True, "--sticky/--no-sticky", help="Same routing key, same version."),
    as_json: bool = JSON,
):
    """Change the traffic split at runtime (no restart, no dropped requests)."""
    from lakeloop.serving.policy import parse_weights

    body = {"weights": {str(v): w for v, w in parse_weights(weights).items()}, "shadow": shadow, "sticky": sticky}
    result = _admin(ctx, "PUT", f"/v1/admin/models/{model}/traffic", body)
    if as_json:
        return print_json(result)
    console().print(f"{model}: traffic {result['traffic']} shadow {result['shadow']}")


@app.command()
def promote(ctx: typer.Context, model: str, version: Optional[int] = typer.Argument(None),
            force: bool = typer.Option(False, "--force", help="Promote even if the gate did not pass it."),
            as_json: bool = JSON):
    """Make a version (default: the challenger) champion and give it all traffic."""
    result = _admin(ctx, "POST", f"/v1/admin/models/{model}/promote", {"version": version, "force": force})
    if as_json:
        return print_json(result)
    console().print(f"{model}: v{result['version']} is champion with all traffic")


@app.command()
def rollback(ctx: typer.Context, model: str, as_json: bool = JSON):
    """Give the champion alias and all traffic back to the previous champion."""
    result = _admin(ctx, "POST", f"/v1/admin/models/{model}/rollback", {})
    if as_json:
        return print_json(result)
    console().print(f"{model}: rolled back to v{result['version']}")
