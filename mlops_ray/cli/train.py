"""The command `run`: the whole pipeline, ingest → validate → featurize → tune → evaluate + gate →
register, with the step options (--force, --from, --only, --resume).

In: a config path with ``--set`` overrides. Out: the run's result (splits, search, test metrics,
the registered version and the gate's verdict) printed or as JSON; exit 3, 4 or 6 as below.
"""
from __future__ import annotations

from typing import Optional

import typer

import mlops_ray
from mlops_ray.cli.options import ConfigArg, Json, Sets, State, _guard, _load
from mlops_ray.cli.render import _emit_json, _print_run_result, _progress


def run_cmd(config: ConfigArg,
            json_out: Json = False,
            set_: Sets = None,
            force: bool = typer.Option(False, "--force", help="Redo every step, ignoring cached outputs."),
            from_step: Optional[str] = typer.Option(None, "--from", help="Redo this step and the steps that depend on it."),
            only: Optional[str] = typer.Option(None, "--only", help="Run only this step, from its cached inputs (refused, naming the step to run first, when one is missing)."),
            resume: bool = typer.Option(False, "--resume", help="Continue an interrupted Tune search.")):
    """Run the pipeline: ingest → validate → featurize → reference → tune → threshold → evaluate → gate →
    register (the steps --from and --only take).

    Exit 0: registered and promoted to champion; 3: data invalid; 4: rejected by the gate
    (registered with the reason, champion unchanged); 6: registry unreachable.
    """
    # imported here: the pipeline module costs ~50 ms (pyarrow, ssl), which `mlops-ray --help` must not pay
    from mlops_ray.pipeline import RunOptions
    with _guard(json_out):
        cfg = _load(config, set_)
        opts = RunOptions(force=force, from_step=from_step, only=only, resume=resume, verbose=State.verbose)
        res = mlops_ray.run(cfg, options=opts, progress=_progress(json_out))
        _emit_json(res.to_dict()) if json_out else _print_run_result(res)
