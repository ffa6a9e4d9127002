"""Dates written as text: the format each date-time column is read with, and the one parse.

In: the columns the config says hold date-times (``data.time_column``, ``schema.columns.X.dtype:
datetime``, ``features.datetime``, ``data.datetime_formats``) when the data stores them as text
(a CSV's ``12/31/2012``, a JSON export's ``Jul 17 1998``), and ``data.datetime_formats``.
Out: a ``Parsing`` (the format of each column: given, or inferred from a sample and said so),
``parse`` (text -> timestamps, one function for training, batch scoring and serving, so a
request is read as the training rows were; it lives in ``config/dateformat.py``, below the
config) and validation checks that name an unreadable value with its file and row.

A format is a strftime pattern (``%m/%d/%Y``), or ``ISO8601``. Timestamps come out naive,
in UTC (a value with an offset is converted), as the rest of the platform keeps them.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlops_ray.config.dateformat import ISO, TS, as_text, parse
from mlops_ray.data.checks import CheckResult
from mlops_ray.errors import did_you_mean
# Imported where used, for their import cost (python -X importtime): pandas 0.4 s.

SAMPLE_ROWS = 2000
# tried in this order after ISO 8601 and the format pandas guesses from the first value: month
# first before day first (pandas' default); a sample both read differently is called ambiguous
COMMON_FORMATS = (
    "%m/%d/%Y", "%d/%m/%Y", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%d/%m/%Y %H:%M:%S",
    "%m/%d/%y", "%d/%m/%y", "%m/%d/%y %H:%M", "%d.%m.%Y", "%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M:%S",
    "%b %d %Y", "%b %d, %Y", "%d %b %Y", "%d-%b-%Y", "%B %d, %Y", "%B %d %Y", "%d %B %Y",
    "%Y/%m/%d", "%Y/%m/%d %H:%M", "%Y/%m/%d %H:%M:%S", "%m-%d-%Y", "%d-%m-%Y", "%Y%m%d", "%Y%m%d%H%M%S",
    "%Y-%m-%d %H:%M:%S%z", "%Y-%m-%dT%H:%M:%S%z", "%a %b %d %H:%M:%S %Y",
)


# --------------------------------------------------------------------------- parse
def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view"


def parse_series(s: pd.Series, fmt: str) -> pd.Series:
    """``parse`` on a pandas column (features.transform's inputs): datetime64, naive UTC, NaT
    where the format does not read the value. Values that are already date-times (a request
    field serving parsed) are kept."""
    kind = pd.api.types.infer_dtype(s, skipna=True)
    if kind in ("datetime", "datetime64", "date"):
        out = pd.to_datetime(s, errors="coerce", utc=True).dt.tz_convert(None)
    else:
        values = [None if pd.isna(v) else str(v) for v in s.astype(object)]
        out = pd.Series(parse(pa.array(values, pa.string()), fmt).to_pandas(), index=s.index)
    return out.astype("datetime64[us]")


def parse_value(v: str, fmt: str) -> dt.datetime | None:
    """One value, as ``parse`` reads it (serving's request fields), or None."""
    return parse(pa.array([v], pa.string()), fmt)[0].as_py()


_ISO_FIX = re.compile(r"^(?P<head>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?)(?:[.,](?P<frac>\d+))?"
                      r"(?P<tz>[Zz]|[+-]\d{2}(?::?\d{2})?)?$")


def parse_iso(s: str) -> dt.datetime | None:
    """One ISO-8601 text -> a naive UTC datetime (an offset is converted, no offset is taken as
    UTC), or None when it is not ISO 8601: the one reading of an ISO date-time for request fields,
    the fast row encoder and the prediction log. ``fromisoformat`` first (Python 3.11 takes every
    common form); the fallback reads what it does not: 'z' and spaces around a date-time (3.11),
    'Z', fractions of other than 3 or 6 digits and '+HHMM' (3.10). Raises OverflowError when the
    offset moves the time out of the years 1..9999."""
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        m = _ISO_FIX.match(s.strip())
        if not m:
            return None
        frac = m["frac"]
        tz = m["tz"] or ""
        if tz in ("Z", "z"):
            tz = "+00:00"
        elif len(tz) == 5:
            tz = tz[:3] + ":" + tz[3:]
        elif len(tz) == 3:
            tz += ":00"
        fixed = m["head"] + (f".{(frac + '000000')[:6]}" if frac else "") + tz
        try:
            t = dt.datetime.fromisoformat(fixed)
        except ValueError:
            return None
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t


def parse_table(table: pa.Table, formats: dict[str, str]) -> pa.Table:
    """``table`` with each column of ``formats`` parsed into timestamps."""
    done = set()
    for c, fmt in formats.items():
        if c in table.column_names and not pa.types.is_timestamp(table.schema.field(c).type):
            i = table.column_names.index(c)
            table = table.set_column(i, pa.field(c, TS), parse(table.column(c), fmt))
            done.add(c)
    return _forget_pandas_types(table, done) if done else table


def _forget_pandas_types(table: pa.Table, columns: set[str]) -> pa.Table:
    """Drop what a pandas-written file's metadata says of the parsed columns (that they were
    text), or ``to_pandas`` turns the timestamps back into text."""
    meta = dict(table.schema.metadata or {})
    if b"pandas" not in meta:
        return table
    pandas_meta = json.loads(meta[b"pandas"])
    pandas_meta["columns"] = [c for c in pandas_meta.get("columns", []) if c.get("name") not in columns]
    meta[b"pandas"] = json.dumps(pandas_meta).encode()
    return table.replace_schema_metadata(meta)


def parsed_schema(schema: pa.Schema, formats: dict[str, str]) -> pa.Schema:
    for c in formats:
        if c in schema.names:
            schema = schema.set(schema.get_field_index(c), pa.field(c, TS))
    return schema


# --------------------------------------------------------------------------- infer
def _reads(values: pa.Array, fmt: str) -> int:
    """How many of ``values`` the format reads."""
    try:
        return len(values) - parse(values, fmt).null_count
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        return 0


def infer_format(values: list) -> tuple[str | None, list[str]]:
    """The format that reads the most values of a sample (at least half of them): ISO 8601
    first, then the one pandas guesses from the first value, then ``COMMON_FORMATS``; a value it
    does not read is then named by validation. Also returns the other formats that read as many
    and give other dates (a sample of 01/02/2012 fits month-first and day-first)."""
    vals = pa.array([str(v).strip() for v in values if v is not None and str(v).strip() != ""], pa.string())
    if len(vals) == 0:
        return None, []
    if _reads(vals, ISO) == len(vals):
        return ISO, []
    from pandas.tseries.api import guess_datetime_format
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guessed = [guess_datetime_format(vals[0].as_py(), dayfirst=d) for d in (False, True)]
    candidates = [ISO] + list(dict.fromkeys([g for g in guessed if g] + list(COMMON_FORMATS)))
    counts = {f: _reads(vals, f) for f in candidates}
    best = max(counts.values())
    if best * 2 < len(vals):
        return None, []
    fitting = [f for f in candidates if counts[f] == best]
    first = parse(vals, fitting[0])
    others = [f for f in fitting[1:] if not parse(vals, f).equals(first)]
    return fitting[0], others


# --------------------------------------------------------------------------- which columns, which formats
def date_columns(schema: pa.Schema, cfg) -> dict[str, str]:
    """Columns the config says hold date-times that the data stores as text (or integers, with a
    format given): name -> the config key that says so."""
    data, rules, feats = cfg.data, cfg.schema_, cfg.features
    named: dict[str, str] = {}
    for c in data.datetime_formats:
        named.setdefault(c, f"data.datetime_formats.{c}")
    if data.time_column:
        named.setdefault(data.time_column, "data.time_column")
    for c, r in rules.columns.items():
        if r.dtype == "datetime":
            named.setdefault(c, f"schema.columns.{c}.dtype")
    if feats.datetime != "auto":
        for c in feats.datetime:
            named.setdefault(c, "features.datetime")
    out = {}
    for c, key in named.items():
        if c not in schema.names:
            continue
        t = schema.field(c).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if _is_text(t) or (c in data.datetime_formats and pa.types.is_integer(t)):
            out[c] = key
    return out


@dataclass
class Parsing:
    """How each date-time column stored as text is read."""

    formats: dict[str, str] = field(default_factory=dict)       # column -> format
    inferred: dict[str, int] = field(default_factory=dict)      # column -> sample size it was inferred from
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    unreadable: dict[str, tuple[str, list]] = field(default_factory=dict)   # column -> (config key, sample)
    unknown: dict[str, str] = field(default_factory=dict)       # data.datetime_formats key not in the data -> hint

    def notes(self) -> list[str]:
        out = []
        for c, fmt in self.formats.items():
            if c in self.inferred:
                also = (f"; the values also read as {', '.join(self.ambiguous[c])} (other dates): set it to be sure"
                        if self.ambiguous.get(c) else "")
                out.append(f"column '{c}' read as date-times with format {fmt!r}, inferred from "
                           f"{self.inferred[c]:,} values (data.datetime_formats.{_key(c)} sets it){also}")
        return out

    def static_checks(self) -> list:
        checks = []
        for c, fmt in self.formats.items():
            checks.append(CheckResult(c, "datetime_format", True, observed=fmt,
                                      threshold="inferred" if c in self.inferred else "data.datetime_formats",
                                      message="; ".join(n for n in self.notes() if n.startswith(f"column '{c}'"))))
        for c, (key, sample) in self.unreadable.items():
            shown = ", ".join(repr(v) for v in sample[:3])
            checks.append(CheckResult(
                c, "datetime_format", False, observed=[str(v) for v in sample[:3]], threshold="a date format",
                message=f"column '{c}' ({key}) holds text that no known date format reads (e.g. {shown}); "
                f"give its format as data.datetime_formats: {{{_key(c)}: \"%m/%d/%Y\"}} (strftime directives)"
                + (", or remove it from features.datetime" if key == "features.datetime" else "")))
        for c, hint in self.unknown.items():
            checks.append(CheckResult(c, "datetime_format", False, observed="missing", threshold="a column",
                                      message=f"data.datetime_formats names column {c!r}, which is not in the data"
                                      f"{hint}; fix the name or remove it"))
        return checks


def _key(c: str) -> str:
    return c if c.replace("_", "").isalnum() else f"'{c}'"


def resolve(schema: pa.Schema, cfg, sample: pa.Table | None) -> Parsing:
    """The format of each date column stored as text: the configured one, else inferred from
    ``sample`` (the first rows of the data)."""
    p = Parsing()
    for c in cfg.data.datetime_formats:
        if c not in schema.names:
            p.unknown[c] = did_you_mean(c, schema.names) or f"; its columns: {', '.join(schema.names[:30])}"
    for c, key in date_columns(schema, cfg).items():
        if c in cfg.data.datetime_formats:
            p.formats[c] = cfg.data.datetime_formats[c]
            continue
        values = [v for v in (sample.column(c).to_pylist() if sample is not None and c in sample.column_names
                              else []) if v is not None]
        fmt, others = infer_format(values)
        if fmt is None:
            if values:
                p.unreadable[c] = (key, values[:5])
            continue
        p.formats[c], p.inferred[c] = fmt, len(values)
        if others:
            p.ambiguous[c] = others
    return p


# --------------------------------------------------------------------------- unreadable values
def failure_partial(table: pa.Table, formats: dict[str, str], k: int = 5, parsed: pa.Table | None = None) -> dict:
    """Per block and column: how many values the format does not read, and the first few.
    ``parsed``: the block as ``parse_table`` made it, when the caller has it (no second parse)."""
    out = {}
    for c, fmt in formats.items():
        if c not in table.column_names:
            continue
        raw = table.column(c)
        times = parsed.column(c) if parsed is not None else parse(raw, fmt)
        bad = pc.and_(pc.is_null(times), pc.is_valid(as_text(raw)))
        n = pc.sum(bad).as_py() or 0
        if n:
            out[c] = {"bad": int(n), "values": pc.filter(as_text(raw), bad)[:k].to_pylist()}
    return out


def merge_failures(parts: list[dict], k: int = 5) -> dict:
    m: dict = {}
    for p in parts:
        for c, f in p.items():
            a = m.setdefault(c, {"bad": 0, "values": []})
            a["bad"] += f["bad"]
            a["values"] = (a["values"] + [v for v in f["values"] if v not in a["values"]])[:k]
    return m


def failure_checks(merged: dict, parsing: Parsing, rows: list[dict] | None = None) -> list:
    """A failed check per column with values its format does not read: how many, which (with
    their file and row when ``rows`` has them) and the fix."""
    checks = []
    for c, f in merged.items():
        fmt = parsing.formats[c]
        how = (f"the format {fmt!r} inferred from the first {parsing.inferred[c]:,} values" if c in parsing.inferred
               else f"data.datetime_formats.{_key(c)} {fmt!r}")
        samples = [r for r in (rows or []) if r.get("column") == c] or [{"column": c, "value": v} for v in f["values"]]
        first = samples[0]
        where = (f" at {first['file']} row {first['row']:,}" + (f" (line {first['line']:,})" if "line" in first else "")
                 if "row" in first else "")
        checks.append(CheckResult(
            c, "datetime_parse", False, observed=f["bad"], threshold=fmt,
            message=f"column '{c}' has {f['bad']:,} value(s) that {how} does not read, e.g. {first['value']!r}{where}; "
            f"set data.datetime_formats: {{{_key(c)}: \"...\"}} to the format of these values, or fix them "
            "(an empty cell is read as missing)", samples=samples[:5]))
    return checks


def locate(source, data, merged: dict, k: int = 5) -> list[dict]:
    """The file and row (1-based, header not counted) of the first unreadable values of each
    column, read on the driver from the source's files (only when the check failed)."""
    out = []
    for c, f in merged.items():
        want, found = set(f["values"]), 0
        for e in source.files:
            if found >= k:
                break
            if source.format == "parquet":
                col = pq.read_table(e.path, columns=[c], filesystem=source.filesystem).column(c)
            else:
                with source.filesystem.open_input_stream(e.path) as fh:
                    col = pacsv.read_csv(fh, parse_options=pacsv.ParseOptions(
                        delimiter=data.csv.delimiter, quote_char=data.csv.quote_char),
                        convert_options=pacsv.ConvertOptions(include_columns=[c], column_types={c: pa.string()},
                                                             null_values=list(data.csv.null_values),
                                                             strings_can_be_null=True)).column(c)
            text = as_text(col)
            idx = np.flatnonzero(np.asarray(pc.fill_null(pc.is_in(text, value_set=pa.array(list(want), pa.string())),
                                                         False).to_numpy(zero_copy_only=False)))
            for i in idx[:k - found]:
                out.append({"column": c, "value": text[int(i)].as_py(), "file": os.path.basename(e.path),
                            "row": int(i) + 1, **({"line": int(i) + 2} if source.format == "csv" else {})})
                found += 1
    return out
