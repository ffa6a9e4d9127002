"""Synthetic transactions-style data for the demo, the tests and the benchmarks.

In: a row count, a seed and drift knobs. Out: Parquet part files under a directory or
URI, in time order, written by parallel Ray tasks (the driver never holds the rows).

The set is deliberately awkward: skewed numerics with missing values, high-cardinality
categoricals (hundreds of merchants), a timestamp, and an imbalanced binary label
(about 3 % positive) that depends on the features non-linearly. Drift from a given
time on: ``covariate`` (inputs move), ``label`` (the positive rate rises),
``concept`` (the same inputs mean something else), ``mixed`` (covariate and concept).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from mlops_ray.errors import DataSourceError
from mlops_ray.storage.fs import filesystem_for
# Imported where used, for their import cost (python -X importtime): ray 0.7 s.

Drift = Literal["none", "covariate", "label", "concept", "mixed"]   # mixed: covariate + concept

N_MERCHANTS = 800
N_CATEGORIES = 24
COUNTRIES = ["US", "GB", "DE", "FR", "CA", "ES", "IT", "NL", "BR", "MX", "IN", "JP", "AU", "SE",
             "PL", "BE", "CH", "AT", "IE", "PT", "DK", "NO", "FI", "CZ", "RO", "HU", "GR", "TR",
             "ZA", "NG", "KE", "EG", "AR", "CL", "CO", "PE", "SG", "HK", "KR", "NZ"]
DEVICES = ["mobile", "desktop", "tablet", "pos"]
CHANNELS = ["online", "in_store", "atm"]


@dataclass(frozen=True)
class SynthSpec:
    rows: int
    seed: int = 0
    start: str = "2026-01-01"
    days: float = 90.0
    drift: Drift = "none"
    drift_start: str | None = None        # default: two thirds into the time range
    drift_strength: float = 1.0
    missing_scale: float = 1.0            # multiply every missing-value rate

    @property
    def start_ts(self) -> pd.Timestamp:
        return pd.Timestamp(self.start)

    @property
    def drift_ts(self) -> pd.Timestamp:
        if self.drift_start:
            return pd.Timestamp(self.drift_start)
        return self.start_ts + pd.Timedelta(days=self.days * 2 / 3)


def _static_tables(seed: int):
    """Per-merchant properties shared by every chunk (same seed, same world)."""
    rng = np.random.default_rng([seed, 7])
    merchant_cat = rng.integers(0, N_CATEGORIES, N_MERCHANTS)
    merchant_risk = np.where(rng.random(N_MERCHANTS) < 0.05, rng.uniform(1.5, 3.0, N_MERCHANTS),
                             rng.normal(0, 0.3, N_MERCHANTS))
    zipf = 1.0 / np.arange(1, N_MERCHANTS + 1) ** 1.1
    country_p = 1.0 / np.arange(1, len(COUNTRIES) + 1) ** 1.3
    return merchant_cat, merchant_risk, zipf / zipf.sum(), country_p / country_p.sum()


def generate_chunk(spec: SynthSpec, start_row: int, n_rows: int) -> pd.DataFrame:
    """Rows [start_row, start_row + n_rows) of the data set: pure, deterministic per seed."""
    rng = np.random.default_rng([spec.seed, start_row])
    merchant_cat, merchant_risk, merchant_p, country_p = _static_tables(spec.seed)
    n = n_rows
    idx = np.arange(start_row, start_row + n, dtype=np.int64)

    span_ns = spec.days * 86400e9
    offs = ((idx + rng.random(n)) / max(spec.rows, 1) * span_ns).astype("int64")
    ts = spec.start_ts.value + offs
    drifted = ts >= spec.drift_ts.value if spec.drift != "none" else np.zeros(n, dtype=bool)
    s = spec.drift_strength

    hour = (ts // 3_600_000_000_000) % 24
    merchant = rng.choice(N_MERCHANTS, n, p=merchant_p)
    country = rng.choice(len(COUNTRIES), n, p=country_p)
    device = rng.choice(len(DEVICES), n, p=[0.55, 0.25, 0.07, 0.13])
    channel = rng.choice(len(CHANNELS), n, p=[0.6, 0.33, 0.07])
    amount = rng.lognormal(3.4, 1.1, n)
    account_age = rng.exponential(420, n)
    n_txn_24h = rng.poisson(np.where(rng.random(n) < 0.05, 12, 2.5))
    distance = rng.lognormal(1.8, 1.4, n)
    credit = np.clip(rng.normal(680, 80, n), 300, 850)
    # drawn whatever the drift, so rows before the drift start are identical across drift kinds
    u_country, alt_country, u_device = rng.random(n), rng.integers(20, len(COUNTRIES), n), rng.random(n)

    if spec.drift in ("covariate", "mixed"):
        d = drifted
        amount = np.where(d, amount * (1 + 0.8 * s), amount)
        country = np.where(d & (u_country < 0.3 * s), alt_country, country)
        device = np.where(d & (u_device < 0.3 * s), 0, device)
        distance = np.where(d, distance * (1 + s), distance)

    # non-linear risk: interactions, thresholds and a hidden per-merchant effect
    night = ((hour < 5) | (hour >= 23)).astype(float)
    online = (channel == 0).astype(float)
    log_amt = np.log1p(amount)
    new_acct = (account_age < 30).astype(float)
    far = (distance > 150).astype(float)
    logit = (-5.0
             + 1.4 * np.maximum(log_amt - 5.0, 0)
             + 1.3 * night * online
             + 1.5 * new_acct * far
             + 0.35 * np.sqrt(n_txn_24h)
             + merchant_risk[merchant]
             + 0.006 * (680 - credit).clip(0, 200)
             + 0.8 * (device == 2) * online
             + 0.5 * (country >= 25))
    if spec.drift == "label":
        logit = np.where(drifted, logit + 1.2 * s, logit)
    elif spec.drift in ("concept", "mixed"):
        flipped = (-5.0 + 1.6 * (log_amt < 2.5) + 1.5 * (1 - night) * (1 - online)
                   + 1.2 * (account_age > 900) + merchant_risk[(merchant + 97) % N_MERCHANTS]
                   + 0.35 * np.sqrt(n_txn_24h))
        w = min(1.0, s)
        logit = np.where(drifted, (1 - w) * logit + w * flipped, logit)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)

    def with_missing(x, rate):
        x = x.astype(np.float64)
        x[rng.random(n) < rate * spec.missing_scale] = np.nan
        return x

    merchants = np.array([f"m{i:04d}" for i in range(N_MERCHANTS)])
    cats = np.array([f"cat_{i:02d}" for i in range(N_CATEGORIES)])
    return pd.DataFrame({
        "transaction_id": idx,
        "event_time": pd.to_datetime(ts, unit="ns").astype("datetime64[ms]"),
        "amount": with_missing(np.round(amount, 2), 0.02),
        "account_age_days": np.floor(account_age).astype(np.int64),
        "num_txn_24h": n_txn_24h.astype(np.int64),
        "distance_km": with_missing(np.round(distance, 3), 0.08),
        "credit_score": with_missing(np.round(credit), 0.03),
        "merchant_id": pd.Categorical.from_codes(merchant, merchants),
        "merchant_category": pd.Categorical.from_codes(merchant_cat[merchant], cats),
        "country": pd.Categorical.from_codes(country, COUNTRIES),
        "device": pd.Categorical.from_codes(device, DEVICES),
        "channel": pd.Categorical.from_codes(channel, CHANNELS),
        "is_fraud": label,
    })


def to_arrow(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


@dataclass
class SynthReport:
    out: str
    rows: int
    files: int
    bytes: int
    positive_rate: float
    seconds: float
    spec: dict = field(default_factory=dict)


def _write_part(spec: SynthSpec, start: int, n: int, out: str, part: int) -> tuple[str, int, int, int]:

    fs, base = filesystem_for(out)
    df = generate_chunk(spec, start, n)
    path = f"{base.rstrip('/')}/part-{part:05d}.parquet"
    pq.write_table(to_arrow(df), path, filesystem=fs, compression="snappy", row_group_size=128_000)
    return path, n, int(fs.get_file_info(path).size), int(df["is_fraud"].sum())


def run_synth(spec: SynthSpec, out: str, *, rows_per_file: int = 500_000, overwrite: bool = False,
              progress=None) -> SynthReport:
    """Write the data set as Parquet part files under ``out`` with parallel Ray tasks."""
    import ray


    fs, base = filesystem_for(out)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        raise DataSourceError(f"--out {out!r} is a file; give a directory to write part files into")
    if info.type == pafs.FileType.Directory:
        existing = fs.get_file_info(pafs.FileSelector(base, recursive=False))
        if existing and not overwrite:
            raise DataSourceError(f"--out {out!r} is not empty; pass --overwrite or choose a new directory")
        if existing:
            fs.delete_dir_contents(base)
    fs.create_dir(base, recursive=True)

    t0 = time.perf_counter()
    nfiles = max(1, math.ceil(spec.rows / rows_per_file))
    task = ray.remote(num_cpus=1)(_write_part)
    refs = []
    for i in range(nfiles):
        start = i * rows_per_file
        refs.append(task.remote(spec, start, min(rows_per_file, spec.rows - start), out, i))
    results = []
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        results.extend(ray.get(done))
        if progress:
            progress(len(results), nfiles)
    rows = sum(r[1] for r in results)
    positives = sum(r[3] for r in results)
    return SynthReport(out=out, rows=rows, files=nfiles, bytes=sum(r[2] for r in results),
                       positive_rate=positives / max(rows, 1), seconds=time.perf_counter() - t0,
                       spec=asdict(spec))
