"""The retrain policy (pure), the decision log, the loop lock, and `feedback` on bad label files."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from mlops_ray.config import RetrainConfig
from mlops_ray.errors import MonitorError
from mlops_ray.monitor import retrain as rt
from mlops_ray.monitor.labels import feedback
from mlops_ray.monitor.predlog import PredictionLog
from tests.support.configs import make_config

pytestmark = pytest.mark.unit

NOW = 1_780_000_000.0


def report(share=0.0, feats=(), mv=None):
    return {"drift_share": share, "features": list(feats), "multivariate": mv}


def test_drift_share_triggers_and_names_why():
    d = rt.should_retrain(report(0.5), None, RetrainConfig(drift_share=0.3), [], None, NOW)
    assert d.trigger and "drift share 50% (trigger at 30%)" in d.reasons[0]
    d = rt.should_retrain(report(0.1), None, RetrainConfig(drift_share=0.3, multivariate=False), [], None, NOW)
    assert not d.trigger and "drift share 10%" in d.checked[0]


def test_key_feature_and_domain_classifier():
    f = {"name": "amount", "verdict": "ok", "tests": {"psi": 0.4}, "statistic": "wasserstein", "value": 0.01}
    d = rt.should_retrain(report(0.0, [f]), None, RetrainConfig(key_features=["amount"]), [], None, NOW)
    assert d.trigger and "key feature amount PSI 0.400 > 0.25" in d.reasons
    d = rt.should_retrain(report(0.0, mv={"auc": 0.8, "threshold": 0.6, "drifted": True}), None,
                          RetrainConfig(), [], None, NOW)
    assert d.trigger and "domain classifier AUC 0.800" in d.reasons[0]


def test_live_metric_drop_needs_enough_labels():
    live = {"metric": "auc", "value": 0.70, "labelled": 500}
    d = rt.should_retrain(None, live, RetrainConfig(metric_drop=0.05), [], 0.80, NOW)
    assert d.trigger and "live auc 0.7000 vs 0.8000" in d.reasons[0]
    d = rt.should_retrain(None, {**live, "labelled": 20}, RetrainConfig(min_labels=200), [], 0.80, NOW)
    assert not d.trigger and "20 labelled predictions (needs 200)" in d.checked[0]
    rmse = {"metric": "rmse", "value": 1.3, "labelled": 500}   # lower is better: a rise is a drop
    assert rt.should_retrain(None, rmse, RetrainConfig(metric_drop=0.1), [], 1.0, NOW, higher_is_better=False).trigger


def test_cooldown_and_schedule():
    hist = [{"t": NOW - 3600, "action": "retrain"}]
    d = rt.should_retrain(report(0.9), None, RetrainConfig(cooldown="1d"), hist, None, NOW)
    assert not d.trigger and d.blocked.startswith("cool-down (1d) until")
    d = rt.should_retrain(None, None, RetrainConfig(schedule="7d"), [{"t": NOW - 8 * 86400, "action": "retrain"}],
                          None, NOW)
    assert d.trigger and d.reasons == ["schedule: no retrain in the last 7d"]
    d = rt.should_retrain(report(0.9), None, RetrainConfig(enabled=False), [], None, NOW)
    assert not d.trigger and d.blocked == "retrain.enabled is false"


def test_decision_log_appends(tmp_path):
    cfg = make_config("x", store=str(tmp_path / "s"))
    rt.record(cfg, {"t": 1, "action": "none"})
    rt.record(cfg, {"t": 2, "action": "retrain", "version": "2"})
    assert [e["action"] for e in rt.read_decisions(cfg)] == ["none", "retrain"]


def test_second_loop_on_the_same_pipeline_is_refused(tmp_path):
    cfg = make_config("x", store=str(tmp_path / "s"))
    with rt.LoopLock(cfg):
        other = rt.LoopLock(cfg)
        other.me = {**other.me, "pid": os.getpid() + 1}
        with pytest.raises(MonitorError, match=r"a loop already runs for this pipeline \(pid \d+"):
            with other:
                pass
    with rt.LoopLock(cfg):         # released: a new loop may start
        pass


# --------------------------------------------------------------------------- feedback
@pytest.fixture
def served(tmp_path):
    cfg = make_config("x", store=str(tmp_path / "s"))
    lg = PredictionLog(os.path.join(cfg.store, cfg.name, "predlog"), {"amount": "float"}, owner="r",
                       spool_dir=str(tmp_path / "spool"), flush_rows=10**9, flush_s=3600.0)
    rng = np.random.default_rng(0)
    for i in range(300):
        lg.append(f"r{i}", "1", [{"amount": float(i)}], [float(rng.random())], ts=NOW + i)
    lg.flush()
    lg.close()
    return cfg, tmp_path


@pytest.mark.parametrize("frame,message", [
    ({"rid": ["r1"], "is_fraud": [1]}, "has no 'request_id' column nor the id column 'transaction_id'"),
    ({"request_id": ["r1"], "label": [1]}, "has no label column 'is_fraud' (data.label"),
    ({"request_id": ["r1"], "is_fraud": ["yes"]}, "column 'is_fraud' is text, not a number"),
    ({"request_id": ["r1", "r2"], "is_fraud": [1, 3]}, r"holds \[3.0\] — a binary label must be 0 or 1"),
])
def test_bad_label_files_are_refused_and_nothing_is_stored(served, frame, message):
    cfg, tmp = served
    path = tmp / "labels.parquet"
    pd.DataFrame(frame).to_parquet(path)
    with pytest.raises(MonitorError, match=message.replace("(", r"\(").replace(")", r"\)")
                       if "[" not in message else message):
        feedback(cfg, str(path))
    assert not os.path.exists(os.path.join(cfg.store, cfg.name, "labels"))


def test_feedback_counts_unknown_ids_and_duplicates(served):
    cfg, tmp = served
    ids = [f"r{i}" for i in range(200)] + ["nobody-1", "nobody-2", "r5"]
    y = [i % 2 for i in range(200)] + [0, 1, 1]
    path = tmp / "labels.csv"
    pd.DataFrame({"request_id": ids, "is_fraud": y}).to_csv(path, index=False)
    res = feedback(cfg, str(path))
    assert (res["labels"], res["unknown_ids"], res["duplicates"]) == (203, 2, 1)
    v = res["versions"]["1"]
    assert v["predictions"] == 300 and v["labelled"] == 200 and v["completeness"] == pytest.approx(0.6667, abs=1e-3)
    assert v["metric"] == "auc" and 0.3 < v["value"] < 0.7


def test_labels_keyed_by_the_id_column_join_the_requests_that_carried_it(tmp_path):
    cfg = make_config("x", store=str(tmp_path / "s"))
    lg = PredictionLog(os.path.join(cfg.store, cfg.name, "predlog"), {"amount": "float", "transaction_id": "string"},
                       owner="r", spool_dir=str(tmp_path / "spool"), flush_rows=10**9, flush_s=3600.0)
    for i in range(100):     # requests of two rows, each carrying the data's id column
        lg.append(f"req{i}", "1", [{"amount": 1.0, "transaction_id": str(2 * i)},
                                   {"amount": 2.0, "transaction_id": str(2 * i + 1)}], [0.2, 0.7], ts=NOW + i)
    lg.flush()
    lg.close()
    path = tmp_path / "labels.csv"
    pd.DataFrame({"transaction_id": list(range(200)), "is_fraud": [i % 2 for i in range(200)]}).to_csv(path,
                                                                                                    index=False)
    res = feedback(cfg, str(path))
    assert res["key"] == "transaction_id" and res["unknown_ids"] == 0
    v = res["versions"]["1"]
    assert v["labelled"] == 200 and v["value"] == pytest.approx(1.0)   # row 1 (p=0.7) is always the positive


def test_pending_rollout_is_retried():
    from mlops_ray.lifecycle.loop import _pending_rollout
    hist = [{"action": "retrain", "version": "2", "pending_rollout": "2"}, {"action": "none"}]
    assert _pending_rollout(hist) == "2"
    assert _pending_rollout(hist + [{"action": "rollout", "version": "2", "outcome": "rollout promoted"}]) is None


def test_two_label_files_in_the_same_second_are_both_kept(served):
    """Label files were named by the second and the pid: a second call within that second overwrote
    the first one's labels."""
    cfg, tmp = served
    for i, part in enumerate((range(0, 100), range(100, 200))):
        path = tmp / f"labels-{i}.csv"
        pd.DataFrame({"request_id": [f"r{j}" for j in part], "is_fraud": [j % 2 for j in part]}).to_csv(path, index=False)
        res = feedback(cfg, str(path), now=1_800_000_000.0)
    assert res["versions"]["1"]["labelled"] == 200
    assert len(os.listdir(os.path.dirname(res["stored"]))) == 2
