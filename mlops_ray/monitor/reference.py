"""The reference profile stored in a model bundle (``reference.json``), for drift checks.

In: the model-input matrix of the training rows, the FeatureSpec and the model's
predictions on held-out rows. Out: a JSON-able dict: per numeric feature its quantile bin
edges, the share of rows per bin and the missing share; per categorical feature the share
of each category (top ``max_categories``, the rest as ``__other__``); the prediction
distribution. Drift (later issue) bins live data with the same edges and compares shares.
"""
from __future__ import annotations

import numpy as np

from mlops_ray.data.features import OOV_CODE, FeatureSpec
from mlops_ray.monitor.histograms import prediction_edges


def numeric_profile(values: np.ndarray, bins: int) -> dict:
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    missing = float(1 - finite.size / v.size) if v.size else 0.0
    if finite.size == 0:
        return {"kind": "numeric", "edges": [], "shares": [], "missing": missing, "n": int(v.size)}
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
    return {"kind": "numeric", "edges": edges.tolist(), "shares": (counts / finite.size).round(6).tolist(),
            "missing": round(missing, 6), "n": int(v.size), "mean": float(finite.mean()),
            "std": float(finite.std())}


def categorical_profile(codes: np.ndarray, vocab: list[str], max_categories: int = 100) -> dict:
    c = np.asarray(codes, dtype=np.float64)
    ok = np.isfinite(c)
    counts = np.bincount(c[ok].astype(np.int64), minlength=len(vocab) + 1)
    total = max(int(ok.sum()), 1)
    shares = {"__oov__": counts[OOV_CODE] / total}
    order = np.argsort(-counts[1:], kind="stable")[:max_categories]
    for i in order:
        shares[vocab[i]] = counts[i + 1] / total
    kept = sum(v for k, v in shares.items())
    if kept < 1 - 1e-9:
        shares["__other__"] = 1 - kept
    return {"kind": "categorical", "shares": {k: round(float(v), 6) for k, v in shares.items()},
            "missing": round(float(1 - ok.mean()) if c.size else 0.0, 6), "n": int(c.size)}


def build_reference(X: np.ndarray, spec: FeatureSpec, predictions: np.ndarray, task: str,
                    bins: int = 10, sample: int = 200_000, seed: int = 0) -> dict:
    """Profile of the training features (a seeded sample of at most ``sample`` rows) and predictions."""
    if X.shape[0] > sample:
        X = X[np.random.default_rng(seed).choice(X.shape[0], sample, replace=False)]
    vocab = {f.name: f.vocab for f in spec.categorical}
    feats = {}
    for j, (name, kind) in enumerate(zip(spec.output_columns, spec.feature_types)):
        feats[name] = categorical_profile(X[:, j], vocab[name]) if kind == "c" else numeric_profile(X[:, j], bins)
    p = np.asarray(predictions, dtype=np.float64)
    if task == "binary":
        edges = np.asarray(prediction_edges(task, None))     # the bins serving replicas count in
        counts = np.bincount(np.searchsorted(edges, p[np.isfinite(p)], side="right"), minlength=edges.size + 1)
        pred = {"kind": "numeric", "edges": edges.tolist(),
                "shares": (counts / max(counts.sum(), 1)).round(6).tolist(), "missing": 0.0, "n": int(p.size)}
    elif task == "multiclass":
        cls = np.argmax(p, axis=1) if p.ndim == 2 else p
        counts = np.bincount(cls.astype(np.int64))
        pred = {"kind": "categorical", "shares": {str(i): round(float(c / counts.sum()), 6)
                                                  for i, c in enumerate(counts)}, "missing": 0.0, "n": int(p.shape[0])}
    else:
        pred = numeric_profile(p, bins)
    return {"version": 1, "bins": bins, "rows": int(X.shape[0]), "features": feats, "prediction": pred}
