"""Every bad input of the data-plane issue gets a clear message naming the column and the fix."""

import numpy as np
import pandas as pd
import pyarrow as pa

from mlops_ray.data.validate import validate_table
from tests.conftest import make_config

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
