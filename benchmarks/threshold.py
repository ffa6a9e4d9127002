"""Decision thresholds when the base rate moves: recall on a later period with the validation-period threshold vs the threshold re-chosen by `feedback`.

The quality benchmark's time-split binary data sets (``benchmarks.quality``: nycflights13 late
arrival, whose validation period -- autumn -- has far fewer late flights than its test period --
December --, and the drifted synthetic fraud set). Per data set:

1. ``mlops_ray.run(cfg)`` with the quality benchmark's config (``quality.make_config``; 16 trials, 4 with
   ``--quick``): the registered version's threshold is ``model.threshold: auto`` (max F1) chosen on the
   validation period.
2. The test period, in time order, is cut in two: the **labelled window** (its first third: the traffic
   whose labels have arrived) and the **later period** (the remaining two thirds).
3. The real path: ``predict.batch_predict(..., log=True)`` scores the window into the prediction log
   (request id = the id column), the window's labels go through ``labels.feedback`` (keyed by the id
   column) and ``thresholds.follow_base_rate`` re-chooses the threshold on those labelled predictions
   with the version's rule; then ``batch_predict`` scores the later period and its ``label`` column
   uses the new threshold.
4. Recall, precision and F1 on the later period at the validation threshold (the same scores, ``p >=
   t_valid``) and at the re-chosen one (the ``label`` column predict wrote), with the positive rates of
   the validation split, the window and the later period. For context: the max-F1 threshold of the
   later period itself (hindsight, not reachable online) and ``top_rate`` set to the window's positive
   rate, re-chosen on the window's scores.

5. Serving: p50/p99 of single-row requests to one replica with the threshold left alone, then while
   its history changes every second (the replica stats the file every 5 s and re-reads it when it
   changed): what following the threshold costs a request.

Run (from the repository root)::

    .venv/bin/python -m benchmarks threshold            # 100k rows each, 16 trials (a few minutes)
    .venv/bin/python -m benchmarks threshold --quick    # 4k rows, 4 trials
"""
from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np
import pandas as pd

from benchmarks.common import Options
from benchmarks.quality import DATASETS, QUICK_TRIALS, TRIALS, ensure_data, make_config
from benchmarks.train_common import NUM_CPUS

CASES = ("flights", "synth-drift")
WINDOW_SHARE = 1 / 3


def _scores(cfg, data: str, out: str, log: bool) -> tuple[pd.DataFrame, float]:
    """Batch predictions of the champion over ``data`` (id, prediction, label) and the threshold its
    labels used: the real predict path."""
    from mlops_ray.lifecycle.predict import batch_predict
    res = batch_predict(cfg, data, out, "champion", log=log, overwrite=True, progress=None)
    return pd.read_parquet(out), res["threshold"]


def _at(y: np.ndarray, flagged: np.ndarray) -> dict:
    from sklearn import metrics as skm
    return {"recall": round(float(skm.recall_score(y, flagged, zero_division=0)), 4),
            "precision": round(float(skm.precision_score(y, flagged, zero_division=0)), 4),
            "f1": round(float(skm.f1_score(y, flagged, zero_division=0)), 4),
            "flagged": round(float(np.mean(flagged)), 4)}


def one_case(ds, rows_cap: int | None, trials: int, store: str) -> list[dict]:
    import mlops_ray
    from mlops_ray.monitor import thresholds
    from mlops_ray.monitor.labels import feedback, scored_with_labels
    from mlops_ray.storage.store import Store
    from mlops_ray.train.evaluate import choose_threshold

    source, rows = ensure_data(ds, rows_cap)
    _, cfg = make_config(ds, source, store, trials)
    t0 = time.perf_counter()
    res = mlops_ray.run(cfg)
    fit_s = time.perf_counter() - t0
    choice = res.evaluation["threshold_choice"]
    t_valid = float(choice["value"])

    df = pd.read_parquet(source)
    times = pd.to_datetime(df[ds.time_column]).astype("datetime64[ns]").astype(np.int64)
    test = df[times >= res.data.cutoffs[1]].sort_values(ds.time_column).reset_index(drop=True)
    assert len(test) == res.data.split_rows["test"], (len(test), res.data.split_rows)
    cut = int(len(test) * WINDOW_SHARE)
    window, later = test.iloc[:cut], test.iloc[cut:]
    tmp = tempfile.mkdtemp(prefix="mlops-bench-threshold-")
    try:
        window.drop(columns=[ds.label]).to_parquet(f"{tmp}/window.parquet")
        later.drop(columns=[ds.label]).to_parquet(f"{tmp}/later.parquet")
        _scores(cfg, f"{tmp}/window.parquet", f"{tmp}/window-out", log=True)        # into the prediction log
        window[[ds.id_column, ds.label]].to_parquet(f"{tmp}/labels.parquet")
        fb = feedback(cfg, f"{tmp}/labels.parquet")
        t = time.perf_counter()
        entry = thresholds.follow_base_rate(cfg)[res.version]
        rechoose_s = time.perf_counter() - t
        scored, used = _scores(cfg, f"{tmp}/later.parquet", f"{tmp}/later-out", log=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    truth = later.set_index(ds.id_column)[ds.label]
    scored = scored.set_index(ds.id_column).loc[truth.index]
    y, p = truth.to_numpy().astype(int), scored["prediction"].to_numpy()
    assert used == entry["value"], (used, entry)           # predict applied the re-chosen threshold
    st = Store(cfg.store)                                   # the window's logged scores and labels
    p_win, y_win = scored_with_labels(st.uri(cfg.name, "predlog"), st.uri(cfg.name, "labels"), ds.label,
                                      res.version)
    top = choose_threshold(None, p_win, {"top_rate": float(np.nanmean(y_win))})["value"]
    hindsight = choose_threshold(y, p, "auto")["value"]
    base = {"dataset": ds.name, "rows": rows, "trials": trials, "fit_s": round(fit_s, 1),
            "valid_positive": round(choice["valid"]["positive_rate"], 4),
            "window_rows": int(cut), "window_positive": round(float(window[ds.label].mean()), 4),
            "later_rows": int(len(later)), "later_positive": round(float(y.mean()), 4),
            "labelled_in_log": fb["versions"][res.version]["labelled"], "rechoose_s": round(rechoose_s, 3)}
    out = [
        {**base, "threshold_from": "validation period (as registered)", "threshold": round(t_valid, 4),
         **_at(y, p >= t_valid)},
        {**base, "threshold_from": f"re-chosen by feedback on the labelled window ({entry['rule']})",
         "threshold": round(entry["value"], 4), **_at(y, scored["label"].to_numpy())},
        {**base, "threshold_from": "top_rate = the window's positive rate, on the window's scores",
         "threshold": round(top, 4), **_at(y, p >= top)},
        {**base, "threshold_from": "hindsight: max F1 on the later period itself (not reachable online)",
         "threshold": round(hindsight, 4), **_at(y, p >= hindsight)},
    ]
    for r in out:
        print(f"   {ds.name}: {r['threshold_from']:<70} t {r['threshold']:.4f}  recall {r['recall']:.3f}  "
              f"precision {r['precision']:.3f}  f1 {r['f1']:.3f}  flagged {r['flagged']:.3f}", flush=True)
    print(f"   {ds.name}: positive rate valid {base['valid_positive']:.3f}, window {base['window_positive']:.3f}, "
          f"later {base['later_positive']:.3f}; {base['labelled_in_log']:,} labelled predictions", flush=True)
    return out


def serving_latency(opts: Options, rounds: int = 4) -> list[dict]:
    """Latency of the served version with its threshold left alone vs while its history changes every
    second (each replica poll then finds a change: it re-reads the file and swaps the value); the
    serving benchmark's setup (``benchmarks.serving``: one replica, direct ingress, single-row bodies).
    The two cases alternate ``rounds`` times so that a busy machine's drift hits both; medians."""
    import json
    import statistics
    import threading
    from pathlib import Path

    from benchmarks.serving import Runner, config_for, direct_url, free_base, get, make_rows, setup_store
    from mlops_ray.monitor import thresholds
    from mlops_ray.registry import Registry
    from mlops_ray.serve import control
    from mlops_ray.storage.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="mlops-bench-threshold-serving-"))
    runner, cfg = Runner(opts), None
    active, stop = threading.Event(), threading.Event()
    runner.max_wait = 0.0
    single = [json.dumps(r).encode() for r in make_rows()]
    A, B = "threshold left alone", "threshold re-chosen every second"
    try:
        raw, _ = setup_store(tmp, free_base() + 1)
        cfg = config_for(raw, tmp)
        control.deploy(cfg, "champion")
        url, _ = direct_url(cfg)
        base = url.rsplit("/predict", 1)[0]
        meta = Registry(cfg.registry, cfg.store, cfg.name).load_bundle("1").metadata
        store, seen = Store(cfg.store), set()

        def rechoose() -> None:
            i = 0
            while not stop.is_set():
                if active.is_set():
                    i += 1
                    thresholds.append(store, cfg.name, "1", {**thresholds.registered(meta), "source": "feedback",
                                                             "value": 0.3 + (i % 2) / 10}, meta)
                    seen.add(get(base + "/version")["thresholds"]["1"])
                stop.wait(1.0)
        writer = threading.Thread(target=rechoose, daemon=True)
        writer.start()
        for _ in range(rounds):
            for case in (A, B):
                active.set() if case == B else active.clear()
                for n in (1, 8):
                    runner.point(case, url, single, n, 1)
        stop.set()
        writer.join()
        print(f"   thresholds the replica answered with while they changed: {sorted(seen)}", flush=True)
        out = []
        for case in (A, B):
            for n in (1, 8):
                pts = [r for r in runner.rows if r["case"] == case and r["clients"] == n]
                out.append({"dataset": "serving (synthetic, 1 replica, direct)", "case": case, "clients": n,
                            "points": len(pts), **{k: round(statistics.median(r[k] for r in pts), 2)
                                                   for k in ("rps", "p50_ms", "p99_ms", "load1")},
                            "errors": sum(r["errors"] for r in pts),
                            "thresholds_seen": len(seen) if case == B else None})
        for r in out:
            print(f"   {r['case']:<34} {r['clients']} clients, median of {r['points']}: {r['rps']:.0f} req/s, "
                  f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms (load1 {r['load1']})", flush=True)
        return out
    finally:
        stop.set()
        if cfg is not None:
            control.stop(cfg)
        shutil.rmtree(tmp, ignore_errors=True)


def run(opts: Options) -> list[dict]:
    from mlops_ray.config import RayConfig
    from mlops_ray.runtime import ray_runtime

    trials = QUICK_TRIALS if opts.quick else TRIALS
    out: list[dict] = []
    with ray_runtime(RayConfig(num_cpus=NUM_CPUS)):
        for ds in (d for d in DATASETS if d.name in CASES):
            store = tempfile.mkdtemp(prefix="mlops-bench-threshold-store-")
            try:
                out += one_case(ds, opts.rows or (ds.quick_cap if opts.quick else ds.cap), trials, store)
            finally:
                shutil.rmtree(store, ignore_errors=True)
    return out + serving_latency(opts)
