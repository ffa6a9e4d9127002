"""Batch scoring: a registered model version over a data set, on Ray Data.

In: the pipeline config, the data to score (a file, directory, glob or URI; Parquet or CSV,
read with the format and CSV options of ``data:`` by the same ingest code the pipeline
uses; the label may be absent), an output directory (local path or URI) and a model
reference (a version number, an alias such as ``champion``, ``models:/NAME/VERSION``).

Out: Parquet part files under ``out``, one row per input row, in no particular order (join
on the id column, or on ``row``):

- the id column (``data.id_column``), when the input has it; else ``row`` (int64), the row's
  position in the input (files in path order, rows in file order, from 0);
- the input columns named in ``keep`` (``--keep``), as they are in the input;
- ``prediction`` (float64): probability of the positive class (binary) or the value
  (regression); for multiclass the argmax class (int64), plus ``p_<class>`` (float64) per
  class, named by the class (``p_rain``; see ``proba_columns``);
- ``label`` (bool, binary only): the prediction at the version's decision threshold (its newest,
  ``thresholds.current``: re-chosen by ``feedback``, else the one it was registered with);
- ``model_version`` (string).

With ``log=True`` the scored rows are also appended to the prediction log
``{store}/{name}/predlog/`` in the serving layout and schema (``monitor.predlog``:
``date=YYYY-MM-DD/hour=HH/part-*.parquet``, fields request_id, row, ts, model_version,
inputs, prediction; ``inputs`` holds the id column too when it is not a model input, as the
replicas log it), so the drift monitor and the label join read batch traffic like online
traffic. ``request_id`` is the id column's value as a string (so labels keyed by the id
join), else ``batch-{run token}-{global row index}`` (the row's position in the input: files
in path order, rows in file order); ``row`` is 0; ``ts`` is the time the row's batch was
scored. The Scorer actors write these files themselves, one per batch and UTC hour, each
under a unique name; the driver never holds the rows.

Returns a summary dict: rows, seconds, rows_per_s, version, model, task, out, logged (rows
appended to the log), input (files, format, fingerprint), actors, batch_size.

Nothing is written before every check has passed: the reference resolves and its bundle
loads (RegistryError, exit 6), the input is readable (DataSourceError, exit 3) and has
every input column of the model's FeatureSpec (DataValidationError, exit 3, naming the
columns and the file; extra columns are ignored), and ``out`` is empty or ``overwrite``
is set (exit 3, as ``data synth --out`` does). A failure while scoring can leave part
files under ``out`` (and, with ``log``, records of the batches already scored, which
``read_log`` de-duplicates if the run is repeated).
"""
from __future__ import annotations

import json
import math
import os
import posixpath
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from mlops_ray.config import Config
from mlops_ray.data import dates, ingest
from mlops_ray.data.features import FeatureSpec, frame, transform
from mlops_ray.data.validate import CheckResult, ValidationReport
from mlops_ray.errors import ConfigError, DataSourceError, DataValidationError, did_you_mean
from mlops_ray.monitor import predlog, thresholds
from mlops_ray.monitor.predlog import COERCE, KIND_TYPES, check_input_types, log_id_column
from mlops_ray.registry import Registry
from mlops_ray.registry.bundle import predict_features
from mlops_ray.runtime import ray_runtime
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.fs import filesystem_for
from mlops_ray.storage.store import Store
# Imported where used, for their import cost (python -X importtime): ray 0.7 s, xgboost 1.4 s.

Progress = Callable[[str, str], None]   # (step, message), as in pipeline/runner.py
STEP = "predict"
ROW_INDEX = "__mlops_row_index__"      # global row index, added when the input has no id column
ROW = "row"                             # the output's name for it
MAX_BATCH_ROWS = 131_072                # as Ray Data's own Arrow batches
MIN_BATCH_ROWS = 1024
ROWS_PER_ACTOR = 500_000               # default pool size: about one actor per this many rows
BATCHES_PER_ACTOR = 2                  # smaller batches than rows / actors: the pool stays busy to the end


def _noop(step: str, message: str) -> None:
    pass


def predlog_root(cfg: Config) -> str:
    """Where the serving replicas (and batch scoring with ``log``) write the prediction log: an
    absolute path or URI, so that the actors find it whatever their working directory."""
    return Catalog(cfg.store, cfg.name).predlog_dir()


# --------------------------------------------------------------------------- the API
def batch_predict(cfg: Config, data: str, out: str, ref: str = "champion", *, log: bool = False,
                  overwrite: bool = False, batch_size: int | None = None, concurrency: int | None = None,
                  keep: list[str] | None = None, verbose: bool = False, progress: Progress | None = _noop) -> dict:
    """Score ``data`` with model ``ref`` into Parquet under ``out``; see the module docstring.

    ``batch_size`` (rows per batch) and ``concurrency`` (Scorer actors, one CPU each) default
    to values derived from the row count and the cluster's CPUs.
    """

    progress = progress or _noop
    t0 = time.perf_counter()
    registry = Registry(cfg.registry, cfg.store, cfg.name)
    version = registry.resolve(ref)
    bundle = registry.load_bundle(version)           # once, on the driver
    spec, task = bundle.spec, bundle.task
    metadata = bundle.metadata
    if task == "binary":            # the version's newest decision threshold (re-chosen by feedback)
        current = thresholds.current(Store(cfg.store), cfg.name, version, metadata)
        metadata = {**metadata, "threshold": {**(metadata.get("threshold") or {}), "value": current}}
    progress(STEP, f"model {registry.model_name} version {version} ({task}, "
                   f"{len(spec.input_columns)} input columns"
                   + (f", decision threshold {metadata['threshold']['value']:.4f}" if task == "binary" else "") + ")")

    # the label is not needed; files may differ in columns the model does not read (check_inputs
    # names a file that lacks one it does)
    data_cfg = cfg.data.model_copy(update={"source": data, "columns": None, "missing_columns": "null",
                                           "label_expr": None, "unlabelled": "fail"})   # traffic has no label
    source = ingest.inspect_source(data_cfg)
    check_inputs(source, spec.input_columns, data, version)
    id_col = cfg.data.id_column if cfg.data.id_column in source.schema.names else None
    keep = check_keep(keep or [], source, data, output_columns(bundle, id_col))
    out_fs, out_path = filesystem_for(out)
    existing = check_out(out_fs, out_path, out, overwrite, source)
    columns = list(dict.fromkeys(([id_col] if id_col else []) + spec.input_columns + keep))
    read_cfg = data_cfg.model_copy(update={"columns": columns})
    run_token = secrets.token_hex(4)
    log_root, log_types = None, None
    if log:                           # the replicas' columns: the inputs, and the id when it is not one
        log_types = check_input_types({**spec.input_types, **{c: "string" for c in log_id_column(cfg, bundle)}})
        log_root = predlog_root(cfg)

    with ray_runtime(cfg.ray, verbose=verbose) as rt:
        import ray

        from mlops_ray.pipeline import step_ingest

        payload = ray.put({"model": bytes(bundle.booster.save_raw("ubj")), "spec": spec.to_dict(),
                           "metadata": metadata, "version": version, "classes": num_classes(bundle)})
        if id_col is None:            # the row's position: the key the output is joined back by
            ds = read_with_row_index(source, read_cfg, rt.num_cpus)
        else:                     # the pipeline's ingest: into the object store when it fits, else streaming
            ds = step_ingest(cfg.model_copy(update={"data": read_cfg}), source)
        try:
            blocks = ds.num_blocks()          # known when the input is in the object store
        except NotImplementedError:
            blocks = None
        local = rt.num_nodes == 1 and not cfg.ray.address          # Ray on this machine only
        actors = concurrency or default_actors(rt.num_cpus, source.rows, blocks, os.cpu_count() if local else None)
        rows_per_batch = batch_size or default_batch_size(source.rows, actors)
        what = f"{source.rows:,} rows" if source.rows >= 0 else "rows"
        progress(STEP, f"scoring {what} from {len(source.files)} {source.format} file(s) with {actors} "
                       f"actor(s), {rows_per_batch:,} rows per batch")
        if existing:
            out_fs.delete_dir_contents(out_path)
        t_log = time.time()
        scored = ds.map_batches(
            Scorer, fn_constructor_kwargs={"model": [payload], "id_column": id_col, "log_root": log_root,
                                           "log_types": log_types, "run_token": run_token, "keep": keep},
            concurrency=actors, batch_size=rows_per_batch, batch_format="pyarrow", num_cpus=1,
            **restarts(local))
        scored.write_parquet(out_path, filesystem=out_fs)
        t_end = time.time()
        del payload

    rows = count_rows(out_fs, out_path)
    logged = count_logged(log_root, run_token, t_log, t_end) if log else 0
    seconds = time.perf_counter() - t0
    progress(STEP, f"wrote {rows:,} predictions to {out}" + (f"; logged {logged:,} rows to {log_root}" if log else ""))
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1) if seconds else None,
            "version": version, "model": registry.model_name, "task": task, "out": out,
            "logged": logged, "log": log_root, "run_token": run_token,
            "threshold": (metadata.get("threshold") or {}).get("value") if task == "binary" else None,
            "input": {"source": data, "format": source.format, "files": len(source.files),
                      "fingerprint": source.fingerprint},
            "actors": actors, "batch_size": rows_per_batch}


def restarts(local: bool) -> dict:
    """Restart options of the Scorer actors. Ray Data 2.60 creates every actor of a pool with its
    constructor arguments in the object store (its DataContext and map transformer are ObjectRefs)
    and, by default, ``max_restarts=-1``; the driver's core worker then logs, at ERROR level, that a
    restart could fail ("has constructor arguments in the object store and max_restarts > 0"), and
    Ray copies every ERROR line of the driver's C++ log to its stderr whatever ``log_to_driver`` and
    the Python log levels say: the user saw Ray's line among the progress. On a local Ray a Scorer
    dies only with its process (an out-of-memory kill or a crash a restart would repeat): no
    restarts, so the run fails with the cause and a rerun with ``--overwrite`` redoes it (the log
    de-duplicates). On a cluster, where a node can go away under a long run, Ray Data's restarts stay."""
    return {"max_restarts": 0} if local else {}


def proba_columns(classes: list[str] | None, k: int) -> list[str]:
    """The output's class-probability columns: ``p_<class>`` with the class name made a plain
    identifier (``light rain`` -> ``p_light_rain``); ``p_<k>_<name>`` for every class when two
    names would be the same column (``Rain`` and ``rain``), ``p_<k>`` without class names."""
    if not classes or len(classes) != k:
        return [f"p_{i}" for i in range(k)]
    names = [re.sub(r"\W+", "_", str(c)).strip("_") or "_" for c in classes]
    if len({n.lower() for n in names}) < len(names):
        return [f"p_{i}_{n}" for i, n in enumerate(names)]
    return [f"p_{n}" for n in names]


def output_columns(bundle, id_col: str | None) -> list[str]:
    """The columns batch scoring writes (before the kept input columns)."""
    cols = [id_col or ROW, "prediction"]
    if bundle.task == "multiclass":
        cols += proba_columns(bundle.spec.classes, num_classes(bundle)) + (["label"] if bundle.spec.classes else [])
    elif bundle.task == "binary":
        cols.append("label")
    return cols + ["model_version"]


def check_keep(keep: list[str], source: ingest.Source, data: str, taken: list[str]) -> list[str]:
    """The input columns ``--keep`` names: each in the input, none named like an output column."""
    names = source.schema.names
    for c in keep:
        if c not in names:
            raise ConfigError(f"--keep names column {c!r}, which is not in {data!r}{did_you_mean(c, names)}"
                              f"; its columns: {', '.join(names[:30])}")
        if c in taken:
            raise ConfigError(f"--keep names column {c!r}, which the predictions already have (their columns: "
                              f"{', '.join(taken)}); rename it in the input or leave it out of --keep")
    return list(dict.fromkeys(keep))


def num_classes(bundle) -> int:
    """Classes of a multiclass booster (0 otherwise), so that every batch has the same p_<k> columns."""
    if bundle.task != "multiclass":
        return 0
    learner = json.loads(bundle.booster.save_config())["learner"]
    return int(learner["learner_model_param"]["num_class"])


def default_actors(cluster_cpus: float, rows: int, blocks: int | None = None, cores: int | None = None) -> int:
    """Scorer actors: one per CPU but one (kept for the read and write tasks: an actor pool holding
    every CPU starves them), at most one per physical core when Ray runs on this machine alone
    (``cores``; the embedded Ray has twice as many logical CPUs as cores), one per
    ROWS_PER_ACTOR rows (an actor costs seconds of CPU to start: it imports Ray Data, pandas and
    XGBoost), and no more than ``blocks`` when the input is already split (an actor task takes
    whole blocks)."""
    most = max(1, int(cluster_cpus) - 1)
    if cores:
        most = min(most, cores)
    if rows >= 0:
        most = min(most, max(1, math.ceil(rows / ROWS_PER_ACTOR)))
    if blocks:
        most = min(most, blocks)
    return most


def default_batch_size(rows: int, actors: int) -> int:
    """About BATCHES_PER_ACTOR batches per actor, between MIN_BATCH_ROWS and MAX_BATCH_ROWS."""
    if rows < 0:                      # CSV: unknown before reading
        return MAX_BATCH_ROWS // 2
    return int(min(MAX_BATCH_ROWS, max(MIN_BATCH_ROWS, math.ceil(rows / (actors * BATCHES_PER_ACTOR)))))


# --------------------------------------------------------------------------- checks (before writing)
def check_inputs(source: ingest.Source, needed: list[str], data: str, version: str) -> None:
    """Every input column of the model is in every input file; raises DataValidationError."""

    if source.format == "parquet" and len(source.files) > 1:
        def names(entry):
            with source.filesystem.open_input_file(entry.path) as f:
                return entry.path, pq.read_schema(f).names
        with ThreadPoolExecutor(max_workers=min(16, len(source.files))) as pool:
            per_file = list(pool.map(names, source.files))
    else:                             # one Parquet file, or CSVs (inspect_source checked they share a header)
        per_file = [(source.files[0].path, source.schema.names)]
    bad = [(path, [c for c in needed if c not in cols]) for path, cols in per_file]
    bad = [(path, missing) for path, missing in bad if missing]
    if not bad:
        return
    missing = list(dict.fromkeys(c for _, m in bad for c in m))
    where = bad[0][0] + (f" (and {len(bad) - 1} more of the {len(per_file)} files)" if len(bad) > 1 else "")
    checks = [CheckResult(c, "required", False, observed="missing", threshold="present",
                          message=f"input column '{c}' of model version {version} is missing from {where}; "
                                  f"add it to the data to score (extra columns are ignored)")
              for c in missing]
    report = ValidationReport(rows=max(source.rows, 0), checks=checks, source=source.describe())
    raise DataValidationError(f"cannot score {data!r}: input column(s) {', '.join(missing)} of model version "
                              f"{version} are missing from {where}; the model needs {', '.join(needed)}",
                              report=report)


def check_out(fs: pafs.FileSystem, path: str, out: str, overwrite: bool, source: ingest.Source) -> bool:
    """``out`` must be a directory that is empty or absent, unless ``overwrite``; True if it has files
    (to delete once every check has passed). Never a directory holding the input."""
    root = path.rstrip("/")
    inputs = [e.path.rstrip("/") for e in source.files]
    if any(p == root or p.startswith(root + "/") for p in inputs):
        raise ConfigError(f"--out {out!r} contains the data being scored; write the predictions elsewhere")
    for uri in source.uris:           # a directory of input: the predictions would be read with it next time
        d = filesystem_for(uri)[1].rstrip("/")
        if root.startswith(d + "/") and source.filesystem.get_file_info(d).type == pafs.FileType.Directory:
            raise ConfigError(f"--out {out!r} is inside the input directory {uri!r}; write the predictions elsewhere")
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise DataSourceError(f"--out {out!r} is a file; give a directory to write the predictions into")
    if info.type != pafs.FileType.Directory:
        return False
    has_files = bool(fs.get_file_info(pafs.FileSelector(path, recursive=False)))
    if has_files and not overwrite:
        raise DataSourceError(f"--out {out!r} is not empty; pass --overwrite (overwrite=True) to replace its "
                              "contents, or choose a new directory")
    return has_files


# --------------------------------------------------------------------------- the pieces that run in Ray
def read_with_row_index(source: ingest.Source, cfg, num_cpus: float):
    """The input as a Dataset with ROW_INDEX = each row's position in it (files in path order, rows
    in file order). Ray Data does not say where a batch starts, so plain Ray tasks read it (Parquet:
    runs of row groups, as ``ingest.read_into_object_store``, offsets from the footers; CSV: one task
    per file, offsets from their row counts) into the object store. Only used to log rows that
    have no id column."""
    import ray

    if source.format == "parquet":
        target = int(min(max(source.rows / max(2 * num_cpus, 1), 128_000), 1_000_000))
        groups = {e.path: e.row_groups for e in source.files}
        read = ray.remote(num_cpus=1)(_read_parquet_indexed)
        refs, offset = [], 0
        for path, rgs in ingest.read_units(source, target):
            refs.append(read.remote(path, rgs, cfg.columns, source.filesystem, offset))
            offset += sum(groups[path][i] for i in rgs)
        return ray.data.from_arrow_refs(refs)
    read = ray.remote(num_cpus=1, num_returns=2)(_read_csv_file)
    tables, counts = zip(*[read.remote(e.path, cfg, source.filesystem) for e in source.files])
    add = ray.remote(num_cpus=1)(_add_row_index)
    offsets = np.concatenate([[0], np.cumsum(ray.get(list(counts)))])
    return ray.data.from_arrow_refs([add.remote(t, int(o)) for t, o in zip(tables, offsets)])


def _add_row_index(table: pa.Table, offset: int) -> pa.Table:
    return table.append_column(ROW_INDEX, pa.array(np.arange(offset, offset + table.num_rows, dtype=np.int64)))


def _read_parquet_indexed(path: str, row_groups: list[int], columns, filesystem, offset: int) -> pa.Table:
    return _add_row_index(ingest.read_row_groups(path, row_groups, columns, filesystem), offset)


def _read_csv_file(path: str, cfg, filesystem) -> tuple[pa.Table, int]:
    parse, convert = ingest._csv_options(cfg)
    with filesystem.open_input_stream(path) as f:
        table = pacsv.read_csv(f, parse_options=parse, convert_options=convert)
    return table, table.num_rows


class Scorer:
    """A Ray Data actor: builds the booster (``nthread`` = the actor's CPUs) and FeatureSpec once
    from the bytes the driver put in the object store, scores pandas batches with the transform
    serving uses, and optionally appends them to the prediction log."""

    def __init__(self, model, id_column: str | None, log_root: str | None = None,
                 log_types: dict[str, str] | None = None, run_token: str = "", keep: list[str] | None = None):
        import ray
        import xgboost as xgb


        ref = model[0] if isinstance(model, (list, tuple)) else model
        payload = ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        self.nthread = max(1, int(round(cpus)))
        self.booster = xgb.Booster()
        self.booster.load_model(bytearray(payload["model"]))
        self.booster.set_param({"nthread": self.nthread})
        self.spec = FeatureSpec.from_dict(payload["spec"])
        self.version = str(payload["version"])
        task = payload["metadata"].get("task", "binary")
        self.multiclass, self.binary = task == "multiclass", task == "binary"
        self.threshold = float((payload["metadata"].get("threshold") or {}).get("value", 0.5))
        self.classes = int(payload.get("classes") or 0)
        self.class_names = self.spec.classes
        self.proba_columns = proba_columns(self.class_names, self.classes)
        self.id_column = id_column
        self.keep = list(keep or [])
        self.log = None
        if log_root:
            self.log = _BatchLog(log_root, log_types or self.spec.input_types, self.multiclass, run_token)

    def __call__(self, batch) -> pa.Table:

        raw = batch
        if isinstance(batch, pa.Table) and self.spec.datetime_formats:
            batch = dates.parse_table(batch, self.spec.datetime_formats)   # text dates, read as training read them
        df = frame(batch) if isinstance(batch, pa.Table) else batch

        n = len(df)
        p = predict_features(self.booster, transform(df, self.spec), self.spec) if n else np.empty(0)
        cols: dict[str, pa.Array] = {}
        if self.id_column:
            cols[self.id_column] = pa.Array.from_pandas(df[self.id_column])
        elif ROW_INDEX in df.columns:
            cols[ROW] = pa.array(df[ROW_INDEX].to_numpy(), pa.int64())
        for c in self.keep:
            cols[c] = raw.column(c) if isinstance(raw, pa.Table) else pa.Array.from_pandas(raw[c])
        if self.multiclass:
            p = np.asarray(p, dtype=np.float64).reshape(n, -1) if n else np.empty((0, self.classes))
            cols["prediction"] = pa.array(p.argmax(axis=1) if n else np.empty(0, np.int64), pa.int64())
            for k in range(p.shape[1]):
                cols[self.proba_columns[k]] = pa.array(p[:, k], pa.float64())
            if self.class_names:          # the class each prediction names (p_<k> is classes[k])
                cols["label"] = pa.array(np.asarray(self.class_names, dtype=object)[p.argmax(axis=1)] if n else [],
                                         pa.string())
        else:
            cols["prediction"] = pa.array(np.asarray(p, dtype=np.float64).reshape(-1), pa.float64())
            if self.binary:          # the bundle's decision threshold (model.threshold)
                cols["label"] = pa.array(np.asarray(p, dtype=np.float64).reshape(-1) >= self.threshold, pa.bool_())
        cols["model_version"] = pa.array([self.version] * n, pa.string())
        if self.log is not None and n:
            self.log.write(df, p, self.version, self.id_column)
        return pa.table(cols)


class _BatchLog:
    """Writes scored batches as prediction-log Parquet files, exactly as the replicas' log does."""

    def __init__(self, root: str, input_types: dict[str, str], multiclass: bool, run_token: str):

        self.writer = predlog.TableWriter(root, owner=f"batch-{run_token}")
        self.input_types = dict(input_types)
        self.multiclass = multiclass
        self.schema = predlog.log_schema(self.input_types, multiclass)
        self.run_token = run_token
        self.token = secrets.token_hex(4)
        self.seq = 0

    def table(self, df: pd.DataFrame, p: np.ndarray, version: str, id_column: str | None,
              ts_us: int) -> pa.Table:
        n = len(df)
        struct_t = self.schema.field("inputs").type
        inputs = pa.StructArray.from_arrays([_log_column(df, c, k) for c, k in self.input_types.items()],
                                            fields=list(struct_t))
        if self.multiclass:
            p = np.asarray(p, dtype=np.float64).reshape(n, -1)
            k = p.shape[1]
            pred = pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
                                            pa.array(p.reshape(-1), pa.float64()))
        else:
            pred = pa.array(np.asarray(p, dtype=np.float64).reshape(-1), pa.float64())
        return pa.Table.from_arrays([
            self.request_ids(df, id_column), pa.array(np.zeros(n, np.int32)),
            pa.array(np.full(n, ts_us, np.int64)).cast(self.schema.field("ts").type),
            pa.array([version] * n, pa.string()), inputs, pred], schema=self.schema)

    def request_ids(self, df: pd.DataFrame, id_column: str | None) -> pa.Array:
        prefix = f"batch-{self.run_token}-"
        if id_column is None:
            return pa.array([f"{prefix}{i}" for i in df[ROW_INDEX].to_numpy()], pa.string())
        ids = _arrow(df[id_column])
        try:
            ids = ids.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            ids = pa.array([None if v is None else str(v) for v in ids.to_pylist()], pa.string())
        if ids.null_count:            # rows without an id: unique, but not joinable to labels
            self.seq += 1
            fill = [f"{prefix}{self.token}{self.seq:06d}-{i}" for i in range(len(ids))]
            ids = pa.array([v if v is not None else fill[i] for i, v in enumerate(ids.to_pylist())], pa.string())
        return ids

    def write(self, df: pd.DataFrame, p: np.ndarray, version: str, id_column: str | None) -> int:
        ts_us = int(time.time() * 1_000_000)
        return self.writer.write(self.table(df, p, version, id_column, ts_us))


def _arrow(s: pd.Series) -> pa.Array:
    """A pandas column as one Arrow array, dictionaries decoded (arrow-backed pandas columns come
    back as chunked arrays)."""
    arr = pa.Array.from_pandas(s)
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    chunks = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in chunks]
    if len(chunks) == 1:
        return chunks[0]
    return pa.concat_arrays(chunks) if chunks else pa.array([], arr.type)


def _log_column(df: pd.DataFrame, col: str, kind: str) -> pa.Array:
    """One input column typed for the log: an Arrow cast when the data has the training type (the
    common case), else value by value with the coercion the replicas' log applies."""

    target = KIND_TYPES[kind]
    if col not in df.columns:         # the id column, when the data has none: null, as in a request without it
        return pa.nulls(len(df), target)
    s = df[col]
    try:
        arr = _arrow(s)
        if kind in ("int", "float", "numeric", "bool") and not (
                pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type)):
            raise TypeError(f"{arr.type} is not numeric")      # strings: per value, like the replicas
        if kind == "datetime" and not (pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type)):
            raise TypeError(f"{arr.type} is not a timestamp")
        if pa.types.is_floating(arr.type) and kind in ("int", "bool"):
            raise TypeError("float to int/bool: per value")    # 1.5 -> null, not an error
        return arr.cast(target)
    except (TypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        coerce = COERCE[kind]
        values = s.astype(object).where(s.notna(), None).tolist()
        return pa.array([coerce(v) for v in values], type=target)


# --------------------------------------------------------------------------- counting what was written
def _parquet_rows(fs: pafs.FileSystem, infos: list[pafs.FileInfo]) -> int:
    def rows(info):
        with fs.open_input_file(info.path) as f:
            return pq.ParquetFile(f).metadata.num_rows
    if not infos:
        return 0
    with ThreadPoolExecutor(max_workers=min(16, len(infos))) as pool:
        return sum(pool.map(rows, infos))


def count_rows(fs: pafs.FileSystem, path: str) -> int:
    """Rows in the Parquet files under ``path`` (footers only)."""
    infos = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
             if i.type == pafs.FileType.File and i.path.endswith(".parquet")
             and not posixpath.basename(i.path).startswith((".", "_"))]
    return _parquet_rows(fs, infos)


def count_logged(root: str, run_token: str, t_start: float, t_end: float) -> int:
    """Rows this run wrote to the prediction log (its files in the hours it ran)."""

    return _parquet_rows(*predlog.written_files(root, f"batch-{run_token}", t_start, t_end))
