"""Drift false alarms of a model with datetime parts: 20 later months of the same behaviour, and a six-hour shift.

The drift benchmark's false-alarm table (``benchmarks/drift.py``, section 2) for the config a
newcomer writes from the README: a timestamp with the parts ``hour, minute, dayofweek, day``.
Data: seeded traffic, day by day: each day draws Poisson(``RATE`` x its weekday's weight)
rows, each row an hour from a daytime profile (busy 08-21 h, quiet at night), a uniform
minute and second, and three columns that follow the hour (``amount``: lognormal, larger in
the evening; ``channel``: more ``atm`` at night; ``items``: Poisson) plus a label. The same
generator makes every period, so every later month behaves like the training month; only the
calendar differs (which days of the month fall on which weekday, 28 to 31 days, four or five
of each weekday).

The reference is January 2024 (its raw-input profile, ``reference.profile_inputs`` with the
model's datetime parts, and its featurized rows as the training split). Each window is one
later calendar month (February 2024 onwards), checked as ``mlops-ray monitor`` checks it:
``count_partial`` + ``compare`` (the per-field tests, cyclic parts weighted over whole
cycles) and ``drift._domain`` (the domain classifier on model inputs, every row of both sides
at this size, the columns ``calendar.domain_exclusions`` names left out). ``alarms`` = windows
the monitor would exit 9 on (a per-field drift or the domain classifier's). Rows:

1. the same behaviour: alarms, drifted fields, the smallest p-value and largest effect, the
   domain classifier's median and largest AUC against its threshold;
2. the same windows with every datetime part given to the domain classifier (as before the
   calendar rule): alarms and AUCs;
3. the same windows six hours later (every timestamp + 6 h): in how many the hour part drifts
   (``detected``), alarms, the hour's median effect, the classifier's median AUC.

Run::

    .venv/bin/python -m benchmarks drift_calendar           # 20 windows of ~9k rows; ~15 minutes on 2 cores, longer on a busy machine
    .venv/bin/python -m benchmarks drift_calendar --quick   # 5 windows of ~6k rows
"""
from __future__ import annotations

import functools
import statistics
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import Options

PARTS = ["hour", "minute", "dayofweek", "day"]          # the README's datetime parts
RATE, QUICK_RATE = 300, 200                             # rows per day (times the weekday's weight)
WINDOWS, QUICK_WINDOWS = 20, 5
WEEKDAY = np.array([1.0, 1.0, 1.0, 1.05, 1.2, 0.7, 0.8])   # Monday .. Sunday
HOURLY = np.array([1, 0.5, 0.3, 0.3, 0.5, 1, 2, 4, 6, 7, 7, 7, 8, 8, 7, 7, 7, 8, 9, 9, 8, 6, 4, 2], float)
SHIFT = pd.Timedelta(hours=6)


def traffic(first_day: str, days: int, rate: int, seed: int) -> pd.DataFrame:
    """``days`` days of traffic from ``first_day``, the same behaviour whatever the dates."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(first_day)
    dates = start + pd.to_timedelta(np.arange(days), unit="D")
    per_day = rng.poisson(rate * WEEKDAY[dates.dayofweek])
    n = int(per_day.sum())
    day = np.repeat(np.arange(days), per_day)
    hour = rng.choice(24, n, p=HOURLY / HOURLY.sum())
    seconds = day * 86400 + hour * 3600 + rng.integers(0, 3600, n)
    evening = (hour >= 17).astype(float)
    night = (hour < 6)
    amount = rng.lognormal(3.0 + 0.4 * evening, 0.8)
    channel = np.where(night & (rng.random(n) < 0.5), "atm",
                       rng.choice(["online", "in_store", "atm"], n, p=[0.55, 0.35, 0.10]))
    items = rng.poisson(2 + evening)
    logit = -3 + 0.02 * amount + 1.5 * night + 0.3 * (channel == "online")
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pd.DataFrame({"event_time": (start + pd.to_timedelta(seconds, unit="s")).astype("datetime64[ms]"),
                         "amount": amount, "channel": channel, "items": items, "is_fraud": label})


def _months(n: int) -> list[tuple[str, int]]:
    first = pd.date_range("2024-02-01", periods=n, freq="MS")
    return [(d.strftime("%Y-%m-%d"), d.days_in_month) for d in first]


def run(opts: Options) -> list[dict]:
    from mlops_ray.config import config_from_dict
    from mlops_ray.data import features as feat
    from mlops_ray.data.profile import profile_local
    from mlops_ray.monitor import calendar as C
    from mlops_ray.monitor import drift as D
    from mlops_ray.monitor import reference as R
    from mlops_ray.storage.store import Store

    rate = QUICK_RATE if opts.quick else (opts.rows // 31 if opts.rows else RATE)
    windows = QUICK_WINDOWS if opts.quick else WINDOWS
    tmp = tempfile.mkdtemp(prefix="mlops-bench-calendar-")
    cfg = config_from_dict({"name": "calendar", "store": tmp,
                            "data": {"source": tmp, "label": "is_fraud", "time_column": "event_time"},
                            "features": {"datetime_parts": PARTS, "min_frequency": 1}})
    mon = cfg.monitor
    local = lambda tab, fns: profile_local(tab, fns, batch_rows=50_000)   # noqa: E731

    t = time.perf_counter()
    ref_df = traffic("2024-01-01", 31, rate, seed=0)
    ref = pa.Table.from_pandas(ref_df, preserve_index=False)
    roles = feat.assign_roles(ref.schema, cfg.data, cfg.features)
    spec = feat.fit_merge(local(ref, {"f": lambda b: feat.fit_partial(b, roles, cfg.features)})["f"],
                          roles, cfg.data, cfg.features)
    reference = {"inputs": R.profile_inputs(ref, spec.input_types, mon, local, dt_parts=C.spec_parts(spec))}
    store = Store(tmp)
    train_dir = store.path(cfg.name, "data", "k", "features", "split=train")
    store.fs.create_dir(train_dir, recursive=True)
    pq.write_table(pa.Table.from_pandas(feat.transform(ref_df, spec), preserve_index=False),
                   f"{train_dir}/part-0.parquet", filesystem=store.fs)
    bundle = SimpleNamespace(spec=spec, metadata={"data_key": "k"})
    layout = D.window_layout(reference["inputs"]["columns"])
    print(f"   reference: January 2024, {ref.num_rows:,} rows; model columns {spec.output_columns} "
          f"({time.perf_counter() - t:.1f} s)", flush=True)

    def check(df: pd.DataFrame, calendar_rule: bool = True) -> dict:
        table = pa.Table.from_pandas(df, preserve_index=False)
        counts = R.merge_counts(local(table, {"c": lambda b: functools.partial(R.count_partial, layout=layout)(b)})["c"])
        rep = D.compare(reference, counts, mon)
        exclude = C.domain_exclusions(spec, {"event_time": reference["inputs"]["columns"]["event_time"]},
                                      {"event_time": counts.get("event_time")}) if calendar_rule else {}
        sample = table.take(np.random.default_rng(1).permutation(table.num_rows)[:mon.domain_classifier.sample_rows])
        mv = D._domain(cfg, store, bundle, sample, exclude)
        if not calendar_rule:        # before the rule: the datetime field untested, every part in the classifier
            rep["drifted"] = [n for n in rep["drifted"] if "." not in n]
        return {"report": rep, "mv": mv, "alarm": bool(rep["drifted"]) or bool(mv.get("drifted"))}

    same, before, shifted = [], [], []
    for i, (first, days) in enumerate(_months(windows)):
        t = time.perf_counter()
        df = traffic(first, days, rate, seed=100 + i)
        same.append(check(df))
        before.append(check(df, calendar_rule=False))
        shifted.append(check(df.assign(event_time=df["event_time"] + SHIFT)))
        s, b, m = same[-1], before[-1], shifted[-1]
        hour = next(f for f in m["report"]["features"] if f["name"] == "event_time.hour")
        print(f"   {first[:7]} ({len(df):,} rows): alarm {s['alarm']} (drifted {s['report']['drifted']}, AUC "
              f"{s['mv']['auc']}); before the rule alarm {b['alarm']} (AUC {b['mv']['auc']}); +6 h: hour "
              f"{hour['verdict']} (effect {hour['effect']:.3f}), AUC {m['mv']['auc']} "
              f"({time.perf_counter() - t:.1f} s)", flush=True)

    def aucs(results):
        return [r["mv"]["auc"] for r in results if r["mv"].get("auc") is not None]

    effects = [f["effect"] for r in same for f in r["report"]["features"] if f["effect"] is not None]
    p_values = [f["p_value"] for r in same for f in r["report"]["features"] if f["p_value"] is not None]
    hour_effects = [next(f["effect"] for f in r["report"]["features"] if f["name"] == "event_time.hour")
                    for r in shifted]
    rows_per = [r["report"]["features"][0]["rows"] for r in same]
    base = {"rows": int(statistics.median(rows_per)), "windows": windows,
            "auc_threshold": same[0]["mv"]["threshold"]}
    return [
        {"measurement": "same behaviour, later calendar months (hour, minute, dayofweek tested per part; day "
                        "excluded)", **base,
         "alarms": sum(r["alarm"] for r in same), "flagged": sum(len(r["report"]["drifted"]) for r in same),
         "p_min": round(min(p_values), 6), "effect_max": round(max(effects), 4),
         "auc_median": round(statistics.median(aucs(same)), 4), "auc_max": max(aucs(same)),
         "note": "domain classifier without " + ", ".join(c for c, _ in same[0]["mv"].get("excluded", []))},
        {"measurement": "the same windows, every datetime part in the domain classifier (before the rule)", **base,
         "alarms": sum(r["alarm"] for r in before), "auc_median": round(statistics.median(aucs(before)), 4),
         "auc_max": max(aucs(before)),
         "note": "top feature " + ", ".join(sorted({r["mv"]["top_features"][0][0] for r in before}))},
        {"measurement": "the same windows six hours later", **base,
         "detected": sum("event_time.hour" in r["report"]["drifted"] for r in shifted),
         "alarms": sum(r["alarm"] for r in shifted), "hour_effect_median": round(statistics.median(hour_effects), 3),
         "auc_median": round(statistics.median(aucs(shifted)), 4),
         "note": "drifted: " + ", ".join(sorted({n for r in shifted for n in r["report"]["drifted"]}))},
    ]
