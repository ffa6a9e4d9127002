"""Date formats: what a format in ``data.datetime_formats`` reads, and the one parse with it.

In: a format (a strftime pattern such as ``%m/%d/%Y``, or ``ISO8601``) and a column of text (or
integers such as 20121231). Out: ``parse`` -> naive UTC ``timestamp[us]``, null where the format
does not read a value; ``check_format`` -> why a format does not read back what it writes (None:
it does). It sits below the data plane so that loading a config refuses a bad format, with the
same parse that ``data/dates.py`` uses to infer formats and read training, scoring and serving rows.
"""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ISO = "ISO8601"
TS = pa.timestamp("us")        # wide enough for any year a format can write


def as_text(col) -> pa.Array:
    """A column as trimmed text (a dictionary decoded, other types cast)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string())
    return pc.utf8_trim_whitespace(col)


def parse(col, fmt: str) -> pa.Array:
    """Text (or integers such as 20121231) -> naive UTC ``timestamp[us]``; a value the format
    does not read is null. A column that already holds timestamps is returned as it is."""
    if isinstance(col, pa.ChunkedArray) and (pa.types.is_timestamp(col.type) or pa.types.is_date(col.type)):
        return col.combine_chunks()
    if isinstance(col, pa.Array) and (pa.types.is_timestamp(col.type) or pa.types.is_date(col.type)):
        return col
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), TS)
    text = as_text(col)
    if fmt == ISO or "%f" in fmt:      # Arrow's strptime reads neither; pandas does, the same way everywhere
        s = pd.to_datetime(pd.Series(text.to_pandas(), dtype=object), format=fmt, errors="coerce", utc=True)
        return pa.array(s.dt.tz_convert(None).astype("datetime64[us]"), TS, from_pandas=True)
    out = pc.strptime(text, format=fmt, unit="us", error_is_null=True)
    return out.cast(TS) if out.type.tz is not None else out


def check_format(fmt: str) -> str | None:
    """Why ``fmt`` is not a date format ``parse`` can read back (None: it is)."""
    if fmt == ISO:
        return None
    if "%" not in fmt:
        return "it has no % directive (e.g. %m/%d/%Y for 12/31/2012, %d.%m.%Y %H:%M for 31.10.2020 08:00)"
    probe = dt.datetime(2012, 12, 31, 13, 45, 30, tzinfo=dt.timezone.utc)
    try:
        text = probe.strftime(fmt)
    except ValueError as e:
        return f"strftime rejects it ({e})"
    if parse(pa.array([text]), fmt)[0].as_py() is None:
        return (f"the value it writes for 2012-12-31 13:45:30 ({text!r}) does not read back; check the "
                "directives (%Y year, %m month, %d day, %H hour, %M minute, %S second, %b month name)")
    return None
