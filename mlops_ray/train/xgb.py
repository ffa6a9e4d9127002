"""One XGBoost model: parameters, data loading, single-process and data-parallel training.

In: the featurized splits written by the data plane (``features/split=train|valid|test``)
and the FeatureSpec. Out: an ``xgboost.Booster`` and its evaluation history.

``single``: one xgboost process, ``nthread`` = its CPUs, a (Quantile)DMatrix built once.
``distributed``: Ray Train's ``XGBoostTrainer`` (the maintained successor of xgboost-ray),
data-parallel over ``model.num_workers`` workers, each reading its share of the Parquet files.
"""
from __future__ import annotations

import difflib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from mlops_ray.config import ModelConfig, TuneConfig
from mlops_ray.data.features import FeatureSpec
from mlops_ray.errors import ConfigError, DataValidationError, ResourceError
# Imported where used, for their import cost (python -X importtime): xgboost 1.4 s.

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
    """The featurized splits as float32 arrays. With ``external`` (the external strategy) the training
    split's features stay in their Parquet files (``X["train"]`` is None): fits stream them from
    ``features_dir`` and ``train_sample`` reads a seeded sample of them."""
    X: dict[str, np.ndarray | None]
    y: dict[str, np.ndarray]
    spec: FeatureSpec
    n_classes: int = 2
    features_dir: str | None = None
    filesystem: object = None
    external: bool = False

    @property
    def rows(self) -> dict[str, int]:
        return {k: int(v.shape[0]) for k, v in self.y.items()}

    def train_sample(self, n: int, seed: int = 0) -> np.ndarray:
        """At most ``n`` training rows' features, a seeded uniform sample (all of them if fewer)."""
        X = self.X["train"]
        if X is None:
            return sample_rows(split_path(self.features_dir, "train"), self.spec, n, seed, self.filesystem)
        if X.shape[0] > n:
            X = X[np.random.default_rng(seed).choice(X.shape[0], n, replace=False)]
        return X


def split_path(features_dir: str, split: str) -> str:
    return f"{features_dir.rstrip('/')}/split={split}"


def _matrix(table, cols: list[str]) -> np.ndarray:
    if not cols:
        return np.empty((table.num_rows, 0), np.float32)
    out = np.empty((table.num_rows, len(cols)), np.float32)
    for j, c in enumerate(cols):        # column by column: no float64 or 2-D temporary of the whole table
        out[:, j] = table.column(c).to_numpy(zero_copy_only=False)
    return out


def load_splits(features_dir: str, spec: FeatureSpec, task: str, filesystem=None, external: bool = False) -> Splits:
    """Read the featurized splits into float32 arrays (once, on the driver); with ``external`` the
    training split's labels only (its features are streamed by each fit)."""
    X, y = {}, {}
    cols = list(spec.output_columns)
    for split in ("train", "valid", "test"):
        path = split_path(features_dir, split)
        stream = external and split == "train"
        try:
            table = pads.dataset(path, format="parquet", filesystem=filesystem).to_table(
                columns=[spec.label] if stream else cols + [spec.label])
        except (FileNotFoundError, OSError):
            X[split], y[split] = np.empty((0, len(cols)), np.float32), np.empty(0, np.float32)
            continue
        X[split] = None if stream else _matrix(table, cols)
        y[split] = table.column(spec.label).to_numpy().astype(np.float32)
        del table
    n_classes = 2
    if task == "multiclass":
        n_classes = len(spec.classes) if spec.classes else int(max(np.nanmax(v) for v in y.values() if v.size)) + 1
    return Splits(X, y, spec, n_classes, features_dir=features_dir, filesystem=filesystem,
                  external=external and X["train"] is None)


def sample_rows(path: str, spec: FeatureSpec, n: int, seed: int = 0, filesystem=None) -> np.ndarray:
    """A seeded uniform sample of at most ``n`` rows' features from a split's Parquet files, read
    batch by batch (the split itself is never whole in memory)."""
    cols = list(spec.output_columns)
    ds = pads.dataset(path, format="parquet", filesystem=filesystem)
    total = ds.count_rows()
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(total, n, replace=False)) if total > n else None
    parts, start = [], 0
    for batch in ds.to_batches(columns=cols, batch_size=1 << 20):
        m = _matrix(batch, cols)
        if keep is not None:
            lo, hi = np.searchsorted(keep, [start, start + batch.num_rows])
            m = m[keep[lo:hi] - start]
        parts.append(m)
        start += batch.num_rows
    return np.concatenate(parts) if parts else np.empty((0, len(cols)), np.float32)


def table_arrays(table, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """A featurized Arrow table -> (float32 feature matrix in spec order, float32 labels)."""
    return (_matrix(table, list(spec.output_columns)),
            table.column(spec.label).to_numpy(zero_copy_only=False).astype(np.float32))


def check_labels(splits: Splits, task: str, label: str) -> None:
    """A classifier needs at least two classes in its training split."""
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
def base_params(model: ModelConfig, tune: TuneConfig, nthread: int, n_classes: int = 2,
                all_metrics: bool = False) -> dict:
    """XGBoost params of a fit. ``eval_metric`` is the tuned metric alone (what trials report and
    early stopping watches; every extra metric is one more pass over the validation rows each
    round) unless ``all_metrics``: then every metric of the task, the tuned one last."""
    metrics = TRAIN_METRICS[model.task]
    # the tuned metric last: early stopping watches the last eval metric
    order = ([m for m in metrics.values() if m != metrics[tune.metric]] if all_metrics else []) \
        + [metrics[tune.metric]]
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


# --------------------------------------------------------------------------- external memory
EXTMEM_BATCH_BYTES = 256 << 20      # features handed to XGBoost per iterator step (its page size on disk)


def extmem_cache_bytes(rows: int, n_features: int) -> int:
    """What XGBoost's CPU page cache of a split may take, with a fifth of slack. Measured with xgboost
    3.2 at 256 bins: 50.5 bytes a row for 20 dense float features (2 bytes a bin index, 8 a row
    pointer), 109 bytes a row (5.4 a value) for the same features with 2 % missing values (30M and
    100M rows: 3.0 and 10.1 GiB). Missing values are the rule in real data: plan for them."""
    return int(rows * (5.5 * max(n_features, 1) + 8) * 1.2)


def cache_root(model: ModelConfig) -> str:
    return os.path.abspath(os.path.expanduser(model.cache_dir or os.path.join(tempfile.gettempdir(),
                                                                           "mlops-ray-extmem")))


def check_cache_dir(model: ModelConfig, rows: int, n_features: int) -> str:
    """Refuse a cache directory that cannot be created, is not writable or has too little room for the
    page cache of ``rows`` x ``n_features``, before anything is trained (ConfigError / ResourceError)."""

    root = cache_root(model)
    fix = "point model.cache_dir at a writable local directory"
    try:
        os.makedirs(root, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"model.cache_dir '{root}' cannot be used for external-memory training's page "
                          f"cache ({e.strerror or e}); {fix}") from None
    need, free = extmem_cache_bytes(rows, n_features), shutil.disk_usage(root).free
    if free < need:
        raise ResourceError(f"model.cache_dir '{root}' has {_size(free)} free, but external-memory training of "
                            f"{rows:,} rows x {n_features} features needs about {_size(need)} for its page "
                            f"cache; free space there or {fix} on a larger disk")
    return root


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def parquet_files(paths: list[str], filesystem=None) -> list[str]:
    files = []
    for p in paths:
        try:
            files += pads.dataset(p, format="parquet", filesystem=filesystem).files
        except (FileNotFoundError, OSError):
            continue            # an empty split writes no directory
    return files


def external_dmatrix(paths: list[str], spec: FeatureSpec, cache_dir: str, *, filesystem=None, nthread: int = -1,
                     ref=None, with_label: bool = True):
    """XGBoost's external-memory quantile matrix over the Parquet files under ``paths``: an iterator
    hands XGBoost one batch of about EXTMEM_BATCH_BYTES at a time (two passes: sketch, then bin
    indices into pages under ``cache_dir``), so the split is never whole in memory. The cache files
    go when the matrix is freed."""

    import xgboost as xgb
    cols = list(spec.output_columns)
    files = parquet_files(paths, filesystem)
    batch_rows = max(1024, EXTMEM_BATCH_BYTES // (4 * max(len(cols), 1)))
    prefix = os.path.join(tempfile.mkdtemp(prefix="fit-", dir=cache_dir), "cache")

    class Batches(xgb.DataIter):
        def __init__(self):
            self._it = None
            super().__init__(cache_prefix=prefix, release_data=True, on_host=False)

        def _batches(self):
            ds = pads.dataset(files, format="parquet", filesystem=filesystem)
            pending, n = [], 0
            for b in ds.to_batches(columns=cols + ([spec.label] if with_label else []), batch_size=batch_rows):
                pending.append(b)
                n += b.num_rows
                if n >= batch_rows:
                    yield pending
                    pending, n = [], 0
            if n:
                yield pending

        def next(self, input_data) -> bool:
            if self._it is None:
                self._it = self._batches()
            chunk = next(self._it, None)
            if chunk is None:
                return False
            table = pa.Table.from_batches(chunk)
            input_data(data=_matrix(table, cols), feature_names=cols, feature_types=list(spec.feature_types),
                       label=table.column(spec.label).to_numpy(zero_copy_only=False).astype(np.float32)
                       if with_label else None)
            return True

        def reset(self) -> None:
            self._it = None

    if not files:
        raise ConfigError(f"no Parquet files under {', '.join(paths)} to train on")
    try:
        return xgb.ExtMemQuantileDMatrix(Batches(), missing=np.nan, nthread=nthread, ref=ref,
                                         enable_categorical=True)
    except xgb.core.XGBoostError as e:
        raise _cache_error(e, cache_dir) from None


CACHE_LOW_BYTES = 64 << 20      # free space below which a failed page write is put down to a full disk


def _cache_error(e: Exception, cache_dir: str) -> Exception:
    """XGBoost's failure while writing its page cache, as the error a user can act on when the cache
    is what failed: the message says the disk is full (ENOSPC), or, whatever it says, the cache
    directory is no longer writable or has under CACHE_LOW_BYTES free now. Any other error is
    returned as it is (a bug or bad data, not the disk)."""

    text = str(e)
    full = any(s in text.lower() for s in ("no space left", "disk full", "enospc", "disk quota"))
    try:
        full = full or not os.access(cache_dir, os.W_OK) or shutil.disk_usage(cache_dir).free < CACHE_LOW_BYTES
    except OSError:                 # the directory itself is gone
        full = True
    if not full:
        return e
    first = text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
    return ResourceError(f"external-memory training could not write its page cache in model.cache_dir "
                         f"'{cache_dir}' ({first}); free space there or point model.cache_dir at a larger "
                         f"local disk")


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
    """'auto': out of memory ('external' on one node, data-parallel 'distributed' on several) only
    when one process cannot hold the data comfortably, or data-parallel when the cluster has several
    nodes and the data is large. Ray Train's fixed cost (seconds per fit: processes to start,
    benchmarks/training.py) dwarfs small data."""
    if model.strategy != "auto":
        return model.strategy
    # in memory the driver holds the arrays, the object store a copy for the trials, each trial its
    # quantised matrix: about 3x the float32 values
    matrix_bytes = rows * max(n_features, 1) * 4 * 3
    if matrix_bytes > 0.3 * node_memory_bytes:
        return "distributed" if num_nodes > 1 else "external"
    if num_nodes > 1 and rows >= 20_000_000:
        return "distributed"
    return "single"


def trial_threads(cpus_per_trial: float) -> int:
    return max(1, int(math.floor(cpus_per_trial)))


def default_threads() -> int:
    return os.cpu_count() or 1
