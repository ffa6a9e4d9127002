"""Fast encoding of request rows (JSON-like dicts) into model input, for online serving.

``transform(pd.DataFrame(rows), spec)`` costs milliseconds per request, almost all of it pandas
overhead. ``RowEncoder`` compiles a ``FeatureSpec`` once and encodes small batches of dicts with
plain Python and a little NumPy, returning exactly the same float32 matrix as

    transform(pd.DataFrame(rows), spec).to_numpy(np.float32)

How exactness is kept. ``transform`` depends on how pandas infers each column's dtype from the
whole batch, and that is where its odd cases come from (see the NOTE comments below). The fast
path therefore handles only value types whose result is the same whatever else the batch holds:

    numeric columns      None/missing, float, int in the int64 range, bool
    categorical columns  None/missing, str (UTF-8 encodable), float, int with |v| <= 2**53, bool
    datetime columns     None/missing, datetime.datetime (naive or datetime.timezone offset),
                         pandas.Timestamp, ISO-8601 strings of a strict form
                         (YYYY-MM-DD[(T| )HH:MM[:SS[.f{1,9}]][Z|+HH:MM|-HH:MM]]), years 1678..2261

Any other value (strings in numeric columns, numpy scalars, lists, other date formats, ...) sends
that one *column* of that batch through the very pandas code ``transform`` runs (a one-column
frame built the same way, then ``features.coerce_inputs``), so the answer stays identical. A spec
the encoder cannot reproduce at all sets ``fast = False`` and every batch goes through
``transform``. An unexpected error on the fast path also falls back to ``transform`` for that
batch (counted in ``fallbacks``): slower, never different.
"""
from __future__ import annotations

import ast
import datetime as _dt
import re
from typing import Sequence

import numpy as np
import pandas as pd

from mlops_ray import expr
from mlops_ray.data.dates import ISO, parse_iso
from mlops_ray.data.features import DT_PARTS, FeatureSpec, as_str, coerce_inputs, transform

_NAN = float("nan")
_NUMERIC_KINDS = ("int", "float", "bool")
_KINDS = _NUMERIC_KINDS + ("string", "datetime")
_I64_MIN, _I64_MAX = -(2 ** 63), 2 ** 63 - 1
_EXACT_INT = 2 ** 53            # ints beyond this do not survive pandas' int -> float64 upcast

_NS_DAY = 86_400 * 10 ** 9
_NS_HOUR = 3_600 * 10 ** 9
_NS_MIN = 60 * 10 ** 9
_EPOCH = _dt.datetime(1970, 1, 1)
_EPOCH_ORD = _EPOCH.toordinal()
# datetime64[ns] spans 1677-09-21 .. 2262-04-11; outside whole years of it we let pandas decide
# (it raises OutOfBoundsDatetime for some parts and not for others)
_NS_LO = (_dt.datetime(1678, 1, 1).toordinal() - _EPOCH_ORD) * _NS_DAY
_NS_HI = (_dt.datetime(2262, 1, 1).toordinal() - _EPOCH_ORD) * _NS_DAY
_ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?"
    r"(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))?)?")


class _Slow(Exception):
    """A value the fast path does not handle: this column of this batch goes through pandas."""


# --------------------------------------------------------------------------- per-value helpers
def _datetime_ns(v) -> int | None:
    """ns since the epoch (UTC wall time, as transform's tz-naive column) or None for missing."""
    if v is None:
        return None
    t = type(v)
    if t is str:
        return _iso_ns(v)
    if t is _dt.datetime:
        tz = v.tzinfo
        if tz is not None:
            # NOTE: transform turns aware values into UTC and naive ones are taken as they are
            # (to_datetime(utc=True) reads them as UTC); only fixed offsets here, zoneinfo/pytz
            # (DST folds) go through pandas.
            off = v.utcoffset()
            if type(tz) is not _dt.timezone or off.microseconds or off.seconds % 60:
                raise _Slow
            v = v.replace(tzinfo=None) - off
        ns = (((v.toordinal() - _EPOCH_ORD) * 86_400 + v.hour * 3_600 + v.minute * 60 + v.second)
              * 10 ** 9 + v.microsecond * 1_000)
    elif t is pd.Timestamp:
        try:
            ns = v.value              # UTC instant for aware Timestamps, wall time for naive ones
        except (OverflowError, ValueError):
            raise _Slow from None
    else:
        raise _Slow
    if not _NS_LO <= ns < _NS_HI:
        raise _Slow
    return ns


def _iso_ns(s: str) -> int:
    """ns since the epoch of an ISO-8601 text of the strict form (``_ISO``: the one pandas reads as
    ``parse_iso`` does), with all nine fraction digits; anything else raises _Slow."""
    m = _ISO.fullmatch(s)
    if m is None or (m[11] and int(m[11]) > 59):   # offset minutes: fromisoformat takes 60..99
        raise _Slow
    try:
        t = parse_iso(s)
    except OverflowError:
        raise _Slow from None
    if t is None:                     # e.g. hour 24, day 31 of a short month
        raise _Slow
    frac = m[7]
    ns = (((t.toordinal() - _EPOCH_ORD) * 86_400 + t.hour * 3_600 + t.minute * 60 + t.second) * 10 ** 9
          + t.microsecond * 1_000 + (int(frac[6:].ljust(3, "0")) if frac and len(frac) > 6 else 0))
    if not _NS_LO <= ns < _NS_HI:
        raise _Slow
    return ns


def _dt_parts(ns: int | None, parts: tuple[str, ...]) -> list[float]:
    if ns is None:
        return [_NAN] * len(parts)
    days, rem = divmod(ns, _NS_DAY)
    d = _dt.date.fromordinal(_EPOCH_ORD + days)
    out = []
    for p in parts:
        if p == "hour":
            out.append(float(rem // _NS_HOUR))
        elif p == "minute":
            out.append(float(rem // _NS_MIN % 60))
        elif p == "dayofweek":
            out.append(float(d.weekday()))
        elif p == "day":
            out.append(float(d.day))
        elif p == "month":
            out.append(float(d.month))
        elif p == "year":
            out.append(float(d.year))
        elif p == "dayofyear":
            out.append(float(d.toordinal() - _dt.date(d.year, 1, 1).toordinal() + 1))
        elif p == "is_weekend":
            out.append(1.0 if d.weekday() >= 5 else 0.0)
        elif p == "epoch_days":     # int64 ns / 86400e9 in float64, as transform does
            out.append(ns / 86400e9)
        elif p == "weekofyear":
            out.append(float(d.isocalendar()[1]))
        else:                       # the time of day and the cyclical parts, in transform's float64 steps
            hour, minute, second = rem // _NS_HOUR, rem // _NS_MIN % 60, rem // 10 ** 9 % 60
            tod = hour + minute / 60.0 + second / 3600.0
            if p == "time_of_day":
                out.append(tod)
            elif p == "minute_of_day":
                out.append(float(hour * 60 + minute))
            else:
                base, _, fn = p.rpartition("_")
                value, period = {"hour": (tod, 24.0), "dayofweek": (float(d.weekday()), 7.0),
                                 "dayofyear": (float(d.toordinal() - _dt.date(d.year, 1, 1).toordinal()), 365.25)}[base]
                out.append(float((np.sin if fn == "sin" else np.cos)(np.array([2 * np.pi * value / period]))[0]))
    return out


def _codes_pandas(s: pd.Series, vocab: list[str]) -> np.ndarray:
    """transform's categorical block, verbatim, for a column that left the fast path."""
    missing = s.isna().to_numpy()
    if not isinstance(s.dtype, pd.CategoricalDtype) and pd.api.types.infer_dtype(s, skipna=True) not in (
            "string", "empty"):
        s = s.map(as_str, na_action="ignore")
    codes = pd.Categorical(s, categories=vocab).codes.astype(np.float64) + 1.0
    codes[missing] = np.nan
    return codes


class _ArrayEvaluator(expr._Evaluator):
    """expr's evaluator over NumPy arrays; names it has no array for are read from ``frame``
    (pandas Series of string or slow datetime columns) by expr's own code."""

    def __init__(self, arrays: dict, frame: dict):
        super().__init__(frame)
        self.arrays = arrays

    def visit_Name(self, node):
        a = self.arrays.get(node.id)
        return a if a is not None else super().visit_Name(node)


# --------------------------------------------------------------------------- the encoder
class RowEncoder:
    """Compiled once per FeatureSpec; encodes request rows (dicts) into the model input matrix.

    ``encode(rows)`` returns float32 of shape ``(len(rows), len(spec.output_columns))``, equal
    (NaN positions included) to ``transform(pd.DataFrame(rows), spec).to_numpy(np.float32)``.
    ``fast`` is False when the spec has something only ``transform`` reproduces (``reason`` says
    what); every batch then goes through ``transform``.
    """

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self.columns = list(spec.output_columns)
        self.fallbacks = 0          # batches that fell back to transform after an unexpected error
        self.reason: str | None = None
        try:
            self._compile()
        except _Unsupported as e:
            self.reason = str(e)
        self.fast = self.reason is None

    # ---- compile
    def _compile(self) -> None:
        spec, types = self.spec, self.spec.input_types
        if len(set(self.columns)) != len(self.columns):
            raise _Unsupported("output column names repeat (transform would drop columns)")
        if any(k not in _KINDS for k in types.values()):
            raise _Unsupported(f"input kinds {sorted(set(map(str, types.values())) - set(_KINDS))}")
        needed: dict[str, None] = {}
        for f in spec.numeric:
            if types.get(f.name) not in _NUMERIC_KINDS:
                raise _Unsupported(f"numeric feature {f.name!r} has input kind {types.get(f.name)!r}")
            needed[f.name] = None
        self._cats = []
        for f in spec.categorical:
            kind = types.get(f.name)
            if kind not in _NUMERIC_KINDS + ("string",):
                raise _Unsupported(f"categorical feature {f.name!r} has input kind {kind!r}")
            vocab = list(f.vocab)
            if not all(type(v) is str for v in vocab) or len(set(vocab)) != len(vocab):
                raise _Unsupported(f"vocabulary of {f.name!r} is not a list of distinct strings")
            self._cats.append((f.name, kind, {v: i + 1.0 for i, v in enumerate(vocab)}, vocab))
            if kind != "string":
                needed[f.name] = None
        self._dts = []
        for d in spec.datetime:
            if types.get(d.name) != "datetime":
                raise _Unsupported(f"datetime feature {d.name!r} has input kind {types.get(d.name)!r}")
            bad = [p for p in d.parts if p not in DT_PARTS]
            if bad:
                raise _Unsupported(f"datetime parts {bad}")
            self._dts.append((d.name, tuple(d.parts)))
            needed[d.name] = None
        self._derived = []
        available = set(types)
        self._expr_strings: dict[str, None] = {}     # string columns expressions read (via pandas)
        for d in spec.derived:
            if d.name in available:
                raise _Unsupported(f"derived column {d.name!r} shadows another column")
            try:
                e = expr.parse(d.expr)
            except expr.ExpressionError as err:
                raise _Unsupported(f"derived column {d.name!r}: {err}") from None
            body = e.tree.body
            while isinstance(body, ast.UnaryOp) and isinstance(body.op, ast.UAdd):
                body = body.operand
            if isinstance(body, ast.Name):
                # NOTE: a bare column ("amount", "+amount") makes expr write NaNs into the read-only
                # array pandas (copy-on-write) hands out: transform raises ValueError for most
                # kinds and not for some batches of string columns. Only transform knows.
                raise _Unsupported(f"derived column {d.name!r} is a bare column reference")
            for c in e.columns:
                if c not in available:     # transform raises FeatureError: let it
                    raise _Unsupported(f"derived column {d.name!r} uses {c!r}, not available there")
                if c in types:
                    if types[c] == "string":
                        self._expr_strings[c] = None
                    else:
                        needed[c] = None
            self._derived.append((d.name, e, d.fill))
            available.add(d.name)
        self._numeric_inputs = [(c, types[c]) for c in needed if types[c] in _NUMERIC_KINDS]
        self._dt_inputs = [c for c in needed if types[c] == "datetime"]
        self._dt_for_expr = {c for _, e, _ in self._derived for c in e.columns
                             if types.get(c) == "datetime"}
        self._numeric = [(f.name, f.fill) for f in spec.numeric]

    # ---- encode
    def encode(self, rows: Sequence[dict]) -> np.ndarray:
        if not self.fast:
            return self._transform(rows)
        if len(rows) == 0:
            return np.empty((0, len(self.columns)), dtype=np.float32)
        try:
            return self._encode(rows)
        except Exception:
            self.fallbacks += 1
            return self._transform(rows)

    def _transform(self, rows) -> np.ndarray:
        return transform(pd.DataFrame(list(rows)), self.spec).to_numpy(np.float32)

    def _encode(self, rows) -> np.ndarray:
        n = len(rows)
        cols: dict[str, object] = {}          # output column -> n floats (list or array)
        nums: dict[str, object] = {}          # numeric input -> coerced floats (NaN for missing)
        for c, kind in self._numeric_inputs:
            try:
                vals = []
                for r in rows:
                    v = r.get(c)
                    t = type(v)
                    if t is float:
                        vals.append(v if v - v == 0.0 else _NAN)    # NaN and +-inf -> missing
                    elif v is None:
                        vals.append(_NAN)
                    elif t is int and _I64_MIN <= v <= _I64_MAX:
                        vals.append(float(v))
                    elif t is bool:
                        vals.append(1.0 if v else 0.0)
                    else:
                        raise _Slow
            except _Slow:
                vals = self._pandas_column(rows, c, kind).to_numpy(dtype=np.float64)
            nums[c] = vals

        dt_ns: dict[str, list] = {}
        dt_series: dict[str, pd.Series] = {}
        for c in self._dt_inputs:
            try:
                if self.spec.datetime_formats.get(c, ISO) != ISO and any(type(r.get(c)) is str for r in rows):
                    raise _Slow           # text in the model's own date format: read as transform reads it
                dt_ns[c] = [_datetime_ns(r.get(c)) for r in rows]
            except _Slow:
                dt_series[c] = self._pandas_column(rows, c, "datetime")

        if self._derived:
            self._derive(rows, n, nums, dt_ns, dt_series)

        for name, fill in self._numeric:
            v = nums[name]
            cols[name] = v if fill is None else [fill if x != x else x for x in v]
        for name, _, fill in self._derived:
            v = nums[name]
            cols[name] = v if fill is None else np.where(np.isnan(v), fill, v)

        for name, kind, lut, vocab in self._cats:
            if kind == "bool":         # as transform: the coerced 1.0/0.0 spelled "true"/"false"
                cols[name] = [_NAN if x != x else lut.get("true" if x == 1.0 else "false" if x == 0.0 else "",
                                                          0.0) for x in nums[name]]
                continue
            if kind != "string":
                # a categorical over a numeric input sees transform's coerced float64 column (3 -> "3"),
                # except an int column's integers, which transform keeps exact: so here a JSON integer
                # is its own str (exact above 2**53 too)
                cols[name] = [lut.get(str(r[name]), 0.0) if kind == "int" and type(r.get(name)) is int
                              else _NAN if x != x else lut.get(as_str(x), 0.0) for r, x in zip(rows, nums[name])]
                continue
            try:
                codes = []
                for r in rows:
                    v = r.get(name)
                    t = type(v)
                    if t is str:
                        if not (v.isascii() or _encodable(v)):
                            raise _Slow           # pandas raises on lone surrogates
                        codes.append(lut.get(v, 0.0))
                    elif v is None:
                        codes.append(_NAN)
                    elif t is float:
                        # NOTE: NaN is missing but inf is not: it becomes the category "inf"
                        codes.append(_NAN if v != v else lut.get(as_str(v), 0.0))
                    elif t is int and -_EXACT_INT <= v <= _EXACT_INT:
                        codes.append(lut.get(str(v), 0.0))
                    elif t is bool:
                        codes.append(lut.get("true" if v else "false", 0.0))
                    else:
                        raise _Slow
            except _Slow:
                codes = _codes_pandas(self._pandas_column(rows, name, "string"), vocab)
            cols[name] = codes

        for name, parts in self._dts:
            if name in dt_ns:
                per_row = [_dt_parts(ns, parts) for ns in dt_ns[name]]
                for j, p in enumerate(parts):
                    cols[f"{name}__{p}"] = [pr[j] for pr in per_row]
            else:
                s = dt_series[name]
                for p in parts:
                    cols[f"{name}__{p}"] = DT_PARTS[p](s).to_numpy(dtype=np.float64, na_value=np.nan)

        mat = np.array([cols[c] for c in self.columns], dtype=np.float64)    # (columns, rows)
        with np.errstate(over="ignore"):
            # NOTE: as in transform, finite values beyond float32's range become +-inf here (not NaN)
            return mat.T.astype(np.float32, order="C")

    def _derive(self, rows, n, nums, dt_ns, dt_series) -> None:
        """Derived columns in spec order (later ones may use earlier ones), as ``_derive`` does."""
        arrays: dict[str, np.ndarray] = {c: np.asarray(v, dtype=np.float64) for c, v in nums.items()}
        for c in self._dt_for_expr:
            if c in dt_ns:
                # expr reads datetimes as seconds since the epoch: int64 ns / 1e9
                arrays[c] = np.array([_NAN if ns is None else ns / 1e9 for ns in dt_ns[c]])
        frame: dict[str, pd.Series] = dict(dt_series)
        for c in self._expr_strings:
            # NOTE: expr reads a string column by the dtype pandas infers for the batch: numbers for
            # an all-number column, objects otherwise, and missing values are NaN in a str column
            # but None in an all-None object column. Fast only for the usual case (strings, some
            # missing); anything else is read by expr itself from the column pandas makes.
            try:
                arrays[c] = self._string_objects(rows, c)
            except _Slow:
                frame[c] = self._pandas_column(rows, c, "string")
        for name, e, _ in self._derived:
            with np.errstate(all="ignore"):
                res = _ArrayEvaluator(arrays, frame).visit(e.tree.body)
            arr = np.array(res, dtype=np.float64)     # a copy: never alias an input array
            if arr.ndim == 0:
                arr = np.full(n, float(arr))
            arr[~np.isfinite(arr)] = np.nan
            arrays[name] = arr
            nums[name] = arr

    @staticmethod
    def _string_objects(rows, c: str) -> np.ndarray:
        vals, seen = [], False
        for r in rows:
            v = r.get(c)
            if v is None:
                vals.append(_NAN)
            elif type(v) is str and (v.isascii() or _encodable(v)):
                vals.append(v)
                seen = True
            else:
                raise _Slow
        if not seen or not _STR_DTYPE_NAN:
            raise _Slow
        out = np.empty(len(vals), dtype=object)
        out[:] = vals
        return out

    def _pandas_column(self, rows, c: str, kind: str) -> pd.Series:
        """Column ``c`` exactly as transform's ``coerce_inputs`` makes it: pandas infers a column's
        dtype from that column's values alone, so a one-column frame (missing keys left out,
        not turned into None) gives the same Series."""
        sub = pd.DataFrame([{c: r[c]} if c in r else {} for r in rows], index=range(len(rows)))
        return coerce_inputs(sub, {c: kind}, self.spec.datetime_formats)[c]


class _Unsupported(Exception):
    pass


def _encodable(v: str) -> bool:
    try:
        v.encode("utf-8")
        return True
    except UnicodeEncodeError:      # lone surrogates: pandas raises building the frame
        return False


def _str_column_reads_as_nan() -> bool:
    """Does pandas make [str, None] a str column whose missing values read back as NaN (pandas 3's
    inferred string dtype)? The fast path for string columns in expressions relies on it."""
    a = pd.DataFrame([{"a": "x"}, {"a": None}, {}])["a"].astype(object).to_numpy()
    return a[0] == "x" and all(type(x) is float and x != x for x in a[1:])


_STR_DTYPE_NAN = _str_column_reads_as_nan()
