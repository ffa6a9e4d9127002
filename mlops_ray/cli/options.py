"""What every command shares: the options declared once, the global flags, loading the config
with ``--set`` overrides, and turning an error into its message and exit code.

In: the words on the command line. Out: a loaded ``Config`` (``_load``), the ``State`` of the
global flags, and ``_guard``, the context every command runs in, which maps an ``MlopsError`` to
its exit code (see mlops_ray/errors.py) and anything else to exit 1 ("a bug in mlops-ray").
"""
from __future__ import annotations

from typing import Annotated, List, Optional

import typer
import yaml
from rich.markup import escape

from mlops_ray.cli.render import _emit_json, _json_stdout, _print_validation, err
from mlops_ray.config import load_config
from mlops_ray.errors import ConfigError, DataValidationError, ExitCode, MlopsError

# the options most commands take; a command whose option reads differently declares its own
ConfigArg = Annotated[str, typer.Argument(help="Pipeline YAML.")]
Sets = Annotated[Optional[List[str]], typer.Option("--set", help="Override: key.path=value")]
Json = Annotated[bool, typer.Option("--json")]

# the options of the top-level callback (``_main``): accepted after the command too
GLOBAL_FLAGS = ("--verbose", "-v", "--debug")


class _Group(typer.core.TyperGroup):
    """Moves the global flags written after the command (`mlops-ray run CONFIG --debug`, as the error
    message's "rerun with --debug" invites) to before it, where click expects a group's options. Words
    after ``--`` (the command `submit` forwards) are left alone."""

    def parse_args(self, ctx, args):
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
        rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
        return super().parse_args(ctx, flags + rest + args[end:])


class State:
    verbose = False
    debug = False


def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's logs and progress bars."),
          debug: bool = typer.Option(False, "--debug", help="Show tracebacks for expected errors too.")):
    State.verbose, State.debug = verbose, debug


def _load(path: str, sets: list[str] | None):
    """The config at ``path`` with the ``--set key.path=value`` overrides (values parsed as YAML)."""
    overrides = {}
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                              "write it as in the config file (4, true, [5, 25, 100], {key: value}), or quote "
                              f"text: --set '{key.strip()}=\"...\"'") from None
    return load_config(path, overrides)


def _fail(e: BaseException, json_mode: bool) -> None:
    """Print ``e`` (with --json also as a JSON document on stdout) and exit with its code."""
    if isinstance(e, MlopsError):
        if json_mode:
            payload = e.to_dict()
            if isinstance(e, DataValidationError) and e.report is not None:
                payload["report"] = e.report.to_dict()
            _emit_json(payload)
        if isinstance(e, DataValidationError) and e.report is not None and not json_mode:
            _print_validation(e.report, to=err)
        if isinstance(e, DataValidationError) and e.report is not None:     # the report said it all
            err.print(f"[bold red]{e.headline}[/] (exit {e.exit_code})")
        else:
            err.print(f"[bold red]{e.headline}:[/] {escape(e.message)}", markup=True)
        if State.debug:
            err.print_exception()
        raise typer.Exit(e.exit_code)
    if State.debug:
        err.print_exception()
    else:
        err.print(f"[bold red]Unexpected error[/] ({type(e).__name__}): {e}\n"
                  "This is a bug in mlops-ray; rerun with --debug for the traceback.")
    raise typer.Exit(ExitCode.UNEXPECTED)


class _guard:
    """Turns expected errors into their message and exit code; with --json, while the command runs,
    stdout carries the JSON document only (``render._json_stdout``)."""

    def __init__(self, json_mode: bool):
        self.json_mode = json_mode
        self._stdout = _json_stdout(json_mode)

    def __enter__(self):
        self._stdout.__enter__()
        return self

    def __exit__(self, et, ev, tb):
        try:
            if ev is None or isinstance(ev, (typer.Exit, SystemExit, KeyboardInterrupt)):
                return False
            _fail(ev, self.json_mode)
        finally:
            self._stdout.__exit__(et, ev, tb)
