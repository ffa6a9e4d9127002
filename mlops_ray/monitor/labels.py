"""Labels that arrive after the predictions, and the live metric they give: canary vs stable
during a rollout, per version and window for the monitor.

The live metric of a rollout: canary vs stable on the predictions whose labels have arrived.

In: the prediction log (``predlog``: one record per predicted row, keyed by
``(request_id, row)``) and the labels users drop later as Parquet files under
``{store}/{name}/labels/`` — any layout below it, hidden (``.``) and underscore (``_``)
files and directories ignored. A label file holds at least ``request_id`` and the label
column (``data.label``), optionally ``row`` (the row's index in its request, default 0);
other columns are ignored (never read). A multiclass label is the class as the training data
spelled it (``Ideal``, or ``3`` for numeric classes), read as text and matched per version
against that version's own classes (``version_classes``: a retrained model may know other
classes, in another order); a class the version never saw counts as a wrong answer.

Out: ``live_metric`` → ``{"name", "stable", "canary", "higher_is_better", "rows"}`` as
``rollout.judge(live=...)`` expects, or None when there is nothing to judge yet.

Cost: only the needed columns are read (never the log's ``inputs``); the log is filtered
by ``since`` (hour partitions pruned) and by the two versions; each label file is read
with its own column types (so files that disagree — an int ``request_id`` here, a bool
label there — still combine) and cut to the request ids of the log before being kept.

Pure pyarrow/numpy/scikit-learn: no Ray.
"""
from __future__ import annotations

import logging
import math
import os
import posixpath
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from mlops_ray.data.features import label_codes, label_text
from mlops_ray.errors import MlopsError, MonitorError, ServingError, closest
from mlops_ray.monitor.predlog import PARTITIONING, TS_TYPE, filesystem_for, read_log
from mlops_ray.registry import Registry
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.store import Store
# Imported where used, for their import cost (python -X importtime): scikit-learn 1.1 s.

log = logging.getLogger(__name__)

METRIC = {"binary": ("auc", True), "regression": ("rmse", False), "multiclass": ("accuracy", True)}
_LABEL = "__label__"
_READ_THREADS = 8


# --------------------------------------------------------------------------- prediction log

def _read_predictions(root: str, task: str, versions: list[str], since: float | None) -> pa.Table:
    """(request_id, row int64, model_version, prediction) of ``versions`` with ``ts >= since``,
    one record per (request_id, row, model_version) — the first one logged."""
    pred_type = pa.list_(pa.float64()) if task == "multiclass" else pa.float64()
    schema = pa.schema([("request_id", pa.string()), ("row", pa.int32()), ("ts", TS_TYPE),
                        ("model_version", pa.string()), ("prediction", pred_type),
                        *PARTITIONING.schema])
    empty = pa.schema([("request_id", pa.string()), ("row", pa.int64()), ("model_version", pa.string()),
                       ("prediction", pred_type)]).empty_table()
    fs, path = filesystem_for(root)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return empty
    flt = pc.field("model_version").isin(versions)
    if since is not None:
        s = datetime.fromtimestamp(float(since), tz=timezone.utc)
        day = f"{s:%Y-%m-%d}"
        flt &= (pc.field("ts") >= pa.scalar(s, TS_TYPE)) & (
            (pc.field("date") > day) | ((pc.field("date") == day) & (pc.field("hour") >= s.hour)))
    try:
        dataset = pads.dataset(path, format="parquet", filesystem=fs, partitioning=PARTITIONING, schema=schema)
        table = dataset.to_table(columns=["request_id", "row", "model_version", "prediction"], filter=flt)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise ServingError(
            f"cannot read the prediction log under {root} as a {task} log (prediction of type {pred_type}): {e}; "
            f"check model.task, or move files written by another pipeline out of {root}") from None
    if not table.num_rows:
        return empty
    table = table.set_column(1, "row", pc.cast(table["row"], pa.int64()))
    # a client may resend an x-request-id: keep the first record per key and version
    return _keep(table, ["request_id", "row", "model_version"], "min")


def _keep(table: pa.Table, keys: list[str], which: str) -> pa.Table:
    """One row per ``keys``: the first (``which="min"``) or last (``"max"``) in table order."""
    idx = pa.array(np.arange(table.num_rows, dtype=np.int64))
    grouped = pa.table({**{k: table[k] for k in keys}, "_i": idx}).group_by(keys, use_threads=False) \
        .aggregate([("_i", which)])
    keep = grouped[f"_i_{which}"]
    if len(keep) == table.num_rows:
        return table
    return table.take(keep.take(pc.sort_indices(keep)))


# --------------------------------------------------------------------------- labels

def _label_files(fs: pafs.FileSystem, root: str) -> list[str]:
    """The files under ``root`` not hidden nor underscored at any level, oldest first (then by
    path): a later file correcting a label wins."""
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = posixpath.relpath(info.path, root) if info.path.startswith(root) else info.base_name
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        files.append((mtime, info.path))
    return [p for _, p in sorted(files)]


def _read_label_file(fs, path: str, label: str, ids: pa.Array, as_text: bool = False) -> tuple[str, object]:
    """("ok", table) | ("missing", columns) | ("unreadable", error) for one label file."""
    fmt = pads.ParquetFileFormat()
    try:
        frag = fmt.make_fragment(path, filesystem=fs)
        names = frag.physical_schema.names
    except (pa.ArrowInvalid, OSError) as e:
        return "unreadable", e
    if label not in names or "request_id" not in names:
        return "missing", names
    cols = ["request_id", label] + (["row"] if "row" in names else [])
    try:
        t = frag.to_table(columns=cols)
    except (pa.ArrowInvalid, OSError) as e:
        return "unreadable", e
    try:
        rid = pc.cast(t["request_id"], pa.string())
        y = label_text(t[label]) if as_text else pc.cast(t[label], pa.float64())
        row = pc.cast(t["row"], pa.int64()) if "row" in names else pa.nulls(t.num_rows, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ServingError(
            f"label file {path}: cannot read request_id / row / '{label}' as string / integer / "
            f"{'text' if as_text else 'number'} ({e}); write request_id as text, row as an integer and '{label}' "
            f"as {'the class' if as_text else 'a number (0/1 for binary)'}") from None
    out = pa.table({"request_id": rid, "row": pc.fill_null(row, 0), _LABEL: y})
    mask = pc.and_(pc.is_valid(out["request_id"]), pc.is_valid(out[_LABEL]))
    if not as_text:
        mask = pc.and_(mask, pc.invert(pc.is_nan(y)))
    mask = pc.and_(pc.fill_null(mask, False), pc.is_in(out["request_id"], value_set=ids))
    return "ok", out.filter(mask)


def _read_labels(root: str, label: str, ids: pa.Array, as_text: bool = False) -> pa.Table | None:
    """(request_id, row, label) for the request ids in ``ids``; the last label per key wins.
    None when there is no labels directory or no label file in it."""
    fs, path = filesystem_for(root)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    files = _label_files(fs, path)
    if not files:
        return None
    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(files))) as ex:
        results = list(ex.map(lambda p: _read_label_file(fs, p, label, ids, as_text), files))
    tables, missing, unreadable = [], {}, {}
    for p, (status, value) in zip(files, results):
        if status == "ok":
            tables.append(value)
        elif status == "missing":
            missing[p] = value
        else:
            unreadable[p] = value
    if unreadable:
        log.warning("skipped %d unreadable label file(s) under %s (not Parquet, or still being written), e.g. %s: %s",
                    len(unreadable), root, *next(iter(unreadable.items())))
    if not tables and missing:
        p, cols = next(iter(missing.items()))
        need = [c for c in ("request_id", label) if c not in cols]
        raise ServingError(
            f"no label file under {root} has the column(s) {need} (e.g. {p} has {cols}); the live metric needs "
            f"request_id and the label column '{label}' (data.label), optionally row: rename the column in the "
            f"label files, or set data.label to the column that holds the label")
    if missing:
        log.warning("ignored %d label file(s) under %s without request_id or '%s', e.g. %s",
                    len(missing), root, label, next(iter(missing)))
    if not tables:
        return None
    labels = pa.concat_tables(tables)
    if labels.num_rows:
        labels = _keep(labels, ["request_id", "row"], "max")
    return labels


# --------------------------------------------------------------------------- metrics

def _argmax(preds: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(class index, valid mask) of list predictions; null, empty or non-finite lists are invalid."""
    arr = preds.combine_chunks() if isinstance(preds, pa.ChunkedArray) else preds
    n = len(arr)
    out, ok = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    if n == 0:
        return out, ok
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    k = int(lengths.max()) if n else 0
    if k and (lengths == k).all() and arr.null_count == 0:
        vals = pc.fill_null(pc.list_flatten(arr), math.nan).to_numpy(zero_copy_only=False).reshape(n, k)
        ok = np.isfinite(vals).all(axis=1)
        out = np.argmax(np.where(np.isfinite(vals), vals, -np.inf), axis=1)
        return out, ok
    for i, p in enumerate(arr.to_pylist()):
        if p and all(v is not None and math.isfinite(v) for v in p):
            out[i], ok[i] = int(np.argmax(p)), True
    return out, ok


def _class_codes(y: pa.Array, classes: list[str] | None, labels_root: str, label: str) -> np.ndarray:
    """Text labels -> the version's class codes (-1: a class it does not know). Without the
    version's classes, the labels must be the codes themselves."""
    if classes:
        return label_codes(y, classes).astype(np.float64)
    try:
        codes = np.asarray(pc.cast(y, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        codes = None
    if codes is None or (codes.size and not np.equal(np.mod(codes, 1), 0).all()):
        bad = [v for v in pc.unique(y).to_pylist() if not _is_int(v)][:5]
        raise ServingError(f"labels '{label}' under {labels_root}: {bad} are not classes of this model, and its "
                           "class names are not known here; give the class as the training data spelled it")
    return codes


def _is_int(v) -> bool:
    try:
        return float(v) == int(float(v))
    except (TypeError, ValueError):
        return False


def _score(task: str, y, p, min_rows: int, labels_root: str, label: str,
           classes: list[str] | None = None) -> tuple[float | None, int]:
    """(metric or None, labeled rows used) of one version."""
    if task == "multiclass":
        cls, ok = _argmax(p)
        y = _class_codes(y, classes, labels_root, label)
        y, cls = y[ok], cls[ok]
        n = int(y.size)
        return (float(np.mean(cls == y)) if n >= min_rows else None), n
    pv = pc.fill_null(p, math.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    ok = np.isfinite(pv)
    y, pv = y[ok], pv[ok]
    n = int(y.size)
    if task == "regression":
        return (float(np.sqrt(np.mean((pv - y) ** 2))) if n >= min_rows else None), n
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise ServingError(f"labels '{label}' under {labels_root} must be 0/1 (or true/false) for a binary model; "
                           f"got e.g. {np.unique(y[bad])[:5].tolist()}")
    if n < min_rows or np.unique(y).size < 2:
        return None, n
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y.astype(int), pv)), n


def live_metric(predlog_root: str, labels_root: str, label: str, task: str, stable: str, canary: str, since: float,
                *, min_rows: int = 50, classes: dict[str, list[str] | None] | None = None) -> dict | None:
    """Canary vs stable on the logged predictions (``ts >= since``, epoch seconds) that have labels.

    Joins the prediction log with the labels on ``(request_id, row)`` (the last label per key
    wins; null labels are dropped) and scores each version: ``auc`` (binary; None with fewer
    than ``min_rows`` labeled rows or a single class), ``rmse`` (regression; lower is better),
    ``accuracy`` of the argmax (multiclass: ``classes`` maps a version to its class names, by
    which the text labels are matched; a version without them takes labels as class codes);
    None below ``min_rows``. Returns
    ``{"name", "stable", "canary", "higher_is_better", "rows": {version: labeled rows}}``, or
    None when there is no labels directory, no label file or no labeled row at all (no
    prediction since ``since`` included: the label files are then not read).

    Raises ServingError when no label file has ``request_id`` and the label column, or the
    labels cannot be read as numbers of the task (0/1, class indices).
    """
    if task not in METRIC:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(METRIC)}")
    min_rows = max(1, int(min_rows))
    versions = [str(stable)] if str(stable) == str(canary) else [str(stable), str(canary)]
    preds = _read_predictions(predlog_root, task, versions, since)
    if not preds.num_rows:
        return None                         # nothing to label yet: the label files are not even opened
    multiclass = task == "multiclass"
    labels = _read_labels(labels_root, label, pc.unique(preds["request_id"]), as_text=multiclass)
    if labels is None or not labels.num_rows:
        return None
    left = pa.table({"request_id": preds["request_id"], "row": preds["row"],
                     "_li": pa.array(np.arange(preds.num_rows, dtype=np.int64))})
    joined = left.join(labels, keys=["request_id", "row"], join_type="inner", use_threads=False)
    if not joined.num_rows:
        return None
    joined = joined.sort_by("_li")
    picked = preds.take(joined["_li"])
    y_all = joined[_LABEL].combine_chunks() if multiclass else joined[_LABEL].to_numpy().astype(np.float64)
    ver_all = picked["model_version"].to_numpy(zero_copy_only=False)
    name, higher = METRIC[task]
    out: dict = {"name": name, "stable": None, "canary": None, "higher_is_better": higher, "rows": {}}
    for role, v in (("stable", str(stable)), ("canary", str(canary))):
        sel = ver_all == v
        y = y_all.filter(pa.array(sel)) if multiclass else y_all[sel]
        value, n = _score(task, y, picked["prediction"].filter(pa.array(sel)), min_rows, labels_root, label,
                          (classes or {}).get(v))
        out[role] = value
        out["rows"][v] = n
    if not any(out["rows"].values()):
        return None
    return out


def scored_with_labels(predlog_root: str, labels_root: str, label: str, version: str,
                       since: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A binary version's logged predictions (``ts >= since``) and their labels, NaN where none
    arrived yet: ``(p, y)``, aligned. The join of ``live_metric`` (the last label per key wins)."""
    preds = _read_predictions(predlog_root, "binary", [str(version)], since)
    p = pc.fill_null(preds["prediction"], math.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    y = np.full(p.size, math.nan)
    labels = _read_labels(labels_root, label, pc.unique(preds["request_id"])) if preds.num_rows else None
    if labels is not None and labels.num_rows:
        left = pa.table({"request_id": preds["request_id"], "row": preds["row"],
                         "_li": pa.array(np.arange(preds.num_rows, dtype=np.int64))})
        joined = left.join(labels, keys=["request_id", "row"], join_type="inner", use_threads=False)
        y[joined["_li"].to_numpy()] = joined[_LABEL].to_numpy().astype(np.float64)
    ok = np.isfinite(p)
    return p[ok], y[ok]


class LiveMetric:
    """The live metric of a step, from the prediction log joined with labels that arrived under
    ``{store}/{name}/labels/`` (request_id, row, label). Recomputed at most every ``every_s``;
    unreadable labels are reported once and skipped, never the end of a rollout."""

    def __init__(self, cfg, every_s: float = 10.0):
        self.cfg, self.every_s = cfg, every_s
        store = Store(cfg.store)
        self.predlog, self.labels = Catalog(store, cfg.name).predlog_dir(), Catalog(store, cfg.name).labels_dir()
        self._at, self._value, self._key, self.problem = 0.0, None, None, None
        self._classes: dict = {}          # version -> class names (multiclass), fetched once

    def __call__(self, state) -> dict | None:
        key = (state.stable, state.canary, state.step_started)
        if key == self._key and time.time() - self._at < self.every_s:
            return self._value
        self._key, self._at = key, time.time()
        try:
            todo = [str(v) for v in {state.stable, state.canary} if v and str(v) not in self._classes]
            self._classes.update({v: None for v in todo} | version_classes(self.cfg, todo))
            self._value = live_metric(self.predlog, self.labels,
                                      self.cfg.data.label, self.cfg.model.task, state.stable, state.canary,
                                      state.step_started, classes=self._classes)
        except MlopsError as e:
            self._value, self.problem = None, e.message
        return self._value


# --------------------------------------------------------------------------- feedback: labels arrive
def _read_any(path: str) -> pa.Table:
    """A Parquet or CSV file or directory of labels (by extension; a directory is Parquet)."""
    fs, p = filesystem_for(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise MonitorError(f"--labels {path}: no such file or directory")
    try:
        if info.type == pafs.FileType.File and p.lower().endswith((".csv", ".csv.gz", ".txt")):
            with fs.open_input_stream(p) as f:
                return pacsv.read_csv(f)
        return pads.dataset(p, filesystem=fs, format="parquet").to_table()
    except (pa.ArrowInvalid, OSError) as e:
        raise MonitorError(f"--labels {path} cannot be read as {'CSV' if p.endswith('.csv') else 'Parquet'} ({e}); "
                           "give a Parquet file or directory, or a .csv file") from None


def feedback(cfg, labels_path: str, *, now: float | None = None, new_classes: bool = False) -> dict:
    """Validate a label file, store it under ``{store}/{name}/labels/`` and report completeness.

    The key is ``request_id`` (as /predict answered it), else ``data.id_column`` (batch scoring
    logs the id as the request id). Unknown ids are counted, not fatal; duplicate ids keep the
    last label; a label of the wrong type is refused naming the column and the fix, and so is a
    multiclass label of a class no version knows (``Rain`` for ``rain``), unless ``new_classes``
    says such classes are real. Nothing is stored when the file is refused."""
    label, task = cfg.data.label, cfg.model.task
    t = _read_any(labels_path)
    key = "request_id" if "request_id" in t.column_names else cfg.data.id_column
    if key not in t.column_names:
        raise MonitorError(f"--labels {labels_path} has no 'request_id' column"
                           + (f" nor the id column '{cfg.data.id_column}'" if cfg.data.id_column else "")
                           + f" (columns: {', '.join(t.column_names)}); add the request id /predict returned")
    if label not in t.column_names:
        raise MonitorError(f"--labels {labels_path} has no label column '{label}' (data.label; columns: "
                           f"{', '.join(t.column_names)}); rename it or set data.label")
    col = t[label]
    ok_type = pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)
    store = Store(cfg.store)
    unknown_classes: list[str] = []
    versions = _versions(store, cfg)
    classes = version_classes(cfg, versions)     # {} unless multiclass
    if task == "multiclass":         # the class as the training data spelled it: text, matched per version
        y = label_text(col)
        known_classes = {c for cs in classes.values() for c in cs or []}
        if known_classes:
            unknown_classes = sorted(set(pc.unique(y.drop_null()).to_pylist()) - known_classes)
        if unknown_classes and not new_classes:
            _refuse_unknown_classes(labels_path, label, y, unknown_classes, known_classes)
        unknown_classes = unknown_classes[:10]
    elif not ok_type:
        raise MonitorError(f"--labels {labels_path}: column '{label}' is {'text' if 'string' in str(col.type) else col.type}, not a number; a {task} label "
                           f"must be numeric ({'0/1 or true/false' if task == 'binary' else 'a number'})")
    else:
        y = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    if task == "binary" and not np.isin(y[np.isfinite(y)], (0.0, 1.0)).all():
        bad = [float(v) for v in sorted(set(y[np.isfinite(y)].tolist()) - {0.0, 1.0})[:5]]
        raise MonitorError(f"--labels {labels_path}: column '{label}' holds {bad} — a binary label must be 0 or 1")
    rid = pc.cast(t[key], pa.string())
    row = pc.cast(t["row"], pa.int64()) if "row" in t.column_names else pa.array(np.zeros(t.num_rows, np.int64))
    if key != "request_id":
        rid, row = _ids_to_requests(Catalog(store, cfg.name).predlog_dir(), key, rid, row)
    clean = pa.table({"request_id": rid, "row": row, label: pa.array(y)})
    keys = pa.table({"k": rid, "r": row}).group_by(["k", "r"]).aggregate([("k", "count")])
    duplicates = int(t.num_rows - keys.num_rows)
    preds = _read_predictions(Catalog(store, cfg.name).predlog_dir(), task, versions, None)
    known = pc.is_in(rid, value_set=pc.unique(preds["request_id"])) if preds.num_rows else pa.array(
        np.zeros(t.num_rows, bool))
    unknown = int(t.num_rows - pc.sum(pc.cast(known, pa.int64())).as_py() or 0)
    # unique per call: two feedback calls within one second (one process) must not overwrite each other
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now or time.time())) + f"-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    dest = Catalog(store, cfg.name).labels_file(stamp)
    store.fs.create_dir(posixpath.dirname(dest), recursive=True)
    with store.fs.open_output_stream(dest) as f:
        pq.write_table(clean, f)
    return {"labels": t.num_rows, "duplicates": duplicates, "unknown_ids": unknown, "stored": dest,
            "key": key, "unknown_classes": unknown_classes, **completeness(cfg, classes=classes)}


def _refuse_unknown_classes(path: str, label: str, y: pa.Array, unknown: list[str], known: set[str]) -> None:
    counts = dict(zip(*[c.to_pylist() for c in pc.value_counts(y.drop_null()).flatten()]))
    shown = []
    for u in unknown[:10]:
        hint = closest(u, known)
        shown.append(f"{u!r} ({counts.get(u, 0)} rows" + (f", did you mean {hint!r}?)" if hint else ")"))
    raise MonitorError(
        f"--labels {path}: column '{label}' holds {len(unknown)} class(es) no version of this pipeline knows: "
        f"{'; '.join(shown)}{' …' if len(unknown) > 10 else ''}. Known classes: {', '.join(sorted(known))}. "
        "Class names are matched exactly (case too): fix the spelling, or pass --new-classes if these classes "
        "are new (their labels then count as wrong answers). Nothing was stored.")


def version_classes(cfg, versions) -> dict[str, list[str] | None]:
    """Each version's class names (its bundle's spec), which multiclass labels are matched by;
    {} for other tasks. A version the registry cannot give is left out (logged): its labels are
    then taken as class codes."""
    if cfg.model.task != "multiclass":
        return {}
    reg, out = Registry(cfg.registry, cfg.store, cfg.name), {}
    for v in versions:
        try:
            out[str(v)] = reg.load_spec(str(v)).classes
        except MlopsError as e:
            log.warning("the classes of version %s are not known (%s); its labels are taken as class codes", v,
                        e.message)
    return out


def _ids_to_requests(root: str, id_column: str, ids: pa.Array, rows: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Labels keyed by the data's id column -> (request_id, row) of the logged predictions whose
    request carried that id; ids no request carried stay as they are (batch scoring logs the id
    as the request id)."""
    log_ = read_log(root)
    if not log_.num_rows or id_column not in {log_.schema.field("inputs").type.field(i).name
                                              for i in range(log_.schema.field("inputs").type.num_fields)}:
        return ids, rows
    logged_ids = pc.cast(log_["inputs"].combine_chunks().field(id_column), pa.string())
    logged = pa.table({"_id": logged_ids, "_rid": log_["request_id"],
                       "_row": pc.cast(log_["row"], pa.int64())}).filter(pc.is_valid(logged_ids))
    # positions in the filtered table (requests without the id are gone): take() reads them there
    logged = logged.append_column("_k", pa.array(np.arange(logged.num_rows)))
    first = logged.group_by("_id", use_threads=False).aggregate([("_k", "min")])["_k_min"]   # a resent id: the first
    logged = logged.take(first).drop_columns(["_k"])
    left = pa.table({"_id": ids, "_i": pa.array(np.arange(len(ids)))})
    j = left.join(logged, keys="_id", join_type="left outer", use_threads=False).sort_by("_i")
    matched = pc.is_valid(j["_rid"])
    return pc.if_else(matched, j["_rid"], ids), pc.if_else(matched, j["_row"], rows)


def _versions(store, cfg) -> list[str]:
    fs, root = filesystem_for(Catalog(store, cfg.name).predlog_dir())
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    ds = pads.dataset(root, filesystem=fs, format="parquet", partitioning=PARTITIONING)
    return [str(v) for v in pc.unique(ds.to_table(columns=["model_version"])["model_version"]).to_pylist()]


def completeness(cfg, since: float | None = None, classes: dict | None = None) -> dict:
    """Per version: logged predictions, how many have labels, and the live metric on those.
    ``classes``: the versions' class names when the caller has them (``version_classes``)."""
    store = Store(cfg.store)
    out = {}
    versions = sorted(_versions(store, cfg), key=lambda s: (len(s), s))
    if classes is None:
        classes = version_classes(cfg, versions)
    for v in versions:
        logged = _read_predictions(Catalog(store, cfg.name).predlog_dir(), cfg.model.task, [v], since).num_rows
        m = live_metric(Catalog(store, cfg.name).predlog_dir(), Catalog(store, cfg.name).labels_dir(), cfg.data.label,
                        cfg.model.task, v, v, since or 0.0, min_rows=1, classes=classes)
        labelled = (m or {}).get("rows", {}).get(v, 0)
        out[v] = {"predictions": logged, "labelled": labelled,
                  "completeness": round(labelled / logged, 4) if logged else 0.0,
                  "metric": (m or {}).get("name"), "value": (m or {}).get("stable")}
    return {"versions": out}
