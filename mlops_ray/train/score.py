"""Scoring raw test rows with one or more model bundles, in one Ray Data pass.

The gate compares challenger and champion on the *same* rows: the test split of the
current data, taken from the raw source (each model applies its own FeatureSpec), so a
champion fitted on different vocabularies is still judged fairly. Only labels,
predictions and the slice column come back to the driver.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from mlops_ray.registry.bundle import predict_features
from mlops_ray.config import DataConfig
from mlops_ray.data import features as feat
# Imported where used, for their import cost (python -X importtime): xgboost 1.4 s.


def _score_batch(table: pa.Table, *, data: DataConfig, cutoffs, models: dict, classes: list[str] | None,
                 slice_column: str | None, split_done: bool = False) -> dict:
    import xgboost as xgb

    test = table if split_done else table.filter(pa.array(feat.split_codes(table, data, cutoffs) == 2))
    out = {"y": feat.label_codes(test.column(data.label), classes).astype(np.float64),
           "key": feat.row_keys(test, data)}           # for the gate's champion-overlap check
    df = feat.frame(test)
    for name, (raw, spec_dict) in models.items():
        spec = feat.FeatureSpec.from_dict(spec_dict)
        bst = xgb.Booster()
        bst.load_model(bytearray(raw))
        p = predict_features(bst, feat.transform(df, spec), spec)
        out[f"p_{name}"] = p if p.ndim == 1 else p.tolist()
    if slice_column:
        out["slice"] = df[slice_column].astype(object).where(df[slice_column].notna(), None).astype(str).to_numpy()
    return out


def score_test(ds, data: DataConfig, cutoffs, models: dict, slice_column: str | None = None,
               split_done: bool = False) -> dict:
    """{"y": labels, "p_<name>": predictions per model, "slice": values} for the test rows of ``ds``
    (every row of it with ``split_done``: the raw test rows featurize kept).

    ``models`` maps a name to (booster bytes in UBJ, FeatureSpec dict); a multiclass
    label is coded by the candidate's classes, found here once rather than in every batch.
    """
    classes = feat.FeatureSpec.from_dict(models["candidate"][1]).classes if "candidate" in models else None
    parts = ds.map_batches(_score_batch, fn_kwargs={"data": data, "cutoffs": cutoffs, "models": models,
                                                    "classes": classes, "slice_column": slice_column,
                                                    "split_done": split_done},
                           batch_format="pyarrow", batch_size=None).iter_batches(batch_format="numpy",
                                                                                batch_size=None)
    acc: dict[str, list] = {}
    for b in parts:
        for k, v in b.items():
            v = np.asarray(v)
            if v.dtype == object and v.size and isinstance(v[0], (list, np.ndarray)):
                v = np.stack([np.asarray(r, dtype=np.float64) for r in v])    # multiclass: rows of class probabilities
            acc.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in acc.items()} if acc else {"y": np.empty(0)}
