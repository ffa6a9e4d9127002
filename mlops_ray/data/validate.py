"""Validation: the expectations of ``schema:`` checked in one distributed pass.

In: the source's Arrow schema, ``DataConfig``, ``SchemaConfig``, the model task, and a Ray
Dataset (or an in-memory table). Out: a ``ValidationReport`` naming, for each failed
check, the column, the rule, the observed value, the threshold and a few offending rows.

Checks on the schema alone (required columns, dtypes) run before any row is read.
Row-level checks are computed per batch by ``partial`` (pure, pyarrow.compute) and
merged; duplicate ids are found from 64-bit hashes of the id column.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_ray.config import ColumnRule, DataConfig, SchemaConfig, parse_duration
from mlops_ray.data.checks import CheckResult, ValidationReport
from mlops_ray.data.features import DT_PARTS
from mlops_ray.data.profile import profile_local
from mlops_ray.errors import ConfigError, did_you_mean

MAX_TOP_UNSEEN = 5
_CSV_TYPES = ("string", "int", "float", "bool", "datetime")


# --------------------------------------------------------------------------- types
def dtype_family(t: pa.DataType) -> set[str]:
    """Which declared dtypes an Arrow type satisfies."""
    if pa.types.is_dictionary(t):
        return {"categorical"} | ({"string"} if _is_str(t.value_type) else set())
    if pa.types.is_boolean(t):
        return {"bool"}
    if pa.types.is_integer(t):
        return {"int", "numeric", "categorical"}     # integer codes (1 = yes, 2 = no) are categories too
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return {"float", "numeric"}
    if _is_str(t):
        return {"string", "categorical"}
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return {"datetime"}
    if pa.types.is_null(t):
        return {"null"}
    return {str(t)}


def type_name(t: pa.DataType) -> str:
    """A short, readable Arrow type name for messages."""
    if pa.types.is_dictionary(t):
        return f"dictionary<{type_name(t.value_type)}>"
    if _is_str(t):
        return "string"
    return str(t)


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _: False)(t)


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Plan:
    """What each batch must count, derived from the config and the schema."""

    columns: tuple[str, ...]
    float_columns: tuple[str, ...]
    ranges: dict[str, tuple[float | None, float | None]]
    allowed: dict[str, tuple]
    unique: tuple[str, ...]
    label: str
    label_values: tuple | None            # implicit label domain (binary: 0/1)
    time_column: str | None
    context: tuple[str, ...]              # columns shown with offending rows
    sample_rows: int


def check_config_columns(names: list[str], cfg) -> None:
    """Every column name a config lists must be a column of the data: a misspelt
    ``features.exclude`` entry was silently ignored and the column it meant became a feature.
    Raises ConfigError naming each unknown name, its key and the closest column."""
    known = set(names)
    listed: list[tuple[str, str]] = [("features.exclude", c) for c in cfg.features.exclude]
    for key in ("numeric", "categorical", "datetime"):
        value = getattr(cfg.features, key)
        if value != "auto":
            listed += [(f"features.{key}", c) for c in value]
    listed += [(f"schema.columns.{c}", c) for c in cfg.schema_.columns]
    listed += [(f"data.csv.column_types.{c}", c) for c in cfg.data.csv.column_types]
    listed += [("data.split.key_columns", c) for c in cfg.data.split.key_columns]
    if cfg.model.slice_column:
        listed.append(("model.slice_column", cfg.model.slice_column))
    listed += [("retrain.key_features", c) for c in cfg.retrain.key_features]
    listed += [(f"monitor.min_effect.{c}", c) for c in cfg.monitor.min_effect if c not in ("numeric", "categorical")]
    parts = {f"{c}.{p}" for c in known for p in DT_PARTS}     # a datetime field's part: event_time.hour
    drift_keys = ("retrain.key_features", "monitor.min_effect.")
    bad = [f"{key} lists {c!r}, which is not a column of the data{did_you_mean(c, sorted(known))}"
           for key, c in listed if c not in known and c not in cfg.features.derived
           and not (key.startswith(drift_keys) and c in parts)]
    if bad:
        shown = ", ".join(sorted(known)[:40]) + (" …" if len(known) > 40 else "")
        raise ConfigError("; ".join(bad) + f". Fix the name (columns: {shown})")


def plan_checks(schema: pa.Schema, data: DataConfig, rules: SchemaConfig,
                task: str = "binary") -> tuple[list[CheckResult], Plan]:
    """Checks decidable from the schema, and the plan for the row-level pass."""
    static: list[CheckResult] = []
    names = set(schema.names)
    required = {data.label: "data.label"}
    if data.time_column:
        required[data.time_column] = "data.time_column"
    if data.id_column:
        required[data.id_column] = "data.id_column"
    for col, rule in rules.columns.items():
        if rule.required:
            required.setdefault(col, f"schema.columns.{col}")
    for col, key in required.items():
        ok = col in names
        static.append(CheckResult(col, "required", ok, observed="present" if ok else "missing",
                                  threshold="present", message="" if ok else
                                  f"column '{col}' (named in {key}) is missing from the data; available "
                                  f"columns: {', '.join(schema.names)}. Fix {key} or the data"))
    for col, rule in rules.columns.items():
        if rule.dtype and col in names:
            fam = dtype_family(schema.field(col).type)
            if "null" in fam:
                continue  # CSV header only: types are checked on the read schema
            ok = rule.dtype in fam
            static.append(CheckResult(col, "dtype", ok, observed=type_name(schema.field(col).type),
                                      threshold=rule.dtype, message="" if ok else
                                      f"column '{col}' has type {type_name(schema.field(col).type)}, expected "
                                      f"{rule.dtype}; " + (
                                          f"give the format of its text as data.datetime_formats: {{{col!r}: "
                                          "\"%m/%d/%Y\"}, convert it upstream, or fix "
                                          if rule.dtype == "datetime" and _is_str(schema.field(col).type)
                                          else "convert it upstream or fix ") + f"schema.columns.{col}.dtype"
                                      + (f", or read it as {rule.dtype} with data.csv.column_types: "
                                         f"{{{col}: {rule.dtype}}}" if rule.dtype in _CSV_TYPES else "")))
    if data.time_column and data.time_column in names:
        fam = dtype_family(schema.field(data.time_column).type)
        if not ({"datetime", "null"} & fam):
            static.append(CheckResult(data.time_column, "dtype", False,
                                      observed=type_name(schema.field(data.time_column).type), threshold="datetime",
                                      message=f"data.time_column '{data.time_column}' has type "
                                      f"{type_name(schema.field(data.time_column).type)}, not a timestamp; "
                                      "store it as a timestamp, or as text with its format given in "
                                      f"data.datetime_formats: {{{data.time_column!r}: \"%m/%d/%Y\"}}"))

    present = [c for c in schema.names]
    ranges = {c: (r.min, r.max) for c, r in rules.columns.items()
              if c in names and (r.min is not None or r.max is not None)}
    allowed = {c: tuple(r.allowed) for c, r in rules.columns.items() if c in names and r.allowed}
    unique = tuple(c for c, r in rules.columns.items() if c in names and r.unique)
    label_values = None
    if data.label in names and data.label not in rules.columns:
        if task == "binary":
            label_values = (0, 1)
    context = tuple(c for c in (data.id_column, data.time_column) if c and c in names)
    floats = tuple(c for c in present if pa.types.is_floating(schema.field(c).type))
    plan = Plan(columns=tuple(present), float_columns=floats, ranges=ranges, allowed=allowed,
                unique=unique, label=data.label, label_values=label_values,
                time_column=data.time_column if data.time_column in names else None,
                context=context, sample_rows=rules.sample_rows)
    return static, plan


# --------------------------------------------------------------------------- per batch
def _null_mask(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.is_null(col, nan_is_null=True)


def _samples(table: pa.Table, mask, plan: Plan, column: str, k: int) -> list[dict]:
    if k <= 0:
        return []
    idx = pc.indices_nonzero(pc.fill_null(mask, False)) if not isinstance(mask, np.ndarray) else np.flatnonzero(mask)
    idx = idx[:k]
    if len(idx) == 0:
        return []
    cols = [c for c in plan.context if c != column] + [column]
    rows = table.select(cols).take(idx).to_pylist()
    return [{k_: _jsonable(v) for k_, v in r.items()} for r in rows]


def _jsonable(v):
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, float) and not np.isfinite(v):
        return None if np.isnan(v) else str(v)
    return v


def _as_numeric(col: pa.ChunkedArray) -> pa.ChunkedArray:
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if pa.types.is_timestamp(t) and t.tz is not None:
            col = pc.cast(col, pa.timestamp(t.unit))
        return pc.cast(pc.cast(col, pa.timestamp("ns")), pa.int64())
    if pa.types.is_dictionary(t):
        return pc.cast(col, t.value_type)
    return col


def row_hashes(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every value, aligned with the rows, and the mask of non-null rows."""
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    valid = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_integer(col.type) or pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        ints = pc.fill_null(pc.cast(_as_numeric(col), pa.int64()), 0)
        arr = np.asarray(ints.to_numpy(), dtype=np.int64)
    else:
        arr = np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
    if arr.size == 0:
        return np.empty(0, dtype=np.uint64), valid
    return pd.util.hash_array(arr), valid


def hash_values(col: pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of the non-null values (for distributed duplicate detection)."""
    h, valid = row_hashes(col)
    return h[valid]


def partial(table: pa.Table, plan: Plan) -> dict:
    """Counts for one batch. Pure; mergeable with ``merge``."""
    k = plan.sample_rows
    out: dict = {"rows": table.num_rows, "nulls": {}, "ranges": {}, "allowed": {}, "unique": {},
                 "label": {}, "time_max": None}
    for c in plan.columns:
        if c not in table.column_names:
            continue
        col = table.column(c)
        n = col.null_count
        if c in plan.float_columns and n < len(col):
            n += pc.sum(pc.is_nan(col.drop_null())).as_py() or 0
        out["nulls"][c] = int(n)
    for c, (lo, hi) in plan.ranges.items():
        col = _as_numeric(table.column(c))
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type)):
            continue
        bad = None
        if lo is not None:
            bad = pc.less(col, lo)
        if hi is not None:
            above = pc.greater(col, hi)
            bad = above if bad is None else pc.or_(bad, above)
        nbad = pc.sum(pc.fill_null(bad, False)).as_py() or 0
        mm = pc.min_max(col)
        out["ranges"][c] = {"bad": int(nbad), "min": mm["min"].as_py(), "max": mm["max"].as_py(),
                            "samples": _samples(table, bad, plan, c, k) if nbad else []}
    for c, values in plan.allowed.items():
        col = table.column(c)
        if pa.types.is_dictionary(col.type):
            col = pc.cast(col, col.type.value_type)
        try:
            value_set = pa.array(list(values)).cast(col.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            value_set = pa.array([str(v) for v in values]).cast(pa.string())
            col = pc.cast(col, pa.string())
        unseen = pc.and_(pc.invert(pc.is_in(col, value_set=value_set)), pc.is_valid(col))
        nun = pc.sum(unseen).as_py() or 0
        top = Counter()
        if nun:
            vc = pc.value_counts(pc.filter(col, unseen))
            top = Counter({str(v["values"]): int(v["counts"]) for v in vc.to_pylist()})
        out["allowed"][c] = {"unseen": int(nun), "non_null": int(len(col) - col.null_count),
                             "top": top.most_common(50),
                             "samples": _samples(table, unseen, plan, c, k) if nun else []}
    for c in plan.unique:
        out["unique"][c] = hash_values(table.column(c))
    if plan.label in table.column_names:
        col = table.column(plan.label)
        nullmask = _null_mask(col)
        nnull = pc.sum(nullmask).as_py() or 0
        lab = {"null": int(nnull), "null_samples": _samples(table, nullmask, plan, plan.label, k) if nnull else [],
               "bad": 0, "bad_samples": [], "values": {}}
        if plan.label_values is not None:
            numeric = _as_numeric(col)
            if pa.types.is_boolean(numeric.type):
                numeric = pc.cast(numeric, pa.int8())
            if pa.types.is_integer(numeric.type) or pa.types.is_floating(numeric.type):
                bad = pc.and_(pc.invert(pc.is_in(pc.cast(numeric, pa.float64()),
                                                 value_set=pa.array([float(v) for v in plan.label_values]))),
                              pc.invert(nullmask))
            else:
                bad = pc.invert(nullmask)  # text labels are not 0/1
            nbad = pc.sum(pc.fill_null(bad, False)).as_py() or 0
            lab["bad"] = int(nbad)
            lab["bad_samples"] = _samples(table, bad, plan, plan.label, k) if nbad else []
        if pa.types.is_integer(col.type) or pa.types.is_boolean(col.type) or _is_str(col.type) \
                or pa.types.is_dictionary(col.type):
            vc = pc.value_counts(col.drop_null()).to_pylist()
            if len(vc) <= 1000:
                lab["values"] = {str(v["values"]): int(v["counts"]) for v in vc}
        out["label"] = lab
    if plan.time_column and plan.time_column in table.column_names:
        t = _as_numeric(table.column(plan.time_column))
        if pa.types.is_integer(t.type):
            out["time_max"] = pc.max(t).as_py()
    return out


# --------------------------------------------------------------------------- merge
def merge(parts: list[dict], k: int) -> dict:
    m: dict = {"rows": 0, "nulls": Counter(), "ranges": {}, "allowed": {}, "unique": {}, "label": {},
               "time_max": None}
    for p in parts:
        m["rows"] += p["rows"]
        m["nulls"].update(p["nulls"])
        for c, r in p["ranges"].items():
            a = m["ranges"].setdefault(c, {"bad": 0, "min": None, "max": None, "samples": []})
            a["bad"] += r["bad"]
            a["min"] = r["min"] if a["min"] is None else (a["min"] if r["min"] is None else min(a["min"], r["min"]))
            a["max"] = r["max"] if a["max"] is None else (a["max"] if r["max"] is None else max(a["max"], r["max"]))
            a["samples"] = (a["samples"] + r["samples"])[:k]
        for c, r in p["allowed"].items():
            a = m["allowed"].setdefault(c, {"unseen": 0, "non_null": 0, "top": Counter(), "samples": []})
            a["unseen"] += r["unseen"]
            a["non_null"] += r["non_null"]
            a["top"].update(dict(r["top"]))
            a["samples"] = (a["samples"] + r["samples"])[:k]
        for c, h in p["unique"].items():
            m["unique"].setdefault(c, []).append(h)
        if p["label"]:
            a = m["label"] or {"null": 0, "null_samples": [], "bad": 0, "bad_samples": [], "values": Counter()}
            a["null"] += p["label"]["null"]
            a["bad"] += p["label"]["bad"]
            a["null_samples"] = (a["null_samples"] + p["label"]["null_samples"])[:k]
            a["bad_samples"] = (a["bad_samples"] + p["label"]["bad_samples"])[:k]
            a["values"].update(p["label"]["values"])
            m["label"] = a
        if p["time_max"] is not None:
            m["time_max"] = p["time_max"] if m["time_max"] is None else max(m["time_max"], p["time_max"])
    return m


def duplicate_hashes(hash_parts: list[np.ndarray]) -> tuple[int, np.ndarray]:
    """(number of duplicate rows, the hashes that occur more than once)."""
    if not hash_parts:
        return 0, np.empty(0, dtype=np.uint64)
    h = np.concatenate(hash_parts)
    if h.size == 0:
        return 0, h
    h.sort()
    dup = h[1:] == h[:-1]
    return int(dup.sum()), np.unique(h[1:][dup])


# --------------------------------------------------------------------------- decide
def evaluate(merged: dict, plan: Plan, data: DataConfig, rules: SchemaConfig,
             static: list[CheckResult], *, now: dt.datetime | None = None,
             fetch_duplicates: Callable[[str, np.ndarray, int], list[dict]] | None = None) -> ValidationReport:
    """Turn merged counts into pass/fail checks with messages that say the fix."""
    rows = merged["rows"]
    checks = list(static)
    k = rules.sample_rows
    checks.append(CheckResult(None, "min_rows", rows >= rules.min_rows, rows, rules.min_rows,
                              "" if rows >= rules.min_rows else
                              f"the data has {rows:,} rows, fewer than schema.min_rows={rules.min_rows:,}; "
                              "check data.source or lower schema.min_rows"))
    for c in plan.columns:
        if c not in merged["nulls"] or rows == 0:
            continue
        rule: ColumnRule | None = rules.columns.get(c)
        limit = rule.max_null_fraction if rule and rule.max_null_fraction is not None else rules.max_null_fraction
        if c == data.label:
            continue  # checked below with its own message
        frac = merged["nulls"][c] / rows
        if frac >= 1.0 and limit < 1.0:
            checks.append(CheckResult(c, "not_all_null", False, 1.0, limit,
                                      f"column '{c}' is entirely null ({rows:,} rows); fix the export, "
                                      f"drop it with data.columns, or set schema.columns.{c}.max_null_fraction: 1"))
        elif frac > limit:
            checks.append(CheckResult(c, "max_null_fraction", False, round(frac, 6), limit,
                                      f"column '{c}' is {frac:.1%} null, above the allowed {limit:.1%}; "
                                      f"fix the data or raise schema.columns.{c}.max_null_fraction"))
        elif rule is not None or frac > 0:
            checks.append(CheckResult(c, "max_null_fraction", True, round(frac, 6), limit))
    for c, r in merged["ranges"].items():
        lo, hi = plan.ranges[c]
        ok = r["bad"] == 0
        bounds = f"[{'' if lo is None else f'{lo:g}'}, {'' if hi is None else f'{hi:g}'}]"
        checks.append(CheckResult(c, "range", ok, {"min": r["min"], "max": r["max"], "violations": r["bad"]},
                                  bounds, "" if ok else
                                  f"column '{c}' has {r['bad']:,} value(s) outside {bounds} (observed min "
                                  f"{r['min']}, max {r['max']}); fix the data or schema.columns.{c}.min/max",
                                  r["samples"]))
    for c, r in merged["allowed"].items():
        share = r["unseen"] / r["non_null"] if r["non_null"] else 0.0
        limit = rules.columns[c].max_unseen_share
        ok = share <= limit
        top = ", ".join(f"{v!r} ({n})" for v, n in r["top"].most_common(MAX_TOP_UNSEEN))
        checks.append(CheckResult(c, "allowed_values", ok, round(share, 6), limit, "" if ok else
                                  f"column '{c}' has {share:.2%} values outside schema.columns.{c}.allowed "
                                  f"(max {limit:.2%}); most frequent unseen: {top}. Add them to 'allowed' "
                                  "or raise max_unseen_share", r["samples"]))
    for c, parts in merged["unique"].items():
        ndup, dups = duplicate_hashes(parts)
        samples = fetch_duplicates(c, dups[:k], k) if (ndup and fetch_duplicates) else []
        checks.append(CheckResult(c, "unique", ndup == 0, ndup, 0, "" if ndup == 0 else
                                  f"column '{c}' must be unique but {ndup:,} row(s) repeat an earlier value "
                                  f"({len(dups):,} distinct duplicated values); de-duplicate the data", samples))
    lab = merged["label"]
    if lab:
        checks.append(CheckResult(data.label, "label_not_null", lab["null"] == 0, lab["null"], 0,
                                  "" if lab["null"] == 0 else
                                  f"label column '{data.label}' is null in {lab['null']:,} row(s); set "
                                  "data.unlabelled: drop to leave them out of training and evaluation, or "
                                  "drop or fill those rows upstream" + (
                                      f" (data.label expr {data.label_expr!r} has no value where a column "
                                      "it reads is missing; fillna(column, value) in the expression gives one)"
                                      if data.label_expr else ""), lab["null_samples"]))
        if plan.label_values is not None:
            checks.append(CheckResult(data.label, "label_values", lab["bad"] == 0, lab["bad"],
                                      list(plan.label_values), "" if lab["bad"] == 0 else
                                      f"label column '{data.label}' has {lab['bad']:,} value(s) that are not "
                                      + (f"0/1 for a binary task: data.label expr {data.label_expr!r} must be a "
                                         "comparison or condition (e.g. \"arr_delay > 15\"), or set model.task"
                                         if data.label_expr else
                                         f"0/1 for a binary task; encode it as 0/1, or set model.task, or declare "
                                         f"schema.columns.{data.label}.allowed"), lab["bad_samples"]))
    if rules.freshness is not None:
        col = rules.freshness.column or data.time_column
        max_age = parse_duration(rules.freshness.max_age)
        ref = pd.Timestamp(rules.freshness.now) if rules.freshness.now else pd.Timestamp(now or dt.datetime.now(dt.timezone.utc))
        if ref.tzinfo is not None:
            ref = ref.tz_convert("UTC").tz_localize(None)
        if merged["time_max"] is None:
            checks.append(CheckResult(col, "freshness", False, None, rules.freshness.max_age,
                                      f"freshness needs a timestamp column '{col}' with values; set data.time_column"))
        else:
            newest = pd.Timestamp(merged["time_max"], unit="ns")
            age = (ref - newest).total_seconds()
            ok = age <= max_age
            checks.append(CheckResult(col, "freshness", ok, newest.isoformat(), rules.freshness.max_age,
                                      "" if ok else f"newest '{col}' is {newest.isoformat()}, "
                                      f"{age / 3600:.1f} h old, older than max_age {rules.freshness.max_age}; "
                                      "load newer data or relax schema.freshness.max_age"))
    return ValidationReport(rows=rows, checks=checks)


# --------------------------------------------------------------------------- entry points
def validate_table(table: pa.Table, data: DataConfig, rules: SchemaConfig, task: str = "binary",
                   now: dt.datetime | None = None) -> ValidationReport:
    """Validate an in-memory table in this process (tests, small data, baselines)."""

    static, plan = plan_checks(table.schema, data, rules, task)
    parts = profile_local(table, {"validate": lambda t: partial(t, plan)})["validate"]

    def fetch(col, hashes, k):
        return _dup_rows(table, col, hashes, k)

    return evaluate(merge(parts, rules.sample_rows), plan, data, rules, static, now=now, fetch_duplicates=fetch)


def _dup_rows(table: pa.Table, col: str, hashes: np.ndarray, k: int) -> list[dict]:
    h, valid = row_hashes(table.column(col))
    mask = np.isin(h, hashes) & valid
    return [{col: _jsonable(v)} for v in table.column(col).filter(pa.array(mask)).to_pylist()[:k]]


def fetch_duplicates_ray(ds) -> Callable[[str, np.ndarray, int], list[dict]]:
    """Look up a few rows of duplicated ids in a Ray Dataset (runs only when the check failed)."""
    def fetch(col: str, hashes: np.ndarray, k: int) -> list[dict]:
        def pick(t: pa.Table) -> pa.Table:
            h, valid = row_hashes(t.column(col))
            return t.select([col]).filter(pa.array(np.isin(h, hashes) & valid))
        return [{col: _jsonable(r[col])} for r in ds.select_columns([col]).map_batches(
            pick, batch_format="pyarrow").take(k)]
    return fetch
