"""The data plane's stage functions: what the ingest, validate, featurize and reference steps
(``pipeline/steps.py``) call, and the functions that run on Ray workers.

In: the config and the inspected source (``ingest.Source``: paths, schema, fingerprint). Out: a
Ray dataset of the source's rows, a ``ValidationReport``, the featurized splits written to the
store with their ``FeatureSpec``, and the training rows' raw-input profile (the drift reference).

The data is read once per pass: pass 1 computes validation counts (and, for a random split, the
feature fit on the training rows) in one ``map_batches``; a time split needs its cut-offs first,
so its fit is a second pass; the last pass transforms and writes the three splits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_ray.config import Config
from mlops_ray.data import dates
from mlops_ray.data import features as feat
from mlops_ray.data import ingest, validate
from mlops_ray.data.profile import profile_pass
from mlops_ray.errors import DataValidationError
from mlops_ray.monitor.calendar import spec_parts
from mlops_ray.monitor.reference import profile_inputs
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.fs import for_ray
from mlops_ray.storage.store import Store
# Imported where used, for their import cost (python -X importtime): ray 0.7 s.

Progress = Callable[[str, str], None]   # (step, message)


def _noop(step: str, message: str) -> None:
    pass


@dataclass
class DataResult:
    source: dict
    validation: validate.ValidationReport
    spec: feat.FeatureSpec | None = None
    split_rows: dict = field(default_factory=dict)
    out_dir: str | None = None
    timings: dict = field(default_factory=dict)
    key: str | None = None
    cutoffs: tuple | None = None
    cached: bool = False

    def to_dict(self) -> dict:
        return {"source": self.source, "validation": self.validation.to_dict(),
                "features": self.spec.to_dict() if self.spec else None,
                "split_rows": self.split_rows, "out_dir": self.out_dir,
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()}}


# --------------------------------------------------------------------------- steps
def step_ingest(cfg: Config, source: ingest.Source):
    """Read the inspected source: into the object store with plain Ray tasks when it fits
    (later passes reuse the blocks), else as a lazy, streaming read."""
    import ray

    if source.format == "parquet" and _fits_in_memory(source):
        return ingest.read_into_object_store(source, cfg.data, ray.cluster_resources().get("CPU", 1))
    ds = ingest.read_dataset(source, cfg.data)
    if source.format == "csv":
        source.schema = _arrow_schema(ds)   # CSV types are known once Ray has parsed a block
        if _fits_in_memory(source):
            ds = ds.materialize()
    return ds


def step_dates(cfg: Config, source: ingest.Source, ds, progress: Progress = _noop) -> dates.Parsing:
    """How each date-time column stored as text is read (data.datetime_formats, else a format
    inferred from the first rows); the source's schema becomes the parsed one."""
    wanted = dates.date_columns(source.schema, cfg)
    if not wanted:
        return dates.Parsing()
    missing = [c for c in wanted if c not in cfg.data.datetime_formats]
    sample = pa.Table.from_pylist(ds.select_columns(missing).take(dates.SAMPLE_ROWS)) if missing else None
    parsing = dates.resolve(source.schema, cfg, sample)
    for note in parsing.notes():
        progress("validate", note)
    source.schema = dates.parsed_schema(source.schema, parsing.formats)
    return parsing


def step_check_schema(cfg: Config, source: ingest.Source):
    """Checks on the schema alone (required columns, dtypes): before any row is read."""
    static, plan = validate.plan_checks(source.schema, cfg.data, cfg.schema_, cfg.model.task)
    missing = [c for c in static if not c.passed and c.rule == "required"]
    if missing:
        report = validate.ValidationReport(rows=max(source.rows, 0), checks=static, source=source.describe())
        raise DataValidationError(report.summary(), report=report)
    return static, plan


def step_validate(cfg: Config, source: ingest.Source, ds, static, plan, extra: dict | None = None,
                  parsing: dates.Parsing | None = None):
    """Validation counts (+ any extra partials computed in the same pass). Date-times stored as
    text are parsed in the pass (each partial sees timestamps) and their unreadable values counted."""
    fns = {"validate": partial(validate.partial, plan=plan), **(extra or {})}
    formats = parsing.formats if parsing else {}
    if formats:                       # one parse per block, shared by every partial
        both = profile_pass(ds, {"parsed": _Parsed(fns, formats, cfg.schema_.sample_rows)})["parsed"]
        parts = {k: [p[k] for p in both] for k in [*fns, "dates"]}
    else:
        parts = profile_pass(ds, fns)
    merged = validate.merge(parts.pop("validate"), cfg.schema_.sample_rows)
    if parsing:
        static = static + parsing.static_checks()
    bad_dates = dates.merge_failures(parts.pop("dates", []), cfg.schema_.sample_rows)
    if bad_dates:
        static = static + dates.failure_checks(bad_dates, parsing, dates.locate(source, cfg.data, bad_dates,
                                                                               cfg.schema_.sample_rows))
    report = validate.evaluate(merged, plan, cfg.data, cfg.schema_, static,
                               fetch_duplicates=validate.fetch_duplicates_ray(ds))
    if source.rows < 0:
        source.rows = merged["rows"]      # a CSV's rows are known once they are read
    report.source = source.describe()
    return report, parts


def step_featurize(cfg: Config, source: ingest.Source, ds, out_dir: str, test_dir: str, pre: dict,
                   progress: Progress):
    roles = feat.assign_roles(source.schema, cfg.data, cfg.features, declared_categorical(cfg))
    # multiclass: the label's values over every split, from the validation pass
    classes = feat.label_classes(pre["classes"], cfg.data.label) if "classes" in pre else None
    cutoffs = None
    if cfg.data.split.method == "time":
        cutoffs = _exact_cutoffs(ds, cfg, pre["time"])
        progress("featurize", "fitting features on the training split")
        pre = profile_pass(ds, {"fit": partial(fit_train, cfg=cfg, roles=roles, cutoffs=cutoffs,
                                             key_rate=key_rate_of(source))})
    spec = feat.fit_merge([p["fit"] for p in pre["fit"]], roles, cfg.data, cfg.features)
    spec.classes = classes
    split_rows = {name: int(sum(p["splits"][i] for p in pre["fit"])) for i, name in enumerate(feat.SPLITS)}
    progress("featurize", f"writing {sum(split_rows.values()):,} rows as train/valid/test")
    out = ds.map_batches(_transform_batch, fn_kwargs={"cfg": cfg, "spec": spec, "cutoffs": cutoffs},
                         batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
    path, fs = for_ray(out_dir)
    out.write_parquet(path, filesystem=fs, partition_cols=["split"], mode="overwrite")
    if split_rows["test"]:
        # the gate scores each model's own features on the raw test rows: kept here, so evaluate never
        # re-reads a source that may have changed (or been renamed) since its fingerprint was taken
        raw = ds.map_batches(_raw_test_batch, fn_kwargs={"cfg": cfg, "cutoffs": cutoffs},
                             batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
        path, fs = for_ray(test_dir)
        raw.write_parquet(path, filesystem=fs, mode="overwrite")
    return spec, split_rows, cutoffs, pre["fit"]


def _exact_cutoffs(ds, cfg: Config, sketches) -> tuple[int, int]:
    """The time split's cut-offs, exact: brackets from the sketches of the validation pass, then one
    pass over the time column that counts below each bracket and keeps the times inside it (about 2 %
    of them); a bracket that missed (the sketch erred by more than its margin) is widened."""
    feat.time_cutoffs(sketches, cfg.data)              # no time at all: the error names the column
    for margin in (0.01, 0.1, 1.0):
        brackets = feat.time_brackets(sketches, cfg.data, margin)
        parts = profile_pass(ds.select_columns([cfg.data.time_column]),
                             {"rank": partial(feat.time_rank_partial, time_column=cfg.data.time_column,
                                            brackets=brackets)})["rank"]
        cut = feat.exact_time_cutoffs(parts, cfg.data)
        if cut is not None:
            return cut
    raise AssertionError("the whole time range brackets every cut-off")   # pragma: no cover


def step_reference(cfg: Config, ds, spec: feat.FeatureSpec, cutoffs) -> dict:
    """The raw-input reference profile of the training rows (``monitor/reference.py``; the monitor
    compares prediction-log windows with it): two mergeable passes, sketches then counts."""
    return profile_inputs(ds, spec.input_types, cfg.monitor, profile_pass,
                          wrap=lambda fn: partial(_on_train, cfg=cfg, cutoffs=cutoffs, partial_fn=fn),
                          dt_parts=spec_parts(spec))


# --------------------------------------------------------------------------- the data plane
def inspect(cfg: Config, progress: Progress = _noop) -> ingest.Source:
    """The source on metadata only (paths, footers, fingerprint): no Ray, no row read. Every column
    name the config lists is checked against it here, before any cache is trusted."""
    progress("ingest", f"reading {', '.join(cfg.data.sources)}")
    source = ingest.inspect_source(cfg.data)
    validate.check_config_columns(source.schema.names, cfg)
    return source


def load_data_result(store: Store, cfg: Config, key: str) -> DataResult:
    src = store.read_json(Catalog(store, cfg.name).source_record(key))
    val = store.read_json(Catalog(store, cfg.name).validation(key))
    report = validate.ValidationReport(rows=val["rows"], checks=[validate.CheckResult(**c) for c in val["checks"]],
                                       source=val.get("source", {}))
    spec = feat.FeatureSpec.from_dict(store.read_json(Catalog(store, cfg.name).feature_spec(key)))
    cut = src.get("time_cutoffs")
    cutoffs = tuple(int(np.datetime64(c, "ns").astype(np.int64)) for c in cut) if cut else None
    return DataResult(source=src, validation=report, spec=spec, split_rows=src["split_rows"],
                      out_dir=Catalog(store, cfg.name).data_dir(key, uri=True),
                      timings={}, key=key, cutoffs=cutoffs, cached=True)


# --------------------------------------------------------------------------- helpers (run on workers)
class _Parsed:
    """Partial functions that see the block with its text date-times parsed (once), and the
    count of the values their format does not read (under "dates")."""

    def __init__(self, fns: dict, formats: dict, k: int):
        self.fns, self.formats, self.k = fns, formats, k

    def __call__(self, table) -> dict:
        parsed = dates.parse_table(table, self.formats)
        return {"dates": dates.failure_partial(table, self.formats, self.k, parsed),
                **{key: fn(parsed) for key, fn in self.fns.items()}}


TRAIN_KEYS = 1_000_000      # training-row keys kept for the gate's overlap check (8 bytes each); beyond, a sample


def fit_train(table: pa.Table, cfg: Config, roles: feat.Roles, cutoffs, key_rate: float = 1.0) -> dict:
    all_keys = feat.row_keys(table, cfg.data)                 # hashed once: the split and the gate's keys
    codes = feat.split_codes(table, cfg.data, cutoffs, keys=all_keys)
    train = table.filter(pa.array(codes == 0))
    keys = all_keys[codes < 2]                                 # the rows a model of this data learns from
    if key_rate < 1.0:
        keys = keys[keys < np.uint64(key_rate * 2.0 ** 64)]
    return {"splits": np.bincount(codes, minlength=3).tolist(),
            "fit": feat.fit_partial(train, roles, cfg.features), "keys": keys}


def key_rate_of(source: ingest.Source) -> float:
    """The share of training-row keys kept: all of them up to TRAIN_KEYS rows."""
    return 1.0 if source.rows < 0 or source.rows <= TRAIN_KEYS else TRAIN_KEYS / source.rows


def write_train_keys(store: Store, path: str, parts: list[dict], rate: float) -> None:
    """The keys of the training (and validation) rows, sorted, with the share of keys kept: what the
    gate checks a champion's test rows against (``train/evaluate.champion_overlap``)."""
    keys = np.unique(np.concatenate([p["keys"] for p in parts])) if parts else np.empty(0, np.uint64)
    table = pa.table({"key": pa.array(keys, pa.uint64())}).replace_schema_metadata({"rate": repr(rate)})
    with store.fs.open_output_stream(path) as f:
        pq.write_table(table, f)


def _on_train(table: pa.Table, cfg: Config, cutoffs, partial_fn):
    return partial_fn(table.filter(pa.array(feat.split_codes(table, cfg.data, cutoffs) == 0)))


def _raw_test_batch(table: pa.Table, cfg: Config, cutoffs) -> pa.Table:
    return table.filter(pa.array(feat.split_codes(table, cfg.data, cutoffs) == 2))


def _transform_batch(table: pa.Table, cfg: Config, spec: feat.FeatureSpec, cutoffs):
    codes = feat.split_codes(table, cfg.data, cutoffs)
    df = feat.frame(table.select([c for c in spec.input_columns if c in table.column_names]))
    out = feat.transform(df, spec)
    out[cfg.data.label] = feat.label_codes(table.column(cfg.data.label), spec.classes)
    out["split"] = np.asarray(feat.SPLITS)[codes]
    # typed, not inferred: a block whose column is all missing (a file without it) must not write a null type
    return pa.Table.from_pandas(out, preserve_index=False, schema=pa.schema(
        [pa.field(c, pa.float32()) for c in spec.output_columns]
        + [pa.field(cfg.data.label, pa.float32()), pa.field("split", pa.string())]))


def declared_categorical(cfg: Config) -> set[str]:
    """Columns the schema declares categorical (integer codes among them are categories, not numbers)."""
    return {c for c, rule in cfg.schema_.columns.items() if rule.dtype == "categorical"}


def parse_dates(ds, source: ingest.Source, formats: dict):
    """The dataset with its date-times stored as text parsed, once (kept in the object store when
    it fits, so later passes do not parse again)."""
    if not formats:
        return ds
    ds = ds.map_batches(dates.parse_table, fn_kwargs={"formats": formats}, batch_format="pyarrow",
                        batch_size=None, zero_copy_batch=True)
    return ds.materialize() if _fits_in_memory(source) else ds


def _fits_in_memory(source: ingest.Source) -> bool:
    import ray

    store_bytes = ray.available_resources().get("object_store_memory", 0)
    est = source.bytes * (4 if source.format == "parquet" else 1.5)
    return est < 0.3 * store_bytes


def _arrow_schema(ds) -> pa.Schema:
    s = ds.schema()
    if s is None:
        return pa.schema([])
    return pa.schema([pa.field(n, t if isinstance(t, pa.DataType) else pa.string())
                      for n, t in zip(s.names, s.types)])
