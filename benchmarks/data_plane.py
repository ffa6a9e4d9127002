"""Data plane: ingest + validate + featurize of synthetic Parquet, Ray Data vs single-process pandas.

Both paths do the same work on the same files with the same config (configs/quickstart.yaml,
``data.source`` pointed at the generated data, ``store`` at a temp dir), in the same run:

* **ray** -- ``mlops_ray.pipeline.prepare_data(cfg)``, the project's own path: ``step_ingest``
  (Ray Data ``read_parquet``, ``materialize()`` when it fits), ``step_validate`` with the extra
  partials ``prepare_data`` adds (feature fit for a random split, time sketch for a time
  split), ``step_featurize`` (``map_batches(_transform_batch)`` + ``write_parquet`` of the
  three splits). Ray is started once for the whole benchmark with
  ``ray_runtime(RayConfig(num_cpus=4))``; ``prepare_data`` reuses it.
* **pandas** -- one process: ``pyarrow.parquet`` reads every file into one table, then the
  same pure functions run in-process: ``validate.plan_checks/partial/merge/evaluate`` (via
  ``profile_local``), ``features.split_codes`` (once), ``fit_partial``/``fit_merge``,
  ``features.transform`` on the whole pandas frame, and ``pyarrow.parquet.write_table`` of
  the three splits.

Reported: Ray start-up (``ray.init`` to ready), the first (cold) Ray pass, warm Ray passes
and pandas passes (median of ``--repeats``, default 3; the two alternate, so load from other
processes hits both alike), rows/s, the ratio to pandas, the per-step split of each path
(ingest / validate / featurize), and ``other_cpu``: the share of the CPUs that other
processes used meanwhile (anything above ~0.1 means the figure is skewed). The random split
is the main figure; the time split (one more Ray pass) is reported too, up to 10M rows. The
outputs of both paths are checked to hold the same rows per split and the same vocabulary.

Run (from the repository root)::

    .venv/bin/python -m benchmarks data_plane                 # 3M rows
    .venv/bin/python -m benchmarks data_plane --quick         # 300k rows
    MLOPS_BENCH_ROWS=30000000 .venv/bin/python -m benchmarks data_plane   # or --rows 30000000

Input data is generated with ``mlops_ray.synth`` (in a subprocess, so it does not warm the
measured Ray session) into ``benchmarks/.data/synth-<rows>/`` and reused while it is complete
and newer than ``mlops_ray/data/synth.py``. The per-step columns (ingest, validate,
featurize) break the Ray path down.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import DATA_DIR, ROOT, Options, Timing
from mlops_ray.config import Config, RayConfig, load_config
from mlops_ray.data import features as feat
from mlops_ray.data import ingest, validate
from mlops_ray.data.profile import profile_local

DEFAULT_ROWS = 3_000_000
QUICK_ROWS = 300_000
NUM_CPUS = 4
CONFIG = ROOT / "configs" / "quickstart.yaml"
STEPS = ("ingest", "validate", "featurize")
TIME_SPLIT_MAX_ROWS = 10_000_000         # the time split is measured too up to this size


# --------------------------------------------------------------------------- input data
def _rows_on_disk(path: Path) -> int:
    files = sorted(path.glob("part-*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files) if files else 0


def ensure_data(rows: int) -> Path:
    """``benchmarks/.data/synth-<rows>``, generated with mlops_ray.synth unless already there
    (complete, and newer than the generator's source; delete the directory to force it)."""
    from mlops_ray.data import synth

    path = DATA_DIR / f"synth-{rows}"
    try:
        files = sorted(path.glob("part-*.parquet"))
        fresh = files and min(f.stat().st_mtime for f in files) > Path(synth.__file__).stat().st_mtime
        if fresh and _rows_on_disk(path) == rows:
            return path
    except (OSError, pa.ArrowInvalid):
        pass   # a half-written directory: generate again
    print(f"   generating {rows:,} rows into {path} ...", flush=True)
    code = "import sys, mlops_ray; mlops_ray.synth(int(sys.argv[1]), sys.argv[2], overwrite=True)"
    subprocess.run([sys.executable, "-c", code, str(rows), str(path)], check=True, cwd=ROOT)
    return path


def make_config(source: Path, store: str, split: str) -> Config:
    return load_config(CONFIG, overrides={"data.source": str(source), "store": store,
                                          "data.split.method": split, "ray.num_cpus": NUM_CPUS})


# --------------------------------------------------------------------------- the two paths
def ray_pass(cfg: Config) -> dict:
    """One ingest -> validate -> featurize on Ray Data (the project's code, unchanged)."""
    from mlops_ray.pipeline import prepare_data

    result = prepare_data(cfg, force=True)      # force: never the cached result of an earlier pass
    if getattr(result, "cached", False) or not result.timings:
        raise RuntimeError("prepare_data returned a cached result; the benchmark must recompute")
    if not result.validation.passed:
        raise RuntimeError(f"validation failed on the Ray path: {result.validation.summary()}")
    return {"timings": dict(result.timings), "spec": result.spec, "split_rows": dict(result.split_rows),
            "out_dir": str(Path(result.out_dir) / "features")}


def _label_float32(col: pa.ChunkedArray) -> np.ndarray:
    """The label as float32, exactly as ``pipeline.data._transform_batch`` converts it."""
    if pa.types.is_dictionary(col.type):
        return col.to_pandas().astype("float32").to_numpy()
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32)


def pandas_pass(cfg: Config, out_dir: str) -> dict:
    """The same checks and transforms in this process: pyarrow read, pandas transform, pyarrow write."""
    timings = {}
    t = time.perf_counter()
    source = ingest.inspect_source(cfg.data)                       # same metadata checks + fingerprint
    table = ingest.read_table_local(source, cfg.data)              # pq.read_table per file, concatenated
    timings["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    static, plan = validate.plan_checks(source.schema, cfg.data, cfg.schema_, cfg.model.task)
    fns = {"validate": functools.partial(validate.partial, plan=plan)}
    time_split = cfg.data.split.method == "time"
    if time_split:
        fns["time"] = functools.partial(feat.time_partial, time_column=cfg.data.time_column)
    parts = profile_local(table, fns)
    merged = validate.merge(parts["validate"], cfg.schema_.sample_rows)
    report = validate.evaluate(merged, plan, cfg.data, cfg.schema_, static,
                               fetch_duplicates=lambda c, h, k: validate._dup_rows(table, c, h, k))
    if not report.passed:
        raise RuntimeError(f"validation failed on the pandas path: {report.summary()}")
    cutoffs = feat.time_cutoffs(parts["time"], cfg.data) if time_split else None
    roles = feat.assign_roles(source.schema, cfg.data, cfg.features)
    codes = feat.split_codes(table, cfg.data, cutoffs)             # once, reused for the fit and the write
    spec = feat.fit_merge([feat.fit_partial(table.filter(pa.array(codes == 0)), roles, cfg.features)],
                          roles, cfg.data, cfg.features)
    timings["validate"] = time.perf_counter() - t                  # (Ray fits in its validate pass too)

    t = time.perf_counter()
    df = table.select([c for c in spec.input_columns if c in table.column_names]).to_pandas()
    out = feat.transform(df, spec)
    out[cfg.data.label] = _label_float32(table.column(cfg.data.label))
    result = pa.Table.from_pandas(out, preserve_index=False)
    shutil.rmtree(out_dir, ignore_errors=True)                     # Ray's mode="overwrite" does the same
    split_rows = {}
    for i, name in enumerate(feat.SPLITS):
        part = result.filter(pa.array(codes == i))
        split_rows[name] = part.num_rows
        Path(out_dir, f"split={name}").mkdir(parents=True, exist_ok=True)
        pq.write_table(part, f"{out_dir}/split={name}/part-0.parquet")
    timings["featurize"] = time.perf_counter() - t
    return {"timings": timings, "spec": spec, "split_rows": split_rows, "out_dir": out_dir}


# --------------------------------------------------------------------------- same output?
def _written(out_dir: str) -> dict:
    rows, columns = {}, set()
    for name in feat.SPLITS:
        files = sorted(Path(out_dir, f"split={name}").glob("*.parquet"))
        rows[name] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        for f in files[:1]:
            columns = set(pq.read_schema(f).names) - {"split"}
    return {"rows": rows, "columns": columns}


def check_same(ray_res: dict, pd_res: dict, split: str) -> None:
    """Both paths wrote the same rows per split, columns and vocabularies (time: cut-offs are
    sketched per batch, so split sizes may differ by a hair)."""
    a, b = _written(ray_res["out_dir"]), _written(pd_res["out_dir"])
    problems = []
    if a["columns"] != b["columns"]:
        problems.append(f"columns differ: {sorted(a['columns'] ^ b['columns'])}")
    tol = 0 if split == "random" else 0.005
    for name in feat.SPLITS:
        ra, rb = a["rows"][name], b["rows"][name]
        if abs(ra - rb) > tol * max(ra, rb) or ra != ray_res["split_rows"][name]:
            problems.append(f"{name}: ray wrote {ra:,} rows (counted {ray_res['split_rows'][name]:,}), "
                            f"pandas {rb:,}")
    if split == "random":
        va = {c.name: c.vocab for c in ray_res["spec"].categorical}
        vb = {c.name: c.vocab for c in pd_res["spec"].categorical}
        if va != vb:
            problems.append("categorical vocabularies differ")
    if problems:
        raise AssertionError(f"Ray and pandas outputs differ ({split} split): " + "; ".join(problems))


# --------------------------------------------------------------------------- run
def _row(split: str, measurement: str, rows: int | None, timing: Timing | None = None, *,
         seconds: float | None = None, baseline: float | None = None) -> dict:
    """One result row: median (min, max) seconds, rows/s, ratio to pandas, per-step medians."""
    med = timing.median if timing else seconds
    r = {"split": split, "measurement": measurement, "rows": rows,
         "runs": len(timing.seconds) if timing else 1, "median_s": round(med, 3),
         "min_s": round(timing.min, 3) if timing else None, "max_s": round(timing.max, 3) if timing else None,
         "rows_per_s": round(rows / med) if rows else None,
         "vs_pandas": round(med / baseline, 2) if baseline and rows else None}
    for step in STEPS:
        vals = [res["timings"][step] for res in (timing.results if timing else []) if step in res["timings"]]
        r[f"{step}_s"] = round(float(np.median(vals)), 3) if vals else None
    r["other_cpu"] = round(float(np.median(timing.foreign)), 2) if timing and timing.foreign else None
    return r


def run(opts: Options) -> list[dict]:
    import ray

    from mlops_ray.runtime import ray_runtime

    rows = opts.rows or (QUICK_ROWS if opts.quick else DEFAULT_ROWS)
    source = ensure_data(rows)
    store = tempfile.mkdtemp(prefix="mlops-bench-data-plane-")
    splits = ("random", "time") if rows <= TIME_SPLIT_MAX_ROWS else ("random",)   # random: the main figure
    cfgs = {split: make_config(source, store, split) for split in splits}
    paths = {"pandas": lambda cfg: pandas_pass(cfg, str(Path(store, f"pandas-{cfg.data.split.method}"))),
             "ray": ray_pass}
    timings = {(split, path): Timing() for split in cfgs for path in paths}
    try:
        t = time.perf_counter()
        with ray_runtime(RayConfig(num_cpus=NUM_CPUS)):      # Ray starts once for the whole benchmark
            startup = time.perf_counter() - t
            print(f"   ray start-up {startup:.2f} s ({ray.cluster_resources().get('CPU'):g} logical CPUs)", flush=True)
            cold = Timing()
            cold.add(lambda: ray_pass(cfgs["random"]))          # the first Ray Data pass of the session
            print(f"   ray cold pass (random) {_secs(cold)}", flush=True)
            # Warm passes and the baseline alternate (pandas first in even rounds, Ray first in odd
            # ones), so load from other processes on a shared machine hits both alike. Idle, the
            # Ray processes use about 3 % of two cores.
            for i in range(opts.repeats):
                for split, cfg in cfgs.items():
                    for path in (("pandas", "ray") if i % 2 == 0 else ("ray", "pandas")):
                        timings[split, path].add(functools.partial(paths[path], cfg))
                print(f"   round {i + 1}: " + ", ".join(f"{p} {s} {timings[s, p].seconds[-1]:.2f} s"
                                                    for s, p in timings), flush=True)

        results = []
        for split in cfgs:
            warm, base = timings[split, "ray"], timings[split, "pandas"]
            check_same(warm.last, base.last, split)
            if split == "random":
                results.append(_row(split, "ray start-up (ray.init to ready)", None, seconds=startup))
                results.append(_row(split, "ray cold pass (first of session)", rows, cold, baseline=base.median))
            results.append(_row(split, "ray warm pass", rows, warm, baseline=base.median))
            results.append(_row(split, "pandas + pyarrow, one process", rows, base, baseline=base.median))
        ratio = timings["random", "ray"].median / timings["random", "pandas"].median
        print(f"   warm Ray / pandas at {rows:,} rows (random split): {ratio:.2f}x "
              "(goal: <= 1.2x at 3M rows, < 1x at 30M rows)", flush=True)
        return results
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _secs(t: Timing) -> str:
    return "[" + ", ".join(f"{s:.2f}" for s in t.seconds) + "] s"
