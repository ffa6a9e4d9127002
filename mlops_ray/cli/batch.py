"""The command `predict`: score a data set with a registered version on Ray Data.

In: a config path, the data to score, where to write. Out: Parquet predictions under --out (and
rows appended to the prediction log with --log); a line with rows, speed and place, or JSON.
"""
from __future__ import annotations

from typing import Optional

import typer

from mlops_ray.cli.options import ConfigArg, Json, Sets, State, _guard, _load
from mlops_ray.cli.render import _emit_json, _print_predict, _progress
from mlops_ray.errors import ConfigError


def predict_cmd(config: ConfigArg,
                data: str = typer.Option(..., "--data", help="File, directory, glob or URI to score (Parquet/CSV)."),
                output: str = typer.Option(..., "--out", help="Directory or URI to write the predictions into."),
                version: Optional[str] = typer.Option(None, "--version", help="Registered version number to use."),
                alias: Optional[str] = typer.Option(None, "--alias", help="Alias to use (default: champion)."),
                log: bool = typer.Option(False, "--log", help="Also append the rows to the prediction log."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files in --out."),
                keep: Optional[str] = typer.Option(None, "--keep", help="Input columns to copy into the "
                                                   "predictions, comma-separated (e.g. --keep 'Title,Release Date'). "
                                                   "Without data.id_column the output also has 'row', the input "
                                                   "row's position."),
                json_out: Json = False,
                set_: Sets = None):
    """Score --data with a registered version on Ray Data; write Parquet predictions to --out.

    Exit 3: the data lacks an input column of the model, or --out is not empty (without
    --overwrite); 6: no such version or alias.
    """
    # imported here: batch scoring costs ~25 ms more (pyarrow.fs, ssl), which `mlops-ray --help` must not pay
    from mlops_ray.lifecycle.predict import batch_predict
    with _guard(json_out):
        if version and alias:
            raise ConfigError("give --version or --alias, not both")
        cfg = _load(config, set_)
        res = batch_predict(cfg, data, output, version or (f"@{alias}" if alias else "champion"), log=log,
                            overwrite=overwrite, keep=[c.strip() for c in keep.split(",") if c.strip()] if keep else None,
                            verbose=State.verbose, progress=_progress(json_out))
        _emit_json(res) if json_out else _print_predict(res, log)
