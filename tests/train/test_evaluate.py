import json
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

from mlops_ray.config import GateConfig
from mlops_ray.errors import ConfigError, ExitCode, GateRejected
from mlops_ray.train.evaluate import (
    METRIC_DIRECTION, SKIPPED, TASK_METRICS, EvaluationReport, check_gate_metrics, check_metric,
    decide, evaluate, metric_direction, metrics_for, pr_points, raise_if_rejected, roc_points,
    slice_metrics,
)

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cancer():
    """A real, tiny binary problem: logistic regression on half of breast-cancer, scored on the rest."""
    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    train, test = idx[:285], idx[285:]
    x = (x - x[train].mean(0)) / x[train].std(0)
    model = LogisticRegression(max_iter=1000, C=0.1).fit(x[train], y[train])
    return y[test], model.predict_proba(x[test])[:, 1]


def calibrated(n=20000, seed=1):
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=n)
    return (rng.uniform(size=n) < p).astype(int), p


def report(metrics, slices=None, slice_column=None, task="binary"):
    return EvaluationReport(task=task, metrics=metrics, slices=slices or {}, threshold=0.5,
                            n_test=int(metrics.get("n", 1000)), slice_column=slice_column)


# --------------------------------------------------------------------------- metrics
def test_binary_metrics_match_sklearn(cancer):
    y, p = cancer
    m = metrics_for("binary", y, p, threshold=0.3)
    hard = (p >= 0.3).astype(int)
    assert set(m) == set(TASK_METRICS["binary"])
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["logloss"] == pytest.approx(skm.log_loss(y, p))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, hard))
    assert m["precision"] == pytest.approx(skm.precision_score(y, hard))
    assert m["recall"] == pytest.approx(skm.recall_score(y, hard))
    assert m["f1"] == pytest.approx(skm.f1_score(y, hard))
    assert m["positive_rate"] == pytest.approx(hard.mean())
    assert m["n"] == len(y)
    assert m["auc"] > 0.95   # the fixture is a real, good model


def test_pandas_and_arrow_backed_inputs_give_the_same_metrics(cancer):
    y, p = cancer
    plain = metrics_for("binary", y, p)
    arrow = metrics_for("binary", pd.Series(y, dtype="int64[pyarrow]"), pd.Series(p, index=np.arange(len(p)) + 7))
    assert arrow == pytest.approx(plain)


def test_ece_small_when_calibrated_large_when_not():
    y, p = calibrated()
    assert metrics_for("binary", y, p)["ece"] < 0.02
    assert metrics_for("binary", y, p ** 3)["ece"] > 0.15      # systematically too low
    assert metrics_for("binary", y, np.full(len(y), 0.9))["ece"] == pytest.approx(0.9 - y.mean())


def test_one_class_labels_give_nan_auc_and_no_exception():
    rng = np.random.default_rng(2)
    p = rng.uniform(size=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no sklearn UndefinedMetricWarning either
        m = metrics_for("binary", np.zeros(100, int), p)
    assert math.isnan(m["auc"]) and math.isnan(m["pr_auc"])
    assert m["accuracy"] == pytest.approx((p < 0.5).mean())
    assert math.isfinite(m["logloss"]) and m["recall"] == 0.0


@pytest.mark.parametrize("y, p, match", [
    ([0, 1, 2], [0.1, 0.5, 0.9], "binary labels must be 0/1"),
    ([0, 1, 1], [-2.0, 0.5, 3.1], r"probabilities in \[0, 1\].*raw margins"),
    ([0, 1], [0.1, 0.5, 0.9], "y_true has 2 rows but y_pred has 3"),
    ([0, 1, 1], [0.1, np.nan, 0.9], "y_pred has 1 NaN values"),
    ([], [], "y_true is empty"),
])
def test_bad_binary_input_says_what_is_wrong(y, p, match):
    with pytest.raises(ValueError, match=match):
        metrics_for("binary", y, p)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'ranking'; model.task must be one of"):
        metrics_for("ranking", [1], [1])


def test_regression_metrics():
    rng = np.random.default_rng(3)
    y = rng.normal(size=500)
    p = y + rng.normal(scale=0.3, size=500)
    m = metrics_for("regression", y, p)
    assert set(m) == set(TASK_METRICS["regression"])
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, p)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert m["r2"] == pytest.approx(skm.r2_score(y, p))


def test_multiclass_metrics():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, size=600)
    logits = rng.normal(size=(600, 3)) + 2.0 * np.eye(3)[y]
    p = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)  # like xgboost
    m = metrics_for("multiclass", y, p)
    assert set(m) == set(TASK_METRICS["multiclass"])
    p64 = p / p.sum(1, keepdims=True, dtype=np.float64)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p64, multi_class="ovr", average="macro"))
    assert m["logloss"] == pytest.approx(skm.log_loss(y, p64))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert m["f1"] == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))


def test_multiclass_auc_is_nan_when_a_class_is_absent():
    p = np.full((40, 3), 1 / 3)
    m = metrics_for("multiclass", np.r_[np.zeros(20, int), np.ones(20, int)], p)
    assert math.isnan(m["auc"]) and math.isfinite(m["logloss"])


def test_multiclass_labels_must_match_columns():
    with pytest.raises(ValueError, match=r"integers 0..2 \(one per probability column\)"):
        metrics_for("multiclass", [0, 1, 5], np.full((3, 3), 1 / 3))


def test_every_metric_has_a_direction_except_descriptive_ones():
    produced = {m for ms in TASK_METRICS.values() for m in ms}
    assert produced - set(METRIC_DIRECTION) == {"n", "positive_rate"}
    assert metric_direction("auc") == "max" and metric_direction("logloss") == "min"
    with pytest.raises(ValueError, match=r"unknown metric 'aucc' \(did you mean 'auc'\?\); known metrics: accuracy"):
        metric_direction("aucc")
    with pytest.raises(ValueError, match="'n' describes the test data"):
        metric_direction("n")


# --------------------------------------------------------------------------- slices and report
def test_slice_metrics_score_big_slices_and_count_small_ones(cancer):
    y, p = cancer
    n = len(y)
    keys = np.array(["big"] * (n - 30) + ["small"] * 20 + [None] * 10, dtype=object)
    out = slice_metrics("binary", y, p, keys, threshold=0.5, min_rows=50)
    assert set(out) == {"big", SKIPPED}
    assert out[SKIPPED] == {"small": 20, "<null>": 10}
    assert out["big"] == pytest.approx(metrics_for("binary", y[: n - 30], p[: n - 30]))


def test_slice_metrics_length_mismatch():
    with pytest.raises(ValueError, match="slices has 2 rows but y_true has 3"):
        slice_metrics("binary", [0, 1, 1], [0.2, 0.6, 0.7], ["a", "b"], 0.5)


def test_evaluate_report_round_trips_through_json(cancer):
    y, p = cancer
    slices = pd.Series(np.where(np.arange(len(y)) % 2, "web", "store"), name="channel")
    r = evaluate("binary", y, p, 0.5, slices=slices)
    assert r.n_test == len(y) and r.slice_column == "channel" and set(r.slices) == {"web", "store", SKIPPED}
    one_class = evaluate("binary", np.zeros(60, int), np.full(60, 0.2), 0.5)
    text = json.dumps(one_class.to_dict(), allow_nan=False)          # NaN -> null, strict JSON
    back = EvaluationReport.from_dict(json.loads(text))
    assert math.isnan(back.metrics["auc"]) and back.metrics["accuracy"] == 1.0
    assert EvaluationReport.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_curves_are_downsampled_and_json_able(cancer):
    y, p = cancer
    roc = roc_points(y, p, max_points=20)
    pr = pr_points(y, p, max_points=20)
    json.dumps([roc, pr], allow_nan=False)
    assert 2 <= len(roc["fpr"]) == len(roc["tpr"]) <= 20
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0)
    assert len(pr["recall"]) <= 20 and pr["recall"][0] == 0.0 and pr["recall"][-1] == 1.0
    assert np.all(np.diff(pr["recall"]) >= 0)
    assert roc_points(np.ones(5), np.linspace(0, 1, 5)) == {"fpr": [], "tpr": []}


# --------------------------------------------------------------------------- the gate
GOOD = {"auc": 0.90, "logloss": 0.30, "n": 1000.0}



@pytest.mark.parametrize("draw", [
    lambda plots: plots.curve([0.0, 0.5, 1.0], [0.0, 1.0], "false positive rate", "true positive rate", "ROC"),
    lambda plots: plots.tuning_history([{"auc": 0.8}, {"auc": "bad"}], "auc", "max"),
], ids=["curve", "tuning_history"])
def test_a_plot_that_fails_while_drawing_leaves_no_open_figure(draw):
    # the pipeline tags a failed plot and goes on (and the loop runs for days): a figure
    # pyplot still holds is never freed
    import matplotlib.pyplot as plt

    from mlops_ray.train import plots
    before = plt.get_fignums()
    with pytest.raises((TypeError, ValueError)):
        draw(plots)
    assert plt.get_fignums() == before

def test_gate_passes_first_model_on_absolute_thresholds_only():
    d = decide(report(GOOD), None, GateConfig(min={"auc": 0.85}, max={"logloss": 0.35}), "auc")
    assert d.passed and d.failures == [] and len(d.checks) == 2 and d.champion_version is None
    assert d.checks[0]["message"] == "auc 0.9 >= required 0.85 (gate.min.auc)"
    raise_if_rejected(d)     # no exception
    json.dumps(d.to_dict(), allow_nan=False)


def test_absolute_threshold_failure_message():
    d = decide(report({**GOOD, "auc": 0.812}), None, GateConfig(min={"auc": 0.85}), "auc")
    assert not d.passed
    assert d.failures == ["auc 0.812 < required 0.85 (gate.min.auc)"]
    d = decide(report(GOOD), None, GateConfig(max={"logloss": 0.25}), "auc")
    assert d.failures == ["logloss 0.3 > allowed 0.25 (gate.max.logloss)"]


def test_values_close_to_the_threshold_are_shown_with_enough_digits():
    d = decide(report({**GOOD, "auc": 0.849996}), None, GateConfig(min={"auc": 0.85}), "auc")
    assert d.failures == ["auc 0.849996 < required 0.85 (gate.min.auc)"]


def test_unreachable_threshold_is_rejected_with_the_reason():
    d = decide(report(GOOD), None, GateConfig(min={"auc": 1.01}), "auc")
    with pytest.raises(GateRejected, match=re.escape("1 gate check failed:\n  - auc 0.9 < required 1.01 (gate.min.auc)")) as e:
        raise_if_rejected(d)
    assert e.value.exit_code == ExitCode.GATE
    assert e.value.details["passed"] is False


def test_nan_metric_fails_the_gate():
    d = decide(report({**GOOD, "auc": math.nan}), None, GateConfig(min={"auc": 0.5}), "auc")
    assert not d.passed and "auc is NaN" in d.failures[0] and "gate.min.auc 0.5 cannot be met" in d.failures[0]
    json.dumps(d.to_dict(), allow_nan=False)


def test_gate_metric_the_evaluation_does_not_produce_is_a_failure_not_a_key_error():
    d = decide(report({"rmse": 1.0, "mae": 0.5, "r2": 0.4, "n": 10.0}, task="regression"), None,
               GateConfig(min={"auc": 0.8}), "rmse")
    assert d.failures == ["gate.min.auc: the evaluation does not produce 'auc'; it produced: rmse, mae, r2, n"]


@pytest.mark.parametrize("candidate, passed", [(0.868, True), (0.87, True), (0.861, False)])
def test_champion_must_be_beaten_by_min_delta(candidate, passed):
    gate = GateConfig(min_delta=0.01)
    d = decide(report({**GOOD, "auc": candidate}), report({**GOOD, "auc": 0.858}), gate, "auc", "3")
    assert d.passed is passed and d.champion_version == "3"
    if not passed:
        assert d.failures == ["auc 0.861 does not beat champion v3 (0.858) by min_delta 0.01 (change +0.003)"]


def test_champion_comparison_on_a_lower_is_better_metric():
    gate = GateConfig(min_delta=0.02)
    champion = report({**GOOD, "logloss": 0.30})
    assert decide(report({**GOOD, "logloss": 0.27}), champion, gate, "logloss", "7").passed
    d = decide(report({**GOOD, "logloss": 0.29}), champion, gate, "logloss", "7")
    assert d.failures == ["logloss 0.29 does not beat champion v7 (0.3) by min_delta 0.02 "
                          "(change +0.01, lower is better)"]


def test_champion_comparison_on_a_metric_without_direction_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot compare with the champion on 'n'"):
        decide(report(GOOD), report(GOOD), GateConfig(), "n")


def test_slice_regression_fails_the_gate():
    cand = report(GOOD, {"DE": {"auc": 0.79, "n": 500}, "FR": {"auc": 0.95, "n": 500}, "IT": {"auc": math.nan},
                         SKIPPED: {"LU": 12}}, slice_column="country")
    champ = report({**GOOD, "auc": 0.88}, {"DE": {"auc": 0.83}, "FR": {"auc": 0.96}, "IT": {"auc": math.nan}})
    d = decide(cand, champ, GateConfig(max_slice_regression=0.02), "auc", "3")
    assert d.failures == ["slice country=DE: auc 0.79 vs champion v3 0.83 regresses by 0.04, "
                          "more than max_slice_regression 0.02 (on 500 test rows)"]
    slice_checks = {c["slice"]: c for c in d.checks if c["check"] == "slice"}
    assert set(slice_checks) == {"DE", "FR", "IT"}      # not the _skipped counts
    assert slice_checks["FR"]["passed"] and slice_checks["IT"].get("skipped")


def test_every_failure_is_collected_and_raised_once():
    cand = report({"auc": 0.80, "logloss": 0.50, "n": 1000.0}, {"DE": {"auc": 0.70, "n": 400}}, slice_column="country")
    champ = report({"auc": 0.84, "logloss": 0.35, "n": 1000.0}, {"DE": {"auc": 0.82}})
    gate = GateConfig(min={"auc": 0.85}, max={"logloss": 0.4}, min_delta=0.0, max_slice_regression=0.02)
    d = decide(cand, champ, gate, "auc", "3")
    assert len(d.failures) == 4 and not d.passed
    with pytest.raises(GateRejected) as e:
        raise_if_rejected(d)
    msg = str(e.value)
    assert msg.startswith("4 gate checks failed:")
    for part in ["auc 0.8 < required 0.85 (gate.min.auc)", "logloss 0.5 > allowed 0.4 (gate.max.logloss)",
                 "auc 0.8 does not beat champion v3 (0.84)", "slice country=DE: auc 0.7 vs champion v3 0.82"]:
        assert part in msg


def test_three_absolute_failures_in_one_decision():
    gate = GateConfig(min={"auc": 0.95, "recall": 0.9}, max={"ece": 0.01})
    d = decide(report({**GOOD, "recall": 0.5, "ece": 0.05}), None, gate, "auc")
    assert [c["check"] for c in d.checks if not c["passed"]] == ["gate.min.auc", "gate.min.recall", "gate.max.ece"]
    with pytest.raises(GateRejected, match=r"^3 gate checks failed:\n  - auc 0.9 < required 0.95 .*\n  - recall "
                                           r"0.5 < required 0.9 .*\n  - ece 0.05 > allowed 0.01 \(gate.max.ece\)$"):
        raise_if_rejected(d)


# --------------------------------------------------------------------------- config checks
@pytest.mark.parametrize("gate, task, match", [
    (GateConfig(min={"auc": 0.8}), "regression",
     "gate.min.auc: task 'regression' does not produce 'auc'; valid names: rmse, mae, r2, n"),
    (GateConfig(min={"aucc": 0.8}), "binary", r"gate.min.aucc: task 'binary' does not produce 'aucc' \(did you "
                                              r"mean 'auc'\?\); valid names: auc, pr_auc"),
    (GateConfig(max={"ece": 0.1, "rmse": 3}), "binary", "gate.max.rmse: task 'binary' does not produce 'rmse'"),
    (GateConfig(min={"auc": 1.01}), "binary", "gate.min.auc: 1.01 can never be met, auc is at most 1; lower it"),
    (GateConfig(max={"logloss": -0.1}), "multiclass", "gate.max.logloss: -0.1 can never be met"),
    (GateConfig(min={"f1": 0.8}, max={"f1": 0.7}), "binary",
     r"gate.min.f1 \(0.8\) is greater than gate.max.f1 \(0.7\); no model can pass"),
])
def test_check_gate_metrics_names_the_key_and_valid_names(gate, task, match):
    with pytest.raises(ConfigError, match=match) as e:
        check_gate_metrics(gate, task)
    assert e.value.exit_code == ExitCode.CONFIG


def test_check_gate_metrics_reports_every_problem_and_accepts_good_gates():
    with pytest.raises(ConfigError, match=r"gate: 2 problems\n  gate.min.auc.*\n  gate.max.ece"):
        check_gate_metrics(GateConfig(min={"auc": 0.8, "r2": 0.5}, max={"ece": 0.1}), "regression")
    check_gate_metrics(GateConfig(min={"auc": 0.8, "n": 500}, max={"positive_rate": 0.2}), "binary")
    check_gate_metrics(GateConfig(min={"r2": 0.5}, max={"rmse": 2.0}), "regression")


@pytest.mark.parametrize("metric, mode, task, match", [
    ("auc", "max", "regression", r"tune.metric: task 'regression' does not produce 'auc'; set tune.metric to one "
                                 r"of rmse \(min\), mae \(min\), r2 \(max\) and tune.mode"),
    ("rmsee", "min", "regression", r"does not produce 'rmsee' \(did you mean 'rmse'\?\)"),
    ("n", "max", "binary", "tune.metric: 'n' describes the test data and has no better direction"),
    ("logloss", "max", "binary", "tune.mode is 'max' but logloss is better when lower; set tune.mode: min"),
    ("auc", "min", "multiclass", "tune.mode is 'min' but auc is better when higher; set tune.mode: max"),
])
def test_check_metric_names_the_key_and_the_fix(metric, mode, task, match):
    with pytest.raises(ConfigError, match=match):
        check_metric(metric, mode, task)


@pytest.mark.parametrize("metric, mode, task", [("auc", "max", "binary"), ("rmse", "min", "regression"),
                                                ("logloss", "min", "multiclass")])
def test_check_metric_accepts_consistent_settings(metric, mode, task):
    check_metric(metric, mode, task)


def _skewed(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.05).astype(int)
    p = np.clip(0.02 + 0.5 * y * rng.random(n) + 0.1 * rng.random(n), 0, 1)
    return y, p


def test_the_threshold_is_chosen_on_validation_for_its_rule():
    from mlops_ray.config import ThresholdSpec
    from mlops_ray.train.evaluate import choose_threshold
    y, p = _skewed()
    best = choose_threshold(y, p, "auto")
    assert best["rule"] == "max_f1" and best["value"] != 0.5
    f1_at = {t: metrics_for("binary", y, p, t)["f1"] for t in (0.5, best["value"])}
    assert f1_at[best["value"]] >= f1_at[0.5] and f1_at[best["value"]] == pytest.approx(best["valid"]["f1"])
    prec = choose_threshold(y, p, ThresholdSpec(min_precision=0.9))
    m = metrics_for("binary", y, p, prec["value"])
    assert m["precision"] >= 0.9 and prec["rule"] == "min_precision 0.9"
    rec = choose_threshold(y, p, ThresholdSpec(min_recall=0.95))
    assert metrics_for("binary", y, p, rec["value"])["recall"] >= 0.95
    assert choose_threshold(y, p, 0.3) == {"value": 0.3, "rule": "fixed", "spec": 0.3}
    assert choose_threshold(np.zeros(10), np.full(10, 0.1), "max_f1")["value"] == 0.5     # one class: kept


def test_a_precision_no_threshold_reaches_names_the_best_reachable():
    from mlops_ray.config import ThresholdSpec
    from mlops_ray.errors import ConfigError
    from mlops_ray.train.evaluate import choose_threshold
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.3).astype(int)
    p = rng.random(2000)                                   # no skill: precision stays near 0.3
    with pytest.raises(ConfigError, match=r"model\.threshold: no threshold reaches precision 0\.99 on the "
                                          r"validation split \(over at least 10 rows predicted positive\); "
                                          r"the best reachable is 0\.\d+ \(threshold .*recall"
                                          r".*Lower min_precision or use max_f1"):
        choose_threshold(y, p, ThresholdSpec(min_precision=0.99))


@pytest.mark.parametrize("value, message", [
    ("max_f2", "'max_f2' is not a threshold rule; use auto, max_f1"),
    (1.5, "a fixed threshold is a probability between 0 and 1"),
    ({"min_precison": 0.9}, "unknown key 'min_precison'"),
    ({"min_precision": 0.9, "min_recall": 0.5}, "give exactly one target"),
    ({"min_recall": 2}, "min_recall is a share in (0, 1], got 2"),
])
def test_a_bad_threshold_spec_names_the_key_and_the_forms(value, message):
    from mlops_ray.config import config_from_dict
    from mlops_ray.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        config_from_dict({"name": "p", "data": {"source": "x", "label": "y"}, "model": {"threshold": value}})
    assert "model.threshold: " in str(e.value) and message in str(e.value)


def test_a_feature_that_alone_predicts_the_label_is_a_probable_leak():
    from mlops_ray.train.evaluate import leak_suspects
    rng = np.random.default_rng(3)
    y = (rng.random(3000) < 0.2).astype(float)
    X = np.column_stack([rng.normal(size=3000) + y * 0.5,                      # a signal
                         y * 10 + rng.random(3000) * 0.1,                      # the label, copied
                         np.where(y == 1, 3, rng.integers(0, 3, 3000)).astype(float)])   # a category that is it
    out = leak_suspects("binary", X, y, ["signal", "copy", "status"], ["q", "q", "c"])
    assert [d["feature"] for d in out] == ["copy", "status"] and out[0]["auc"] == 1.0
    yr = rng.normal(size=3000)
    assert [d["feature"] for d in leak_suspects("regression", np.column_stack([yr * 2 + 1, rng.normal(size=3000)]),
                                                 yr, ["twice", "noise"], ["q", "q"])] == ["twice"]


def test_a_small_slice_is_reported_not_gated_and_noise_widens_the_allowance():
    cand = report(GOOD, {"S1": {"auc": 0.70, "n": 60}, "S2": {"auc": 0.75, "n": 900}, "S3": {"auc": 0.75, "n": 900}},
                  slice_column="store")
    champ = report(GOOD, {"S1": {"auc": 0.90}, "S2": {"auc": 0.80}, "S3": {"auc": 0.80}})
    cand.slice_noise = {"S2": 0.03, "S3": 0.005}         # S2's 0.05 drop is within 0.02 + 1.645 * 0.03
    d = decide(cand, champ, GateConfig(max_slice_regression=0.02, min_slice_rows=200), "auc", "3")
    checks = {c["slice"]: c for c in d.checks if c["check"] == "slice"}
    assert checks["S1"]["passed"] and "fewer than gate.min_slice_rows 200: reported, not gated" in checks["S1"]["message"]
    assert checks["S2"]["passed"] and "+ noise 0.0493" in checks["S2"]["message"]
    assert not checks["S3"]["passed"] and d.failures == [checks["S3"]["message"]]


def test_slice_noise_is_the_paired_bootstrap_spread_and_shrinks_with_rows():
    from mlops_ray.train.evaluate import _auc, slice_noise
    rng = np.random.default_rng(5)
    n = 4000
    y = (rng.random(n) < 0.3).astype(float)
    a = np.clip(0.3 + 0.1 * y + 0.3 * rng.random(n), 0, 1)        # AUC ~0.77: both AUCs vary
    b = np.clip(a + 0.05 * rng.normal(size=n), 0, 1)
    assert _auc(y, a) == pytest.approx(skm.roc_auc_score(y, a))
    sl = np.where(np.arange(n) < 200, "small", "big")
    noise = slice_noise("binary", "auc", y, a, b, sl, (0.5, 0.5), ["small", "big"])
    assert 0 < noise["big"] < noise["small"]
    # against an independent paired bootstrap (sklearn's AUC, its own resamples): the same spread to
    # within the bootstrap's own error; an unpaired one (each model on its own resample) is ~2.4x wider
    big = np.flatnonzero(sl == "big")
    boot = np.random.default_rng(123)
    diffs = []
    for _ in range(400):
        i = big[boot.integers(0, big.size, big.size)]
        diffs.append(skm.roc_auc_score(y[i], b[i]) - skm.roc_auc_score(y[i], a[i]))
    assert noise["big"] == pytest.approx(np.std(diffs, ddof=1), rel=0.2)
    assert slice_noise("binary", "auc", y, a, b, sl, (0.5, 0.5), ["small", "big"]) == noise   # seeded
    assert slice_noise("binary", "logloss", y, a, b, sl, (0.5, 0.5), ["small"])["small"] > 0


def test_champion_overlap_exact_and_estimated():
    from mlops_ray.train.evaluate import champion_overlap
    rng = np.random.default_rng(0)
    champ = np.unique(rng.integers(0, 2**63, 50_000, dtype=np.uint64) * np.uint64(2))
    test = np.concatenate([rng.choice(champ, 300, replace=False), rng.integers(0, 2**63, 700, dtype=np.uint64) * np.uint64(2) + np.uint64(1)])
    assert champion_overlap(test, champ, 1.0) == {"rows": 300, "test_rows": 1000, "share": 0.3, "exact": True}
    rate = 0.25                                  # a sample: only keys below a quarter of the range were kept
    kept = champ[champ < np.uint64(rate * 2.0 ** 64)]
    est = champion_overlap(test, kept, rate)
    assert not est["exact"] and 200 <= est["rows"] <= 400


def test_a_champion_trained_on_the_test_rows_rejects_with_the_count_and_the_fix():
    from mlops_ray.config import GateConfig
    from mlops_ray.train.evaluate import EvaluationReport, decide
    cand = EvaluationReport("binary", {"auc": 0.80})
    champ = EvaluationReport("binary", {"auc": 0.79})
    overlap = {"rows": 472, "test_rows": 599, "share": 0.788, "exact": True}
    d = decide(cand, champ, GateConfig(), "auc", champion_version="1", overlap=overlap)
    assert not d.passed and d.failures == [
        "champion v1 was trained on 472 of the 599 test rows it is judged on (79%; gate.max_champion_overlap "
        "0.05): the comparison would favour it. The split keeps a row where it was only by its key: set "
        "data.id_column (or data.split.key_columns) so rows keep their split when columns change, or set "
        "gate.max_champion_overlap: 1 to compare anyway"]
    small = {**overlap, "rows": 3, "share": 0.005}
    assert decide(cand, champ, GateConfig(), "auc", champion_version="1", overlap=small).passed
