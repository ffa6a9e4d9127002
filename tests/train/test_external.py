"""The external strategy: XGBoost's external-memory matrix streamed from the featurized Parquet
splits (never whole in memory), against the in-memory one, end to end, and its cache errors."""
import os
import subprocess
import uuid

import numpy as np
import pytest

from mlops_ray.errors import ConfigError, ResourceError
from mlops_ray.pipeline import prepare_data, run_pipeline
from mlops_ray.registry import Registry
from mlops_ray.train import xgb as X
from mlops_ray.train.evaluate import metrics_for
from tests.support.configs import make_config, write_parquet

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODEL = {"num_boost_round": 30, "early_stopping_rounds": 10, "strategy": "external"}
TUNE = {"num_samples": 2, "report_every": 5, "seed": 1}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    df = generate_chunk(SynthSpec(rows=20_000, seed=7), 0, 20_000)
    return write_parquet(df, tmp_path_factory.mktemp("ext") / "data", parts=3)


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    cfg = make_config(str(source), store=str(tmp_path_factory.mktemp("store")), model=MODEL, tune=TUNE,
                      features={"min_frequency": 2})
    data = prepare_data(cfg)
    return cfg, data


def _cache_files(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


def test_external_matrix_learns_what_the_in_memory_one_does(prepared, tmp_path, monkeypatch):
    cfg, data = prepared
    features = f"{data.out_dir}/features"
    mem = X.load_splits(features, data.spec, "binary")
    ext = X.load_splits(features, data.spec, "binary", external=True)
    assert ext.external and ext.X["train"] is None and ext.rows == mem.rows      # labels only, same rows
    params = {**X.base_params(cfg.model, X.resolve_metric(cfg.model, cfg.tune), 2), "max_depth": 4, "eta": 0.2}
    test = X.dmatrix(mem.X["test"], None, data.spec, quantile=False)
    ref = X.train(params, X.dmatrix(mem.X["train"], mem.y["train"], data.spec), 40).booster
    seen = []

    class Watch(__import__("xgboost").callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            seen.append(len(_cache_files(tmp_path)))
            return False

    # small batches: many iterator steps and pages, as with a split much larger than memory
    monkeypatch.setattr(X, "EXTMEM_BATCH_BYTES", 4 * len(data.spec.output_columns) * 3000)
    d = X.external_dmatrix([X.split_path(features, "train")], data.spec, str(tmp_path))
    assert d.num_row() == mem.rows["train"] and d.num_col() == len(data.spec.output_columns)
    bst = X.train(params, d, 40, callbacks=[Watch()]).booster
    assert min(seen) >= 1                       # the pages are on disk while it trains
    auc_ext = metrics_for("binary", mem.y["test"], bst.predict(test))["auc"]
    auc_mem = metrics_for("binary", mem.y["test"], ref.predict(test))["auc"]
    assert abs(auc_ext - auc_mem) < 0.01, (auc_ext, auc_mem)
    del d, bst
    import gc
    gc.collect()
    assert _cache_files(tmp_path) == []         # freed matrix, no cache left behind


def test_the_sample_for_the_reference_is_seeded_and_uniform(prepared):
    _, data = prepared
    features = f"{data.out_dir}/features"
    ext = X.load_splits(features, data.spec, "binary", external=True)
    a, b = ext.train_sample(500, seed=3), ext.train_sample(500, seed=3)
    assert a.shape == (500, len(data.spec.output_columns)) and np.array_equal(a, b, equal_nan=True)
    whole = X.load_splits(features, data.spec, "binary").X["train"]
    # every sampled row is a training row, and the sample is spread over the files (not the first rows)
    assert {r.tobytes() for r in a} <= {r.tobytes() for r in whole}
    first = {r.tobytes() for r in whole[:2000]}
    assert sum(r.tobytes() in first for r in a) < 250


def test_a_pipeline_on_the_external_strategy_registers_a_model(source, tmp_path):
    cache = tmp_path / "cache"
    cfg = make_config(str(source), store=str(tmp_path / "store"), tune=TUNE, features={"min_frequency": 2},
                      model={**MODEL, "cache_dir": str(cache)}, gate={"min": {"auc": 0.55}})
    res = run_pipeline(cfg)
    assert res.version == "1" and res.search["strategy"] == "external" and res.search["n_trials"] == 2
    assert res.evaluation["metrics"]["auc"] > 0.55
    bundle = Registry(cfg.registry, cfg.store, cfg.name).load_bundle("1")
    assert bundle.metadata["strategy"] == "external" and bundle.reference["features"]
    assert bundle.booster.num_boosted_rounds() >= 1
    assert _cache_files(cache) == []            # the search's and the final fit's pages are removed


def test_auto_picks_external_on_one_node_when_the_data_would_not_fit():
    from mlops_ray.config import ModelConfig
    auto = ModelConfig()
    assert X.choose_strategy(auto, 100_000_000, 20, 1, 16e9) == "external"
    assert X.choose_strategy(auto, 100_000_000, 20, 3, 16e9) == "distributed"
    assert X.choose_strategy(auto, 1_000_000, 20, 1, 16e9) == "single"


def test_a_cache_dir_that_cannot_be_written_is_named_before_training(source, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = make_config(str(source), store=str(tmp_path / "store"), tune=TUNE, features={"min_frequency": 2},
                      model={**MODEL, "cache_dir": str(blocker / "cache")})
    with pytest.raises(ConfigError, match=r"model.cache_dir '.*a-file/cache' cannot be used for "
                                          r"external-memory training's page cache \(.*\); point model.cache_dir "
                                          r"at a writable local directory"):
        run_pipeline(cfg)
    assert Registry(cfg.registry, cfg.store, cfg.name).champion() is None


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs), where one is allowed to be mounted."""
    mnt = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_cache_dir_without_room_for_the_pages_is_refused_with_the_sizes(source, tmp_path, tiny_disk):
    cfg = make_config(str(source), store=str(tmp_path / "store"), tune=TUNE, features={"min_frequency": 2},
                      model={**MODEL, "cache_dir": str(tiny_disk)})
    (tiny_disk / "filler").write_bytes(b"\0" * 900_000)        # the disk is (nearly) full
    with pytest.raises(ResourceError, match=r"model.cache_dir '.*tiny-.*' has \d+(\.\d)? KB free, but "
                                            r"external-memory training of [\d,]+ rows x \d+ features needs "
                                            r"about .* for its page cache; free space there or point "
                                            r"model.cache_dir at a writable local directory on a larger disk"):
        run_pipeline(cfg)
    assert Registry(cfg.registry, cfg.store, cfg.name).champion() is None


def test_a_full_cache_dir_is_refused_from_its_free_space(monkeypatch, tmp_path):
    """The same check where no tmpfs can be mounted (CI containers): the free space as reported."""
    import collections
    import shutil

    from mlops_ray.config import ModelConfig
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, (10 << 30) - (5 << 20), 5 << 20))
    with pytest.raises(ResourceError, match=r"has 5.0 MB free, but external-memory training of 100,000,000 rows "
                                            r"x 20 features needs about 13.\d GB"):
        X.check_cache_dir(ModelConfig(cache_dir=str(tmp_path)), 100_000_000, 20)


def test_a_failed_page_write_is_put_down_to_the_disk_only_when_the_disk_is_the_cause(monkeypatch, tmp_path):
    import collections
    import shutil
    usage = collections.namedtuple("usage", "total used free")
    roomy, full = usage(10 << 30, 1 << 30, 9 << 30), usage(10 << 30, (10 << 30) - (1 << 20), 1 << 20)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: roomy)
    other = RuntimeError("[12:00:01] src/data/sparse_page_writer.h: Check failed: write to the page failed")
    assert X._cache_error(other, str(tmp_path)) is other                  # a roomy disk: not the disk's fault
    enospc = RuntimeError("std::system_error: No space left on device\nmore")
    err = X._cache_error(enospc, str(tmp_path))
    assert isinstance(err, ResourceError) and err.message == (
        f"external-memory training could not write its page cache in model.cache_dir '{tmp_path}' "
        "(std::system_error: No space left on device); free space there or point model.cache_dir at a larger "
        "local disk")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: full)              # the disk filled meanwhile
    assert isinstance(X._cache_error(other, str(tmp_path)), ResourceError)
    assert isinstance(X._cache_error(other, str(tmp_path / "gone")), ResourceError)
