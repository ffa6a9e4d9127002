"""Drift check of a 1M-row x 20-feature window: speed vs naive scipy and Evidently, false alarms, power.

Data: a seeded generator of 20 features -- 12 numeric (normal, lognormal, exponential,
integer Poisson; some with NaNs or nulls) and 8 categorical strings (5 to 500 categories,
Zipf-skewed shares, one with nulls). Each column draws from its own seeded stream, so a
planted shift in one column leaves the others' values unchanged. The reference is 1,000,000
rows (seed 0); windows are 1,000,000 rows drawn with other seeds (``--quick``: 100k rows;
``--rows N`` sets both).

1. **speed** -- the reference profile is built once with ``reference.profile_inputs`` (two Ray
   passes: sketch, then count), timed separately. Then OUR check of a window, as
   ``mlops-ray monitor`` runs it after reading: the window is put into Ray as 16 blocks
   (``ray.data.from_arrow``, before timing); the timed part is ``profile_pass(ds, {"c":
   partial(count_partial, layout=..., known=...)})`` + ``merge_counts`` + ``compare(reference,
   counts, MonitorConfig())`` (``pass_s`` / ``compare_s`` split it). Ray starts once
   (``ray_runtime(RayConfig(num_cpus=4))``, the project's default on 2 cores); the first pass
   of the session is reported apart (cold). Also the same check in this process
   (``count_partial`` on the whole table, no Ray). Baselines in the same run:
   (a) naive, one process on the raw numpy arrays: ``scipy.stats.ks_2samp`` + PSI over 10
   reference-quantile bins per numeric column, ``scipy.stats.chi2_contingency`` per
   categorical one (categories as integer codes, counted with ``np.bincount``, which favours
   the baseline: it never touches strings); flags KS p < 0.01 or PSI > 0.2, chi2 p < 0.01.
   (b) Evidently 0.7 ``Report([DataDriftPreset()]).run(current_data=..., reference_data=...)``
   in its own venv (``benchmarks/.venv-evidently``, created on first use: evidently 0.7 needs
   pandas < 3) on the same frames, read from Parquet in a child process; only ``run`` is
   timed. Evidently runs once per size (about 2 minutes at 1M rows), at the main size and at
   100k rows (reference and window both cut to their first 100k rows; ours at 100k bins the
   first 100k window rows against the full reference profile). ``ratio`` = baseline seconds /
   our warm Ray seconds at the same size. ``flagged`` = features each method flags on this
   window, which is drawn from the reference's distribution (so every flag is a false one).
2. **false alarms** -- 20 more same-distribution windows (binned in this process with
   ``count_partial`` on the whole table: the statistics are those of the Ray pass):
   ``alarms`` = windows whose ``compare(...)["drift"]`` is true, ``flagged`` = drifted
   features in all, ``p_min`` the smallest calibrated p-value seen, ``effect_max`` the largest
   effect size (``effect_col`` says where).
3. **power** -- planted shifts, one at a time: ``num_normal_a`` (N(0, 1)) moved by +0.1 sd;
   ``cat_20``'s third category +5 percentage points (taken evenly from the other 19). At
   1M, 10k and 1k window rows: is the shifted column flagged (``target_flagged``), how many
   OTHER columns are (``others_flagged``, should be 0), the calibrated p-value, the statistic
   (normalised Wasserstein / Jensen-Shannon distance; its value is also the ``effect``) with
   its null ``threshold`` at that window size (the 1 - alpha/20 quantile of the ``null_draws``
   that ``stats.calibrated`` drew: it stops at 1000 once p > 10 alpha, then the "threshold" is
   just the largest of those draws) and ``min_effect``. At 10k and 1k rows ``detection_rate`` is the share of
   25 further seeded windows in which the column is flagged (``drift._judge_column``, the
   per-column code of ``compare``, with the same alpha and null draws).

The same false-alarm table for a model with datetime parts (later calendar months of the same
behaviour, the domain classifier included, and a six-hour shift) is ``benchmarks/drift_calendar.py``.

Run (from the repository root)::

    .venv/bin/python -m benchmarks drift                # 1M rows; ~6-8 minutes on 2 cores
    .venv/bin/python -m benchmarks drift --quick        # 100k rows
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.common import Options, Timing

DEFAULT_ROWS = 1_000_000
QUICK_ROWS = 100_000
BLOCKS = 16
NUM_CPUS = 4
SMALL_SIZES = (10_000, 1_000)
EVIDENTLY_SMALL = 100_000
EVIDENTLY_TIMEOUT_S = 900
EVIDENTLY_VENV = Path(__file__).resolve().parent / ".venv-evidently"
EVIDENTLY_REQS = ["evidently==0.7.*", "pandas<3", "pyarrow"]

# name, distribution, parameters, share of missing values (NaN for floats, null for ints)
NUMERIC = [
    ("num_normal_a", "normal", (0.0, 1.0), 0.0),
    ("num_normal_b", "normal", (50.0, 12.0), 0.01),
    ("num_normal_c", "normal", (-3.0, 0.2), 0.0),
    ("num_normal_d", "normal", (1000.0, 300.0), 0.10),
    ("num_lognorm_a", "lognormal", (0.0, 1.0), 0.0),
    ("num_lognorm_b", "lognormal", (3.0, 0.5), 0.02),
    ("num_lognorm_c", "lognormal", (-1.0, 1.5), 0.0),
    ("num_expon_a", "exponential", (1.0,), 0.0),
    ("num_expon_b", "exponential", (250.0,), 0.05),
    ("num_poisson_a", "poisson", (0.7,), 0.0),
    ("num_poisson_b", "poisson", (4.0,), 0.0),
    ("num_poisson_c", "poisson", (40.0,), 0.01),
]
# name, categories, Zipf exponent of the shares, null share
CATEGORICAL = [
    ("cat_5", 5, 1.0, 0.0),
    ("cat_8", 8, 1.5, 0.0),
    ("cat_20", 20, 1.0, 0.0),
    ("cat_50", 50, 1.1, 0.01),
    ("cat_100", 100, 0.8, 0.0),
    ("cat_200", 200, 1.0, 0.0),
    ("cat_300", 300, 1.3, 0.0),
    ("cat_500", 500, 1.0, 0.0),
]
MEAN_SHIFT = ("num_normal_a", 0.1)      # column, shift in its standard deviations (sd = 1)
CAT_SHIFT = ("cat_20", 2, 0.05)         # column, category index, share added (taken evenly from the rest)
INPUT_TYPES = {**{n: ("int" if d == "poisson" else "float") for n, d, _, _ in NUMERIC},
               **{n: "string" for n, *_ in CATEGORICAL}}


# --------------------------------------------------------------------------- data
def _shares(k: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, k + 1) ** s
    return p / p.sum()


def _cat_names(k: int) -> list[str]:
    return [f"v{i:03d}" for i in range(k)]


def make_window(n: int, seed: int, *, mean_shift: tuple | None = None,
                cat_shift: tuple | None = None) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """(Arrow table, raw arrays) of n rows. Raw: float64 with NaN for numeric columns,
    int64 codes with -1 for missing for categorical ones (what the naive baseline reads)."""
    cols, raw = {}, {}
    for j, (name, dist, par, miss) in enumerate(NUMERIC):
        rng = np.random.default_rng([seed, j])
        if dist == "normal":
            v = rng.normal(par[0], par[1], n)
        elif dist == "lognormal":
            v = rng.lognormal(par[0], par[1], n)
        elif dist == "exponential":
            v = rng.exponential(par[0], n)
        else:
            v = rng.poisson(par[0], n).astype(np.int64)
        if mean_shift and mean_shift[0] == name:
            v = v + mean_shift[1] * par[1]
        mask = rng.random(n) < miss if miss else None
        if dist == "poisson":
            cols[name] = pa.array(v, pa.int64(), mask=mask)
            f = v.astype(np.float64)
            if mask is not None:
                f[mask] = np.nan
            raw[name] = f
        else:
            if mask is not None:
                v[mask] = np.nan
            cols[name] = pa.array(v, pa.float64())
            raw[name] = v
    for j, (name, k, s, miss) in enumerate(CATEGORICAL):
        rng = np.random.default_rng([seed, 100 + j])
        p = _shares(k, s)
        if cat_shift and cat_shift[0] == name:
            _, idx, add = cat_shift
            p = p - add / (k - 1)
            p[idx] += add + add / (k - 1)
            assert p.min() > 0 and abs(p.sum() - 1) < 1e-9
        codes = rng.choice(k, n, p=p).astype(np.int64)
        if miss:
            codes[rng.random(n) < miss] = -1
        valid = codes >= 0
        cols[name] = pc.take(pa.array(_cat_names(k)), pa.array(codes, mask=~valid))
        raw[name] = codes
    return pa.table(cols), raw


def _blocks(table: pa.Table, blocks: int = BLOCKS) -> list[pa.Table]:
    step = -(-table.num_rows // blocks)
    return [table.slice(i, step).combine_chunks() for i in range(0, table.num_rows, step)]


# --------------------------------------------------------------------------- ours
def _layout(profile: dict) -> dict:
    """The layout ``run_monitor`` hands ``count_partial``: kind, type, edges, categories."""
    return {n: {k: v for k, v in lay.items() if k in ("kind", "type", "edges", "categories")}
            for n, lay in profile["columns"].items()}


KNOWN = {name: set(_cat_names(k)) for name, k, *_ in CATEGORICAL}   # the model's vocabulary


def ours_ray(ds, reference: dict, mon) -> dict:
    from mlops_ray.data.profile import profile_pass
    from mlops_ray.monitor import reference as R
    from mlops_ray.monitor.drift import compare

    t = time.perf_counter()
    count = functools.partial(R.count_partial, layout=_layout(reference["inputs"]), known=KNOWN)
    counts = R.merge_counts(profile_pass(ds, {"c": count})["c"])
    t1 = time.perf_counter()
    report = compare(reference, counts, mon)
    return {"pass_s": t1 - t, "compare_s": time.perf_counter() - t1, "report": report}


def ours_local(table: pa.Table, reference: dict, mon) -> dict:
    from mlops_ray.monitor import reference as R
    from mlops_ray.monitor.drift import compare

    t = time.perf_counter()
    counts = R.merge_counts([R.count_partial(table, _layout(reference["inputs"]), known=KNOWN)])
    t1 = time.perf_counter()
    report = compare(reference, counts, mon)
    return {"pass_s": t1 - t, "compare_s": time.perf_counter() - t1, "report": report}


# --------------------------------------------------------------------------- naive baseline
def naive_check(ref: dict[str, np.ndarray], win: dict[str, np.ndarray], alpha: float = 0.01,
                psi_max: float = 0.2) -> dict:
    """Full-sample tests in one process: KS + PSI (10 quantile bins) per numeric column,
    chi-square per categorical one."""
    from scipy import stats as sps

    flagged = []
    for name, *_ in NUMERIC:
        r, w = ref[name], win[name]
        r, w = r[np.isfinite(r)], w[np.isfinite(w)]
        ks = sps.ks_2samp(r, w)
        edges = np.unique(np.quantile(r, np.linspace(0, 1, 11)[1:-1]))
        pr = np.bincount(np.searchsorted(edges, r, side="right"), minlength=edges.size + 1) / r.size
        pw = np.bincount(np.searchsorted(edges, w, side="right"), minlength=edges.size + 1) / w.size
        pr, pw = np.clip(pr, 1e-6, None), np.clip(pw, 1e-6, None)
        psi = float(((pw - pr) * np.log(pw / pr)).sum())
        if ks.pvalue < alpha or psi > psi_max:
            flagged.append(name)
    for name, k, *_ in CATEGORICAL:
        r, w = ref[name], win[name]
        table = np.vstack([np.bincount(r[r >= 0], minlength=k), np.bincount(w[w >= 0], minlength=k)])
        table = table[:, table.sum(0) > 0]
        if sps.chi2_contingency(table).pvalue < alpha:
            flagged.append(name)
    return {"flagged": flagged}


# --------------------------------------------------------------------------- Evidently baseline
EVIDENTLY_CHILD = r'''
import json, sys, time
import pandas as pd
ref = pd.read_parquet(sys.argv[1])
cur = pd.read_parquet(sys.argv[2])
import evidently
from evidently import Report
from evidently.presets import DataDriftPreset
t = time.perf_counter()
snapshot = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
seconds = time.perf_counter() - t
count, methods, drifted = None, {}, []
for m in snapshot.dict()["metrics"]:
    cfg = m.get("config", {})
    kind = cfg.get("type", "")
    if kind.endswith("DriftedColumnsCount"):
        count = m["value"]["count"]
    elif kind.endswith("ValueDrift"):
        method, threshold, value = cfg.get("method"), cfg.get("threshold"), m["value"]
        methods[method] = methods.get(method, 0) + 1
        if (value <= threshold) if "p_value" in (method or "") else (value >= threshold):
            drifted.append(cfg["column"])
print(json.dumps({"seconds": seconds, "rows": [len(ref), len(cur)], "drifted_count": count,
                  "drifted": drifted, "methods": methods, "version": evidently.__version__}))
'''


def evidently_python() -> tuple[str | None, str]:
    """Python of benchmarks/.venv-evidently (created on first use), or None and the reason."""
    py = EVIDENTLY_VENV / "bin" / "python"
    probe = "import evidently, pandas; assert evidently.__version__.startswith('0.7'); print(evidently.__version__)"
    if py.exists():
        r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
        if r.returncode == 0:
            return str(py), f"evidently {r.stdout.strip()}"
    print(f"   creating {EVIDENTLY_VENV} (evidently 0.7 needs pandas < 3) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(EVIDENTLY_VENV)], check=True,
                       capture_output=True, text=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *EVIDENTLY_REQS], check=True,
                       capture_output=True, text=True, timeout=1200)
        r = subprocess.run([str(py), "-c", probe], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or e.stdout or "").strip().splitlines()[-1:] or [str(e)]
        return None, f"could not create {EVIDENTLY_VENV.name}: {tail[0][:200]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"could not create {EVIDENTLY_VENV.name}: {e}"
    return str(py), f"evidently {r.stdout.strip()}"


def run_evidently(py: str, ref: pa.Table, win: pa.Table, tmp: str) -> dict:
    """One timed ``Report([DataDriftPreset()]).run`` in the Evidently venv; {"error": ...} on failure."""
    ref_path, win_path, script = (os.path.join(tmp, f) for f in ("ref.parquet", "win.parquet", "child.py"))
    pq.write_table(ref, ref_path)
    pq.write_table(win, win_path)
    Path(script).write_text(EVIDENTLY_CHILD)
    env = {**os.environ, "DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"}
    try:
        r = subprocess.run([py, script, ref_path, win_path], capture_output=True, text=True,
                           timeout=EVIDENTLY_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {EVIDENTLY_TIMEOUT_S} s"}
    finally:
        for p in (ref_path, win_path):
            os.unlink(p)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["exit " + str(r.returncode)])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- rows
def _r(x, nd=3):
    return None if x is None else round(float(x), nd)


def _speed_row(measurement: str, rows: int, timing: Timing | None = None, *, seconds: float | None = None,
               ours_s: float | None = None, flagged: int | None = None, split: bool = False,
               note: str | None = None) -> dict:
    med = timing.median if timing else seconds
    row = {"section": "speed", "measurement": measurement, "rows": rows,
           "runs": len(timing.seconds) if timing else (1 if seconds is not None else 0),
           "seconds": _r(med), "min_s": _r(timing.min) if timing else None,
           "max_s": _r(timing.max) if timing else None}
    if split and timing:
        row["pass_s"] = _r(statistics.median(r["pass_s"] for r in timing.results))
        row["compare_s"] = _r(statistics.median(r["compare_s"] for r in timing.results))
    row["ratio"] = _r(med / ours_s, 1) if ours_s and med else None
    row["flagged"] = flagged
    row["other_cpu"] = _r(statistics.median(timing.foreign), 2) if timing and timing.foreign else None
    if note:
        row["note"] = note
    return row


def _flag_count(report: dict) -> int:
    return len(report["drifted"])


def _power_row(label: str, column: str, rows: int, report: dict, rate: float | None, rate_n: int) -> dict:
    f = next(x for x in report["features"] if x["name"] == column)
    others = [n for n in report["drifted"] if n != column]
    return {"section": "power", "measurement": label, "rows": rows, "column": column,
            "target_flagged": f["verdict"] == "drift", "others_flagged": len(others),
            "p_value": _r(f["p_value"], 6), "statistic": f["statistic"],
            "threshold": _r(f["threshold"], 4), "null_draws": f.get("null_draws"), "effect": _r(f["effect"], 4),
            "min_effect": f["min_effect"],
            "detection_rate": _r(rate, 2), "rate_windows": rate_n or None,
            "note": ("others: " + ", ".join(others)) if others else None}


COLUMNS = ["section", "measurement", "rows", "runs", "seconds", "min_s", "max_s", "pass_s", "compare_s", "ratio",
           "flagged", "windows", "alarms", "p_min", "effect_max", "effect_col", "column", "target_flagged",
           "others_flagged", "statistic", "p_value", "effect", "threshold", "null_draws", "min_effect", "detection_rate",
           "rate_windows", "other_cpu", "note"]


def _ordered(rows: list[dict]) -> list[dict]:
    """Every row with the same keys in one order (so the Markdown table reads left to right)."""
    extra = [k for r in rows for k in r if k not in COLUMNS]
    return [{k: r.get(k) for k in COLUMNS + list(dict.fromkeys(extra))} for r in rows]


# --------------------------------------------------------------------------- run
def run(opts: Options) -> list[dict]:
    import ray

    from mlops_ray.config import MonitorConfig, RayConfig
    from mlops_ray.data.profile import profile_pass
    from mlops_ray.monitor import reference as R
    from mlops_ray.monitor.drift import _judge_column
    from mlops_ray.monitor.reference import profile_inputs
    from mlops_ray.monitor import stats as S
    from mlops_ray.runtime import ray_runtime

    rows = opts.rows or (QUICK_ROWS if opts.quick else DEFAULT_ROWS)
    fa_windows = 5 if opts.quick else 20
    rate_windows = 5 if opts.quick else 25
    mon = MonitorConfig()
    out: list[dict] = []

    t = time.perf_counter()
    ref_table, ref_raw = make_window(rows, 0)
    win_table, win_raw = make_window(rows, 1)
    print(f"   generated reference + window, {rows:,} rows x {ref_table.num_columns} columns each "
          f"({time.perf_counter() - t:.1f} s)", flush=True)

    # ------------------------------------------------------------ 1. speed (Ray)
    t = time.perf_counter()
    with ray_runtime(RayConfig(num_cpus=NUM_CPUS)):
        startup = time.perf_counter() - t
        print(f"   ray start-up {startup:.2f} s ({ray.cluster_resources().get('CPU'):g} logical CPUs)", flush=True)
        ref_ds = ray.data.from_arrow(_blocks(ref_table))
        prof_t = Timing()
        profile = prof_t.add(lambda: profile_inputs(ref_ds, INPUT_TYPES, mon, profile_pass))
        reference = {"inputs": profile}
        del ref_ds
        print(f"   reference profile (2 Ray passes, includes the session's first) {prof_t.seconds[-1]:.2f} s", flush=True)

        win_ds = ray.data.from_arrow(_blocks(win_table))
        cold = Timing()
        cold.add(lambda: ours_ray(win_ds, reference, mon))
        print(f"   ours, first window pass {cold.seconds[-1]:.2f} s", flush=True)
        warm, local, naive = Timing(), Timing(), Timing()
        for i in range(opts.repeats):
            order = ("ray", "local", "naive") if i % 2 == 0 else ("naive", "local", "ray")
            for what in order:
                if what == "ray":
                    warm.add(lambda: ours_ray(win_ds, reference, mon))
                elif what == "local":
                    local.add(lambda: ours_local(win_table, reference, mon))
                else:
                    naive.add(lambda: naive_check(ref_raw, win_raw))
            r = warm.results[-1]
            print(f"   round {i + 1}: ours ray {warm.seconds[-1]:.2f} s (pass {r['pass_s']:.2f} + compare "
                  f"{r['compare_s']:.2f}), ours in-process {local.seconds[-1]:.2f} s, naive {naive.seconds[-1]:.2f} s",
                  flush=True)

        small = None
        if rows > EVIDENTLY_SMALL:
            small_ds = ray.data.from_arrow(_blocks(win_table.slice(0, EVIDENTLY_SMALL)))
            ours_ray(small_ds, reference, mon)
            small = Timing()
            for _ in range(opts.repeats):
                small.add(lambda: ours_ray(small_ds, reference, mon))
            del small_ds
        del win_ds

    ours_s = warm.median
    out.append(_speed_row("ray start-up (ray.init to ready)", rows, seconds=startup))
    out.append(_speed_row("reference profile: profile_inputs, 2 Ray passes (not in the check)", rows, prof_t))
    out.append(_speed_row("ours: Ray pass + compare, first of session", rows, cold, split=True,
                          flagged=_flag_count(cold.last["report"])))
    out.append(_speed_row("ours: Ray pass + compare (16 blocks, warm)", rows, warm, split=True,
                          flagged=_flag_count(warm.last["report"])))
    out.append(_speed_row("ours in-process: count_partial + compare", rows, local, split=True,
                          ours_s=ours_s, flagged=_flag_count(local.last["report"])))
    out.append(_speed_row("naive scipy: ks_2samp + PSI(10) + chi2_contingency", rows, naive, ours_s=ours_s,
                          flagged=len(naive.last["flagged"]),
                          note=("flags: " + ", ".join(naive.last["flagged"])) if naive.last["flagged"] else None))
    if small is not None:
        out.append(_speed_row("ours: Ray pass + compare (16 blocks, warm)", EVIDENTLY_SMALL, small, split=True,
                              flagged=_flag_count(small.last["report"])))

    # ------------------------------------------------------------ 1b. Evidently
    py, why = evidently_python()
    sizes = [rows] + ([EVIDENTLY_SMALL] if rows > EVIDENTLY_SMALL else [])
    for n in sizes:
        base = ours_s if n == rows else small.median
        label = "Evidently 0.7 DataDriftPreset (Report.run)"
        if py is None:
            out.append(_speed_row(label, n, note=f"skipped: {why}"))
            continue
        tmp = tempfile.mkdtemp(prefix="mlops-bench-drift-")
        try:
            print(f"   Evidently at {n:,} rows ...", flush=True)
            ev = run_evidently(py, ref_table.slice(0, n), win_table.slice(0, n), tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if "error" in ev:
            out.append(_speed_row(label, n, note=f"failed: {ev['error']}"))
            continue
        print(f"   Evidently at {n:,} rows: {ev['seconds']:.1f} s, {ev['drifted_count']} drifted; "
              f"methods {ev['methods']}", flush=True)
        methods = ", ".join(f"{k} x{v}" for k, v in ev["methods"].items())
        out.append(_speed_row(label, n, seconds=ev["seconds"], ours_s=base,
                              flagged=int(ev["drifted_count"]) if ev["drifted_count"] is not None else None,
                              note=f"{why}; {methods}" + (f"; flags: {', '.join(ev['drifted'])}" if ev["drifted"] else "")))
    del ref_raw, win_raw

    # ------------------------------------------------------------ 2. false alarms
    t = time.perf_counter()
    alarms, drifted, p_min, eff_max, eff_col = 0, [], 1.0, 0.0, None
    for i in range(fa_windows):
        table, _ = make_window(rows, 100 + i)
        rep = ours_local(table, reference, mon)["report"]
        alarms += bool(rep["drift"])
        drifted += rep["drifted"]
        for f in rep["features"]:
            if f["p_value"] is not None:
                p_min = min(p_min, f["p_value"])
            if f["effect"] is not None and f["effect"] > eff_max:
                eff_max, eff_col = f["effect"], f["name"]
    print(f"   false alarms: {alarms}/{fa_windows} windows, {len(drifted)} features "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    out.append({"section": "false alarms", "measurement": "same-distribution windows, compare()[\"drift\"]",
                "rows": rows, "windows": fa_windows, "alarms": alarms, "flagged": len(drifted),
                "p_min": _r(p_min, 6), "effect_max": _r(eff_max, 4), "effect_col": eff_col,
                "note": ("flags: " + ", ".join(drifted)) if drifted else None})

    # ------------------------------------------------------------ 3. power
    t = time.perf_counter()
    alpha = S.bonferroni(mon.alpha, len(reference["inputs"]["columns"]))
    draws = mon.null_draws or S.required_draws(alpha)
    layout = _layout(reference["inputs"])
    shifts = [(f"mean +{MEAN_SHIFT[1]} sd", MEAN_SHIFT[0], {"mean_shift": MEAN_SHIFT}),
              (f"category v{CAT_SHIFT[1]:03d} +{CAT_SHIFT[2] * 100:.0f} pts", CAT_SHIFT[0], {"cat_shift": CAT_SHIFT})]
    for label, column, kw in shifts:
        for idx, n in enumerate((rows, *[s for s in SMALL_SIZES if s < rows])):
            table, _ = make_window(n, 200 + idx, **kw)
            rep = ours_local(table, reference, mon)["report"]
            rate, rate_n = None, 0
            if n != rows:   # the same per-column test on more seeded windows of this size
                rng = np.random.default_rng(0)
                lay = reference["inputs"]["columns"][column]
                hits = 0
                for s in range(rate_windows):
                    tw, _ = make_window(n, 300 + s, **kw)
                    counts = R.merge_counts([R.count_partial(tw.select([column]), {column: layout[column]})])
                    hits += _judge_column(column, lay, counts[column], mon, alpha, draws, rng)["verdict"] == "drift"
                rate, rate_n = hits / rate_windows, rate_windows
            out.append(_power_row(label, column, n, rep, rate, rate_n))
            print(f"   power {label} at {n:,} rows: flagged {out[-1]['target_flagged']}, p {out[-1]['p_value']}, "
                  f"effect {out[-1]['effect']}, others {out[-1]['others_flagged']}"
                  + (f", detection rate {rate:.2f}" if rate is not None else ""), flush=True)
    print(f"   power section {time.perf_counter() - t:.0f} s", flush=True)

    ev_rows = [r for r in out if r["measurement"].startswith("Evidently") and r["rows"] == rows and r.get("ratio")]
    nv = next(r for r in out if r["measurement"].startswith("naive"))
    print(f"   ours {ours_s:.2f} s at {rows:,} x 20 (goal <= 5 s); naive / ours {nv['ratio']}x"
          + (f"; Evidently / ours {ev_rows[0]['ratio']}x (goal >= 20x)" if ev_rows else "; Evidently skipped"),
          flush=True)
    return _ordered(out)
