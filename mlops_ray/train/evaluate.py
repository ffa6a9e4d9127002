"""Evaluation and the gate: predictions in, metrics and a promotion decision out.

In: a task (``binary`` | ``regression`` | ``multiclass``), the true labels and the
predictions of one model on the test split, aligned by position: the positive-class
probability for binary, the value for regression, an ``(n, k)`` probability matrix for
multiclass (labels ``0..k-1``). Optionally the decision threshold and a slice column.

Out:
- ``evaluate`` -> ``EvaluationReport``: overall metrics and metrics per slice value.
- ``roc_points`` / ``pr_points``: downsampled curves as JSON-able lists, for plots.
- ``decide`` -> ``GateDecision``: every absolute threshold and champion comparison, each
  with its observed value and limit; ``raise_if_rejected`` turns a rejection into one
  ``GateRejected`` listing every failure.
- ``check_gate_metrics`` / ``check_metric``: config checks run before training starts, so
  a gate or tune metric the task cannot produce fails in seconds, not after tuning.

Pure numpy/pandas/scikit-learn: no Ray, MLflow or xgboost. Callers compute predictions,
store reports and act on decisions.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from mlops_ray.config import GateConfig
from mlops_ray.errors import ConfigError, GateRejected, did_you_mean

# --------------------------------------------------------------------------- metric names
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "pr_auc", "logloss", "accuracy", "precision", "recall", "f1", "ece",
               "positive_rate", "n"),
    "regression": ("rmse", "mae", "r2", "n"),
    # f1 is macro-averaged; auc is macro one-vs-rest.
    "multiclass": ("auc", "logloss", "accuracy", "f1", "n"),
}

METRIC_DIRECTION: dict[str, str] = {
    "auc": "max", "pr_auc": "max", "accuracy": "max", "precision": "max", "recall": "max",
    "f1": "max", "r2": "max",
    "logloss": "min", "ece": "min", "rmse": "min", "mae": "min",
}

# Produced, and usable as gate.min / gate.max bounds (a floor on test rows, a ceiling on the
# share flagged positive), but neither larger nor smaller means a better model: they cannot
# be tuned on or compared with a champion.
DESCRIPTIVE = ("positive_rate", "n")

# The values a metric can take; a gate bound outside them can never be met.
_UNIT = ("auc", "pr_auc", "accuracy", "precision", "recall", "f1", "ece", "positive_rate")
_RANGE: dict[str, tuple[float, float]] = {
    **{m: (0.0, 1.0) for m in _UNIT}, "r2": (-math.inf, 1.0),
    "logloss": (0.0, math.inf), "rmse": (0.0, math.inf), "mae": (0.0, math.inf), "n": (0.0, math.inf),
}

SKIPPED = "_skipped"     # key of the slices too small to score, {value: rows}
ECE_BINS = 10
_TOL = 1e-9              # differences of metrics are compared with this slack (float rounding)


def task_metrics(task: str) -> tuple[str, ...]:
    """The metric names ``metrics_for(task, ...)`` returns."""
    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}; model.task must be one of {', '.join(TASK_METRICS)}")
    return TASK_METRICS[task]


def metric_direction(name: str) -> str:
    """'max' if larger is better, 'min' if smaller is better."""
    if name in METRIC_DIRECTION:
        return METRIC_DIRECTION[name]
    known = ", ".join(sorted(METRIC_DIRECTION))
    if name in DESCRIPTIVE:
        raise ValueError(f"metric {name!r} describes the test data, not the model, and has no better "
                         f"direction; metrics with a direction: {known}")
    raise ValueError(f"unknown metric {name!r}{did_you_mean(name, METRIC_DIRECTION)}; known metrics: {known}")


# --------------------------------------------------------------------------- metrics
def metrics_for(task: str, y_true, y_pred, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of one set of predictions. Undefined ranking metrics (a class missing from
    ``y_true``) are NaN, not an exception."""
    task_metrics(task)
    y = _vector(y_true, "y_true")
    if task == "multiclass":
        p = np.asarray(y_pred.to_numpy() if hasattr(y_pred, "to_numpy") else y_pred, dtype=float)
        _same_length(y, p)
        return _multiclass(y, p)
    p = _vector(y_pred, "y_pred")
    _same_length(y, p)
    return _binary(y, p, threshold) if task == "binary" else _regression(y, p)


def _binary(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"binary labels must be 0/1; got {np.unique(y)[:5].tolist()}")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"binary predictions must be probabilities in [0, 1]; got {p.min():g}..{p.max():g} "
                         "(raw margins? use the model's probability output)")
    y = y.astype(int)
    hard = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "auc": float(skm.roc_auc_score(y, p)) if both else math.nan,
        "pr_auc": float(skm.average_precision_score(y, p)) if both else math.nan,
        "logloss": float(skm.log_loss(y, p, labels=[0, 1])),
        "accuracy": float(skm.accuracy_score(y, hard)),
        "precision": float(skm.precision_score(y, hard, zero_division=0)),
        "recall": float(skm.recall_score(y, hard, zero_division=0)),
        "f1": float(skm.f1_score(y, hard, zero_division=0)),
        "ece": expected_calibration_error(y, p),
        "positive_rate": float(hard.mean()),   # share predicted positive at the threshold
        "n": float(len(y)),
    }


def _regression(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    err = p - y
    return {
        "rmse": float(np.sqrt(np.mean(err ** 2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(skm.r2_score(y, p)) if len(y) > 1 else math.nan,
        "n": float(len(y)),
    }


def _multiclass(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"multiclass predictions must be an (n, k) probability matrix; got shape {p.shape}")
    k = p.shape[1]
    if not np.isin(y, np.arange(k)).all():
        raise ValueError(f"multiclass labels must be integers 0..{k - 1} (one per probability column); "
                         f"got {np.unique(y)[:5].tolist()}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("multiclass predictions must be finite, non-negative probabilities")
    # float32 softmax rows sum to 1 only within ~1e-6; sklearn insists on rows that sum to 1.
    p = p / p.sum(axis=1, keepdims=True)
    y = y.astype(int)
    labels = np.arange(k)
    if len(np.unique(y)) == k:
        auc = skm.roc_auc_score(y, p[:, 1]) if k == 2 else skm.roc_auc_score(
            y, p, multi_class="ovr", average="macro", labels=labels)
    else:
        auc = math.nan
    hard = p.argmax(axis=1)
    return {
        "auc": float(auc),
        "logloss": float(skm.log_loss(y, p, labels=labels)),
        "accuracy": float(skm.accuracy_score(y, hard)),
        "f1": float(skm.f1_score(y, hard, average="macro", zero_division=0)),
        "n": float(len(y)),
    }


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |observed rate - mean probability| over equal-width bins, weighted by bin counts."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    observed = np.bincount(idx, weights=y, minlength=bins)
    predicted = np.bincount(idx, weights=p, minlength=bins)
    # sum_b (n_b / n) * |observed_b / n_b - predicted_b / n_b| == sum_b |observed_b - predicted_b| / n
    return float(np.abs(observed - predicted).sum() / len(p))


def _slice_keys(slices) -> np.ndarray:
    """A slice column as the keys of per-slice reports: ``str(value)``, missing values ``"<null>"``."""
    s = pd.Series(np.asarray(slices, dtype=object))
    return s.where(s.notna(), "<null>").map(str).to_numpy()


def slice_metrics(task: str, y_true, y_pred, slices, threshold: float = 0.5,
                  min_rows: int = 50) -> dict[str, dict]:
    """Metrics per slice value (keys are ``str(value)``, missing values ``"<null>"``).
    Slices with fewer than ``min_rows`` rows are not scored; ``result["_skipped"]`` maps
    them to their row counts."""
    y = _vector(y_true, "y_true")
    p = np.asarray(y_pred.to_numpy() if hasattr(y_pred, "to_numpy") else y_pred)
    keys = _slice_keys(slices)
    _same_length(y, p)
    if len(keys) != len(y):
        raise ValueError(f"slices has {len(keys)} rows but y_true has {len(y)}; pass the slice column of the test rows")
    values, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    out: dict[str, dict] = {}
    skipped: dict[str, int] = {}
    for i, (value, count) in enumerate(zip(values.tolist(), counts.tolist())):
        if count < min_rows:
            skipped[value] = count
            continue
        rows = inverse == i
        out[value] = metrics_for(task, y[rows], p[rows], threshold)
    out[SKIPPED] = skipped
    return out


@dataclass
class EvaluationReport:
    task: str
    metrics: dict[str, float]
    slices: dict[str, dict] = field(default_factory=dict)
    threshold: float = 0.5
    n_test: int = 0
    slice_column: str | None = None
    threshold_choice: dict | None = None     # how the threshold was chosen (choose_threshold's answer)
    leaks: list = field(default_factory=list)  # leak_suspects on the validation split
    slice_noise: dict = field(default_factory=dict)   # slice -> bootstrap sd of (champion - candidate)
    confusion: dict | None = None            # multiclass: {"classes", "matrix"}: rows true, columns predicted

    def to_dict(self) -> dict:
        """JSON-able: NaN metrics become None."""
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluationReport":
        """Inverse of ``to_dict`` (None metrics back to NaN), e.g. for a champion's stored report."""
        slices = {k: (dict(v) if k == SKIPPED else _nan_back(v)) for k, v in d.get("slices", {}).items()}
        return cls(task=d["task"], metrics=_nan_back(d["metrics"]), slices=slices,
                   threshold=d.get("threshold", 0.5), n_test=d.get("n_test", 0),
                   slice_column=d.get("slice_column"), threshold_choice=d.get("threshold_choice"),
                   leaks=d.get("leaks") or [], slice_noise=d.get("slice_noise") or {},
                   confusion=d.get("confusion"))


def evaluate(task: str, y_true, y_pred, threshold: float = 0.5, slices=None,
             min_slice_rows: int = 50, classes: list[str] | None = None) -> EvaluationReport:
    """The report of one model on the test split; ``slices`` is the slice column's values;
    ``classes`` names a multiclass model's classes (code k is classes[k]) in its confusion matrix."""
    metrics = metrics_for(task, y_true, y_pred, threshold)
    by_slice = {} if slices is None else slice_metrics(task, y_true, y_pred, slices, threshold, min_slice_rows)
    name = getattr(slices, "name", None)
    return EvaluationReport(task=task, metrics=metrics, slices=by_slice, threshold=float(threshold),
                            n_test=int(metrics["n"]), slice_column=None if name is None else str(name),
                            confusion=confusion(y_true, y_pred, classes) if task == "multiclass" else None)


def confusion(y_true, y_pred, classes: list[str] | None = None) -> dict:
    """A multiclass confusion matrix: ``matrix[i][j]`` test rows of true class i predicted as j
    (the most probable class), with the classes' names."""
    p = np.asarray(y_pred, dtype=float)
    k = p.shape[1]
    names = [str(c) for c in classes] if classes and len(classes) == k else [str(i) for i in range(k)]
    m = skm.confusion_matrix(_vector(y_true, "y_true").astype(int), p.argmax(axis=1), labels=np.arange(k))
    return {"classes": names, "matrix": m.tolist()}


# --------------------------------------------------------------------------- decision threshold
MIN_PREDICTED = 10


def threshold_rule(rule) -> tuple[str, Any]:
    """(name, spec) of a ``model.threshold`` rule: the name shown (``max_f1``, ``min_precision 0.9``,
    ``top_rate 0.02``, ``fixed``) and the rule as the config writes it, JSON-able (``"max_f1"``,
    ``{"min_precision": 0.9}``, ``0.5``), so that a version's own rule can be applied again later."""
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return "fixed", float(rule)
    if rule in ("auto", "max_f1"):
        return "max_f1", "max_f1"
    items = rule.items() if isinstance(rule, dict) else \
        ((k, getattr(rule, k, None)) for k in ("min_precision", "min_recall", "top_rate"))
    (key, value), = [(k, v) for k, v in items if v is not None]
    return f"{key} {value:g}", {key: float(value)}


def choose_threshold(y_valid, p_valid, rule, where: str = "the validation split") -> dict:
    """The decision threshold ``rule`` (``model.threshold``) picks on predictions with labels (by default
    the validation split's): ``{"value", "rule", "spec", "valid": {precision, recall, f1, n, positive_rate}}``.
    A fixed number is kept as it is; ``top_rate`` is the ``1 - top_rate`` quantile of the scores (labels
    are not needed for it). A target no threshold meets is a ConfigError naming the best reachable."""
    name, spec = threshold_rule(rule)
    if name == "fixed":
        return {"value": spec, "rule": "fixed", "spec": spec}
    y = np.asarray(y_valid if y_valid is not None else [], dtype=float).astype(int)
    p = np.asarray(p_valid if p_valid is not None else [], dtype=float)
    if isinstance(spec, dict) and "top_rate" in spec:
        if len(p) == 0:
            return {"value": 0.5, "rule": f"{name}: {where} has no rows, 0.5 kept", "spec": spec}
        t = float(np.quantile(p, 1 - spec["top_rate"], method="higher"))
        return {"value": t, "rule": name, "spec": spec, "valid": metrics_at(y, p, t) if len(y) == len(p) else
                {"n": int(len(p)), "flagged": float(np.mean(p >= t))}}
    if len(y) == 0 or len(np.unique(y)) < 2:
        return {"value": 0.5, "rule": f"{name}: {where} has {'no rows' if len(y) == 0 else 'one class'}, "
                                      "0.5 kept", "spec": spec}
    target = (spec.get("min_precision"), spec.get("min_recall")) if isinstance(spec, dict) else (None, None)
    prec, rec, thr = skm.precision_recall_curve(y, p)
    prec, rec = prec[:-1], rec[:-1]          # the last point (recall 0) has no threshold
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-300), 0.0)
    if target == (None, None):
        i = int(np.argmax(f1))
    elif target[0] is not None:
        # a precision counts only over at least MIN_PREDICTED positive predictions: the top row or
        # two alone reach any precision by chance
        predicted = len(p) - np.searchsorted(np.sort(p), thr, side="left")       # rows with p >= t
        support = predicted >= min(MIN_PREDICTED, int(y.sum()))
        ok = np.flatnonzero((prec >= target[0]) & support)
        if not len(ok):
            cand = np.flatnonzero(support)
            b = int(cand[np.argmax(prec[cand])]) if len(cand) else int(np.argmax(prec))
            raise ConfigError(f"model.threshold: no threshold reaches precision {target[0]:g} on {where} "
                              f"(over at least {MIN_PREDICTED} rows predicted positive); the best "
                              f"reachable is {prec[b]:.3f} (threshold {thr[b]:.4f}, recall {rec[b]:.3f}). "
                              "Lower min_precision or use max_f1")
        i = int(ok[np.argmax(rec[ok])])
    else:
        ok = np.flatnonzero(rec >= target[1])
        i = int(ok[np.argmax(prec[ok])])      # recall 1 at the lowest threshold: always reachable
    return {"value": float(thr[i]), "rule": name, "spec": spec,
            "valid": {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "n": int(len(y)),
                      "positive_rate": float(y.mean())}}


def metrics_at(y: np.ndarray, p: np.ndarray, t: float) -> dict:
    """Precision, recall, F1, rows, positive rate and the share flagged of labelled scores at threshold ``t``."""
    hard = p >= t
    both = len(y) > 0
    return {"precision": float(skm.precision_score(y, hard, zero_division=0)) if both else math.nan,
            "recall": float(skm.recall_score(y, hard, zero_division=0)) if both else math.nan,
            "f1": float(skm.f1_score(y, hard, zero_division=0)) if both else math.nan,
            "n": int(len(y)), "positive_rate": float(y.mean()) if both else math.nan,
            "flagged": float(hard.mean()) if both else math.nan}


# --------------------------------------------------------------------------- slice noise
def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged), NaN with one class: sklearn's answer, fast on small arrays."""
    pos = y == 1
    n1 = int(pos.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(p.size)
    sp = p[order]
    # average ranks over ties
    edges = np.flatnonzero(np.diff(sp)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [sp.size]])
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def slice_noise(task: str, metric: str, y, p_candidate, p_champion, slices, thresholds: tuple[float, float],
                keys: list[str], draws: int = 200, seed: int = 0) -> dict[str, float]:
    """Per slice, the sampling noise of the champion-minus-candidate difference on ``metric``: the
    standard deviation over a paired bootstrap (both models scored on the same resampled rows)."""
    y = np.asarray(y, dtype=float)
    pc_, ph = np.asarray(p_candidate), np.asarray(p_champion)
    names = _slice_keys(slices)
    rng = np.random.default_rng(seed)
    out = {}
    for key in keys:
        rows = np.flatnonzero(names == key)
        if rows.size < 2:
            continue
        diffs = []
        for _ in range(draws if metric == "auc" else min(draws, 100)):
            i = rows[rng.integers(0, rows.size, rows.size)]
            if metric == "auc" and task == "binary":
                a, b = _auc(y[i], ph[i]), _auc(y[i], pc_[i])
            else:
                a = metrics_for(task, y[i], ph[i], thresholds[1]).get(metric, math.nan)
                b = metrics_for(task, y[i], pc_[i], thresholds[0]).get(metric, math.nan)
            if np.isfinite(a) and np.isfinite(b):
                diffs.append(a - b)
        if len(diffs) >= 20:
            out[key] = float(np.std(diffs, ddof=1))
    return out


# --------------------------------------------------------------------------- leaks
LEAK_SCORE = 0.99


def leak_suspects(task: str, X, y, names: list[str], types: list[str], limit: float = LEAK_SCORE) -> list[dict]:
    """Features that alone predict the label almost perfectly on these rows (validation): for a
    binary label the AUC of the value (either direction; a categorical of at most 50 codes by its
    codes' label means), for regression the rank correlation's size. Above ``limit`` a feature is
    more likely a copy of the label (or computed after it) than a signal."""
    if task not in ("binary", "regression") or X is None or len(y) < 20:
        return []
    y = np.asarray(y, dtype=float)
    out = []
    for j, (name, kind) in enumerate(zip(names, types)):
        x = np.asarray(X[:, j], dtype=float)
        ok = ~np.isnan(x)
        if ok.sum() < 20 or len(np.unique(x[ok])) < 2:
            continue
        xs, ys = x[ok], y[ok]
        if kind == "c":
            codes = np.unique(xs)
            if len(codes) > 50:
                continue
            means = {c: ys[xs == c].mean() for c in codes}
            xs = np.vectorize(means.get)(xs)
        if task == "binary":
            if len(np.unique(ys)) < 2:
                continue
            score = float(skm.roc_auc_score(ys, xs))
            score = max(score, 1 - score)
            metric = "auc"
        else:
            score = abs(float(pd.Series(xs).corr(pd.Series(ys), method="spearman")))
            metric = "spearman"
        if score >= limit:
            out.append({"feature": name, metric: round(score, 4), "rows": int(ok.sum())})
    return sorted(out, key=lambda d: -d.get("auc", d.get("spearman", 0)))


# --------------------------------------------------------------------------- curves
def roc_points(y, p, max_points: int = 200) -> dict[str, list[float]]:
    """ROC curve as ``{"fpr": [...], "tpr": [...]}``, at most ``max_points`` points; empty
    lists when ``y`` has one class."""
    y, p = _vector(y, "y"), _vector(p, "p")
    if len(np.unique(y)) < 2:
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = skm.roc_curve(y, p)
    keep = _downsample(len(fpr), max_points)
    return {"fpr": _rounded(fpr[keep]), "tpr": _rounded(tpr[keep])}


def pr_points(y, p, max_points: int = 200) -> dict[str, list[float]]:
    """Precision-recall curve as ``{"recall": [...], "precision": [...]}``, recall rising."""
    y, p = _vector(y, "y"), _vector(p, "p")
    if len(np.unique(y)) < 2:
        return {"recall": [], "precision": []}
    precision, recall, _ = skm.precision_recall_curve(y, p)
    precision, recall = precision[::-1], recall[::-1]     # sklearn lists recall falling
    keep = _downsample(len(recall), max_points)
    return {"recall": _rounded(recall[keep]), "precision": _rounded(precision[keep])}


def _downsample(n: int, max_points: int) -> np.ndarray:
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2; got {max_points}")
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))   # keeps both ends


# --------------------------------------------------------------------------- the gate
@dataclass
class GateDecision:
    passed: bool
    failures: list[str]
    checks: list[dict]          # every check, passed or not: check, metric, observed, threshold, ...
    champion_version: str | None = None

    def to_dict(self) -> dict:
        return _json_safe(asdict(self))


def champion_overlap(test_keys: np.ndarray, champion_keys: np.ndarray, rate: float) -> dict:
    """How many of the test rows the champion was trained on, from the row keys (``features.row_keys``)
    of the test rows and of the champion's training rows: exact when all of the latter were kept
    (``rate`` 1), else estimated from the test rows whose key falls in the kept range."""
    test_keys = np.asarray(test_keys, dtype=np.uint64)
    n = int(test_keys.size)
    checkable = test_keys if rate >= 1.0 else test_keys[test_keys < np.uint64(rate * 2.0 ** 64)]
    hits = int(np.isin(checkable, champion_keys).sum()) if checkable.size else 0
    rows = hits if rate >= 1.0 else int(round(hits / checkable.size * n)) if checkable.size else 0
    return {"rows": rows, "test_rows": n, "share": round(rows / n, 4) if n else 0.0, "exact": rate >= 1.0}


def _overlap_check(overlap: dict, limit: float, who: str) -> dict:
    share, rows, n = overlap["share"], overlap["rows"], overlap["test_rows"]
    about = "" if overlap.get("exact") else "about "
    check = {"check": "gate.max_champion_overlap", "metric": "overlap", "observed": share, "threshold": limit,
             "passed": share <= limit}
    check["message"] = "" if check["passed"] else (
        f"{who} was trained on {about}{rows:,} of the {n:,} test rows it is judged on ({share:.0%}; "
        f"gate.max_champion_overlap {limit:g}): the comparison would favour it. The split keeps a row where "
        f"it was only by its key: set data.id_column (or data.split.key_columns) so rows keep their split "
        f"when columns change, or set gate.max_champion_overlap: 1 to compare anyway")
    return check


def decide(candidate: EvaluationReport, champion: EvaluationReport | None, gate: GateConfig,
           metric: str, champion_version: str | None = None, overlap: dict | None = None) -> GateDecision:
    """Apply the gate. Absolute bounds always; with a champion (evaluated on the same test
    set) also: beat it on ``metric`` by ``gate.min_delta``, and let no shared slice regress
    on ``metric`` by more than ``gate.max_slice_regression``; and (``overlap``, from
    ``champion_overlap``) the champion must not have been trained on more than
    ``gate.max_champion_overlap`` of those test rows. Every check is run."""
    checks = [_absolute_check(bound, name, limit, candidate.metrics)
              for bound, limits in (("min", gate.min), ("max", gate.max))
              for name, limit in limits.items()]
    if champion is not None:
        try:
            direction = metric_direction(metric)
        except ValueError as e:
            raise ConfigError(f"cannot compare with the champion on {metric!r}: {e}") from None
        who = _champion_name(champion_version)
        checks.append(_champion_check(metric, direction, candidate, champion, gate.min_delta, who))
        checks += _slice_checks(metric, direction, candidate, champion, gate.max_slice_regression, who,
                                gate.min_slice_rows)
        if overlap is not None:
            checks.append(_overlap_check(overlap, gate.max_champion_overlap, who))
    failures = [c["message"] for c in checks if not c["passed"]]
    return GateDecision(passed=not failures, failures=failures, checks=checks,
                        champion_version=champion_version)


def raise_if_rejected(decision: GateDecision) -> None:
    """Raise one ``GateRejected`` naming every failure (the decision goes in ``details``)."""
    if decision.passed:
        return
    n = len(decision.failures)
    lines = "\n".join(f"  - {f}" for f in decision.failures)
    raise GateRejected(f"{n} gate check{'s' if n != 1 else ''} failed:\n{lines}", details=decision.to_dict())


def _absolute_check(bound: str, name: str, limit: float, produced: dict[str, float]) -> dict:
    key = f"gate.{bound}.{name}"
    check = {"check": key, "metric": name, "threshold": float(limit), "observed": None}
    if name not in produced:
        return {**check, "passed": False, "message": f"{key}: the evaluation does not produce {name!r}; "
                f"it produced: {', '.join(produced)}"}
    obs = float(produced[name])
    check["observed"] = obs
    if math.isnan(obs):
        return {**check, "passed": False, "message": f"{name} is NaN (undefined on this test set, e.g. one "
                f"class only), so {key} {limit:g} cannot be met"}
    ok = obs >= limit if bound == "min" else obs <= limit
    op = (">=" if ok else "<") if bound == "min" else ("<=" if ok else ">")
    word = "required" if bound == "min" else "allowed"
    return {**check, "passed": ok, "message": f"{name} {_fmt(obs, limit)} {op} {word} {limit:g} ({key})"}


def _champion_check(metric: str, direction: str, candidate: EvaluationReport, champion: EvaluationReport,
                    min_delta: float, who: str) -> dict:
    cand, champ = candidate.metrics.get(metric), champion.metrics.get(metric)
    check = {"check": "champion", "metric": metric, "observed": cand, "champion": champ,
             "threshold": float(min_delta)}
    for value, whose in ((cand, "the candidate"), (champ, who)):
        if value is None or math.isnan(value):
            state = "NaN" if value is not None else "missing"
            return {**check, "passed": False, "message": f"{metric} of {whose} is {state}, so the candidate "
                    f"cannot be compared with {who}"}
    gain = cand - champ if direction == "max" else champ - cand
    ok = gain >= min_delta - _TOL
    better = "" if direction == "max" else ", lower is better"
    c, ch = _fmt(cand, champ), _fmt(champ, cand)
    message = (f"{metric} {c} beats {who} ({ch}) by {gain:+.4g}, at least min_delta {min_delta:g}" if ok
               else f"{metric} {c} does not beat {who} ({ch}) by min_delta {min_delta:g} "
                    f"(change {gain:+.4g}{better})")
    return {**check, "passed": ok, "gain": gain, "message": message}


Z_ONE_SIDED_95 = 1.645


def _slice_checks(metric: str, direction: str, candidate: EvaluationReport, champion: EvaluationReport,
                  max_regression: float, who: str, min_rows: int = 1) -> list[dict]:
    """A slice rejects when its regression exceeds ``max_regression`` by more than its noise
    (1.645 bootstrap sd of the paired difference, ``candidate.slice_noise``); a slice under
    ``min_rows`` test rows is reported, not gated."""
    checks = []
    column = candidate.slice_column or champion.slice_column
    for key in sorted((set(candidate.slices) & set(champion.slices)) - {SKIPPED}):
        label = f"{column}={key}" if column else repr(key)
        cand, champ = candidate.slices[key].get(metric), champion.slices[key].get(metric)
        n = int(candidate.slices[key].get("n") or 0)
        check = {"check": "slice", "slice": key, "metric": metric, "observed": cand, "champion": champ,
                 "threshold": float(max_regression), "rows": n}
        if cand is None or champ is None or math.isnan(cand) or math.isnan(champ):
            # e.g. a slice with one class only: auc is undefined for both models alike
            checks.append({**check, "passed": True, "skipped": True,
                           "message": f"slice {label}: {metric} not comparable (missing or NaN), skipped"})
            continue
        drop = champ - cand if direction == "max" else cand - champ
        c, ch = _fmt(cand, champ), _fmt(champ, cand)
        if n < min_rows:
            checks.append({**check, "passed": True, "skipped": True, "regression": drop,
                           "message": f"slice {label}: {metric} {c} vs {who} {ch} on {n} test rows, fewer than "
                                      f"gate.min_slice_rows {min_rows}: reported, not gated"})
            continue
        noise = candidate.slice_noise.get(key)
        margin = Z_ONE_SIDED_95 * noise if noise is not None else 0.0
        ok = drop <= max_regression + margin + _TOL
        within = f"max_slice_regression {max_regression:g}" + (f" + noise {margin:.3g}" if noise is not None else "")
        message = (f"slice {label}: {metric} {c} vs {who} {ch}, regression {max(drop, 0):.4g} within {within}"
                   if ok else f"slice {label}: {metric} {c} vs {who} {ch} regresses by {drop:.4g}, more than "
                              f"{within} (on {n} test rows)")
        checks.append({**check, "passed": ok, "regression": drop, "noise": noise, "message": message})
    return checks


# --------------------------------------------------------------------------- config checks
def check_gate_metrics(gate: GateConfig, task: str) -> None:
    """Raise ConfigError, before any training, when a gate bound names a metric the task does
    not produce, can never be met, or contradicts the other bound."""
    produced = task_metrics(task)
    problems = []
    for bound, limits in (("min", gate.min), ("max", gate.max)):
        for name, limit in limits.items():
            key = f"gate.{bound}.{name}"
            if name not in produced:
                problems.append(f"{key}: task {task!r} does not produce {name!r}"
                                f"{did_you_mean(name, produced)}; valid names: {', '.join(produced)}")
                continue
            lo, hi = _RANGE[name]
            if bound == "min" and limit > hi:
                problems.append(f"{key}: {limit:g} can never be met, {name} is at most {hi:g}; lower it")
            if bound == "max" and limit < lo:
                problems.append(f"{key}: {limit:g} can never be met, {name} is at least {lo:g}; raise it")
    for name in sorted(set(gate.min) & set(gate.max)):
        if gate.min[name] > gate.max[name]:
            problems.append(f"gate.min.{name} ({gate.min[name]:g}) is greater than gate.max.{name} "
                            f"({gate.max[name]:g}); no model can pass, fix one of them")
    if problems:
        n = len(problems)
        raise ConfigError(f"gate: {n} problem{'s' if n != 1 else ''}\n" + "\n".join(f"  {p}" for p in problems))


def check_metric(metric: str, mode: str, task: str) -> None:
    """Raise ConfigError when tune.metric is not a metric of the task with a direction, or
    tune.mode contradicts that direction."""
    produced = task_metrics(task)
    choices = ", ".join(f"{m} ({METRIC_DIRECTION[m]})" for m in produced if m in METRIC_DIRECTION)
    if metric not in produced or metric not in METRIC_DIRECTION:
        why = (f"{metric!r} describes the test data and has no better direction" if metric in produced
               else f"task {task!r} does not produce {metric!r}{did_you_mean(metric, produced)}")
        raise ConfigError(f"tune.metric: {why}; set tune.metric to one of {choices} "
                          "and tune.mode to the direction in brackets")
    want = METRIC_DIRECTION[metric]
    if mode != want:
        raise ConfigError(f"tune.mode is {mode!r} but {metric} is better when "
                          f"{'higher' if want == 'max' else 'lower'}; set tune.mode: {want}")


# --------------------------------------------------------------------------- helpers
def _vector(x: Any, what: str) -> np.ndarray:
    """A 1-D float array from a list, numpy array or pandas Series (nullable/Arrow dtypes too)."""
    a = x.to_numpy(dtype=float, na_value=np.nan) if hasattr(x, "to_numpy") else np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional; got shape {a.shape}")
    if len(a) == 0:
        raise ValueError(f"{what} is empty; there is nothing to evaluate")
    if np.isnan(a).any():
        raise ValueError(f"{what} has {int(np.isnan(a).sum())} NaN values; drop or fill them before evaluating")
    return a


def _same_length(y: np.ndarray, p: np.ndarray) -> None:
    if len(y) != len(p):
        raise ValueError(f"y_true has {len(y)} rows but y_pred has {len(p)}")


def _rounded(a: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in a]


def _fmt(x: float, *others: float) -> str:
    """``x`` with as few significant digits (at least 3) as tell it apart from ``others``."""
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    for digits in range(3, 12):
        s = f"{x:.{digits}g}"
        if all(s != f"{o:.{digits}g}" for o in others if o != x):
            return s
    return repr(float(x))


def _champion_name(version: str | None) -> str:
    if version is None:
        return "the champion"
    version = str(version)
    return f"champion v{version}" if version.isdigit() else f"champion {version}"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _nan_back(metrics: dict) -> dict[str, float]:
    return {k: math.nan if v is None else float(v) for k, v in metrics.items()}
