"""Thresholds that follow the base rate: top_rate, the re-choice on labelled predictions, the history."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from mlops_ray.monitor import thresholds as th
from mlops_ray.config import ThresholdSpec, config_from_dict
from mlops_ray.errors import ConfigError
from mlops_ray.monitor.labels import feedback
from mlops_ray.monitor.predlog import PredictionLog
from mlops_ray.storage.store import Store
from mlops_ray.train.evaluate import choose_threshold, metrics_for
from tests.support.configs import make_config

pytestmark = pytest.mark.unit

NOW = 1_780_000_000.0


def _scores(n, base_rate, seed=0, shift=0.0):
    """Scores of a model whose ranking holds while the positive rate moves (and, with ``shift``,
    the whole score scale moves: a calibration that no longer matches the period)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < base_rate).astype(int)
    z = rng.normal(size=n) + 1.5 * y + shift
    return 1 / (1 + np.exp(-(z - 2.5))), y


# --------------------------------------------------------------------------- top_rate
def test_top_rate_flags_that_share_of_the_scores():
    p, y = _scores(5000, 0.1)
    choice = choose_threshold(y, p, ThresholdSpec(top_rate=0.02))
    assert choice["rule"] == "top_rate 0.02" and choice["spec"] == {"top_rate": 0.02}
    assert np.mean(p >= choice["value"]) == pytest.approx(0.02, abs=0.001)
    assert np.quantile(p, 0.979) <= choice["value"] <= np.quantile(p, 0.981)
    assert choice["valid"]["n"] == 5000 and choice["valid"]["positive_rate"] == pytest.approx(y.mean())
    unlabelled = choose_threshold(None, p, {"top_rate": 0.1})          # no labels needed
    assert np.mean(p >= unlabelled["value"]) == pytest.approx(0.1, abs=0.001)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, True, "2%"])
def test_a_top_rate_outside_zero_one_is_a_config_error_saying_what_it_is(value):
    with pytest.raises(ConfigError, match=r"model\.threshold: .*top_rate is the share of traffic to flag, strictly "
                                          r"between 0 and 1, got .*; e\.g\. \{top_rate: 0\.02\} flags the 2 % of rows"):
        config_from_dict({"name": "p", "data": {"source": "x", "label": "y"}, "model": {"threshold": {"top_rate": value}}})


def test_a_top_rate_in_range_is_accepted_and_round_trips():
    cfg = config_from_dict({"name": "p", "data": {"source": "x", "label": "y"},
                            "model": {"threshold": {"top_rate": 0.02}}})
    assert cfg.model.threshold.top_rate == 0.02
    again = config_from_dict(cfg.model_dump(mode="json", by_alias=True))
    assert again.model.threshold == cfg.model.threshold


# --------------------------------------------------------------------------- the re-choice (pure)
def test_a_rechoice_on_a_period_with_more_positives_restores_recall():
    """Chosen on a 14 % positive period, applied to a 24 % one whose scores sit lower: re-chosen on
    that period's labelled rows, the same rule gives back the recall the old threshold lost."""
    p_val, y_val = _scores(4000, 0.14, seed=1)
    p_new, y_new = _scores(4000, 0.24, seed=2, shift=-1.0)
    old = choose_threshold(y_val, p_val, "auto")["value"]
    entry = th.rechoose(p_new[:2000], y_new[:2000].astype(float), "auto", old, min_rows=100, now=NOW)
    assert not entry["kept"] and entry["value"] < old and entry["source"] == "feedback"
    assert entry["rows"] == 2000 and entry["positive_rate"] == pytest.approx(y_new[:2000].mean())
    later = (slice(2000, None),)
    before = metrics_for("binary", y_new[later], p_new[later], old)
    after = metrics_for("binary", y_new[later], p_new[later], entry["value"])
    assert after["recall"] > before["recall"] + 0.2 and after["f1"] > before["f1"]


def test_fewer_labelled_rows_than_min_rows_keep_the_threshold_and_say_why():
    p, y = _scores(500, 0.3)
    y = y.astype(float)
    y[60:] = np.nan                                         # 60 labels arrived so far
    entry = th.rechoose(p, y, "auto", 0.42, min_rows=100, now=NOW)
    assert entry["kept"] and entry["value"] == 0.42 and entry["rows"] == 60
    assert entry["reason"] == ("60 labelled predictions, fewer than monitor.min_rows (100): the threshold is kept "
                               "until more labels arrive")


def test_labels_of_one_class_or_an_unreachable_target_keep_the_threshold():
    p, _ = _scores(400, 0.3)
    one = th.rechoose(p, np.zeros(400), "auto", 0.42, min_rows=100)
    assert one["kept"] and one["value"] == 0.42 and "hold one class only (0)" in one["reason"]
    rng = np.random.default_rng(0)
    hopeless = th.rechoose(rng.random(400), (rng.random(400) < 0.3).astype(float), {"min_precision": 0.99}, 0.42,
                           min_rows=100)
    assert hopeless["kept"] and hopeless["value"] == 0.42
    assert "no threshold reaches precision 0.99 on the 400 labelled predictions" in hopeless["reason"]
    fixed = th.rechoose(p, np.ones(400), 0.3, 0.3, min_rows=1)
    assert fixed["kept"] and "fixed probability" in fixed["reason"]


def test_top_rate_is_rechosen_on_every_prediction_labelled_or_not():
    p, _ = _scores(3000, 0.1, shift=0.8)
    entry = th.rechoose(p, np.full(3000, np.nan), {"top_rate": 0.05}, 0.9, min_rows=100)
    assert not entry["kept"] and entry["rows"] == 3000 and entry["positive_rate"] is None
    assert entry["metrics"]["flagged"] == pytest.approx(0.05, abs=0.001)


def test_the_rule_of_a_version_registered_before_the_spec_was_stored_is_read_from_its_name():
    assert th.spec_of({"value": 0.3, "rule": "min_precision 0.9"}) == {"min_precision": 0.9}
    assert th.spec_of({"value": 0.3, "rule": "max_f1"}) == "max_f1"
    assert th.spec_of({"value": 0.3, "rule": "fixed"}) == 0.3
    assert th.spec_of({"value": 0.5, "rule": "max_f1: validation has one class, 0.5 kept"}, "auto") == "auto"


# --------------------------------------------------------------------------- history and feedback
META = {"task": "binary", "threshold": {"value": 0.8, "rule": "max_f1", "spec": "max_f1",
                                        "valid": {"precision": 0.5, "recall": 0.4, "f1": 0.44, "n": 900,
                                                  "positive_rate": 0.14}}}


def _served(tmp_path, n=600, base_rate=0.3, seed=0):
    cfg = make_config("x", store=str(tmp_path / "s"), model={"threshold": "auto"})
    lg = PredictionLog(os.path.join(cfg.store, cfg.name, "predlog"), {"amount": "float"}, owner="r",
                       spool_dir=str(tmp_path / "spool"), flush_rows=10**9, flush_s=3600.0)
    p, y = _scores(n, base_rate, seed=seed, shift=-0.5)
    for i in range(n):
        lg.append(f"r{i}", "1", [{"amount": float(i)}], [float(p[i])], ts=NOW + i)
    lg.flush()
    lg.close()
    return cfg, p, y


def _labels(tmp_path, y, upto):
    path = tmp_path / f"labels-{upto}.csv"
    pd.DataFrame({"request_id": [f"r{i}" for i in range(upto)], "is_fraud": y[:upto]}).to_csv(path, index=False)
    return str(path)


def test_feedback_rechooses_the_threshold_and_keeps_a_history(tmp_path):
    cfg, p, y = _served(tmp_path)
    store = Store(cfg.store)
    assert th.current(store, cfg.name, "1", META) == 0.8            # the registered one, before any feedback
    feedback(cfg, _labels(tmp_path, y, 50))
    few = th.follow_base_rate(cfg, metadata_of=lambda v: META, now=NOW)["1"]
    assert few["kept"] and few["value"] == 0.8 and "50 labelled predictions, fewer than monitor.min_rows (100)" \
        in few["reason"]
    feedback(cfg, _labels(tmp_path, y, 600))
    res = th.follow_base_rate(cfg, metadata_of=lambda v: META, now=NOW + 60)["1"]
    assert not res["kept"] and res["previous"] == 0.8 and res["rows"] == 600
    assert res["value"] == pytest.approx(choose_threshold(y, p, "auto")["value"])
    assert th.current(store, cfg.name, "1", META) == res["value"]
    h = th.history(store, cfg.name, "1", META)
    assert [e["source"] for e in h] == ["validation", "feedback", "feedback"]
    assert [e["kept"] for e in h] == [False, True, False]
    assert h[0]["rows"] == 900 and h[0]["positive_rate"] == 0.14 and h[-1]["positive_rate"] == pytest.approx(y.mean())
    assert h[-1]["time"] == "2026-05-28T20:27:40+00:00"
    assert "0.8000 (max_f1; validation at registration, 900 rows, 14.0% positive)" == th.describe(h[0])


def test_feedback_since_uses_only_the_recent_predictions(tmp_path):
    cfg, p, y = _served(tmp_path)
    feedback(cfg, _labels(tmp_path, y, 600))
    res = th.follow_base_rate(cfg, since=NOW + 450, metadata_of=lambda v: META)["1"]
    assert res["rows"] == 150 and res["value"] == pytest.approx(choose_threshold(y[450:], p[450:], "auto")["value"])


def test_an_unreadable_history_leaves_the_registered_threshold(tmp_path):
    store = Store(str(tmp_path / "s"))
    path = th.history_path(store, "x", "1")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("{not json")
    assert th.current(store, "x", "1", META) == 0.8
    assert th.history(store, "x", "1", {"task": "regression"}) == []


def test_feedback_prints_the_threshold_kept_or_rechosen_and_status_shows_the_newest(tmp_path):
    """Through the CLI, with a real registered version whose bundle holds the threshold it was chosen with."""
    import json

    from typer.testing import CliRunner

    from mlops_ray.cli import app
    from mlops_ray.registry import Registry
    from mlops_ray.storage.state import ServingState, state_path, write_state
    from tests.registry.test_registry import breast_cancer, train_bundle

    cfg, p, y = _served(tmp_path)
    bundle, _, _ = train_bundle(str(tmp_path / "bundle"), breast_cancer().head(200))
    with open(os.path.join(bundle, "metadata.json"), "w") as f:
        json.dump(META, f)
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    with reg.start_run("train") as run:
        assert reg.register(run, bundle) == "1"
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())

    def cli(*args):
        res = CliRunner().invoke(app, list(args))
        assert res.exit_code == 0, res.output
        return " ".join(res.output.split())

    out = cli("feedback", str(config), "--labels", _labels(tmp_path, y, 50))
    assert ("version 1: threshold 0.8000 kept (max_f1): 50 labelled predictions, fewer than monitor.min_rows "
            "(100): the threshold is kept until more labels arrive") in out
    out = cli("feedback", str(config), "--labels", _labels(tmp_path, y, 600))
    new = choose_threshold(y, p, "auto")["value"]
    assert (f"version 1: threshold 0.8000 → {new:.4f} (max_f1 on 600 rows, {y.mean():.1%} positive); serving picks "
            "it up without a redeploy") in out
    write_state(state_path(cfg.store, cfg.name), ServingState(name=cfg.name, stable="1"))
    out = cli("status", str(config))
    assert f"threshold of v1: {new:.4f} (max_f1; feedback " in out
    assert "600 rows" in out and "registered 0.8000, 2 re-choice(s)" in out


def test_a_fixed_threshold_is_never_rechosen_nor_recorded(tmp_path):
    cfg, p, y = _served(tmp_path)
    feedback(cfg, _labels(tmp_path, y, 600))
    fixed = {"task": "binary", "threshold": {"value": 0.3, "rule": "fixed", "spec": 0.3}}
    res = th.follow_base_rate(cfg, metadata_of=lambda v: fixed)["1"]
    assert res["kept"] and res["value"] == 0.3 and "fixed probability" in res["reason"]
    assert th.history(Store(cfg.store), cfg.name, "1", fixed) == [th.registered(fixed)]
