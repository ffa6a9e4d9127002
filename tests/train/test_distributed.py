"""The data-parallel strategy (Ray Train XGBoostTrainer, 2 workers) against the single one."""
import numpy as np
import pytest

from mlops_ray.pipeline import prepare_data
from mlops_ray.train import tune as T
from mlops_ray.train import xgb as X
from mlops_ray.train.evaluate import metrics_for
from tests.support.configs import make_config, write_parquet

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    base = tmp_path_factory.mktemp("dist")
    df = generate_chunk(SynthSpec(rows=150_000, seed=11), 0, 150_000)   # enough positives for a stable AUC
    cfg = make_config(str(write_parquet(df, base / "data", parts=2)), store=str(base / "store"),
                      model={"num_boost_round": 40, "strategy": "distributed", "num_workers": 2},
                      tune={"num_samples": 1, "scheduler": "none", "report_every": 10, "seed": 2,
                            "space": {"max_depth": {"type": "choice", "values": [4]}}})
    data = prepare_data(cfg)
    return cfg, data, X.load_splits(f"{data.out_dir}/features", data.spec, "binary")


def test_distributed_matches_single_quality(prepared, tmp_path):
    cfg, data, splits = prepared
    params = {"eta": 0.1, "max_depth": 5}
    dist = T.fit_distributed(params, train_path=f"{data.out_dir}/features/split=train",
                             valid_path=f"{data.out_dir}/features/split=valid", spec=data.spec.to_dict(),
                             model=cfg.model.model_dump(), tune_cfg=X.resolve_metric(cfg.model, cfg.tune).model_dump(),
                             storage=str(tmp_path / "train"), name="dist", num_workers=2, rounds=100)
    base = X.base_params(cfg.model, X.resolve_metric(cfg.model, cfg.tune), 2)
    single = X.train({**base, **params}, X.dmatrix(splits.X["train"], splits.y["train"], data.spec), 100).booster
    # held-out rows only hold ~1k positives (AUC noise ~0.008); compare on valid+test together
    Xh = np.concatenate([splits.X["valid"], splits.X["test"]])
    yh = np.concatenate([splits.y["valid"], splits.y["test"]])
    held = X.dmatrix(Xh, None, data.spec, quantile=False)
    auc_d = metrics_for("binary", yh, dist.predict(held))["auc"]
    auc_s = metrics_for("binary", yh, single.predict(held))["auc"]
    assert abs(auc_d - auc_s) < 0.005, (auc_d, auc_s)
    # Train V2's controller (and, propagated by Ray Train, its workers) polls every 0.5 s, not 2 s
    import os
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == T.TRAIN_POLL_S


def test_distributed_search_runs_train_inside_tune(prepared, tmp_path):
    cfg, data, splits = prepared
    res = T.run_search(splits=splits, model=cfg.model, tune_cfg=cfg.tune, storage=str(tmp_path / "tune"),
                       experiment="dist", strategy="distributed", features_dir=f"{data.out_dir}/features")
    assert res.strategy == "distributed" and res.best_score > 0.55


def test_distributed_final_refit_on_train_and_valid(prepared, tmp_path):
    cfg, data, splits = prepared
    search = T.SearchResult(metric="auc", mode="max", best_config={"eta": 0.1, "max_depth": 4}, best_score=0.7,
                            best_iteration=19)
    bst = T.train_final(splits=splits, model=cfg.model, tune_cfg=X.resolve_metric(cfg.model, cfg.tune),
                        search=search, strategy="distributed", features_dir=f"{data.out_dir}/features",
                        storage=str(tmp_path / "final"))
    rows = splits.rows               # the best trial's 20 rounds, scaled by the rows the refit adds
    assert bst.num_boosted_rounds() == round(20 * (rows["train"] + rows["valid"]) / rows["train"]) > 20
    test = X.dmatrix(splits.X["test"], None, data.spec, quantile=False)
    assert metrics_for("binary", splits.y["test"], bst.predict(test))["auc"] > 0.6
