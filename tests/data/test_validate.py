"""Every bad input of the data-plane issue gets a clear message naming the column and the fix."""

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_ray.data.validate import validate_table
from tests.support.configs import make_config

pytestmark = pytest.mark.unit

SCHEMA = {"min_rows": 10, "columns": {
    "transaction_id": {"dtype": "int", "unique": True},
    "amount": {"dtype": "float", "min": 0},
    "credit_score": {"min": 300, "max": 850},
    "channel": {"allowed": ["online", "in_store", "atm"], "max_unseen_share": 0.01},
    "event_time": {"dtype": "datetime"},
}}


def run(df: pd.DataFrame, schema=SCHEMA, **kw):
    cfg = make_config("unused", schema=schema, **kw)
    return validate_table(pa.Table.from_pandas(df, preserve_index=False), cfg.data, cfg.schema_, cfg.model.task)


def failures(report):
    return {(c.column, c.rule): c for c in report.failures}


def test_clean_data_passes(small_df):
    report = run(small_df)
    assert report.passed, report.summary()
    assert report.rows == len(small_df)


def test_missing_required_column(small_df):
    report = run(small_df.drop(columns=["amount"]))
    f = failures(report)[("amount", "required")]
    assert "column 'amount' (named in schema.columns.amount) is missing" in f.message
    assert "available columns" in f.message


def test_missing_label(small_df):
    f = failures(run(small_df.drop(columns=["is_fraud"])))[("is_fraud", "required")]
    assert "named in data.label" in f.message and "Fix data.label" in f.message


def test_wrong_dtype(small_df):
    df = small_df.assign(amount=small_df["amount"].astype(str))
    f = failures(run(df))[("amount", "dtype")]
    assert "column 'amount' has type string, expected float" in f.message


def test_entirely_null_column(small_df):
    f = failures(run(small_df.assign(distance_km=np.nan)))[("distance_km", "not_all_null")]
    assert "column 'distance_km' is entirely null" in f.message
    assert "max_null_fraction: 1" in f.message


def test_null_fraction_over_limit(small_df):
    df = small_df.copy()
    df.loc[df.index[: len(df) // 2], "credit_score"] = np.nan
    schema = {**SCHEMA, "columns": {**SCHEMA["columns"], "credit_score": {"max_null_fraction": 0.1}}}
    f = failures(run(df, schema))[("credit_score", "max_null_fraction")]
    assert "above the allowed 10.0%" in f.message


def test_null_labels(small_df):
    df = small_df.assign(is_fraud=small_df["is_fraud"].astype("float"))
    df.loc[df.index[:3], "is_fraud"] = np.nan
    f = failures(run(df))[("is_fraud", "label_not_null")]
    assert "label column 'is_fraud' is null in 3 row(s)" in f.message
    assert len(f.samples) == 3 and "transaction_id" in f.samples[0]


def test_the_null_label_message_names_data_unlabelled_drop_and_that_fix_works(small_df):
    df = small_df.assign(is_fraud=small_df["is_fraud"].astype("float"))
    df.loc[df.index[:3], "is_fraud"] = np.nan
    f = failures(run(df))[("is_fraud", "label_not_null")]
    assert "set data.unlabelled: drop to leave them out of training and evaluation" in f.message
    from mlops_ray.data.ingest import add_label       # where data.unlabelled: drop leaves the rows out
    cfg = make_config("unused", schema=SCHEMA, data={"unlabelled": "drop"})
    kept = add_label(pa.Table.from_pandas(df, preserve_index=False), cfg.data)
    report = validate_table(kept, cfg.data, cfg.schema_, cfg.model.task)
    assert report.passed and report.rows == len(df) - 3, report.summary()


def test_label_not_binary(small_df):
    df = small_df.assign(is_fraud=small_df["is_fraud"].astype("int64"))
    df.loc[df.index[:2], "is_fraud"] = 7
    f = failures(run(df))[("is_fraud", "label_values")]
    assert "not 0/1 for a binary task" in f.message


def test_values_out_of_range(small_df):
    df = small_df.copy()
    df.loc[df.index[:4], "amount"] = -5.0
    f = failures(run(df))[("amount", "range")]
    assert "column 'amount' has 4 value(s) outside [0, ]" in f.message
    assert f.samples[0]["amount"] == -5.0 and "transaction_id" in f.samples[0]


def test_unseen_categories_above_share(small_df):
    df = small_df.copy()
    df["channel"] = df["channel"].astype(str)
    df.loc[df.index[:200], "channel"] = "crypto"
    f = failures(run(df))[("channel", "allowed_values")]
    assert "values outside schema.columns.channel.allowed" in f.message
    assert "'crypto' (200)" in f.message
    # below the tolerated share it passes
    df.loc[df.index[:200], "channel"] = "online"
    df.loc[df.index[:10], "channel"] = "crypto"
    assert ("channel", "allowed_values") not in failures(run(df))


def test_duplicate_ids(small_df):
    df = pd.concat([small_df, small_df.iloc[:5]], ignore_index=True)
    f = failures(run(df))[("transaction_id", "unique")]
    assert "column 'transaction_id' must be unique but 5 row(s) repeat" in f.message
    assert {s["transaction_id"] for s in f.samples} <= set(small_df["transaction_id"].iloc[:5])


def test_too_few_rows(small_df):
    f = failures(run(small_df.iloc[:5]))[(None, "min_rows")]
    assert "fewer than schema.min_rows=10" in f.message


def test_freshness(small_df):
    schema = {**SCHEMA, "freshness": {"max_age": "2d", "now": "2027-01-01"}}
    f = failures(run(small_df, schema))[("event_time", "freshness")]
    assert "older than max_age 2d" in f.message
    newest = small_df["event_time"].max()
    fresh = {**SCHEMA, "freshness": {"max_age": "2d", "now": str(newest + pd.Timedelta(hours=1))}}
    assert run(small_df, fresh).passed


def test_all_failures_reported_together(small_df):
    df = small_df.assign(distance_km=np.nan)
    df.loc[df.index[:4], "amount"] = -1.0
    report = run(df)
    assert len(report.failures) == 2
    assert "2 of" in report.summary()


@pytest.mark.parametrize("sections, message", [
    ({"features": {"exclude": ["predicton"]}},
     "features.exclude lists 'predicton', which is not a column of the data (did you mean 'prediction'?)"),
    ({"features": {"categorical": ["merchant_categroy"]}},
     "features.categorical lists 'merchant_categroy', which is not a column of the data (did you mean "
     "'merchant_category'?)"),
    ({"schema": {"columns": {"amonut": {"min": 0}}}},
     "schema.columns.amonut lists 'amonut', which is not a column of the data (did you mean 'amount'?)"),
    ({"model": {"slice_column": "chanel"}},
     "model.slice_column lists 'chanel', which is not a column of the data (did you mean 'channel'?)"),
    ({"retrain": {"key_features": ["amount", "distanse_km"]}},
     "retrain.key_features lists 'distanse_km', which is not a column of the data (did you mean 'distance_km'?)"),
    ({"monitor": {"min_effect": {"credit_scor": 0.1}}},
     "monitor.min_effect.credit_scor lists 'credit_scor', which is not a column of the data (did you mean "
     "'credit_score'?)"),
])
def test_every_column_name_the_config_lists_must_be_in_the_data(small_df, sections, message):
    from mlops_ray.data.validate import check_config_columns
    from mlops_ray.errors import ConfigError
    names = list(small_df.columns) + ["prediction"]
    cfg = make_config("x", **sections)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config_columns(names, cfg)
    check_config_columns(names + [message.split("'")[1]], cfg)     # spelt right: no error


def test_a_derived_feature_may_be_named_where_columns_are(small_df):
    from mlops_ray.data.validate import check_config_columns
    cfg = make_config("x", features={"derived": {"log_amount": "log1p(amount)"}},
                      retrain={"key_features": ["log_amount"]})
    check_config_columns(list(small_df.columns), cfg)


def test_a_categorical_dtype_rule_accepts_integer_codes():
    from mlops_ray.data.validate import plan_checks
    cfg = make_config("x", schema={"columns": {"smoker": {"dtype": "categorical"}, "bmi": {"dtype": "categorical"}}})
    schema = pa.schema([("smoker", pa.int64()), ("bmi", pa.float64()), ("is_fraud", pa.int64()),
                        ("transaction_id", pa.int64()), ("event_time", pa.timestamp("us"))])
    static, _ = plan_checks(schema, cfg.data, cfg.schema_)
    dtype = {c.column: c for c in static if c.rule == "dtype"}
    assert dtype["smoker"].passed
    assert not dtype["bmi"].passed and "fix schema.columns.bmi.dtype" in dtype["bmi"].message


def test_csv_column_types_read_integer_codes_as_text(tmp_path):
    from mlops_ray.data.ingest import inspect_source, read_table_local
    (tmp_path / "survey.csv").write_text("id,region,zip,y\n1,1,01234,0\n2,3,90210,1\n")
    cfg = make_config(str(tmp_path / "survey.csv"), data={"csv": {"column_types": {"region": "string", "zip": "string"}},
                                                          "label": "y", "id_column": "id", "time_column": None})
    t = read_table_local(inspect_source(cfg.data), cfg.data)
    assert t.column("region").to_pylist() == ["1", "3"] and t.column("zip").to_pylist() == ["01234", "90210"]


def test_drift_settings_may_name_a_datetime_fields_part(small_df):
    from mlops_ray.data.validate import check_config_columns
    from mlops_ray.errors import ConfigError
    cfg = make_config("x", retrain={"key_features": ["event_time.hour"]}, monitor={"min_effect": {"event_time.hour": 0.1}})
    check_config_columns(list(small_df.columns), cfg)
    bad = make_config("x", retrain={"key_features": ["event_time.hour"]}, features={"exclude": ["event_time.hour"]})
    with pytest.raises(ConfigError, match="features.exclude lists 'event_time.hour'"):
        check_config_columns(list(small_df.columns), bad)
