import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_ray.data import features as feat
from mlops_ray.data.profile import profile_local
from mlops_ray.errors import ConfigError, FeatureError
from tests.support.configs import make_config

pytestmark = pytest.mark.unit

FEATURES = {"min_frequency": 3, "max_categories": 100, "numeric_fill": "median",
            "datetime_parts": ["hour", "dayofweek", "is_weekend"],
            "derived": {"log_amount": "log1p(amount)", "per_txn": "amount / (num_txn_24h + 1)"}}


def fit(df, features=FEATURES, batch_rows=1000, **kw):
    cfg = make_config("x", features=features, **kw)
    table = pa.Table.from_pandas(df, preserve_index=False)
    roles = feat.assign_roles(table.schema, cfg.data, cfg.features)
    parts = profile_local(table, {"fit": lambda t: feat.fit_partial(t, roles, cfg.features)}, batch_rows)["fit"]
    return feat.fit_merge(parts, roles, cfg.data, cfg.features), cfg


def test_roles_and_spec(small_df):
    spec, _ = fit(small_df)
    assert [f.name for f in spec.numeric] == ["amount", "account_age_days", "num_txn_24h", "distance_km",
                                              "credit_score"]
    assert {f.name for f in spec.categorical} == {"merchant_id", "merchant_category", "country", "device",
                                                  "channel"}
    assert "transaction_id" not in spec.output_columns and "is_fraud" not in spec.output_columns
    assert len(spec.output_columns) == len(spec.feature_types) == 5 + 2 + 5 + 3
    merchant = next(f for f in spec.categorical if f.name == "merchant_id")
    assert 0 < len(merchant.vocab) <= 100 and merchant.oov_share > 0   # high cardinality: rare ones are OOV
    amount = spec.numeric[0]
    assert amount.fill == pytest.approx(small_df["amount"].median(), rel=0.02)


def test_fit_does_not_depend_on_batching(small_df):
    a, _ = fit(small_df, batch_rows=4000)
    b, _ = fit(small_df, batch_rows=333)
    assert [c.vocab for c in a.categorical] == [c.vocab for c in b.categorical]
    assert a.numeric[0].mean == pytest.approx(b.numeric[0].mean)


def test_batch_and_row_by_row_are_identical(small_df):
    spec, _ = fit(small_df)
    rows = small_df.sample(300, random_state=1)
    batch = feat.transform(rows, spec)
    one_by_one = pd.concat([feat.transform(rows.iloc[[i]], spec) for i in range(len(rows))])
    pd.testing.assert_frame_equal(batch, one_by_one)
    # and from JSON-like dicts, as a serving request arrives
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    for rec in records:
        rec["event_time"] = rec["event_time"].isoformat()
    from_json = pd.concat([feat.transform(pd.DataFrame([r]), spec) for r in records])
    np.testing.assert_array_equal(from_json.to_numpy(), batch.to_numpy())


def test_unknown_categories_missing_values_and_bad_numbers(small_df):
    spec, _ = fit(small_df)
    row = small_df.iloc[[0]].copy()
    row["country"] = row["country"].astype(str)
    row.loc[:, "country"] = "Atlantis"
    row.loc[:, "amount"] = np.nan
    out = feat.transform(row, spec)
    assert out["country"].iloc[0] == feat.OOV_CODE
    assert out["amount"].iloc[0] == pytest.approx(spec.numeric[0].fill)
    weird = pd.DataFrame([{"amount": "not a number", "num_txn_24h": float("inf")}])
    out = feat.transform(weird, spec)           # absent columns become missing, never an error
    assert out.shape == (1, len(spec.output_columns))
    assert out["amount"].iloc[0] == pytest.approx(spec.numeric[0].fill)
    assert np.isnan(out["merchant_id"].iloc[0])


def test_spec_json_round_trip(small_df):
    spec, _ = fit(small_df)
    again = feat.FeatureSpec.from_json(spec.to_json())
    pd.testing.assert_frame_equal(feat.transform(small_df, spec), feat.transform(small_df, again))


def test_spec_version_is_checked(small_df):
    spec, _ = fit(small_df)
    d = spec.to_dict()
    d["version"] = 99
    with pytest.raises(FeatureError, match="version 99 is not supported"):
        feat.FeatureSpec.from_dict(d)


def test_listed_feature_not_in_data(small_df):
    with pytest.raises(FeatureError, match=r"features lists column\(s\) \['nope'\]"):
        fit(small_df, features={"numeric": ["amount", "nope"]})


def test_derived_expression_on_missing_column(small_df):
    with pytest.raises(FeatureError, match="features.derived.z uses column 'nope'"):
        fit(small_df, features={"derived": {"z": "nope * 2"}})


def test_random_split_is_reproducible_and_order_independent(small_df):
    cfg = make_config("x")
    codes = feat.split_codes(small_df, cfg.data, None)
    shuffled = small_df.sample(frac=1, random_state=5)
    again = pd.Series(feat.split_codes(shuffled, cfg.data, None), index=shuffled.index).sort_index()
    np.testing.assert_array_equal(codes, again.to_numpy())
    frac = np.bincount(codes, minlength=3) / len(codes)
    assert frac[2] == pytest.approx(0.2, abs=0.03) and frac[1] == pytest.approx(0.1, abs=0.03)
    other = make_config("x", data={"split": {"seed": 7}})
    assert (feat.split_codes(small_df, other.data, None) != codes).any()


def test_time_split_puts_newest_rows_in_test(small_df):
    cfg = make_config("x", data={"split": {"method": "time"}})
    table = pa.Table.from_pandas(small_df, preserve_index=False)
    parts = profile_local(table, {"t": lambda t: feat.time_partial(t, "event_time")}, 700)["t"]
    cut = feat.time_cutoffs(parts, cfg.data)
    codes = feat.split_codes(table, cfg.data, cut)
    times = small_df["event_time"].to_numpy()
    assert times[codes == 0].max() <= times[codes == 1].min()
    assert times[codes == 1].max() <= times[codes == 2].min()
    assert np.mean(codes == 2) == pytest.approx(0.2, abs=0.01)


class _Validated(Exception):
    """Raised by the stubbed validation step: prepare_data got past role assignment."""


@pytest.mark.parametrize("error, surfaces", [(FeatureError("no feature columns"), _Validated),
                                             (TypeError("a bug in assign_roles"), TypeError)])
def test_prepare_data_leaves_only_feature_errors_to_the_featurize_step(monkeypatch, tmp_path, small_df,
                                                                         error, surfaces):
    # the validation pass also fits features when it can; a FeatureError is reported by the
    # featurize step after validation, anything else is a bug and must not be swallowed
    import contextlib
    from types import SimpleNamespace

    from mlops_ray import pipeline
    schema = pa.Table.from_pandas(small_df.head(5), preserve_index=False).schema
    source = SimpleNamespace(format="parquet", schema=schema, rows=5, fingerprint="f")

    def validate(cfg, source, ds, static, plan, extra, parsing=None):
        assert "fit" not in extra
        raise _Validated()

    def fail(*args):
        raise error

    monkeypatch.setattr(pipeline.runner, "ray_runtime", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(pipeline.runner, "require_shared_store", lambda cfg: None)
    monkeypatch.setattr(pipeline.data.ingest, "inspect_source", lambda data: source)
    monkeypatch.setattr(pipeline.data, "step_check_schema", lambda cfg, s: (None, None))
    monkeypatch.setattr(pipeline.data, "step_ingest", lambda cfg, s: None)
    monkeypatch.setattr(pipeline.data, "step_validate", validate)
    monkeypatch.setattr(pipeline.data.feat, "assign_roles", fail)
    with pytest.raises(surfaces):
        pipeline.prepare_data(make_config("x", store=str(tmp_path)))


def test_time_of_day_and_cyclical_parts():
    import numpy as np
    import pandas as pd

    from mlops_ray.data.features import DT_PARTS
    s = pd.Series(pd.to_datetime(["2024-03-04 14:30:00", "2024-03-04 23:59:00", "2024-03-05 00:00:00", None]))
    part = {k: DT_PARTS[k](s).to_numpy(dtype=np.float64, na_value=np.nan) for k in DT_PARTS}
    assert part["time_of_day"][0] == 14.5 and part["minute_of_day"][0] == 870
    assert np.isnan(part["time_of_day"][3]) and np.isnan(part["hour_sin"][3])
    # 23:59 and 00:00 are a minute apart on the circle, 23 hours apart as "hour"
    a = np.array([part["hour_sin"][1], part["hour_cos"][1]])
    b = np.array([part["hour_sin"][2], part["hour_cos"][2]])
    assert np.linalg.norm(a - b) < 0.01 and part["hour"][1] - part["hour"][2] == 23
    assert part["weekofyear"][0] == 10 and part["dayofweek"][0] == 0


def test_an_unknown_datetime_part_names_the_key_and_the_parts_there_are():
    from mlops_ray.config import config_from_dict
    with pytest.raises(ConfigError, match=r"features\.datetime_parts\.1: Input should be 'hour', .*'time_of_day'"
                                          r".*'hour_sin'.* \(got 'hour_of_day'\)"):
        config_from_dict({"name": "p", "data": {"source": "x", "label": "y"},
                          "features": {"datetime_parts": ["hour", "hour_of_day"]}})


def _frame_fit(df, features, batch_rows=1000):
    cfg = make_config("x", features=features, data={"label": "y", "id_column": None, "time_column": None})
    table = pa.Table.from_pandas(df, preserve_index=False)
    roles = feat.assign_roles(table.schema, cfg.data, cfg.features)
    parts = profile_local(table, {"fit": lambda t: feat.fit_partial(t, roles, cfg.features)}, batch_rows)["fit"]
    return feat.fit_merge(parts, roles, cfg.data, cfg.features), table


def _odd_frame(n=100):
    return pd.DataFrame({"y": [0, 1] * (n // 2), "a": np.arange(n, dtype=float),
                         "big": pd.array([2**53 + 1 + i % 3 for i in range(n)], dtype="Int64"),
                         "flag": [True, False] * (n // 2), "ts": pd.to_datetime(["2024-01-01"] * n)})


def test_a_derived_feature_that_is_just_a_column_name():
    spec, table = _frame_fit(_odd_frame(), {"derived": {"a2": "a"}, "min_frequency": 1})
    out = feat.transform(feat.frame(table), spec)          # was: "assignment destination is read-only"
    assert out["a2"].tolist() == out["a"].tolist()


def test_integer_categories_above_2_53_are_exact_whatever_the_batch():
    spec, table = _frame_fit(_odd_frame(), {"categorical": ["big"], "numeric": ["a"], "min_frequency": 1})
    assert [c.vocab for c in spec.categorical] == [["9007199254740993", "9007199254740994", "9007199254740995"]]
    full = feat.transform(feat.frame(table), spec)["big"].tolist()
    assert full[:3] == [1.0, 2.0, 3.0]                       # was 0 (out of vocabulary) for the odd values
    with_null = table.set_column(2, "big", pa.array([None] + table.column("big").to_pylist()[1:], pa.int64()))
    assert feat.transform(feat.frame(with_null), spec)["big"].tolist()[1:] == full[1:]


def test_bool_categories_are_in_the_vocabulary():
    spec, table = _frame_fit(_odd_frame(), {"categorical": ["flag"], "numeric": ["a"], "min_frequency": 1})
    assert spec.categorical[0].vocab == ["false", "true"]
    assert feat.transform(feat.frame(table), spec)["flag"].tolist()[:2] == [2.0, 1.0]      # was always 0


def test_a_date_nanoseconds_cannot_hold_is_missing_not_an_error():
    import datetime as dt
    spec, _ = _frame_fit(_odd_frame(), {"numeric": ["a"], "datetime": ["ts"], "min_frequency": 1,
                                        "datetime_parts": ["hour", "epoch_days", "year"]})
    t = pa.table({"a": [1.0, 2.0], "ts": pa.array([dt.datetime(3000, 1, 1), dt.datetime(2024, 1, 1)], pa.timestamp("us"))})
    out = feat.transform(feat.frame(t), spec)                # was: OutOfBoundsDatetime
    assert np.isnan(out["ts__year"][0]) and out["ts__year"][1] == 2024
    out = feat.transform(pd.DataFrame({"a": [1.0], "ts": ["3000-01-01T00:00:00"]}), spec)
    assert np.isnan(out["ts__epoch_days"][0])


def test_time_cutoffs_are_exact_whatever_the_blocks(small_df):
    cfg = make_config("x", data={"split": {"method": "time"}})
    table = pa.Table.from_pandas(small_df, preserve_index=False)
    t = np.sort(feat._time_ns(table.column("event_time")))
    t = t[t != np.iinfo(np.int64).min]
    want = (int(t[int(np.floor(0.7 * t.size))]), int(t[int(np.floor(0.8 * t.size))]))   # default 0.1/0.2
    got = set()
    for rows in (250, 999, 4000):                  # three block layouts
        sketches = profile_local(table, {"t": lambda b: feat.time_partial(b, "event_time")}, rows)["t"]
        for margin in (0.01, 1.0):
            brackets = feat.time_brackets(sketches, cfg.data, margin)
            parts = profile_local(table, {"r": lambda b: feat.time_rank_partial(b, "event_time", brackets)}, rows)["r"]
            got.add(feat.exact_time_cutoffs(parts, cfg.data))
    assert got == {want}
    # a bracket that misses its rank says so (the pipeline then widens it)
    parts = profile_local(table, {"r": lambda b: feat.time_rank_partial(b, "event_time", [(0, 1), (0, 1)])}, 999)["r"]
    assert feat.exact_time_cutoffs(parts, cfg.data) is None


def test_multiclass_labels_get_codes_by_class():
    parts = [feat.class_partial(pa.table({"y": pa.array([2, 10, None, 2])}), "y"),
             feat.class_partial(pa.table({"y": pa.array([1, 10])}), "y")]
    assert feat.label_classes(parts, "y") == ["1", "2", "10"]           # numbers in numeric order
    assert feat.label_codes(pa.chunked_array([pa.array([10, 1, None, 7])]), ["1", "2", "10"]).tolist()[:2] == [2.0, 0.0]
    codes = feat.label_codes(pa.array([10, 1, None, 7]), ["1", "2", "10"])
    assert np.isnan(codes[2]) and codes[3] == -1                        # missing; a value not a class
    text = [feat.class_partial(pa.table({"y": ["dog", "cat", "dog"]}), "y")]
    assert feat.label_classes(text, "y") == ["cat", "dog"]
    with pytest.raises(FeatureError, match="has 1 distinct value"):
        feat.label_classes([{"a": 3}], "y")


def test_a_monitoring_window_is_read_without_the_label_expression(tmp_path):
    """Traffic has no label yet, nor the columns a label expression reads: a window is inspected
    and read without them (training data must have them: the ingest check names the column)."""
    from mlops_ray.data import ingest
    from mlops_ray.monitor.drift import window_data_config
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"amount": [1.0, 2.0]}), str(tmp_path / "w.parquet"))
    cfg = make_config(str(tmp_path / "w.parquet"), data={"label": {"name": "late", "expr": "delay > 15"}})
    with pytest.raises(ConfigError, match="reads column 'delay', which is not in the data"):
        ingest.inspect_source(cfg.data)
    src = ingest.inspect_source(window_data_config(cfg, str(tmp_path / "w.parquet")))
    assert src.schema.names == ["amount"]


def _coded(small_df):
    """A survey-style export: region as integer codes 1..3 and smoker as 1 = yes, 2 = no."""
    rng = np.random.default_rng(0)
    return pa.Table.from_pandas(small_df.assign(region=rng.integers(1, 4, len(small_df)),
                                                smoker=rng.integers(1, 3, len(small_df))), preserve_index=False)


def test_integer_codes_declared_categorical_are_categories_not_numbers(small_df):
    from mlops_ray.pipeline import declared_categorical
    table = _coded(small_df)
    cfg = make_config("x", schema={"columns": {"region": {"dtype": "categorical"}, "smoker": {"dtype": "categorical"}}})
    roles = feat.assign_roles(table.schema, cfg.data, cfg.features, declared_categorical(cfg))
    assert {"region", "smoker"} <= set(roles.categorical) and not {"region", "smoker"} & set(roles.numeric)
    assert roles.input_types["region"] == "int"         # requests send the codes as numbers
    plain = feat.assign_roles(table.schema, cfg.data, cfg.features)
    assert "region" in plain.numeric                      # undeclared integers stay numbers


def test_integer_codes_listed_in_features_categorical_are_not_also_numeric(small_df):
    """features.categorical: [region] with features.numeric: auto kept region numeric (auto took it first)."""
    table = _coded(small_df)
    cfg = make_config("x", features={"categorical": ["region", "merchant_category"]})
    roles = feat.assign_roles(table.schema, cfg.data, cfg.features)
    assert "region" in roles.categorical and "region" not in roles.numeric
    spec = feat.fit_merge([feat.fit_partial(table, roles, cfg.features)], roles, cfg.data, cfg.features)
    codes = feat.transform(feat.frame(table.slice(0, 50)), spec)["region"]
    assert set(np.unique(codes)) <= {1.0, 2.0, 3.0}       # vocabulary codes, not the raw numbers' bins
