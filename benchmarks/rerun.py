"""Cached rerun: an unchanged ``mlops-ray run`` (every step cached) vs the first run of the same config.

The data is the quickstart's synthetic transactions (``mlops-ray data synth``, ``--rows``, default
50,000 like a ``make demo`` month; 10,000 with ``--quick``), the config ``configs/quickstart.yaml``
with the store in a fresh temp directory. Each run is a fresh CLI process, as a user runs it:

* **first run** -- ingest, validate, featurize, the 8-trial search, evaluate, register (once);
* **cached rerun** -- the same command with ``--json``, ``--repeats`` times (median): the caches are
  found on the source's metadata (file footers, the fingerprint) and the store, so no Ray starts.

Reported: wall seconds of each and their CPU seconds (``cpu_s``: user + system of the command and
of the children it waited for; on a busy machine the steadier figure), ``ratio`` and ``cpu_ratio``
(rerun / first run), the cached steps the rerun reports and ``other_cpu``, the share of the CPUs
other processes used meanwhile.

Run (from the repository root)::

    .venv/bin/python -m benchmarks rerun
"""
from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DATA_DIR, ROOT, ForeignLoad, Options


def _cli(*args: str) -> tuple[float, float, float | None, subprocess.CompletedProcess]:
    """Wall seconds, CPU seconds (user + system of the command and the children it waited for) and
    the other processes' share of the CPUs meanwhile."""
    load = ForeignLoad()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "mlops_ray", *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"`mlops-ray {' '.join(args)}` exited {p.returncode}:\n{p.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, load.share, p


def run(opts: Options) -> list[dict]:
    rows = opts.rows or (10_000 if opts.quick else 50_000)
    data = DATA_DIR / f"rerun-{rows}"
    if not data.exists():
        _cli("data", "synth", "--rows", str(rows), "--out", str(data), "--seed", "7", "--num-cpus", "2")
    work = Path(tempfile.mkdtemp(prefix="mlops-rerun-bench-"))
    try:
        args = ["run", "configs/quickstart.yaml", "--set", f"data.source={data}", "--set", f"store={work / 'store'}"]
        first, first_cpu, first_load, _ = _cli(*args)
        reruns, cpus, loads, cached = [], [], [], None
        for _ in range(1 if opts.quick else opts.repeats):
            seconds, cpu, share, p = _cli(*args, "--json")
            reruns.append(seconds)
            cpus.append(cpu)
            loads.append(share)
            cached = json.loads(p.stdout)["cached_steps"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rerun, rerun_cpu = statistics.median(reruns), statistics.median(cpus)
    known = [x for x in loads if x is not None]
    return [{"measurement": "first run (baseline)", "rows": rows, "seconds": round(first, 2),
             "cpu_s": round(first_cpu, 2), "other_cpu": None if first_load is None else round(first_load, 2)},
            {"measurement": f"cached rerun (median of {len(reruns)})", "rows": rows, "seconds": round(rerun, 2),
             "cpu_s": round(rerun_cpu, 2), "ratio": round(rerun / first, 3), "cpu_ratio": round(rerun_cpu / first_cpu, 3),
             "cached_steps": ", ".join(cached or []),
             "other_cpu": round(statistics.median(known), 2) if known else None, "goal": "≤ 3 s"}]
