"""The pipeline's table of steps and its runner, without Ray: the table's wiring, the cache keys,
what a run plans for --only/--from/--force on a given store, the refusals, and the steps that are
pure functions (threshold, gate, the gate's retry policy). The Ray Data steps (ingest, validate,
featurize, reference) and tune/register run alone in tests/ray/test_train.py."""
from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_ray._version import __version__
from mlops_ray.errors import ConfigError, ExitCode
from mlops_ray.pipeline import NAMES, STEPS, TABLE, RunOptions, run_pipeline
from mlops_ray.pipeline import steps, training
from mlops_ray.pipeline.keys import DATA_LAYOUT, data_key, train_key
from mlops_ray.pipeline.runner import Runner, downstream

pytestmark = pytest.mark.unit
from mlops_ray.storage.store import Store
from mlops_ray.train import evaluate as ev
from tests.support.configs import make_config


# --------------------------------------------------------------------------- the table
def test_every_step_input_is_given_or_produced_by_an_earlier_step():
    produced = set(steps.GIVEN)
    for step in TABLE:
        assert set(step.inputs) <= produced, (step.name, set(step.inputs) - produced)
        assert not set(step.outputs) & produced, f"{step.name} produces a value another step does"
        produced |= set(step.outputs)
    assert set(steps.STORED) <= produced


def test_the_table_reads_like_the_lifecycle_and_reports_the_stages_run_always_reported():
    assert NAMES == ("ingest", "validate", "featurize", "reference", "tune", "threshold", "evaluate", "gate",
                     "register")
    assert STEPS == ("ingest", "validate", "featurize", "tune", "evaluate", "register")
    assert [s.stage for s in TABLE] == sorted((s.stage for s in TABLE), key=STEPS.index)


def test_from_reruns_the_step_and_what_depends_on_it():
    assert downstream("reference") == {"reference", "register"}
    assert downstream("tune") == {"tune", "threshold", "evaluate", "gate", "register"}
    assert downstream("validate") == set(NAMES) - {"ingest"}


def test_cache_keys_are_the_recipes_existing_stores_were_written_with():
    cfg = make_config("x.parquet")
    data = hashlib.sha256("|".join([DATA_LAYOUT, "fp", cfg.data.section_hash(), cfg.schema_.section_hash(),
                                    cfg.features.section_hash(), cfg.model.task, __version__]).encode())
    assert data_key(cfg, "fp") == data.hexdigest()[:16]
    train = hashlib.sha256("|".join([data.hexdigest()[:16], cfg.model.section_hash(), cfg.tune.section_hash(),
                                     cfg.gate.section_hash(), cfg.registry.section_hash(), __version__]).encode())
    assert train_key(cfg, data.hexdigest()[:16]) == train.hexdigest()[:16]


# --------------------------------------------------------------------------- planning on a store
@pytest.fixture
def ctx(tmp_path):
    cfg = make_config("x.parquet", store=str(tmp_path / "store"), gate={"retries": 1})
    source = SimpleNamespace(fingerprint="fp", format="parquet", rows=10, describe=lambda: {"rows": 10})
    return steps.Context(cfg, Store(cfg.store), source, lambda step, message: None)


def _store_has(ctx, *names: str) -> None:
    """Write the records that say these stored values are in the store for ctx's keys."""
    cat = ctx.catalog
    paths = {"features": [cat.data_done(ctx.data_key), cat.reference_inputs(ctx.data_key)],
             "search": [cat.search_record(ctx.train_key, "search-a0")],
             "model": [cat.model_record(ctx.train_key, 0), cat.threshold_record(ctx.train_key, 0)],
             "evaluation": [cat.evaluation_record(ctx.train_key, 0)],
             "decision": [cat.gate_record(ctx.train_key, 0)],
             "registration": [cat.registered_record(ctx.train_key)]}
    for name in names:
        for path in paths[name]:
            ctx.store.write_json(path, {})


def _plan(ctx, targets=("features", "reference_inputs", "registration"), **opts) -> list[str]:
    return [s.name for s in Runner(ctx, RunOptions(**opts)).plan(targets)]


def test_a_fresh_store_plans_every_step_and_a_finished_one_none(ctx):
    assert _plan(ctx) == list(NAMES)
    _store_has(ctx, "features", "search", "registration")
    assert _plan(ctx) == []
    assert _plan(ctx, force=True) == list(NAMES)


def test_cached_data_and_search_leave_the_steps_after_them(ctx):
    _store_has(ctx, "features")
    assert _plan(ctx) == ["tune", "threshold", "evaluate", "gate", "register"]
    _store_has(ctx, "search")
    assert _plan(ctx) == ["threshold", "evaluate", "gate", "register"]
    assert _plan(ctx, from_step="tune") == ["tune", "threshold", "evaluate", "gate", "register"]


def test_only_runs_the_step_from_its_stored_inputs(ctx):
    _store_has(ctx, "features", "search", "registration")
    only = lambda name: _plan(ctx, steps.STEP[name].outputs, only=name)   # noqa: E731
    assert only("validate") == ["ingest", "validate"]        # no features written
    assert only("tune") == ["tune"]
    assert only("threshold") == ["threshold"]
    # values kept in memory only (a Ray dataset, the parsed rows) are recomputed by their steps
    assert only("reference") == ["ingest", "validate", "featurize", "reference"]
    _store_has(ctx, "model", "evaluation", "decision")
    assert only("evaluate") == ["evaluate"] and only("gate") == ["gate"] and only("register") == ["register"]
    # a whole run recomputes the model, the evaluations and the decision (the gate may retry)
    ctx.store.fs.delete_file(ctx.catalog.registered_record(ctx.train_key))
    assert _plan(ctx) == ["threshold", "evaluate", "gate", "register"]


def test_data_featurized_alone_is_complete_once_its_reference_is_profiled(ctx):
    """`--only featurize` leaves no reference profile: `--only tune` may follow, a full run profiles."""
    ctx.store.write_json(ctx.catalog.data_done(ctx.data_key), {})
    assert _plan(ctx, ("search",), only="tune") == ["tune"]
    assert _plan(ctx) == list(NAMES)      # the rows reference profiles are in memory only: featurize again


@pytest.mark.parametrize("step, stored, first", [
    ("tune", (), "featurize"), ("threshold", (), "featurize"), ("threshold", ("features",), "tune"),
    ("register", ("features",), "tune"), ("register", ("features", "search"), "threshold"),
    ("gate", ("features", "search", "model"), "evaluate"), ("gate", ("features",), "tune")])
def test_only_a_step_whose_stored_input_is_missing_names_the_step_to_run_first(ctx, step, stored, first):
    _store_has(ctx, *stored)
    with pytest.raises(ConfigError, match=rf"--only {step} needs what is not in the store .* "
                                          rf"Run the {first} step first \(`mlops-ray run CONFIG --only {first}`\)"):
        _plan(ctx, steps.STEP[step].outputs, only=step)


def test_an_evaluation_made_against_another_champion_is_named_as_such(ctx):
    _store_has(ctx, "features", "search", "model")
    ctx.store.write_json(ctx.catalog.evaluation_record(ctx.train_key, 0), {"champion_version": "3"})
    with pytest.raises(ConfigError, match=r"the evaluation \(from evaluate; the stored one was judged against "
                                          r"champion v3, the champion is now none\)\. Run the evaluate step first"):
        _plan(ctx, steps.STEP["gate"].outputs, only="gate")


def test_run_refuses_only_with_a_missing_input_before_reading_a_row(tmp_path):
    pq.write_table(pa.table({"transaction_id": ["a", "b"], "event_time": pa.array([1, 2], pa.timestamp("s")),
                             "amount": [1.0, 2.0], "is_fraud": [0, 1]}), tmp_path / "tx.parquet")
    cfg = make_config(str(tmp_path / "tx.parquet"), store=str(tmp_path / "store"))
    with pytest.raises(ConfigError, match="the featurized data .* Run the featurize step first") as e:
        run_pipeline(cfg, RunOptions(only="tune"))
    assert e.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize("flag", ["only", "from_step"])
def test_an_unknown_step_lists_the_steps(tmp_path, flag):
    cfg = make_config("x.parquet", store=str(tmp_path / "store"))
    name = "--only" if flag == "only" else "--from"
    with pytest.raises(ConfigError, match=rf"{name} 'train' is not a step; steps: ingest, validate, featurize, "
                                          r"reference, tune, threshold, evaluate, gate, register$"):
        run_pipeline(cfg, RunOptions(**{flag: "train"}))


# --------------------------------------------------------------------------- steps alone
def _evaluation(auc_like: float):
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.3, 0.8, 0.9]) if auc_like < 1 else np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    return ev.evaluate("binary", y, p, 0.5)


def test_gate_step_is_the_gate_s_comparison_and_keeps_it_for_only_runs(ctx):
    ctx.cfg = ctx.cfg.model_copy(update={"gate": make_config("x.parquet", gate={"min": {"auc": 0.9}}).gate})
    out = steps.gate_step(ctx, _evaluation(1.0), None, None, None)
    assert out["decision"].passed
    out = steps.gate_step(ctx, _evaluation(0.5), None, None, None)
    assert not out["decision"].passed and "gate.min.auc" in out["decision"].failures[0]
    assert steps.STORED["decision"].exists(ctx)
    assert steps.STORED["decision"].load(ctx) == out["decision"]


def test_the_gate_s_retry_searches_again_from_tune_once_per_allowed_retry(ctx):
    said = []
    ctx.progress = lambda step, message: said.append((step, message))
    _store_has(ctx, "features")
    runner = Runner(ctx, RunOptions())
    runner.values.update({"features": object(), "search": object(), "decision": None})
    rejected = {"decision": ev.GateDecision(passed=False, failures=["auc 0.5 < required 0.9"], checks=[])}
    gate = steps.STEP["gate"]
    assert [s.name for s in runner._retry(gate, rejected)] == ["tune", "threshold", "evaluate", "gate"]
    assert ctx.attempt == 1 and "search" not in runner.values and "features" in runner.values
    assert said == [("gate", "rejected (auc 0.5 < required 0.9); retrying with twice the budget")]
    assert runner._retry(gate, rejected) == []            # gate.retries: 1
    passed = {"decision": ev.GateDecision(passed=True, failures=[], checks=[])}
    ctx.attempt = 0
    assert runner._retry(gate, passed) == []


def _splits(n_valid: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(float)
    import xgboost as xgb
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(x, label=y), 10)
    X = pd.DataFrame(x[:n_valid], columns=["a", "b"])
    return SimpleNamespace(rows={"valid": n_valid}, X={"valid": X}, y={"valid": y[:n_valid]}, spec=None), booster


@pytest.mark.parametrize("rule, n_valid, strategy, want", [
    (0.3, 100, "single", {"value": 0.3, "rule": "fixed"}),
    ("max_f1", 0, "single", {"value": 0.5, "rule": "max_f1: the validation split has no rows, 0.5 kept"}),
])
def test_threshold_step_without_a_fit(rule, n_valid, strategy, want):
    cfg = make_config("x.parquet", model={"threshold": rule, "refit": "best_trial"})
    splits, booster = _splits(n_valid)
    choice = training.choose_threshold(cfg, splits, None, booster, strategy)
    assert {k: choice[k] for k in want} == want


def test_threshold_step_chooses_on_the_validation_predictions_and_says_when_they_are_in_sample():
    splits, booster = _splits(100)
    cfg = make_config("x.parquet", model={"threshold": "max_f1", "refit": "best_trial"})
    choice = training.choose_threshold(cfg, splits, None, booster, "single")
    assert choice["rule"] == "max_f1" and choice["valid"]["f1"] > 0.9 and "note" not in choice
    cfg = make_config("x.parquet", model={"threshold": "max_f1", "refit": "train_valid"})
    choice = training.choose_threshold(cfg, splits, None, booster, "distributed")
    assert "refitted on the validation rows" in choice["note"]


def test_search_summary_is_the_search_without_its_trials():
    search = SimpleNamespace(to_dict=lambda: {"best_score": 0.9, "trials": [{}], "metric": "auc"})
    assert training.search_summary(search) == {"best_score": 0.9, "metric": "auc"}
    assert json.dumps(training.search_summary(search))
