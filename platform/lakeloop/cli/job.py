"""``lakeloop job submit JOB [ARGS...]``: ``jobs/<JOB>.py`` as a Ray job on this lake's platform.

A thin wrapper over :mod:`lakeloop.submission`: it finds the job server (``--address``,
else this lake's running platform, else ``ray.address``, else it starts the lake's local
Ray for the length of the job), ships this checkout and the lake settings in the runtime
env, prints the equivalent ``ray job submit`` command, submits, follows the logs and exits
with the job's status (0 when it succeeded).
"""

from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(help="Ray jobs (jobs/*.py) on this lake's platform: submit, and print the `ray job submit` line.",
                  no_args_is_help=True)


@app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    job: str = typer.Argument(..., help="automl, materialize or retrain; the job's own arguments follow"),
    address: Optional[str] = typer.Option(
        None, "--address", help="Job server (dashboard) URL; default: this lake's running platform, then ray.address"),
    print_only: bool = typer.Option(False, "--print-only", help="Print the equivalent `ray job submit` line; submit nothing."),
    submission_id: Optional[str] = typer.Option(None, "--submission-id", help="Id for the job (default: Ray's)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Submit and exit without following the job."),
):
    """Submit jobs/JOB.py with its arguments (e.g. `lakeloop job submit materialize customer_stats --full`)."""
    import sys

    from lakeloop import submission

    ll = ctx.obj.connect()
    submission.job_script(job)  # an unknown job fails before anything starts
    server = submission.job_server(ll, address, start=not print_only)
    ll.keep_secrets()  # the job's connect() reads them by lake root; never on its command line
    sub = submission.for_job(job, list(ctx.args), ll.config, server, submission_id=submission_id,
                             metadata={"lakeloop.job": job, "lakeloop.lake": ll.config.lake.root})
    if print_only:
        print(sub.command_line())
        return
    print(f"# the same as: {sub.command_line()}", file=sys.stderr)
    client = sub.client()
    sid = sub.submit(client)
    print(f"# submitted {sid} to {server}", file=sys.stderr)
    if no_wait:
        print(sid)
        return
    status = sub.follow(sid, client)
    print(f"# job {sid} {status}", file=sys.stderr)
    if status != "SUCCEEDED":
        raise typer.Exit(1)
