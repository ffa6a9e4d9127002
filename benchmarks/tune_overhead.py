"""Tune overhead: where mlops_ray.train.tune.run_search loses time against plain Optuna.

Diagnostics, not a goal. Everything goes through the project's own ``run_search`` (the
benchmark swaps ``mlops_ray.train.tune.single_trial`` for a traced or trivial trainable of the
same signature; ``mlops_ray`` itself is not changed), on one local Ray started once with
``ray_runtime(RayConfig(num_cpus=4))``:

1. **fixed cost per trial**: N trivial trials (no training) that report once, and that report
   ``num_boost_round / report_every`` times + once (as a real trial does), scheduler none; vs
   plain Optuna asking/telling the same N trivial trials. The Tune driver is profiled
   (cProfile) during the one-report run: time in OptunaSearch, the scheduler, experiment
   checkpoints and waiting.
2. **real trials, traced**: N real trials (``single_trial`` wrapped to log pid, start, end,
   whether the worker's DMatrix cache (``_dmatrices``) already held the data, and the build
   time), ASHA and scheduler none: actor reuse (distinct worker processes), cache hits,
   trial concurrency (sum of trial durations / span; share of the span with >= 2 and 4
   running), start-up before the first trial and tail after the last, gaps between trials on
   one actor, ASHA's effect on wall time, rounds and best score, trials that lost their final
   report.
3. **xgboost throughput on 2 cores**: aggregate boosting rounds/s of 1 process x 2 threads,
   1 x 1, 2 x 1 and 4 x 1 (Ray tasks), a fixed configuration: what 4 concurrent one-thread
   trials buy over one two-thread trial.
4. **ASHA settings** (same traced real trials): the project's ASHA (grace 2 reports,
   reduction factor 3; its row is in section 2) vs a more aggressive grace 1 / factor 2.
   ``run_search`` builds ``ray.tune.schedulers.ASHAScheduler`` at call time; the benchmark
   swaps in a subclass with those arguments changed. Section 2 also counts trials that trained
   every round but lost their final report (ASHA stopping them at ``max_t``: 0 once ``max_t``
   counts the final report).
5. **small things**: evaluating three metrics per round (``base_params``' ``eval_metric``
   list) vs only the tuned one; ``ray.put`` of the trial data (``tune.with_parameters``).

Run::

    .venv/bin/python -m benchmarks tune_overhead            # 200k rows, 32 trials
    .venv/bin/python -m benchmarks tune_overhead --quick    # 50k rows, 8 trials
"""
from __future__ import annotations

import cProfile
import json
import os
import pstats
import re
import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import ForeignLoad, Options
from benchmarks.train_common import NUM_CPUS, native_dmatrix, prepare, r3, with_model, with_tune

DEFAULT_ROWS, QUICK_ROWS = 200_000, 50_000
TRIALS, QUICK_TRIALS = 32, 8
ROUNDS = 100
FIXED = {"eta": 0.1, "max_depth": 6, "min_child_weight": 1.0, "subsample": 0.8,
         "colsample_bytree": 0.8, "lambda": 1.0}
TRACE_DIR = tempfile.gettempdir()


def _trace_path(data_key: str) -> str:
    return os.path.join(TRACE_DIR, f"mlops-bench-trace-{data_key}.jsonl")


# --------------------------------------------------------------------------- trainables (run in Tune actors)
def trivial_trial(config: dict, *, data: dict, data_key: str, spec: dict, model: dict, tune_cfg: dict) -> None:
    """single_trial's signature, no training: ``-r<N>-`` in the experiment name = N reports + 1 final."""
    from ray import tune
    rec = {"pid": os.getpid(), "start": time.time()}
    n = int(re.search(r"-r(\d+)-", data_key).group(1))
    try:
        for i in range(n):
            tune.report({"auc": 0.5 + 0.001 * i, "last": 0.5, "rounds": 10 * (i + 1)})
        tune.report({"auc": 0.5, "best_iteration": 0, "rounds": 10 * n, "final": True})
    finally:
        rec["end"] = time.time()
        with open(_trace_path(data_key), "a") as f:
            f.write(json.dumps(rec) + "\n")


def traced_trial(config: dict, *, data: dict, data_key: str, spec: dict, model: dict, tune_cfg: dict) -> None:
    """The project's single_trial, with a trace line: pid, start/end, DMatrix cache hit, build time."""
    from mlops_ray.data.features import FeatureSpec
    from mlops_ray.train import tune as T    # in the worker: the module as shipped, not patched
    rec = {"pid": os.getpid(), "start": time.time(), "cache_hit": data_key in T._DMATRIX_CACHE}
    T._dmatrices(data_key, data, FeatureSpec.from_dict(spec))
    rec["dmatrix_s"] = time.time() - rec["start"]
    try:
        T.single_trial(config, data=data, data_key=data_key, spec=spec, model=model, tune_cfg=tune_cfg)
    finally:                                 # also when ASHA stops it (SystemExit inside tune.report)
        rec["end"] = time.time()
        with open(_trace_path(data_key), "a") as f:
            f.write(json.dumps(rec) + "\n")


def _run_patched(trainable, p, model, tcfg, storage: str, experiment: str, profile: bool = False):
    """run_search with ``single_trial`` swapped for ``trainable``; returns (wall, result, trace, profile)."""
    from mlops_ray.train import tune as T

    orig = T.single_trial
    T.single_trial = trainable
    prof = cProfile.Profile() if profile else None
    try:
        t = time.perf_counter()
        if prof:
            prof.enable()
        res = T.run_search(splits=p.splits, model=model, tune_cfg=tcfg, storage=storage,
                           experiment=experiment, strategy="single")
        if prof:
            prof.disable()
        wall = time.perf_counter() - t
        t_end = time.time()
    finally:
        T.single_trial = orig
    trace = []
    path = _trace_path(experiment)
    if os.path.exists(path):
        with open(path) as f:
            trace = [json.loads(line) for line in f]
        os.remove(path)
    return wall, res, trace, t_end - wall, t_end, prof


def _trace_stats(trace: list[dict], t0: float, t1: float) -> dict:
    """Concurrency, actor reuse, start-up, tail and per-actor gaps from the trial trace."""
    if not trace:
        return {}
    starts, ends = [r["start"] for r in trace], [r["end"] for r in trace]
    span = max(ends) - min(starts)
    busy = sum(e - s for s, e in zip(starts, ends))
    # share of the span with >= k trials running
    events = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends])
    cur, last, at_least = 0, events[0][0], {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}
    for t, d in events:
        for k in at_least:
            if cur >= k:
                at_least[k] += t - last
        cur += d
        last = t
    gaps = []
    by_pid: dict[int, list[dict]] = {}
    for r in sorted(trace, key=lambda r: r["start"]):
        by_pid.setdefault(r["pid"], []).append(r)
    for rs in by_pid.values():
        gaps += [b["start"] - a["end"] for a, b in zip(rs, rs[1:])]
    out = {"trials_traced": len(trace), "processes": len(by_pid), "span_s": span,
           "trial_s_sum": busy, "trial_s_median": statistics.median(e - s for s, e in zip(starts, ends)),
           "mean_concurrency": busy / span if span > 0 else None,
           "share_ge2": at_least[2] / span if span > 0 else None,
           "share_4": at_least[4] / span if span > 0 else None,
           "startup_s": min(starts) - t0, "tail_s": t1 - max(ends),
           "gap_same_actor_median_s": statistics.median(gaps) if gaps else None}
    if "cache_hit" in trace[0]:
        out["cache_hits"] = sum(r["cache_hit"] for r in trace)
        out["dmatrix_builds"] = sum(not r["cache_hit"] for r in trace)
        built = [r["dmatrix_s"] for r in trace if not r["cache_hit"]]
        out["dmatrix_build_s_median"] = statistics.median(built) if built else None
    return out


def _profile_split(prof: cProfile.Profile) -> dict:
    """Cumulative driver seconds in the parts of the Tune loop that matter here."""
    st = pstats.Stats(prof)
    want = {
        "optuna_search": (r"optuna_search\.py", ("suggest", "on_trial_result", "on_trial_complete")),
        "concurrency_limiter": (r"concurrency_limiter\.py", ("suggest", "on_trial_complete")),
        "scheduler": (r"(async_hyperband|trial_scheduler)\.py", ("on_trial_result", "on_trial_complete",
                                                                  "choose_trial_to_run")),
        "experiment_checkpoint": (r"tune_controller\.py", ("checkpoint",)),
        "controller_step": (r"tune_controller\.py", ("step",)),
        "ray_wait": (r"_private/worker\.py", ("wait",)),
        "tuner_fit": (r"tuner\.py", ("fit",)),
    }
    out = {}
    for key, (file_re, names) in want.items():
        tot = 0.0
        for (fname, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
            if re.search(file_re, fname) and func in names:
                tot = max(tot, ct) if key in ("controller_step", "tuner_fit") else tot + ct
        out[key] = tot
    return out


class _asha_patched:
    """Within the block, ``ray.tune.schedulers.ASHAScheduler`` (what run_search builds) gets other
    arguments: ``max_t_plus`` added to max_t, and any keyword replaced."""

    def __init__(self, max_t_plus: int = 0, **replace):
        self.plus, self.replace = max_t_plus, replace

    def __enter__(self):
        import ray.tune.schedulers as S
        self.orig, plus, replace = S.ASHAScheduler, self.plus, self.replace

        class Patched(self.orig):
            def __init__(self, *args, **kw):
                kw["max_t"] = kw.get("max_t", 100) + plus
                kw.update(replace)
                super().__init__(*args, **kw)

        S.ASHAScheduler = Patched
        return self

    def __exit__(self, *exc):
        import ray.tune.schedulers as S
        S.ASHAScheduler = self.orig


# --------------------------------------------------------------------------- plain Optuna reference
def optuna_trivial(trials: int, space, seed: int) -> float:
    import optuna

    from benchmarks.train_common import optuna_suggest
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    t = time.perf_counter()
    study.optimize(lambda tr: (optuna_suggest(tr, space), 0.5)[1], n_trials=trials, n_jobs=1)
    return time.perf_counter() - t


# --------------------------------------------------------------------------- xgboost throughput
def _xgb_rounds(X, y, spec_dict: dict, nthread: int, rounds: int) -> float:
    import xgboost as xgb

    from mlops_ray.data.features import FeatureSpec
    spec = FeatureSpec.from_dict(spec_dict)
    d = native_dmatrix(X, y, spec, nthread=nthread)
    params = {"objective": "binary:logistic", "eval_metric": "auc", "tree_method": "hist",
              "nthread": nthread, "seed": 42, "max_cat_to_onehot": 8, "verbosity": 0, **FIXED}
    t = time.perf_counter()
    xgb.train(params, d, num_boost_round=rounds)
    return time.perf_counter() - t


def throughput_rows(p, rounds: int) -> list[dict]:
    import ray
    s = p.splits
    task = ray.remote(num_cpus=1)(_xgb_rounds)
    Xr, yr, sd = ray.put(s.X["train"]), ray.put(s.y["train"]), s.spec.to_dict()
    ray.get([task.remote(Xr, yr, sd, 1, 2) for _ in range(4)])          # warm the 4 workers (imports)
    rows = []
    for label, procs, nthread in (("1 process x 2 threads (in the driver)", 1, 2),
                                  ("1 process x 1 thread", 1, 1),
                                  ("2 processes x 1 thread (Ray tasks)", 2, 1),
                                  ("4 processes x 1 thread (Ray tasks, = 4 trials)", 4, 1)):
        load = ForeignLoad()
        t = time.perf_counter()
        if procs == 1 and nthread == 2:
            per = [_xgb_rounds(s.X["train"], s.y["train"], sd, 2, rounds)]
        else:
            per = ray.get([task.remote(Xr, yr, sd, nthread, rounds) for _ in range(procs)])
        wall = time.perf_counter() - t
        rows.append({"section": "3 xgboost throughput", "check": label, "rows": p.rows,
                     "value": round(procs * rounds / wall, 1), "unit": "rounds/s (all processes)",
                     "detail": f"{rounds} rounds each, train time per process {np.median(per):.2f} s, "
                               f"wall {wall:.2f} s", "other_cpu": load.share})
        print(f"   throughput {label}: {procs * rounds / wall:.1f} rounds/s", flush=True)
    return rows


# --------------------------------------------------------------------------- run
def run(opts: Options) -> list[dict]:
    import ray
    import xgboost as xgb

    from mlops_ray.config import RayConfig
    from mlops_ray.runtime import ray_runtime
    from mlops_ray.train import xgb as X

    rows_n = opts.rows or (QUICK_ROWS if opts.quick else DEFAULT_ROWS)
    trials = QUICK_TRIALS if opts.quick else TRIALS
    storage = tempfile.mkdtemp(prefix="mlops-bench-tune-overhead-")
    out: list[dict] = []

    def add(section, check, value, unit, detail="", other=None):
        out.append({"section": section, "check": check, "rows": rows_n, "value": value, "unit": unit,
                    "detail": detail, "other_cpu": other})
        print(f"   [{section}] {check}: {value} {unit} {detail}", flush=True)

    try:
        with ray_runtime(RayConfig(num_cpus=NUM_CPUS)):
            p = prepare(rows_n)
            model = with_model(p, num_boost_round=ROUNDS, strategy="single")
            reports = ROUNDS // p.tune.report_every
            print(f"   data: {p.describe()}; {trials} trials, {ROUNDS} rounds, report_every "
                  f"{p.tune.report_every}", flush=True)

            # 1. fixed cost per trial, trivial trials
            tnone = with_tune(p, num_samples=trials, scheduler="none")
            base = optuna_trivial(trials, tnone.space, tnone.seed)
            add("1 fixed cost", f"plain Optuna, {trials} trivial trials (ask/tell, TPE)", r3(base / trials),
                "s/trial")
            for n in (0, reports):
                load = ForeignLoad()
                wall, res, trace, t0, t1, prof = _run_patched(
                    trivial_trial, p, model, tnone, storage, f"trivial-r{n}-{time.time_ns()}", profile=n == 0)
                st = _trace_stats(trace, t0, t1)
                add("1 fixed cost", f"run_search, {trials} trivial trials, {n + 1} report(s) each",
                    r3(wall / trials), "s/trial",
                    f"wall {wall:.1f} s; {st.get('processes')} actor processes; mean concurrency "
                    f"{st.get('mean_concurrency', 0):.2f}; start-up {st.get('startup_s', 0):.1f} s, tail "
                    f"{st.get('tail_s', 0):.1f} s; median gap between trials on one actor "
                    f"{st.get('gap_same_actor_median_s') or 0:.2f} s", load.share)
                if n == 0:
                    one = wall
                    split = _profile_split(prof)
                    add("1 fixed cost", "driver profile of that run (cumulative s)", r3(split["tuner_fit"]), "s",
                        ", ".join(f"{k} {v:.2f}" for k, v in split.items() if k != "tuner_fit"))
                else:
                    add("1 fixed cost", f"cost per tune.report ({n} extra reports/trial)",
                        r3((wall - one) / (trials * n)), "s/report")

            # 2. real trials, traced: ASHA (the project's setting) and scheduler none
            for sched in ("asha", "none"):
                tcfg = with_tune(p, num_samples=trials, scheduler=sched)
                load = ForeignLoad()
                wall, res, trace, t0, t1, _ = _run_patched(traced_trial, p, model, tcfg, storage,
                                                           f"traced-{sched}-{time.time_ns()}")
                st = _trace_stats(trace, t0, t1)
                share = load.share
                tr = res.trials
                rounds = sum(t.get("rounds") or 0 for t in tr)
                no_final = [t for t in tr if t.get("best_iteration") is None]
                cut = sum((t.get("rounds") or 0) >= ROUNDS for t in no_final)
                add("2 real trials", f"{sched}: wall", r3(wall), "s",
                    f"best {res.metric} {res.best_score:.5f}, {rounds} rounds in all, "
                    f"{len(no_final)} trials without their final report ({cut} of them ran all {ROUNDS} "
                    f"rounds: ASHA stops at max_t = num_boost_round / report_every), best_iteration "
                    f"{res.best_iteration}", share)
                add("2 real trials", f"{sched}: actor processes / DMatrix builds / cache hits",
                    f"{st.get('processes')} / {st.get('dmatrix_builds')} / {st.get('cache_hits')}", "",
                    f"median build {st.get('dmatrix_build_s_median') or 0:.2f} s", share)
                add("2 real trials", f"{sched}: mean concurrency", r3(st.get("mean_concurrency")), "trials",
                    f"share of span with >=2 running {st.get('share_ge2', 0):.0%}, with 4 running "
                    f"{st.get('share_4', 0):.0%}; trial-seconds {st.get('trial_s_sum', 0):.1f}, median trial "
                    f"{st.get('trial_s_median', 0):.2f} s", share)
                add("2 real trials", f"{sched}: start-up / tail / gap on one actor",
                    f"{st.get('startup_s', 0):.2f} / {st.get('tail_s', 0):.2f} / "
                    f"{st.get('gap_same_actor_median_s') or 0:.2f}", "s",
                    "run_search start -> first trial start / last trial end -> return / median "
                    "between consecutive trials on one actor", share)

            # 3. throughput
            out += throughput_rows(p, 50)

            # 4. ASHA settings (the project's "asha" row is in section 2)
            tasha = with_tune(p, num_samples=trials, scheduler="asha")
            for label, changes in (("grace 1 report, reduction factor 2", {"grace_period": 1, "reduction_factor": 2}),):
                load = ForeignLoad()
                with _asha_patched(**changes):
                    wall, res, trace, t0, t1, _ = _run_patched(traced_trial, p, model, tasha, storage,
                                                               f"asha-{time.time_ns()}")
                st = _trace_stats(trace, t0, t1)
                tr = res.trials
                no_final = sum(t.get("best_iteration") is None for t in tr)
                add("4 ASHA settings", f"{label}: wall", r3(wall), "s",
                    f"best {res.metric} {res.best_score:.5f}, {sum(t.get('rounds') or 0 for t in tr)} rounds in all, "
                    f"{no_final} trials without their final report, mean concurrency "
                    f"{st.get('mean_concurrency', 0):.2f}", load.share)

            # 4. small things
            s = p.splits
            dtr = native_dmatrix(s.X["train"], s.y["train"], s.spec)
            dva = native_dmatrix(s.X["valid"], s.y["valid"], s.spec, ref=dtr)
            full = {**X.base_params(p.model, p.tune, 1, all_metrics=True), **FIXED}
            times = {}
            for label, metrics in (("three metrics", full["eval_metric"]), ("tuned metric only", ["auc"])):
                ts = []
                for _ in range(3):
                    t = time.perf_counter()
                    xgb.train({**full, "eval_metric": metrics}, dtr, 50, evals=[(dva, "valid")], verbose_eval=False)
                    ts.append(time.perf_counter() - t)
                times[label] = statistics.median(ts)
            add("5 small things", "eval_metric [logloss, aucpr, auc] vs [auc], 1 thread, 50 rounds",
                round(times["three metrics"] / times["tuned metric only"], 3), "x",
                f"{times['three metrics']:.2f} s vs {times['tuned metric only']:.2f} s")
            data = {"X_train": s.X["train"], "y_train": s.y["train"], "X_valid": s.X["valid"],
                    "y_valid": s.y["valid"]}
            t = time.perf_counter()
            ref = ray.put(data)
            add("5 small things", "ray.put of the trial data (once per run_search)", r3(time.perf_counter() - t),
                "s", f"{sum(v.nbytes for v in data.values()) / 1e6:.0f} MB")
            del ref
        return out
    finally:
        shutil.rmtree(storage, ignore_errors=True)
