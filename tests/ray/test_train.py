"""Train, tune, gate, register on the shared local Ray, with tiny data and a real MLflow (SQLite)."""
import os
import signal
import threading
import time

import numpy as np
import pytest

from mlops_ray.errors import ConfigError, DataValidationError, GateRejected, RegistryError, ResourceError
from mlops_ray.pipeline import RunOptions, run_pipeline
from mlops_ray.registry import Registry
from tests.conftest import make_config, write_parquet

FAST = {"num_samples": 3, "report_every": 5, "seed": 1}
MODEL = {"num_boost_round": 30, "early_stopping_rounds": 10, "slice_column": "channel"}


def cfg_for(source, store, **kw):
    kw.setdefault("tune", FAST)
    kw.setdefault("model", MODEL)
    kw.setdefault("features", {"min_frequency": 2})
    kw.setdefault("gate", {"min": {"auc": 0.55}})
    return make_config(str(source), store=str(store), **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    df = generate_chunk(SynthSpec(rows=8000, seed=5), 0, 8000)
    return write_parquet(df, tmp_path_factory.mktemp("train") / "data", parts=2)


@pytest.fixture(scope="module")
def first_run(data_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    cfg = cfg_for(data_dir, store)
    return cfg, store, run_pipeline(cfg)


def test_first_model_becomes_champion(first_run):
    cfg, store, res = first_run
    assert res.version == "1" and res.promoted
    assert res.search["n_trials"] == 3 and res.search["metric"] == "auc"
    assert 0.55 < res.evaluation["metrics"]["auc"] <= 1
    assert set(res.evaluation["slices"]) >= {"online", "in_store"}
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    assert reg.get_alias("champion") == "1" and reg.get_alias("challenger") == "1"
    bundle = reg.load_bundle("champion")
    assert bundle.metadata["dataset"]["fingerprint"].startswith("sha256:")
    assert bundle.metadata["gate"]["passed"] is True and bundle.reference["features"]


def test_the_search_starts_with_the_baselines_and_the_winner_is_no_worse(first_run):
    _, _, res = first_run
    base = res.search["baselines"]     # num_samples 3: the three baselines are the whole search
    assert list(base) == ["xgboost defaults", "depth 8, eta 0.1", "depth 6, eta 0.1, subsample 0.8"]
    assert all(v is not None for v in base.values()) and res.search["best_score"] >= max(base.values())


def test_rerun_skips_finished_steps(first_run):
    cfg, store, _ = first_run
    res = run_pipeline(cfg)
    assert res.cached_steps == ["ingest", "validate", "featurize", "tune", "evaluate", "register"]
    assert res.version == "1"


def test_unreachable_threshold_rejects_and_keeps_champion(first_run):
    cfg, store, _ = first_run
    strict = cfg_for(cfg.data.source, store, gate={"min": {"auc": 0.999}})
    with pytest.raises(GateRejected) as e:
        run_pipeline(strict)
    assert e.value.exit_code == 4
    assert "auc" in str(e.value) and "< required 0.999 (gate.min.auc)" in str(e.value)
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    assert reg.get_alias("champion") == "1"                 # unchanged
    rejected = reg.get_alias("challenger")
    assert rejected != "1" and "auc" in reg.version_tags(rejected)["rejected"]


def test_the_decision_threshold_is_chosen_on_validation_and_kept_in_the_bundle(first_run):
    cfg, store, res = first_run
    choice = res.evaluation["threshold_choice"]
    assert choice["rule"] == "max_f1" and 0 < choice["value"] < 1 and choice["valid"]["n"] > 0
    assert res.evaluation["threshold"] == choice["value"]            # test metrics at the chosen threshold
    bundle = Registry(cfg.registry, cfg.store, cfg.name).load_bundle("1")
    assert bundle.threshold == choice["value"] and bundle.metadata["threshold"]["rule"] == "max_f1"


def test_a_precision_target_the_model_cannot_reach_registers_nothing(first_run):
    cfg, store, _ = first_run
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    versions = lambda: len(reg.client.search_model_versions(f"name='{reg.model_name}'"))    # noqa: E731
    before = versions()
    strict = cfg_for(cfg.data.source, store, model={**MODEL, "threshold": {"min_precision": 0.999}})
    with pytest.raises(ConfigError) as e:
        run_pipeline(strict)
    assert e.value.exit_code == 2
    assert "no threshold reaches precision 0.999 on the validation split" in str(e.value)
    assert "the best reachable is" in str(e.value) and "Lower min_precision" in str(e.value)
    assert versions() == before and reg.get_alias("champion") == "1"


def test_challenger_must_beat_champion_on_same_test_rows(first_run):
    cfg, store, _ = first_run
    other = cfg_for(cfg.data.source, store, gate={"min": {"auc": 0.55}, "min_delta": 0.2},
                    tune={**FAST, "seed": 9})
    with pytest.raises(GateRejected, match=r"does not beat champion v1 .* by min_delta 0.2"):
        run_pipeline(other)
    assert Registry(cfg.registry, cfg.store, cfg.name).get_alias("champion") == "1"


def test_one_class_label(tmp_path, data_dir):
    import pandas as pd
    import pyarrow.parquet as pq
    df = pq.read_table(data_dir).to_pandas().assign(is_fraud=0)
    src = write_parquet(df, tmp_path / "oneclass")
    cfg = cfg_for(src, tmp_path / "store", schema={"columns": {"is_fraud": {"allowed": [0, 1]}}})
    with pytest.raises(DataValidationError, match="label 'is_fraud' has only one class"):
        run_pipeline(cfg)
    del pd


@pytest.mark.timeout(120)   # a hang guard: MLflow's own retries would wait for minutes
def test_unreachable_tracking_server_fails_before_training(tmp_path, data_dir):
    cfg = cfg_for(data_dir, tmp_path / "store", registry={"tracking_uri": "http://127.0.0.1:9"})
    with pytest.raises(RegistryError, match="127.0.0.1:9"):
        run_pipeline(cfg)
    assert not (tmp_path / "store" / "t" / "data").exists()     # nothing ran


@pytest.mark.timeout(120)   # a hang guard: Ray would wait forever for a GPU that never comes
def test_gpu_request_is_refused_at_once_on_cpu(tmp_path, data_dir):
    cfg = cfg_for(data_dir, tmp_path / "store", tune={**FAST, "gpus_per_trial": 1}, model={**MODEL, "device": "cuda"})
    with pytest.raises(ResourceError, match="1 GPU\\(s\\) requested but the cluster has 0"):
        run_pipeline(cfg)
    assert not (tmp_path / "store" / "t" / "data").exists()     # refused before any data was read


@pytest.mark.parametrize("tune, model, message", [
    ({"space": {"etta": {"type": "float", "low": 0.1, "high": 0.3}}}, {}, "tune.space.etta is not an XGBoost parameter; did you mean 'eta'?"),
    ({"metric": "rmse", "mode": "min"}, {}, "tune.metric 'rmse' is not computed while training a binary model"),
    ({"metric": "auc", "mode": "min"}, {}, "tune.mode is 'min' but auc is better when higher"),
])
def test_bad_search_config_fails_before_data(tmp_path, data_dir, tune, model, message):
    cfg = cfg_for(data_dir, tmp_path / "store", tune={**FAST, **tune}, model={**MODEL, **model})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        run_pipeline(cfg)


def test_gate_metric_the_task_does_not_produce(tmp_path, data_dir):
    cfg = cfg_for(data_dir, tmp_path / "store", gate={"min": {"rmse": 0.1}})
    with pytest.raises(ConfigError, match="gate.min.rmse"):
        run_pipeline(cfg)


def test_regression_task(tmp_path, data_dir):
    cfg = cfg_for(data_dir, tmp_path / "store", model={**MODEL, "task": "regression", "slice_column": None},
                  data={"label": "credit_score"}, gate={},
                  schema={"max_null_fraction": 0.5, "columns": {"credit_score": {"max_null_fraction": 0}}})
    import pyarrow.parquet as pq
    df = pq.read_table(data_dir).to_pandas().dropna(subset=["credit_score"])
    cfg = cfg_for(write_parquet(df, tmp_path / "reg"), tmp_path / "store",
                  model={**MODEL, "task": "regression", "slice_column": None}, data={"label": "credit_score"},
                  gate={})
    res = run_pipeline(cfg)
    assert res.search["metric"] == "rmse" and res.evaluation["metrics"]["rmse"] > 0


def test_resume_does_not_redo_finished_trials(first_run, tmp_path):
    from mlops_ray.train import tune as T
    from mlops_ray.train import xgb as X
    cfg, store, res = first_run
    spec = res.data.spec
    splits = X.load_splits(f"{res.data.out_dir}/features", spec, "binary")
    kw = dict(splits=splits, model=cfg.model, tune_cfg=cfg.tune, storage=str(tmp_path / "tune"),
              experiment="resume-me", strategy="single")
    first = T.run_search(**kw)
    again = T.run_search(**kw, resume=True)
    assert again.restored and len(again.trials) == len(first.trials)
    assert again.best_score == first.best_score


def test_killed_trial_worker_is_retried(first_run, tmp_path):
    """FailureConfig(max_failures): a trial's worker process killed mid-training is restarted."""
    from mlops_ray.config import TuneConfig
    from mlops_ray.train import tune as T
    from mlops_ray.train import xgb as X
    cfg, store, res = first_run
    splits = X.load_splits(f"{res.data.out_dir}/features", res.data.spec, "binary")
    slow = cfg.model.model_copy(update={"num_boost_round": 3000, "early_stopping_rounds": 3000})
    tcfg = TuneConfig(num_samples=2, report_every=50, max_failures=2, scheduler="none", seed=3,
                      space={"max_depth": {"type": "int", "low": 8, "high": 10}})
    killed = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            import subprocess
            out = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc.train"], capture_output=True, text=True)
            pids = [int(p) for p in out.stdout.split()]
            if pids:
                time.sleep(1.0)
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.2)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    result = T.run_search(splits=splits, model=slow, tune_cfg=tcfg, storage=str(tmp_path / "tune"),
                          experiment="kill", strategy="single")
    th.join(5)
    assert killed, "no trial worker was found to kill"
    assert np.isfinite(result.best_score) and len(result.trials) == 2
    assert all(t["error"] is None for t in result.trials)


def _when_a_trial_runs(action, timeout: float = 60):
    """Run ``action()`` from a thread once a trial's worker process exists."""
    import subprocess
    done = []

    def wait():
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc.train"], capture_output=True, text=True)
            if out.stdout.split():
                time.sleep(1.0)
                done.append(action())
                return
            time.sleep(0.2)

    th = threading.Thread(target=wait, daemon=True)
    th.start()
    return th, done


def test_ctrl_c_stops_the_search_and_resume_continues_it(first_run, tmp_path):
    """Tune's own SIGINT handler made fit() return as if the search were complete; the pipeline then
    registered and cached the partial search. Now Ctrl-C raises Interrupted (exit 130), and
    --resume finishes the same experiment."""
    from mlops_ray.config import TuneConfig
    from mlops_ray.errors import ExitCode, Interrupted
    from mlops_ray.train import tune as T
    from mlops_ray.train import xgb as X
    cfg, store, res = first_run
    splits = X.load_splits(f"{res.data.out_dir}/features", res.data.spec, "binary")
    slow = cfg.model.model_copy(update={"num_boost_round": 400, "early_stopping_rounds": 400})
    # a choice without XGBoost's default depth 6: the baseline point takes the nearest (Ray's Optuna
    # searcher refused the point that left the key out)
    tcfg = TuneConfig(num_samples=3, report_every=20, scheduler="none", seed=3, max_concurrent=1,
                      space={"max_depth": {"type": "choice", "values": [8, 10]}})
    kw = dict(splits=splits, model=slow, tune_cfg=tcfg, storage=str(tmp_path / "tune"), experiment="ctrl-c",
              strategy="single")
    lines = []
    th, sent = _when_a_trial_runs(lambda: os.kill(os.getpid(), signal.SIGINT))
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as e:
        T.run_search(**kw)
    th.join(5)
    assert sent, "no trial started to interrupt"
    assert e.value.exit_code == ExitCode.INTERRUPTED == 130
    assert "--resume to continue" in e.value.message and "ctrl-c" in e.value.message
    assert signal.getsignal(signal.SIGINT) is before and not os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    again = T.run_search(**kw, resume=True, progress=lambda stage, msg: lines.append(msg))
    assert again.restored and len(again.trials) == 3 and all(t["error"] is None for t in again.trials)
    assert np.isfinite(again.best_score)
    # the resumed search shows its progress, counting the trials that ended before the Ctrl-C
    assert any("trial 3/3 done" in m for m in lines), lines


def test_gate_retries_widen_the_search_then_reject(first_run):
    cfg, store, _ = first_run
    retry = cfg_for(cfg.data.source, store, gate={"min": {"auc": 0.999}, "retries": 1},
                    tune={**FAST, "num_samples": 2})
    with pytest.raises(GateRejected):
        run_pipeline(retry)
    runs = list((store / "t" / "runs").glob("*/search-a1.json"))
    assert runs, "the retry searched again"
    import json
    assert json.loads(runs[0].read_text())["trials"].__len__() == 4      # twice the budget


def test_only_evaluate_registers_nothing(first_run):
    cfg, store, _ = first_run
    before = Registry(cfg.registry, cfg.store, cfg.name).get_alias("challenger")
    res = run_pipeline(cfg, RunOptions(only="evaluate"))
    assert res.evaluation and res.version is None and "tune" in res.cached_steps
    assert Registry(cfg.registry, cfg.store, cfg.name).get_alias("challenger") == before


def test_a_label_expression_trains_without_the_columns_it_reads(data_dir, tmp_path):
    label = {"label": {"name": "big", "expr": "amount > 150"}}
    cfg = cfg_for(data_dir, tmp_path / "store", data=label, model={**MODEL, "slice_column": None},
                  gate={"min": {"auc": 0.5}})
    assert cfg.data.label == "big" and cfg.data.label_expr == "amount > 150"
    # amount is missing in some rows: they have no label, and validation says why and what to do
    with pytest.raises(DataValidationError) as e:
        run_pipeline(cfg)
    assert "label column 'big' is null in" in str(e.value) and "fillna(column, value)" in str(e.value)
    cfg = cfg_for(data_dir, tmp_path / "store", data={**label, "unlabelled": "drop"},
                  model={**MODEL, "slice_column": None}, gate={"min": {"auc": 0.5}})
    res = run_pipeline(cfg)
    assert res.version == "1"
    spec = Registry(cfg.registry, cfg.store, cfg.name).load_bundle("1").spec
    assert spec.label == "big" and "amount" not in spec.input_types          # the leak guard
    assert "is_fraud" in spec.input_types           # the data's own label column is just a column here


def test_a_label_expression_on_a_missing_column_is_named(data_dir, tmp_path):
    cfg = cfg_for(data_dir, tmp_path / "store", data={"label": {"name": "big", "expr": "amonut > 150"}})
    with pytest.raises(ConfigError) as e:
        run_pipeline(cfg)
    assert "data.label expr 'amonut > 150' reads column 'amonut', which is not in the data" in str(e.value)
    assert "did you mean 'amount'" in str(e.value)


def test_a_label_expression_that_is_not_binary_fails_validation(data_dir, tmp_path):
    cfg = cfg_for(data_dir, tmp_path / "store", data={"label": {"name": "big", "expr": "amount * 2"}})
    with pytest.raises(DataValidationError) as e:
        run_pipeline(cfg)
    assert "label column 'big' has" in str(e.value) and "data.label expr 'amount * 2' must be a comparison" \
        in str(e.value)


def test_a_text_multiclass_label_is_encoded_and_answers_by_class_name(data_dir, tmp_path):
    import pandas as pd
    cfg = cfg_for(data_dir, tmp_path / "store", data={"label": "device"},
                  model={**MODEL, "task": "multiclass", "slice_column": None}, gate={"min": {}})
    res = run_pipeline(cfg)
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    bundle = reg.load_bundle(res.version)
    df = pd.read_parquet(data_dir)
    assert bundle.spec.classes == sorted(df["device"].dropna().unique().tolist())      # text: codes by name
    assert res.evaluation["metrics"]["logloss"] > 0 and res.evaluation["metrics"]["accuracy"] > 0
    p = bundle.predict(df.head(50))
    assert p.shape == (50, len(bundle.spec.classes))

    # labels arrive later by class name (as /predict answers): matched against this version's classes
    import os
    import time

    from mlops_ray.monitor.labels import feedback
    from mlops_ray.monitor.predlog import PredictionLog
    seen = df[df["device"].notna()].head(40)
    probs = bundle.predict(seen)
    lg = PredictionLog(os.path.join(cfg.store, cfg.name, "predlog"), {"amount": "float"}, owner="t",
                       spool_dir=str(tmp_path / "spool"), flush_rows=10**9, flush_s=3600.0, multiclass=True)
    for i, row in enumerate(probs):
        lg.append(f"r{i}", str(res.version), [{"amount": 1.0}], [row.tolist()], ts=time.time())
    lg.flush()
    lg.close()
    truth = seen["device"].tolist()
    # a misspelt class (case) would overwrite good labels and read as wrong answers: refused, nothing stored
    typo = tmp_path / "typo.csv"
    pd.DataFrame({"request_id": [f"r{i}" for i in range(40)],
                  "device": [truth[0].upper()] + truth[1:]}).to_csv(typo, index=False)
    from mlops_ray.errors import MonitorError
    with pytest.raises(MonitorError, match=rf"holds 1 class\(es\) no version of this pipeline knows: "
                                           rf"'{truth[0].upper()}' \(1 rows, did you mean '{truth[0]}'\?\)\. "
                                           rf"Known classes: .* Nothing was stored"):
        feedback(cfg, str(typo))
    assert not os.path.exists(os.path.join(cfg.store, cfg.name, "labels"))
    truth[0] = "a device nobody trained on"       # a class new in the world: stored when the user says so
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": [f"r{i}" for i in range(40)], "device": truth}).to_csv(labels, index=False)
    fb = feedback(cfg, str(labels), new_classes=True)
    v = fb["versions"][str(res.version)]
    right = [bundle.spec.classes[int(np.argmax(probs[i]))] == truth[i] for i in range(40)]
    assert fb["unknown_classes"] == ["a device nobody trained on"] and v["labelled"] == 40
    assert v["metric"] == "accuracy" and v["value"] == pytest.approx(np.mean(right)) and not right[0]


def test_a_class_seen_only_after_the_training_period_is_named(tmp_path):
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    df = generate_chunk(SynthSpec(rows=3000, seed=9), 0, 3000).sort_values("event_time").reset_index(drop=True)
    df["kind"] = np.where(np.arange(len(df)) % 2 == 0, "a", "b")
    df.loc[df.index[-100:], "kind"] = "late"                         # only in the newest rows: the test split
    data = write_parquet(df, tmp_path / "data", parts=2)
    cfg = cfg_for(data, tmp_path / "store", data={"label": "kind", "split": {"method": "time"}},
                  model={**MODEL, "task": "multiclass", "slice_column": None}, gate={"min": {}})
    with pytest.raises(DataValidationError) as e:
        run_pipeline(cfg)
    assert "label 'kind' has class(es) ['late'] in the test split but never in the training split" in str(e.value)
