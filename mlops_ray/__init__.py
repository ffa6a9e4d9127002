"""mlops-ray: the machine-learning lifecycle on Ray.

The pipeline's Python API (what `data synth`, `validate`, `features` and `run` call)::

    import mlops_ray
    cfg = mlops_ray.load_config("configs/quickstart.yaml")
    result = mlops_ray.run(cfg)            # ingest -> ... -> register (RunResult)
    report = mlops_ray.validate(cfg)       # the validation step alone

Serving, monitoring, the loop, batch scoring and jobs are called through their modules
(``mlops_ray.serve.control``, ``mlops_ray.monitor.drift``, ``mlops_ray.lifecycle.loop``,
``mlops_ray.lifecycle.predict``, ``mlops_ray.cluster.jobs``); docs/architecture.md maps them.
"""
from __future__ import annotations

from mlops_ray._version import __version__
from mlops_ray.config import Config, load_config
from mlops_ray.errors import MlopsError


def run(cfg: Config, *, options=None, verbose: bool = False, progress=None):
    """Run the whole pipeline: raw data to a gated, registered model version (RunResult).

    ``options`` is a ``pipeline.RunOptions`` (force, from_step, only, resume). Raises
    DataValidationError (exit 3), GateRejected (exit 4), RegistryError (exit 6).
    """
    from mlops_ray.pipeline import RunOptions, run_pipeline
    opts = options or RunOptions(verbose=verbose)
    return run_pipeline(cfg, opts, **({"progress": progress} if progress else {}))


def validate(cfg: Config, *, verbose: bool = False, progress=None):
    """Ingest and validate only; return the ValidationReport (raises DataValidationError on failure)."""
    from mlops_ray.pipeline import prepare_data
    return prepare_data(cfg, verbose=verbose, write=False,
                        **({"progress": progress} if progress else {})).validation


def featurize(cfg: Config, *, verbose: bool = False, progress=None):
    """Ingest, validate and featurize; return the DataResult (splits written under the store)."""
    from mlops_ray.pipeline import prepare_data
    return prepare_data(cfg, verbose=verbose, **({"progress": progress} if progress else {}))


def synth(rows: int, out: str, **kwargs):
    """Write synthetic transactions data; see mlops_ray.data.synth.SynthSpec for the knobs."""
    from mlops_ray.config import RayConfig
    from mlops_ray.data.synth import SynthSpec, run_synth
    from mlops_ray.runtime import ray_runtime
    overwrite = kwargs.pop("overwrite", False)
    rows_per_file = kwargs.pop("rows_per_file", 500_000)
    ray_cfg = kwargs.pop("ray", None) or RayConfig()
    with ray_runtime(ray_cfg):
        return run_synth(SynthSpec(rows=rows, **kwargs), out, rows_per_file=rows_per_file, overwrite=overwrite)


__all__ = ["Config", "MlopsError", "load_config", "run", "validate", "featurize", "synth", "__version__"]
