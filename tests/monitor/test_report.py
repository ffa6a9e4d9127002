"""The HTML report: self-contained (inline PNGs, no external URLs), escaped, tolerant of gaps."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from mlops_ray.monitor.report import render_report, write_report

pytestmark = [pytest.mark.unit]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = '<script>alert("x")</script>'


def _feature(name, kind, verdict, value, threshold, labels, ref, win, **extra):
    """One entry shaped like monitor/drift.py's (calibrated rule unless ``extra`` says otherwise)."""
    tests = ({"psi": 0.31, "ks": {"d": 0.21, "p_value": 0.002}, "wasserstein": value} if kind == "numeric"
             else {"chi2": {"statistic": 88.1, "p_value": 0.0001, "dof": 3}, "js": value, "tv": 0.2})
    return {"name": name, "kind": kind, "rows": 5000, "statistic": "wasserstein" if kind == "numeric" else "js",
            "value": value, "threshold": threshold, "p_value": 0.001 if verdict == "drift" else 0.4,
            "effect": value, "min_effect": 0.05, "verdict": verdict, "tests": tests,
            "reference_hist": {"labels": labels, "shares": ref}, "window_hist": {"labels": labels, "shares": win},
            "quality": {"nulls": 12, "null_rate": 0.0024, "reference_null_rate": 0.002, "out_of_range": 3,
                        "unseen": 0, "unseen_values": [], "flags": ["3 values outside the schema's min/max"]},
            **extra}


def make_ctx() -> dict:
    """A realistic context with every section; user strings carry HTML to be escaped."""
    rng = np.random.default_rng(0)
    t0 = 1_760_000_000.0
    bins = ["≤10", "10–50", "50–200", ">200"]
    features = [_feature("amount", "numeric", "drift", 0.42, 0.1, bins, [0.25] * 4, [0.1, 0.2, 0.3, 0.4]),
                _feature("merchant" + EVIL, "categorical", "drift", 0.2, 0.05, ["food", "travel", EVIL, "__other__"],
                         [0.4, 0.3, 0.2, 0.1], [0.2, 0.5, 0.2, 0.1]),
                _feature("hour", "numeric", "ok", 0.01, 0.1, bins, [0.25] * 4, [0.26, 0.24, 0.25, 0.25]),
                _feature("country", "categorical", "insufficient", None, None, ["FR", "DE"], [0.5, 0.5], [1.0, 0.0],
                         p_value=None, effect=None, tests={},
                         note="insufficient data: 12 non-null rows in the window (monitor.min_rows 100)"),
                # a fixed chi-square rule: the threshold bounds the p-value, not the statistic
                _feature("device", "categorical", "ok", 3.2, 0.01, ["ios", "android"], [0.5, 0.5], [0.52, 0.48],
                         statistic="chi2", p_value=0.2)]
    trials = [{"trial_id": f"t{i}", "config": {"max_depth": int(d)}, "auc": float(a), "best_iteration": 10,
               "rounds": 50, "iterations": 5, "stopped_early": bool(i % 2), "error": None}
              for i, (d, a) in enumerate(zip(rng.integers(2, 9, 12), rng.uniform(0.8, 0.95, 12)))]
    trials.append({"trial_id": "t12", "config": {}, "auc": None, "error": "OOM"})
    stats = lambda req, err, p99: {"requests": req, "errors": err, "error_rate": err / req, "p50_ms": 3.0,  # noqa: E731
                                   "p99_ms": p99}
    history = [{"t": t0 - 7 * 86400, "event": "deployed", "version": "3"},     # a week before the rollouts
               {"t": t0 + 100, "event": "canary", "version": "4", "weight": 5.0},
               {"t": t0 + 160, "event": "step", "version": "4", "weight": 25.0,
                "metrics": {"elapsed_s": 60, "stable": stats(1900, 2, 12.0), "canary": stats(100, 0, 13.0),
                            "error_rate_delta": -0.001, "prediction_psi": 0.01}},
               {"t": t0 + 220, "event": "step", "version": "4", "weight": 50.0,
                "metrics": {"elapsed_s": 60, "stable": stats(1500, 1, 12.5), "canary": stats(500, 2, 14.0)}},
               {"t": t0 + 280, "event": "promoted", "version": "4", "previous": "3", "reason": "passed 3 steps"},
               {"t": t0 + 400, "event": "canary", "version": "5", "weight": 5.0},
               {"t": t0 + 430, "event": "rolled_back", "version": "5", "reason": "error rate 9% " + EVIL}]
    return {
        "pipeline": "fraud " + EVIL, "generated": "2025-10-09T12:00:00+00:00",
        "model": {"name": "fraud", "version": "4", "aliases": ["champion", EVIL], "run_id": "abc123",
                  "task": "binary", "metrics": {"auc": 0.91, "logloss": 0.21, "n": 2000.0},
                  "gate": {"passed": False, "failures": ["auc 0.91 < required 0.95 (gate.min.auc)"],
                           "checks": [{"check": "gate.min.auc", "metric": "auc", "threshold": 0.95, "observed": 0.91,
                                       "passed": False, "message": "auc 0.91 < required 0.95 (gate.min.auc)"}],
                           "champion_version": "3"}},
        "validation": {"passed": False, "rows": 10_000, "n_checks": 3, "n_failed": 1,
                       "source": {"path": "https://example.com/data.parquet"},
                       "checks": [{"column": "amount", "rule": "range", "passed": False, "observed": 4, "threshold": 0,
                                   "message": "4 rows out of range " + EVIL, "samples": [{"amount": -1}]},
                                  {"column": "id", "rule": "unique", "passed": True, "observed": 0, "threshold": 0,
                                   "message": "", "samples": []},
                                  {"column": "is_fraud", "rule": "required", "passed": True, "observed": "present",
                                   "threshold": "present", "message": "", "samples": []}]},
        "tuning": {"metric": "auc", "mode": "max", "best_config": {"max_depth": 6, "eta": 0.1, "note": EVIL},
                   "best_score": 0.93, "best_iteration": 41, "n_trials": len(trials), "seconds": 12.3,
                   "strategy": "single", "restored": False, "trials": trials},
        "importance": {"amount": 120.0, "hour": 40.5, "merchant": 33.0, "country": 2.0},
        "curves": {"roc": {"fpr": [0, 0.1, 0.3, 1], "tpr": [0, 0.6, 0.9, 1]},
                   "pr": {"recall": [0, 0.5, 1], "precision": [1, 0.8, 0.3]}},
        "drift": {"window": {"source": "predlog", "path": "/store/fraud/predlog", "since": "2025-10-08T00:00:00Z",
                             "until": None, "rows": 5000},
                  "reference": {"rows": 40_000, "version": "4"}, "alpha": 0.01, "alpha_per_test": 0.002,
                  "method": "calibrated", "drift": True, "drift_share": 0.5,
                  "drifted": ["amount", "merchant" + EVIL], "features": features,
                  "prediction": _feature("prediction", "numeric", "ok", 0.02, 0.08, bins, [0.25] * 4, [0.3, 0.2, 0.25, 0.25]),
                  "multivariate": {"auc": 0.71, "threshold": 0.6, "drifted": True,
                                   "top_features": [["amount", 0.6], ["merchant", 0.3]]}},
        "rollout": {"name": "fraud", "stable": "4", "phase": "ROLLED_BACK", "canary": None, "weight": 0.0, "step": 0,
                    "previous": "3", "reason": "error rate 9% " + EVIL, "updated": t0 + 430, "history": history},
        "decisions": [{"time": "2025-10-08T10:00:00+00:00", "trigger": False, "reasons": [], "action": "none",
                       "run_id": None, "version": None, "outcome": "skipped", "error": None},
                      {"time": "2025-10-09T10:00:00+00:00", "trigger": True, "reasons": ["drift on amount " + EVIL],
                       "action": "retrain", "run_id": "r9", "version": "5", "outcome": "rolled_back",
                       "error": "canary breached"}],
    }


@pytest.fixture(scope="module")
def page() -> str:
    return render_report(make_ctx())


def img_srcs(page: str) -> list[str]:
    return re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', page)


def decode_png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data[:8] == PNG_MAGIC
    return data


def test_full_report_images_are_inline_pngs(page):
    srcs = img_srcs(page)
    # tuning, importance, roc, pr, drift ratio, 2 drifted + prediction histograms, weight, step stats
    assert len(srcs) == 10 == page.count("<img")
    import matplotlib.image as mpimg
    for src in srcs:
        pixels = mpimg.imread(io.BytesIO(decode_png(src)), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
        assert pixels.std() > 0.01                       # something is drawn


def test_no_external_references(page):
    attrs = re.findall(r'\b(?:src|href|action|srcset)\s*=\s*"([^"]*)"', page, flags=re.I)
    assert attrs
    for a in attrs:
        assert "http:" not in a.lower() and "https:" not in a.lower() and not a.startswith("//"), a[:80]
        assert a.startswith(("data:image/png;base64,", "#")), a[:80]
    assert "<link" not in page.lower() and not re.search(r"<script\b", page, flags=re.I)
    assert "url(" not in page and "@import" not in page
    # a URL in user data stays as escaped text
    assert "https://example.com/data.parquet" in page


def test_user_strings_are_escaped(page):
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "fraud &lt;script&gt;" in page.split("</title>")[0]   # in the title, too


def test_drifted_features_with_verdicts(page):
    drift = page.split('<section id="drift">')[1].split("</section>")[0]
    for name, verdict in (("amount", "drift"), ("merchant&lt;script&gt;", "drift"), ("hour", "ok"),
                          ("country", "insufficient"), ("device", "ok"), ("prediction", "ok")):
        row = re.search(rf"<tr><td>{re.escape(name)}.*?</tr>", drift)
        assert row, name
        assert f">{verdict}</span>" in row.group(0), (name, row.group(0))
    assert "2 drifted" in drift and "AUC" in drift
    assert "insufficient data: 12 non-null rows" in drift and "values outside the schema&#x27;s min/max" in drift


def test_threshold_ratio_follows_the_rule():
    from mlops_ray.monitor.report import _ratio
    assert _ratio({"statistic": "wasserstein", "value": 0.3, "threshold": 0.1, "p_value": 0.001}) == pytest.approx(3)
    # fixed chi2/ks rules bound the p-value: p == threshold is 1, smaller p is further past it
    assert _ratio({"statistic": "chi2", "value": 88.0, "threshold": 0.01, "p_value": 0.01}) == pytest.approx(1)
    assert _ratio({"statistic": "ks", "value": 0.2, "threshold": 0.05, "p_value": 0.0025}) == pytest.approx(2)
    assert _ratio({"statistic": "chi2", "value": 3.0, "threshold": 0.01, "p_value": 0.0}) > 10
    for bad in ({"statistic": "js", "value": None, "threshold": None}, {"value": float("nan"), "threshold": 1},
                {"value": 1.0, "threshold": 0.0}, {"statistic": "ks", "value": 0.1, "threshold": 0.05, "p_value": None}):
        assert _ratio(bad) is None


def test_sections_present_and_ordered(page):
    ids = re.findall(r'<section id="(\w+)">', page)
    assert ids == ["model", "validation", "tuning", "importance", "curves", "drift", "rollout", "decisions"]
    assert "not available" not in page
    assert "could not be rendered" not in page
    assert "4 rows out of range" in page and "gate.min.auc" in page and "max_depth" in page
    decisions = page.split('<section id="decisions">')[1]
    assert decisions.index("2025-10-09") < decisions.index("2025-10-08")   # newest first
    rollout = page.split('<section id="rollout">')[1].split("</section>")[0]
    for event in ("deployed", "canary", "step", "promoted", "rolled_back"):
        assert re.search(rf"<td>(<span[^>]*>)?{event}(</span>)?</td>", rollout), event


def test_missing_sections_say_not_available():
    ctx = {"pipeline": "p", "generated": "2025-01-01T00:00:00Z", "model": None, "validation": None,
           "tuning": None, "importance": None, "curves": None, "drift": None, "rollout": None, "decisions": None}
    page = render_report(ctx)
    assert page.count("not available") == 8 and "<img" not in page
    page = render_report({})                                  # keys absent altogether
    assert page.count("not available") == 8 and page.startswith("<!DOCTYPE html>")


def test_partial_and_sparse_inputs_do_not_raise():
    ctx = make_ctx()
    ctx.update(tuning=None, importance=None, validation=None,
               curves={"roc": {"fpr": [], "tpr": []}, "pr": {"recall": [], "precision": []}},   # one class
               rollout={"stable": "1", "phase": "CANARY", "history": [
                   {"event": "deployed"}, {"t": 5.0}, "junk", {"time": "2025-10-09T10:00:00Z", "phase": "canary",
                                                               "weight": 10, "metrics": {"canary": {"p99_ms": 3}}}]},
               decisions=[{"time": "not a time"}, {}],
               model={"name": "m", "version": "1"})
    ctx["drift"].update(prediction=None, multivariate=None)
    ctx["drift"]["features"][0].update(value=float("nan"), quality=None, tests=None, reference_hist=None)
    page = render_report(ctx)
    assert "could not be rendered" not in page
    assert page.count("not available") >= 4
    for src in img_srcs(page):
        decode_png(src)


def test_a_broken_section_is_reported_not_raised():
    ctx = {"drift": {"features": "not a list of dicts"}, "rollout": {"stable": "1", "phase": "STABLE"}}
    page = render_report(ctx)
    assert "Drift could not be rendered" in page and '<section id="rollout">' in page


def test_figures_are_closed(page):
    import matplotlib.pyplot as plt
    assert "<img" in page and plt.get_fignums() == []     # every figure rendered so far was closed


def test_write_report(tmp_path):
    ctx = {**make_ctx(), "tuning": None, "importance": None, "curves": None, "drift": None, "rollout": None}
    path = write_report(ctx, str(tmp_path / "sub" / "report.html"))
    text = open(path, encoding="utf-8").read()
    assert text == render_report(ctx) and text.endswith("</html>")


# --------------------------------------------------------------------------- what a newcomer saw
def test_a_count_stored_as_a_float_prints_as_an_integer():
    ctx = make_ctx()
    ctx["model"]["metrics"] = {"auc": 0.9123456, "n": 10000.0}
    model = render_report(ctx).split('<section id="model">')[1].split("</section>")[0]
    assert "1e+04" not in model and '<td class=num>10,000</td>' in model and "0.9123" in model


def test_without_a_rollout_the_canary_chart_is_left_out_and_the_report_says_why():
    ctx = make_ctx()
    ctx["rollout"] = {"name": "fraud", "stable": "1", "phase": "STABLE", "weight": 0.0,
                      "history": [{"t": 1_760_000_000.0, "event": "deployed", "version": "1"}]}
    rollout = render_report(ctx).split('<section id="rollout">')[1].split("</section>")[0]
    assert "<img" not in rollout and "No canary chart: no rollout has run" in rollout
    assert re.search(r"<td>deployed</td>", rollout)           # the timeline stays
    with_rollout = render_report(make_ctx()).split('<section id="rollout">')[1].split("</section>")[0]
    assert with_rollout.count("<img") == 2


def test_every_decision_says_why_even_when_nothing_fired():
    ctx = make_ctx()
    ctx["decisions"] = [
        {"time": "2025-10-08T10:00:00+00:00", "trigger": False, "reasons": [], "blocked": None, "action": "none",
         "checked": ["drift share 3% (trigger at 30%)", "live auc: 12 labelled predictions (needs 200)"]},
        {"time": "2025-10-09T10:00:00+00:00", "trigger": False, "reasons": ["drift share 50% (trigger at 30%)"],
         "blocked": "cool-down (1h) until 2025-10-09 11:00 UTC", "action": "none", "checked": []}]
    decisions = render_report(ctx).split('<section id="decisions">')[1].split("</section>")[0]
    assert '<ul class="tight"></ul>' not in decisions
    assert "not fired: drift share 3% (trigger at 30%)" in decisions
    assert "drift share 50% (trigger at 30%)</li><li>blocked: cool-down (1h)" in decisions


def test_the_drift_section_lists_the_recent_windows_newest_first_with_their_source():
    """Only the newest window was shown, not the ones `monitor --data` wrote."""
    ctx = make_ctx()
    ctx["drift_windows"] = [
        {"created": "2025-10-09T12:00:00+00:00", "source": "predlog", "path": "/store/fraud/predlog",
         "since": "2025-10-08T00:00:00Z", "until": None, "rows": 5000, "version": "4", "drift": True,
         "drift_share": 0.5, "drifted": ["amount"], "auc": 0.71},
        {"created": "2025-10-09T11:00:00+00:00", "source": "data", "path": "/data/october.parquet", "rows": 2000,
         "version": "4", "drift": False, "drift_share": 0.0, "drifted": [], "auc": 0.51}]
    drift = render_report(ctx).split('<section id="drift">')[1].split("</section>")[0]
    table = drift.split("Recent windows")[1]
    assert table.index("2025-10-09T12:00") < table.index("2025-10-09T11:00")
    assert "<td>data</td><td>/data/october.parquet</td>" in table and "<td>predlog</td>" in table


def test_the_report_context_reads_the_recent_drift_reports_newest_first(tmp_path):
    from mlops_ray.lifecycle.reports import drift_windows
    from mlops_ray.storage.store import Store
    from tests.support.configs import make_config
    cfg = make_config("x", store=str(tmp_path))
    store = Store(cfg.store)
    for stamp, source, path in (("20251009T110000000000Z", "data", "/data/october.parquet"),
                                ("20251009T120000000000Z", "predlog", "/store/predlog"),
                                ("20251008T100000000000Z", "predlog", "/store/predlog")):
        store.write_json(store.path(cfg.name, "monitor", "reports", f"{stamp}.json"),
                         {"created": stamp, "version": "4", "drift": source == "data", "drift_share": 0.1,
                          "drifted": [], "window": {"source": source, "path": path, "rows": 100}})
    got = drift_windows(cfg, limit=2)
    assert [(w["created"], w["source"], w["path"]) for w in got] == [
        ("20251009T120000000000Z", "predlog", "/store/predlog"), ("20251009T110000000000Z", "data", "/data/october.parquet")]
    assert drift_windows(make_config("x", store=str(tmp_path / "empty"))) == []


def test_the_threshold_history_is_shown_newest_first_once_it_was_rechosen():
    from mlops_ray.monitor import thresholds as th
    meta = {"task": "binary", "threshold": {"value": 0.8, "rule": "max_f1", "spec": "max_f1",
                                            "valid": {"n": 900, "positive_rate": 0.14}}}
    first = th.registered(meta)
    later = {**first, "value": 0.3123, "source": "feedback", "time": "2026-05-28T20:27:40+00:00", "rows": 600,
             "positive_rate": 0.27, "metrics": {"recall": 0.61}}
    kept = {**later, "kept": True, "reason": "40 labelled predictions, fewer than monitor.min_rows (100)",
            "time": "2026-05-29T08:00:00+00:00", "rows": 40}
    ctx = make_ctx()
    assert "Decision threshold:" not in render_report({**ctx, "model": {**ctx["model"], "threshold_history": [first]}})
    page = render_report({**ctx, "model": {**ctx["model"], "threshold_history": [first, later, kept]}})
    assert "Decision threshold: 0.3123 now" in page
    body = page.split("Decision threshold: 0.3123 now", 1)[1].split("</table>", 1)[0]
    assert body.index("kept: 40 labelled predictions") < body.index("<td>re-chosen") < body.index("registration")
