"""Search: Ray Tune + OptunaSearch (TPE, seeded) + ASHA over XGBoost trials.

In: the featurized splits (arrays put in the object store once), the FeatureSpec and the
``model``/``tune`` config. Out: a ``SearchResult`` (best config, score, best iteration,
one row per trial) and, by ``train_final``, the final booster.

Where the time goes, and what is done about it (docs/architecture.md: a naive Tune search measured
at 5.8x plain Optuna):
- data reaches trials once, through the object store (``tune.with_parameters``); each
  worker process builds its QuantileDMatrix once and keeps it across reused actors;
- trials report every ``tune.report_every`` rounds, not every round;
- the searcher is wrapped in a ConcurrencyLimiter sized to the CPUs, so TPE sees results
  as they arrive instead of proposing every trial up front;
- no per-trial checkpoints or loggers (the final model is refitted from the best config).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow.dataset as pads

from mlops_ray.config import ModelConfig, TuneConfig
from mlops_ray.data.features import FeatureSpec
from mlops_ray.errors import DataValidationError, Interrupted, ResourceError
from mlops_ray.storage.fs import for_ray
from mlops_ray.train import xgb as X
from mlops_ray.train.progress import Progress, SearchWatch
# Imported where used, for their import cost (python -X importtime): ray 0.7 s, xgboost 1.4 s.


@dataclass
class SearchResult:
    metric: str
    mode: str
    best_config: dict
    best_score: float
    best_iteration: int
    trials: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    strategy: str = "single"
    restored: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "SearchResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return {"metric": self.metric, "mode": self.mode, "best_config": self.best_config,
                "best_score": self.best_score, "best_iteration": self.best_iteration,
                "n_trials": len(self.trials), "seconds": round(self.seconds, 2), "strategy": self.strategy,
                "restored": self.restored, "baselines": self.baselines(), **_placement(self.trials),
                "trials": self.trials}

    def baselines(self) -> dict[str, float | None]:
        """Baseline name -> its validation score (None: it failed), in the order they ran."""
        return {t["baseline"]: t.get(self.metric) for t in self.trials if t.get("baseline")}


def _placement(trials: list[dict]) -> dict:
    """Where the trials ran and which were retried, from the trial rows (for the run's summary):
    ``nodes`` (Ray node id -> trials whose last attempt ran there), ``worker_nodes`` (node id ->
    Ray Train workers of distributed trials), ``retried`` (trials that failed at least once:
    id, failures, and the error if the retries ran out)."""
    nodes: dict[str, int] = {}
    workers: dict[str, int] = {}
    for t in trials:
        if t.get("node_id"):
            nodes[t["node_id"]] = nodes.get(t["node_id"], 0) + 1
        for n in t.get("worker_node_ids") or []:
            workers[n] = workers.get(n, 0) + 1
    retried = [{"trial_id": t.get("trial_id"), "failures": t["num_failures"], "error": t.get("error")}
               for t in trials if t.get("num_failures")]
    out = {"nodes": nodes, "retried": retried}
    if workers:
        out["worker_nodes"] = workers
    return out


# --------------------------------------------------------------------------- search space
def build_space(cfg: TuneConfig) -> dict:
    from ray import tune
    space = {}
    for name, p in cfg.space.items():
        if p.type == "int":
            space[name] = tune.randint(int(p.low), int(p.high) + 1)
        elif p.type == "float":
            space[name] = tune.uniform(p.low, p.high)
        elif p.type == "log_float":
            space[name] = tune.loguniform(p.low, p.high)
        else:
            space[name] = tune.choice(list(p.values))
    return space


# XGBoost's own defaults for the parameters a search space usually holds (its documentation's values)
XGB_DEFAULTS = {"eta": 0.3, "learning_rate": 0.3, "max_depth": 6, "min_child_weight": 1.0, "subsample": 1.0,
                "colsample_bytree": 1.0, "colsample_bylevel": 1.0, "colsample_bynode": 1.0, "lambda": 1.0,
                "reg_lambda": 1.0, "alpha": 0.0, "reg_alpha": 0.0, "gamma": 0.0, "min_split_loss": 0.0,
                "max_delta_step": 0.0, "scale_pos_weight": 1.0, "max_bin": 256, "max_leaves": 0}
BASELINES = [
    ("xgboost defaults", {}),
    ("depth 8, eta 0.1", {"max_depth": 8, "eta": 0.1, "learning_rate": 0.1}),
    ("depth 6, eta 0.1, subsample 0.8", {"eta": 0.1, "learning_rate": 0.1, "subsample": 0.8,
                                         "colsample_bytree": 0.8}),
]


def baseline_points(cfg: TuneConfig, model: ModelConfig) -> list[tuple[str, dict]]:
    """The search's first trials: ``BASELINES`` over ``XGB_DEFAULTS``, each value fitted into the
    space (clipped to a range; a choice that does not offer it takes its nearest value, or its first
    when the values are not numbers); the rounds are the model's (``num_boost_round``, with its early
    stopping). Ray's Optuna searcher needs a value for every key of the space, so a parameter with no
    known default takes the middle of its range (geometric for ``log_float``) or its first choice.
    Points that come out equal after fitting are evaluated once."""
    fixed = {"num_boost_round": model.num_boost_round, "early_stopping_rounds": model.patience()}
    out: list[tuple[str, dict]] = []
    for name, over in BASELINES[:min(cfg.baselines, cfg.num_samples)]:
        point = {key: _fit_into(p, over.get(key, XGB_DEFAULTS.get(key, fixed.get(key))))
                 for key, p in cfg.space.items()}
        if point and all(point != q for _, q in out):
            out.append((name, point))
    return out


def _fit_into(p, v):
    """``v`` (None: unknown) as a value the search-space entry ``p`` can produce."""
    if p.type == "choice":
        values = list(p.values)
        if v in values:
            return v
        numeric = [x for x in values if isinstance(x, (int, float)) and not isinstance(x, bool)]
        if v is None or isinstance(v, (str, bool)) or not numeric:
            return values[0]
        return min(numeric, key=lambda x: abs(x - v))
    if v is None:
        v = math.sqrt(p.low * p.high) if p.type == "log_float" else (p.low + p.high) / 2
    v = min(max(v, p.low), p.high)
    return int(round(v)) if p.type == "int" else float(v)


def _is_point(config: dict, point: dict) -> bool:
    return all(k in config and np.isclose(float(config[k]), float(v)) if not isinstance(v, str)
               else config.get(k) == v for k, v in point.items())


# --------------------------------------------------------------------------- trials (run on workers)
_DMATRIX_CACHE: dict[str, tuple] = {}


def _dmatrices(key: str, data: dict, spec: FeatureSpec):
    """Build the train/valid QuantileDMatrix once per worker process; reused actors keep it. The
    external strategy streams the training split from its Parquet files into an external-memory
    matrix instead (its page cache under the search's cache directory)."""
    if key not in _DMATRIX_CACHE:
        _DMATRIX_CACHE.clear()
        if data.get("external"):
            dtrain = X.external_dmatrix(data["train_paths"], spec, data["cache_dir"],
                                        filesystem=data.get("filesystem"))
        else:
            dtrain = X.dmatrix(data["X_train"], data["y_train"], spec)
        dvalid = X.dmatrix(data["X_valid"], data["y_valid"], spec, ref=dtrain)
        _DMATRIX_CACHE[key] = (dtrain, dvalid)
    return _DMATRIX_CACHE[key]


def _report_callback(every: int, xgb_metric: str, name: str, mode: str, report: Callable[[dict], None]):
    import xgboost as xgb

    class Report(xgb.callback.TrainingCallback):
        def __init__(self):
            super().__init__()
            self.best = None

        def after_iteration(self, model, epoch, evals_log):
            value = float(evals_log["valid"][xgb_metric][-1])
            if self.best is None or (value > self.best if mode == "max" else value < self.best):
                self.best = value
            if (epoch + 1) % every == 0:
                report({name: self.best, "last": value, "rounds": epoch + 1})
            return False

    return Report()


def single_trial(config: dict, *, data: dict, data_key: str, spec: dict, model: dict, tune_cfg: dict) -> None:
    """One Tune trial: train on the cached DMatrix, report every few rounds, then the final score."""
    from ray import tune
    model_cfg, tcfg = ModelConfig(**model), TuneConfig(**tune_cfg)
    fspec = FeatureSpec.from_dict(spec)
    dtrain, dvalid = _dmatrices(data_key, data, fspec)
    params, rounds, esr = X.split_trial_config(config, model_cfg)
    threads = X.default_threads() if data.get("external") else X.trial_threads(tcfg.cpus_per_trial)
    base = X.base_params(model_cfg, tcfg, threads, int(data.get("n_classes", 2)))
    xgb_metric = X.TRAIN_METRICS[model_cfg.task][tcfg.metric]
    # every report names the node, so a trial stopped early still says where it ran
    where = {"node_id": _node_id()}
    cb = _report_callback(tcfg.report_every, xgb_metric, tcfg.metric, tcfg.mode,
                          lambda m: tune.report({**m, **where}))
    res = X.train({**base, **params}, dtrain, rounds, dvalid, esr, [cb])
    tune.report({tcfg.metric: res.best_score, "best_iteration": res.best_iteration,
                 "rounds": res.booster.num_boosted_rounds(), "final": True, **where})


def _node_id() -> str:
    import ray
    return ray.get_runtime_context().get_node_id()


def distributed_trial(config: dict, *, train_path: str, valid_path: str, spec: dict, model: dict,
                      tune_cfg: dict, storage: str) -> None:
    """One Tune trial that runs a data-parallel Ray Train XGBoostTrainer (Ray's Tune + Train V2 pattern)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    model_cfg = ModelConfig(**model)
    trial_id = tune.get_context().get_trial_id()
    fit_distributed(config, train_path=train_path, valid_path=valid_path, spec=spec, model=model,
                    tune_cfg=tune_cfg, storage=storage, name=f"trial-{trial_id}-{int(time.time())}",
                    callbacks=[TuneReportCallback()], num_workers=model_cfg.num_workers,
                    extra_metrics={"node_id": _node_id()})


# Ray Train V2's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s):
# each state change (workers started, training finished) waits for the next poll
TRAIN_POLL_S = "0.5"


def fit_distributed(config: dict, *, train_path: str, valid_path: str | None, spec: dict, model: dict,
                    tune_cfg: dict, storage: str, name: str, callbacks=(), num_workers: int = 2,
                    rounds: int | None = None, extra_metrics: dict | None = None):
    """Ray Train XGBoostTrainer over the splits' Parquet files; returns the booster saved by rank 0.

    Each worker reads its own share of the files (``_shards``: balanced by bytes; every row once)
    with pyarrow, as xgboost-ray did: a Ray Data streaming split would start a split coordinator,
    read tasks and footer readers per dataset and fit (about half of a small fit's fixed cost,
    measured in benchmarks/training.py) to deliver the same rows. Workers are placed with
    ``SPREAD``: one per node while nodes last (each gets a node's memory and cores; on one node it
    is the same as the default ``PACK``, the strategy being soft). Every report carries
    ``worker_node_ids`` (the workers' Ray node ids, by rank) and ``extra_metrics``."""
    import ray.train
    from ray.train.xgboost import XGBoostTrainer

    shards = {"train": _shards(train_path, num_workers)}
    if valid_path:
        shards["valid"] = _shards(valid_path, num_workers)
    storage_path, storage_fs = for_ray(storage)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)   # read when fit() starts
    trainer = XGBoostTrainer(
        _worker_loop,
        train_loop_config={"config": config, "spec": spec, "model": model, "tune": tune_cfg, "rounds": rounds,
                           "shards": shards, "extra": dict(extra_metrics or {})},
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, resources_per_worker={"CPU": 1},
                                               placement_strategy="SPREAD"),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                                       callbacks=list(callbacks)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        return None
    import xgboost as xgb
    with result.checkpoint.as_directory() as d:
        bst = xgb.Booster()
        bst.load_model(os.path.join(d, "model.ubj"))
    return bst


def _shards(path: str | list[str], num_workers: int) -> dict:
    """One split's Parquet files (``path``: a folder or several) -> what each Train worker reads:
    ``files`` (one list per rank, largest files first to the rank with the fewest bytes) and the
    ``filesystem``; with fewer files than workers every rank gets every file and ``slice`` is set
    (each rank keeps its contiguous share of the rows)."""
    paths = [for_ray(x) for x in ([path] if isinstance(path, str) else path)]
    fs = paths[0][1]
    files: list[tuple[int, str]] = []
    for p, _ in paths:
        ds = pads.dataset(p, format="parquet", filesystem=fs)
        files += [(int(i.size or 0), i.path) for i in ds.filesystem.get_file_info(ds.files)]
    if len(files) < num_workers:
        return {"files": [[f for _, f in files]] * num_workers, "filesystem": fs, "slice": True}
    ranks: list[list[str]] = [[] for _ in range(num_workers)]
    load = [0] * num_workers
    for size, f in sorted(files, reverse=True):
        r = load.index(min(load))
        ranks[r].append(f)
        load[r] += size
    return {"files": ranks, "filesystem": fs, "slice": False}


def _read_shard(shard: dict, rank: int, world: int, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    table = pads.dataset(shard["files"][rank], format="parquet", filesystem=shard["filesystem"]) \
        .to_table(columns=list(spec.output_columns) + [spec.label])
    if shard["slice"]:
        n = table.num_rows
        table = table.slice(rank * n // world, (rank + 1) * n // world - rank * n // world)
    return X.table_arrays(table, spec)


def _worker_loop(cfg: dict) -> None:

    import ray.train
    model_cfg, tcfg = ModelConfig(**cfg["model"]), TuneConfig(**cfg["tune"])
    spec = FeatureSpec.from_dict(cfg["spec"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    extra = {**cfg.get("extra", {}), "worker_node_ids": _worker_node_ids()}
    Xtr, ytr = _read_shard(cfg["shards"]["train"], rank, world, spec)
    dtrain = X.dmatrix(Xtr, ytr, spec)
    dvalid = None
    if "valid" in cfg["shards"]:
        Xva, yva = _read_shard(cfg["shards"]["valid"], rank, world, spec)
        dvalid = X.dmatrix(Xva, yva, spec, ref=dtrain)
    params, rounds, esr = X.split_trial_config(cfg["config"], model_cfg)
    if cfg.get("rounds"):
        rounds, esr = int(cfg["rounds"]), None
    base = X.base_params(model_cfg, tcfg, 1)
    callbacks = []
    if dvalid is not None:
        xgb_metric = X.TRAIN_METRICS[model_cfg.task][tcfg.metric]
        callbacks.append(_report_callback(tcfg.report_every, xgb_metric, tcfg.metric, tcfg.mode,
                                          lambda m: ray.train.report({**m, **extra})))
    res = X.train({**base, **params}, dtrain, rounds, dvalid, esr, callbacks)
    final = {tcfg.metric: res.best_score, "best_iteration": res.best_iteration,
             "rounds": res.booster.num_boosted_rounds(), "final": True, **extra}
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            res.booster.save_model(os.path.join(d, "model.ubj"))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(final, checkpoint=checkpoint)


def _worker_node_ids() -> list[str]:
    """Every Train worker's Ray node id, by rank. Train V2 keeps rank 0's metrics only, so the ids are
    gathered first: an allreduce (sum) over XGBoost's communicator, which Ray Train has opened around
    the loop, of a (world size x id bytes) matrix in which each worker fills its own row."""
    from xgboost import collective
    own = np.frombuffer(bytes.fromhex(_node_id()), np.uint8)
    rows = np.zeros((collective.get_world_size(), own.size), np.int32)
    rows[collective.get_rank()] = own
    rows = collective.allreduce(rows.ravel(), collective.Op.SUM).reshape(rows.shape)
    return [bytes(r.astype(np.uint8)).hex() for r in rows]


# --------------------------------------------------------------------------- the search
def trial_concurrency(strategy: str, tune_cfg: TuneConfig, model: ModelConfig, cluster_cpus: float,
                      local_cores: int | None) -> int:
    """Trials run at once (the ConcurrencyLimiter's size): ``tune.max_concurrent`` when set; one for
    ``external`` (one page cache, all cores); for ``distributed`` what the CPUs allow its workers.
    For ``single``, what the logical CPUs allow at ``cpus_per_trial`` and, when the cluster is this
    machine alone (``local_cores``), no more XGBoost threads than it has cores: an embedded Ray has
    twice the cores in logical CPUs (``runtime.default_num_cpus``), and four one-thread trials on two
    cores only time-share them: per round of the same depth they cost the same CPU as two (3M rows,
    32 trials, ``benchmarks/search.py``), while holding twice the training matrices in memory and
    giving TPE two fewer finished trials to learn from at each proposal. GPU trials are not capped."""
    if tune_cfg.max_concurrent:
        return int(tune_cfg.max_concurrent)
    if strategy == "external":
        return 1
    if strategy == "distributed":
        return max(1, int(cluster_cpus // (model.num_workers + 0.5)))
    conc = max(1, int(cluster_cpus // max(tune_cfg.cpus_per_trial, 1e-9)))
    if local_cores and not tune_cfg.gpus_per_trial:
        conc = min(conc, max(1, local_cores // X.trial_threads(tune_cfg.cpus_per_trial)))
    return conc


def _local_cores() -> int | None:
    """This machine's cores when the Ray cluster is this machine alone (one live node, the driver's);
    None on a multi-node or remote cluster, whose nodes' logical CPUs are taken as they are."""
    import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) != 1 or nodes[0].get("NodeID") != ray.get_runtime_context().get_node_id():
        return None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:       # not Linux
        return os.cpu_count()


def run_search(*, splits: X.Splits, model: ModelConfig, tune_cfg: TuneConfig, storage: str,
               experiment: str, strategy: str, features_dir: str | None = None, resume: bool = False,
               budget_scale: float = 1.0, progress: Progress | None = None) -> SearchResult:
    """Run (or resume) the Tune experiment and return the best trial."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    t0 = time.perf_counter()
    tune_cfg = X.resolve_metric(model, tune_cfg)
    metric, mode = tune_cfg.metric, tune_cfg.mode
    common = dict(spec=splits.spec.to_dict(), model=model.model_dump(), tune_cfg=tune_cfg.model_dump())
    if strategy == "distributed":
        trainable = tune.with_parameters(distributed_trial, train_path=f"{features_dir}/split=train",
                                         valid_path=f"{features_dir}/split=valid", storage=storage, **common)
        # the trial itself is light; its Train workers hold the CPUs
        resources = {"CPU": 0.5}
    else:
        data = {"X_train": splits.X["train"], "y_train": splits.y["train"], "X_valid": splits.X["valid"],
                "y_valid": splits.y["valid"], "n_classes": splits.n_classes}
        if strategy == "external":
            # one trial at a time on all cores, one page cache: the point is memory, not parallelism
            cache = tempfile.mkdtemp(prefix="search-", dir=X.check_cache_dir(
                model, splits.rows["train"], len(splits.spec.output_columns)))
            data.update(external=True, cache_dir=cache, filesystem=splits.filesystem, X_train=None, y_train=None,
                        train_paths=[X.split_path(splits.features_dir, "train")])
        # the cache key names the pipeline, data and config (storage) and the attempt: a long-lived
        # worker never reuses another search's matrices
        trainable = tune.with_parameters(single_trial, data=data, data_key=f"{storage}/{experiment}", **common)
        resources = {"CPU": tune_cfg.cpus_per_trial, "GPU": tune_cfg.gpus_per_trial}
    trainable = tune.with_resources(trainable, resources)

    storage_path, storage_fs = for_ray(storage)
    fs_path = os.path.join(storage_path, experiment)
    watch = SearchWatch(progress, metric, mode, max(1, int(tune_cfg.num_samples * budget_scale)),
                        tune_cfg.max_failures, tune_cfg.time_budget_s) if progress else None
    callbacks = [watch] if watch else []
    run_config = tune.RunConfig(name=experiment, storage_path=storage_path, storage_filesystem=storage_fs,
                                verbose=0, callbacks=callbacks,
                                failure_config=tune.FailureConfig(max_failures=tune_cfg.max_failures),
                                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False))
    restored = False
    if resume and tune.Tuner.can_restore(fs_path, storage_filesystem=storage_fs):
        tuner = tune.Tuner.restore(fs_path, trainable=trainable, storage_filesystem=storage_fs,
                                   resume_unfinished=True, resume_errored=True,
                                   param_space=build_space(tune_cfg))
        restored = True
        if watch:
            _watch_restored(tuner, watch)
    else:
        max_conc = trial_concurrency(strategy, tune_cfg, model, ray.cluster_resources().get("CPU", 1),
                                     _local_cores())
        points = [p for _, p in baseline_points(tune_cfg, model)]
        searcher = ConcurrencyLimiter(OptunaSearch(metric=metric, mode=mode, seed=tune_cfg.seed,
                                                   points_to_evaluate=points or None),
                                      max_concurrent=max_conc)
        # +1: a trial that runs every round still gets to send its final report (best iteration)
        max_t = max(1, model.num_boost_round // tune_cfg.report_every) + 1
        scheduler = {
            # grace: a quarter of the round budget (70 of 300 rounds at report_every 10), where 2
            # reports (20 rounds) stopped slow learners on a drifting validation period before they showed
            "asha": lambda: ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                          grace_period=min(max_t, max(2, max_t // 4)), reduction_factor=3),
            "median": lambda: MedianStoppingRule(time_attr="training_iteration", grace_period=2,
                                                 min_samples_required=3),
            "none": lambda: FIFOScheduler(),
        }[tune_cfg.scheduler]()
        tuner = tune.Tuner(
            trainable, param_space=build_space(tune_cfg), run_config=run_config,
            tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=searcher, scheduler=scheduler,
                                        num_samples=max(1, int(tune_cfg.num_samples * budget_scale)),
                                        time_budget_s=tune_cfg.time_budget_s,
                                        reuse_actors=strategy in ("single", "external"),
                                        trial_dirname_creator=lambda t: t.trial_id))
    try:
        with watch or contextlib.nullcontext(), _interruptible() as interrupted:  # a live display ends
            grid = tuner.fit()                                                   # even when fit() raises
    finally:
        if strategy == "external":     # the trial actors are gone with the search; so is their cache
            shutil.rmtree(data["cache_dir"], ignore_errors=True)
    if interrupted():
        done = grid.num_terminated + grid.num_errors
        raise Interrupted(f"the search was stopped after {done} of {max(1, int(tune_cfg.num_samples * budget_scale))} "
                          f"trials; its state is saved in {storage}/{experiment}: rerun the same command with "
                          f"--resume to continue it (without --resume the search starts again)")
    return _summarise(grid, metric, mode, strategy, time.perf_counter() - t0, restored,
                      baseline_points(tune_cfg, model))


@contextlib.contextmanager
def _interruptible():
    """Ctrl-C ends the search as Tune's own handler does (trials stopped, the experiment state
    written one last time, so ``--resume`` continues it), but the caller learns of it: Tune's handler
    returns from ``fit()`` as if the search were complete, and the pipeline went on to register a
    model from the partial search and cache it. Ours asks Tune to stop with SIGUSR1 (the same graceful
    handler) with Tune's SIGINT handler turned off (TUNE_DISABLE_SIGINT_HANDLER); a second Ctrl-C
    raises KeyboardInterrupt at once. Yields a function that says whether Ctrl-C was pressed."""
    hit: list[float] = []
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield lambda: False          # signals are the main thread's: leave Tune to its own handling
        return

    def on_sigint(signum, frame):
        if hit:
            raise KeyboardInterrupt
        hit.append(time.monotonic())
        if not callable(signal.getsignal(signal.SIGUSR1)):   # Tune installed no handler: SIGUSR1 would kill
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGUSR1)

    old_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    old_int, old_usr1 = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGUSR1, old_usr1)       # Tune leaves its handler installed
        if old_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = old_env


def _watch_restored(tuner, watch) -> None:
    """A restored Tuner runs with the run config pickled when the search began; its SearchWatch came
    back without a progress function (``Tuner.restore`` takes no run config). Put this run's watch in
    its place, counting the trials that had already ended."""
    try:
        config = tuner._local_tuner.get_run_config()
    except AttributeError:           # a Ray whose Tuner is laid out otherwise: no display, still resumes
        return
    config.callbacks = [cb for cb in config.callbacks or [] if not isinstance(cb, SearchWatch)] + [watch]
    grid = tuner.get_results()
    state = watch.state
    state.done, state.failed = grid.num_terminated + grid.num_errors, grid.num_errors
    for r in grid:
        score = (r.metrics or {}).get(state.metric) if r.error is None else None
        if state.better(score):
            state.best = float(score)


def _summarise(grid, metric: str, mode: str, strategy: str, seconds: float, restored: bool,
               baselines: list[tuple[str, dict]] = ()) -> SearchResult:
    # Tune's Trial objects (same order as the grid's results) hold the failure count: public
    # ResultGrid/Result do not expose it
    tune_trials = list(getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or [])
    if len(tune_trials) != len(grid):
        tune_trials = [None] * len(grid)
    trials = []
    for r, tt in zip(grid, tune_trials):
        m = r.metrics or {}
        row = {"trial_id": m.get("trial_id") or getattr(tt, "trial_id", None), "config": r.config,
               metric: m.get(metric), "best_iteration": m.get("best_iteration"), "rounds": m.get("rounds"),
               "iterations": m.get("training_iteration"), "stopped_early": not m.get("final", False),
               "node_id": m.get("node_id"), "num_failures": int(getattr(tt, "num_failures", 0) or 0),
               "error": str(r.error).splitlines()[0][:300] if r.error else None}
        if m.get("worker_node_ids"):
            row["worker_node_ids"] = list(m["worker_node_ids"])
        named = [n for n, pt in baselines if _is_point(r.config or {}, pt)
                 and n not in (t.get("baseline") for t in trials)]
        if named:
            row["baseline"] = named[0]
        trials.append(row)
    scored = [t for t in trials if t[metric] is not None and np.isfinite(t[metric])]
    if not scored:
        errors = [t["error"] for t in trials if t["error"]]
        if len(errors) == len(trials):    # none finished: lost nodes, killed workers, retries spent
            raise ResourceError(f"no trial produced '{metric}': every trial failed (each after up to "
                                f"tune.max_failures retries)" + (f"; first error: {errors[0]}" if errors else ""))
        raise DataValidationError(f"no trial produced a finite '{metric}' on the validation split; check that "
                                  "data.split leaves it rows (and, for a classifier, more than one class)"
                                  + (f"; first trial error: {errors[0]}" if errors else ""))
    best = (max if mode == "max" else min)(scored, key=lambda t: t[metric])
    best_it = best["best_iteration"] if best["best_iteration"] is not None else (best["rounds"] or 1) - 1
    return SearchResult(metric, mode, best["config"], float(best[metric]), int(best_it), trials, seconds,
                        strategy, restored)


# --------------------------------------------------------------------------- final model
def refit_rounds(best_iteration: int, model: ModelConfig, rows: dict) -> int:
    """Rounds of the final fit. The best trial's (best_iteration + 1) fit the training rows; a
    train+valid refit sees more rows, and with ``model.refit_rounds: scaled`` (the default) runs
    proportionally more: round(rounds x (train + valid) / train), the rule the quality benchmark
    measured (``test_refit`` vs ``test_refit_scaled``)."""
    rounds = max(1, int(best_iteration) + 1)
    train, valid = int(rows.get("train", 0) or 0), int(rows.get("valid", 0) or 0)
    if model.refit != "train_valid" or model.refit_rounds != "scaled" or train <= 0:
        return rounds
    return max(1, round(rounds * (train + valid) / train))


def train_final(*, splits: X.Splits, model: ModelConfig, tune_cfg: TuneConfig, search: SearchResult,
                strategy: str, features_dir: str | None = None, storage: str | None = None):
    """Refit the best configuration: on train+valid (``model.refit: train_valid``) for the rounds
    ``refit_rounds`` gives, or on train alone with the best trial's rounds (``best_trial``)."""
    params, _, _ = X.split_trial_config(search.best_config, model)
    rounds = refit_rounds(search.best_iteration, model, splits.rows)
    if strategy == "distributed":
        paths = [f"{features_dir}/split=train"] + ([f"{features_dir}/split=valid"]
                                                    if model.refit == "train_valid" else [])
        return fit_distributed(search.best_config, train_path=paths if len(paths) > 1 else paths[0],
                               valid_path=None, spec=splits.spec.to_dict(), model=model.model_dump(),
                               tune_cfg=tune_cfg.model_dump(), storage=storage, name=f"final-{int(time.time())}",
                               num_workers=model.num_workers, rounds=rounds)
    base = X.base_params(model, tune_cfg, X.default_threads(), splits.n_classes)
    if strategy == "external":
        paths = [X.split_path(splits.features_dir, "train")] + (
            [X.split_path(splits.features_dir, "valid")] if model.refit == "train_valid" else [])
        rows = splits.rows["train"] + (splits.rows["valid"] if model.refit == "train_valid" else 0)
        cache = tempfile.mkdtemp(prefix="final-", dir=X.check_cache_dir(model, rows, len(splits.spec.output_columns)))
        try:
            dtrain = X.external_dmatrix(paths, splits.spec, cache, filesystem=splits.filesystem)
            booster = X.train({**base, **params}, dtrain, rounds).booster
            del dtrain
            return booster
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    if model.refit == "train_valid":
        Xf = np.concatenate([splits.X["train"], splits.X["valid"]])
        yf = np.concatenate([splits.y["train"], splits.y["valid"]])
    else:
        Xf, yf = splits.X["train"], splits.y["train"]
    dtrain = X.dmatrix(Xf, yf, splits.spec)
    return X.train({**base, **params}, dtrain, rounds).booster
