"""The pipeline as a table of steps, read top to bottom like the lifecycle:

    ingest ─ validate ─ featurize ─ reference ─ tune ─ threshold ─ evaluate ─ gate ─ register

Each ``Step`` names its function, the values it takes (``inputs``) and gives (``outputs``), the
cache key its stored outputs are filed under (``keys.DATA_KEY`` or ``keys.TRAIN_KEY``: the config
sections and input fingerprints it is made of), the stage its time and cache hits are reported
under (``STEPS``: the names ``run``'s result has always used) and whether it needs Ray. A step
function takes the run's ``Context`` and its inputs by name and returns its outputs by name; it
does one thing and writes its own store records. The runner (``pipeline/runner.py``) decides
what runs, reads cached outputs back, retries and times; nothing here does.

Values are of three kinds: ``GIVEN`` (the inspected source, the registry's champion), ``STORED``
(kept in the store under the step's key, read back by a rerun; the refitted model, the
evaluations and the gate's decision are read back by ``--only`` runs alone, and an evaluation or
decision only while the champion it was made against still is) and the rest, held in memory for
one run only (a Ray dataset, the parsed rows).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_ray.config import Config
from mlops_ray.data import features as feat
from mlops_ray.data import ingest
from mlops_ray.errors import DataValidationError, FeatureError
from mlops_ray.pipeline import data, keys, training
from mlops_ray.pipeline.data import DataResult, Progress
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.store import Store, write_atomic
from mlops_ray.train import evaluate as ev
from mlops_ray.train import tune as T

# The stages ``run`` reports (``cached_steps``, ``timings_s``); each step belongs to one.
STEPS = ("ingest", "validate", "featurize", "tune", "evaluate", "register")


# --------------------------------------------------------------------------- the run's context
@dataclass
class TrainingData:
    """The featurized splits in memory and how to train on them (shared by the training steps)."""
    strategy: str
    splits: Any
    features_dir: str          # a URI Ray workers can open
    storage: str               # Tune's storage for this run


@dataclass
class Context:
    """What every step may use: the config, the store, the source and its data key, the run's
    plan (the step names it executes), the attempt (0, then 1.. when the gate's retry searches
    again) and the registry (None when only the data steps run)."""
    cfg: Config
    store: Store
    source: ingest.Source
    progress: Progress
    planned: frozenset = frozenset()
    resume: bool = False
    registry: Any = None
    attempt: int = 0
    data_key: str = ""
    _champion: Any = field(default=False, repr=False)
    _training: TrainingData | None = field(default=None, repr=False)

    def __post_init__(self):
        self.data_key = self.data_key or keys.data_key(self.cfg, self.source.fingerprint)
        self.catalog = Catalog(self.store, self.cfg.name)

    @property
    def train_key(self) -> str:
        return keys.train_key(self.cfg, self.data_key)

    def champion(self):
        """(version, bundle) of the registry's champion, or None: read once per run."""
        if self._champion is False:
            self._champion = self.registry.champion()
        return self._champion

    def training(self, features: DataResult) -> TrainingData:
        """The strategy (single, distributed, external) for this data on this cluster, and the
        splits it reads: chosen and loaded once per run."""
        if self._training is None:
            import ray  # measured import cost: a cached rerun imports no Ray

            from mlops_ray.train import xgb as X
            cfg, cat = self.cfg, self.catalog
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            node_mem = min((n["Resources"].get("memory", 8e9) for n in nodes), default=8e9)
            n_features = len(features.spec.output_columns)
            strategy = X.choose_strategy(cfg.model, int(features.split_rows.get("train", 0)), n_features,
                                         len(nodes), node_mem)
            if strategy == "external":      # before reading anything: the cache directory must take the pages
                X.check_cache_dir(cfg.model, sum(int(features.split_rows.get(k, 0)) for k in ("train", "valid")),
                                  n_features)
            splits = X.load_splits(cat.features_dir(self.data_key), features.spec, cfg.model.task,
                                   filesystem=self.store.fs, external=strategy == "external")
            X.check_labels(splits, cfg.model.task, cfg.data.label)
            self._training = TrainingData(strategy, splits, cat.features_dir(self.data_key, uri=True),
                                      cat.tune_dir(self.train_key))
        return self._training


# --------------------------------------------------------------------------- data steps
def ingest_step(ctx: Context, source: ingest.Source) -> dict:
    """Read the source (Parquet: its schema is checked first, before a row is read), and resolve
    how text date-times are parsed."""
    cfg = ctx.cfg
    checks = data.step_check_schema(cfg, source) if source.format == "parquet" else None
    rows = data.step_ingest(cfg, source)
    parsing = data.step_dates(cfg, source, rows, ctx.progress)
    if source.format == "csv" or parsing.formats:
        checks = data.step_check_schema(cfg, source)
    return {"rows": rows, "checks": checks, "parsing": parsing}


def validate_step(ctx: Context, source: ingest.Source, rows, checks, parsing) -> dict:
    """The validation report (written as ``validation.json`` whether it passes or not); raises
    DataValidationError (exit 3) when it fails. When featurize runs next, the same pass collects
    what it fits on (``partials``): the label's classes, the time column's sketch, the feature fit."""
    cfg, progress = ctx.cfg, ctx.progress
    progress("validate", f"checking {source.rows:,} rows" if source.rows >= 0 else "checking rows")
    write = "featurize" in ctx.planned
    extra = {}
    if cfg.model.task == "multiclass" and write:
        extra["classes"] = partial(feat.class_partial, label=cfg.data.label)
    if cfg.data.split.method == "time" and cfg.data.time_column in source.schema.names and \
            feat._kind(source.schema.field(cfg.data.time_column).type) == "datetime":
        extra["time"] = partial(feat.time_partial, time_column=cfg.data.time_column)
    elif write:
        try:
            roles = feat.assign_roles(source.schema, cfg.data, cfg.features, data.declared_categorical(cfg))
            extra["fit"] = partial(data.fit_train, cfg=cfg, roles=roles, cutoffs=None,
                                        key_rate=data.key_rate_of(source))
        except FeatureError:
            pass   # reported by the featurize step after validation
    static, plan = checks
    report, partials = data.step_validate(cfg, source, rows, static, plan, extra, parsing)
    ctx.store.write_json(ctx.catalog.validation(ctx.data_key), report.to_dict())
    if not report.passed:
        raise DataValidationError(report.summary(), report=report)
    return {"validation": report, "partials": partials}


def featurize_step(ctx: Context, source: ingest.Source, rows, parsing, validation, partials) -> dict:
    """Fit the features on the training split, write the three splits, the raw test rows, the
    training rows' keys, the feature spec and the source record; ``_SUCCESS`` last."""
    cfg, store, cat, key = ctx.cfg, ctx.store, ctx.catalog, ctx.data_key
    parsed = data.parse_dates(rows, source, parsing.formats)
    spec, split_rows, cutoffs, fitted = data.step_featurize(cfg, source, parsed, cat.features_dir(key, uri=True),
                                                            cat.test_raw_dir(key, uri=True), partials, ctx.progress)
    data.write_train_keys(store, cat.train_keys(key), fitted, data.key_rate_of(source))
    spec.datetime_formats = dict(parsing.formats)
    store.write_json(cat.feature_spec(key), spec.to_dict())
    store.write_json(cat.source_record(key),
                     {**source.describe(), "split_rows": split_rows,
                      "time_cutoffs": [str(np.datetime64(c, "ns")) for c in cutoffs] if cutoffs else None,
                      "config_hash": cfg.config_hash,
                      "created": dt.datetime.now(dt.timezone.utc).isoformat()})
    store.write_json(cat.data_done(key), {"key": key})
    features = DataResult(source=source.describe(), validation=validation, spec=spec, split_rows=split_rows,
                          out_dir=cat.data_dir(key, uri=True), key=key, cutoffs=cutoffs)
    return {"features": features, "parsed_rows": parsed}


def reference_step(ctx: Context, features: DataResult, parsed_rows) -> dict:
    """The raw-input profile of the training rows: the drift monitor's reference."""
    ctx.progress("featurize", "profiling the training rows' raw inputs (the drift reference)")
    profile = data.step_reference(ctx.cfg, parsed_rows, features.spec, features.cutoffs)
    ctx.store.write_json(ctx.catalog.reference_inputs(ctx.data_key), profile)
    return {"reference_inputs": profile}


# --------------------------------------------------------------------------- training steps
def tune_step(ctx: Context, features: DataResult) -> dict:
    """Ray Tune + Optuna search; attempt n searches with 2^n times the budget (the gate's retry)
    and is kept as ``search-a{n}.json``."""
    from mlops_ray.train import tune as T  # measured import cost (XGBoost), see training.py
    cfg, t = ctx.cfg, ctx.training(features)
    attempt, scale = ctx.attempt, 2 ** ctx.attempt
    ctx.progress("tune", f"{int(cfg.tune.num_samples * scale)} trials, strategy {t.strategy}, "
                         f"{cfg.tune.scheduler} + Optuna TPE" + (f" (retry {attempt})" if attempt else ""))
    search = T.run_search(splits=t.splits, model=cfg.model, tune_cfg=cfg.tune, storage=t.storage,
                          experiment=f"search-a{attempt}", strategy=t.strategy, features_dir=t.features_dir,
                          resume=ctx.resume, budget_scale=scale, progress=ctx.progress)
    ctx.store.write_json(ctx.catalog.search_record(ctx.train_key, f"search-a{attempt}"), search.to_dict())
    return {"search": search}


def threshold_step(ctx: Context, features: DataResult, search, champion) -> dict:
    """Refit the search's best configuration (the final model) and choose its decision threshold
    on the validation split."""
    cfg, t = ctx.cfg, ctx.training(features)
    ctx.progress("evaluate", "refitting the best configuration and scoring the test split"
                 + (f" against champion v{champion[0]}" if champion else ""))
    booster = T.train_final(splits=t.splits, model=cfg.model, tune_cfg=cfg.tune, search=search,
                            strategy=t.strategy, features_dir=t.features_dir, storage=t.storage)
    threshold = training.choose_threshold(cfg, t.splits, search, booster, t.strategy)
    write_atomic(ctx.store.fs, ctx.catalog.model_record(ctx.train_key, ctx.attempt), bytes(booster.save_raw("ubj")))
    ctx.store.write_json(ctx.catalog.threshold_record(ctx.train_key, ctx.attempt), {"threshold": threshold})
    return {"model": booster, "threshold": threshold}


def evaluate_step(ctx: Context, features: DataResult, model, threshold, champion) -> dict:
    """Score the candidate (and the champion) on the raw test rows; name features that alone
    predict the label (reported with the result, not refused)."""
    cfg, t = ctx.cfg, ctx.training(features)
    evaluation, champ_eval, overlap = training.evaluate(cfg, features, model, champion, threshold)
    if overlap and overlap["rows"]:
        ctx.progress("gate", f"champion v{champion[0]} was trained on {'' if overlap['exact'] else 'about '}"
                             f"{overlap['rows']:,} of the {overlap['test_rows']:,} test rows ({overlap['share']:.0%})")
    evaluation.leaks = ev.leak_suspects(cfg.model.task, t.splits.X["valid"], t.splits.y["valid"],
                                        t.splits.spec.output_columns, t.splits.spec.feature_types)
    scores = _scores_table(evaluation.curves["y"], evaluation.curves["p"])
    sink = pa.BufferOutputStream()
    pq.write_table(scores, sink)
    write_atomic(ctx.store.fs, ctx.catalog.evaluation_scores(ctx.train_key, ctx.attempt), sink.getvalue().to_pybytes())
    ctx.store.write_json(ctx.catalog.evaluation_record(ctx.train_key, ctx.attempt), {
        "champion_version": champion[0] if champion else None, "evaluation": evaluation.to_dict(),
        "champion_evaluation": champ_eval.to_dict() if champ_eval else None, "overlap": overlap})
    return {"evaluation": evaluation, "champion_evaluation": champ_eval, "overlap": overlap}


def _scores_table(y, p) -> pa.Table:
    """The test labels and scores (a multiclass model's as one list of class probabilities a row)."""
    p = np.asarray(p, dtype=np.float64)
    column = pa.FixedSizeListArray.from_arrays(pa.array(p.ravel()), p.shape[1]) if p.ndim == 2 else pa.array(p)
    return pa.table({"y": np.asarray(y), "p": column})


def _scores_of(table: pa.Table) -> dict:
    p = table.column("p").combine_chunks()
    if pa.types.is_fixed_size_list(p.type):
        p = p.flatten().to_numpy().reshape(len(p), p.type.list_size)
    else:
        p = p.to_numpy()
    return {"y": table.column("y").to_numpy(), "p": p}


def gate_step(ctx: Context, evaluation, champion_evaluation, overlap, champion) -> dict:
    """The gate's decision: a pure comparison of the evaluations with ``gate`` (and each other)."""
    decision = ev.decide(evaluation, champion_evaluation, ctx.cfg.gate, ctx.cfg.tune.metric,
                         champion_version=champion[0] if champion else None, overlap=overlap)
    ctx.store.write_json(ctx.catalog.gate_record(ctx.train_key, ctx.attempt),
                         {"champion_version": champion[0] if champion else None, "decision": decision.to_dict()})
    return {"decision": decision}


def register_step(ctx: Context, features: DataResult, search, model, evaluation, champion_evaluation, decision,
                  reference_inputs) -> dict:
    """Register the candidate, passed or rejected, and keep the registration record."""
    t = ctx.training(features)
    version, run_id = training.register(ctx.cfg, ctx.registry, features, t.splits, search, model, evaluation,
                                     champion_evaluation, decision, reference_inputs, t.strategy, ctx.progress)
    record = {"version": version, "promoted": decision.passed, "run_id": run_id,
              "search": training.search_summary(search), "evaluation": evaluation.to_dict(), "gate": decision.to_dict()}
    ctx.store.write_json(ctx.catalog.registered_record(ctx.train_key), record)
    return {"registration": record}


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Retry:
    """Run the steps from ``rerun_from`` through the step again, as the next attempt, while
    ``failed(outputs)`` gives a reason and fewer than ``times(cfg)`` retries were made."""
    rerun_from: str
    times: Callable[[Config], int]
    failed: Callable[[dict], str | None]


@dataclass(frozen=True)
class Step:
    """One row of the table: ``fn(ctx, **inputs) -> {output: value}``; ``key``: the cache key its
    stored outputs are filed under; ``stage``: what ``run`` reports its time and cache hits as."""
    name: str
    fn: Callable[..., dict]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    key: keys.CacheKey
    stage: str
    ray: bool = True
    retry: Retry | None = None


def _gate_failed(outputs: dict) -> str | None:
    decision = outputs["decision"]
    return None if decision.passed else \
        f"rejected ({'; '.join(decision.failures)}); retrying with twice the budget"


DATA, TRAIN = keys.DATA_KEY, keys.TRAIN_KEY
TABLE: tuple[Step, ...] = (
    Step("ingest", ingest_step, inputs=("source",), outputs=("rows", "checks", "parsing"),
         key=DATA, stage="ingest"),
    Step("validate", validate_step, inputs=("source", "rows", "checks", "parsing"),
         outputs=("validation", "partials"), key=DATA, stage="validate"),
    Step("featurize", featurize_step, inputs=("source", "rows", "parsing", "validation", "partials"),
         outputs=("features", "parsed_rows"), key=DATA, stage="featurize"),
    Step("reference", reference_step, inputs=("features", "parsed_rows"), outputs=("reference_inputs",),
         key=DATA, stage="featurize"),
    Step("tune", tune_step, inputs=("features",), outputs=("search",), key=TRAIN, stage="tune"),
    Step("threshold", threshold_step, inputs=("features", "search", "champion"), outputs=("model", "threshold"),
         key=TRAIN, stage="evaluate"),
    Step("evaluate", evaluate_step, inputs=("features", "model", "threshold", "champion"),
         outputs=("evaluation", "champion_evaluation", "overlap"), key=TRAIN, stage="evaluate"),
    Step("gate", gate_step, inputs=("evaluation", "champion_evaluation", "overlap", "champion"),
         outputs=("decision",), key=TRAIN, stage="evaluate", ray=False,
         retry=Retry(rerun_from="tune", times=lambda cfg: cfg.gate.retries, failed=_gate_failed)),
    Step("register", register_step, inputs=("features", "search", "model", "evaluation", "champion_evaluation",
                                            "decision", "reference_inputs"),
         outputs=("registration",), key=TRAIN, stage="register"),
)
STEP = {s.name: s for s in TABLE}
NAMES = tuple(STEP)
PRODUCER = {out: s for s in TABLE for out in s.outputs}
TRAINING = frozenset(s.name for s in TABLE if s.key is keys.TRAIN_KEY)

GIVEN: dict[str, Callable[[Context], Any]] = {"source": lambda ctx: ctx.source,
                                              "champion": lambda ctx: ctx.champion()}


# --------------------------------------------------------------------------- stored outputs
@dataclass(frozen=True)
class Stored:
    """An output kept in the store: whether this run's key has it, how to read it back, what to
    say then, and the stages a rerun reports as cached when it does. ``only``: read back by
    ``--only`` runs alone; a whole run recomputes it (the refitted model, the evaluations and the
    gate's decision, whose retry policy a whole run must be free to apply again)."""
    what: str
    exists: Callable[[Context], bool]
    load: Callable[[Context], Any]
    covers: tuple[str, ...]
    only: bool = False
    stale: Callable[[Context], str | None] | None = None      # why a record in the store does not count


def _load_features(ctx: Context) -> DataResult:
    ctx.progress("featurize", f"cached: data {ctx.data_key} is unchanged (ingest, validate, featurize skipped)")
    return data.load_data_result(ctx.store, ctx.cfg, ctx.data_key)


def _search_record(ctx: Context) -> str:
    return ctx.catalog.search_record(ctx.train_key, f"search-a{ctx.attempt}")


def _load_search(ctx: Context):
    search = T.SearchResult.from_dict(ctx.store.read_json(_search_record(ctx)))
    ctx.progress("tune", f"cached: best {search.metric} {search.best_score:.5f} from {len(search.trials)} trials")
    return search


def _load_registration(ctx: Context) -> dict:
    rec = ctx.store.read_json(ctx.catalog.registered_record(ctx.train_key))
    ctx.progress("register", f"cached: this data and config are already registered as version "
                             f"{rec['version']}{'' if rec['promoted'] else ', rejected by the gate'} "
                             f"(tune, evaluate, register skipped; --force to redo)")
    return rec


def _champion_version(ctx: Context) -> str | None:
    champion = ctx.champion() if ctx.registry is not None else None
    return champion[0] if champion else None


def _against_this_champion(path: Callable[[Context], str]) -> dict:
    """``exists`` and ``stale`` of a stored evaluation or decision: it holds while the champion it was
    judged against still is the champion; ``stale`` says why one in the store does not."""
    def stale(ctx: Context) -> str | None:
        p = path(ctx)
        if not ctx.store.exists(p):
            return None
        then, now = ctx.store.read_json(p).get("champion_version"), _champion_version(ctx)
        return None if then == now else (f"the stored one was judged against "
                                          f"{f'champion v{then}' if then else 'no champion'}, the champion is now "
                                          f"{f'v{now}' if now else 'none'}")

    def exists(ctx: Context) -> bool:
        return ctx.store.exists(path(ctx)) and stale(ctx) is None
    return {"exists": exists, "stale": stale}


def _model_exists(ctx: Context) -> bool:
    return ctx.store.exists(ctx.catalog.model_record(ctx.train_key, ctx.attempt)) and \
        ctx.store.exists(ctx.catalog.threshold_record(ctx.train_key, ctx.attempt))


def _load_model(ctx: Context):
    import xgboost as xgb  # measured import cost: a cached rerun imports no XGBoost
    with ctx.store.fs.open_input_stream(ctx.catalog.model_record(ctx.train_key, ctx.attempt)) as f:
        booster = xgb.Booster()
        booster.load_model(bytearray(f.read()))
    ctx.progress("evaluate", f"cached: the model refitted by attempt {ctx.attempt} (threshold skipped)")
    return booster


def _evaluation_record(ctx: Context) -> str:
    return ctx.catalog.evaluation_record(ctx.train_key, ctx.attempt)


def _load_evaluation(ctx: Context, part: str):
    rec = ctx.store.read_json(_evaluation_record(ctx))
    if part == "overlap":
        return rec.get("overlap")
    if part == "champion_evaluation":
        return ev.EvaluationReport.from_dict(rec["champion_evaluation"]) if rec.get("champion_evaluation") else None
    evaluation = ev.EvaluationReport.from_dict(rec["evaluation"])
    with ctx.store.fs.open_input_file(ctx.catalog.evaluation_scores(ctx.train_key, ctx.attempt)) as f:
        scores = pq.read_table(f)
    evaluation.curves = _scores_of(scores)
    ctx.progress("evaluate", f"cached: the evaluation of attempt {ctx.attempt} "
                             f"(test {ctx.cfg.tune.metric} {evaluation.metrics.get(ctx.cfg.tune.metric, float('nan')):.5f})")
    return evaluation


def _load_decision(ctx: Context):
    rec = ctx.store.read_json(ctx.catalog.gate_record(ctx.train_key, ctx.attempt))["decision"]
    decision = ev.GateDecision(passed=rec["passed"], failures=list(rec["failures"]), checks=list(rec["checks"]),
                               champion_version=rec.get("champion_version"))
    ctx.progress("gate", f"cached: the gate {'passed' if decision.passed else 'rejected'} attempt {ctx.attempt}")
    return decision


def latest_attempt(ctx: Context) -> int:
    """The last search attempt in the store for this run's keys (0 when none): what ``--only``
    steps after tune work on, as the gate's retry left it."""
    n = 0
    while ctx.store.exists(ctx.catalog.search_record(ctx.train_key, f"search-a{n + 1}")):
        n += 1
    return n


STORED: dict[str, Stored] = {
    "features": Stored("the featurized data", lambda ctx: ctx.store.exists(ctx.catalog.data_done(ctx.data_key)),
                       _load_features, ("ingest", "validate", "featurize")),
    "reference_inputs": Stored("the reference profile",
                               lambda ctx: ctx.store.exists(ctx.catalog.reference_inputs(ctx.data_key)),
                               lambda ctx: ctx.store.read_json(ctx.catalog.reference_inputs(ctx.data_key)), ()),
    "search": Stored("the search's result", lambda ctx: ctx.store.exists(_search_record(ctx)),
                     _load_search, ("tune",)),
    "model": Stored("the refitted model", _model_exists, _load_model, ("tune", "evaluate"), only=True),
    "threshold": Stored("the decision threshold", _model_exists,
                        lambda ctx: ctx.store.read_json(ctx.catalog.threshold_record(ctx.train_key,
                                                                                     ctx.attempt))["threshold"],
                        (), only=True),
    "evaluation": Stored("the evaluation", load=lambda ctx: _load_evaluation(ctx, "evaluation"),
                         covers=("tune", "evaluate"), only=True, **_against_this_champion(_evaluation_record)),
    "champion_evaluation": Stored("the evaluation", load=lambda ctx: _load_evaluation(ctx, "champion_evaluation"),
                                  covers=(), only=True, **_against_this_champion(_evaluation_record)),
    "overlap": Stored("the evaluation", load=lambda ctx: _load_evaluation(ctx, "overlap"), covers=(), only=True,
                      **_against_this_champion(_evaluation_record)),
    "decision": Stored("the gate's decision", load=_load_decision, covers=("tune", "evaluate"), only=True,
                       **_against_this_champion(lambda ctx: ctx.catalog.gate_record(ctx.train_key, ctx.attempt))),
    "registration": Stored("the registration record",
                           lambda ctx: ctx.store.exists(ctx.catalog.registered_record(ctx.train_key)),
                           _load_registration, ("tune", "evaluate", "register")),
}
