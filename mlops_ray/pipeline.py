"""The pipeline, read top to bottom like the diagram in DESIGN.md.

    ingest ─ validate ─ featurize ─ tune ─ evaluate (+ gate) ─ register      (rollout: next issue)

Each step calls one stage function, and each step's output is cached in the store under a
key of (its config sections, its inputs' fingerprints, the package version): rerunning an
unchanged config skips finished steps and says so; ``--force``, ``--from STEP`` and
``--only STEP`` override that; ``--resume`` continues an interrupted Tune experiment.

The data plane reads the data once per pass:
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
from mlops_ray.data import dates, ingest, validate
from mlops_ray.data.profile import profile_pass
from mlops_ray.errors import DataValidationError, FeatureError
from mlops_ray.runtime import ray_runtime, require_shared_store
from mlops_ray.storage.store import Store
from mlops_ray.storage.fs import for_ray
from mlops_ray.storage.catalog import Catalog

Progress = Callable[[str, str], None]   # (step, message)
DATA_LAYOUT = "2"     # 2: featurize keeps the raw test rows (test_raw/) for the gate; older caches are refit


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
    fns = {"validate": _bind(validate.partial, plan=plan), **(extra or {})}
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
        pre = profile_pass(ds, {"fit": _bind(_fit_train, cfg=cfg, roles=roles, cutoffs=cutoffs,
                                             key_rate=_key_rate(source))})
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
                             {"rank": _bind(feat.time_rank_partial, time_column=cfg.data.time_column,
                                            brackets=brackets)})["rank"]
        cut = feat.exact_time_cutoffs(parts, cfg.data)
        if cut is not None:
            return cut
    raise AssertionError("the whole time range brackets every cut-off")   # pragma: no cover


def step_reference(cfg: Config, ds, spec: feat.FeatureSpec, cutoffs) -> dict:
    """The raw-input reference profile of the training rows (``monitor/drift.py`` compares
    prediction-log windows with it): two mergeable passes, sketches then counts."""
    from mlops_ray.monitor.calendar import spec_parts
    from mlops_ray.monitor.reference import profile_inputs
    return profile_inputs(ds, spec.input_types, cfg.monitor, profile_pass,
                          wrap=lambda fn: _bind(_on_train, cfg=cfg, cutoffs=cutoffs, partial_fn=fn),
                          dt_parts=spec_parts(spec))


# --------------------------------------------------------------------------- the data plane
def inspect(cfg: Config, progress: Progress = _noop) -> ingest.Source:
    """The source on metadata only (paths, footers, fingerprint): no Ray, no row read. Every column
    name the config lists is checked against it here, before any cache is trusted."""
    progress("ingest", f"reading {', '.join(cfg.data.sources)}")
    source = ingest.inspect_source(cfg.data)
    validate.check_config_columns(source.schema.names, cfg)
    return source


def cached_data(cfg: Config, source: ingest.Source, progress: Progress = _noop) -> DataResult | None:
    """The featurized data of an unchanged source and config, from the store (no Ray), or None."""
    store, key = Store(cfg.store), _data_key(cfg, source)
    if not (store.exists(Catalog(store, cfg.name).data_done(key))
            and store.exists(Catalog(store, cfg.name).reference_inputs(key))):
        return None
    progress("featurize", f"cached: data {key} is unchanged (ingest, validate, featurize skipped)")
    return _load_data_result(store, cfg, key)


def prepare_data(cfg: Config, *, verbose: bool = False, progress: Progress = _noop,
                 write: bool = True, force: bool = False, source: ingest.Source | None = None) -> DataResult:
    """ingest → validate → featurize. Raises DataValidationError (exit 3) before featurizing.
    Ray starts only when there is something to read: an unchanged source's cached result is
    found on the metadata alone. ``source``: already inspected (by ``run_pipeline``)."""
    store = Store(cfg.store)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    source = source or inspect(cfg, progress)
    key = _data_key(cfg, source)
    if write and not force:
        cached = cached_data(cfg, source, progress)
        if cached is not None:
            return cached
    with ray_runtime(cfg.ray, verbose=verbose):
        require_shared_store(cfg)
        if source.format == "parquet":
            static, plan = step_check_schema(cfg, source)   # before a row is read
        ds = step_ingest(cfg, source)
        parsing = step_dates(cfg, source, ds, progress)
        if source.format == "csv" or parsing.formats:
            static, plan = step_check_schema(cfg, source)
        timings["ingest"] = time.perf_counter() - t

        t = time.perf_counter()
        progress("validate", f"checking {source.rows:,} rows" if source.rows >= 0 else "checking rows")
        extra = {}
        if cfg.model.task == "multiclass" and write:
            extra["classes"] = _bind(feat.class_partial, label=cfg.data.label)
        if cfg.data.split.method == "time" and cfg.data.time_column in source.schema.names and \
                feat._kind(source.schema.field(cfg.data.time_column).type) == "datetime":
            extra["time"] = _bind(feat.time_partial, time_column=cfg.data.time_column)
        elif write:
            try:
                roles = feat.assign_roles(source.schema, cfg.data, cfg.features, declared_categorical(cfg))
                extra["fit"] = _bind(_fit_train, cfg=cfg, roles=roles, cutoffs=None, key_rate=_key_rate(source))
            except FeatureError:
                pass   # reported by the featurize step after validation
        report, pre = step_validate(cfg, source, ds, static, plan, extra, parsing)
        timings["validate"] = time.perf_counter() - t
        store.write_json(Catalog(store, cfg.name).validation(key), report.to_dict())
        if not report.passed:
            raise DataValidationError(report.summary(), report=report)
        result = DataResult(source=source.describe(), validation=report, timings=timings)
        if not write:
            return result

        t = time.perf_counter()
        ds = _parse_dates(ds, source, parsing.formats)
        out_dir = Catalog(store, cfg.name).features_dir(key, uri=True)
        spec, split_rows, cutoffs, fitted = step_featurize(cfg, source, ds, out_dir,
                                                           Catalog(store, cfg.name).test_raw_dir(key, uri=True), pre, progress)
        write_train_keys(store, Catalog(store, cfg.name).train_keys(key), fitted, _key_rate(source))
        spec.datetime_formats = dict(parsing.formats)
        progress("featurize", "profiling the training rows' raw inputs (the drift reference)")
        store.write_json(Catalog(store, cfg.name).reference_inputs(key),
                         step_reference(cfg, ds, spec, cutoffs))
        timings["featurize"] = time.perf_counter() - t
        store.write_json(Catalog(store, cfg.name).feature_spec(key), spec.to_dict())
        store.write_json(Catalog(store, cfg.name).source_record(key),
                         {**source.describe(), "split_rows": split_rows,
                          "time_cutoffs": [str(np.datetime64(c, "ns")) for c in cutoffs] if cutoffs else None,
                          "config_hash": cfg.config_hash,
                          "created": dt.datetime.now(dt.timezone.utc).isoformat()})
        store.write_json(Catalog(store, cfg.name).data_done(key), {"key": key})
        result.spec, result.split_rows, result.out_dir = spec, split_rows, Catalog(store, cfg.name).data_dir(key, uri=True)
        result.key, result.cutoffs = key, cutoffs
        return result


def _load_data_result(store: Store, cfg: Config, key: str) -> DataResult:
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
class _bind:
    """A picklable partial application (lambdas do not travel well with their closures)."""

    def __init__(self, fn, **kwargs):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, table):
        return self.fn(table, **self.kwargs)


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


def _fit_train(table: pa.Table, cfg: Config, roles: feat.Roles, cutoffs, key_rate: float = 1.0) -> dict:
    all_keys = feat.row_keys(table, cfg.data)                 # hashed once: the split and the gate's keys
    codes = feat.split_codes(table, cfg.data, cutoffs, keys=all_keys)
    train = table.filter(pa.array(codes == 0))
    keys = all_keys[codes < 2]                                 # the rows a model of this data learns from
    if key_rate < 1.0:
        keys = keys[keys < np.uint64(key_rate * 2.0 ** 64)]
    return {"splits": np.bincount(codes, minlength=3).tolist(),
            "fit": feat.fit_partial(train, roles, cfg.features), "keys": keys}


def _key_rate(source: ingest.Source) -> float:
    """The share of training-row keys kept: all of them up to TRAIN_KEYS rows."""
    return 1.0 if source.rows < 0 or source.rows <= TRAIN_KEYS else TRAIN_KEYS / source.rows


def write_train_keys(store: Store, path: str, parts: list[dict], rate: float) -> None:
    """The keys of the training (and validation) rows, sorted, with the share of keys kept: what the
    gate checks a champion's test rows against (``train/evaluate.champion_overlap``)."""
    import pyarrow.parquet as pq
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


def _parse_dates(ds, source: ingest.Source, formats: dict):
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


def _data_key(cfg: Config, source: ingest.Source) -> str:
    import hashlib

    from mlops_ray._version import __version__
    h = hashlib.sha256("|".join([DATA_LAYOUT, source.fingerprint, cfg.data.section_hash(), cfg.schema_.section_hash(),
                                 cfg.features.section_hash(), cfg.model.task, __version__]).encode())
    return h.hexdigest()[:16]


# =========================================================================== training half
STEPS = ("ingest", "validate", "featurize", "tune", "evaluate", "register")
DATA_STEPS = STEPS[:3]


@dataclass
class RunOptions:
    force: bool = False
    from_step: str | None = None
    only: str | None = None
    resume: bool = False
    verbose: bool = False

    def forced(self, step: str) -> bool:
        if self.force or self.only == step:
            return True
        return self.from_step is not None and STEPS.index(step) >= STEPS.index(self.from_step)


@dataclass
class RunResult:
    data: DataResult
    search: dict | None = None
    evaluation: dict | None = None
    champion_evaluation: dict | None = None
    gate: dict | None = None
    version: str | None = None
    promoted: bool = False
    run_id: str | None = None
    aliases: list = field(default_factory=list)        # read from the registry after the run, never cached
    cached_steps: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"data": self.data.to_dict(), "search": self.search, "evaluation": self.evaluation,
                "champion_evaluation": self.champion_evaluation, "gate": self.gate, "version": self.version,
                "promoted": self.promoted, "run_id": self.run_id, "aliases": self.aliases,
                "cached_steps": self.cached_steps,
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()}}


def preflight(cfg: Config, opts: RunOptions):
    """What can fail before anything is read: the steps named, the store, the registry."""
    from mlops_ray.errors import ConfigError
    from mlops_ray.registry import Registry

    for name, step in (("--from", opts.from_step), ("--only", opts.only)):
        if step is not None and step not in STEPS:
            raise ConfigError(f"{name} {step!r} is not a step; steps: {', '.join(STEPS)}")
    Store(cfg.store).check_writable(cfg.name)
    registry = Registry(cfg.registry, cfg.store, cfg.name)
    registry.check_reachable()
    return registry


def check_training_config(cfg: Config) -> None:
    """The model, search and gate cross-checks, before any row is read. A cached registration passed
    them (its key holds these sections and the package version): a rerun with every step cached
    skips them, and the XGBoost and scikit-learn imports they need (0.9 s of a 3.7 s rerun)."""
    from mlops_ray.train import evaluate as ev
    from mlops_ray.train import xgb as X

    X.check_model_config(cfg.model, cfg.tune)
    ev.check_gate_metrics(cfg.gate, cfg.model.task)


def run_pipeline(cfg: Config, opts: RunOptions | None = None, progress: Progress = _noop) -> RunResult:
    """Raw data to a gated, registered model version. Raises GateRejected (exit 4) after
    registering a rejected candidate with its reason; the champion alias is left alone."""
    from mlops_ray.runtime import require_resources

    opts = opts or RunOptions()
    registry = preflight(cfg, opts)
    store = Store(cfg.store)
    data_forced = any(opts.forced(s) for s in DATA_STEPS)
    # the caches are checked on the source's metadata before Ray starts: an unchanged rerun starts none
    source = inspect(cfg, progress)
    data = None if data_forced else cached_data(cfg, source, progress)
    if data is not None:
        result = RunResult(data=data, cached_steps=list(DATA_STEPS))
        if opts.only in DATA_STEPS or _cached_registration(cfg, opts, registry, result, progress):
            return result
    check_training_config(cfg)
    with ray_runtime(cfg.ray, verbose=opts.verbose):
        require_shared_store(cfg)
        require_resources(gpus=cfg.tune.gpus_per_trial, cpus=cfg.tune.cpus_per_trial)
        if data is None:
            data = prepare_data(cfg, verbose=opts.verbose, progress=progress, force=data_forced, source=source)
            result = RunResult(data=data, cached_steps=list(DATA_STEPS) if data.cached else [])
            if opts.only in DATA_STEPS or _cached_registration(cfg, opts, registry, result, progress):
                return result
        train_key = _train_key(cfg, data.key)
        try:
            return _train_evaluate_register(cfg, opts, registry, store, data, train_key, result, progress)
        finally:
            if result.version:
                result.aliases = registry.aliases_of(result.version)


def _cached_registration(cfg: Config, opts: RunOptions, registry, result: RunResult, progress: Progress) -> bool:
    """Fill ``result`` from the registration of this data and config, when there is one and no step
    after featurize is forced; False otherwise. Reads the store and the registry, never Ray."""
    store = Store(cfg.store)
    done = Catalog(store, cfg.name).registered_record(_train_key(cfg, result.data.key))
    if not store.exists(done) or any(opts.forced(s) for s in ("tune", "evaluate", "register")):
        return False
    rec = store.read_json(done)
    progress("register", f"cached: this data and config are already registered as version "
                         f"{rec['version']}{'' if rec['promoted'] else ', rejected by the gate'} "
                         f"(tune, evaluate, register skipped; --force to redo)")
    result.cached_steps += ["tune", "evaluate", "register"]
    result.search, result.evaluation, result.gate = rec.get("search"), rec.get("evaluation"), rec.get("gate")
    result.version, result.promoted, result.run_id = rec["version"], rec["promoted"], rec.get("run_id")
    result.aliases = registry.aliases_of(result.version)
    if not rec["promoted"] and rec.get("gate"):     # a cached rejection is still a rejection (exit 4)
        from mlops_ray.train import evaluate as ev
        g = rec["gate"]
        ev.raise_if_rejected(ev.GateDecision(passed=False, failures=list(g.get("failures") or []),
                                             checks=list(g.get("checks") or []),
                                             champion_version=g.get("champion_version")))
    return True


def _train_evaluate_register(cfg, opts, registry, store, data, train_key, result, progress) -> RunResult:
    import ray

    from mlops_ray.train import evaluate as ev
    from mlops_ray.train import tune as T
    from mlops_ray.train import xgb as X

    run_dir = Catalog(store, cfg.name).run_dir(train_key)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_mem = min((n["Resources"].get("memory", 8e9) for n in nodes), default=8e9)
    n_features = len(data.spec.output_columns)
    strategy = X.choose_strategy(cfg.model, int(data.split_rows.get("train", 0)), n_features, len(nodes), node_mem)
    if strategy == "external":      # before reading anything: the cache directory must take the pages
        X.check_cache_dir(cfg.model, sum(int(data.split_rows.get(k, 0)) for k in ("train", "valid")), n_features)
    splits = X.load_splits(Catalog(store, cfg.name).features_dir(data.key), data.spec, cfg.model.task,
                           filesystem=store.fs, external=strategy == "external")
    features_dir = Catalog(store, cfg.name).features_dir(data.key, uri=True)     # a URI Ray workers can open
    X.check_labels(splits, cfg.model.task, cfg.data.label)
    storage = Catalog(store, cfg.name).tune_dir(train_key)

    champion = registry.champion()
    decision = None
    for attempt in range(cfg.gate.retries + 1):
        t = time.perf_counter()
        scale = 2 ** attempt
        experiment = f"search-a{attempt}"
        cached = f"{run_dir}/{experiment}.json"
        if store.exists(cached) and not opts.forced("tune"):
            search = T.SearchResult.from_dict(store.read_json(cached))
            progress("tune", f"cached: best {search.metric} {search.best_score:.5f} from {len(search.trials)} trials")
            result.cached_steps.append("tune")
        else:
            progress("tune", f"{int(cfg.tune.num_samples * scale)} trials, strategy {strategy}, "
                             f"{cfg.tune.scheduler} + Optuna TPE" + (f" (retry {attempt})" if attempt else ""))
            search = T.run_search(splits=splits, model=cfg.model, tune_cfg=cfg.tune, storage=storage,
                                  experiment=experiment, strategy=strategy, features_dir=features_dir,
                                  resume=opts.resume, budget_scale=scale, progress=progress)
            store.write_json(cached, search.to_dict())
        result.timings[f"tune{attempt or ''}"] = time.perf_counter() - t
        if opts.only == "tune":
            result.search = {k: v for k, v in search.to_dict().items() if k != "trials"}
            progress("tune", "done (--only tune: evaluate and register skipped)")
            return result

        t = time.perf_counter()
        progress("evaluate", "refitting the best configuration and scoring the test split"
                 + (f" against champion v{champion[0]}" if champion else ""))
        booster = T.train_final(splits=splits, model=cfg.model, tune_cfg=cfg.tune, search=search,
                                strategy=strategy, features_dir=features_dir, storage=storage)
        choice = _choose_threshold(cfg, splits, search, booster, strategy)
        evaluation, champ_eval, overlap = _evaluate(cfg, data, booster, champion, choice)
        if overlap and overlap["rows"]:
            progress("gate", f"champion v{champion[0]} was trained on {'' if overlap['exact'] else 'about '}"
                             f"{overlap['rows']:,} of the {overlap['test_rows']:,} test rows ({overlap['share']:.0%})")
        evaluation.leaks = ev.leak_suspects(cfg.model.task, splits.X["valid"], splits.y["valid"],
                                            splits.spec.output_columns, splits.spec.feature_types)
        # (printed with the run's result: a feature that alone predicts the label is reported, not refused)
        decision = ev.decide(evaluation, champ_eval, cfg.gate, cfg.tune.metric,
                             champion_version=champion[0] if champion else None, overlap=overlap)
        result.timings[f"evaluate{attempt or ''}"] = time.perf_counter() - t
        if decision.passed:
            break
        if attempt < cfg.gate.retries:
            progress("gate", f"rejected ({'; '.join(decision.failures)}); retrying with twice the budget")

    if opts.only == "evaluate":
        result.search = {k: v for k, v in search.to_dict().items() if k != "trials"}
        result.evaluation, result.gate = evaluation.to_dict(), decision.to_dict()
        result.champion_evaluation = champ_eval.to_dict() if champ_eval else None
        progress("evaluate", "done (--only evaluate: nothing registered)")
        return result
    t = time.perf_counter()
    version, run_id = _register(cfg, registry, data, splits, search, booster, evaluation, champ_eval, decision,
                                strategy, progress)
    result.timings["register"] = time.perf_counter() - t
    result.search = {k: v for k, v in search.to_dict().items() if k != "trials"}
    result.evaluation, result.gate = evaluation.to_dict(), decision.to_dict()
    result.champion_evaluation = champ_eval.to_dict() if champ_eval else None
    result.version, result.promoted, result.run_id = version, decision.passed, run_id
    store.write_json(f"{run_dir}/registered.json", {"version": version, "promoted": decision.passed,
                                                    "run_id": run_id, "search": result.search,
                                                    "evaluation": result.evaluation, "gate": result.gate})
    ev.raise_if_rejected(decision)
    return result


def _choose_threshold(cfg: Config, splits, search, booster, strategy: str) -> dict | None:
    """A binary model's decision threshold (``model.threshold``), chosen on the validation split's
    predictions by a model that has not seen it: the final model when it was refitted on the training
    split alone, otherwise the same configuration fitted on it (one more fit, of the final one's size).
    A distributed refit on train+valid is not repeated: its own (in-sample) predictions are used and
    the choice says so."""
    from mlops_ray.registry import bundle
    from mlops_ray.train import evaluate as ev
    from mlops_ray.train import tune as T
    rule = cfg.model.threshold
    if cfg.model.task != "binary":
        return None
    if isinstance(rule, (int, float)):
        return ev.choose_threshold(None, None, rule)
    if not splits.rows["valid"]:
        return ev.choose_threshold(np.empty(0), np.empty(0), rule)        # 0.5, saying why
    in_sample = cfg.model.refit == "train_valid" and strategy == "distributed"
    model = booster
    if cfg.model.refit == "train_valid" and not in_sample:
        model = T.train_final(splits=splits, model=cfg.model.model_copy(update={"refit": "best_trial"}),
                              tune_cfg=cfg.tune, search=search, strategy=strategy)
    p = bundle.predict_features(model, splits.X["valid"], splits.spec)
    choice = ev.choose_threshold(splits.y["valid"], p, rule)
    if in_sample:
        choice["note"] = "chosen on predictions of the final model, which was refitted on the validation rows too"
    return choice


def _evaluate(cfg: Config, data: DataResult, booster, champion, choice: dict | None = None):
    """Score challenger (and champion) on the raw test rows; each model applies its own features
    and its own decision threshold (the champion's from its bundle)."""
    from mlops_ray.train import evaluate as ev
    from mlops_ray.train.score import score_test

    import ray

    models = {"candidate": (bytes(booster.save_raw("ubj")), data.spec.to_dict())}
    if champion:
        models["champion"] = (bytes(champion[1].booster.save_raw("ubj")), champion[1].spec.to_dict())
    if data.split_rows.get("test"):     # the raw test rows featurize kept (not the source, which may have changed)
        path, fs = for_ray(Catalog(cfg.store, cfg.name).test_raw_dir(data.key, uri=True))
        scored = score_test(ray.data.read_parquet(path, filesystem=fs), cfg.data, None, models,
                            cfg.model.slice_column, split_done=True)
    else:
        scored = {"y": np.empty(0), **{f"p_{name}": np.empty(0) for name in models}}
    slices = None
    if cfg.model.slice_column and "slice" in scored:
        import pandas as pd
        slices = pd.Series(scored["slice"], name=cfg.model.slice_column)
    cand = ev.evaluate(cfg.model.task, scored["y"], scored["p_candidate"], choice["value"] if choice else 0.5, slices,
                       classes=data.spec.classes)
    cand.threshold_choice = choice
    champ_threshold = None
    if champion:        # the champion's threshold as it is served now (feedback may have re-chosen it)
        from mlops_ray.monitor import thresholds
        champ_threshold = thresholds.current(Store(cfg.store), cfg.name, str(champion[0]), champion[1].metadata) \
            if cfg.model.task == "binary" else champion[1].threshold
    champ = ev.evaluate(cfg.model.task, scored["y"], scored["p_champion"], champ_threshold, slices) \
        if champion else None
    if champ is not None and slices is not None:
        gated = [k for k in set(cand.slices) & set(champ.slices) - {ev.SKIPPED}
                 if (cand.slices[k].get("n") or 0) >= cfg.gate.min_slice_rows]
        cand.slice_noise = ev.slice_noise(cfg.model.task, cfg.tune.metric, scored["y"], scored["p_candidate"],
                                          scored["p_champion"], slices, (cand.threshold, champ.threshold), gated,
                                          seed=cfg.tune.seed)
    cand.curves = {"p": scored["p_candidate"], "y": scored["y"]}   # for plots only, not serialised
    overlap = _champion_overlap(cfg, champion[1], scored.get("key")) if champion else None
    return cand, champ, overlap


def _champion_overlap(cfg: Config, champion, test_keys) -> dict | None:
    """How many of the test rows the champion was trained on (its data's training-row keys, kept by
    featurize); None when the champion's data is no longer in the store or predates the keys."""
    import pyarrow.parquet as pq

    from mlops_ray.train import evaluate as ev
    store = Store(cfg.store)
    key = champion.metadata.get("data_key")
    path = Catalog(store, cfg.name).train_keys(key) if key else None
    if test_keys is None or not path or not store.exists(path):
        return None
    with store.fs.open_input_file(path) as f:
        table = pq.read_table(f)
    rate = float((table.schema.metadata or {}).get(b"rate", b"1.0"))
    return ev.champion_overlap(test_keys, table.column("key").to_numpy(), rate)


def _register(cfg, registry, data, splits, search, booster, evaluation, champ_eval, decision, strategy, progress):
    import tempfile

    from mlops_ray.registry import bundle

    from mlops_ray._version import __version__
    from mlops_ray.monitor.reference import SAMPLE, build_reference
    from mlops_ray.registry import lineage
    from mlops_ray.train import evaluate as ev
    from mlops_ray.train import plots

    valid_pred = bundle.predict_features(booster, splits.X["valid"], data.spec) if splits.rows["valid"] \
        else evaluation.curves["p"]
    reference = build_reference(splits.train_sample(SAMPLE, cfg.tune.seed), data.spec, valid_pred,
                                cfg.model.task, bins=cfg.monitor.bins, seed=cfg.tune.seed)
    store = Store(cfg.store)
    reference["inputs"] = store.read_json(Catalog(store, cfg.name).reference_inputs(data.key))
    metadata = {
        "pipeline": cfg.name, "task": cfg.model.task, "label": cfg.data.label, "mlops_ray": __version__,
        "config_hash": cfg.config_hash, "data_key": data.key, "dataset": {
            "fingerprint": data.source.get("fingerprint"), "fingerprint_kind": data.source.get("fingerprint_kind"),
            "rows": data.source.get("rows"), "split_rows": data.split_rows, "sources": data.source.get("sources")},
        "seeds": {"split": cfg.data.split.seed, "tune": cfg.tune.seed}, "strategy": strategy,
        "tuning": {k: v for k, v in search.to_dict().items() if k != "trials"},
        "evaluation": evaluation.to_dict(), "gate": decision.to_dict(), "lineage": lineage(),
        "threshold": evaluation.threshold_choice,
    }
    if cfg.model.task == "binary":      # for the HTML report (200 points each)
        metadata["curves"] = {"roc": ev.roc_points(evaluation.curves["y"], evaluation.curves["p"]),
                              "pr": ev.pr_points(evaluation.curves["y"], evaluation.curves["p"])}
    status = "passed" if decision.passed else "rejected"
    with registry.start_run(f"{cfg.name}-{data.key[:8]}", tags={"gate": status, "strategy": strategy}) as run:
        run.log_params({"config": cfg.model_dump(mode="json", by_alias=True), "best": search.best_config,
                        "best_iteration": search.best_iteration, "lineage": metadata["lineage"],
                        "dataset_fingerprint": metadata["dataset"]["fingerprint"], "config_hash": cfg.config_hash})
        run.log_metrics({f"test_{k}": v for k, v in evaluation.metrics.items()})
        run.log_metrics({f"valid_{search.metric}": search.best_score, "tune_seconds": search.seconds,
                         "n_trials": len(search.trials)})
        if champ_eval:
            run.log_metrics({f"champion_test_{k}": v for k, v in champ_eval.metrics.items()})
        run.log_text(cfg.to_yaml(), "config.yaml")
        run.log_dict(data.validation.to_dict(), "validation.json")
        run.log_dict(data.spec.to_dict(), "feature_spec.json")
        run.log_dict(evaluation.to_dict(), "evaluation.json")
        run.log_dict(search.to_dict(), "tuning.json")
        run.log_dict(decision.to_dict(), "gate.json")
        for i, trial in enumerate(search.trials):
            run.child_run(f"trial-{i:03d}", params=trial.get("config") or {},
                          metrics={k: trial[k] for k in (search.metric, "best_iteration", "iterations")
                                   if isinstance(trial.get(k), (int, float))})
        try:
            run.log_figure(plots.tuning_history(search.trials, search.metric, search.mode), "plots/tuning.png")
            run.log_figure(plots.feature_importance(booster.get_score(importance_type="gain")),
                           "plots/feature_importance.png")
            if cfg.model.task == "binary":
                roc = ev.roc_points(evaluation.curves["y"], evaluation.curves["p"])
                pr = ev.pr_points(evaluation.curves["y"], evaluation.curves["p"])
                run.log_figure(plots.curve(roc["fpr"], roc["tpr"], "false positive rate", "true positive rate",
                                           "ROC"), "plots/roc.png")
                run.log_figure(plots.curve(pr["recall"], pr["precision"], "recall", "precision", "PR"),
                               "plots/pr.png")
        except Exception as e:  # a plot must never lose a run
            run.set_tags({"plot_error": str(e)[:200]})
        with tempfile.TemporaryDirectory() as d:
            bundle.write_bundle(d, booster, data.spec, reference, metadata)
            version = registry.register(run, d, tags={"gate": status, "data_key": data.key})
        if decision.passed and _serving(cfg) and not cfg.retrain.promote_directly:
            registry.set_alias("challenger", version)
            progress("register", f"version {version} passed the gate and is the challenger; the champion moves "
                                 f"when `mlops-ray rollout CONFIG --version {version}` promotes it")
        elif decision.passed:
            registry.set_alias("champion", version)
            progress("register", f"version {version} passed the gate and is now champion")
        else:
            registry.tag_version(version, "rejected", "; ".join(decision.failures)[:5000])
            run.set_tags({"rejected_reason": "; ".join(decision.failures)[:5000]})
            progress("register", f"version {version} registered as rejected; champion unchanged")
        return version, run.run_id


def _serving(cfg: Config) -> bool:
    """Is a version of this pipeline served (a serving state in the store)? Then a gate pass only
    makes a challenger: the champion is what a rollout promoted."""
    from mlops_ray.storage.state import read_head
    from mlops_ray.storage.state import read_state, state_path
    try:
        return read_state(state_path(cfg.store, cfg.name)) is not None and (
            bool(cfg.ray.address) or read_head(cfg.store, cfg.name) is not None)
    except Exception:                  # an unreadable state: be conservative, do not move the champion
        return True


def _train_key(cfg: Config, data_key: str) -> str:
    import hashlib

    from mlops_ray._version import __version__
    parts = [data_key, cfg.model.section_hash(), cfg.tune.section_hash(), cfg.gate.section_hash(),
             cfg.registry.section_hash(), __version__]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
