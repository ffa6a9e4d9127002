"""Date-times stored as text: formats given or inferred, unreadable values named, and the same
reading at training, batch scoring and serving."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from pyarrow import fs as pafs

from mlops_ray.config import ServeConfig
from mlops_ray.data import dates
from mlops_ray.data import features as feat
from mlops_ray.data.rows import RowEncoder
from mlops_ray.errors import ConfigError, FeatureError
from mlops_ray.serve.api import RequestError, RequestParser
from tests.support.configs import make_config

pytestmark = pytest.mark.unit


def weather(n: int = 400, fmt: str = "%m/%d/%Y", seed: int = 7) -> pd.DataFrame:
    """A daily weather table as a bureau exports it: dates as text, the next day's rain as the label."""
    rng = np.random.default_rng(seed)
    day = pd.date_range("2012-01-01", periods=n, freq="D")
    season = np.cos(2 * np.pi * (day.dayofyear.to_numpy() - 15) / 365.25)
    humidity = rng.integers(20, 100, n)
    return pd.DataFrame({
        "Date": day.strftime(fmt), "Location": rng.choice(["Albury", "Sydney", "Cobar"], n),
        "MinTemp": np.round(8 + 6 * season + rng.normal(0, 2, n), 1),
        "MaxTemp": np.round(20 + 8 * season + rng.normal(0, 3, n), 1),
        "Humidity3pm": humidity, "RainTomorrow": (humidity + rng.normal(0, 15, n) > 75).astype(int)})


@pytest.mark.parametrize("values, fmt", [
    (["12/31/2012", "01/01/2013", "01/02/2013"], "%m/%d/%Y"),
    (["Jul 17 1998", "Dec 3 2001", "Mar 28 1997"], "%b %d %Y"),
    (["31.10.2020 08:00", "01.11.2020 09:30"], "%d.%m.%Y %H:%M"),
    (["2012-12-31", "2013-01-01T10:00:00Z"], dates.ISO),
])
def test_infer_format_reads_the_common_exports(values, fmt):
    assert dates.infer_format(values) == (fmt, [])


def test_infer_format_says_when_day_and_month_could_swap():
    fmt, others = dates.infer_format(["01/02/2012", "03/04/2012", "11/12/2012"])
    assert fmt == "%m/%d/%Y" and others == ["%d/%m/%Y"]
    p = dates.Parsing(formats={"Date": fmt}, inferred={"Date": 3}, ambiguous={"Date": others})
    assert "also read as %d/%m/%Y" in p.notes()[0] and "data.datetime_formats.Date" in p.notes()[0]


def test_infer_format_refuses_text_that_is_no_date():
    assert dates.infer_format(["sunny", "rain", "overcast"]) == (None, [])


def test_a_format_that_does_not_read_back_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.datetime_formats.Date '%m/%d/%Q' is not a date format"):
        make_config("x.csv", data={"datetime_formats": {"Date": "%m/%d/%Q"}})
    with pytest.raises(ConfigError, match=r"no % directive"):
        make_config("x.csv", data={"datetime_formats": {"Date": "mm/dd/yyyy"}})


def _source(path, fmt="csv"):
    return SimpleNamespace(files=[SimpleNamespace(path=str(path))], filesystem=pafs.LocalFileSystem(), format=fmt)


def test_an_unreadable_date_is_named_with_its_file_and_row(tmp_path):
    df = weather()
    df.loc[74, "Date"] = "2012-03-15"          # one row typed by hand in another format
    df.loc[185, "Date"] = "4th July"
    path = tmp_path / "weatherAUS.csv"
    df.to_csv(path, index=False)
    cfg = make_config(str(path), data={"label": "RainTomorrow", "time_column": "Date", "id_column": None,
                                       "split": {"method": "time"}})
    table = pacsv.read_csv(path)
    parsing = dates.resolve(table.schema, cfg, table.slice(0, dates.SAMPLE_ROWS))
    assert parsing.formats == {"Date": "%m/%d/%Y"} and parsing.inferred == {"Date": 400}
    merged = dates.merge_failures([dates.failure_partial(table.slice(0, 200), parsing.formats),
                                   dates.failure_partial(table.slice(200), parsing.formats)])
    assert merged == {"Date": {"bad": 2, "values": ["2012-03-15", "4th July"]}}
    [check] = dates.failure_checks(merged, parsing, dates.locate(_source(path), cfg.data, merged))
    assert not check.passed and check.rule == "datetime_parse"
    assert check.message.startswith("column 'Date' has 2 value(s) that the format '%m/%d/%Y' inferred from the "
                                    "first 400 values does not read, e.g. '2012-03-15' at weatherAUS.csv row 75 "
                                    "(line 76); set data.datetime_formats")
    assert check.samples[1] == {"column": "Date", "value": "4th July", "file": "weatherAUS.csv", "row": 186,
                                "line": 187}


def test_a_date_column_no_format_reads_fails_validation_naming_the_fix(tmp_path):
    df = weather()
    df["Date"] = "n/a"
    table = pa.Table.from_pandas(df, preserve_index=False)
    cfg = make_config("x.csv", data={"label": "RainTomorrow", "time_column": "Date", "id_column": None})
    parsing = dates.resolve(table.schema, cfg, table)
    [check] = [c for c in parsing.static_checks() if not c.passed]
    assert check.message == ("column 'Date' (data.time_column) holds text that no known date format reads "
                             "(e.g. 'n/a', 'n/a', 'n/a'); give its format as data.datetime_formats: "
                             "{Date: \"%m/%d/%Y\"} (strftime directives)")


def test_a_text_column_in_features_datetime_is_parsed_or_refused():
    films = pa.table({"Release Date": ["Jul 17 1998", "Dec 3 2001"], "Worldwide Gross": [1.2e8, 3.4e7],
                      "Title": ["Cube", "Amelie"]})
    cfg = make_config("films.parquet", data={"label": "Worldwide Gross", "id_column": None, "time_column": None},
                      features={"datetime": ["Release Date"]})
    with pytest.raises(FeatureError, match=r"features.datetime lists 'Release Date', which the data holds as "
                                           r"text, not date-times; give its format as data.datetime_formats"):
        feat.assign_roles(films.schema, cfg.data, cfg.features)
    parsing = dates.resolve(films.schema, cfg, films)
    assert parsing.formats == {"Release Date": "%b %d %Y"}
    roles = feat.assign_roles(dates.parsed_schema(films.schema, parsing.formats), cfg.data, cfg.features)
    assert roles.datetime == ("Release Date",) and "Release Date" not in roles.categorical


def _spec(fmt: str) -> feat.FeatureSpec:
    return feat.FeatureSpec(label="RainTomorrow", numeric=[feat.NumericFeature("Humidity3pm")],
                            datetime=[feat.DatetimeFeature("Date", ["hour", "dayofweek", "month", "day"])],
                            input_types={"Date": "datetime", "Humidity3pm": "int"}, datetime_formats={"Date": fmt})


@pytest.mark.parametrize("fmt", ["%d.%m.%Y %H:%M", "%m/%d/%Y"])
def test_serving_reads_a_date_as_training_did(fmt):
    df = weather(50)
    df["Date"] = pd.date_range("2020-10-25 08:00", periods=50, freq="7h").strftime(fmt)
    spec = feat.FeatureSpec.from_json(_spec(fmt).to_json())           # as the bundle keeps it
    assert spec.datetime_formats == {"Date": fmt}
    # training: ingest parses the text once, then transform
    parsed = dates.parse_table(pa.Table.from_pandas(df[["Date", "Humidity3pm"]], preserve_index=False), {"Date": fmt})
    train = feat.transform(feat.frame(parsed), spec)
    assert not train["Date__month"].isna().any()
    # batch scoring: the raw text through transform
    pd.testing.assert_frame_equal(feat.transform(df, spec), train)
    # serving: the request parser, then the row encoder
    parser = RequestParser.from_bundle(SimpleNamespace(spec=spec, task="binary"), ServeConfig())
    rows = parser.parse(df[["Date", "Humidity3pm"]].to_json(orient="records").encode(), "application/json")
    np.testing.assert_array_equal(RowEncoder(spec).encode(rows), train.to_numpy(np.float32))
    # raw rows straight into the encoder (text in the model's format) agree too
    raw = df[["Date", "Humidity3pm"]].to_dict(orient="records")
    np.testing.assert_array_equal(RowEncoder(spec).encode(raw), train.to_numpy(np.float32))


def test_serving_refuses_a_date_in_neither_the_models_format_nor_iso():
    parser = RequestParser.from_bundle(SimpleNamespace(spec=_spec("%m/%d/%Y"), task="binary"), ServeConfig())
    ok = parser.parse(b'[{"Date": "12/31/2012", "Humidity3pm": 40}, {"Date": "2012-12-31", "Humidity3pm": 40}]',
                      "application/json")
    assert ok[0]["Date"] == ok[1]["Date"] == pd.Timestamp("2012-12-31").to_pydatetime()
    with pytest.raises(RequestError, match=r"Date: expected a date-time as text in the model's format '%m/%d/%Y' "
                                           r"\(e.g. '01/31/2026'\) or ISO 8601, or null; got '31.12.2012'"):
        parser.parse(b'{"Date": "31.12.2012", "Humidity3pm": 40}', "application/json")


def test_a_misspelt_column_in_datetime_formats_is_named():
    table = pa.Table.from_pandas(weather(20), preserve_index=False)
    cfg = make_config("x.csv", data={"label": "RainTomorrow", "id_column": None, "time_column": None,
                                     "datetime_formats": {"date": "%m/%d/%Y"}})
    [check] = [c for c in dates.resolve(table.schema, cfg, table).static_checks() if not c.passed]
    assert check.message == ("data.datetime_formats names column 'date', which is not in the data (did you mean "
                             "'Date'?); fix the name or remove it")
