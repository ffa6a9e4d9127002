"""The search summary (mlops_ray/train/tune.py): picking the best trial, and a search that
produced nothing to pick. Fake result grids, no Ray."""
from types import SimpleNamespace

import pytest

from mlops_ray.errors import DataValidationError, ExitCode, ResourceError

pytestmark = pytest.mark.unit


def result(auc=None, error=None):
    return SimpleNamespace(metrics={"auc": auc, "rounds": 10, "final": True} if auc is not None else {},
                           config={"eta": 0.1}, error=error)


def summarise(results):
    from mlops_ray.train.tune import _summarise
    return _summarise(results, "auc", "max", "single", 1.0, False)


def test_the_best_finite_trial_wins():
    s = summarise([result(0.7), result(float("nan")), result(0.9), result(error=RuntimeError("x"))])
    assert s.best_score == 0.9 and len(s.trials) == 4


@pytest.mark.parametrize("results, cls, code, needle", [
    ([result(error=RuntimeError("trial lost with its node\nmore")), result(error=RuntimeError("oom"))],
     ResourceError, ExitCode.RESOURCES, r"every trial failed \(.*\); first error: trial lost with its node$"),
    ([result(float("nan")), result(float("nan"))],
     DataValidationError, ExitCode.DATA, "no trial produced a finite 'auc' on the validation split"),
])
def test_a_search_without_a_scored_trial_exits_with_its_own_code(results, cls, code, needle):
    with pytest.raises(cls, match=needle) as e:
        summarise(results)
    assert e.value.exit_code == code


def test_the_cli_prints_the_message_of_a_data_validation_error_without_a_report(capsys):
    """Only a validation report replaces the message (it is printed above); other data errors, such
    as "no trial produced a finite 'auc'", must reach the user."""
    import pytest
    import typer
    from mlops_ray.cli import options as cli
    from mlops_ray.errors import DataValidationError
    with pytest.raises(typer.Exit) as e:
        cli._fail(DataValidationError("no trial produced a finite 'auc' on the validation split"), False)
    assert e.value.exit_code == DataValidationError("x").exit_code
    assert "no trial produced a finite 'auc'" in capsys.readouterr().err.replace("\n", " ")


def test_baselines_are_xgboost_defaults_and_known_configs_fitted_into_the_space():
    from mlops_ray.config import ModelConfig, TuneConfig
    from mlops_ray.train.tune import baseline_points
    model = ModelConfig(num_boost_round=200, early_stopping_rounds=30)
    pts = dict(baseline_points(TuneConfig(), model))
    assert list(pts) == ["xgboost defaults", "depth 8, eta 0.1", "depth 6, eta 0.1, subsample 0.8"]
    assert pts["xgboost defaults"] == {"eta": 0.3, "max_depth": 6, "min_child_weight": 1.0, "subsample": 1.0,
                                       "colsample_bytree": 1.0, "lambda": 1.0}
    assert pts["depth 8, eta 0.1"]["max_depth"] == 8 and pts["depth 8, eta 0.1"]["eta"] == 0.1
    space = {"eta": {"type": "log_float", "low": 0.01, "high": 0.2},            # 0.3 is outside: clipped
             "max_depth": {"type": "choice", "values": [4, 8]},                 # 6 is not offered: nearest
             "num_boost_round": {"type": "int", "low": 50, "high": 500}}        # the model's rounds
    pts = baseline_points(TuneConfig(space=space, num_samples=2), model)        # counted in num_samples
    assert pts == [("xgboost defaults", {"eta": 0.2, "max_depth": 4, "num_boost_round": 200}),
                   ("depth 8, eta 0.1", {"eta": 0.1, "max_depth": 8, "num_boost_round": 200})]
    # Ray's Optuna searcher refuses a point that lacks a key of the space (the training benchmark's
    # one-choice space crashed on it): no known default -> the middle of the range, or the first choice
    space = {"grow_policy": {"type": "choice", "values": ["lossguide", "depthwise"]},
             "max_cat_to_onehot": {"type": "int", "low": 1, "high": 9},
             "eta": {"type": "choice", "values": [0.05]},
             "sketch_eps": {"type": "log_float", "low": 0.01, "high": 1.0}}
    (_, point), = baseline_points(TuneConfig(space=space, baselines=1), model)
    assert point == {"grow_policy": "lossguide", "max_cat_to_onehot": 5, "eta": 0.05, "sketch_eps": 0.1}
    assert baseline_points(TuneConfig(baselines=0), model) == []
    # points equal after fitting run once
    same = baseline_points(TuneConfig(space={"gamma": {"type": "float", "low": 0, "high": 5}}), model)
    assert same == [("xgboost defaults", {"gamma": 0.0})]


def test_the_summary_names_the_baseline_trials_and_their_scores():
    from mlops_ray.train.tune import _summarise
    pts = [("xgboost defaults", {"eta": 0.3, "max_depth": 6}), ("depth 8, eta 0.1", {"eta": 0.1, "max_depth": 8})]
    rs = [SimpleNamespace(metrics={"auc": a, "rounds": 10, "final": True}, config=c, error=None)
          for a, c in [(0.70, {"eta": 0.3, "max_depth": 6}), (0.72, {"eta": 0.1, "max_depth": 8}),
                       (0.75, {"eta": 0.05, "max_depth": 5})]]
    s = _summarise(rs, "auc", "max", "single", 1.0, False, pts)
    assert s.baselines() == {"xgboost defaults": 0.70, "depth 8, eta 0.1": 0.72}
    assert s.to_dict()["baselines"] == s.baselines() and s.best_score == 0.75


def test_early_stopping_patience_follows_the_round_budget():
    from mlops_ray.config import ModelConfig
    from mlops_ray.train.xgb import split_trial_config
    assert ModelConfig().patience() == 60 and ModelConfig(num_boost_round=50).patience() == 20
    assert ModelConfig(early_stopping_rounds=7).patience() == 7               # set: kept as it is
    # a searched round count gets patience of its own size
    _, rounds, esr = split_trial_config({"num_boost_round": 1000, "eta": 0.1}, ModelConfig())
    assert (rounds, esr) == (1000, 200)
    assert split_trial_config({"early_stopping_rounds": 5}, ModelConfig())[2] == 5


def test_a_train_valid_refit_scales_the_best_trials_rounds_by_the_rows_it_adds():
    from mlops_ray.config import ModelConfig
    from mlops_ray.train.tune import refit_rounds
    rows = {"train": 70_000, "valid": 10_000, "test": 20_000}
    assert refit_rounds(69, ModelConfig(), rows) == 80                                # 70 x 80k / 70k
    assert refit_rounds(69, ModelConfig(refit_rounds="same"), rows) == 70
    assert refit_rounds(69, ModelConfig(refit="best_trial"), rows) == 70               # train alone: as searched
    assert refit_rounds(0, ModelConfig(), {"train": 3, "valid": 1}) == 1
    assert refit_rounds(9, ModelConfig(), {"train": 0, "valid": 5}) == 10              # nothing to scale by


def test_trials_evaluate_only_the_tuned_metric():
    from mlops_ray.config import ModelConfig, TuneConfig
    from mlops_ray.train.xgb import base_params, resolve_metric
    model = ModelConfig(task="binary")
    tune = resolve_metric(model, TuneConfig(metric="pr_auc", mode="max"))
    # one pass over the validation rows per round, not three: what trials report and early stopping watch
    assert base_params(model, tune, 1)["eval_metric"] == ["aucpr"]
    every = base_params(model, tune, 1, all_metrics=True)["eval_metric"]
    assert sorted(every) == ["auc", "aucpr", "logloss"] and every[-1] == "aucpr"


@pytest.mark.parametrize("strategy, tune, cpus, cores, expected", [
    ("single", {}, 4, 2, 2),                    # embedded Ray on 2 cores: 4 logical CPUs, 2 one-thread trials
    ("single", {}, 4, None, 4),                 # a cluster's logical CPUs as they are
    ("single", {"cpus_per_trial": 2}, 8, 4, 2), # 2 threads a trial on 4 cores
    ("single", {"cpus_per_trial": 4}, 4, 2, 1),
    ("single", {"gpus_per_trial": 1}, 4, 2, 4), # GPU trials are not held to the cores
    ("single", {"max_concurrent": 3}, 4, 2, 3), # set: kept as it is, for every strategy
    ("distributed", {"max_concurrent": 3}, 8, None, 3),
    ("distributed", {}, 8, None, 3),            # 2 workers + the trial's half CPU each
    ("external", {}, 8, 8, 1),
])
def test_trial_concurrency_matches_threads_to_cores(strategy, tune, cpus, cores, expected):
    from mlops_ray.config import ModelConfig, TuneConfig
    from mlops_ray.train.tune import trial_concurrency
    assert trial_concurrency(strategy, TuneConfig(**tune), ModelConfig(num_workers=2), cpus, cores) == expected


def _parquet_parts(tmp_path, sizes):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    start = 0
    for i, n in enumerate(sizes):
        pq.write_table(pa.table({"f": np.arange(start, start + n, dtype=np.float32),
                                 "y": np.zeros(n, np.float32)}), tmp_path / f"part-{i}.parquet")
        start += n
    return sum(sizes)


@pytest.mark.parametrize("sizes,workers,sliced", [([5000, 100, 4000, 200, 3000], 2, False),
                                                  ([300], 3, True), ([50, 70], 3, True)])
def test_each_train_worker_reads_its_own_share_of_the_parquet_files(tmp_path, sizes, workers, sliced):
    """Distributed fits read their rows with pyarrow, not a Ray Data streaming split: every row once."""
    import numpy as np

    from mlops_ray.train.tune import _read_shard, _shards
    total = _parquet_parts(tmp_path, sizes)
    shard = _shards(str(tmp_path), workers)
    assert shard["slice"] is sliced and len(shard["files"]) == workers
    spec = SimpleNamespace(label="y", output_columns=["f"])     # what a worker reads of the FeatureSpec
    parts = [_read_shard(shard, r, workers, spec)[0][:, 0] for r in range(workers)]
    assert all(p.size for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(total, dtype=np.float32))
    if not sliced:     # balanced by bytes, largest first: {5000, 200, 100} and {4000, 3000}
        assert sorted(p.size for p in parts) == [5300, 7000]
