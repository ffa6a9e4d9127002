"""A multiclass model's predictions are monitored: the predicted class's distribution in a window
of the prediction log against the reference's."""
import numpy as np
import pyarrow as pa
import pytest

from mlops_ray.config import MonitorConfig
from mlops_ray.monitor import reference as R
from mlops_ray.monitor.drift import PREDICTION, compare

pytestmark = pytest.mark.unit

CLASSES = ["clear", "fog", "rain", "snow"]


def reference_of(share, n=5000, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(4), n) * 0.3 + np.eye(4)[rng.choice(4, n, p=share)] * 0.7
    ref = R.build_reference(np.zeros((n, 0), np.float32), _Spec(), p, "multiclass", bins=10, seed=0)
    return {**ref, "inputs": {"columns": {}}, "task": "multiclass", "classes": CLASSES}


class _Spec:
    output_columns, feature_types, categorical = [], [], []


def log_window(share, n=3000, seed=1, parts=3):
    """Prediction-log blocks: the request's inputs in their struct, and the `prediction` column, one
    list of class probabilities per row (only a log's own column is taken as the model's prediction)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(4), n) * 0.3 + np.eye(4)[rng.choice(4, n, p=share)] * 0.7
    tables = np.array_split(np.arange(n), parts)
    return [pa.table({"inputs": pa.StructArray.from_arrays([pa.array(np.zeros(len(i)))], ["x"]),
                      "prediction": pa.array([list(r) for r in p[i]], pa.list_(pa.float64()))}) for i in tables]


def judge(ref, window):
    counts = R.merge_counts([R.count_partial(t, {}, prediction_classes=len(CLASSES)) for t in window])
    return compare(ref, counts, MonitorConfig(null_draws=400), seed=0)


def test_the_predicted_class_is_monitored_and_named():
    ref = reference_of([0.6, 0.1, 0.25, 0.05])
    same = judge(ref, log_window([0.6, 0.1, 0.25, 0.05]))
    assert same["prediction"]["verdict"] == "ok" and not same["drift"]
    assert same["prediction"]["kind"] == "categorical" and same["prediction"]["rows"] == 3000
    assert same["prediction"]["window_hist"]["labels"][:4] == CLASSES
    moved = judge(ref, log_window([0.3, 0.1, 0.55, 0.05], seed=2))          # a rainy month
    assert moved["prediction"]["verdict"] == "drift" and moved["drift"]


def test_window_counts_of_the_predicted_class():
    [t] = log_window([0.25] * 4, n=4, parts=1)
    top = R._top_class(t.column("prediction"))
    probs = np.array(t.column("prediction").to_pylist())
    np.testing.assert_array_equal(top, probs.argmax(axis=1))
    assert R.count_partial(t, {}, prediction_classes=4)[PREDICTION]["counts"] == \
        np.bincount(probs.argmax(axis=1), minlength=5).tolist()


def test_the_report_has_a_confusion_matrix_named_by_class():
    from mlops_ray.monitor.report import render_report
    from mlops_ray.train import evaluate as ev
    rng = np.random.default_rng(3)
    y = rng.choice(4, 400, p=[0.6, 0.1, 0.25, 0.05])
    p = rng.dirichlet(np.ones(4), 400) * 0.5 + np.eye(4)[np.where(rng.random(400) < 0.7, y, rng.choice(4, 400))] * 0.5
    report = ev.EvaluationReport.from_dict(ev.evaluate("multiclass", y, p, classes=CLASSES).to_dict())
    m = np.array(report.confusion["matrix"])
    assert report.confusion["classes"] == CLASSES and m.sum() == 400
    assert (m.sum(axis=1) == np.bincount(y, minlength=4)).all()              # rows: the true classes
    assert np.trace(m) / 400 == report.metrics["accuracy"]
    html = render_report({"pipeline": "weather", "model": {"name": "weather", "version": "2", "task": "multiclass",
                                                            "metrics": report.metrics, "confusion": report.confusion}})
    assert "Confusion matrix (test split)" in html and "<th>predicted rain</th>" in html
    assert f"<td>true snow</td>{''.join(f'<td class=num>{v}</td>' for v in m[3])}" in html
