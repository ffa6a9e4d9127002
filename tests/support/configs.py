"""Pipeline configs, Parquet files and real model bundles for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost as xgb
import yaml

from mlops_ray.registry import bundle
from mlops_ray.config import config_from_dict
from mlops_ray.data import features as feat
from mlops_ray.data.profile import profile_local
from mlops_ray.monitor.reference import build_reference
from mlops_ray.registry import Registry


def base_raw(source: str, **sections) -> dict:
    raw = {"name": "t", "data": {"source": source, "label": "is_fraud", "id_column": "transaction_id",
                                 "time_column": "event_time"}}
    for k, v in sections.items():
        if k == "data":
            raw["data"].update(v)
        else:
            raw[k] = v
    return raw


def config_file(path: Path, store: Path):
    """A pipeline YAML at ``path`` (the base config, store ``store``), its Config and its Registry:
    what CLI tests invoke and then look at."""
    raw = base_raw("unused")
    raw["store"] = str(store)
    path.write_text(yaml.safe_dump(raw))
    cfg = make_config("unused", store=str(store))
    return path, cfg, Registry(cfg.registry, cfg.store, cfg.name)


def make_config(source: str, store: str | None = None, **sections):
    raw = base_raw(source, **sections)
    if store:
        raw["store"] = store
    return config_from_dict(raw)


def write_parquet(df: pd.DataFrame, path: Path, parts: int = 1) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    n = len(df)
    step = -(-n // parts)
    for i in range(parts):
        pq.write_table(pa.Table.from_pandas(df.iloc[i * step:(i + 1) * step], preserve_index=False),
                       path / f"part-{i:03d}.parquet")
    return path


def make_bundle(df: pd.DataFrame, path: Path, rounds: int = 20, metadata: dict | None = None, **features) -> str:
    """A real model bundle (FeatureSpec fitted on ``df``, XGBoost trained on it) at ``path``."""
    cfg = make_config("x", features={"min_frequency": 2, **features})
    table = pa.Table.from_pandas(df, preserve_index=False)
    roles = feat.assign_roles(table.schema, cfg.data, cfg.features)
    parts = profile_local(table, {"f": lambda t: feat.fit_partial(t, roles, cfg.features)})["f"]
    spec = feat.fit_merge(parts, roles, cfg.data, cfg.features)
    X = feat.transform(df, spec).to_numpy(np.float32)
    d = bundle.dmatrix(X, spec, label=df["is_fraud"].to_numpy())
    bst = xgb.train({"objective": "binary:logistic", "max_depth": 4, "max_cat_to_onehot": 8, "nthread": 1}, d, rounds)
    ref = build_reference(X, spec, bst.inplace_predict(X), "binary")
    return bundle.write_bundle(str(path), bst, spec, ref, {"task": "binary", **(metadata or {})})
