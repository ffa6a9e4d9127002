"""Commands about the config and the data: `config check`, `config schema`, `data synth`,
`validate` and `features`.

In: a config path (with ``--set`` overrides) or the synth knobs. Out: the resolved config or its
JSON Schema, a synthetic data set, the validation report, the fitted features and splits.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Optional

import typer

import mlops_ray
from mlops_ray.cli.options import ConfigArg, Json, Sets, State, _guard, _load
from mlops_ray.cli.render import (_emit_json, _print_config_ok, _print_data_result, _print_schema, _print_synth,
                                  _print_validation, _progress)
from mlops_ray.config import RayConfig, json_schema
from mlops_ray.errors import ConfigError


def config_check(config: ConfigArg,
                 json_out: Annotated[bool, typer.Option("--json", help="Print the resolved config as JSON.")] = False,
                 set_: Sets = None):
    """Validate a config file; print the resolved values."""
    with _guard(json_out):
        cfg = _load(config, set_)
        if json_out:
            _emit_json({"ok": True, "config_hash": cfg.config_hash,
                        "config": cfg.model_dump(mode="json", by_alias=True)})
        else:
            _print_config_ok(config, cfg)


def config_schema(output: Optional[str] = typer.Option(None, "--out", help="Write to this file.")):
    """Print the JSON Schema of the pipeline config."""
    text = json.dumps(json_schema(), indent=2)
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")
    _print_schema(text, output)


def data_synth(rows: int = typer.Option(..., "--rows", min=1, help="Number of rows."),
               out_dir: str = typer.Option(..., "--out", help="Directory or URI to write Parquet parts into."),
               seed: int = typer.Option(0, "--seed"),
               start: str = typer.Option("2026-01-01", "--start", help="First timestamp (ISO date)."),
               days: float = typer.Option(90.0, "--days", min=0.001, help="Time span of the data."),
               drift: str = typer.Option("none", "--drift", help="none | covariate | label | concept | mixed (covariate + concept)"),
               drift_start: Optional[str] = typer.Option(None, "--drift-start", help="ISO time drift begins."),
               drift_strength: float = typer.Option(1.0, "--drift-strength", min=0.0),
               rows_per_file: int = typer.Option(500_000, "--rows-per-file", min=1000),
               num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1),
               overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files in --out."),
               json_out: Json = False):
    """Generate a synthetic transactions data set (skewed, missing values, rare positives)."""
    with _guard(json_out):
        if drift not in ("none", "covariate", "label", "concept", "mixed"):
            raise ConfigError(f"--drift {drift!r} is not one of none, covariate, label, concept, mixed")
        rep = mlops_ray.synth(rows, out_dir, seed=seed, start=start, days=days, drift=drift,
                              drift_start=drift_start, drift_strength=drift_strength,
                              rows_per_file=rows_per_file, overwrite=overwrite,
                              ray=RayConfig(num_cpus=num_cpus))
        _emit_json(asdict(rep)) if json_out else _print_synth(rep)


def validate_cmd(config: ConfigArg, json_out: Json = False, set_: Sets = None):
    """Ingest and validate the data against schema: (exit 3 on failure)."""
    with _guard(json_out):
        cfg = _load(config, set_)
        report = mlops_ray.validate(cfg, verbose=State.verbose, progress=_progress(json_out))
        _emit_json(report.to_dict()) if json_out else _print_validation(report)


def features_cmd(config: ConfigArg, json_out: Json = False, set_: Sets = None):
    """Ingest, validate and featurize: fit the FeatureSpec and write train/valid/test."""
    with _guard(json_out):
        cfg = _load(config, set_)
        res = mlops_ray.featurize(cfg, verbose=State.verbose, progress=_progress(json_out))
        _emit_json(res.to_dict()) if json_out else _print_data_result(res)
