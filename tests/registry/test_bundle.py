import json

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb

from mlops_ray.registry import bundle
from mlops_ray.data import features as feat
from mlops_ray.data.profile import profile_local
from mlops_ray.errors import RegistryError
from mlops_ray.monitor.reference import build_reference
from tests.support.configs import make_config

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def trained(small_df):
    cfg = make_config("x", features={"min_frequency": 2})
    table = pa.Table.from_pandas(small_df, preserve_index=False)
    roles = feat.assign_roles(table.schema, cfg.data, cfg.features)
    parts = profile_local(table, {"f": lambda t: feat.fit_partial(t, roles, cfg.features)})["f"]
    spec = feat.fit_merge(parts, roles, cfg.data, cfg.features)
    X = feat.transform(small_df, spec).to_numpy(np.float32)
    y = small_df["is_fraud"].to_numpy()
    d = bundle.dmatrix(X, spec, label=y)
    bst = xgb.train({"objective": "binary:logistic", "max_depth": 4, "max_cat_to_onehot": 8}, d, 20)
    return spec, bst, X


def test_inplace_predict_equals_dmatrix_with_categoricals(trained):
    spec, bst, X = trained
    assert "c" in spec.feature_types
    np.testing.assert_array_equal(bundle.predict_features(bst, X, spec), bst.predict(bundle.dmatrix(X, spec)))


def test_bundle_round_trip_has_no_pickle(trained, small_df, tmp_path):
    spec, bst, X = trained
    ref = build_reference(X, spec, bst.inplace_predict(X), "binary")
    path = bundle.write_bundle(str(tmp_path / "b"), bst, spec, ref, {"task": "binary"})
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(bundle.FILES)
    # no pickle anywhere: the model is UBJSON (an object whose first key, "learner", has an int64
    # length: a pickle starts with its protocol byte 0x80), every other file is JSON
    model = (tmp_path / "b" / "model.ubj").read_bytes()
    assert model[:1] == b"{" and model[1:2] == b"L" and model[10:17] == b"learner", model[:20]
    for name in set(bundle.FILES) - {"model.ubj"}:
        json.loads((tmp_path / "b" / name).read_text())
    loaded = bundle.load_bundle(path)
    rows = small_df.head(50)
    np.testing.assert_array_equal(loaded.predict(rows), bundle.predict_features(bst, X[:50], spec))
    schema = json.loads((tmp_path / "b" / "schema.json").read_text())
    assert set(schema["properties"]) == set(spec.input_columns) and schema["additionalProperties"] is False
    assert ref["features"]["amount"]["kind"] == "numeric" and ref["prediction"]["shares"]
    assert abs(sum(ref["features"]["country"]["shares"].values()) - 1) < 1e-6


def test_incomplete_bundle_is_named(trained, tmp_path):
    spec, bst, X = trained
    path = bundle.write_bundle(str(tmp_path / "b"), bst, spec, {}, {})
    (tmp_path / "b" / "features.json").unlink()
    with pytest.raises(RegistryError, match="incomplete: missing features.json"):
        bundle.load_bundle(path)


@pytest.mark.parametrize("classes, k, names", [
    (["drizzle", "light rain", "Sunny"], 3, ["p_drizzle", "p_light_rain", "p_Sunny"]),
    (["0", "1", "2"], 3, ["p_0", "p_1", "p_2"]),
    (["Rain", "rain", "fog/mist"], 3, ["p_0_Rain", "p_1_rain", "p_2_fog_mist"]),     # same column twice: indexed
    (None, 2, ["p_0", "p_1"]),
])
def test_batch_probability_columns_are_named_by_class(classes, k, names):
    from mlops_ray.lifecycle.predict import proba_columns
    assert proba_columns(classes, k) == names
