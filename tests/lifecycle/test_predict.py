"""Batch scoring on the shared local Ray: a real bundle in a real MLflow (SQLite) registry,
predictions equal to Bundle.predict, the prediction log, and the checks before anything is written."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from mlops_ray.cli import app
from mlops_ray.errors import ConfigError, DataSourceError, DataValidationError
from mlops_ray.monitor.predlog import log_schema, read_log
from mlops_ray.lifecycle.predict import batch_predict, predlog_root
from mlops_ray.registry import Registry
from tests.support.configs import base_raw, config_file, make_bundle, make_config, write_parquet

pytestmark = pytest.mark.ray

ID = "transaction_id"
FAST = {"batch_size": 1000, "concurrency": 2}      # several batches and two actors on 4,000 rows


def multiclass_bundle(df: pd.DataFrame, path) -> str:
    """A 3-class bundle on the same features: the label is the channel."""
    import xgboost as xgb

    from mlops_ray.registry import bundle
    from mlops_ray.data import features as feat
    from mlops_ray.data.profile import profile_local

    cfg = make_config("x", features={"min_frequency": 2, "exclude": ["channel"]})
    table = pa.Table.from_pandas(df, preserve_index=False)
    roles = feat.assign_roles(table.schema, cfg.data, cfg.features)
    parts = profile_local(table, {"f": lambda t: feat.fit_partial(t, roles, cfg.features)})["f"]
    spec = feat.fit_merge(parts, roles, cfg.data, cfg.features)
    X = feat.transform(df, spec).to_numpy(np.float32)
    y = df["channel"].cat.codes.to_numpy()
    bst = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "nthread": 1},
                    bundle.dmatrix(X, spec, label=y), 5)
    return bundle.write_bundle(str(path), bst, spec, {}, {"task": "multiclass"})


@pytest.fixture(scope="module")
def env(small_df, tmp_path_factory):
    """Store with version 1 (binary, champion) and version 2 (multiclass); scoring data without the label."""
    tmp = tmp_path_factory.mktemp("predict")
    store = tmp / "store"
    cfg = make_config(str(tmp / "unused"), store=str(store))
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    for path in (make_bundle(small_df, tmp / "b1"), multiclass_bundle(small_df, tmp / "b2")):
        with reg.start_run("r") as run:
            reg.register(run, path)
    reg.set_alias("champion", "1")
    data = write_parquet(small_df.drop(columns="is_fraud"), tmp / "score", parts=3)
    return {"cfg": cfg, "reg": reg, "data": data, "tmp": tmp, "df": small_df}


def log_files(root) -> list[Path]:
    return sorted(Path(root).rglob("*.parquet")) if Path(root).is_dir() else []


def read_out(path) -> pd.DataFrame:
    return pq.read_table(str(path)).to_pandas()


def test_predictions_equal_bundle_predict(env, tmp_path):
    out = tmp_path / "out"
    res = batch_predict(env["cfg"], str(env["data"]), str(out), **FAST)
    assert res["rows"] == 4000 and res["version"] == "1" and res["logged"] == 0 and res["task"] == "binary"
    assert res["actors"] == 2 and res["rows_per_s"] > 0 and res["input"]["files"] == 3
    got = read_out(out)
    assert list(got.columns) == [ID, "prediction", "label", "model_version"]
    assert set(got["model_version"]) == {"1"} and got[ID].is_unique
    threshold = env["reg"].load_bundle("1").threshold            # the bundle's decision threshold
    assert (got["label"] == (got["prediction"] >= threshold)).all()
    df = env["df"]
    expected = pd.Series(env["reg"].load_bundle("1").predict(df), index=df[ID])
    np.testing.assert_allclose(got.set_index(ID)["prediction"].loc[df[ID]].to_numpy(), expected.to_numpy(),
                               rtol=1e-6, atol=1e-7)


def test_multiclass_has_one_column_per_class_and_argmax(env, tmp_path):
    out = tmp_path / "out"
    res = batch_predict(env["cfg"], str(env["data"]), str(out), "2", **FAST)
    assert res["rows"] == 4000 and res["task"] == "multiclass"
    got = read_out(out).set_index(ID).loc[env["df"][ID]]
    assert list(got.columns) == ["prediction", "p_0", "p_1", "p_2", "model_version"]
    expected = env["reg"].load_bundle("2").predict(env["df"])
    probs = got[["p_0", "p_1", "p_2"]].to_numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got["prediction"].to_numpy(), expected.argmax(axis=1))
    # the log of a multiclass version holds the class probabilities, as the replicas' log does
    from mlops_ray.lifecycle.predict import _BatchLog
    spec = env["reg"].load_bundle("2").spec
    blog = _BatchLog(str(tmp_path / "log"), spec.input_types, True, "t0")
    assert blog.write(env["df"].iloc[:10], expected[:10], "2", ID) == 10
    back = read_log(str(tmp_path / "log"))
    assert back.schema.field("prediction").type == log_schema(spec.input_types, True).field("prediction").type
    np.testing.assert_allclose(np.array(back.sort_by("request_id")["prediction"].to_pylist()),
                               expected[np.argsort(env["df"][ID].iloc[:10].astype(str).to_numpy())])


def test_log_rows_come_back_through_read_log(env, tmp_path):
    cfg, df = env["cfg"], env["df"]
    root = predlog_root(cfg)
    res = batch_predict(cfg, str(env["data"]), str(tmp_path / "out"), "@champion", log=True, **FAST)
    assert res["logged"] == 4000 and res["log"] == root
    log = read_log(root)
    log = log.filter(pc.invert(pc.starts_with(log["request_id"], "batch-")))   # rows logged by their id
    assert log.num_rows == 4000
    bundle = env["reg"].load_bundle("1")
    # exactly the serving schema and layout (date=/hour= partitions, part files from the actors)
    parts = [p for p in log_files(root) if f"batch-{res['run_token']}" in p.name]
    assert len(parts) >= 4 and all(p.parent.name.startswith("hour=") and p.parent.parent.name.startswith("date=")
                                   for p in parts)
    logged_types = {**bundle.spec.input_types, ID: "string"}          # the id too, as the replicas log it
    assert pq.read_schema(parts[0]).remove_metadata() == log_schema(logged_types)
    got = log.to_pandas().set_index("request_id").loc[df[ID].astype(str)]
    assert set(got["model_version"]) == {"1"} and set(got["row"]) == {0}
    np.testing.assert_allclose(got["prediction"].to_numpy(), bundle.predict(df), rtol=1e-6, atol=1e-7)
    inputs = pd.DataFrame(list(got["inputs"]))
    assert list(inputs.columns) == [*bundle.spec.input_columns, ID]
    assert inputs[ID].tolist() == df[ID].astype(str).tolist()
    np.testing.assert_array_equal(inputs["amount"].to_numpy(dtype=float), df["amount"].to_numpy(dtype=float))
    assert inputs["merchant_id"].tolist() == df["merchant_id"].astype(str).tolist()
    assert (pd.to_datetime(inputs["event_time"], utc=True).dt.tz_localize(None)
            == df["event_time"].astype("datetime64[us]")).all()


def test_log_without_id_uses_the_global_row_index(env, tmp_path):
    cfg, df = env["cfg"], env["df"]
    data = write_parquet(df.drop(columns=["is_fraud", ID]), tmp_path / "noid", parts=3)
    res = batch_predict(cfg, str(data), str(tmp_path / "out"), log=True, **FAST)
    assert res["logged"] == 4000
    out = read_out(tmp_path / "out")
    assert list(out.columns) == ["row", "prediction", "label", "model_version"]   # the row key joins back
    np.testing.assert_allclose(out.sort_values("row")["prediction"].to_numpy(),
                               env["reg"].load_bundle("1").predict(df), rtol=1e-6, atol=1e-7)
    prefix = f"batch-{res['run_token']}-"
    log = read_log(predlog_root(cfg)).to_pandas()
    log = log[log["request_id"].str.startswith(prefix)]
    assert len(log) == 4000
    index = log["request_id"].str[len(prefix):].astype(int).to_numpy()
    assert sorted(index) == list(range(4000))
    order = np.argsort(index)                      # row i of the log is row i of the input
    amounts = np.array([r["amount"] for r in log["inputs"]], dtype=float)[order]
    np.testing.assert_array_equal(amounts, df["amount"].to_numpy(dtype=float))
    np.testing.assert_allclose(log["prediction"].to_numpy()[order], env["reg"].load_bundle("1").predict(df),
                               rtol=1e-6, atol=1e-7)


def test_csv_without_id_logs_rows_in_input_order(env, tmp_path):
    cfg, df = env["cfg"], env["df"]
    data = tmp_path / "csv"
    data.mkdir()
    raw = df.drop(columns=["is_fraud", ID])
    raw.iloc[:2500].to_csv(data / "a.csv", index=False)
    raw.iloc[2500:].to_csv(data / "b.csv", index=False)
    res = batch_predict(cfg, str(data), str(tmp_path / "out"), log=True, **FAST)
    assert res["rows"] == 4000 and res["logged"] == 4000 and res["input"]["format"] == "csv"
    prefix = f"batch-{res['run_token']}-"
    log = read_log(predlog_root(cfg)).to_pandas()
    log = log[log["request_id"].str.startswith(prefix)]
    log = log.assign(i=log["request_id"].str[len(prefix):].astype(int)).sort_values("i")
    assert log["i"].tolist() == list(range(4000))
    np.testing.assert_allclose(log["prediction"].to_numpy(), env["reg"].load_bundle("1").predict(df),
                               rtol=1e-5, atol=1e-6)


def test_missing_input_column_is_named_and_nothing_is_written(env, tmp_path):
    df = env["df"].drop(columns="is_fraud")
    data = tmp_path / "data"
    write_parquet(df.iloc[:2000], data / "a")
    write_parquet(df.iloc[2000:].drop(columns=["amount", "device"]), data / "b")
    out = tmp_path / "out"
    before = log_files(predlog_root(env["cfg"]))
    with pytest.raises(DataValidationError) as e:
        batch_predict(env["cfg"], str(data), str(out), log=True)
    msg = str(e.value)
    assert e.value.exit_code == 3
    assert "amount, device" in msg and str(data / "b" / "part-000.parquet") in msg
    assert {c.column for c in e.value.report.failures} == {"amount", "device"}
    assert not out.exists()
    assert log_files(predlog_root(env["cfg"])) == before


def test_non_empty_out_needs_overwrite(env, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.parquet").write_bytes(b"keep")
    with pytest.raises(DataSourceError, match=r"--out .*out' is not empty; pass --overwrite \(overwrite=True\)"):
        batch_predict(env["cfg"], str(env["data"]), str(out))
    assert (out / "old.parquet").read_bytes() == b"keep"          # untouched
    with pytest.raises(ConfigError, match="inside the input directory"):
        batch_predict(env["cfg"], str(env["data"]), str(env["data"] / "preds"))
    res = batch_predict(env["cfg"], str(env["data"]), str(out), overwrite=True, **FAST)
    assert res["rows"] == 4000 and not (out / "old.parquet").exists() and len(read_out(out)) == 4000


def test_cli_predict_json_and_missing_column(env, tmp_path):
    raw = base_raw(str(env["data"]))
    raw["store"] = env["cfg"].store
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    runner = CliRunner()
    r = runner.invoke(app, ["predict", str(cfg), "--data", str(env["data"]), "--out", str(tmp_path / "o"),
                            "--version", "1", "--json"])
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["rows"] == 4000 and res["version"] == "1" and len(read_out(tmp_path / "o")) == 4000
    bad = write_parquet(env["df"].drop(columns=["is_fraud", "credit_score"]), tmp_path / "bad")
    r = runner.invoke(app, ["predict", str(cfg), "--data", str(bad), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 3 and "credit_score" in r.stderr and "Traceback" not in r.stderr
    r = runner.invoke(app, ["predict", str(cfg), "--data", str(bad), "--out", str(tmp_path / "o2"),
                            "--version", "1", "--alias", "champion"])
    assert r.exit_code == 2


def test_scoring_prints_no_line_of_rays_own(env, tmp_path, capfd):
    """`predict` printed `core_worker.cc:2465: Actor ... has constructor arguments in the object store and
    max_restarts > 0` (the driver's C++ log copies its ERROR lines to stderr): users see progress and results."""
    capfd.readouterr()
    batch_predict(env["cfg"], str(env["data"]), str(tmp_path / "out"), **FAST)
    err = capfd.readouterr().err
    assert "core_worker" not in err and "max_restarts" not in err, err


def test_without_an_id_rows_are_keyed_by_position_and_classes_name_the_probabilities(small_df, tmp_path):
    """No data.id_column in the data: each prediction carries its input row's position and the
    columns --keep names; a multiclass model's probabilities are named by class."""
    from mlops_ray.registry import bundle as B
    path = multiclass_bundle(small_df, tmp_path / "b")
    loaded = B.load_bundle(path)
    loaded.spec.classes = ["drizzle", "light rain", "Sunny"]
    path = B.write_bundle(str(tmp_path / "named"), loaded.booster, loaded.spec, {}, {"task": "multiclass"})
    cfg = make_config(str(tmp_path / "unused"), store=str(tmp_path / "store"))
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    with reg.start_run("r") as run:
        version = reg.register(run, path)
    df = small_df.drop(columns=["is_fraud", ID])
    data = write_parquet(df, tmp_path / "score", parts=3)
    out = tmp_path / "out"
    res = batch_predict(cfg, str(data), str(out), str(version), keep=["channel", "amount"], **FAST)
    assert res["rows"] == len(df)
    got = read_out(out).sort_values("row").reset_index(drop=True)
    assert list(read_out(out).columns) == ["row", "channel", "amount", "prediction", "p_drizzle", "p_light_rain",
                                           "p_Sunny", "label", "model_version"]
    assert got["row"].tolist() == list(range(len(df)))
    pd.testing.assert_series_equal(got["amount"], df["amount"].reset_index(drop=True), check_names=False)
    expected = loaded.predict(df)
    np.testing.assert_allclose(got[["p_drizzle", "p_light_rain", "p_Sunny"]].to_numpy(), expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ConfigError, match=r"--keep names column 'amout', which is not in .* \(did you mean 'amount'\?\)"):
        batch_predict(cfg, str(data), str(tmp_path / "out2"), str(version), keep=["amout"])


def test_feedback_command_joins_labels_by_id_and_reports_the_live_metric(env, tmp_path):
    """predict --log, then `feedback` with labels keyed by data.id_column: completeness per version
    and the live AUC, which must equal sklearn's on the scored rows and their true labels."""
    from sklearn.metrics import roc_auc_score
    runner = CliRunner()
    cfg_path, cfg, reg = config_file(tmp_path / "fb.yaml", tmp_path / "store")
    with reg.start_run("r") as run:
        reg.register(run, str(env["tmp"] / "b1"))
    reg.set_alias("champion", "1")
    out = tmp_path / "out"
    p = runner.invoke(app, ["predict", str(cfg_path), "--data", str(env["data"]), "--out", str(out), "--log",
                            "--json"])
    assert p.exit_code == 0, p.output
    assert json.loads(p.stdout)["logged"] == 4000
    df = env["df"]
    never_scored = pd.DataFrame({ID: [10 ** 9], "is_fraud": [1]})
    labels = pd.concat([df[[ID, "is_fraud"]], never_scored])
    labels.to_parquet(tmp_path / "labels.parquet", index=False)
    r = runner.invoke(app, ["feedback", str(cfg_path), "--labels", str(tmp_path / "labels.parquet"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert (res["labels"], res["key"], res["unknown_ids"], res["duplicates"]) == (4001, ID, 1, 0)
    v1 = res["versions"]["1"]
    assert (v1["predictions"], v1["labelled"], v1["completeness"], v1["metric"]) == (4000, 4000, 1.0, "auc")
    scored = read_out(out).set_index(ID).loc[df[ID]]
    assert v1["value"] == pytest.approx(roc_auc_score(df["is_fraud"], scored["prediction"]), abs=1e-9)
    text = runner.invoke(app, ["feedback", str(cfg_path), "--labels", str(tmp_path / "labels.parquet")])
    assert text.exit_code == 0 and "4,001 labels stored (key transaction_id); 0 duplicates" in text.stdout
    assert "1 label(s) name transaction_id values not in the prediction log (yet): stored all the same" in text.stdout
    bad = runner.invoke(app, ["feedback", str(cfg_path), "--labels", str(out)])
    assert bad.exit_code == 10 and "has no label column 'is_fraud'" in bad.stderr
