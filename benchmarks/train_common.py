"""Helpers shared by the training-side benchmarks (training, search, tune_overhead).

Not a benchmark itself (not in ``BENCHMARKS``). Input data: ``mlops_ray.synth`` rows generated
once into ``benchmarks/.data/synth-<rows>/`` (``data_plane.ensure_data``), then prepared with the
project's own ``mlops_ray.pipeline.prepare_data`` (configs/quickstart.yaml, ``data.source``
pointed at the generated rows) into ``benchmarks/.data/store``. That store is a cache:
``prepare_data`` reuses a prepared data set whose key (input fingerprint, config sections,
package version) is unchanged; delete the directory to force a fresh preparation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from benchmarks.common import DATA_DIR, ROOT
from mlops_ray.config import Config, ModelConfig, TuneConfig, load_config

CONFIG = ROOT / "configs" / "quickstart.yaml"
STORE = DATA_DIR / "store"
NUM_CPUS = 4            # logical CPUs of the benchmark's Ray (the project's default on 2 cores)


@dataclass
class Prepared:
    rows: int
    cfg: Config
    features_dir: str
    splits: object            # mlops_ray.train.xgb.Splits
    prepare_s: float
    cached: bool

    @property
    def model(self) -> ModelConfig:
        return self.cfg.model

    @property
    def tune(self) -> TuneConfig:
        from mlops_ray.train import xgb as X
        return X.resolve_metric(self.cfg.model, self.cfg.tune)

    def describe(self) -> str:
        r = self.splits.rows
        return (f"{self.rows:,} rows -> train {r['train']:,} / valid {r['valid']:,} / test {r['test']:,}, "
                f"{self.splits.X['train'].shape[1]} features")


def make_config(rows: int, overrides: dict | None = None) -> Config:
    from benchmarks.data_plane import ensure_data

    source = ensure_data(rows)
    return load_config(CONFIG, overrides={"data.source": str(source), "store": str(STORE),
                                          "ray.num_cpus": NUM_CPUS, **(overrides or {})})


def prepare(rows: int, overrides: dict | None = None) -> Prepared:
    """Synthetic rows -> prepare_data (cached in benchmarks/.data/store) -> load_splits."""
    from mlops_ray.pipeline import prepare_data
    from mlops_ray.train import xgb as X

    cfg = make_config(rows, overrides)
    t = time.perf_counter()
    res = prepare_data(cfg)
    features_dir = f"{res.out_dir}/features"
    splits = X.load_splits(features_dir, res.spec, cfg.model.task)
    return Prepared(rows, cfg, features_dir, splits, time.perf_counter() - t, bool(res.cached))


def with_model(p: Prepared, **updates) -> ModelConfig:
    return p.cfg.model.model_copy(update=updates)


def with_tune(p: Prepared, **updates) -> TuneConfig:
    return p.tune.model_copy(update=updates)


def fixed_space(config: dict) -> dict:
    """A tune.space whose every parameter is a one-value choice: Optuna proposes exactly ``config``."""
    from mlops_ray.config import SearchParam
    return {k: SearchParam(type="choice", values=[v]) for k, v in config.items()}


# --------------------------------------------------------------------------- native XGBoost
def native_dmatrix(X: np.ndarray, y: np.ndarray, spec, ref=None, nthread: int = -1):
    """xgboost.QuantileDMatrix straight from in-memory arrays (same feature types as the pipeline:
    the categorical codes are data semantics, not overhead)."""
    import xgboost as xgb
    return xgb.QuantileDMatrix(X, label=y, ref=ref, feature_names=list(spec.output_columns),
                               feature_types=list(spec.feature_types), enable_categorical=True,
                               missing=np.nan, nthread=nthread)


def optuna_suggest(trial, space: dict) -> dict:
    """The project's search space (mlops_ray.config SearchParam) as Optuna suggestions, with the
    same distributions Tune's OptunaSearch derives from build_space (randint high is exclusive)."""
    out = {}
    for name, p in space.items():
        if p.type == "int":
            out[name] = trial.suggest_int(name, int(p.low), int(p.high))
        elif p.type == "float":
            out[name] = trial.suggest_float(name, p.low, p.high)
        elif p.type == "log_float":
            out[name] = trial.suggest_float(name, p.low, p.high, log=True)
        else:
            out[name] = trial.suggest_categorical(name, list(p.values))
    return out


def alternate(i: int, a, b) -> tuple:
    """(a, b) in even rounds, (b, a) in odd ones: load from other processes hits both alike."""
    return (a, b) if i % 2 == 0 else (b, a)


def r3(v):
    return None if v is None else round(float(v), 3)
