"""Inputs as real exports have them, through the whole training pipeline on the shared local Ray:
file names without the .parquet suffix, directories whose files disagree, integer-coded
categoricals from CSV, a column named like one of the platform's own."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_ray.pipeline import run_pipeline
from mlops_ray.store import Store
from tests.conftest import make_config

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
