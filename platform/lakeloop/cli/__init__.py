"""The ``lakeloop`` command: a thin layer over :func:`lakeloop.connect`.

Each command builds the object, calls one SDK method and renders the result
(a table, or JSON with ``--json``). Errors print their message and exit 2.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from lakeloop.cli.output import State

app = typer.Typer(
    name="lakeloop",
    help="lakeloop: versioned data, features, AutoML, registry, serving and retraining on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="lakeloop.yaml to read (default: $LAKELOOP_CONFIG, then ./lakeloop.yaml)"
    ),
    lake_root: Optional[str] = typer.Option(None, "--lake", help="Lake root; overrides the config's lake.root."),
):
    ctx.obj = State(config=config, lake_root=lake_root)


def _register() -> None:
    from lakeloop.cli import demo, features, lake, models, monitor, serve, status, ui

    app.add_typer(lake.app, name="lake")
    app.add_typer(features.app, name="features")
    app.add_typer(models.app, name="models")
    app.add_typer(serve.app, name="serve")
    app.add_typer(monitor.app, name="monitor")
    app.command("demo")(demo.demo)
    app.command("ui")(ui.ui)
    app.command("status")(status.status)


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a :class:`~lakeloop.errors.LakeloopError` prints its message on one line and exits 2.

    Any other error also prints one line (its type and message) and exits 1; ``--traceback``
    (anywhere on the command line) shows the full traceback instead.
    """
    from lakeloop.errors import LakeloopError

    argv = list(sys.argv[1:] if argv is None else argv)
    traceback = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    try:
        app(args=argv, prog_name="lakeloop")  # click's standalone mode handles usage errors
    except LakeloopError as exc:
        if traceback:
            raise
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        _exit_now(2)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        _exit_now(130)
    except BaseException as exc:  # a bug or a library's raw error (a Rust panic is a BaseException)
        if traceback:
            raise
        print(f"error: {type(exc).__name__}: {one_line(str(exc))} (unexpected; run again with --traceback "
              "to see where)", file=sys.stderr)
        _exit_now(1)
    return 0


def one_line(text: str) -> str:
    """A message on one line, without terminal colour codes."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _exit_now(code: int) -> None:
    """Leave at once after an error: stop Ray if it runs, flush, and skip interpreter teardown, where
    native runtimes (delta-rs's tokio threads) have been seen to abort the process under load."""
    import os

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
