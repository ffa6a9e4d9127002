"""The pipeline, read top to bottom like the diagram in DESIGN.md.

    ingest ─ validate ─ featurize  →  (later issues: tune ─ evaluate ─ gate ─ register ─ rollout)

Each step calls one stage function. The data plane reads the data once per pass:
pass 1 computes validation counts (and, for a random split, the feature fit on the
training rows) in one ``map_batches``; a time split needs its cut-offs first, so its fit
is a second pass; the last pass transforms and writes the three splits.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from mlops_ray.config import Config
from mlops_ray.data import features as feat
from mlops_ray.data import ingest, validate
from mlops_ray.data.profile import profile_pass
from mlops_ray.errors import DataValidationError
from mlops_ray.runtime import ray_runtime
from mlops_ray.store import Store

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

    def to_dict(self) -> dict:
        return {"source": self.source, "validation": self.validation.to_dict(),
                "features": self.spec.to_dict() if self.spec else None,
                "split_rows": self.split_rows, "out_dir": self.out_dir,
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()}}


# --------------------------------------------------------------------------- steps
def step_ingest(cfg: Config):
    source = ingest.inspect_source(cfg.data)
    ds = ingest.read_dataset(source, cfg.data)
    if source.format == "csv":
        source.schema = _arrow_schema(ds)   # CSV types are known once Ray has parsed a block
    return source, ds


def step_check_schema(cfg: Config, source: ingest.Source):
    """Checks on the schema alone (required columns, dtypes): before any row is read."""
    static, plan = validate.plan_checks(source.schema, cfg.data, cfg.schema_, cfg.model.task)
    missing = [c for c in static if not c.passed and c.rule == "required"]
    if missing:
        report = validate.ValidationReport(rows=max(source.rows, 0), checks=static, source=source.describe())
        raise DataValidationError(report.summary(), report=report)
    return static, plan


def step_validate(cfg: Config, source: ingest.Source, ds, static, plan, extra: dict | None = None):
    """Validation counts (+ any extra partials computed in the same pass)."""
    fns = {"validate": _bind(validate.partial, plan=plan), **(extra or {})}
    parts = profile_pass(ds, fns)
    merged = validate.merge(parts.pop("validate"), cfg.schema_.sample_rows)
    report = validate.evaluate(merged, plan, cfg.data, cfg.schema_, static,
                               fetch_duplicates=validate.fetch_duplicates_ray(ds))
    report.source = source.describe()
    return report, parts


def step_featurize(cfg: Config, source: ingest.Source, ds, out_dir: str, pre: dict, progress: Progress):
    roles = feat.assign_roles(source.schema, cfg.data, cfg.features)
    cutoffs = None
    if cfg.data.split.method == "time":
        cutoffs = feat.time_cutoffs(pre["time"], cfg.data)
        progress("featurize", "fitting features on the training split")
        pre = profile_pass(ds, {"fit": _bind(_fit_train, cfg=cfg, roles=roles, cutoffs=cutoffs)})
    spec = feat.fit_merge([p["fit"] for p in pre["fit"]], roles, cfg.data, cfg.features)
    split_rows = {name: int(sum(p["splits"][i] for p in pre["fit"])) for i, name in enumerate(feat.SPLITS)}
    progress("featurize", f"writing {sum(split_rows.values()):,} rows as train/valid/test")
    out = ds.map_batches(_transform_batch, fn_kwargs={"cfg": cfg, "spec": spec, "cutoffs": cutoffs},
                         batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
    out.write_parquet(out_dir, partition_cols=["split"], mode="overwrite")
    return spec, split_rows, cutoffs


# --------------------------------------------------------------------------- the data plane
def prepare_data(cfg: Config, *, verbose: bool = False, progress: Progress = _noop,
                 write: bool = True) -> DataResult:
    """ingest → validate → featurize. Raises DataValidationError (exit 3) before featurizing."""
    store = Store(cfg.store)
    timings: dict[str, float] = {}
    with ray_runtime(cfg.ray, verbose=verbose):
        t = time.perf_counter()
        progress("ingest", f"reading {', '.join(cfg.data.sources)}")
        source, ds = step_ingest(cfg)
        static, plan = step_check_schema(cfg, source)
        if _fits_in_memory(source):
            ds = ds.materialize()   # later passes read blocks from the object store, not the files
        timings["ingest"] = time.perf_counter() - t

        t = time.perf_counter()
        progress("validate", f"checking {source.rows:,} rows" if source.rows >= 0 else "checking rows")
        extra = {}
        if cfg.data.split.method == "time" and cfg.data.time_column in source.schema.names:
            extra["time"] = _bind(feat.time_partial, time_column=cfg.data.time_column)
        elif write:
            try:
                roles = feat.assign_roles(source.schema, cfg.data, cfg.features)
                extra["fit"] = _bind(_fit_train, cfg=cfg, roles=roles, cutoffs=None)
            except Exception:
                pass   # reported by the featurize step after validation
        report, pre = step_validate(cfg, source, ds, static, plan, extra)
        timings["validate"] = time.perf_counter() - t
        key = _data_key(cfg, source)
        base = store.path(cfg.name, "data", key)
        store.write_json(store.path(cfg.name, "data", key, "validation.json"), report.to_dict())
        if not report.passed:
            raise DataValidationError(report.summary(), report=report)
        result = DataResult(source=source.describe(), validation=report, timings=timings)
        if not write:
            return result

        t = time.perf_counter()
        out_dir = store.uri(cfg.name, "data", key, "features")
        spec, split_rows, cutoffs = step_featurize(cfg, source, ds, out_dir, pre, progress)
        timings["featurize"] = time.perf_counter() - t
        store.write_json(store.path(cfg.name, "data", key, "feature_spec.json"), spec.to_dict())
        store.write_json(store.path(cfg.name, "data", key, "source.json"),
                         {**source.describe(), "split_rows": split_rows,
                          "time_cutoffs": [str(np.datetime64(c, "ns")) for c in cutoffs] if cutoffs else None,
                          "config_hash": cfg.config_hash,
                          "created": dt.datetime.now(dt.timezone.utc).isoformat()})
        result.spec, result.split_rows, result.out_dir = spec, split_rows, base
        return result


# --------------------------------------------------------------------------- helpers (run on workers)
class _bind:
    """A picklable partial application (lambdas do not travel well with their closures)."""

    def __init__(self, fn, **kwargs):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, table):
        return self.fn(table, **self.kwargs)


def _fit_train(table: pa.Table, cfg: Config, roles: feat.Roles, cutoffs) -> dict:
    codes = feat.split_codes(table, cfg.data, cutoffs)
    train = table.filter(pa.array(codes == 0))
    return {"splits": np.bincount(codes, minlength=3).tolist(),
            "fit": feat.fit_partial(train, roles, cfg.features)}


def _transform_batch(table: pa.Table, cfg: Config, spec: feat.FeatureSpec, cutoffs):
    codes = feat.split_codes(table, cfg.data, cutoffs)
    df = table.select([c for c in spec.input_columns if c in table.column_names]).to_pandas()
    out = feat.transform(df, spec)
    label = table.column(cfg.data.label)
    out[cfg.data.label] = np.asarray(label.to_numpy(zero_copy_only=False), dtype=np.float32) \
        if not pa.types.is_dictionary(label.type) else label.to_pandas().astype("float32").to_numpy()
    out["split"] = np.asarray(feat.SPLITS)[codes]
    return out


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


def _data_key(cfg: Config, source: ingest.Source) -> str:
    import hashlib

    from mlops_ray import __version__
    h = hashlib.sha256("|".join([source.fingerprint, cfg.data.section_hash(), cfg.schema_.section_hash(),
                                 cfg.features.section_hash(), cfg.model.task, __version__]).encode())
    return h.hexdigest()[:16]
