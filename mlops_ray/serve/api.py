"""The HTTP contract of the model server's ``POST /predict`` (pure: no Ray, no web framework).

A request body is one JSON object (one row) or a JSON array of 1..``max_batch_rows`` row
objects. A row's keys are the model's raw input columns (``bundle.spec.input_types``):

=========  ===============================================================================
kind       accepted JSON value (``null`` is always accepted and means "missing value")
=========  ===============================================================================
float      a number (integers become floats); NaN / Infinity / -Infinity and numbers that
           overflow a double are rejected
int        an integer in the int64 range; a float with no fractional part (``3.0``) becomes 3
bool       ``true`` / ``false``; ``0`` / ``1`` become False / True (the bundle's schema.json
           allows integers for booleans)
string     a string, or a finite number (kept as a number: the encoder maps it to text)
datetime   an ISO-8601 string; returned as a **naive ``datetime.datetime`` in UTC** (an offset
           such as ``Z`` or ``+05:30`` is converted to UTC; a string without one is taken as
           UTC, as the training data is). Years 1678..2261 (pandas' nanosecond range).
=========  ===============================================================================

Every input column must be present in every row (send ``null`` if unknown); unknown keys are
rejected or dropped (``serve.extra_fields``). ``RequestParser.parse`` returns normalized rows:
dicts with exactly the input columns, in ``input_types`` order, holding Python scalars or None,
ready for ``pd.DataFrame(rows, columns=list(input_types))`` and ``bundle.predict``.

Every rejection is a ``RequestError`` carrying the HTTP status, a short machine ``code``,
the offending ``field`` ("amount" for a one-object body, "rows[3].amount" for an array) and a
message that says the fix; ``err.body()`` is the JSON error body.
"""
from __future__ import annotations

import difflib
import json
import keyword
import math
from datetime import datetime
from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model

from mlops_ray.config import ServeConfig
from mlops_ray.data.dates import ISO, parse_iso, parse_value

__all__ = ["RequestError", "RequestParser", "KINDS"]

KINDS = ("int", "float", "bool", "string", "datetime")
MAX_PROBLEMS = 5            # problems reported in one error

_FLOAT, _INT, _BOOL, _STR, _DT = range(5)
_KIND_CODE = {"float": _FLOAT, "int": _INT, "bool": _BOOL, "string": _STR, "datetime": _DT}
_I64_MIN, _I64_MAX = -(2 ** 63), 2 ** 63 - 1
_DT_MIN, _DT_MAX = datetime(1678, 1, 1), datetime(2262, 1, 1)   # inside pandas' datetime64[ns]
_INF, _NINF = float("inf"), float("-inf")
_EXPECTED = {
    _FLOAT: "a number or null",
    _INT: "an integer or null",
    _BOOL: "true, false or null",
    _STR: "a string, a number or null",
    _DT: 'an ISO-8601 date-time string (e.g. "2026-01-31T12:00:00Z") or null',
}
_JSON_TYPES = ("application/json",)
_CHARSETS = ("utf-8", "utf8")


class RequestError(Exception):
    """A bad request. ``status``: 400 (not JSON), 413 (too large), 415 (not application/json),
    422 (JSON that breaks the row contract). ``field`` is the first offending field or None;
    ``problems`` lists every problem found (up to ``MAX_PROBLEMS``) as (code, field, message)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 problems: list[tuple[str, str | None, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.problems = problems or [(code, field, message)]

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.code!r}, field={self.field!r}, message={self.message!r})"


class _NonFinite:
    """What ``json.loads`` yields for the non-standard literals NaN / Infinity / -Infinity:
    not a float, so the hot path's type checks fail and the slow path reports it by name."""
    __slots__ = ("literal",)

    def __init__(self, literal: str):
        self.literal = literal


class _Invalid(Exception):
    """Raised by the fast path on anything unusual; the slow path then explains."""


_DECODER = json.JSONDecoder(parse_constant=_NonFinite)
_decode = _DECODER.decode


class RequestParser:
    """Validates and normalizes ``POST /predict`` bodies for one model's input columns."""

    def __init__(self, input_types: dict[str, str], *, max_batch_rows: int, max_body_bytes: int,
                 extra_fields: str = "reject", passthrough: tuple = (), task: str | None = None,
                 classes: list | None = None, datetime_formats: dict | None = None):
        bad = {c: k for c, k in input_types.items() if k not in _KIND_CODE}
        if bad:
            raise ValueError(f"unknown input kind(s) {bad}; expected one of {list(KINDS)}")
        if not input_types:
            raise ValueError("input_types is empty: the model has no input columns")
        if extra_fields not in ("reject", "ignore"):
            raise ValueError(f"extra_fields must be 'reject' or 'ignore', got {extra_fields!r}")
        if max_batch_rows < 1 or max_body_bytes < 1:
            raise ValueError("max_batch_rows and max_body_bytes must be >= 1")
        self.input_types = dict(input_types)
        # date-times the model was trained on as text: read with the training data's format (ISO 8601 too)
        self._formats = {c: f for c, f in (datetime_formats or {}).items()
                         if self.input_types.get(c) == "datetime" and f != ISO}
        self.max_batch_rows = int(max_batch_rows)
        self.max_body_bytes = int(max_body_bytes)
        self.extra_fields = extra_fields
        self._fields = tuple((c, _KIND_CODE[k]) for c, k in self.input_types.items())
        self._names = tuple(self.input_types)
        self._name_set = frozenset(self._names)
        self._n = len(self._fields)
        self._reject = extra_fields == "reject"
        # fields accepted beside the inputs and kept (as text) for the prediction log, never features:
        # the data's id column, so labels keyed by it join later
        self._passthrough = tuple(p for p in passthrough if p and p not in self._name_set)
        # the response: a binary model's labels are 0/1 at its threshold, a multiclass model's the class
        # names, its probabilities in the order of ``classes``
        self.task, self.classes = task, list(classes) if classes else None
        self.row_model, self.request_model, self.response_model, self.error_model = _models(
            self.input_types, self.max_batch_rows, self._reject, self._passthrough, task, self.classes,
            self._formats)

    @classmethod
    def from_bundle(cls, bundle, serve_cfg=None, passthrough: tuple = ()) -> "RequestParser":
        """``serve_cfg``: ``mlops_ray.config.ServeConfig`` (None: its defaults); ``passthrough``:
        fields accepted and logged but never used as features (the data's id column)."""
        if serve_cfg is None:
            serve_cfg = ServeConfig()
        return cls(bundle.spec.input_types, max_batch_rows=serve_cfg.max_batch_rows,
                   max_body_bytes=serve_cfg.max_body_bytes, extra_fields=serve_cfg.extra_fields,
                   passthrough=passthrough, task=bundle.task,
                   classes=bundle.spec.classes if bundle.task == "multiclass" else None,
                   datetime_formats=getattr(bundle.spec, "datetime_formats", None))

    def schema(self) -> dict:
        """What ``GET /schema`` answers: the request and response JSON Schemas, and for a multiclass
        model its classes in the order of each row's probabilities."""
        out = {"request": self.request_model.model_json_schema(),
               "response": self.response_model.model_json_schema(), "task": self.task}
        if self.classes:
            out["classes"] = self.classes
        return out

    # ------------------------------------------------------------------ transport checks
    def check_content_type(self, content_type: str | None) -> None:
        """415 unless ``application/json`` (parameters allowed; a charset must be UTF-8)."""
        if content_type == "application/json":
            return
        if not content_type or not content_type.strip():
            raise RequestError(415, "unsupported_media_type",
                               "the request has no Content-Type header; send it as "
                               "'Content-Type: application/json' with a JSON body")
        media, _, params = content_type.partition(";")
        if media.strip().lower() not in _JSON_TYPES:
            raise RequestError(415, "unsupported_media_type",
                               f"Content-Type must be application/json, got {_short(content_type, 60)!r}; "
                               "send the rows as a JSON body with 'Content-Type: application/json'")
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in _CHARSETS:
                raise RequestError(415, "unsupported_media_type",
                                   f"charset {value.strip()!r} is not supported; JSON bodies must be UTF-8 "
                                   "(use 'Content-Type: application/json; charset=utf-8' or omit the charset)")

    def check_length(self, length: int | None) -> None:
        """413 if ``length`` bytes exceed ``max_body_bytes``. Call it with the Content-Length
        header before reading the body; ``parse`` calls it again with the actual size."""
        if length is not None and length > self.max_body_bytes:
            raise RequestError(413, "body_too_large",
                               f"the request body is {length} bytes; the limit is {self.max_body_bytes} "
                               "bytes (serve.max_body_bytes): send fewer rows per request")

    # ------------------------------------------------------------------ parse
    def parse(self, body: bytes, content_type: str | None) -> list[dict]:
        """Body -> normalized rows (every input column present, None for null, Python scalars;
        datetimes as naive UTC ``datetime``). Raises ``RequestError``."""
        self.check_content_type(content_type)
        self.check_length(len(body))
        try:
            data = _decode(body if type(body) is str else bytes(body).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise RequestError(400, "invalid_json",
                               f"the request body is not valid UTF-8 (byte {e.start}); send UTF-8 encoded JSON") \
                from None
        except json.JSONDecodeError as e:
            if not body.strip():
                msg = "the request body is empty; send a JSON object (one row) or an array of row objects"
            else:
                msg = (f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} "
                       f"(char {e.pos}); send a JSON object (one row) or an array of row objects")
            raise RequestError(400, "invalid_json", msg) from None
        except RecursionError:
            raise RequestError(400, "invalid_json", "the request body is nested too deeply to be a row "
                               "or an array of rows") from None
        except ValueError as e:     # e.g. an integer literal with more than 4300 digits
            raise RequestError(400, "invalid_json", f"the request body is not valid JSON: {e}") from None

        t = type(data)
        if t is dict:
            try:
                return [self._row_fast(data)]
            except Exception:
                return self._slow([data], single=True)
        if t is list:
            n = len(data)
            if n == 0:
                raise RequestError(422, "empty_batch",
                                   "the request is an empty array; send one row object or an array of "
                                   f"1..{self.max_batch_rows} row objects")
            if n > self.max_batch_rows:
                raise RequestError(422, "too_many_rows",
                                   f"the request has {n} rows; the limit is {self.max_batch_rows} rows per "
                                   "request (serve.max_batch_rows): split it into smaller requests")
            row = self._row_fast
            try:
                return [row(r) for r in data]
            except Exception:
                return self._slow(data, single=False)
        raise RequestError(422, "invalid_body",
                           f"the request body must be a JSON object (one row) or an array of row objects, "
                           f"got {_describe(data)}")

    def _row_fast(self, d: dict) -> dict:
        """The hot path: raises (anything) on the first irregularity; ``_slow`` then explains."""
        if type(d) is not dict:
            raise _Invalid
        n = len(d)
        if n != self._n and (self._reject or n < self._n):
            if n < self._n or sum(p in d for p in self._passthrough) != n - self._n:
                raise _Invalid
        out = {}
        for name, kind in self._fields:
            v = d[name]                                 # KeyError: missing
            if v is not None:
                t = type(v)
                if kind == _FLOAT:
                    if t is float:
                        if not _NINF < v < _INF:        # NaN compares False too
                            raise _Invalid
                    elif t is int:
                        v = float(v)                    # OverflowError: too large
                    else:
                        raise _Invalid
                elif kind == _STR:
                    if t is not str and t is not int and (t is not float or not _NINF < v < _INF):
                        raise _Invalid
                elif kind == _INT:
                    if t is not int:
                        if t is not float or not v.is_integer():    # NaN / inf are not integers
                            raise _Invalid
                        v = int(v)
                    if not _I64_MIN <= v <= _I64_MAX:
                        raise _Invalid
                elif kind == _DT:
                    if t is not str:
                        raise _Invalid
                    if name in self._formats:
                        v = parse_value(v, self._formats[name])
                    else:
                        v = parse_iso(v)                # OverflowError: out of range
                    if v is None:
                        raise _Invalid
                    if not _DT_MIN <= v < _DT_MAX:
                        raise _Invalid
                elif t is not bool:                     # _BOOL
                    raise _Invalid
            out[name] = v
        if n != self._n:
            for p in self._passthrough:
                if p in d:
                    out[p] = None if d[p] is None else str(d[p])
        return out

    def _slow(self, rows: list, single: bool) -> list[dict]:
        """Authoritative validation: converts every row or raises with up to MAX_PROBLEMS problems."""
        problems: list[tuple[str, str | None, str]] = []
        out: list[dict] = []
        for i, d in enumerate(rows):
            prefix = "" if single else f"rows[{i}]."
            row = self._check_row(d, prefix, problems)
            if row is not None:
                out.append(row)
            if len(problems) > MAX_PROBLEMS:
                break
        if not problems:
            return out
        shown = problems[:MAX_PROBLEMS]
        message = "; ".join(m for _, _, m in shown)
        if len(shown) > 1:
            message = f"{len(shown)} problems: {message}"
        if len(problems) > MAX_PROBLEMS:
            message += f" (only the first {MAX_PROBLEMS} problems are shown)"
        code, field, _ = shown[0]
        raise RequestError(422, code, message, field, problems=shown)

    def _check_row(self, d: Any, prefix: str, problems: list) -> dict | None:
        if type(d) is not dict:
            where = prefix[:-1] if prefix else "the row"
            problems.append(("invalid_type", prefix[:-1] or None,
                             f"{where} must be a JSON object of input fields, got {_describe(d)}"))
            return None
        before = len(problems)
        extra = [k for k in d if k not in self._name_set and k not in self._passthrough]
        if self._reject:
            for k in extra:
                problems.append(("unknown_field", prefix + k, self._unknown_message(prefix, k, d[k])))
        out = {}
        missing = []
        for name, kind in self._fields:
            path = prefix + name
            if name not in d:
                missing.append(name)
                continue
            v = d[name]
            try:
                out[name] = None if v is None else (
                    _convert_formatted(v, self._formats[name]) if name in self._formats else _convert(v, kind))
            except _Problem as p:
                problems.append((p.code, path, f"{path}: {p.text}"))
        if missing:           # one problem naming every missing field, not the first few of many
            problems.append(("missing_field", prefix + missing[0], self._missing_message(prefix, missing, extra)))
        for p in self._passthrough:
            if p in d:
                out[p] = None if d[p] is None else str(d[p])
        return out if len(problems) == before else None

    def _unknown_message(self, prefix: str, key: str, value: Any) -> str:
        close = difflib.get_close_matches(key, self._names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        shown = ", ".join(self._names[:8]) + (f", ... ({self._n} in total)" if self._n > 8 else "")
        nested = (" To send several rows, make the body a JSON array of row objects."
                  if isinstance(value, (list, dict)) else "")
        return (f"{prefix}{_short(key, 60)}: unknown field{hint}. The model's input fields are: {shown}. "
                f"Remove it (or set serve.extra_fields: ignore).{nested}")

    def _missing_message(self, prefix: str, names: list[str], extra: list[str]) -> str:
        keys = [k for k in extra if isinstance(k, str)]
        hints = []
        for n in names:
            close = difflib.get_close_matches(n, keys, n=1, cutoff=0.6)
            if close:
                hints.append(f"the row has {close[0]!r} — a typo of {n!r}?")
        hint = f" ({'; '.join(hints[:3])})" if hints else ""
        if len(names) == 1:
            return (f"{prefix}{names[0]}: missing field{hint}; every input field must be present in every row — "
                    f"send {names[0]!r}: null if the value is unknown")
        return (f"{prefix[:-1] or 'the row'}: {len(names)} of {self._n} input fields missing: {', '.join(names)}{hint}; "
                f"every input field must be present in every row (null if unknown); GET /schema gives the "
                "whole request format")


def _convert_formatted(v: Any, fmt: str) -> datetime:
    """A date-time field the model read as text with ``fmt``: that format (as training read it),
    else ISO 8601."""
    if type(v) is str:
        dt = parse_value(v, fmt)
        if dt is None:
            dt = _parse_datetime(v)
        if dt is not None:
            if not _DT_MIN <= dt < _DT_MAX:
                raise _Problem("out_of_range", f"{_short(v, 40)!r} is outside the supported years "
                                               f"{_DT_MIN.year}..{_DT_MAX.year - 1}")
            return dt
    example = datetime(2026, 1, 31, 12, 0).strftime(fmt) if fmt != ISO else "2026-01-31T12:00:00Z"
    raise _Problem("invalid_datetime" if type(v) is str else "invalid_type",
                   f"expected a date-time as text in the model's format {fmt!r} (e.g. {example!r}) or ISO 8601, "
                   f"or null; got {_short(v, 40)!r}" if type(v) is str else
                   f"expected a date-time as text in the model's format {fmt!r} (e.g. {example!r}) or null, "
                   f"got {_describe(v)}")


class _Problem(Exception):
    def __init__(self, code: str, text: str):
        self.code = code
        self.text = text


def _convert(v: Any, kind: int):
    """One non-null value -> its normalized Python scalar, or raise _Problem."""
    t = type(v)
    if t is _NonFinite or (t is float and not math.isfinite(v)):
        lit = v.literal if t is _NonFinite else v
        what = f"{lit} is not a finite number" if t is _NonFinite else "the number is out of range"
        raise _Problem("not_finite", f"{what}; use null for a missing value")
    if kind == _FLOAT:
        if t is float:
            return v
        if t is int:
            try:
                return float(v)
            except OverflowError:
                raise _Problem("out_of_range", "the number is too large for a double; "
                                               "use null for a missing value") from None
        raise _Problem("invalid_type", f"expected {_EXPECTED[kind]}, got {_describe(v)}{_quoted_hint(v)}")
    if kind == _INT:
        if t is float and v.is_integer():
            v = int(v)
            t = int
        if t is int:
            if not _I64_MIN <= v <= _I64_MAX:
                raise _Problem("out_of_range", f"{_short(v, 30)} is outside the 64-bit integer range")
            return v
        if t is float:
            raise _Problem("invalid_type", f"expected {_EXPECTED[kind]}, got {v!r} (not a whole number)")
        raise _Problem("invalid_type", f"expected {_EXPECTED[kind]}, got {_describe(v)}{_quoted_hint(v)}")
    if kind == _BOOL:
        if t is bool:
            return v
        if t is int and v in (0, 1):
            return bool(v)
        raise _Problem("invalid_type", f"expected {_EXPECTED[kind]}, got {_describe(v)}")
    if kind == _STR:
        if t is str or t is int or t is float:
            return v
        raise _Problem("invalid_type", f"expected {_EXPECTED[kind]}, got {_describe(v)}")
    # _DT
    if t is not str:
        raise _Problem("invalid_type", f"expected {_EXPECTED[kind]}, got {_describe(v)}")
    dt = _parse_datetime(v)
    if dt is None:
        raise _Problem("invalid_datetime", f"{_short(v, 40)!r} is not an ISO-8601 date-time; "
                                           'send e.g. "2026-01-31T12:00:00Z" (or null if unknown)')
    if not _DT_MIN <= dt < _DT_MAX:
        raise _Problem("out_of_range", f"{_short(v, 40)!r} is outside the supported years "
                                       f"{_DT_MIN.year}..{_DT_MAX.year - 1}")
    return dt


def _parse_datetime(s: str) -> datetime | None:
    """``dates.parse_iso``, with a time an offset moves out of the years 1..9999 as ``datetime.min``
    (out of range)."""
    try:
        return parse_iso(s)
    except OverflowError:
        return datetime.min


def _describe(v: Any) -> str:
    t = type(v)
    if v is None:
        return "null"
    if t is bool:
        return f"a boolean ({'true' if v else 'false'})"
    if t is int or t is float:
        return f"a number ({_short(v, 30)})"
    if t is str:
        return f"a string ({_short(v, 40)!r})"
    if t is list:
        return "an array"
    if t is dict:
        return "an object"
    if t is _NonFinite:
        return v.literal
    return t.__name__


def _quoted_hint(v: Any) -> str:
    if type(v) is str:
        try:
            float(v)
        except ValueError:
            return ""
        return "; send the number without quotes"
    return ""


def _short(v: Any, n: int) -> str:
    s = v if isinstance(v, str) else repr(v)
    return s if len(s) <= n else s[:n - 3] + "..."


# --------------------------------------------------------------------------- OpenAPI models
def _models(input_types: dict[str, str], max_rows: int, reject: bool, passthrough: tuple = (),
            task: str | None = None, classes: list | None = None, formats: dict | None = None):
    """pydantic models of a row, the request, the response and the error body, for docs
    (OpenAPI). Validation is ``RequestParser.parse``: the models only describe it."""
    py = {"float": float, "int": int, "bool": bool, "string": Union[str, float], "datetime": datetime}
    fields: dict[str, Any] = {}
    for i, (col, kind) in enumerate(input_types.items()):
        desc = f"{kind} input; null if unknown (the field itself is required)"
        typ = Optional[py[kind]]
        if col in (formats or {}):
            desc = f"datetime input as text in the format {formats[col]!r} (or ISO 8601); null if unknown"
            typ = Optional[str]
        if col.isidentifier() and not keyword.iskeyword(col) and not col.startswith(("_", "model_")) \
                and not hasattr(BaseModel, col):
            fields[col] = (typ, Field(..., description=desc))
        else:
            fields[f"field_{i}"] = (typ, Field(..., alias=col, description=desc))
    for j, col in enumerate(passthrough):          # the data's id column: optional, logged, never a feature
        desc = ("the row's id (data.id_column), optional: logged with the prediction so that labels keyed by "
                "it join later (mlops-ray feedback); never an input of the model")
        typ = Optional[Union[str, int, float]]
        if col.isidentifier() and not keyword.iskeyword(col) and not col.startswith(("_", "model_")) \
                and not hasattr(BaseModel, col) and col not in fields:
            fields[col] = (typ, Field(None, description=desc))
        else:
            fields[f"id_{j}"] = (typ, Field(None, alias=col, description=desc))
    row = create_model("PredictRow", __config__=ConfigDict(extra="forbid" if reject else "ignore",
                                                           populate_by_name=True), **fields)
    rows = Annotated[list[row], Field(min_length=1, max_length=max_rows)]
    request = type("PredictRequest", (RootModel[Union[row, rows]],), {
        "__doc__": f"One row object, or an array of 1..{max_rows} row objects."})
    predictions = {"binary": "One per row: the probability of the positive class",
                   "regression": "One per row: the predicted value",
                   "multiclass": f"One per row: the probabilities of the classes, in this order: {classes}"}
    labels = {"binary": (list[int], "One per row: 1 where the probability reaches the version's decision "
                                    "threshold (model.threshold, chosen at training), else 0"),
              "multiclass": (list[Union[str, int]], "One per row: the most probable class, by name")}
    extra = {}
    if task in labels:
        extra["labels"] = (labels[task][0], Field(..., description=labels[task][1]))
    elif task is None:
        extra["labels"] = (Optional[list[Union[int, str]]], Field(None, description=(
            "Classification only, one per row: binary 0/1 at the version's threshold; multiclass the class name")))
    response = create_model(
        "PredictResponse",
        predictions=(list[Union[float, list[float]]], Field(..., description=predictions.get(
            task, "One per row: a probability or value, or class probabilities"))),
        **extra,
        model_version=(str, Field(..., description="Registered model version that answered")),
        request_id=(str, Field(..., description="Echoed in logs and the prediction log")),
    )
    detail = create_model("ErrorDetail", code=(str, ...), message=(str, ...), field=(Optional[str], None))
    error = create_model("ErrorResponse", error=(detail, ...))
    return row, request, response, error
