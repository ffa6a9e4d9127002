"""Where the Ray data plane spends its time: the same pass run several ways, interleaved.

Not a registered benchmark: a profiling script behind the suggestions in the data-plane
report. Every variant computes the same validation report, feature spec and three
written splits as ``mlops_ray.pipeline.prepare_data`` (random split); variants differ only
in how Ray reads and schedules the work. All run in one Ray session (``num_cpus=4``), one
pass of each variant per round, in rotating order, so load from other processes hits them
alike (``other_cpu``: the share of the CPUs other processes used meanwhile).

    .venv/bin/python -m benchmarks.profile_data_plane                 # 3M rows, 3 rounds
    .venv/bin/python -m benchmarks.profile_data_plane --rows 300000 --repeats 5 --variants as-is,pandas

Variants (nothing under mlops_ray/ is edited; the script swaps functions at run time, so it
follows ``pipeline.step_ingest(cfg, source) -> Dataset`` as it is today):

* ``as-is``              ``prepare_data`` unchanged.
* ``read_parquet``       ``step_ingest`` as it was before: Ray Data ``read_parquet`` +
                         ``materialize()`` (footer-reader actors as ``runtime`` sets them).
* ``read_parquet-32``    the same with Ray 2.60's default of 32 footer-reader actors per read.
* ``no-materialize``     ``read_parquet`` without ``materialize()``: every pass reads the files.
* ``nobudget``           as-is, with Ray Data's ``ResourceBudget`` backpressure policy off (on
                         small datasets it starts map tasks one at a time).
* ``plain-tasks``        no Ray Data at all: plain Ray tasks read row-group runs into the object
                         store, one task per block computes the validate+fit partials, one per
                         block transforms and writes.
* ``pandas``             the single-process baseline of ``benchmarks.data_plane``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from benchmarks.common import Timing, markdown_table
from benchmarks.data_plane import NUM_CPUS, STEPS, ensure_data, make_config, pandas_pass, ray_pass

VARIANTS = ("as-is", "read_parquet", "read_parquet-32", "no-materialize", "nobudget", "plain-tasks", "pandas")


# --------------------------------------------------------------------------- reading with tasks
def _read_unit(path: str, row_groups: list[int], columns: list[str] | None) -> pa.Table:
    return pq.ParquetFile(path).read_row_groups(row_groups, columns=columns)


def read_units(source, target_rows: int) -> list[tuple[str, list[int]]]:
    """Runs of consecutive row groups of about ``target_rows`` rows (from the footers)."""
    units = []
    for e in source.files:
        meta = pq.ParquetFile(e.path).metadata
        run, n = [], 0
        for i in range(meta.num_row_groups):
            run.append(i)
            n += meta.row_group(i).num_rows
            if n >= target_rows:
                units.append((e.path, run))
                run, n = [], 0
        if run:
            units.append((e.path, run))
    return units


def task_read(cfg, source) -> list:
    """The source as Arrow tables in the object store, one per unit (about 2 units per CPU)."""
    import ray

    target = int(np.clip(source.rows / (2 * NUM_CPUS), 128_000, 1_000_000))
    read = ray.remote(num_cpus=1)(_read_unit)
    return [read.remote(p, rgs, cfg.data.columns) for p, rgs in read_units(source, target)]


def read_parquet_ingest(cfg, source):
    """``pipeline.step_ingest`` as it was: Ray Data ``read_parquet``, materialized when it fits."""
    from mlops_ray import pipeline as pl
    from mlops_ray.data import ingest

    ds = ingest.read_dataset(source, cfg.data)
    return ds.materialize() if pl._fits_in_memory(source) else ds


# --------------------------------------------------------------------------- no Ray Data
def _partials(table: pa.Table, fns: dict) -> dict:
    return {k: fn(table) for k, fn in fns.items()}


def _transform_write(table: pa.Table, cfg, spec, cutoffs, out_dir: str) -> int:
    from mlops_ray.pipeline import _transform_batch

    out = pa.Table.from_pandas(_transform_batch(table, cfg, spec, cutoffs), preserve_index=False)
    pads.write_dataset(out, out_dir, format="parquet", partitioning=["split"], partitioning_flavor="hive",
                       basename_template=f"{uuid.uuid4().hex}-{{i}}.parquet",
                       existing_data_behavior="overwrite_or_ignore")
    return out.num_rows


def plain_tasks_pass(cfg, out_dir: str) -> dict:
    """prepare_data's work (random split) with plain Ray tasks over in-memory Arrow blocks."""
    import ray

    from mlops_ray import pipeline as pl
    from mlops_ray.data import features as feat
    from mlops_ray.data import ingest, validate

    assert cfg.data.split.method == "random", "the prototype covers the random split"
    timings = {}
    t = time.perf_counter()
    source = ingest.inspect_source(cfg.data)
    blocks = task_read(cfg, source)
    ray.wait(blocks, num_returns=len(blocks), fetch_local=False)
    timings["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    static, plan = validate.plan_checks(source.schema, cfg.data, cfg.schema_, cfg.model.task)
    roles = feat.assign_roles(source.schema, cfg.data, cfg.features)
    fns = {"validate": pl._bind(validate.partial, plan=plan),
           "fit": pl._bind(pl._fit_train, cfg=cfg, roles=roles, cutoffs=None)}
    partials = ray.remote(num_cpus=1)(_partials)
    parts = ray.get([partials.remote(b, fns) for b in blocks])
    report = validate.evaluate(validate.merge([p["validate"] for p in parts], cfg.schema_.sample_rows),
                               plan, cfg.data, cfg.schema_, static)
    if not report.passed:
        raise RuntimeError(report.summary())
    timings["validate"] = time.perf_counter() - t

    t = time.perf_counter()
    spec = feat.fit_merge([p["fit"]["fit"] for p in parts], roles, cfg.data, cfg.features)
    shutil.rmtree(out_dir, ignore_errors=True)
    write = ray.remote(num_cpus=1)(_transform_write)
    written = sum(ray.get([write.remote(b, cfg, spec, None, out_dir) for b in blocks]))
    if written != source.rows:
        raise RuntimeError(f"wrote {written:,} of {source.rows:,} rows")
    timings["featurize"] = time.perf_counter() - t
    return {"timings": timings}


# --------------------------------------------------------------------------- variants
FOOTER_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"


@contextlib.contextmanager
def variant(name: str):
    """Swap in what the variant changes; restore it afterwards."""
    from ray.data import DataContext

    from mlops_ray import pipeline as pl

    saved = pl.step_ingest, pl._fits_in_memory, os.environ.get(FOOTER_ENV)
    ctx = DataContext.get_current()
    policies = ctx.get_config("backpressure_policies.enabled", None)
    try:
        if name.startswith("read_parquet") or name == "no-materialize":
            pl.step_ingest = read_parquet_ingest
        if name == "read_parquet-32":
            os.environ[FOOTER_ENV] = "32"             # read when read_parquet builds its indexer
        if name == "no-materialize":
            pl._fits_in_memory = lambda source: False
        if name == "nobudget":
            from ray.data._internal.execution.backpressure_policy import (
                ENABLED_BACKPRESSURE_POLICIES, ResourceBudgetBackpressurePolicy)
            ctx.set_config("backpressure_policies.enabled",
                           [p for p in ENABLED_BACKPRESSURE_POLICIES if p is not ResourceBudgetBackpressurePolicy])
        yield
    finally:
        pl.step_ingest, pl._fits_in_memory = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop(FOOTER_ENV, None)
        else:
            os.environ[FOOTER_ENV] = saved[2]
        if policies is None:
            ctx.remove_config("backpressure_policies.enabled")
        else:
            ctx.set_config("backpressure_policies.enabled", policies)


def run_variant(name: str, cfg, store: str) -> dict:
    if name == "pandas":
        return pandas_pass(cfg, str(Path(store, "pandas")))
    if name == "plain-tasks":
        return plain_tasks_pass(cfg, str(Path(store, "plain")))
    with variant(name):
        return ray_pass(cfg)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_data_plane", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=int(os.environ.get("MLOPS_BENCH_ROWS", 0)) or 3_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}")

    import ray

    from mlops_ray.config import RayConfig
    from mlops_ray.runtime import ray_runtime

    store = tempfile.mkdtemp(prefix="mlops-profile-data-plane-")
    cfg = make_config(ensure_data(args.rows), store, "random")
    timings = {n: Timing() for n in names}
    try:
        with ray_runtime(RayConfig(num_cpus=NUM_CPUS)):
            ray.get([ray.remote(lambda: 0).remote() for _ in range(NUM_CPUS)])
            for n in names:                      # one untimed pass each: workers and imports warm
                run_variant(n, cfg, store)
            for i in range(args.repeats):
                order = names[i % len(names):] + names[:i % len(names)]
                for n in order:
                    timings[n].add(lambda: run_variant(n, cfg, store))
                print(f"round {i + 1}: " + ", ".join(f"{n} {timings[n].seconds[-1]:.2f}" for n in names), flush=True)
    finally:
        shutil.rmtree(store, ignore_errors=True)

    base = statistics.median(timings["pandas"].seconds) if "pandas" in timings else None
    rows = []
    for n, t in timings.items():
        r = {"variant": n, "rows": args.rows, "runs": len(t.seconds), "median_s": round(t.median, 3),
             "min_s": round(t.min, 3), "max_s": round(t.max, 3),
             "vs_pandas": round(t.median / base, 2) if base else None}
        for step in STEPS:
            r[f"{step}_s"] = round(statistics.median(res["timings"][step] for res in t.results), 3)
        r["other_cpu"] = round(statistics.median(t.foreign), 2) if t.foreign else None
        rows.append(r)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
