"""The data plane on the shared local Ray: ingest -> validate -> featurize, and its failures."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_ray.data import features as feat
from mlops_ray.data.validate import validate_table
from mlops_ray.errors import DataSourceError, DataValidationError
from mlops_ray.pipeline import prepare_data
from tests.support.configs import make_config, write_parquet

pytestmark = pytest.mark.ray

SCHEMA = {"min_rows": 100, "columns": {
    "transaction_id": {"dtype": "int", "unique": True},
    "amount": {"min": 0},
    "channel": {"allowed": ["online", "in_store", "atm"]},
}}


def cfg_for(source, tmp_path, **kw):
    kw.setdefault("schema", SCHEMA)
    kw.setdefault("features", {"min_frequency": 2, "derived": {"log_amount": "log1p(amount)"}})
    return make_config(str(source), store=str(tmp_path / "store"), **kw)


@pytest.mark.parametrize("method", ["random", "time"])
def test_prepare_data_writes_splits_and_spec(parquet_dir, small_df, tmp_path, method):
    cfg = cfg_for(parquet_dir, tmp_path, data={"split": {"method": method}})
    res = prepare_data(cfg)
    assert res.validation.passed
    assert sum(res.split_rows.values()) == len(small_df)
    assert res.split_rows["test"] == pytest.approx(0.2 * len(small_df), rel=0.15)
    out = Path(res.out_dir)
    spec = feat.FeatureSpec.from_json((out / "feature_spec.json").read_text())
    assert json.loads((out / "validation.json").read_text())["passed"] is True
    for split, n in res.split_rows.items():
        t = pq.read_table(out / "features" / f"split={split}")
        assert t.num_rows == n
        assert set(spec.output_columns) <= set(t.column_names) and "is_fraud" in t.column_names


def test_ray_output_equals_local_transform(parquet_dir, small_df, tmp_path):
    """The batches Ray wrote are exactly what the pure transform gives for the same rows."""
    cfg = cfg_for(parquet_dir, tmp_path)
    res = prepare_data(cfg)
    spec = res.spec
    codes = feat.split_codes(small_df, cfg.data, None)
    expected = feat.transform(small_df[codes == 0], spec)
    got = pq.read_table(Path(res.out_dir) / "features" / "split=train").to_pandas()
    key = lambda d: d.sort_values(list(spec.output_columns)).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(key(got[spec.output_columns]), key(expected), check_dtype=True)


def test_ray_validation_equals_local(parquet_dir, small_df, tmp_path):
    bad = small_df.copy()
    bad.loc[bad.index[:7], "amount"] = -1.0
    src = write_parquet(pd.concat([bad, bad.iloc[:3]]), tmp_path / "bad", parts=3)
    cfg = cfg_for(src, tmp_path)
    with pytest.raises(DataValidationError) as e:
        prepare_data(cfg)
    ray_report = e.value.report
    local = validate_table(pa.Table.from_pandas(pd.concat([bad, bad.iloc[:3]]), preserve_index=False),
                           cfg.data, cfg.schema_)
    assert {(c.column, c.rule, str(c.observed)) for c in ray_report.failures} == \
           {(c.column, c.rule, str(c.observed)) for c in local.failures}
    dup = next(c for c in ray_report.failures if c.rule == "unique")
    assert dup.samples and "3 row(s) repeat" in dup.message
    

def test_validation_failure_stops_before_featurize(small_df, tmp_path):
    bad = small_df.assign(distance_km=np.nan)
    src = write_parquet(bad, tmp_path / "allnull")
    cfg = cfg_for(src, tmp_path)
    with pytest.raises(DataValidationError, match="column 'distance_km' is entirely null"):
        prepare_data(cfg)
    written = list((tmp_path / "store").rglob("features"))
    assert written == []           # nothing downstream ran
    assert list((tmp_path / "store").rglob("validation.json"))   # the report is kept


def test_csv_source(small_df, tmp_path):
    p = tmp_path / "csv"
    p.mkdir()
    small_df.iloc[:2000].to_csv(p / "a.csv", index=False)
    small_df.iloc[2000:].to_csv(p / "b.csv", index=False)
    cfg = cfg_for(p, tmp_path)
    res = prepare_data(cfg)
    assert res.validation.passed and sum(res.split_rows.values()) == len(small_df)
    assert res.source["format"] == "csv"


def test_corrupt_file_fails_before_ray_reads(parquet_dir, tmp_path):
    (parquet_dir / "part-005.parquet").write_bytes(b"garbage")
    with pytest.raises(DataSourceError, match="part-005.parquet' cannot be read"):
        prepare_data(cfg_for(parquet_dir, tmp_path))


def test_missing_label_column_fails_fast(parquet_dir, tmp_path):
    cfg = cfg_for(parquet_dir, tmp_path, data={"label": "target"})
    with pytest.raises(DataValidationError, match="column 'target' \\(named in data.label\\) is missing"):
        prepare_data(cfg)


def test_a_time_split_on_dates_written_as_text(tmp_path):
    """A weather export's 12/31/2012 in the time column: the format is inferred and said, the split
    is by date; with a format that does not fit, validation names the value, its row and the fix."""
    from tests.data.test_dates import weather
    df = weather(600)
    path = tmp_path / "weatherAUS.csv"
    df.to_csv(path, index=False)
    data = {"label": "RainTomorrow", "time_column": "Date", "id_column": None, "split": {"method": "time"}}
    notes = []
    res = prepare_data(make_config(str(path), store=str(tmp_path / "store"), data=data, schema={"min_rows": 1},
                                   features={"min_frequency": 1}),
                       progress=lambda step, msg: notes.append(msg))
    assert "column 'Date' read as date-times with format '%m/%d/%Y', inferred from 600 values " \
           "(data.datetime_formats.Date sets it)" in notes
    assert res.validation.passed and res.source["rows"] == 600
    assert res.spec.datetime_formats == {"Date": "%m/%d/%Y"} and res.spec.input_types["Date"] == "datetime"
    assert res.split_rows == {"train": 420, "valid": 60, "test": 120}
    assert [str(np.datetime64(c, "ns").astype("datetime64[D]")) for c in res.cutoffs] == ["2013-02-24", "2013-04-25"]

    with pytest.raises(DataValidationError, match=r"column 'Date' has 360 value\(s\) that data.datetime_formats.Date "
                                                  r"'%d/%m/%Y' does not read, e.g. '01/13/2012' at weatherAUS.csv row "
                                                  r"13 \(line 14\); set data.datetime_formats"):
        prepare_data(make_config(str(path), store=str(tmp_path / "store2"),
                                 data={**data, "datetime_formats": {"Date": "%d/%m/%Y"}}, schema={"min_rows": 1}))


def test_a_release_date_listed_in_features_datetime_becomes_date_parts(tmp_path):
    """A film table exported from JSON to Parquet by pandas: 'Release Date' is text ('Jul 17 1998');
    listed in features.datetime it is parsed into date parts, not a category with no categories."""
    rng = np.random.default_rng(5)
    n = 300
    released = pd.Timestamp("1990-01-01") + pd.to_timedelta(rng.integers(0, 9000, n), unit="D")
    films = pd.DataFrame({"Title": [f"Film {i}" for i in range(n)], "Release Date": released.strftime("%b %d %Y"),
                          "Production Budget": rng.lognormal(16, 1, n).round(-3),
                          "MPAA Rating": rng.choice(["G", "PG", "PG-13", "R"], n)})
    films["Worldwide Gross"] = films["Production Budget"] * rng.lognormal(0.8, 0.6, n)
    path = write_parquet(films, tmp_path / "films")
    cfg = make_config(str(path), store=str(tmp_path / "store"), schema={"min_rows": 1},
                      data={"label": "Worldwide Gross", "id_column": None, "time_column": None},
                      model={"task": "regression"},
                      features={"datetime": ["Release Date"], "exclude": ["Title"], "datetime_parts": ["year", "month"],
                                "min_frequency": 1})
    res = prepare_data(cfg)
    assert res.spec.datetime_formats == {"Release Date": "%b %d %Y"}
    assert [d.name for d in res.spec.datetime] == ["Release Date"]
    assert "Release Date" not in [c.name for c in res.spec.categorical]
    train = pq.read_table(Path(res.out_dir) / "features" / "split=train").to_pandas()
    assert train["Release Date__year"].between(1990, 2015).all()


def test_the_retrain_window_reads_a_text_time_column_as_training_does(tmp_path):
    """retrain.window over a weather export's 12/31/2012 dates: the newest 30 days by date (not by
    the text's sort order, where 12/31/2012 comes after 01/13/2013), the rows kept as text."""
    from mlops_ray.lifecycle.loop import retrain_config
    from tests.data.test_dates import weather
    path = tmp_path / "weatherAUS.csv"
    weather(400).to_csv(path, index=False)           # 2012-01-01 .. 2013-02-03
    cfg = make_config(str(path), store=str(tmp_path / "store"),
                      data={"label": "RainTomorrow", "time_column": "Date", "id_column": None},
                      retrain={"window": "30d", "previous_sample": 0.0})
    window = pq.read_table(retrain_config(cfg).data.source)
    dates_ = pd.to_datetime(pd.Series(window.column("Date").to_pylist()), format="%m/%d/%Y")
    assert window.schema.field("Date").type == pa.string()
    assert dates_.min() == pd.Timestamp("2013-01-04") and dates_.max() == pd.Timestamp("2013-02-03")
    assert window.num_rows == 31
