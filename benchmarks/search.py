"""Search efficiency: Ray Tune (OptunaSearch TPE + ASHA, parallel trials) vs plain Optuna, same data.

Three searches per data size, in the same run, on the same prepared splits, with the same search
space (``mlops_ray.config`` default: eta, max_depth, min_child_weight, subsample,
colsample_bytree, lambda), the same XGBoost params (``xgb.base_params``), the same
``num_boost_round``, early stopping and seed:

* **ray** -- ``mlops_ray.train.tune.run_search(strategy="single")``, the project's own path with
  the quickstart tune settings: OptunaSearch (TPE, seeded) in a ConcurrencyLimiter, ASHA,
  ``cpus_per_trial: 1`` (4 logical CPUs on 2 cores: 4 concurrent one-thread trials), a report
  every ``report_every`` rounds, reused actors, one QuantileDMatrix per worker process.
* **optuna (a)** -- ``optuna.create_study(sampler=TPESampler(seed))``, ``n_jobs=1``, the
  train/valid QuantileDMatrix built once, ``xgboost.train`` with nthread = all cores, no pruning.
* **optuna (b)** -- the same with ``MedianPruner(n_startup_trials=5, n_warmup_steps=2 *
  report_every)`` (the warm-up mirrors ASHA's grace period of 2 reports) and an XGBoost callback
  that calls ``trial.report(best so far, round)`` + ``trial.should_prune()`` every
  ``report_every`` rounds (``optuna.integration`` is not in Optuna 5; the callback is 15 lines).

Reported per size and search: wall time, best valid score (the tuned metric at the best
iteration), the ratio to (a) and (b), the score difference to each baseline, boosted rounds in
all trials, trials stopped early (ASHA / pruner), and overheads: for the baselines
(wall - DMatrix - sum of trial train times) / trials; for Ray (ray - baseline) / trials.

Default: 32 trials at 200k and at 3M rows; ``--quick``: 8 trials at 50k and 200k rows. Each
search runs once per size (the Optuna baselines are deterministic given the seed, the Ray search
is not; ``other_cpu`` shows how busy other processes kept the machine); ``--rows N`` runs that
size only, ``--repeats`` times (median reported). ``num_boost_round`` is 100, and 50 above 1M
rows (on 2 cores one 3M baseline of 32 x 100 rounds takes ~16 min, the quickstart's 300 rounds
~45 min); early stopping 20 and ``report_every`` 10 are the quickstart's.

Goals: at 3M rows ray <= 0.6x (a) and <= 1.0x (b) with a best score no worse than 0.5 %;
at 200k rows ray <= 1.5x (a).

Run (from the repository root)::

    .venv/bin/python -m benchmarks search
    .venv/bin/python -m benchmarks search --quick
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import ForeignLoad, Options
from benchmarks.train_common import NUM_CPUS, native_dmatrix, optuna_suggest, prepare, r3, with_model, with_tune

SIZES = (200_000, 3_000_000)
QUICK_SIZES = (50_000, 200_000)
TRIALS, QUICK_TRIALS = 32, 8
ROUNDS = 100                     # num_boost_round of every search up to LARGE_ROWS
LARGE_ROWS, LARGE_ROUNDS = 1_000_000, 50    # above: 50 rounds (2 cores: 3M x 32 x 100 rounds is ~16 min per baseline)
GOALS = {"large": {"vs_a": 0.6, "vs_b": 1.0, "score_drop": 0.005}, "small": {"vs_a": 1.5}}


# --------------------------------------------------------------------------- plain Optuna
def _prune_callback(trial, xgb_metric: str, every: int, mode: str):
    import optuna
    import xgboost as xgb

    class OptunaPruning(xgb.callback.TrainingCallback):
        """Report the best valid score so far every ``every`` rounds; stop a trial the pruner prunes."""

        def __init__(self):
            super().__init__()
            self.best, self.rounds = None, 0

        def after_iteration(self, model, epoch, evals_log):
            v = float(evals_log["valid"][xgb_metric][-1])
            if self.best is None or (v > self.best if mode == "max" else v < self.best):
                self.best = v
            self.rounds = epoch + 1
            if (epoch + 1) % every == 0:
                trial.report(self.best, epoch + 1)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at round {epoch + 1}")
            return False

    return OptunaPruning()


def optuna_search(p, model, tcfg, trials: int, prune: bool) -> dict:
    import optuna
    import xgboost as xgb

    from mlops_ray.train import xgb as X

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = p.splits
    t0 = time.perf_counter()
    dtr = native_dmatrix(s.X["train"], s.y["train"], s.spec)
    dva = native_dmatrix(s.X["valid"], s.y["valid"], s.spec, ref=dtr)
    dm_s = time.perf_counter() - t0
    base = X.base_params(model, tcfg, X.default_threads(), s.n_classes)
    metric = X.TRAIN_METRICS[model.task][tcfg.metric]
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2 * tcfg.report_every) \
        if prune else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize" if tcfg.mode == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=tcfg.seed), pruner=pruner)
    train_s, rounds = [], []

    def objective(trial):
        config = optuna_suggest(trial, tcfg.space)
        params, n, esr = X.split_trial_config(config, model)
        cbs = [_prune_callback(trial, metric, tcfg.report_every, tcfg.mode)] if prune else []
        hist: dict = {}
        t = time.perf_counter()
        try:
            bst = xgb.train({**base, **params}, dtr, num_boost_round=n, evals=[(dva, "valid")],
                            evals_result=hist, early_stopping_rounds=esr, callbacks=cbs, verbose_eval=False)
            rounds.append(bst.num_boosted_rounds())
        except optuna.TrialPruned:
            rounds.append(cbs[0].rounds)
            raise
        finally:
            train_s.append(time.perf_counter() - t)
        return float(hist["valid"][metric][bst.best_iteration])

    study.optimize(objective, n_trials=trials, n_jobs=1)
    wall = time.perf_counter() - t0
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return {"wall_s": wall, "best_score": float(study.best_value), "dmatrix_s": dm_s,
            "train_s_sum": float(sum(train_s)), "rounds_total": int(sum(rounds)), "stopped": pruned,
            "trials": len(study.trials),
            "overhead_per_trial_s": (wall - dm_s - sum(train_s)) / max(1, len(study.trials))}


# --------------------------------------------------------------------------- Ray Tune
def ray_search(p, model, tcfg, trials: int, storage: str) -> dict:
    from mlops_ray.train import tune as T

    t0 = time.perf_counter()
    res = T.run_search(splits=p.splits, model=model, tune_cfg=tcfg, storage=storage,
                       experiment=f"search-{p.rows}-{time.time_ns()}", strategy="single")
    wall = time.perf_counter() - t0
    tr = res.trials
    cut = sum(t.get("best_iteration") is None and (t.get("rounds") or 0) >= model.num_boost_round for t in tr)
    return {"wall_s": wall, "best_score": res.best_score, "rounds_total": int(sum(t.get("rounds") or 0 for t in tr)),
            # ASHA's early stops (SearchResult's stopped_early also counts trials cut at max_t after all rounds)
            "stopped": sum(bool(t.get("stopped_early")) for t in tr) - cut, "trials": len(tr),
            "errors": sum(bool(t.get("error")) for t in tr),
            "no_final_report": sum(t.get("best_iteration") is None for t in tr),
            "cut_at_max_t": cut,
            "best_iteration": res.best_iteration}


# --------------------------------------------------------------------------- run
def _med(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _size_rows(p, runs: dict[str, list[dict]], trials: int, p_rounds: int) -> list[dict]:
    a_wall, b_wall = _med(runs["optuna (a)"], "wall_s"), _med(runs["optuna (b)"], "wall_s")
    a_score, b_score = _med(runs["optuna (a)"], "best_score"), _med(runs["optuna (b)"], "best_score")
    out = []
    for name, rs in runs.items():
        wall, score = _med(rs, "wall_s"), _med(rs, "best_score")
        row = {"rows": p.rows, "search": name, "trials": trials, "rounds": p_rounds, "runs": len(rs),
               "wall_s": r3(wall), "min_s": r3(min(r["wall_s"] for r in rs)),
               "max_s": r3(max(r["wall_s"] for r in rs)),
               "vs_a": round(wall / a_wall, 2), "vs_b": round(wall / b_wall, 2),
               "best_score": round(score, 5),
               "score_vs_a_pct": round(100 * (score - a_score) / abs(a_score), 2),
               "score_vs_b_pct": round(100 * (score - b_score) / abs(b_score), 2),
               "rounds_total": int(_med(rs, "rounds_total")), "stopped_early": int(_med(rs, "stopped")),
               "dmatrix_s": r3(_med(rs, "dmatrix_s")), "train_s_sum": r3(_med(rs, "train_s_sum")),
               "overhead_per_trial_s": r3(_med(rs, "overhead_per_trial_s")),
               "ray_minus_a_per_trial_s": None, "ray_minus_b_per_trial_s": None,
               "other_cpu": round(float(np.median([r["other_cpu"] for r in rs if r.get("other_cpu") is not None]
                                                  or [float("nan")])), 2)}
        if name == "ray":
            row["ray_minus_a_per_trial_s"] = r3((wall - a_wall) / trials)
            row["ray_minus_b_per_trial_s"] = r3((wall - b_wall) / trials)
            row["note"] = (f"errors {int(_med(rs, 'errors'))}; trials without their final report "
                           f"{int(_med(rs, 'no_final_report'))}, {int(_med(rs, 'cut_at_max_t'))} of them after all "
                           f"{p_rounds} rounds (ASHA's max_t stop)")
        out.append(row)
    return out


def _goal_lines(rows: list[dict], largest: int) -> None:
    for r in rows:
        if r["search"] != "ray":
            continue
        if r["rows"] >= 1_000_000 or r["rows"] == largest and r["rows"] > 200_000:
            g = GOALS["large"]
            ok = r["vs_a"] <= g["vs_a"] and r["vs_b"] <= g["vs_b"] and \
                min(r["score_vs_a_pct"], r["score_vs_b_pct"]) >= -100 * g["score_drop"]
            print(f"   {r['rows']:,} rows: ray {r['vs_a']:.2f}x (a), {r['vs_b']:.2f}x (b), score "
                  f"{r['score_vs_a_pct']:+.2f} % vs (a), {r['score_vs_b_pct']:+.2f} % vs (b) -> "
                  f"{'meets' if ok else 'misses'} the goal (<= 0.6x a, <= 1.0x b, score >= -0.5 %)", flush=True)
        else:
            ok = r["vs_a"] <= GOALS["small"]["vs_a"]
            print(f"   {r['rows']:,} rows: ray {r['vs_a']:.2f}x (a), {r['vs_b']:.2f}x (b) -> "
                  f"{'meets' if ok else 'misses'} the goal (<= 1.5x a)", flush=True)


def run(opts: Options) -> list[dict]:
    import ray

    from mlops_ray.config import RayConfig
    from mlops_ray.runtime import ray_runtime

    sizes = (opts.rows,) if opts.rows else (QUICK_SIZES if opts.quick else SIZES)
    trials = QUICK_TRIALS if opts.quick else TRIALS
    storage = tempfile.mkdtemp(prefix="mlops-bench-search-")
    out: list[dict] = []
    try:
        t = time.perf_counter()
        with ray_runtime(RayConfig(num_cpus=NUM_CPUS)):
            print(f"   ray start-up {time.perf_counter() - t:.2f} s "
                  f"({ray.cluster_resources().get('CPU'):g} logical CPUs)", flush=True)
            for rows in sizes:
                p = prepare(rows)
                rounds = LARGE_ROUNDS if rows > LARGE_ROWS else ROUNDS
                model = with_model(p, num_boost_round=rounds, strategy="single")
                tcfg = with_tune(p, num_samples=trials)
                print(f"   data: {p.describe()} (prepare_data {p.prepare_s:.1f} s); {trials} trials, "
                      f"{rounds} rounds, early stopping {model.patience()}, scheduler "
                      f"{tcfg.scheduler}, cpus_per_trial {tcfg.cpus_per_trial:g}, report_every {tcfg.report_every}",
                      flush=True)
                fns = {"ray": lambda: ray_search(p, model, tcfg, trials, storage),
                       "optuna (a)": lambda: optuna_search(p, model, tcfg, trials, prune=False),
                       "optuna (b)": lambda: optuna_search(p, model, tcfg, trials, prune=True)}
                runs: dict[str, list[dict]] = {k: [] for k in fns}
                repeats = opts.repeats if opts.rows else 1
                for i in range(repeats):
                    order = list(fns) if i % 2 == 0 else list(reversed(fns))
                    for name in order:
                        load = ForeignLoad()
                        r = fns[name]()
                        r["other_cpu"] = load.share
                        runs[name].append(r)
                        print(f"   {rows:,} rows, run {i + 1}, {name}: {r['wall_s']:.1f} s, best "
                              f"{tcfg.metric} {r['best_score']:.5f}, {r['rounds_total']} rounds, "
                              f"{r['stopped']} stopped early, other CPU {r['other_cpu']}", flush=True)
                out += _size_rows(p, runs, trials, rounds)
                del p
            _goal_lines(out, max(sizes))
        return out
    finally:
        shutil.rmtree(storage, ignore_errors=True)
