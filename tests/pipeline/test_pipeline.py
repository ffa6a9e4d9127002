"""Train, tune, gate, register on the shared local Ray, with tiny data and a real MLflow (SQLite)."""
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mlops_ray.cli import app
from mlops_ray.errors import ConfigError, DataValidationError, GateRejected, RegistryError, ResourceError
from mlops_ray.pipeline import STEPS, RunOptions, run_pipeline
from mlops_ray.registry import Registry
from tests.support.configs import base_raw, make_config, write_parquet
from tests.support.http_load import free_base

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
FAST = {"num_samples": 4, "report_every": 5, "seed": 1}     # the three baselines, then one TPE trial
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


def readme_python_api() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"Python API \(the CLI only calls these\):\n\n```python\n(.*?)```", text, re.S)
    assert m, "the README's Python API example changed shape"
    return m.group(1)


@pytest.fixture(scope="module")
def first_run(data_dir, tmp_path_factory):
    """The first run is the README's Python API example itself, run as printed: its config path and
    override pointed at this module's YAML (cfg_for's settings) and data."""
    store = tmp_path_factory.mktemp("store")
    raw = base_raw("s3://replaced/by/the/override", tune=FAST, model=MODEL, features={"min_frequency": 2},
                   gate={"min": {"auc": 0.55}})
    raw["store"] = str(store)
    path = store / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    example = readme_python_api()
    assert '"configs/quickstart.yaml"' in example and '"s3://bucket/tx/"' in example
    code = example.replace('"configs/quickstart.yaml"', repr(str(path))).replace('"s3://bucket/tx/"',
                                                                                  repr(str(data_dir)))
    scope: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), scope)
    cfg = scope["cfg"]
    assert cfg == cfg_for(data_dir, store)            # what the other tests of this module build
    return cfg, store, scope["result"], scope["report"]


def test_the_readme_python_api_validates_runs_and_reports_what_it_says(first_run, data_dir, tmp_path):
    import mlops_ray
    cfg, store, res, report = first_run
    assert report.passed and report.rows == 8000
    assert res.version == "1" and res.aliases == ["challenger", "champion"]     # as the README's comment says
    assert 0.55 < res.evaluation["metrics"]["auc"] <= 1
    bad = cfg_for(data_dir, tmp_path / "store", schema={"columns": {"amount": {"max": 0}}})
    with pytest.raises(DataValidationError, match="column 'amount' has .* value\\(s\\) outside"):
        mlops_ray.validate(bad)                       # "raises DataValidationError on failure"


def test_first_model_becomes_champion(first_run):
    cfg, store, res, _ = first_run
    assert res.version == "1" and res.promoted
    assert res.search["n_trials"] == 4 and res.search["metric"] == "auc"
    assert 0.55 < res.evaluation["metrics"]["auc"] <= 1
    assert set(res.evaluation["slices"]) >= {"online", "in_store"}
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    assert reg.get_alias("champion") == "1" and reg.get_alias("challenger") == "1"
    bundle = reg.load_bundle("champion")
    assert bundle.metadata["dataset"]["fingerprint"].startswith("sha256:")
    assert bundle.metadata["gate"]["passed"] is True and bundle.reference["features"]


def test_the_search_starts_with_the_baselines_and_the_winner_is_no_worse(first_run):
    cfg, _, res, _ = first_run
    # every trial, as the run recorded them (tuning.json, what the report reads)
    trials = Registry(cfg.registry, cfg.store, cfg.name).run_json(res.run_id, "tuning.json")["trials"]
    base = res.search["baselines"]
    assert list(base) == ["xgboost defaults", "depth 8, eta 0.1", "depth 6, eta 0.1, subsample 0.8"]
    # XGBoost's documented defaults (eta 0.3, depth 6, the rest 1), then the two named variations,
    # in the default space's keys
    defaults = {"eta": 0.3, "max_depth": 6, "min_child_weight": 1.0, "subsample": 1.0, "colsample_bytree": 1.0,
                "lambda": 1.0}
    expected = [defaults, {**defaults, "eta": 0.1, "max_depth": 8},
                {**defaults, "eta": 0.1, "subsample": 0.8, "colsample_bytree": 0.8}]
    for t, want in zip(trials[:3], expected):
        assert {k: t["config"][k] for k in want} == pytest.approx(want), t
    assert len(trials) == 4 and "baseline" not in trials[3]          # then the searcher's own trial
    assert {k: trials[3]["config"][k] for k in defaults} not in expected
    scores = [t["auc"] for t in trials]
    assert all(v is not None for v in scores)
    assert res.search["best_score"] == max(scores) >= max(base.values())
    assert res.search["best_config"] == trials[int(np.argmax(scores))]["config"]


def test_rerun_skips_finished_steps(first_run):
    cfg, store, *_ = first_run
    res = run_pipeline(cfg)
    assert res.cached_steps == ["ingest", "validate", "featurize", "tune", "evaluate", "register"]
    assert res.version == "1"


def test_an_unchanged_rerun_starts_no_ray(first_run, monkeypatch):
    """Every step cached: the caches are found on the source's metadata, before any Ray is started or
    joined (it took 25 s of a 78 s first run); the result and the progress lines are as before."""
    from mlops_ray import pipeline

    def no_ray(*args, **kwargs):
        raise AssertionError("a cached rerun entered ray_runtime")
    monkeypatch.setattr(pipeline.runner, "ray_runtime", no_ray)
    cfg, store, first, _ = first_run
    said = []
    res = run_pipeline(cfg, progress=lambda step, message: said.append((step, message)))
    assert res.cached_steps == list(pipeline.STEPS) and res.version == first.version
    assert res.data.key == first.data.key and res.evaluation == first.evaluation and res.aliases
    assert [step for step, _ in said] == ["ingest", "featurize", "register"]
    assert said[1][1].startswith("cached: data") and said[2][1].startswith("cached: this data and config")
    with pytest.raises(AssertionError, match="entered ray_runtime"):     # a forced data step needs Ray
        run_pipeline(cfg, RunOptions(only="validate"))


def test_unreachable_threshold_rejects_and_keeps_champion(first_run):
    cfg, store, *_ = first_run
    strict = cfg_for(cfg.data.source, store, gate={"min": {"auc": 0.999}})
    with pytest.raises(GateRejected) as e:
        run_pipeline(strict)
    assert e.value.exit_code == 4
    assert "auc" in str(e.value) and "< required 0.999 (gate.min.auc)" in str(e.value)
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    assert reg.get_alias("champion") == "1"                 # unchanged
    rejected = reg.get_alias("challenger")
    assert rejected != "1" and "auc" in reg.version_tags(rejected)["rejected"]


def cli_config(data_dir, store, tmp_path, **sections) -> str:
    """cfg_for's config as a YAML file for the CLI."""
    raw = base_raw(str(data_dir), tune=FAST, model=MODEL, features={"min_frequency": 2},
                   gate={"min": {"auc": 0.55}}, **sections)
    raw["store"] = str(store)
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_a_version_the_gate_rejected_is_not_deployed_without_force(first_run, data_dir, tmp_path):
    """Refused before anything starts: exit 8, the gate's reason, and the flag that overrides it."""
    from mlops_ray.storage.state import read_head
    from mlops_ray.storage.state import read_state, state_path
    cfg, store, *_ = first_run
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    rejected = reg.get_alias("challenger")            # the previous test's version, rejected by the gate
    assert rejected != "1" and reg.version_tags(rejected)["gate"] == "rejected"
    path = cli_config(data_dir, store, tmp_path, serve={"port": free_base()})
    for how in (["--version", rejected], ["--alias", "challenger"]):
        r = CliRunner().invoke(app, ["deploy", path, *how])
        assert r.exit_code == 8, r.output
        text = " ".join(r.stderr.split())
        ref = rejected if how[0] == "--version" else "@challenger"
        assert f"version {rejected} ({ref}) was rejected (auc" in text and "< required 0.999 (gate.min.auc)" in text
        assert "pass --force to do it anyway" in text
    assert read_state(state_path(cfg.store, cfg.name)) is None and read_head(cfg.store, cfg.name) is None


def test_report_command_writes_the_champions_report(first_run, data_dir, tmp_path):
    cfg, store, res, _ = first_run
    html = tmp_path / "report.html"
    r = CliRunner().invoke(app, ["report", cli_config(data_dir, store, tmp_path), "--html", str(html)])
    assert r.exit_code == 0, r.output
    assert f"report of {Registry(cfg.registry, cfg.store, cfg.name).model_name} version 1: {html}" in r.stdout
    page = html.read_text()
    auc = res.evaluation["metrics"]["auc"]
    assert f"<td>auc</td><td class=num>{auc:.4g}</td>" in page            # version 1's test AUC
    assert page.count("data:image/png;base64,") >= 2 and "<script" not in page
    missing = CliRunner().invoke(app, ["report", cli_config(data_dir, store, tmp_path), "--html", str(html),
                                       "--version", "99"])
    assert missing.exit_code == 6 and "99" in missing.stderr


def test_the_decision_threshold_is_chosen_on_validation_and_kept_in_the_bundle(first_run):
    cfg, store, res, _ = first_run
    choice = res.evaluation["threshold_choice"]
    assert choice["rule"] == "max_f1" and 0 < choice["value"] < 1 and choice["valid"]["n"] > 0
    assert res.evaluation["threshold"] == choice["value"]            # test metrics at the chosen threshold
    bundle = Registry(cfg.registry, cfg.store, cfg.name).load_bundle("1")
    assert bundle.threshold == choice["value"] and bundle.metadata["threshold"]["rule"] == "max_f1"


def test_a_precision_target_the_model_cannot_reach_registers_nothing(first_run):
    cfg, store, *_ = first_run
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
    cfg, store, *_ = first_run
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
    cfg, store, res, _ = first_run
    spec = res.data.spec
    splits = X.load_splits(f"{res.data.out_dir}/features", spec, "binary")
    kw = dict(splits=splits, model=cfg.model, tune_cfg=cfg.tune, storage=str(tmp_path / "tune"),
              experiment="resume-me", strategy="single")
    first = T.run_search(**kw)
    again = T.run_search(**kw, resume=True)
    assert again.restored and len(again.trials) == len(first.trials)
    assert again.best_score == first.best_score


def trial_worker_pids() -> list[int]:
    """Pids of the live Tune trial actors of this driver's job, from Ray's actor table: a trial
    process of another Ray on the machine (another test session) is not in it."""
    import ray
    from ray._private import state
    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    actors = state.actors(job_id=job, actor_state_name="ALIVE").values()
    # Tune's function-trainable class: "ImplicitFunc" the first time, "wrap_function.<locals>.ImplicitFunc" after
    return [a["Pid"] for a in actors if a["ActorClassName"].split(".")[-1] == "ImplicitFunc" and a["Pid"]]


def test_killed_trial_worker_is_retried(first_run, tmp_path):
    """FailureConfig(max_failures): a trial's worker process killed mid-training is restarted, and
    the search's summary reports that trial as retried once."""
    from mlops_ray.config import TuneConfig
    from mlops_ray.train import tune as T
    from mlops_ray.train import xgb as X
    cfg, store, res, _ = first_run
    splits = X.load_splits(f"{res.data.out_dir}/features", res.data.spec, "binary")
    slow = cfg.model.model_copy(update={"num_boost_round": 3000, "early_stopping_rounds": 3000})
    tcfg = TuneConfig(num_samples=2, report_every=50, max_failures=2, scheduler="none", seed=3,
                      space={"max_depth": {"type": "int", "low": 8, "high": 10}})
    killed = []

    def kill_one():
        pid = trial_worker_pids()[0]
        assert b"ImplicitFunc" in Path(f"/proc/{pid}/cmdline").read_bytes()
        os.kill(pid, signal.SIGKILL)
        return pid

    th, killed = _when_a_trial_runs(kill_one)
    result = T.run_search(splits=splits, model=slow, tune_cfg=tcfg, storage=str(tmp_path / "tune"),
                          experiment="kill", strategy="single")
    th.join(5)
    assert killed, "no trial worker was found to kill"
    assert np.isfinite(result.best_score) and len(result.trials) == 2
    assert all(t["error"] is None for t in result.trials)
    retried = result.to_dict()["retried"]             # what `run` prints and records
    assert len(retried) == 1 and retried[0]["failures"] == 1 and retried[0]["error"] is None, retried
    assert retried[0]["trial_id"] in {t["trial_id"] for t in result.trials}


def _when_a_trial_runs(action, timeout: float = 300):
    """Run ``action()`` from a thread once a trial's worker process of this driver exists (on a
    loaded 2-core machine a trial actor can wait minutes to be created)."""
    done = []

    def wait():
        deadline = time.time() + timeout
        while time.time() < deadline:
            if trial_worker_pids():
                time.sleep(1.0)
                done.append(action())
                return
            time.sleep(0.5)

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
    cfg, store, res, _ = first_run
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
    cfg, store, *_ = first_run
    retry = cfg_for(cfg.data.source, store, gate={"min": {"auc": 0.999}, "retries": 1},
                    tune={**FAST, "num_samples": 2})
    with pytest.raises(GateRejected):
        run_pipeline(retry)
    runs = list((store / "t" / "runs").glob("*/search-a1.json"))
    assert runs, "the retry searched again"
    assert json.loads(runs[0].read_text())["trials"].__len__() == 4      # twice the budget


def test_only_evaluate_registers_nothing(first_run):
    cfg, store, *_ = first_run
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
    confusion = bundle.metadata["evaluation"]["confusion"]            # kept with the version, for the report
    assert confusion["classes"] == bundle.spec.classes
    assert sum(map(sum, confusion["matrix"])) == res.evaluation["n_test"]

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


def test_a_retrain_chooses_its_threshold_on_its_own_validation_split(first_run, tmp_path):
    """A retrain on a window where positives are four times as common (the same rows, each positive
    row four times) registers a version whose threshold was chosen on that window's validation rows:
    its history starts there, at that positive rate. Last in the module: it moves first_run's champion."""
    import pandas as pd
    import pyarrow.parquet as pq

    from mlops_ray.monitor import thresholds
    from mlops_ray.storage.store import Store
    cfg, store, res1, _ = first_run
    df = pq.read_table(cfg.data.source).to_pandas()
    pos = df[df["is_fraud"] == 1]
    window = pd.concat([df] + [pos.assign(transaction_id=pos["transaction_id"] + (k + 1) * 10**7) for k in range(3)])
    src = write_parquet(window.sample(frac=1, random_state=0), tmp_path / "window")
    try:
        res = run_pipeline(cfg_for(src, store))
        version = res.version
    except GateRejected:           # registered all the same, as the challenger
        version = Registry(cfg.registry, cfg.store, cfg.name).get_alias("challenger")
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    first = thresholds.history(Store(cfg.store), cfg.name, "1", reg.load_bundle("1").metadata)[0]
    meta = reg.load_bundle(version).metadata
    h = thresholds.history(Store(cfg.store), cfg.name, version, meta)
    assert version != "1" and len(h) == 1 and h[0]["source"] == "validation" and h[0]["spec"] == "max_f1"
    assert h[0]["rows"] == meta["dataset"]["split_rows"]["valid"]
    assert h[0]["positive_rate"] > 2.5 * first["positive_rate"]
    assert h[0]["value"] == meta["threshold"]["value"] != first["value"]


def test_only_validate_validates_without_featurizing(first_run):
    """The validate step alone: the source is read and validated; the data in the store stays as it is."""
    cfg, store, first, _ = first_run
    spec = store / "t" / "data" / first.data.key / "feature_spec.json"
    before = spec.stat().st_mtime_ns
    res = run_pipeline(cfg, RunOptions(only="validate"))
    assert res.data.validation.passed and res.data.validation.rows == 8000
    assert res.data.spec is None and res.version is None and res.cached_steps == []
    assert spec.stat().st_mtime_ns == before


def test_only_reference_profiles_the_featurized_rows_again(first_run):
    """The reference step alone: featurize runs too (the parsed rows it profiles live in memory only)."""
    cfg, store, first, _ = first_run
    ref = store / "t" / "data" / first.data.key / "reference_inputs.json"
    before = ref.stat().st_mtime_ns
    res = run_pipeline(cfg, RunOptions(only="reference"))
    assert res.data.key == first.data.key and not res.data.cached and res.version is None
    assert res.data.split_rows == first.data.split_rows and res.search is None
    assert ref.stat().st_mtime_ns > before
    assert run_pipeline(cfg).cached_steps == list(STEPS)            # the store is complete again


def _no_refit(*a, **k):
    raise AssertionError("the model was refitted")


def test_only_gate_decides_from_the_stored_evaluation_and_registers_nothing(first_run, monkeypatch):
    """The gate step alone: it reads the evaluation the evaluate step stored against today's champion,
    refits nothing, and registers nothing."""
    cfg, store, *_ = first_run
    before = Registry(cfg.registry, cfg.store, cfg.name).get_alias("challenger")
    run_pipeline(cfg, RunOptions(only="evaluate"))
    monkeypatch.setattr("mlops_ray.train.tune.train_final", _no_refit)
    res = run_pipeline(cfg, RunOptions(only="gate"))
    assert res.gate and res.evaluation and res.version is None
    assert {"tune", "evaluate"} <= set(res.cached_steps)
    assert Registry(cfg.registry, cfg.store, cfg.name).get_alias("challenger") == before


def test_only_register_registers_the_stored_candidate_without_refitting(first_run, monkeypatch):
    """The register step alone (e.g. after the registry was down when a run reached it): the refitted
    model, its evaluation and the gate's decision are read from the store, nothing is trained again,
    and a version is registered with the stored decision."""
    cfg, store, *_ = first_run
    run_pipeline(cfg, RunOptions(only="evaluate"))
    run_pipeline(cfg, RunOptions(only="gate"))
    decision = json.loads(next((store / "t" / "runs").glob("*/gate-a0.json")).read_text())["decision"]
    monkeypatch.setattr("mlops_ray.train.tune.train_final", _no_refit)
    registry = Registry(cfg.registry, cfg.store, cfg.name)
    newest = max(int(v.version) for v in registry.client.search_model_versions(f"name='{cfg.name}'"))
    try:
        res = run_pipeline(cfg, RunOptions(only="register"))
        assert decision["passed"] and res.version == str(newest + 1)
    except GateRejected:
        assert not decision["passed"]
    assert max(int(v.version) for v in registry.client.search_model_versions(f"name='{cfg.name}'")) == newest + 1


def test_only_register_without_a_stored_model_names_the_step_to_run_first(first_run, tmp_path):
    cfg, store, *_ = first_run
    other = cfg_for(cfg.data.source, store, tune={**FAST, "seed": 99})         # a training key with no runs
    with pytest.raises(ConfigError, match=r"--only register needs .* Run the tune step first"):
        run_pipeline(other, RunOptions(only="register"))
