"""One XGBoost model: parameters, data loading, single-process and data-parallel training.

In: the featurized splits written by the data plane (``features/split=train|valid|test``)
and the FeatureSpec. Out: an ``xgboost.Booster`` and its evaluation history.

``single``: one xgboost process, ``nthread`` = its CPUs, a (Quantile)DMatrix built once.
``distributed``: Ray Train's ``XGBoostTrainer`` (the maintained successor of xgboost-ray),
data-parallel over ``model.num_workers`` workers reading Ray Data shards.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow.dataset as pads

from mlops_ray.config import ModelConfig, TuneConfig
from mlops_ray.data.features import FeatureSpec
from mlops_ray.errors import ConfigError

OBJECTIVE = {"binary": "binary:logistic", "regression": "reg:squarederror", "multiclass": "multi:softprob"}
# metric name used across mlops-ray -> XGBoost's eval_metric, per task (what a trial can report)
TRAIN_METRICS = {
    "binary": {"auc": "auc", "pr_auc": "aucpr", "logloss": "logloss"},
    "regression": {"rmse": "rmse", "mae": "mae"},
    "multiclass": {"logloss": "mlogloss"},
}
DEFAULT_METRIC = {"binary": "auc", "regression": "rmse", "multiclass": "logloss"}
METRIC_MODE = {"auc": "max", "pr_auc": "max", "logloss": "min", "rmse": "min", "mae": "min"}
# booster parameters a search space or model.params may set (XGBoost 3.x)
XGB_PARAMS = {
    "eta", "learning_rate", "gamma", "min_split_loss", "max_depth", "min_child_weight", "max_delta_step",
    "subsample", "sampling_method", "colsample_bytree", "colsample_bylevel", "colsample_bynode",
    "lambda", "reg_lambda", "alpha", "reg_alpha", "tree_method", "scale_pos_weight", "grow_policy",
    "max_leaves", "max_bin", "max_cat_to_onehot", "max_cat_threshold", "num_parallel_tree",
    "multi_strategy", "base_score", "seed", "booster", "rate_drop", "skip_drop", "one_drop",
}
SEARCH_ONLY = {"num_boost_round", "early_stopping_rounds"}


def resolve_metric(model: ModelConfig, tune: TuneConfig) -> TuneConfig:
    """tune.metric/mode 'auto' -> the task's default metric and its direction."""
    metric = DEFAULT_METRIC[model.task] if tune.metric == "auto" else tune.metric
    mode = METRIC_MODE.get(metric, "max") if tune.mode == "auto" else tune.mode
    return tune if (metric, mode) == (tune.metric, tune.mode) else tune.model_copy(update={"metric": metric, "mode": mode})


def check_model_config(model: ModelConfig, tune: TuneConfig) -> None:
    """Refuse search spaces and metrics XGBoost cannot honour, before anything runs."""
    known = XGB_PARAMS | SEARCH_ONLY
    for name in list(tune.space) + list(model.params):
        if name not in known:
            import difflib
            guess = difflib.get_close_matches(name, sorted(known), n=1)
            where = "tune.space" if name in tune.space else "model.params"
            raise ConfigError(f"{where}.{name} is not an XGBoost parameter"
                              + (f"; did you mean '{guess[0]}'?" if guess else
                                 f"; known: {', '.join(sorted(known))}"))
    metrics = TRAIN_METRICS[model.task]
    tune = resolve_metric(model, tune)
    if tune.metric not in metrics:
        raise ConfigError(f"tune.metric '{tune.metric}' is not computed while training a {model.task} model; "
                          f"use one of {', '.join(metrics)}")
    if METRIC_MODE[tune.metric] != tune.mode:
        raise ConfigError(f"tune.mode is '{tune.mode}' but {tune.metric} is better when "
                          f"{'higher' if METRIC_MODE[tune.metric] == 'max' else 'lower'}; "
                          f"set tune.mode: {METRIC_MODE[tune.metric]}")
    if model.device == "cuda" and tune.gpus_per_trial <= 0:
        raise ConfigError("model.device is 'cuda' but tune.gpus_per_trial is 0; set tune.gpus_per_trial: 1")


# --------------------------------------------------------------------------- data
@dataclass
class Splits:
    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    spec: FeatureSpec
    n_classes: int = 2

    @property
    def rows(self) -> dict[str, int]:
        return {k: int(v.shape[0]) for k, v in self.X.items()}


def load_splits(features_dir: str, spec: FeatureSpec, task: str, filesystem=None) -> Splits:
    """Read the featurized splits into float32 arrays (once, on the driver)."""
    X, y = {}, {}
    cols = list(spec.output_columns)
    for split in ("train", "valid", "test"):
        path = f"{features_dir.rstrip('/')}/split={split}"
        try:
            table = pads.dataset(path, format="parquet", filesystem=filesystem).to_table(columns=cols + [spec.label])
        except (FileNotFoundError, OSError):
            X[split], y[split] = np.empty((0, len(cols)), np.float32), np.empty(0, np.float32)
            continue
        X[split] = np.column_stack([table.column(c).to_numpy() for c in cols]).astype(np.float32, copy=False) \
            if cols else np.empty((table.num_rows, 0), np.float32)
        y[split] = table.column(spec.label).to_numpy().astype(np.float32)
    n_classes = 2
    if task == "multiclass":
        n_classes = len(spec.classes) if spec.classes else int(max(np.nanmax(v) for v in y.values() if v.size)) + 1
    return Splits(X, y, spec, n_classes)


def check_labels(splits: Splits, task: str, label: str) -> None:
    """A classifier needs at least two classes in its training split."""
    from mlops_ray.errors import DataValidationError
    if task == "regression":
        return
    y = splits.y["train"]
    classes = np.unique(y[~np.isnan(y)])
    names = splits.spec.classes
    if task == "multiclass" and names:
        for split in ("valid", "test"):
            later = np.unique(splits.y[split][~np.isnan(splits.y[split])]).astype(int)
            unseen = [names[k] for k in later if k >= 0 and k not in set(classes.astype(int))]
            if unseen:
                raise DataValidationError(
                    f"label '{label}' has class(es) {unseen[:5]} in the {split} split but never in the training "
                    f"split: a model cannot learn a class it never sees. Give the training period rows of it, use "
                    f"data.split.method: random, or drop those rows")
    if classes.size < 2:
        raise DataValidationError(
            f"label '{label}' has only one class ({[float(c) for c in classes]}) in the training split; "
            "a classifier needs at least two: check the data and data.split, or set model.task: regression")


# --------------------------------------------------------------------------- params
def base_params(model: ModelConfig, tune: TuneConfig, nthread: int, n_classes: int = 2) -> dict:
    metrics = TRAIN_METRICS[model.task]
    # the tuned metric last: early stopping watches the last eval metric
    order = [m for m in metrics.values() if m != metrics[tune.metric]] + [metrics[tune.metric]]
    p = {"objective": OBJECTIVE[model.task], "eval_metric": order, "tree_method": "hist",
         "nthread": max(1, int(nthread)), "seed": tune.seed, "device": model.device,
         "max_cat_to_onehot": 8, "verbosity": 0}
    if model.task == "multiclass":
        p["num_class"] = n_classes
    p.update(model.params)
    return p


def split_trial_config(config: dict, model: ModelConfig) -> tuple[dict, int, int]:
    """Trial config -> (xgboost params, rounds, early-stopping rounds)."""
    params = {k: (int(v) if k in ("max_depth", "max_leaves", "max_bin") else v)
              for k, v in config.items() if k in XGB_PARAMS}
    rounds = int(config.get("num_boost_round", model.num_boost_round))
    esr = int(config.get("early_stopping_rounds") or model.patience(rounds))
    return params, rounds, esr


def dmatrix(X: np.ndarray, y: np.ndarray | None, spec: FeatureSpec, ref=None, quantile: bool = True):
    import xgboost as xgb
    kw = dict(label=y, feature_names=list(spec.output_columns), feature_types=list(spec.feature_types),
              enable_categorical=True, missing=np.nan, nthread=-1)
    return xgb.QuantileDMatrix(X, ref=ref, **kw) if quantile else xgb.DMatrix(X, **kw)


@dataclass
class TrainResult:
    booster: object
    best_iteration: int
    best_score: float
    history: dict = field(default_factory=dict)   # {"valid": {"auc": [...]}}


def train(params: dict, dtrain, rounds: int, dvalid=None, esr: int | None = None, callbacks=()) -> TrainResult:
    import xgboost as xgb
    evals_result: dict = {}
    evals = [(dvalid, "valid")] if dvalid is not None else []
    bst = xgb.train(params, dtrain, num_boost_round=rounds, evals=evals, evals_result=evals_result,
                    early_stopping_rounds=esr if dvalid is not None else None, callbacks=list(callbacks),
                    verbose_eval=False)
    best_it = getattr(bst, "best_iteration", None)
    best_it = int(best_it) if best_it is not None else bst.num_boosted_rounds() - 1
    score = float("nan")
    if dvalid is not None:
        last_metric = params["eval_metric"][-1] if isinstance(params.get("eval_metric"), list) else None
        if last_metric and last_metric in evals_result.get("valid", {}):
            score = float(evals_result["valid"][last_metric][best_it])
    return TrainResult(bst, best_it, score, evals_result)


# --------------------------------------------------------------------------- strategy
def choose_strategy(model: ModelConfig, rows: int, n_features: int, num_nodes: int,
                    node_memory_bytes: float) -> str:
    """'auto': data-parallel only when one process cannot hold the data comfortably or the cluster has
    several nodes and the data is large. Ray Train's fixed cost (~20 s a fit, DESIGN.md) dwarfs small data."""
    if model.strategy != "auto":
        return model.strategy
    matrix_bytes = rows * max(n_features, 1) * 4 * 3      # float32 + xgboost's quantised copy + slack
    if matrix_bytes > 0.3 * node_memory_bytes:
        return "distributed"
    if num_nodes > 1 and rows >= 20_000_000:
        return "distributed"
    return "single"


def trial_threads(cpus_per_trial: float) -> int:
    return max(1, int(math.floor(cpus_per_trial)))


def default_threads() -> int:
    return os.cpu_count() or 1
