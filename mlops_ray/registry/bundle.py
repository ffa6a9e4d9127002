"""The model bundle: the contract between training, serving and monitoring.

A directory with
- ``model.ubj``      XGBoost's own binary format (no pickle: loading never runs code)
- ``features.json``  the fitted FeatureSpec (how raw rows become model input)
- ``schema.json``    JSON Schema of one request row, generated from the FeatureSpec
- ``reference.json`` the training profile for drift (quantile bins, category frequencies,
                     prediction distribution)
- ``metadata.json``  lineage: fingerprints, config hash, git commit, versions, seeds,
                     tuning summary, evaluation metrics, gate decision

In: a fitted booster, its FeatureSpec, the reference profile and metadata (``write_bundle``),
or a bundle directory (``load_bundle``, ``load_spec``). Out: the directory, or a ``Bundle``
that turns raw rows into predictions (``predict``; ``predict_features`` and ``dmatrix`` for
model input). Plain file IO; ``client.py`` moves bundles in and out of MLflow.

xgboost is imported inside ``dmatrix`` and ``load_bundle``: importing it costs about 1.4 s, and
the registry client imports this module for commands that never load a booster (status, aliases).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlops_ray.data.features import FeatureSpec, transform
from mlops_ray.errors import RegistryError
# Imported where used, for their import cost (python -X importtime): xgboost 1.4 s.

FILES = ("model.ubj", "features.json", "schema.json", "reference.json", "metadata.json")
_JSON_TYPES = {"int": ["integer", "null"], "float": ["number", "null"], "bool": ["boolean", "integer", "null"],
               "string": ["string", "number", "null"], "datetime": ["string", "null"]}


def request_schema(spec: FeatureSpec) -> dict:
    """JSON Schema of one request row: every raw input column, all optional (missing is allowed)."""
    props = {}
    for col, kind in spec.input_types.items():
        p: dict = {"type": _JSON_TYPES.get(kind, ["string", "number", "null"])}
        if kind == "datetime":
            p["format"] = "date-time"
        props[col] = p
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "PredictRow",
            "type": "object", "properties": props, "additionalProperties": False}


@dataclass
class Bundle:
    booster: object                     # xgboost.Booster
    spec: FeatureSpec
    metadata: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    schema: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def task(self) -> str:
        return self.metadata.get("task", "binary")

    @property
    def threshold(self) -> float:
        """The binary decision threshold chosen at training (``model.threshold``); 0.5 for bundles
        written before it was stored."""
        return float((self.metadata.get("threshold") or {}).get("value", 0.5))

    def features(self, df: pd.DataFrame) -> pd.DataFrame:
        return transform(df, self.spec)

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Raw rows -> predictions (probability of the positive class, value, or class probabilities)."""
        return predict_features(self.booster, self.features(df), self.spec)


def dmatrix(X: pd.DataFrame | np.ndarray, spec: FeatureSpec, label=None, quantile: bool = False, ref=None):
    import xgboost as xgb
    kwargs = dict(label=label, feature_names=list(spec.output_columns), feature_types=list(spec.feature_types),
                  enable_categorical=True, missing=np.nan)
    arr = X.to_numpy(dtype=np.float32) if isinstance(X, pd.DataFrame) else X
    if quantile:
        return xgb.QuantileDMatrix(arr, ref=ref, **kwargs)
    return xgb.DMatrix(arr, **kwargs)


def predict_features(booster, X: pd.DataFrame | np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Model input -> predictions. ``inplace_predict`` skips building a DMatrix; the booster keeps
    its feature types, so categorical codes are treated as categories (a test holds this equal
    to predicting through a DMatrix)."""
    arr = X.to_numpy(dtype=np.float32) if isinstance(X, pd.DataFrame) else np.asarray(X, dtype=np.float32)
    return booster.inplace_predict(arr, missing=np.nan)


def write_bundle(path: str, booster, spec: FeatureSpec, reference: dict, metadata: dict) -> str:
    os.makedirs(path, exist_ok=True)
    booster.save_model(os.path.join(path, "model.ubj"))
    _write(path, "features.json", spec.to_dict())
    _write(path, "schema.json", request_schema(spec))
    _write(path, "reference.json", reference)
    _write(path, "metadata.json", metadata)
    return path


def load_bundle(path: str) -> Bundle:
    import xgboost as xgb
    missing = [f for f in FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise RegistryError(f"model bundle at {path!r} is incomplete: missing {', '.join(missing)}; "
                            "re-register the model with `mlops-ray run`")
    booster = xgb.Booster()
    try:
        booster.load_model(os.path.join(path, "model.ubj"))
    except xgb.core.XGBoostError as e:
        raise RegistryError(f"model.ubj in {path!r} cannot be loaded ({e}); re-register the model") from None
    spec = load_spec(path)
    return Bundle(booster=booster, spec=spec, metadata=_read(path, "metadata.json"),
                  reference=_read(path, "reference.json"), schema=_read(path, "schema.json"), path=path)


def load_spec(path: str) -> FeatureSpec:
    """A bundle's FeatureSpec alone (features.json)."""
    if not os.path.isfile(os.path.join(path, "features.json")):
        raise RegistryError(f"model bundle at {path!r} is incomplete: missing features.json; "
                            "re-register the model with `mlops-ray run`")
    return FeatureSpec.from_dict(_read(path, "features.json"))


def _write(path: str, name: str, obj) -> None:
    with open(os.path.join(path, name), "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)


def _read(path: str, name: str):
    try:
        with open(os.path.join(path, name)) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise RegistryError(f"{name} in {path!r} is not valid JSON ({e}); re-register the model") from None


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
