"""Inputs as real exports have them, through the whole training pipeline on the shared local Ray:
file names without the .parquet suffix, directories whose files disagree, integer-coded
categoricals from CSV, a column named like one of the platform's own."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_ray.pipeline import run_pipeline
from mlops_ray.storage.store import Store
from tests.support.configs import make_config

pytestmark = pytest.mark.ray

FAST = {"num_samples": 2, "report_every": 5, "seed": 1, "baselines": 2}
MODEL = {"num_boost_round": 20, "early_stopping_rounds": 5}


@pytest.fixture(scope="module")
def tx(tmp_path_factory):
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    return generate_chunk(SynthSpec(rows=3000, seed=11), 0, 3000)


def test_a_parquet_file_named_pq_trains_and_is_gated_on_the_rows_ingest_kept(tx, tmp_path):
    src = tmp_path / "reference.pq"          # data.format: parquet declares it; Ray's reader keeps *.parquet only
    pq.write_table(pa.Table.from_pandas(tx, preserve_index=False), src)
    cfg = make_config(str(src), store=str(tmp_path / "store"), data={"format": "parquet"},
                      tune=FAST, model=MODEL, features={"min_frequency": 2})
    res = run_pipeline(cfg)
    assert res.version == "1" and res.promoted
    test_rows = res.data.split_rows["test"]
    assert test_rows > 0 and res.evaluation["n_test"] == test_rows
    store = Store(cfg.store)
    assert store.exists(store.path(cfg.name, "data", res.data.key, "test_raw"))
    # the other readers of a user's file: monitor --data and batch scoring
    from mlops_ray.monitor.drift import run_monitor
    from mlops_ray.lifecycle.predict import batch_predict
    assert run_monitor(cfg, data=str(src))["window"]["rows"] == len(tx)
    out = tmp_path / "scored"
    assert batch_predict(cfg, str(src), str(out))["rows"] == len(tx)
    assert pq.read_table(out).num_rows == len(tx)


def test_evaluate_scores_the_test_rows_featurize_kept_not_the_source(tx, tmp_path, monkeypatch):
    from mlops_ray.data import ingest
    from mlops_ray.pipeline import RunOptions
    pq.write_table(pa.Table.from_pandas(tx, preserve_index=False), tmp_path / "tx.parquet")
    cfg = make_config(str(tmp_path / "tx.parquet"), store=str(tmp_path / "store"), tune=FAST, model=MODEL,
                      features={"min_frequency": 2})
    first = run_pipeline(cfg)

    def no_reread(*a, **k):
        raise AssertionError("the source was read again after featurize")
    monkeypatch.setattr(ingest, "read_dataset", no_reread)
    monkeypatch.setattr(ingest, "read_into_object_store", no_reread)
    again = run_pipeline(cfg, RunOptions(from_step="tune"))      # the data steps are cached
    assert again.data.cached and again.evaluation["n_test"] == first.evaluation["n_test"]


def test_a_column_named_prediction_is_data_and_monitor_scores_the_window(tx, tmp_path):
    """A user's column called `prediction` (an earlier model's output) was taken for this model's
    prediction by `monitor --data`: every window flagged the prediction distribution."""
    from mlops_ray.monitor.drift import run_monitor
    rng = __import__("numpy").random.default_rng(4)
    df = tx.assign(prediction=rng.uniform(0, 1, len(tx)))
    train, window = df.iloc[:2000], df.iloc[2000:].assign(prediction=7.5)   # same period; their column moved
    pq.write_table(pa.Table.from_pandas(train, preserve_index=False), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pandas(window, preserve_index=False), tmp_path / "window.parquet")
    cfg = make_config(str(tmp_path / "train.parquet"), store=str(tmp_path / "store"), tune=FAST, model=MODEL,
                      features={"min_frequency": 2, "exclude": ["prediction"]},
                      monitor={"domain_classifier": {"enabled": False}})
    run_pipeline(cfg)
    report = run_monitor(cfg, data=str(tmp_path / "window.parquet"))
    pred = report["prediction"]
    assert pred is not None and pred["rows"] == len(window) and pred["verdict"] == "ok", pred
    assert report["window"]["prediction"] == "the window scored with version 1"
    assert not report["drift"], [f["name"] for f in report["features"] if f.get("drifted")]


def test_a_misspelt_exclusion_stops_the_run_before_it_leaks_the_column(tx, tmp_path):
    """features.exclude: [predicton] was ignored, and 'prediction' (another model's score) became a
    feature of the champion."""
    import mlops_ray
    from mlops_ray.errors import ConfigError
    pq.write_table(pa.Table.from_pandas(tx.assign(prediction=tx["is_fraud"] * 0.9), preserve_index=False),
                   tmp_path / "tx.parquet")
    cfg = make_config(str(tmp_path / "tx.parquet"), store=str(tmp_path / "store"), tune=FAST, model=MODEL,
                      features={"exclude": ["predicton"]})
    with pytest.raises(ConfigError, match=r"features.exclude lists 'predicton', which is not a column of the "
                                          r"data \(did you mean 'prediction'\?\)"):
        mlops_ray.validate(cfg)
    assert not (tmp_path / "store" / "t" / "runs").exists()


def test_files_with_different_columns_train_with_their_union_when_the_config_says_so(tx, tmp_path):
    d = tmp_path / "months"
    d.mkdir()
    half = len(tx) // 2
    pq.write_table(pa.Table.from_pandas(tx.iloc[:half], preserve_index=False), d / "a.parquet")
    pq.write_table(pa.Table.from_pandas(tx.iloc[half:].drop(columns=["device"]).assign(note="later"),
                                        preserve_index=False), d / "b.parquet")
    cfg = make_config(str(d), store=str(tmp_path / "store"), tune=FAST, model=MODEL,
                      data={"missing_columns": "null"}, features={"min_frequency": 2},
                      schema={"max_null_fraction": 0.6})
    res = run_pipeline(cfg)
    assert res.version == "1" and res.data.validation.rows == len(tx)
    assert {"device", "note"} <= set(res.data.spec.input_columns)


def test_a_cached_rejection_is_still_a_rejection(tx, tmp_path):
    """The first run exited 4; an unchanged rerun printed '✓ registered version 1: rejected' and exited 0."""
    from mlops_ray.errors import GateRejected
    pq.write_table(pa.Table.from_pandas(tx, preserve_index=False), tmp_path / "tx.parquet")
    cfg = make_config(str(tmp_path / "tx.parquet"), store=str(tmp_path / "store"), tune=FAST, model=MODEL,
                      gate={"min": {"auc": 0.9999}})
    with pytest.raises(GateRejected, match="gate.min.auc") as first:
        run_pipeline(cfg)
    lines = []
    with pytest.raises(GateRejected, match="gate.min.auc") as again:
        run_pipeline(cfg, progress=lambda step, msg: lines.append(msg))
    assert str(again.value) == str(first.value) and again.value.exit_code == 4
    assert any("registered as version 1, rejected by the gate" in m for m in lines), lines


def test_the_gate_sees_a_champion_trained_on_the_test_rows(tx, tmp_path):
    """No id column: the split hashed the whole row, so changing one column's type reshuffled it and
    the challenger was judged against a champion trained on most of its test rows, with no word."""
    from mlops_ray.errors import GateRejected
    store, path = str(tmp_path / "store"), tmp_path / "tx.parquet"
    no_id = tx.drop(columns=["transaction_id"])
    pq.write_table(pa.Table.from_pandas(no_id, preserve_index=False), path)
    kw = dict(store=store, tune=FAST, model=MODEL, features={"min_frequency": 2}, gate={"min": {}})
    first = run_pipeline(make_config(str(path), data={"id_column": None}, **kw))
    assert first.version == "1"
    # a column's type changes in the next export: rows keep their keys, so their split
    pq.write_table(pa.Table.from_pandas(no_id.assign(num_txn_24h=no_id["num_txn_24h"].astype("float64")),
                                        preserve_index=False), path)
    again = run_pipeline(make_config(str(path), data={"id_column": None}, **kw))
    assert again.data.key != first.data.key
    assert not [c for c in again.gate["checks"] if c["check"] == "gate.max_champion_overlap" and c["observed"]]
    # another split seed does reshuffle: the champion saw most of the test rows, and the gate says so
    with pytest.raises(GateRejected, match=r"champion v\d was trained on [\d,]+ of the [\d,]+ test rows it is "
                                           r"judged on \(\d+%; gate.max_champion_overlap 0.05\)"):
        run_pipeline(make_config(str(path), data={"id_column": None, "split": {"seed": 7}}, **kw))


def test_monitor_reads_a_windows_text_dates_with_the_models_format(tx, tmp_path):
    """Dates exported as text ('%m/%d/%Y %H:%M'): the window's parts must be computed as training's were,
    or the hour part of the datetime field goes untested."""
    from mlops_ray.monitor.drift import run_monitor
    df = tx.assign(event_time=tx["event_time"].dt.strftime("%m/%d/%Y %H:%M"))
    pq.write_table(pa.Table.from_pandas(df.iloc[:2000], preserve_index=False), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pandas(df.iloc[2000:], preserve_index=False), tmp_path / "window.parquet")
    cfg = make_config(str(tmp_path / "train.parquet"), store=str(tmp_path / "store"), tune=FAST, model=MODEL,
                      data={"datetime_formats": {"event_time": "%m/%d/%Y %H:%M"}},
                      features={"min_frequency": 2, "datetime_parts": ["hour", "dayofweek"]},
                      monitor={"domain_classifier": {"enabled": False}, "min_rows": 50})
    run_pipeline(cfg)
    report = run_monitor(cfg, data=str(tmp_path / "window.parquet"))
    hour = {f["name"]: f for f in report["features"]}["event_time.hour"]
    assert hour["rows"] == len(df) - 2000 and hour["verdict"] == "ok", hour


def test_a_gzipped_csv_export_validates(tx, tmp_path):
    import mlops_ray
    path = tmp_path / "export.csv.gz"
    tx.to_csv(path, index=False, compression="gzip")
    cfg = make_config(str(path), store=str(tmp_path / "store"))
    report = mlops_ray.validate(cfg)
    assert report.passed and report.rows == len(tx)


def test_batch_scoring_with_a_label_expression_needs_none_of_its_columns(tx, tmp_path):
    """predict kept data.label's expression while reading only the model's inputs: KeyError on the
    column the expression reads, reported as a bug."""
    from mlops_ray.lifecycle.predict import batch_predict
    pq.write_table(pa.Table.from_pandas(tx, preserve_index=False), tmp_path / "tx.parquet")
    cfg = make_config(str(tmp_path / "tx.parquet"), store=str(tmp_path / "store"), tune=FAST, model=MODEL,
                      data={"label": {"name": "big", "expr": "amount > 100"}, "unlabelled": "drop"},
                      features={"min_frequency": 2}, gate={"min": {}})
    run_pipeline(cfg)
    new = tx.drop(columns=["amount"]).head(500)       # traffic: no label, nor the column it is computed from
    pq.write_table(pa.Table.from_pandas(new, preserve_index=False), tmp_path / "new.parquet")
    res = batch_predict(cfg, str(tmp_path / "new.parquet"), str(tmp_path / "out"))
    assert res["rows"] == 500 and pq.read_table(tmp_path / "out").num_rows == 500
