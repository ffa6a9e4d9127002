"""registry.py against a local SQLite tracking store: runs, versions, aliases, bundles, errors.

One store for the module: a fresh MLflow SQLite database spends a few seconds in its
migrations, so tests share it and isolate themselves by model name.
"""
import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from mlops_ray.registry.bundle import dmatrix, write_bundle
from mlops_ray.config import RegistryConfig
from mlops_ray.data.features import FeatureSpec, NumericFeature
from mlops_ray.errors import ConfigError, RegistryError
from mlops_ray.registry import Registry, flatten, git_commit, lineage, mask_uri

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(tmp_path_factory.mktemp("store"))


def registry(store, model: str) -> Registry:
    return Registry(RegistryConfig(model_name=model), store, "unit")


def breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer
    data = load_breast_cancer(as_frame=True)
    df = data.data.rename(columns=lambda c: c.replace(" ", "_"))
    df["target"] = data.target
    return df


def train_bundle(path: str, rows: pd.DataFrame):
    """A real 5-round XGBoost bundle written to ``path``; returns (path, booster, spec). Also used by e2e."""
    import xgboost as xgb
    cols = [c for c in rows.columns if c != "target"]
    spec = FeatureSpec(label="target", numeric=[NumericFeature(c) for c in cols],
                       input_types={c: "float" for c in cols}, train_rows=len(rows))
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
                        dmatrix(rows[cols], spec, label=rows["target"]), num_boost_round=5)
    write_bundle(path, booster, spec, reference={"prediction": {"bins": [0, 0.5, 1]}},
                 metadata={"task": "binary", "auc": 0.99})
    return path, booster, spec


@pytest.fixture(scope="module")
def rows():
    return breast_cancer()


@pytest.fixture(scope="module")
def trained(rows, tmp_path_factory):
    return train_bundle(str(tmp_path_factory.mktemp("bundle") / "b"), rows)


def predictions(booster, spec, rows):
    return booster.predict(dmatrix(rows[spec.input_columns], spec))


# --------------------------------------------------------------------------- runs
def test_run_logs_params_metrics_artifacts_and_child_runs(store, capfd):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reg = registry(store, "runs")
    reg.check_reachable()
    with reg.start_run("train", tags={"stage": "train", "skipped": None}) as run:
        run.log_params({"model": {"eta": 0.1, "max_depth": 6}, "cols": ["a", "b"], "long": "x" * 10_000})
        run.log_metrics({"auc": np.float32(0.91), "n": 3, "ok": True, "nan": float("nan"),
                         "inf": float("inf"), "name": "text", "nested": {"f1": 0.5}}, step=2)
        run.log_dict({"bins": np.arange(3), "share": np.float64(0.25)}, "reference.json")
        run.log_text("hello", "notes/readme.txt")
        cfg = os.path.join(store, "pipeline.yaml")
        open(cfg, "w").write("name: unit\n")
        run.log_file(cfg, "config")
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        run.log_figure(fig, "roc")
        plt.close(fig)
        children = [run.child_run(f"trial_{i}", {"eta": 0.1 * (i + 1)}, {"auc": 0.8 + i / 100}) for i in range(2)]

    got = reg.client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and run.status == "FINISHED"
    assert got.data.params["model.eta"] == "0.1" and got.data.params["cols"] == '["a", "b"]'
    assert 500 <= len(got.data.params["long"]) < 10_000 and got.data.params["long"].endswith("...")
    assert set(got.data.metrics) == {"auc", "n", "ok", "nested.f1"}
    assert got.data.metrics["auc"] == pytest.approx(0.91) and got.data.metrics["ok"] == 1.0
    assert got.data.tags["stage"] == "train" and "skipped" not in got.data.tags
    files = {a.path for a in reg.client.list_artifacts(run.run_id)}
    assert {"reference.json", "notes", "roc.png", "config"} <= files
    assert [m.step for m in reg.client.get_metric_history(run.run_id, "auc")] == [2]
    local = reg.client.download_artifacts(run.run_id, "reference.json", str(os.path.join(store, "dl")))
    assert open(local).read().replace(" ", "").replace("\n", "") == '{"bins":[0,1,2],"share":0.25}'
    out, err = capfd.readouterr()       # first use of the store ran MLflow's migrations, quietly
    assert "Creating initial MLflow database tables" not in err and "alembic" not in err and not out, err
    for child_id in children:
        child = reg.client.get_run(child_id)
        assert child.data.tags["mlflow.parentRunId"] == run.run_id and child.info.status == "FINISHED"
        assert "eta" in child.data.params and "auc" in child.data.metrics


def test_run_is_failed_with_a_reason(store):
    reg = registry(store, "runs")
    with pytest.raises(ValueError):
        with reg.start_run("boom") as run:
            raise ValueError("bad batch")
    got = reg.client.get_run(run.run_id)
    assert got.info.status == "FAILED" and got.data.tags["failure_reason"] == "ValueError: bad batch"

    with reg.start_run("gate") as run:
        run.fail("auc 0.61 < 0.85")
        run.log_metrics({"auc": 0.61})          # a failed run still takes logs
    got = reg.client.get_run(run.run_id)
    assert got.info.status == "FAILED" and got.data.tags["failure_reason"] == "auc 0.61 < 0.85"


# --------------------------------------------------------------------------- versions and aliases
def test_register_move_aliases_and_load(store, trained, rows):
    path, booster, spec = trained
    reg = registry(store, "fraud")
    assert reg.get_alias("champion") is None and reg.champion() is None      # no model yet
    versions = []
    for i in range(2):
        with reg.start_run(f"pipeline-{i}") as run:
            versions.append(reg.register(run, path, tags={"config_hash": f"h{i}"}))
            assert reg.get_alias("challenger") == versions[-1]
        assert reg.client.get_run(run.run_id).data.tags["registered_version"] == versions[-1]
    assert versions == ["1", "2"]
    assert reg.get_alias("champion") is None and reg.champion() is None      # model, no champion yet

    reg.set_alias("champion", "1")
    reg.tag_version("1", "gate", "passed")
    assert reg.version_tags("1") == {"config_hash": "h0", "gate": "passed"}
    expected = predictions(booster, spec, rows)
    for ref in ("champion", "@champion", "1", "v1", "models:/fraud/1", "models:/fraud@champion"):
        bundle = reg.load_bundle(ref)
        np.testing.assert_array_equal(bundle.predict(rows.drop(columns="target")), expected)
    assert bundle.metadata["auc"] == 0.99 and bundle.path.startswith(os.path.join(store, "registry_cache"))
    version, champ = reg.champion()
    assert version == "1" and champ.spec.input_columns == spec.input_columns
    assert reg.load_bundle("challenger").path != champ.path                  # one cache entry per version

    # a pickled registry (as a Serve replica receives it) loads the same bundle
    clone = pickle.loads(pickle.dumps(reg))
    assert clone._client is None and clone.load_bundle("champion").path == champ.path


@pytest.mark.parametrize("model, ref, match", [
    ("nobody", "champion", r"no registered model 'nobody' at sqlite:.*run the pipeline"),
    ("nobody", "3", r"no registered model 'nobody'"),
    ("fraud", "models:/other@champion", r"no registered model 'other'"),
    ("fraud", "staging", r"model 'fraud' has no alias 'staging' \(aliases: .*challenger -> 2.*\); run the pipeline"),
    ("fraud", "99", r"version 99 of model 'fraud' does not exist \(versions: 1, 2\); re-run the pipeline or use "
                    r"another version"),
    ("fraud", "models:/fraud/Production", r"not understood; write models:/NAME/VERSION"),
    ("fraud", "my alias!", r"not understood"),
])
def test_bad_references_say_what_and_how(store, trained, model, ref, match):
    reg = registry(store, model)
    if model == "fraud" and reg.get_alias("challenger") is None:             # when run alone
        with reg.start_run("setup") as run:
            reg.register(run, trained[0])
            reg.register(run, trained[0])
    with pytest.raises(RegistryError, match=match):
        reg.load_bundle(ref)


def test_alias_to_a_version_whose_artifacts_are_gone(store, trained):
    reg = registry(store, "broken")
    with reg.start_run("pipeline") as run:
        version = reg.register(run, trained[0])
    reg.set_alias("champion", version)
    shutil.rmtree(reg.client.get_model_version("broken", version).source)
    expected = (rf"alias 'champion' of model 'broken' points to version {version}, which has no model bundle"
                r".*re-run the pipeline or move the alias")
    with pytest.raises(RegistryError, match=expected):
        reg.load_bundle("champion")
    with pytest.raises(RegistryError, match=expected):
        reg.champion()
    with pytest.raises(RegistryError, match="is incomplete"):                 # and nothing half-registered
        reg.register(run, os.path.dirname(trained[0]))


# --------------------------------------------------------------------------- reachability
@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "http://user:secret@127.0.0.1:9/"])
def test_unreachable_server_fails_fast_and_hides_credentials(tmp_path, uri):
    reg = Registry(RegistryConfig(tracking_uri=uri), str(tmp_path), "p")
    start = time.monotonic()
    with pytest.raises(RegistryError) as err:
        reg.check_reachable(timeout_s=2)
    assert time.monotonic() - start < 7
    msg = str(err.value)
    assert "127.0.0.1:9" in msg and "start the server or fix registry.tracking_uri" in msg
    assert "secret" not in msg and "secret" not in repr(reg)
    if "user:" in uri:
        assert "http://***@127.0.0.1:9" in msg


def test_a_server_that_does_not_speak_http_is_not_taken_for_mlflow(tmp_path, not_http_port):
    reg = Registry(RegistryConfig(tracking_uri=f"http://127.0.0.1:{not_http_port}"), str(tmp_path), "p")
    with pytest.raises(RegistryError, match=rf"127.0.0.1:{not_http_port} does not answer HTTP .* fix "
                                             r"registry.tracking_uri"):
        reg.check_reachable(timeout_s=2)


def test_corrupt_sqlite_database_is_a_registry_error(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RegistryError, match=r"mlflow.db cannot be opened .*fix or move it"):
        Registry(RegistryConfig(), str(tmp_path), "p").check_reachable()


def test_object_store_without_tracking_uri_is_a_config_error():
    with pytest.raises(ConfigError, match="set registry.tracking_uri"):
        Registry(RegistryConfig(), "s3://bucket/store", "p")


def test_import_does_no_work_and_no_global_tracking_uri(store):
    code = ("import sys, mlops_ray.registry; "
            "assert 'mlflow' not in sys.modules, 'mlflow imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    import mlflow
    assert store not in mlflow.get_tracking_uri() and store not in os.environ.get("MLFLOW_TRACKING_URI", "")


# --------------------------------------------------------------------------- pure helpers
def test_lineage_and_git_commit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    info = lineage()
    assert info["git_commit"] is None                                        # not a repo: no error
    assert info["python"].count(".") == 2
    assert set(info["packages"]) == {"ray", "xgboost", "optuna", "mlflow", "pandas", "pyarrow", "mlops_ray"}
    assert info["packages"]["mlflow"].startswith("3.")

    sha = "a" * 40
    (tmp_path / ".git" / "refs" / "heads").mkdir(parents=True)
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".git" / "refs" / "heads" / "main").write_text(sha + "\n")
    (tmp_path / "sub").mkdir()
    assert git_commit(str(tmp_path / "sub")) == sha
    (tmp_path / ".git" / "refs" / "heads" / "main").unlink()
    (tmp_path / ".git" / "packed-refs").write_text(f"# pack-refs\n{'b' * 40} refs/heads/main\n")
    assert git_commit(str(tmp_path)) == "b" * 40


def test_flatten_and_mask():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}
    assert mask_uri("see https://me:pw@host:5000/x and http://host") == "see https://***@host:5000/x and http://host"


def test_a_missing_version_of_a_model_with_many_versions_lists_the_first_and_the_last(store, trained):
    reg = registry(store, "many")
    with reg.start_run("pipeline") as run:
        for _ in range(12):
            reg.register(run, trained[0])
    with pytest.raises(RegistryError, match=r"version 13 of model 'many' does not exist "
                                            r"\(12 versions: 1, 2, 3, \.\.\., 10, 11, 12\)"):
        reg.load_bundle("13")


def test_load_spec_reads_the_features_without_the_booster(store, trained):
    path, _, spec = trained
    reg = registry(store, "speconly")
    with reg.start_run("pipeline") as run:
        version = reg.register(run, path)
    cached = reg.load_bundle(version).path
    with open(os.path.join(cached, "model.ubj"), "wb") as f:       # the booster unreadable, the spec not
        f.write(b"not a model")
    assert reg.load_spec(version).input_columns == spec.input_columns
    with pytest.raises(RegistryError, match=rf"version {version} of model 'speconly' cannot be loaded: model.ubj"):
        reg.load_bundle(version)
    with pytest.raises(RegistryError, match=r"version 7 of model 'speconly' does not exist \(versions: 1\)"):
        reg.load_spec("7")
