"""The pipeline: raw data to a gated, registered model version, as a declared table of steps.

    ingest ─ validate ─ featurize ─ reference ─ tune ─ threshold ─ evaluate ─ gate ─ register

In: a config (and ``RunOptions``). Out: a ``RunResult``; the store holds each step's cached
outputs (``storage/catalog.py`` names where) and the registry the new version.

* ``steps.py``: the table (each step's function, inputs, outputs, cache key and stage) and the
  step functions;
* ``runner.py``: the runner (caching, ``--from``/``--only``/``--force``/``--resume``, the gate's
  retry, timings) and the entry points ``run_pipeline`` and ``prepare_data``;
* ``keys.py``: what the cache keys are made of;
* ``data.py`` and ``training.py``: the stage functions the steps call (the data plane on Ray
  Data; threshold, evaluation and registration).
"""
from mlops_ray.pipeline.data import DataResult, declared_categorical, inspect, step_ingest, write_train_keys
from mlops_ray.pipeline.runner import (DATA_STEPS, RunOptions, RunResult, cached_data, check_training_config, preflight,
                                       prepare_data, run_pipeline)
from mlops_ray.pipeline.steps import NAMES, STEPS, TABLE

__all__ = ["DATA_STEPS", "DataResult", "NAMES", "RunOptions", "RunResult", "STEPS", "TABLE", "cached_data",
           "check_training_config", "declared_categorical", "inspect", "prepare_data", "preflight",
           "run_pipeline", "step_ingest", "write_train_keys"]
