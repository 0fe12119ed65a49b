"""The ``lakeloop`` command: a thin layer over :func:`lakeloop.connect`.

Each command builds the object, calls one SDK method and renders the result
(a table, or JSON with ``--json``). Errors print their message and exit 2.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

ABOUT = "lakeloop: versioned data, features, AutoML, registry, serving and retraining on Ray."
# name -> (module, attribute: a Typer app or a command function, the line `lakeloop --help` shows).
# Loaded on use, so `lakeloop --help` imports none of them (nor rich: plain help at the top level).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("lakeloop.cli.demo", "demo",
             "Ingest, features, AutoML, registry, serving with traffic, drift, the retrain job, canary, promotion."),
    "ui": ("lakeloop.cli.ui", "ui", "Start the MLflow UI on this lake's runs and models (Ctrl-C stops it)."),
    "status": ("lakeloop.cli.status", "status",
               "Tables, feature views, models, what is served, monitors, last events and URLs (starts nothing)."),
    "lake": ("lakeloop.cli.lake", "app", "The versioned Delta lake: ingest, tables, history, read, restore, profile."),
    "features": ("lakeloop.cli.features", "app", "The feature store: definitions, materialization, online values."),
    "models": ("lakeloop.cli.models", "app",
               "Registered models: versions, lineage, the promotion gate, champion/challenger, rebuilds."),
    "serve": ("lakeloop.cli.serve", "app", "Serving on Ray Serve: run the endpoint, deploy versions, split traffic."),
    "monitor": ("lakeloop.cli.monitor", "app",
                "Drift monitoring: start and stop monitors, their status and the events log."),
    "job": ("lakeloop.cli.job", "app",
            "Ray jobs (jobs/*.py) on this lake's platform: submit, and print the `ray job submit` line."),
}


# the top-level options: (flags, metavar, help); the Typer callback below takes its help from here
ROOT_OPTIONS = {
    "config": (("--config", "-c"), "<str>", "lakeloop.yaml to read (default: $LAKELOOP_CONFIG, then ./lakeloop.yaml)"),
    "lake_root": (("--lake",), "<str>", "Lake root; overrides the config's lake.root."),
}


def top_level_help() -> str:
    """``lakeloop --help`` from the tables above, without loading typer, click or rich (see bench/cli.py)."""
    import shutil
    import textwrap

    width = min(shutil.get_terminal_size((80, 24)).columns, 100)

    def rows(items: list[tuple[str, str]]) -> list[str]:
        left = max(len(k) for k, _ in items) + 2
        out = []
        for key, text in items:
            lines = textwrap.wrap(text, max(width - left - 2, 20)) or [""]
            out.append(f"  {key:<{left}}{lines[0]}")
            out += [" " * (left + 2) + line for line in lines[1:]]
        return out

    options = [(", ".join(sorted(flags, key=len)) + f" {meta}", text) for flags, meta, text in ROOT_OPTIONS.values()]
    options.append(("--help", "Show this message and exit."))
    return "\n".join([
        "Usage: lakeloop [OPTIONS] COMMAND [ARGS]...", "", *("  " + line for line in textwrap.wrap(ABOUT, width - 2)),
        "", "Options:", *rows(options), "", "Commands:",
        *rows([(name, line) for name, (_m, _a, line) in COMMANDS.items()]),
        "", "`lakeloop COMMAND --help` shows a command's own options.", ""])


def load_command(name: str):
    """The click command of ``COMMANDS[name]``, imported now."""
    import importlib

    import typer

    module, attr, _help = COMMANDS[name]
    target = getattr(importlib.import_module(module), attr)
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


def build_app():
    """The Typer app; its top-level group loads subcommands on use and lists them from ``COMMANDS``."""
    import typer
    from typer.core import TyperGroup

    from lakeloop.cli.output import State

    class LazyGroup(TyperGroup):
        def list_commands(self, ctx) -> list[str]:
            return list(COMMANDS)

        def get_command(self, ctx, cmd_name: str):
            if cmd_name not in self.commands and cmd_name in COMMANDS:
                self.commands[cmd_name] = load_command(cmd_name)
            return self.commands.get(cmd_name)

        def format_commands(self, ctx, formatter) -> None:
            with formatter.section("Commands"):
                formatter.write_dl([(name, help_) for name, (_m, _a, help_) in COMMANDS.items()])

    app = typer.Typer(name="lakeloop", help=ABOUT, cls=LazyGroup, rich_markup_mode=None, no_args_is_help=True,
                      add_completion=False, pretty_exceptions_enable=False)
    config_flags, _, config_help = ROOT_OPTIONS["config"]
    lake_flags, _, lake_help = ROOT_OPTIONS["lake_root"]

    def _root(
        ctx: typer.Context,
        config: Optional[str] = typer.Option(None, *config_flags, help=config_help),
        lake_root: Optional[str] = typer.Option(None, *lake_flags, help=lake_help),
    ):
        ctx.obj = State(config=config, lake_root=lake_root)

    # annotations are strings here (postponed evaluation) and typer is no module global: give it the types
    _root.__annotations__ = {"ctx": typer.Context, "config": Optional[str], "lake_root": Optional[str]}
    app.callback()(_root)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first use: `lakeloop --help` never needs it
        globals()["app"] = build_app()
        return globals()["app"]
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a :class:`~lakeloop.errors.LakeloopError` prints its message on one line and exits 2.

    Any other error also prints one line (its type and message) and exits 1; ``--traceback``
    (anywhere on the command line) shows the full traceback instead.
    """
    from lakeloop.errors import LakeloopError

    argv = list(sys.argv[1:] if argv is None else argv)
    traceback = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    if argv == ["--help"]:
        sys.stdout.write(top_level_help())
        return 0
    try:
        build_app()(args=argv, prog_name="lakeloop")  # click's standalone mode handles usage errors
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
