"""One distributed pass that computes several mergeable per-batch summaries.

Stages express what they need from the data as pure functions ``partial(table) -> obj``
(validation counts, feature vocabularies, quantile sketches) and ``merge(list) -> obj``.
``profile_pass`` runs all of them in a single ``map_batches`` over a Ray Dataset and hands
back the per-batch partials; only these small summaries reach the driver, never rows. A
partial function that may return something larger (a bounded row sample) also carries a
``compact(list) -> partial``, and the driver folds its partials as they arrive, so it holds a
few of them at a time, however many blocks the dataset has.

Also here: a mergeable quantile summary (evenly spaced order statistics per batch,
weighted by batch size) used for medians and time-split cut-offs.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable

import numpy as np
import pyarrow as pa

PartialFn = Callable[[pa.Table], Any]
SKETCH_POINTS = 1025
COMPACT_EVERY = 16          # partials of a compactable function held before they are folded into one


def _run_partials(table: pa.Table, fns: dict[str, PartialFn]) -> pa.Table:
    keys, blobs = [], []
    for key, fn in fns.items():
        keys.append(key)
        blobs.append(pickle.dumps(fn(table), protocol=pickle.HIGHEST_PROTOCOL))
    return pa.table({"key": pa.array(keys, pa.string()), "blob": pa.array(blobs, pa.large_binary())})


def profile_pass(ds, fns: dict[str, PartialFn]) -> dict[str, list[Any]]:
    """Run every partial function on every block of ``ds`` in one pass; return partials by key."""
    out = ds.map_batches(_run_partials, fn_kwargs={"fns": fns}, batch_format="pyarrow",
                         batch_size=None, zero_copy_batch=True)
    result: dict[str, list[Any]] = {k: [] for k in fns}
    for row in out.iter_rows():
        parts = result[row["key"]]
        parts.append(pickle.loads(row["blob"]))
        compact = getattr(fns[row["key"]], "compact", None)
        if compact is not None and len(parts) >= COMPACT_EVERY:
            parts[:] = [compact(parts)]
    return result


def profile_local(table: pa.Table, fns: dict[str, PartialFn], batch_rows: int = 1 << 20) -> dict[str, list[Any]]:
    """The same as ``profile_pass`` on an in-memory table, in this process (tests, baselines)."""
    result: dict[str, list[Any]] = {k: [] for k in fns}
    for start in range(0, max(table.num_rows, 1), batch_rows):
        part = table.slice(start, batch_rows)
        for k, fn in fns.items():
            result[k].append(fn(part))
    return result


# --------------------------------------------------------------------------- quantile sketch
def sketch(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Evenly spaced order statistics of the finite values, and how many values they stand for."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.empty(0), 0
    if v.size <= SKETCH_POINTS:
        return np.sort(v), int(v.size)
    qs = np.linspace(0, 1, SKETCH_POINTS)
    return np.quantile(v, qs, method="linear"), int(v.size)


def merged_quantiles(parts: list[tuple[np.ndarray, int]], qs: list[float]) -> list[float | None]:
    """Quantiles of the union of sketched batches (weights: rows each point stands for)."""
    pts, wts = [], []
    for points, n in parts:
        if n == 0 or points.size == 0:
            continue
        pts.append(points)
        wts.append(np.full(points.size, n / points.size))
    if not pts:
        return [None for _ in qs]
    p = np.concatenate(pts)
    w = np.concatenate(wts)
    order = np.argsort(p, kind="stable")
    p, w = p[order], w[order]
    cum = np.cumsum(w) - w / 2
    cum /= w.sum()
    return [float(np.interp(q, cum, p)) for q in qs]
