"""Datetime parts in drift checks: which are tested, how a window's calendar is allowed for.

In: the reference profile's entries for datetime parts (``reference.part_column``, e.g.
``event_time.hour``, with the datetime field and part they come from), the window's counts and
the span of time each side covers (the datetime field's min and max). Out: the counts a cyclic
part is tested on, an "excluded" entry for each calendar position, and the model columns the
domain classifier leaves out. Pure functions; ``monitor/drift.py`` calls them.

The rules:

* A *cyclic* part (hour, minute, time_of_day, minute_of_day, dayofweek, is_weekend, the hour and
  day-of-week sin/cos) is tested like any numeric column, once the window covers at least one
  whole cycle (a day; an hour for ``minute``; a week for the day-of-week parts), and so does
  the training period. Below that it is "insufficient data": the hours of a two-hour window or
  the weekdays of a one-day window differ from training's by construction. Whole cycles are
  not whole calendar months: a 31-day window holds five of three weekdays and four of the rest,
  which moves ``dayofweek`` by 0.06-0.18 reference SDs between months of the same flight
  schedule (nycflights13). So each bin is weighted by its share of one cycle over its share of
  the time the side covers (a bin of Saturdays in a window with five Saturdays in 31 days
  counts 4.43 / 5 of its rows), and the test is drawn at the weighted counts' effective size.
* A *calendar position* (day of the month, month, year, dayofyear, weekofyear, epoch_days and
  the season, dayofyear_sin/cos) names where in the calendar a row lies; a later period has
  other values by construction. It is not tested for drift, not counted in the drift share and
  not given to the domain classifier; the report lists it as excluded, with the reason. It is
  data quality when a value lies outside what training saw: for a bounded position (day,
  month, dayofyear, weekofyear, the season) any value outside training's range; for one that
  only grows with time (year, epoch_days) a value *before* training's first, since every later
  window lies after training's last (that is reported, as how far past it, but not flagged).
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from mlops_ray.data import features as feat
from mlops_ray.monitor.reference import part_column

GRID = 10_080                # points per cycle the coverage is measured on (a minute of a week)
REASON = ("calendar position: any later period holds other values, so it is not tested for drift, not "
          "counted in the drift share and not given to the domain classifier; data quality only")


def cycle_s(part: str) -> float | None:
    return feat.PART_CYCLE_S.get(part)


def _fmt_span(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def covered(entry: dict | None, part: str) -> tuple[float, float] | None:
    """The time a side covers for a cyclic part: from the first to the last time of the datetime
    field's counts, widened to whole UTC days (whole hours for ``minute``), since traffic has quiet
    hours (a day of flights runs 05:00-23:59 and is still a whole day); None if unknown."""
    if not entry or entry.get("min") is None or entry.get("max") is None:
        return None
    unit = 3600.0 if cycle_s(part) == 3600.0 else 86400.0
    return float(np.floor(entry["min"] / unit) * unit), float((np.floor(entry["max"] / unit) + 1) * unit)


def span(entry: dict | None, part: str) -> float | None:
    """Seconds of ``covered``."""
    c = covered(entry, part)
    return None if c is None else c[1] - c[0]


def _bins_of(times_s: np.ndarray, part: str, edges) -> np.ndarray:
    s = pd.Series(pd.to_datetime(np.round(times_s * 1e3).astype(np.int64), unit="ms"))
    v = feat.datetime_part(s, part)
    return np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="right")


def coverage(edges, part: str, t0: float, t1: float) -> np.ndarray:
    """Seconds of [t0, t1] whose ``part`` falls in each bin of ``edges`` (measured on a grid of
    ``GRID`` points per cycle: whole cycles all cover the same, so one is measured and the
    remainder apart)."""
    c = cycle_s(part)
    k = len(edges) + 1
    step = c / GRID
    whole, rest = divmod(max(t1 - t0, 0.0), c)
    full = np.bincount(_bins_of(t0 + step * (np.arange(GRID) + 0.5), part, edges), minlength=k) * step
    m = int(np.ceil(rest / step))
    tail = np.bincount(_bins_of(t0 + whole * c + step * (np.arange(m) + 0.5), part, edges),
                       minlength=k) * step if m else np.zeros(k)
    if m:
        tail *= rest / (m * step)
    return whole * full + tail


def cycle_weights(edges, part: str, t0: float, t1: float) -> np.ndarray:
    """Per bin: its share of one whole cycle over its share of [t0, t1] (1 where the span is whole
    cycles; a bin the span does not cover gets 0, and holds no rows)."""
    c = cycle_s(part)
    one = coverage(edges, part, 0.0, c) / c
    got = coverage(edges, part, t0, t1)
    total = got.sum()
    share = got / total if total > 0 else got
    return np.divide(one, share, out=np.zeros_like(one), where=share > 0)


def weighted_counts(counts, weights: np.ndarray) -> list[int]:
    """Counts reweighted and scaled to their effective size (Kish: (sum w c)^2 / sum w^2 c), as
    integers for the calibrated tests, whose null is drawn at that many rows."""
    c = np.asarray(counts, dtype=np.float64)
    wc = c * weights
    if wc.sum() <= 0:
        return [int(x) for x in c]
    n_eff = wc.sum() ** 2 / (c * weights ** 2).sum()
    return [int(x) for x in np.round(wc * n_eff / wc.sum())]


def cyclic_inputs(name: str, lay: dict, win: dict | None, ref_field: dict | None,
                  win_field: dict | None) -> tuple[dict, dict | None, str | None]:
    """(reference entry, window counts, note) a cyclic part is judged on: both weighted by
    ``cycle_weights`` over the time each side covers; the note says why it cannot be judged
    (a side spans less than one cycle) or that it was weighted."""
    part = lay["part"]
    c = cycle_s(part)
    if c is None or win is None:
        return lay, win, None
    for side, entry in (("the training rows span", ref_field), ("the window spans", win_field)):
        s = span(entry, part)
        if s is not None and s < c:
            return lay, win, (f"insufficient data: {side} {_fmt_span(s)} of {lay['field']}, less than one cycle "
                              f"of {part} ({_fmt_span(c)}): its values are not comparable")
    ref_t, win_t = covered(ref_field, part), covered(win_field, part)
    if ref_t is None or win_t is None:
        return lay, win, None
    lay = {**lay, "counts": weighted_counts(lay["counts"], cycle_weights(lay["edges"], part, *ref_t))}
    win = {**win, "counts": weighted_counts(win["counts"], cycle_weights(lay["edges"], part, *win_t))}
    return lay, win, f"counts weighted by each bin's share of whole {_fmt_span(c)} cycles"


def _show(part: str, v: float) -> str:
    if part == "epoch_days":
        return (dt.datetime(1970, 1, 1) + dt.timedelta(days=float(v))).date().isoformat()
    return f"{v:g}"


def calendar_entry(name: str, lay: dict, win: dict | None, mon) -> dict:
    """The report's entry for a calendar position: excluded, with its data-quality check."""
    part = lay["part"]
    win = win or {}
    n, nulls = int(win.get("n", 0)), int(win.get("nulls", 0))
    ref_n = int(lay.get("n", 0)) or 1
    ref_null = lay.get("nulls", 0) / ref_n
    lo, hi = lay.get("min"), lay.get("max")
    q = {"nulls": nulls, "null_rate": round(nulls / n, 6) if n else 0.0, "reference_null_rate": round(ref_null, 6),
         "below": int(win.get("below", 0)), "above": int(win.get("above", 0)), "flags": []}
    q.update({"out_of_range": q["below"] + (0 if part in feat.MONOTONE_PARTS else q["above"]), "unseen": 0})
    if n and q["null_rate"] > ref_null + mon.max_null_rate_increase:
        q["flags"].append(f"null rate {q['null_rate']:.1%} vs {ref_null:.1%} in training")
    note = None
    if lo is None or hi is None:
        note = "no training range in the reference profile"
    elif part in feat.MONOTONE_PARTS:
        if q["below"]:
            q["flags"].append(f"{q['below']} values before training's first ({_show(part, lo)}): times older "
                              f"than any training row")
        if win.get("max") is not None and win["max"] > hi:
            note = (f"the window reaches {_show(part, win['max'])}, past training's last {_show(part, hi)} "
                    f"(expected as time goes on; not a flag)")
    elif q["below"] + q["above"]:
        seen = (f"{_show(part, win['min'])}–{_show(part, win['max'])}" if win.get("min") is not None else "?")
        q["flags"].append(f"{q['below'] + q['above']} values outside training's {_show(part, lo)}–{_show(part, hi)} "
                          f"(window {seen}): the model never saw them")
    return {"name": name, "field": lay["field"], "part": part, "kind": "calendar", "rows": n - nulls,
            "reason": REASON, "quality": q, "note": note,
            "reference_range": [lo, hi], "window_range": [win.get("min"), win.get("max")]}


def domain_exclusions(spec, ref_fields: dict[str, dict | None], win_fields: dict[str, dict | None]) -> dict[str, str]:
    """Model columns (``field__part``) the domain classifier leaves out, with why: every calendar
    position (derived from the part's name, so a bundle from before this rule is treated alike),
    and a cyclic part whose cycle the window or the training rows do not cover once (``*_fields``:
    datetime column -> its counts, with the first and last time)."""
    out = {}
    for d in spec.datetime:
        for part in d.parts:
            col = f"{d.name}__{part}"
            if feat.part_kind(part) == "calendar":
                out[col] = "calendar position"
                continue
            c = cycle_s(part)
            short = [(side, s) for side, s in (("window", span(win_fields.get(d.name), part)),
                                               ("training", span(ref_fields.get(d.name), part)))
                     if s is not None and c is not None and s < c]
            if short:
                side, s = short[0]
                out[col] = f"the {side} spans {_fmt_span(s)}, less than one cycle ({_fmt_span(c)})"
    return out


def spec_parts(spec) -> dict[str, list[str]]:
    """Datetime column -> the model's parts of it, which the reference profiles one by one."""
    return {d.name: list(d.parts) for d in spec.datetime if d.parts}


def missing_parts(spec, columns: dict, version) -> list[dict]:
    """Report entries for the model's datetime parts that the reference profile lacks (a bundle
    registered before parts were profiled): what they are, and how to have them tested."""
    out = []
    for field, parts in spec_parts(spec).items():
        for part in parts:
            name = part_column(field, part)
            if name in columns:
                continue
            kind = feat.part_kind(part)
            why = REASON if kind == "calendar" else (
                f"not tested: version {version}'s reference profile has no profile of {field}'s parts (it predates "
                f"them); rebuild it with `mlops-ray monitor CONFIG --reference-data PATH` (its training data)")
            out.append({"name": name, "field": field, "part": part, "kind": kind, "rows": None, "reason": why,
                        "quality": {"flags": []}, "note": "no training range in the reference profile"})
    return out
