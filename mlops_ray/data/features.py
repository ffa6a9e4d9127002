"""Features: a FeatureSpec fitted on the training split, and the one transform that applies it.

In: the training rows (as per-batch partials from a Ray pass, or an in-memory table) and
``FeaturesConfig``. Out: a ``FeatureSpec`` (JSON-serialisable) and ``transform(df, spec)``,
a pure pandas function that turns raw rows into model input. Ray Data calls it on batches
for training and batch scoring; serving replicas call it on single requests; both give
identical output (a test holds them equal).

Encoding, chosen for XGBoost: numerics stay float32 with NaN for missing (or a fitted fill
value); categoricals become codes (0 = out-of-vocabulary, 1..n = vocabulary, NaN = missing)
marked as categorical for XGBoost; datetimes become parts (hour, day of week, ...);
derived columns come from the safe expression language in ``mlops_ray.expr``.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlops_ray import expr
from mlops_ray.config import DataConfig, FeaturesConfig
from mlops_ray.data import dates
from mlops_ray.data.profile import merged_quantiles, sketch
from mlops_ray.errors import FeatureError, closest

SPEC_VERSION = 1
OOV_CODE = 0


@dataclass
class NumericFeature:
    name: str
    fill: float | None = None
    mean: float | None = None
    min: float | None = None
    max: float | None = None


@dataclass
class CategoricalFeature:
    name: str
    vocab: list[str]
    oov_share: float = 0.0        # share of training rows mapped to the OOV bucket


@dataclass
class DatetimeFeature:
    name: str
    parts: list[str]


@dataclass
class DerivedFeature:
    name: str
    expr: str
    fill: float | None = None


@dataclass
class FeatureSpec:
    label: str
    numeric: list[NumericFeature] = field(default_factory=list)
    categorical: list[CategoricalFeature] = field(default_factory=list)
    datetime: list[DatetimeFeature] = field(default_factory=list)
    derived: list[DerivedFeature] = field(default_factory=list)
    input_types: dict[str, str] = field(default_factory=dict)   # raw column -> int/float/bool/string/datetime
    id_column: str | None = None
    time_column: str | None = None
    train_rows: int = 0
    version: int = SPEC_VERSION
    classes: list[str] | None = None      # multiclass: the label's values, code k = classes[k]
    datetime_formats: dict[str, str] = field(default_factory=dict)   # date-time inputs stored as text

    # ---- derived views
    @property
    def output_columns(self) -> list[str]:
        cols = [f.name for f in self.numeric]
        cols += [f.name for f in self.derived]
        cols += [f.name for f in self.categorical]
        cols += [f"{d.name}__{p}" for d in self.datetime for p in d.parts]
        return cols

    @property
    def feature_types(self) -> list[str]:
        """XGBoost feature types, aligned with output_columns ('q' numeric, 'c' categorical)."""
        return (["q"] * (len(self.numeric) + len(self.derived)) + ["c"] * len(self.categorical)
                + ["q"] * sum(len(d.parts) for d in self.datetime))

    @property
    def input_columns(self) -> list[str]:
        return list(self.input_types)

    # ---- JSON
    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_columns"] = self.output_columns
        d["feature_types"] = self.feature_types
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        if d.get("version") != SPEC_VERSION:
            raise FeatureError(f"feature spec version {d.get('version')} is not supported "
                               f"(expected {SPEC_VERSION}); refit the features")
        return cls(label=d["label"], id_column=d.get("id_column"), time_column=d.get("time_column"),
                   numeric=[NumericFeature(**x) for x in d["numeric"]],
                   categorical=[CategoricalFeature(**x) for x in d["categorical"]],
                   datetime=[DatetimeFeature(**x) for x in d["datetime"]],
                   derived=[DerivedFeature(**x) for x in d["derived"]],
                   input_types=dict(d["input_types"]), train_rows=d.get("train_rows", 0),
                   version=d["version"], classes=d.get("classes"),
                   datetime_formats=dict(d.get("datetime_formats") or {}))

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        return cls.from_dict(json.loads(text))


# --------------------------------------------------------------------------- column roles
def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_dictionary(t):
        return "categorical"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view":
        return "categorical"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "datetime"
    return None


def _kind_text(t: pa.DataType) -> str:
    k = _kind(t)
    return {"categorical": "text", "int": "integers", "float": "numbers", "bool": "booleans"}.get(k, str(t))


@dataclass(frozen=True)
class Roles:
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    datetime: tuple[str, ...]
    input_types: dict


def assign_roles(schema: pa.Schema, data: DataConfig, cfg: FeaturesConfig,
                 declared_categorical: frozenset[str] | set[str] = frozenset()) -> Roles:
    """Which raw columns are numeric, categorical or datetime features. ``declared_categorical``:
    integer columns the schema declares ``dtype: categorical`` (codes such as 1 = yes, 2 = no), which
    ``auto`` then takes as categories rather than numbers."""
    label_inputs = set(data.label_columns()) - {data.label} if data.label_expr else set()
    reserved = {data.label, data.id_column, *cfg.exclude, *label_inputs} - {None}
    kinds = {f.name: _kind(f.type) for f in schema}
    codes = {c for c in declared_categorical if kinds.get(c) == "int"}
    for key in ("numeric", "categorical", "datetime"):
        listed = getattr(cfg, key)
        leak = sorted(set(listed) & label_inputs) if listed != "auto" else []
        if leak:
            raise FeatureError(f"features.{key} lists {leak[0]!r}, which data.label's expression "
                               f"({data.label_expr!r}) reads: as a feature it would give the label away; "
                               "remove it from the features")
    for name, source in (cfg.derived or {}).items() if label_inputs else ():
        try:
            leak = sorted(set(expr.parse(source).columns) & label_inputs)
        except expr.ExpressionError:
            continue                      # reported with the derived features' own checks
        if leak:
            raise FeatureError(f"features.derived.{name} ({source!r}) reads {leak[0]!r}, which data.label's "
                               f"expression ({data.label_expr!r}) reads: it would give the label away; remove "
                               f"features.derived.{name}")

    # a column listed as a date-time is one, whatever "auto" would have made of it
    claimed = set(cfg.datetime) if cfg.datetime != "auto" else set()
    not_dates = [c for c in claimed if c in kinds and kinds[c] != "datetime"]
    if not_dates:
        c = not_dates[0]
        raise FeatureError(f"features.datetime lists {c!r}, which the data holds as {_kind_text(schema.field(c).type)}, "
                           f"not date-times; give its format as data.datetime_formats: {{{c!r}: \"%m/%d/%Y\"}} "
                           "(strftime directives) or remove it from features.datetime")
    listed = claimed | (set(cfg.categorical) if cfg.categorical != "auto" else set())

    def pick(spec, wanted: set[str]) -> tuple[str, ...]:
        if spec == "auto":     # integer codes declared categorical, and columns listed as another kind, are not numbers
            if "categorical" in wanted:
                return tuple(c for c, k in kinds.items() if c not in reserved and c not in claimed
                             and (k in wanted or c in codes))
            return tuple(c for c, k in kinds.items() if c not in reserved and k in wanted
                         and c not in codes and c not in listed)
        missing = [c for c in spec if c not in kinds]
        if missing:
            raise FeatureError(f"features lists column(s) {missing} that are not in the data; "
                               f"available: {list(kinds)}")
        return tuple(spec)

    numeric = pick(cfg.numeric, {"int", "float", "bool"})
    categorical = tuple(c for c in pick(cfg.categorical, {"categorical"}) if c not in numeric)
    datetime = tuple(c for c in pick(cfg.datetime, {"datetime"}) if c not in numeric + categorical)
    overlap = set(numeric) & set(pick(cfg.categorical, {"categorical"})) if cfg.categorical != "auto" else set()
    if overlap:
        raise FeatureError(f"column(s) {sorted(overlap)} are listed as both numeric and categorical")
    used = set(numeric) | set(categorical) | set(datetime)
    for name, source in cfg.derived.items():
        for c in expr.parse(source).columns:
            if c not in kinds:
                close = closest(c, kinds)
                raise FeatureError(f"features.derived.{name} uses column '{c}', which is not in the data"
                                   + (f" (did you mean {close!r}? a name with spaces or dots goes in "
                                      f"backticks: `{close}`)" if close else "") + f"; available: {list(kinds)}")
            used.add(c)
    if not numeric and not categorical and not datetime and not cfg.derived:
        raise FeatureError("no feature columns: every column is the label, the id or excluded; "
                           "list features.numeric / categorical or add derived columns")
    input_types = {c: ("string" if kinds[c] == "categorical" else kinds[c]) for c in kinds if c in used}
    return Roles(numeric, categorical, datetime, input_types)


# --------------------------------------------------------------------------- fit (per batch, merge)
def fit_partial(table: pa.Table, roles: Roles, cfg: FeaturesConfig) -> dict:
    """Counts and sketches of the training rows of one batch. Pure."""
    out: dict = {"rows": table.num_rows, "numeric": {}, "categorical": {}}
    need_sketch = cfg.numeric_fill == "median"
    derived_df = None
    if cfg.derived:
        derived_df = _derive(coerce_inputs(_to_pandas(table, roles), roles.input_types), cfg.derived)
    for c in list(roles.numeric) + list(cfg.derived):
        if c in cfg.derived:
            v = derived_df[c].to_numpy(dtype=np.float64)
        else:
            v = _numeric_array(table.column(c))
        finite = v[np.isfinite(v)]
        out["numeric"][c] = {"n": int(finite.size), "sum": float(finite.sum()) if finite.size else 0.0,
                             "min": float(finite.min()) if finite.size else None,
                             "max": float(finite.max()) if finite.size else None,
                             "sketch": sketch(finite) if need_sketch else None}
    for c in roles.categorical:
        col = table.column(c)
        if pa.types.is_dictionary(col.type):
            col = pc.cast(col, col.type.value_type)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            col = pc.cast(col, pa.string())
        vc = pc.value_counts(col.drop_null())
        out["categorical"][c] = dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))
    return out


def fit_merge(parts: list[dict], roles: Roles, data: DataConfig, cfg: FeaturesConfig) -> FeatureSpec:
    rows = sum(p["rows"] for p in parts)
    if rows == 0:
        raise FeatureError("the training split is empty; check data.split fractions and the data size")
    numeric: list[NumericFeature] = []
    derived: list[DerivedFeature] = []
    for c in list(roles.numeric) + list(cfg.derived):
        ps = [p["numeric"][c] for p in parts if c in p["numeric"]]
        n = sum(p["n"] for p in ps)
        mean = sum(p["sum"] for p in ps) / n if n else None
        mins = [p["min"] for p in ps if p["min"] is not None]
        maxs = [p["max"] for p in ps if p["max"] is not None]
        fill = None
        if cfg.numeric_fill == "mean":
            fill = mean
        elif cfg.numeric_fill == "zero":
            fill = 0.0
        elif cfg.numeric_fill == "median":
            fill = merged_quantiles([p["sketch"] for p in ps if p["sketch"] is not None], [0.5])[0]
        if n and cfg.numeric_fill != "none" and fill is None:
            fill = mean
        if c in cfg.derived:
            derived.append(DerivedFeature(c, cfg.derived[c], fill))
        else:
            numeric.append(NumericFeature(c, fill, mean, min(mins) if mins else None, max(maxs) if maxs else None))
    categorical = []
    for c in roles.categorical:
        counts: Counter = Counter()
        for p in parts:
            counts.update(p["categorical"].get(c, {}))
        total = sum(counts.values())
        kept = sorted((v for v, n in counts.items() if n >= cfg.min_frequency), key=lambda v: (-counts[v], v))
        kept = kept[:cfg.max_categories]
        in_vocab = sum(counts[v] for v in kept)
        categorical.append(CategoricalFeature(c, kept, round(1 - in_vocab / total, 6) if total else 0.0))
    dts = [DatetimeFeature(c, list(cfg.datetime_parts)) for c in roles.datetime]
    return FeatureSpec(label=data.label, numeric=numeric, categorical=categorical, datetime=dts,
                       derived=derived, input_types=dict(roles.input_types), id_column=data.id_column,
                       time_column=data.time_column, train_rows=rows)


# --------------------------------------------------------------------------- transform
_EXACT_INTS = {pa.int64(): pd.Int64Dtype(), pa.uint64(): pd.UInt64Dtype()}.get


def frame(table: pa.Table) -> pd.DataFrame:
    """Arrow rows as the pandas frame ``transform`` takes: 64-bit integers stay exact integers
    (nullable Int64), where a plain ``to_pandas`` turns a column with a null into float64 and an
    id-like categorical above 2**53 into a different value depending on the batch."""
    return table.to_pandas(types_mapper=_EXACT_INTS)


def _to_pandas(table: pa.Table, roles: Roles) -> pd.DataFrame:
    cols = [c for c in roles.input_types if c in table.column_names]
    return frame(table.select(cols))


def _numeric_array(col) -> np.ndarray:
    if isinstance(col, (pa.ChunkedArray, pa.Array)):
        if pa.types.is_boolean(col.type):
            col = pc.cast(col, pa.float64(), safe=False)
        if pa.types.is_decimal(col.type) or pa.types.is_integer(col.type):
            col = pc.cast(col, pa.float64(), safe=False)   # a value above 2**53 rounds, as in float64
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.asarray(col, dtype=np.float64)


def coerce_inputs(df: pd.DataFrame, input_types: dict, formats: dict | None = None) -> pd.DataFrame:
    """Raw inputs to the types the spec was fitted on; bad values become missing, never errors.
    A date-time input stored as text is read with its format in ``formats`` (the spec's), the
    way ingest read the training rows; without one, as ISO 8601."""
    out = {}
    n = len(df)
    for c, kind in input_types.items():
        if c not in df.columns:
            dtype = {"string": object, "datetime": "datetime64[ns]"}.get(kind, "float64")
            out[c] = pd.Series([None] * n, index=df.index, dtype=dtype)
            continue
        s = df[c]
        if kind in ("int", "float", "bool"):
            if isinstance(s.dtype, pd.CategoricalDtype):
                s = s.astype(object)
            if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
                arr = s.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                arr = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            arr = arr.copy()
            arr[~np.isfinite(arr)] = np.nan
            out[c] = pd.Series(arr, index=df.index)
        elif kind == "datetime":
            if not pd.api.types.is_datetime64_any_dtype(s.dtype):
                s = dates.parse_series(s, (formats or {}).get(c, dates.ISO))
            if getattr(s.dt, "tz", None) is not None:
                s = s.dt.tz_convert("UTC").dt.tz_localize(None)
            out[c] = _as_ns(s)
        else:
            out[c] = s
    return pd.DataFrame(out, index=df.index)


_NS_MIN, _NS_MAX = pd.Timestamp.min, pd.Timestamp.max


def _as_ns(s: pd.Series) -> pd.Series:
    """A datetime column in nanoseconds, as the datetime parts compute them; a value outside what
    nanoseconds can hold (before 1677 or after 2262: a sentinel such as 3000-01-01, a typo) is
    missing, like any other date that cannot be read, not an error."""
    if s.dtype == "datetime64[ns]":
        return s
    s = s.where((s >= _NS_MIN) & (s <= _NS_MAX))
    return s.astype("datetime64[ns]")


def _derive(df: pd.DataFrame, derived: dict[str, str]) -> pd.DataFrame:
    df = df.copy()
    for name, source in derived.items():
        try:
            df[name] = expr.parse(source).evaluate(df)
        except expr.ExpressionError as e:
            raise FeatureError(f"features.derived.{name}: {e}") from None
    return df


def _time_of_day(s: pd.Series) -> pd.Series:
    """Hours since midnight as a fraction (14:30 -> 14.5)."""
    return s.dt.hour + s.dt.minute / 60.0 + s.dt.second / 3600.0


def _cyclic(value, period: float, fn):
    return lambda s: fn(2 * np.pi * value(s).astype("float64") / period)


DT_PARTS = {
    "hour": lambda s: s.dt.hour,
    "minute": lambda s: s.dt.minute,
    "time_of_day": _time_of_day,
    "minute_of_day": lambda s: s.dt.hour * 60 + s.dt.minute,
    "weekofyear": lambda s: s.dt.isocalendar().week.astype("float64").where(s.notna()),
    "hour_sin": _cyclic(_time_of_day, 24.0, np.sin),
    "hour_cos": _cyclic(_time_of_day, 24.0, np.cos),
    "dayofweek_sin": _cyclic(lambda s: s.dt.dayofweek, 7.0, np.sin),
    "dayofweek_cos": _cyclic(lambda s: s.dt.dayofweek, 7.0, np.cos),
    "dayofyear_sin": _cyclic(lambda s: s.dt.dayofyear - 1, 365.25, np.sin),
    "dayofyear_cos": _cyclic(lambda s: s.dt.dayofyear - 1, 365.25, np.cos),
    "dayofweek": lambda s: s.dt.dayofweek,
    "day": lambda s: s.dt.day,
    "month": lambda s: s.dt.month,
    "year": lambda s: s.dt.year,
    "dayofyear": lambda s: s.dt.dayofyear,
    "is_weekend": lambda s: (s.dt.dayofweek >= 5).astype("float64").where(s.notna()),
    "epoch_days": lambda s: (s.astype("datetime64[ns]").astype("int64") / 86400e9).where(s.notna()),
}

# What a part says about a moment. A *cyclic* part is a position within a cycle that every
# period of traffic goes through again (the hour of the day, the day of the week): training saw
# every value a later window can hold, so it is profiled and tested for drift per part. A
# *calendar position* (the day of the month, the month, the year, the day or week of the year,
# the days since 1970, the season as dayofyear_sin/cos) names where in the calendar a row lies:
# a later period has other values by construction, so drift tests and the domain classifier
# would tell any later window from the training rows (monitor/calendar.py keeps them apart).
CALENDAR_PARTS = frozenset({"day", "month", "year", "dayofyear", "weekofyear", "epoch_days",
                            "dayofyear_sin", "dayofyear_cos"})
MONOTONE_PARTS = frozenset({"year", "epoch_days"})        # calendar positions that only grow with time
_DAY_S, _WEEK_S = 86400.0, 7 * 86400.0
PART_CYCLE_S = {"hour": _DAY_S, "time_of_day": _DAY_S, "minute_of_day": _DAY_S, "hour_sin": _DAY_S,
                "hour_cos": _DAY_S, "minute": 3600.0, "dayofweek": _WEEK_S, "is_weekend": _WEEK_S,
                "dayofweek_sin": _WEEK_S, "dayofweek_cos": _WEEK_S}    # the cycle each cyclic part repeats


def part_kind(part: str) -> str:
    """'calendar' (a calendar position) or 'cyclic'."""
    return "calendar" if part in CALENDAR_PARTS else "cyclic"


def as_datetime(values) -> pd.Series:
    """Raw datetime values (an Arrow column or a pandas Series of timestamps, dates or ISO text, any
    time zone) as ``transform`` reads them: naive UTC nanoseconds, NaT for missing or unreadable."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = frame(pa.table({"t": values}))["t"]
    return coerce_inputs(pd.DataFrame({"t": values}), {"t": "datetime"})["t"]


def datetime_part(s: pd.Series, part: str) -> np.ndarray:
    """One part of ``as_datetime`` values, as the model sees it (float64, NaN for missing)."""
    return DT_PARTS[part](s).to_numpy(dtype=np.float64, na_value=np.nan)


def transform(df: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Raw rows -> model input (float32 columns in ``spec.output_columns`` order). Pure.

    Works the same on one row and on a million: unknown categories map to the OOV code,
    unparseable numbers and infinities become missing, absent optional columns become missing.
    """
    raw = coerce_inputs(df, spec.input_types, spec.datetime_formats)
    if spec.derived:
        raw = _derive(raw, {d.name: d.expr for d in spec.derived})
    out: dict[str, np.ndarray] = {}
    for f in spec.numeric:
        v = raw[f.name].to_numpy(dtype=np.float64)
        if f.fill is not None:
            v = np.where(np.isnan(v), f.fill, v)
        out[f.name] = v
    for f in spec.derived:
        v = raw[f.name].to_numpy(dtype=np.float64)
        if f.fill is not None:
            v = np.where(np.isnan(v), f.fill, v)
        out[f.name] = v
    for f in spec.categorical:
        s = _category_input(df, raw, f.name, spec.input_types.get(f.name))
        missing = s.isna().to_numpy()
        if not isinstance(s.dtype, pd.CategoricalDtype) and pd.api.types.infer_dtype(s, skipna=True) not in (
                "string", "empty"):
            s = s.map(as_str, na_action="ignore")     # numbers sent for a text column
        codes = pd.Categorical(s, categories=f.vocab).codes.astype(np.float64) + 1.0   # -1 (OOV) -> 0
        codes[missing] = np.nan
        out[f.name] = codes
    for d in spec.datetime:
        s = raw[d.name]
        for p in d.parts:
            out[f"{d.name}__{p}"] = datetime_part(s, p)
    return pd.DataFrame({c: out[c].astype(np.float32) for c in spec.output_columns}, index=df.index)


def _category_input(df: pd.DataFrame, raw: pd.DataFrame, name: str, kind: str | None) -> pd.Series:
    """A categorical's values as the vocabulary spells them (Arrow's cast to string, at fit time).
    Over an integer column, the integers as given (their float64 coercion would turn one above
    2**53 into its neighbour); over a bool column "true"/"false" (its coercion is 1.0/0.0, which
    the vocabulary does not hold); otherwise the coerced column."""
    if kind == "int" and name in df.columns and pd.api.types.is_integer_dtype(df[name].dtype):
        return df[name]
    if kind == "bool":
        return raw[name].map({1.0: "true", 0.0: "false"})
    return raw[name]


def as_str(v) -> str:
    """A category value as the vocabulary spells it (Arrow's cast to string): 1.0 -> "1",
    True -> "true"."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


# --------------------------------------------------------------------------- split
SPLITS = ("train", "valid", "test")


def split_codes(table_or_df, data: DataConfig, cutoffs: tuple[int, int] | None,
                keys: np.ndarray | None = None) -> np.ndarray:
    """0 train / 1 valid / 2 test for each row: a seeded hash (random) or time cut-offs (time).
    ``keys``: the rows' ``row_keys`` when the caller has them already."""
    s = data.split
    if s.method == "time":
        col = table_or_df[data.time_column] if isinstance(table_or_df, pd.DataFrame) else \
            table_or_df.column(data.time_column)
        t = _time_ns(col)
        valid_cut, test_cut = cutoffs
        codes = np.zeros(len(t), dtype=np.int8)
        codes[t >= valid_cut] = 1
        codes[t >= test_cut] = 2
        codes[t == np.iinfo(np.int64).min] = 0   # rows without a time train
        return codes
    h = _mix(row_keys(table_or_df, data) if keys is None else keys, s.seed)
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    codes = np.zeros(len(u), dtype=np.int8)
    codes[u < s.test_fraction + s.valid_fraction] = 1
    codes[u < s.test_fraction] = 2
    return codes


def row_keys(table_or_df, data: DataConfig) -> np.ndarray:
    """A 64-bit key per row, what the random split hashes and the gate's overlap check compares:
    the id column's value (``data.id_column``), else the columns of ``data.split.key_columns``,
    else the whole row. Key columns and whole rows are hashed as text in column-name order (1, 1.0
    and "1" are one key), so a column whose type changes, or columns in another order, keep every
    row's key; a column added to the data changes every whole-row key (name key columns then)."""
    if data.id_column:       # as hashed since the first release: existing id-keyed splits stay put
        if isinstance(table_or_df, pd.DataFrame):
            frame = table_or_df[[data.id_column]]
        else:
            frame = table_or_df.select([data.id_column]).to_pandas()
        return pd.util.hash_pandas_object(frame, index=False).to_numpy()
    table = table_or_df if isinstance(table_or_df, pa.Table) else pa.Table.from_pandas(table_or_df,
                                                                                      preserve_index=False)
    cols = sorted(data.split.key_columns or table.column_names)
    text = pd.DataFrame({c: _key_text(table.column(c)) for c in cols})
    return pd.util.hash_pandas_object(text, index=False).to_numpy()


def _key_text(col) -> np.ndarray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return pc.cast(col, pa.string()).to_numpy(zero_copy_only=False)


def _mix(h: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (hash + seed): a different, well-spread split for every seed."""
    with np.errstate(over="ignore"):
        z = h.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _time_ns(col) -> np.ndarray:
    if isinstance(col, pd.Series):
        s = col if pd.api.types.is_datetime64_any_dtype(col.dtype) else pd.to_datetime(col, errors="coerce", utc=True)
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return s.astype("datetime64[ns]").to_numpy().astype(np.int64)
    if pa.types.is_date(col.type):
        col = pc.cast(col, pa.timestamp("ns"))
    elif pa.types.is_timestamp(col.type) and col.type.unit != "ns":
        col = pc.cast(col, pa.timestamp("ns"))
    ints = pc.cast(col, pa.int64())
    return np.asarray(pc.fill_null(ints, np.iinfo(np.int64).min).to_numpy(), dtype=np.int64)


def time_partial(table: pa.Table, time_column: str):
    t = _time_ns(table.column(time_column))
    return sketch(t[t != np.iinfo(np.int64).min].astype(np.float64))


# --------------------------------------------------------------------------- multiclass labels
MAX_CLASSES = 1000


def class_partial(table: pa.Table, label: str) -> dict[str, int]:
    """A block's label values (as Arrow spells them in text) and their counts."""
    if label not in table.column_names:
        return {}
    col = table.column(label).drop_null()
    if pa.types.is_floating(col.type):
        col = pc.drop_null(pc.if_else(pc.is_nan(col), None, col))
    col = pc.cast(col, pa.string())    # a dictionary column casts to its values
    return {str(v["values"]): int(v["counts"]) for v in pc.value_counts(col).to_pylist()}


def label_classes(parts: list[dict], label: str) -> list[str]:
    """The classes of a multiclass label, in code order: numerically when every value is a number
    (so 0, 1, 2 keep their codes), else as text."""
    counts: Counter = Counter()
    for p in parts:
        counts.update(p)
    if len(counts) < 2:
        raise FeatureError(f"label '{label}' has {len(counts)} distinct value(s); a multiclass model needs at "
                           "least two (or set model.task: binary / regression)")
    if len(counts) > MAX_CLASSES:
        raise FeatureError(f"label '{label}' has {len(counts):,} distinct values; a multiclass label has at most "
                           f"{MAX_CLASSES:,}: is it an id or a number (model.task: regression)?")
    names = list(counts)
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


def label_text(col) -> pa.Array:
    """A label column as the text classes are matched by (training's ``label_codes``, the label
    store's feedback): the value's string form, NaN as missing."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_floating(col.type):
        col = pc.if_else(pc.is_nan(col), None, col)
    return pc.cast(col, pa.string())


def label_codes(col, classes: list[str] | None) -> np.ndarray:
    """A label column as model codes: the value itself (float32), or for a multiclass spec its
    class's index (a value not in ``classes`` is -1, missing is NaN)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if classes is None:
        if pa.types.is_dictionary(col.type):
            return col.to_pandas().astype("float32").to_numpy()
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32)
    text = label_text(col)
    idx = pc.index_in(text, value_set=pa.array(classes, pa.string()))
    codes = np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False), dtype=np.float32)
    codes[np.asarray(pc.is_null(text).to_numpy(zero_copy_only=False), dtype=bool)] = np.nan
    return codes


def _split_quantiles(data: DataConfig) -> list[float]:
    s = data.split
    return [1 - s.valid_fraction - s.test_fraction, 1 - s.test_fraction]


def time_cutoffs(parts, data: DataConfig) -> tuple[int, int]:
    """Approximate cut-offs from the mergeable sketches (``time_partial``); ``exact_time_cutoffs``
    refines them to the exact order statistics with one more pass."""
    q = merged_quantiles(parts, _split_quantiles(data))
    if q[0] is None:
        raise FeatureError(f"data.time_column '{data.time_column}' has no values; it cannot split by time")
    return int(q[0]), int(q[1])


def time_brackets(parts, data: DataConfig, margin: float) -> list[tuple[int, int]]:
    """For each cut-off, an interval of times [lo, hi) that holds its exact order statistic when
    the sketch's rank error is below ``margin`` (a share of the rows); margin >= 1: every time."""
    out = []
    for q in _split_quantiles(data):
        if margin >= 1:
            out.append((np.iinfo(np.int64).min + 1, np.iinfo(np.int64).max))
            continue
        lo, hi = merged_quantiles(parts, [max(0.0, q - margin), min(1.0, q + margin)])
        out.append((int(np.floor(lo)), int(np.ceil(hi)) + 1))
    return out


def time_rank_partial(table: pa.Table, time_column: str, brackets: list[tuple[int, int]]) -> dict:
    """One block's share of the exact cut-offs: its rows with a time, and for each bracket how many
    times lie below it and the (sorted) times inside it."""
    t = _time_ns(table.column(time_column))
    t = t[t != np.iinfo(np.int64).min]
    return {"n": int(t.size), "below": [int((t < lo).sum()) for lo, _ in brackets],
            "inside": [np.sort(t[(t >= lo) & (t < hi)]) for lo, hi in brackets]}


def exact_time_cutoffs(parts: list[dict], data: DataConfig) -> tuple[int, int] | None:
    """The exact order statistics at the split's quantiles (the k-th smallest time, k = floor(q *
    rows with a time)), the same whatever the block layout or CPU count; None when a bracket
    missed its rank (the caller widens the brackets)."""
    n = sum(p["n"] for p in parts)
    if n == 0:
        raise FeatureError(f"data.time_column '{data.time_column}' has no values; it cannot split by time")
    cuts = []
    for i, q in enumerate(_split_quantiles(data)):
        k = min(n - 1, int(np.floor(q * n)))
        below = sum(p["below"][i] for p in parts)
        inside = np.sort(np.concatenate([p["inside"][i] for p in parts]))
        if not below <= k < below + inside.size:
            return None
        cuts.append(int(inside[k - below]))
    return cuts[0], cuts[1]
