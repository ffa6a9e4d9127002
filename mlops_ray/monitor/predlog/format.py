"""The prediction log's format: the record schema, the file layout, the spool files, value coercion.

A record per predicted row: ``request_id`` (string), ``row`` (int32, the row's index in its
request), ``ts`` (timestamp[us, UTC]), ``model_version`` (string), ``inputs`` (a struct with one
field per input column, typed from ``input_types``: a kind of ``KIND_TYPES``) and ``prediction``
(float64, or list<float64> when ``multiclass``). Nothing else.

Parquet files, one per writer and UTC hour, hive-partitioned (``PARTITIONING``)::

    {root}/date=YYYY-MM-DD/hour=HH/part-{owner}-{pid}-{token}{seq}.parquet

Spool segments (a writer's local, append-only JSON lines, ``writer.PredictionLog``) are named
``predlog__{host}__{owner}__{pid}__{token}__{segment}.jsonl`` (``.claimed__{host}__{pid}``
appended while a recovering process holds one) and start with a header line (a JSON object:
format version, owner, pid, host, token, the process's start time, input_types, multiclass);
each further line is a JSON array ``[request_id, ts_us, model_version, rows, outputs]``.

In: request rows as JSON-like values. Out: the schema, names and paths above, and ``records_table``
(spool records -> a typed table; a value that does not fit its column's kind becomes null).
Pure Python + pyarrow.
"""
from __future__ import annotations

import json
import math
import os
import posixpath
import re
import socket
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.dataset as pads
from pyarrow import fs as pafs

from mlops_ray.data.dates import parse_iso
from mlops_ray.storage.fs import filesystem_for as _resolve

SPOOL_PREFIX = "predlog__"
SPOOL_SUFFIX = ".jsonl"
CLAIM = ".claimed__"
FORMAT_VERSION = 1
US_PER_HOUR = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1

TS_TYPE = pa.timestamp("us", tz="UTC")
KIND_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(), "float": pa.float64(), "numeric": pa.float64(), "bool": pa.bool_(),
    "string": pa.string(), "categorical": pa.string(), "datetime": TS_TYPE,
}
COLUMNS = ("request_id", "row", "ts", "model_version", "inputs", "prediction")
PARTITIONING = pads.partitioning(pa.schema([("date", pa.string()), ("hour", pa.int32())]), flavor="hive")


# --------------------------------------------------------------------------- names and paths

def safe(s: str) -> str:
    """A file-name-safe component without ``__`` (the spool name separator)."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.\-]", "_", str(s))).strip("_") or "x"


def hostname() -> str:
    return safe(socket.gethostname())


def spool_name(host: str, owner: str, pid: int, token: str, seg: int) -> str:
    return f"{SPOOL_PREFIX}{host}__{owner}__{pid}__{token}__{seg:06d}{SPOOL_SUFFIX}"


SPOOL_RE = re.compile(
    r"^predlog__(?P<host>[^_]+(?:_[^_]+)*)__(?P<owner>[^_]+(?:_[^_]+)*)__(?P<pid>\d+)__(?P<token>[0-9a-f]+)"
    r"__(?P<seg>\d+)\.jsonl(?:\.claimed__(?P<chost>[^_]+(?:_[^_]+)*)__(?P<cpid>\d+))?$")


def part_prefix(owner: str) -> str:
    """The start of the name of every Parquet file written by ``owner`` (a ``safe`` name)."""
    return f"part-{owner}-"


def part_name(owner: str, pid: int, token: str, seq: str) -> str:
    """A Parquet file's name: unique per writer process (``token``) and file (``seq``)."""
    return f"{part_prefix(owner)}{pid}-{token}{seq}.parquet"


def hour_key(ts_us: int) -> int:
    """The UTC hour (hours since the epoch) of a time in microseconds since the epoch."""
    return ts_us // US_PER_HOUR


def hour_dir(root: str, hour: int) -> str:
    """The partition directory of an ``hour_key``."""
    t = _EPOCH + timedelta(hours=hour)
    return posixpath.join(root, f"date={t:%Y-%m-%d}", f"hour={t:%H}")


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path): the store's resolution (URIs once per process), with POSIX separators."""
    fs, path = _resolve(uri)
    return fs, path.replace(os.sep, "/")


# --------------------------------------------------------------------------- value coercion

def _json_default(o: Any):
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if hasattr(o, "tolist"):              # numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default, allow_nan=True)


def _to_int(v):
    t = type(v)
    if t is int:
        return v if _INT64_MIN <= v <= _INT64_MAX else None
    if v is None:
        return None
    if t is bool:
        return int(v)
    if t is float:
        return int(v) if v.is_integer() and _INT64_MIN <= v <= _INT64_MAX else None
    if t is str:
        try:
            return _to_int(int(v.strip()))
        except ValueError:
            try:
                return _to_int(float(v))
            except ValueError:
                return None
    return None


def _to_float(v):
    t = type(v)
    if t is float:
        return v
    if v is None:
        return None
    if t is int or t is bool:
        try:
            return float(v)
        except OverflowError:
            return None
    if t is str:
        try:
            return float(v)
        except ValueError:
            return None
    return None


_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def _to_bool(v):
    t = type(v)
    if t is bool or v is None:
        return v
    if t is int:
        return v != 0
    if t is float:
        return None if math.isnan(v) else v != 0
    if t is str:
        s = v.strip().lower()
        return True if s in _TRUE else False if s in _FALSE else None
    return None


def _to_str(v):
    t = type(v)
    if t is str or v is None:
        return v
    if t is bool:
        return "true" if v else "false"
    if t is int or t is float:
        return str(v)
    return ENCODER.encode(v)


def _to_datetime(v):
    if v is None:
        return None
    if isinstance(v, str):
        try:
            t = parse_iso(v.strip())           # naive UTC
        except OverflowError:
            return None
        return None if t is None else t.replace(tzinfo=timezone.utc)
    if isinstance(v, datetime):
        try:
            return v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v.astimezone(timezone.utc)
        except (OverflowError, ValueError):
            return None
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day, tzinfo=timezone.utc)
    return None


# kind -> value -> the value typed for the log, or None when it does not read as that kind
COERCE = {"int": _to_int, "float": _to_float, "numeric": _to_float, "bool": _to_bool,
          "string": _to_str, "categorical": _to_str, "datetime": _to_datetime}


def to_prediction(v, multiclass: bool):
    if multiclass:
        if isinstance(v, list):
            return [_to_float(x) for x in v]
        x = _to_float(v)
        return None if x is None else [x]
    if isinstance(v, list):
        return _to_float(v[0]) if len(v) == 1 else None
    return _to_float(v)


# --------------------------------------------------------------------------- schema and tables

def check_input_types(input_types: dict[str, str]) -> dict[str, str]:
    """``input_types`` (column -> kind), checked: at least one column, every kind known."""
    if not input_types:
        raise ValueError("input_types is empty: the log needs at least one input column")
    bad = {c: k for c, k in input_types.items() if k not in KIND_TYPES}
    if bad:
        raise ValueError(f"unknown input kinds {bad}; expected one of {sorted(KIND_TYPES)}")
    return dict(input_types)


def log_id_column(cfg, bundle) -> tuple:
    """The data's id column, accepted in requests and logged (as text), when it is not a model input:
    labels keyed by it join later; it is never a feature."""
    c = cfg.data.id_column
    return (c,) if c and c not in bundle.spec.input_types else ()


def log_schema(input_types: dict[str, str], multiclass: bool = False) -> pa.Schema:
    """The schema of the Parquet files for these input columns."""
    return pa.schema([
        ("request_id", pa.string()), ("row", pa.int32()), ("ts", TS_TYPE), ("model_version", pa.string()),
        ("inputs", pa.struct([(c, KIND_TYPES[k]) for c, k in input_types.items()])),
        ("prediction", pa.list_(pa.float64()) if multiclass else pa.float64()),
    ])


def records_table(records: Iterable[list], input_types: dict[str, str], multiclass: bool) -> pa.Table:
    """Spool records ``[request_id, ts_us, version, rows, outputs]`` → one table, a row per input row."""
    cols = list(input_types)
    coerce = [COERCE[input_types[c]] for c in cols]
    rid, rown, ts, ver, pred = [], [], [], [], []
    vals: list[list] = [[] for _ in cols]
    for r_id, ts_us, version, rows, outputs in records:
        for i, row in enumerate(rows):
            rid.append(r_id)
            rown.append(i)
            ts.append(ts_us)
            ver.append(version)
            pred.append(to_prediction(outputs[i], multiclass))
            get = row.get if isinstance(row, dict) else (lambda _c: None)
            for j, c in enumerate(cols):
                vals[j].append(coerce[j](get(c)))
    schema = log_schema(input_types, multiclass)
    struct_t = schema.field("inputs").type
    inputs = pa.StructArray.from_arrays(
        [pa.array(v, type=struct_t.field(j).type) for j, v in enumerate(vals)], fields=list(struct_t))
    return pa.Table.from_arrays([
        pa.array(rid, pa.string()), pa.array(rown, pa.int32()),
        pa.array(ts, pa.int64()).cast(TS_TYPE), pa.array(ver, pa.string()), inputs,
        pa.array(pred, schema.field("prediction").type)], schema=schema)


def group_by_hour(records: Iterable[list]) -> dict[int, list]:
    """Spool records by the ``hour_key`` of their time."""
    by_hour: dict[int, list] = {}
    for rec in records:
        by_hour.setdefault(hour_key(rec[1]), []).append(rec)
    return by_hour


def read_spool(path: str) -> tuple[dict | None, list[list], int]:
    """(header, records, skipped lines) of a spool segment; torn or corrupt lines are skipped."""
    header, records, skipped = None, [], 0
    with open(path, "rb") as f:
        data = f.read()
    for i, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(obj, dict) and i == 0:
            header = obj
        elif isinstance(obj, list) and len(obj) == 5 and isinstance(obj[3], list) and isinstance(obj[4], list) \
                and isinstance(obj[1], int) and len(obj[3]) == len(obj[4]):
            records.append(obj)
        else:
            skipped += 1
    return header, records, skipped
