"""Larger than memory: the ``external`` strategy's fit vs the in-memory ``single`` one, wall time and peak memory.

Data: a featurized training split as the data plane writes it (Parquet files of 1M rows, 20 float32
features, 2 % missing, a binary label with signal in interactions), generated chunk by chunk so it is
never whole in this process. Each side runs in a fresh subprocess (its peak RSS is its own):

* **in memory** (``single``): ``xgb.load_splits`` (arrow table -> float32 matrix) + ``xgb.dmatrix``
  (QuantileDMatrix) + ``xgb.train``; skipped with the memory it would need when that exceeds 80 % of
  this machine's RAM (measured: 8.9 GB peak at 30M rows, ~3.7x the float32 values);
* **external**: ``xgb.external_dmatrix`` (ExtMemQuantileDMatrix fed batch by batch from the files,
  page cache on local disk) + ``xgb.train``.

Same params (``hist``, depth 6, eta 0.3, 256 bins), ``--rounds`` rounds, nthread = all cores; peak RSS
from ``getrusage`` of the child, cache size from the cache directory while it trains.

Run (from the repository root)::

    .venv/bin/python -m benchmarks extmem                   # 30M and 100M rows
    .venv/bin/python -m benchmarks extmem --rows 30000000   # one size
    .venv/bin/python -m benchmarks extmem --quick           # 1M rows

Goal (issue 10): 100M rows x 20 features train on the 24 GiB machine; report peak memory.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import Options

SIZES = (30_000_000, 100_000_000)
QUICK = 1_000_000
FEATURES = 20
ROUNDS = 10
CHUNK = 1_000_000
MEMORY_FACTOR = 3.7          # in-memory peak / float32 values (measured: 3.4x at 16M dense rows, 3.7x at 30M with 2 % missing)


def _spec():
    from mlops_ray.data.features import FeatureSpec, NumericFeature
    return FeatureSpec(label="y", numeric=[NumericFeature(f"f{j}") for j in range(FEATURES)])


def write_split(path: str, rows: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, start in enumerate(range(0, rows, CHUNK)):
        n = min(CHUNK, rows - start)
        Xc = rng.standard_normal((n, FEATURES), dtype=np.float32)
        z = Xc[:, 0] + 0.8 * Xc[:, 1] * Xc[:, 2] - 0.5 * np.abs(Xc[:, 3]) + rng.standard_normal(n, dtype=np.float32)
        Xc[rng.random((n, FEATURES), dtype=np.float32) < 0.02] = np.nan
        cols = {f"f{j}": Xc[:, j] for j in range(FEATURES)}
        cols["y"] = (z > 0.4).astype(np.float32)
        pq.write_table(pa.table(cols), os.path.join(path, f"part-{i:05d}.parquet"), row_group_size=250_000,
                       compression="none")


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def child(side: str, features: str, cache: str, rounds: int) -> dict:
    """One side, in its own process: build the matrix, train, report times and peak RSS."""
    import resource
    import threading

    from mlops_ray.train import xgb as X
    spec = _spec()
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 6, "eta": 0.3, "max_bin": 256,
              "nthread": X.default_threads(), "verbosity": 0}
    t0 = time.perf_counter()
    if side == "external":
        d = X.external_dmatrix([X.split_path(features, "train")], spec, cache)
    else:
        s = X.load_splits(features, spec, "binary")
        d = X.dmatrix(s.X["train"], s.y["train"], spec)
        del s
    t1 = time.perf_counter()
    peak_cache = [0]

    def watch():
        while not done.is_set():
            peak_cache[0] = max(peak_cache[0], _du(cache))
            done.wait(2)
    done = threading.Event()
    threading.Thread(target=watch, daemon=True).start()
    bst = X.train(params, d, rounds).booster
    t2 = time.perf_counter()
    done.set()
    return {"rows": int(d.num_row()), "dmatrix_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1),
            "s_per_round": round((t2 - t1) / max(bst.num_boosted_rounds(), 1), 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "cache_gb": round(peak_cache[0] / 2**30, 2)}


def _run_child(side: str, features: str, cache: str, rounds: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "benchmarks.extmem", side, features, cache, str(rounds)],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][:200],
                "wall_s": round(time.perf_counter() - t, 1)}
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "wall_s": round(time.perf_counter() - t, 1)}


def _mem_total() -> float:
    with open("/proc/meminfo") as f:
        return float(next(ln for ln in f if ln.startswith("MemTotal")).split()[1]) * 1024


def run(opts: Options) -> list[dict]:
    sizes = [QUICK] if opts.quick else ([opts.rows] if opts.rows else list(SIZES))
    rows_out = []
    for n in sizes:
        base = tempfile.mkdtemp(prefix="bench-extmem-", dir=os.environ.get("MLOPS_BENCH_TMP"))
        try:
            features = os.path.join(base, "features")
            t = time.perf_counter()
            write_split(train_path := os.path.join(features, "split=train"), n)
            gen_s = time.perf_counter() - t
            parquet_gb = _du(train_path) / 2**30
            need = n * FEATURES * 4 * MEMORY_FACTOR
            sides = {}
            if need > 0.8 * _mem_total():
                sides["in memory"] = {"skipped": f"needs ~{need / 2**30:.0f} GB of {_mem_total() / 2**30:.0f} GB"}
            else:
                sides["in memory"] = _run_child("memory", features, os.path.join(base, "cache"), ROUNDS)
            os.makedirs(os.path.join(base, "cache"), exist_ok=True)
            sides["external"] = _run_child("external", features, os.path.join(base, "cache"), ROUNDS)
            mem, ext = sides["in memory"], sides["external"]
            for side, r in sides.items():
                row = {"rows": f"{n:,}", "side": side, "parquet_gb": round(parquet_gb, 2),
                       "generate_s": round(gen_s, 1), "rounds": ROUNDS, **r}
                if side == "external" and "peak_rss_gb" in mem and "peak_rss_gb" in ext:
                    row["memory_ratio"] = round(ext["peak_rss_gb"] / mem["peak_rss_gb"], 3)
                    row["wall_ratio"] = round(ext["wall_s"] / mem["wall_s"], 3)
                rows_out.append(row)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return rows_out


if __name__ == "__main__":
    side, features, cache, rounds = sys.argv[1:5]
    print(json.dumps(child(side, features, cache, int(rounds))))
