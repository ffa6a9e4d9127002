"""Batch scoring: ``mlops_ray.lifecycle.predict.batch_predict`` on Ray Data vs a single-process pandas loop.

Both score the same synthetic Parquet (``mlops_ray.synth``, reused from ``benchmarks/.data/synth-<rows>/``
as the data_plane benchmark generates it; the label column is there and ignored) with the same
bundle: ``tests.support.configs.make_bundle`` (XGBoost, depth 4, ``ROUNDS`` rounds, features fitted on the
first 20,000 rows), registered as version 1 of a temporary MLflow (SQLite) registry. Both paths run
end to end, Parquet in to Parquet out (id, prediction, model_version), in the same run:

* **ray** -- ``batch_predict(cfg, data, out, "1", overwrite=True)``, the project's own path:
  registry resolve + bundle load on the driver, Ray Data read, ``map_batches(Scorer)`` on a pool of
  one-CPU actors (default size: logical CPUs - 1), ``write_parquet``. Ray is started once for the
  whole benchmark with ``ray_runtime(RayConfig(num_cpus=4))``; ``batch_predict`` reuses it.
* **ray, every CPU but one** -- the same with ``concurrency`` = logical CPUs - 1 (3): the default
  pool has at most one actor per physical core and per 500,000 rows (``predict.default_actors``),
  and the embedded Ray has twice as many logical CPUs as cores.
* **ray + log** -- the same with ``log=True`` (prediction-log files written by the actors), once.
* **baseline** -- one process: ``registry.load_bundle("1")``, ``pyarrow.parquet.read_table`` of the
  files, pandas chunks of 100,000 rows through ``bundle.predict`` with XGBoost ``nthread`` = the
  machine's cores, ``pyarrow.parquet.write_table`` of the result.

Reported: the first (cold) Ray run of the session, warm Ray runs and baseline runs (median of
``--repeats``, default 3, alternating so load from other processes hits both alike), rows/s and
the speed-up over the baseline (``vs_baseline`` = baseline seconds / these seconds), ``cpu_s``, the
CPU seconds this process and its descendants (Ray's processes) used (median; steadier than wall
time on a shared machine), and ``other_cpu``, the share of the CPUs other processes used meanwhile
(anything above ~0.1 means the figure is skewed). The predictions of both paths are checked equal (joined on transaction_id).

Run (from the repository root)::

    .venv/bin/python -m benchmarks.predict              # 1,000,000 rows
    .venv/bin/python -m benchmarks.predict --quick      # 100,000 rows
    .venv/bin/python -m benchmarks.predict --rows 3000000

(``python -m benchmarks predict`` once ``"predict": "benchmarks.predict"`` is in
``benchmarks.BENCHMARKS``; until then this module's ``__main__`` adds it and runs the same runner.)
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import Options, Timing

DEFAULT_ROWS = 1_000_000
QUICK_ROWS = 100_000
NUM_CPUS = 4
CHUNK_ROWS = 100_000
ROUNDS = 100
NAME = "bench"


class CpuTiming(Timing):
    """Timing that also keeps the CPU seconds this process and its descendants (Ray's GCS, raylet
    and workers) used in each run: on a shared machine a steadier figure than wall time."""

    def __init__(self):
        super().__init__()
        self.cpu: list[float] = []

    def _measured(self, load):
        self.cpu.append(sum(last - base for base, last in load._cpu.values()))


def setup_registry(tmp: Path):
    """A config whose store holds version 1 (champion) of a real bundle; returns (cfg, bundle dir)."""
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    from mlops_ray.registry import Registry
    from tests.support.configs import make_bundle, make_config

    df = generate_chunk(SynthSpec(rows=20_000, seed=0), 0, 20_000)
    cfg = make_config("unused", store=str(tmp / "store"), name=NAME, ray={"num_cpus": NUM_CPUS})
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    path = make_bundle(df, tmp / "bundle", rounds=ROUNDS)
    with reg.start_run("bench") as run:
        reg.register(run, path)
    reg.set_alias("champion", "1")
    return cfg, reg


def baseline(cfg, reg, data: Path, out: Path) -> dict:
    """One process: load the bundle, read every file, predict 100k-row pandas chunks, write Parquet."""
    t0 = time.perf_counter()
    bundle = reg.load_bundle("1")
    bundle.booster.set_param({"nthread": os.cpu_count() or 1})
    files = sorted(data.glob("*.parquet"))
    cols = [cfg.data.id_column, *bundle.spec.input_columns]
    table = pa.concat_tables([pq.read_table(f, columns=cols) for f in files])
    t_read = time.perf_counter()
    preds = []
    for start in range(0, table.num_rows, CHUNK_ROWS):
        preds.append(bundle.predict(table.slice(start, CHUNK_ROWS).to_pandas()))
    p = np.concatenate(preds).astype(np.float64)
    t_pred = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pq.write_table(pa.table({cfg.data.id_column: table.column(cfg.data.id_column), "prediction": p,
                             "model_version": pa.array(["1"] * len(p), pa.string())}), out / "part-0.parquet")
    return {"rows": len(p), "read_s": t_read - t0, "predict_s": t_pred - t_read,
            "write_s": time.perf_counter() - t_pred}


def ray_run(cfg, data: Path, out: Path, log: bool = False, concurrency: int | None = None) -> dict:
    from mlops_ray.lifecycle.predict import batch_predict
    return batch_predict(cfg, str(data), str(out), "1", overwrite=True, log=log, concurrency=concurrency)


def check_same(a: Path, b: Path, id_col: str) -> None:
    x = pq.read_table(str(a), columns=[id_col, "prediction"]).to_pandas().set_index(id_col)["prediction"]
    y = pq.read_table(str(b), columns=[id_col, "prediction"]).to_pandas().set_index(id_col)["prediction"]
    if len(x) != len(y) or not x.index.is_unique:
        raise AssertionError(f"ray wrote {len(x):,} rows, the baseline {len(y):,}")
    diff = np.abs(x.loc[y.index].to_numpy() - y.to_numpy()).max()
    if diff > 1e-6:
        raise AssertionError(f"ray and baseline predictions differ by up to {diff:g}")


def _row(measurement: str, rows: int, timing: CpuTiming, base: float | None, note: str = "") -> dict:
    med = timing.median
    return {"measurement": measurement, "rows": rows, "runs": len(timing.seconds), "median_s": round(med, 3),
            "min_s": round(timing.min, 3), "max_s": round(timing.max, 3), "rows_per_s": round(rows / med),
            "vs_baseline": round(base / med, 2) if base else None,
            "cpu_s": round(float(np.median(timing.cpu)), 1) if timing.cpu else None,
            "other_cpu": round(float(np.median(timing.foreign)), 2) if timing.foreign else None, "note": note}


def run(opts: Options) -> list[dict]:
    import ray

    from benchmarks.data_plane import ensure_data
    from mlops_ray.config import RayConfig
    from mlops_ray.runtime import ray_runtime

    rows = opts.rows or (QUICK_ROWS if opts.quick else DEFAULT_ROWS)
    data = ensure_data(rows)
    tmp = Path(tempfile.mkdtemp(prefix="mlops-bench-predict-"))
    try:
        cfg, reg = setup_registry(tmp)
        reg.load_bundle("1")                                   # the registry cache is warm for both paths
        with ray_runtime(RayConfig(num_cpus=NUM_CPUS)):
            print(f"   ray up ({ray.cluster_resources().get('CPU'):g} logical CPUs, {os.cpu_count()} cores)",
                  flush=True)
            cold, warm, base, logged, wide = CpuTiming(), CpuTiming(), CpuTiming(), CpuTiming(), CpuTiming()
            most = NUM_CPUS - 1
            cold.add(lambda: ray_run(cfg, data, tmp / "ray"))
            print(f"   ray cold {cold.seconds[-1]:.2f} s", flush=True)
            runs = {"ray": lambda: warm.add(lambda: ray_run(cfg, data, tmp / "ray")),
                    "baseline": lambda: base.add(lambda: baseline(cfg, reg, data, tmp / "base")),
                    "wide": lambda: wide.add(lambda: ray_run(cfg, data, tmp / "ray-wide", concurrency=most))}
            for i in range(opts.repeats):
                for path in (("baseline", "ray", "wide") if i % 2 == 0 else ("wide", "ray", "baseline")):
                    runs[path]()
                print(f"   round {i + 1}: ray {warm.seconds[-1]:.2f} s, ray with {most} actors "
                      f"{wide.seconds[-1]:.2f} s, baseline {base.seconds[-1]:.2f} s", flush=True)
            logged.add(lambda: ray_run(cfg, data, tmp / "ray-log", log=True))
            print(f"   ray + log {logged.seconds[-1]:.2f} s", flush=True)
        check_same(tmp / "ray", tmp / "base", cfg.data.id_column)
        res = warm.last
        b = base.last
        parts = f"read {b['read_s']:.2f} s, predict {b['predict_s']:.2f} s, write {b['write_s']:.2f} s (last run)"
        ray_note = f"{res['actors']} actors x 1 CPU, {res['batch_size']:,} rows per batch"
        if logged.last["logged"] != rows:
            raise AssertionError(f"the log run logged {logged.last['logged']:,} of {rows:,} rows")
        out = [_row("ray cold (first run of the session)", rows, cold, base.median, ray_note),
               _row("ray warm", rows, warm, base.median, ray_note),
               _row(f"ray warm, concurrency={most} (every logical CPU but one)", rows, wide, base.median,
                    f"{wide.last['batch_size']:,} rows per batch"),
               _row("ray warm + log=True", rows, logged, base.median, f"{logged.last['logged']:,} rows logged"),
               _row(f"baseline: one process, {CHUNK_ROWS:,}-row chunks, nthread {os.cpu_count()}", rows, base,
                    base.median, parts)]
        print(f"   ray {rows / warm.median:,.0f} rows/s, baseline {rows / base.median:,.0f} rows/s: "
              f"ray / baseline throughput {base.median / warm.median:.2f}x", flush=True)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import benchmarks
    from benchmarks.__main__ import main

    benchmarks.BENCHMARKS.setdefault("predict", "benchmarks.predict")
    sys.exit(main(["predict", *sys.argv[1:]]))
