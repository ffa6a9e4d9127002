"""The reference profile stored in a model bundle (``reference.json``), for drift checks.

In: the model-input matrix of the training rows, the FeatureSpec and the model's
predictions on held-out rows. Out: a JSON-able dict: per numeric feature its quantile bin
edges, the share of rows per bin and the missing share; per categorical feature the share
of each category (top ``max_categories``, the rest as ``__other__``); the prediction
distribution.

Also, below: the profile of each *raw input column* as requests carry it (``inputs``), built
from mergeable per-block partials; ``monitor/drift.py`` bins a window of the prediction log
with the same layout and compares counts. A datetime column brings its first and last time,
and each datetime part the model uses an entry of its own (``event_time.hour``): bins for a
cyclic part, the range for a calendar position (``monitor/calendar.py``).
"""
from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlops_ray.config import MonitorConfig
from mlops_ray.data import features as feat
from mlops_ray.data.features import OOV_CODE, FeatureSpec
from mlops_ray.data.profile import merged_quantiles, sketch
from mlops_ray.monitor.histograms import prediction_edges


def numeric_profile(values: np.ndarray, bins: int) -> dict:
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    missing = float(1 - finite.size / v.size) if v.size else 0.0
    if finite.size == 0:
        return {"kind": "numeric", "edges": [], "shares": [], "missing": missing, "n": int(v.size)}
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
    return {"kind": "numeric", "edges": edges.tolist(), "shares": (counts / finite.size).round(6).tolist(),
            "missing": round(missing, 6), "n": int(v.size), "mean": float(finite.mean()),
            "std": float(finite.std())}


def categorical_profile(codes: np.ndarray, vocab: list[str], max_categories: int = 100) -> dict:
    c = np.asarray(codes, dtype=np.float64)
    ok = np.isfinite(c)
    counts = np.bincount(c[ok].astype(np.int64), minlength=len(vocab) + 1)
    total = max(int(ok.sum()), 1)
    shares = {"__oov__": counts[OOV_CODE] / total}
    order = np.argsort(-counts[1:], kind="stable")[:max_categories]
    for i in order:
        shares[vocab[i]] = counts[i + 1] / total
    kept = sum(v for k, v in shares.items())
    if kept < 1 - 1e-9:
        shares["__other__"] = 1 - kept
    return {"kind": "categorical", "shares": {k: round(float(v), 6) for k, v in shares.items()},
            "missing": round(float(1 - ok.mean()) if c.size else 0.0, 6), "n": int(c.size)}


SAMPLE = 200_000      # training rows a reference profiles at most


def build_reference(X: np.ndarray, spec: FeatureSpec, predictions: np.ndarray, task: str,
                    bins: int = 10, sample: int = SAMPLE, seed: int = 0) -> dict:
    """Profile of the training features (a seeded sample of at most ``sample`` rows) and predictions."""
    if X.shape[0] > sample:
        X = X[np.random.default_rng(seed).choice(X.shape[0], sample, replace=False)]
    vocab = {f.name: f.vocab for f in spec.categorical}
    feats = {}
    for j, (name, kind) in enumerate(zip(spec.output_columns, spec.feature_types)):
        feats[name] = categorical_profile(X[:, j], vocab[name]) if kind == "c" else numeric_profile(X[:, j], bins)
    p = np.asarray(predictions, dtype=np.float64)
    if task == "binary":
        edges = np.asarray(prediction_edges(task, None))     # the bins serving replicas count in
        counts = np.bincount(np.searchsorted(edges, p[np.isfinite(p)], side="right"), minlength=edges.size + 1)
        pred = {"kind": "numeric", "edges": edges.tolist(),
                "shares": (counts / max(counts.sum(), 1)).round(6).tolist(), "missing": 0.0, "n": int(p.size)}
    elif task == "multiclass":
        cls = np.argmax(p, axis=1) if p.ndim == 2 else p
        counts = np.bincount(cls.astype(np.int64))
        pred = {"kind": "categorical", "shares": {str(i): round(float(c / counts.sum()), 6)
                                                  for i, c in enumerate(counts)}, "missing": 0.0, "n": int(p.shape[0])}
    else:
        pred = numeric_profile(p, bins)
    return {"version": 1, "bins": bins, "rows": int(X.shape[0]), "features": feats, "prediction": pred}


# =========================================================================== raw inputs
# The profile of each raw input column as it arrives at serving (before any feature is
# derived), for drift and data-quality checks on the prediction log. Two mergeable passes:
# sketches fix the bin edges and the kept categories ("layout"), counts fill them. The same
# count partial bins a monitoring window, so reference and window compare bin for bin.
NUMERIC_TYPES = ("int", "float", "bool")
OTHER = "__other__"
TRUNCATED = "\x00truncated"
MAX_SEEN = 10_000        # categories remembered per column for "never seen in training"


def part_column(field: str, part: str) -> str:
    """The name a datetime part goes by in profiles and drift reports: ``event_time.hour``."""
    return f"{field}.{part}"


def _part_values(cols: dict, parts: dict[str, list[str]] | None) -> dict[str, tuple[dict, np.ndarray]]:
    """Per datetime part of a batch: ({"field", "part", "kind"}, its values as the model sees them)."""
    out = {}
    for field, names in (parts or {}).items():
        if field not in cols or not names:
            continue
        s = feat.as_datetime(cols[field])
        for part in names:
            out[part_column(field, part)] = ({"field": field, "part": part, "kind": feat.part_kind(part)},
                                             feat.datetime_part(s, part))
    return out


def _epoch_s(col: pa.ChunkedArray) -> np.ndarray:
    """A datetime column as seconds since 1970 (NaN for missing), for the span a window covers."""
    s = feat.as_datetime(col)
    v = s.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64) / 1e9
    v[s.isna().to_numpy()] = np.nan
    return v


def column_kind(input_type: str) -> str:
    if input_type in NUMERIC_TYPES:
        return "numeric"
    return "datetime" if input_type == "datetime" else "categorical"


def is_log_batch(table: pa.Table) -> bool:
    return "inputs" in table.column_names and pa.types.is_struct(table.schema.field("inputs").type)


def input_columns(table: pa.Table) -> dict[str, pa.ChunkedArray]:
    """The request's input columns of a batch by name. A prediction-log batch carries them in its
    ``inputs`` struct, apart from the log's own columns (``prediction``, ``ts``, ...), so a user's
    column named like one of those is an input like any other, never taken for the log's."""
    if not is_log_batch(table):
        return {n: table.column(n) for n in table.column_names}
    struct = table.column("inputs").combine_chunks()
    return {struct.type.field(i).name: pa.chunked_array([struct.field(i)]) for i in range(struct.type.num_fields)}


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
        col = pc.cast(col, pa.float64(), safe=False) if pa.types.is_decimal(col.type) else \
            pc.cast(pc.utf8_trim_whitespace(pc.cast(col, pa.string())), pa.float64(), safe=False)
    return np.asarray(pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)


def _strings(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_boolean(col.type):
        col = pc.cast(pc.cast(col, pa.int8()), pa.string())      # as features.transform sees bools: 0/1
    return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) else pc.cast(col, pa.string())


def _value_counts(col: pa.ChunkedArray) -> dict[str, int]:
    vc = pc.value_counts(_strings(col).drop_null() if col.null_count else _strings(col))
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))


def sketch_partial(table: pa.Table, input_types: dict[str, str], keep: int = 2000,
                   parts: dict[str, list[str]] | None = None) -> dict:
    """Per block: a quantile sketch per numeric column and per cyclic datetime part (``parts``:
    datetime column -> the model's parts of it), the top ``keep`` category counts."""
    cols, out = input_columns(table), {}
    for name, (info, v) in _part_values(cols, parts).items():
        if info["kind"] == "cyclic":
            out[name] = sketch(v)
    for name, kind in input_types.items():
        if name not in cols:
            continue
        if kind in NUMERIC_TYPES:
            out[name] = sketch(_floats(cols[name]))
        elif column_kind(kind) == "categorical":
            counts = _value_counts(cols[name])
            if len(counts) > keep:       # too many to keep: the layout will not know every seen value
                counts = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:keep])
                counts[TRUNCATED] = 0
            out[name] = counts
    return out


def merge_layout(parts: list[dict], input_types: dict[str, str], bins: int, top: int,
                 dt_parts: dict[str, list[str]] | None = None) -> dict:
    """Bin edges per numeric column and cyclic datetime part, kept categories per categorical
    column; a calendar-position part is only counted (its range, for data quality)."""
    layout = {}
    for name, kind in input_types.items():
        k = column_kind(kind)
        if k == "numeric":
            qs = merged_quantiles([p[name] for p in parts if name in p], list(np.linspace(0, 1, bins + 1)[1:-1]))
            edges = sorted({q for q in qs if q is not None})
            layout[name] = {"kind": k, "type": kind, "edges": edges}
        elif k == "categorical":
            total: dict[str, int] = {}
            for p in parts:
                for v, c in p.get(name, {}).items():
                    total[v] = total.get(v, 0) + c
            complete = total.pop(TRUNCATED, None) is None and len(total) <= MAX_SEEN
            cats = [v for v, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
            layout[name] = {"kind": k, "type": kind, "categories": cats,
                            "seen": sorted(total) if complete else None}
        else:
            layout[name] = {"kind": k, "type": kind}
    for field, names in (dt_parts or {}).items():
        for part in names:
            name = part_column(field, part)
            if feat.part_kind(part) == "calendar":
                layout[name] = {"kind": "calendar", "type": "float", "field": field, "part": part}
                continue
            qs = merged_quantiles([p[name] for p in parts if name in p], list(np.linspace(0, 1, bins + 1)[1:-1]))
            layout[name] = {"kind": "numeric", "type": "float", "field": field, "part": part,
                            "edges": sorted({q for q in qs if q is not None})}
    return layout


def count_partial(table: pa.Table, layout: dict, known: dict | None = None, limits: dict | None = None,
                  prediction_edges: list | None = None, prediction_classes: int | None = None,
                  predictions: np.ndarray | None = None) -> dict:
    """Per block: counts in the layout's bins, nulls, extremes, moments and data-quality counts
    (values outside ``limits[col] = (min, max)``, categories outside ``known[col]``, a calendar
    position's values below or above the layout's ``lo``/``hi``); for a datetime column its
    first and last time (seconds since 1970); the prediction's counts in ``prediction_edges``, or
    for a multiclass model (class probabilities) per predicted class of ``prediction_classes``.
    The predictions are ``predictions`` (the block scored by the caller) or, for a prediction-log
    block, the log's own ``prediction`` column; never a column of the inputs, whatever it is called."""
    cols, out = input_columns(table), {}
    wanted: dict[str, list[str]] = {}
    for lay in layout.values():
        if "field" in lay:
            wanted.setdefault(lay["field"], []).append(lay["part"])
    derived = _part_values(cols, wanted)
    for name, lay in layout.items():
        if name not in cols and name not in derived:
            continue
        col = cols.get(name)
        n = len(col) if col is not None else len(derived[name][1])
        if "field" in lay:
            v = derived[name][1]
            if lay["kind"] == "calendar":
                f = v[np.isfinite(v)]
                lo, hi = lay.get("lo"), lay.get("hi")
                out[name] = {"n": n, "nulls": int(n - f.size), "min": float(f.min()) if f.size else None,
                             "max": float(f.max()) if f.size else None,
                             "below": int((f < lo).sum()) if lo is not None else 0,
                             "above": int((f > hi).sum()) if hi is not None else 0}
                continue
        if lay["kind"] == "numeric":
            v = v if "field" in lay else _floats(col)
            ok = np.isfinite(v)
            f = v[ok]
            edges = np.asarray(lay["edges"], dtype=np.float64)
            d = {"n": n, "nulls": int(n - ok.sum()),
                 "counts": np.bincount(np.searchsorted(edges, f, side="right"), minlength=edges.size + 1).tolist(),
                 "min": float(f.min()) if f.size else None, "max": float(f.max()) if f.size else None,
                 "sum": float(f.sum()), "m2": _m2(f)}
            lo, hi = (limits or {}).get(name, (None, None))
            d["out_of_range"] = int(((f < lo).sum() if lo is not None else 0) + ((f > hi).sum() if hi is not None else 0))
        elif lay["kind"] == "categorical":
            counts = _value_counts(col)
            cats = lay["categories"]
            index = {c: i for i, c in enumerate(cats)}
            binned = [0] * (len(cats) + 1)
            for val, c in counts.items():
                binned[index.get(val, len(cats))] += c
            d = {"n": n, "nulls": int(col.null_count), "counts": binned}
            vocab = (known or {}).get(name)
            d["unseen"] = int(sum(c for val, c in counts.items() if val not in vocab)) if vocab is not None else 0
            d["unseen_values"] = sorted((val for val in counts if vocab is not None and val not in vocab),
                                        key=lambda val: -counts[val])[:5]
        else:                # a datetime column: its span (seconds since 1970), which the cycles are judged by
            t = _epoch_s(col)
            ok = t[np.isfinite(t)]
            d = {"n": n, "nulls": int(n - ok.size), "min": float(ok.min()) if ok.size else None,
                 "max": float(ok.max()) if ok.size else None}
        out[name] = d
    logged = table.column("prediction") if predictions is None and is_log_batch(table) \
        and "prediction" in table.column_names else None
    listed = logged is not None and pa.types.is_list(logged.type)
    if predictions is not None:
        predictions = np.asarray(predictions, dtype=np.float64)
    if prediction_classes and (listed or (predictions is not None and predictions.ndim == 2)):
        top = _top_class(logged) if listed else predictions.argmax(axis=1)
        top = top[top >= 0]
        out["__prediction__"] = {"n": int(top.size), "nulls": 0, "unseen": int((top >= prediction_classes).sum()),
                                 "counts": np.bincount(np.minimum(top, prediction_classes),
                                                       minlength=prediction_classes + 1).tolist()}
    elif prediction_edges is not None and (logged is not None or predictions is not None):
        if logged is not None:
            v = _top_probability(logged) if listed else _floats(logged)
        else:
            v = predictions.max(axis=1) if predictions.ndim == 2 else predictions   # multiclass: top probability
        v = v[np.isfinite(v)]
        e = np.asarray(prediction_edges, dtype=np.float64)
        out["__prediction__"] = {"n": int(v.size), "nulls": 0, "counts": np.bincount(
            np.searchsorted(e, v, side="right"), minlength=e.size + 1).tolist(),
            "min": float(v.min()) if v.size else None, "max": float(v.max()) if v.size else None,
            "sum": float(v.sum()), "m2": _m2(v)}
    return out


def _top_class(col: pa.ChunkedArray) -> np.ndarray:
    """Multiclass predictions (lists of class probabilities) -> the predicted class per row (-1
    for a row without one)."""
    arr = col.combine_chunks()
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
    values = np.asarray(pc.list_flatten(arr).to_numpy(zero_copy_only=False), dtype=np.float64)
    out = np.full(len(arr), -1, dtype=np.int64)
    has = lengths > 0
    k = int(lengths[has][0]) if has.any() else 0
    if k and (lengths[has] == k).all():            # every row has k probabilities: one argmax
        out[has] = values.reshape(-1, k).argmax(axis=1)
        return out
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    for i in np.flatnonzero(has):
        out[i] = int(np.argmax(values[starts[i]:starts[i] + lengths[i]]))
    return out


def _top_probability(col: pa.ChunkedArray) -> np.ndarray:
    """Multiclass predictions (lists of class probabilities) -> the top probability per row."""
    arr = col.combine_chunks()
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
    values = np.asarray(pc.list_flatten(arr).to_numpy(zero_copy_only=False), dtype=np.float64)
    out = np.full(len(arr), np.nan)
    has = lengths > 0
    if values.size:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[has]
        out[has] = np.maximum.reduceat(values, starts)
    return out


def _m2(x: np.ndarray) -> float:
    """Sum of squared deviations from the block's mean (merged with Chan's formula: sums of
    squares lose the spread of a column whose mean is large against it)."""
    return float(((x - x.mean()) ** 2).sum()) if x.size else 0.0


def merge_counts(parts: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for p in parts:
        for name, d in p.items():
            acc = out.get(name)
            if acc is None:
                out[name] = {k: (list(v) if isinstance(v, list) else v) for k, v in d.items()}
                continue
            if "m2" in d:
                na, nb = acc["n"] - acc["nulls"], d["n"] - d["nulls"]
                if na and nb:
                    delta = d["sum"] / nb - acc["sum"] / na
                    acc["m2"] = acc["m2"] + d["m2"] + delta * delta * na * nb / (na + nb)
                elif nb:
                    acc["m2"] = d["m2"]
            for k, v in d.items():
                if k == "m2":
                    continue
                if k == "counts":
                    acc[k] = [a + b for a, b in zip(acc[k], v)]
                elif k == "min":
                    acc[k] = v if acc[k] is None else (acc[k] if v is None else min(acc[k], v))
                elif k == "max":
                    acc[k] = v if acc[k] is None else (acc[k] if v is None else max(acc[k], v))
                elif k == "unseen_values":
                    acc[k] = list(dict.fromkeys(acc[k] + v))[:5]
                else:
                    acc[k] = acc[k] + v
    for d in out.values():
        if "sum" in d:
            m = d["n"] - d["nulls"]
            d["mean"] = d["sum"] / m if m else None
            d["std"] = float(np.sqrt(max(d["m2"] / m, 0.0))) if m else None
    return out


def input_profile(layout: dict, counts: dict) -> dict:
    """The ``inputs`` section of ``reference.json``: layout and counts per column."""
    cols = {}
    for name, lay in layout.items():
        c = counts.get(name, {"n": 0, "nulls": 0})
        entry = {**lay, **{k: v for k, v in c.items() if k not in ("sum", "m2", "unseen", "unseen_values",
                                                                      "out_of_range", "below", "above")}}
        cols[name] = entry
    return {"version": 1, "rows": max((c.get("n", 0) for c in counts.values()), default=0), "columns": cols}


def profile_inputs(ds, input_types: dict, mon: MonitorConfig, pass_fn, wrap=lambda f: f,
                   dt_parts: dict[str, list[str]] | None = None) -> dict:
    """The raw-input reference profile of a dataset, the contract featurize writes and the monitor
    reads: ``pass_fn`` runs partials over ``ds`` (Ray Data's single pass, or in-process), ``mon``
    gives the bins and top categories. Two passes: sketches fix the layout, counts fill it (``wrap`` may cut blocks to train rows).
    ``dt_parts`` (datetime column -> the model's parts of it) adds a profile per part."""
    parts = pass_fn(ds, {"s": wrap(functools.partial(sketch_partial, input_types=input_types, parts=dt_parts))})["s"]
    layout = merge_layout(parts, input_types, mon.bins, mon.top_categories, dt_parts)
    counts = merge_counts(pass_fn(ds, {"c": wrap(functools.partial(count_partial, layout=layout))})["c"])
    return input_profile(layout, counts)
