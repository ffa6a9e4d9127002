"""RowEncoder (the serving fast path) must give exactly what transform gives, on every input."""
import datetime as dt
import random
import zoneinfo

import numpy as np
import pandas as pd
import pytest

from mlops_ray.registry import bundle
from mlops_ray.data import features as feat
from mlops_ray.data import rows as rows_mod
from mlops_ray.data.features import (CategoricalFeature, DatetimeFeature, DerivedFeature, FeatureSpec,
                                     NumericFeature)
from mlops_ray.data.rows import RowEncoder
from tests.support.configs import make_bundle

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")]  # 1e308 -> float32
ALL_PARTS = list(feat.DT_PARTS)
CONFIGS = {
    "plain": {},
    "mean_all_parts_oov": {"numeric_fill": "mean", "min_frequency": 40, "datetime_parts": ALL_PARTS},
    "median_derived": {"numeric_fill": "median", "datetime_parts": ["hour", "minute", "is_weekend", "epoch_days"],
                       "derived": {"log_amount": "log1p(amount)", "per_txn": "amount / (num_txn_24h + 1)",
                                   "hour_of_day": "(event_time / 3600) % 24",
                                   "is_us": "where(country == 'US', 1, isnull(country))",
                                   "risky": "amount > 100 and credit_score < 600"}},
    "zero_few_categories": {"numeric_fill": "zero", "max_categories": 3, "datetime_parts": ["day", "year", "dayofyear"],
                            "derived": {"dist2": "clip(distance_km, 0, 50) ** 2"}},
}


@pytest.fixture(scope="module")
def bundles(small_df, tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    return {name: bundle.load_bundle(make_bundle(small_df, root / name, rounds=10, **cfg))
            for name, cfg in CONFIGS.items()}


@pytest.fixture(params=list(CONFIGS))
def spec(request, bundles):
    return bundles[request.param].spec


def expected(rows, spec):
    return feat.transform(pd.DataFrame(rows), spec).to_numpy(np.float32)


def check(rows, spec, enc=None):
    enc = enc or RowEncoder(spec)
    got = enc.encode(rows)
    want = expected(rows, spec)
    assert got.dtype == np.float32 and got.shape == (len(rows), len(spec.output_columns))
    np.testing.assert_array_equal(got, want)       # NaN positions must match too
    assert enc.fallbacks == 0                      # the fast path itself gave the answer
    return got


def json_rows(df: pd.DataFrame, time_format=lambda ts: ts.isoformat()) -> list[dict]:
    """DataFrame rows as a JSON request carries them: None for missing, datetimes as strings."""
    recs = df.astype(object).where(df.notna(), None).to_dict("records")
    for r in recs:
        if r["event_time"] is not None:
            r["event_time"] = time_format(r["event_time"])
    return recs


# --------------------------------------------------------------------------- real rows
def test_every_spec_compiles_to_the_fast_path(spec):
    enc = RowEncoder(spec)
    assert enc.fast, enc.reason
    assert enc.columns == spec.output_columns


def test_500_real_rows_as_records(spec, small_df):
    rows = small_df.sample(500, random_state=1).to_dict("records")     # Timestamps, NaN floats
    assert any(isinstance(v, float) and np.isnan(v) for r in rows for v in r.values())
    check(rows, spec)


@pytest.mark.parametrize("fmt", [
    lambda ts: ts.isoformat(),                                                 # fractional seconds, naive
    lambda ts: ts.strftime("%Y-%m-%dT%H:%M:%SZ"),                              # UTC designator
    lambda ts: ts.tz_localize("UTC").tz_convert("Asia/Kolkata").isoformat(),  # +05:30 offset
    lambda ts: ts.tz_localize("UTC").tz_convert("America/New_York").isoformat(timespec="nanoseconds"),
    lambda ts: ts.strftime("%Y-%m-%d %H:%M"),                                  # space, no seconds
    lambda ts: ts.strftime("%Y-%m-%d"),                                        # date only
    lambda ts: ts.to_pydatetime(),                                             # datetime.datetime
    lambda ts: ts.to_pydatetime().replace(tzinfo=dt.timezone(dt.timedelta(hours=-3))),
], ids=["iso", "Z", "+0530", "ns-offset", "space", "date", "datetime", "aware-datetime"])
def test_500_real_rows_as_json(spec, small_df, fmt):
    rows = json_rows(small_df.sample(500, random_state=2), fmt)
    check(rows, spec)


def test_rows_one_at_a_time_and_batched_agree(spec, small_df):
    rows = json_rows(small_df.sample(40, random_state=3))
    enc = RowEncoder(spec)
    batch = check(rows, spec, enc)
    np.testing.assert_array_equal(np.vstack([enc.encode([r]) for r in rows]), batch)


# --------------------------------------------------------------------------- awkward requests
def test_missing_keys_and_none_values(spec, small_df):
    rng = random.Random(4)
    rows = json_rows(small_df.sample(300, random_state=4))
    for r in rows:
        for k in list(r):
            x = rng.random()
            if x < 0.2:
                del r[k]
            elif x < 0.35:
                r[k] = None
    rows.append({})                                          # nothing at all
    rows.append({"amount": 10.0})
    check(rows, spec)
    check([{"amount": 3.0}, {"country": "US"}], spec)       # most columns absent from the whole batch
    check([{}], spec)


def test_a_column_only_none_in_the_batch(spec, small_df):
    rows = json_rows(small_df.head(5))
    for c in ("amount", "country", "event_time"):
        check([dict(r, **{c: None}) for r in rows], spec)
        check([{k: v for k, v in r.items() if k != c} for r in rows], spec)


@pytest.mark.parametrize("column,values", [
    ("amount", ["12.5", "abc", "", " 7 ", "1e3", "inf", "-Infinity", "nan", "0x10"]),   # text for a float
    ("num_txn_24h", ["3", 2.5, True, False, "2"]),                                       # int column
    ("amount", [float("inf"), float("-inf"), float("nan"), 1e308, -0.0]),
    ("amount", [2 ** 63, 2 ** 70, -(2 ** 63), 2 ** 53 + 1]),                             # huge ints
    ("amount", [np.float32(1.1), np.int64(7), np.float64(2.5)]),                         # numpy scalars
    ("country", [3, 3.0, 2.5, 0, True, 10 ** 20, 1e20, 2 ** 53 + 1, float("inf"), float("nan")]),
    ("merchant_id", ["Atlantis", "", "m9999999", "ünïcödé", "US"]),                     # unknown categories
    ("event_time", ["not a date", "", "2026-02-30", "2026-1-5", "20260105", "2026-01-05T25:00",
                    "2026-01-05T09:15:00.1234567891", 1767258900, 1.5, "2026-01-05T09:15:00+0200"]),
    ("event_time", [dt.datetime(2026, 3, 29, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin")),
                    pd.Timestamp("2026-01-03 09:15:00.123456789"), np.datetime64("2026-01-03T09:15"),
                    dt.date(2026, 1, 3), pd.Timestamp("2026-10-25 03:30", tz="Europe/Berlin")]),
])
def test_wrong_kinds_of_values(spec, small_df, column, values):
    base = json_rows(small_df.head(len(values) + 3))
    rows = [dict(r, **{column: v}) for r, v in zip(base, values)] + base[len(values):]
    check(rows, spec)
    for v in values:                                  # alone: the batch's dtype inference differs
        check([dict(base[0], **{column: v})], spec)


def test_unknown_categories_are_oov_and_missing_are_nan(bundles, small_df):
    spec = bundles["mean_all_parts_oov"].spec
    row = json_rows(small_df.head(1))[0]
    row.update(country="Atlantis", merchant_id=None)
    row.pop("device")
    out = check([row], spec)[0]
    cols = spec.output_columns
    assert out[cols.index("country")] == feat.OOV_CODE
    assert np.isnan(out[cols.index("merchant_id")]) and np.isnan(out[cols.index("device")])


def test_numeric_fill_applies_to_missing_and_bad_numbers(bundles):
    spec = bundles["zero_few_categories"].spec
    out = check([{"amount": None}, {"amount": "abc"}, {"amount": float("inf")}, {}], spec)
    assert (out[:, spec.output_columns.index("amount")] == 0.0).all()


def test_single_row_and_empty_list(spec, small_df):
    enc = RowEncoder(spec)
    check(json_rows(small_df.head(1)), spec, enc)
    check(small_df.head(1).to_dict("records"), spec, enc)
    empty = enc.encode([])
    assert empty.shape == (0, len(spec.output_columns)) and empty.dtype == np.float32
    np.testing.assert_array_equal(empty, expected([], spec))


def test_typical_requests_never_touch_pandas(bundles, small_df, monkeypatch):
    """No derived columns and well-formed JSON: the hot path is plain Python and NumPy."""
    spec = bundles["mean_all_parts_oov"].spec
    rows = json_rows(small_df.sample(64, random_state=5))
    want = expected(rows, spec)
    enc = RowEncoder(spec)

    def no_pandas(*a, **k):
        raise AssertionError("pandas on the hot path")
    monkeypatch.setattr(rows_mod.pd, "DataFrame", no_pandas)
    monkeypatch.setattr(rows_mod, "transform", no_pandas)
    np.testing.assert_array_equal(enc.encode(rows), want)
    np.testing.assert_array_equal(enc.encode(rows[:1]), want[:1])


# --------------------------------------------------------------------------- predictions
@pytest.mark.parametrize("name", ["plain", "median_derived"])
def test_predictions_equal_bundle_predict(bundles, small_df, name):
    b = bundles[name]
    enc = RowEncoder(b.spec)
    for rows in (json_rows(small_df.sample(200, random_state=6)), small_df.head(1).to_dict("records")):
        np.testing.assert_array_equal(bundle.predict_features(b.booster, enc.encode(rows), b.spec),
                                      b.predict(pd.DataFrame(rows)))


# --------------------------------------------------------------------------- fallback
def _spec(**kw) -> FeatureSpec:
    base = dict(label="y", numeric=[NumericFeature("x")], input_types={"x": "float", "t": "datetime", "s": "string"})
    base.update(kw)
    return FeatureSpec(**base)


@pytest.mark.parametrize("spec_kw,rows,path", [
    # a categorical over a datetime input: transform stringifies Timestamps; not reproduced
    ({"categorical": [CategoricalFeature("t", ["2026-01-01 00:00:00"])]},
     [{"x": 1.0, "t": "2026-01-01"}, {"t": "2026-01-02T00:00:00Z"}, {}], "fallback"),
    # a derived column using one defined after it: transform raises, and so must the encoder
    ({"derived": [DerivedFeature("a", "b + 1"), DerivedFeature("b", "x * 2")]}, [{"x": 1.0}], "raises"),
    # control: the same small spec without a trap stays on the fast path
    ({"derived": [DerivedFeature("x2", "x * 2")], "numeric": [NumericFeature("x")],
      "datetime": [DatetimeFeature("t", ["hour"])],
      "categorical": [CategoricalFeature("s", ["a"])]}, [{"x": 2.0, "s": "a"}], "fast"),
    # a derived name that shadows an input: repeated output names, transform drops a column
    ({"derived": [DerivedFeature("x", "x * 2")]}, [{"x": 2.0}], "fallback"),
    # a bare column as an expression: transform fails writing into pandas' read-only array
    ({"derived": [DerivedFeature("d", "+x")]}, [{"x": 1.0}], "fallback"),
    ({"derived": [DerivedFeature("d", "s")]}, [{"x": 1.0, "s": 3}], "fallback"),
    # datetime parts over a numeric input
    ({"datetime": [DatetimeFeature("x", ["hour"])]}, [{"x": 2.0}], "raises"),
])
def test_specs_the_fast_path_cannot_reproduce_fall_back_to_transform(spec_kw, rows, path):
    """``path``: which way each spec goes is known, so every branch below is run by some case."""
    spec = _spec(**spec_kw)
    enc = RowEncoder(spec)
    assert enc.fast == (path == "fast"), enc.reason
    if path == "raises":                   # transform refuses: the encoder refuses the same way
        with pytest.raises(Exception) as refused:
            expected(rows, spec)
        with pytest.raises(refused.type):
            enc.encode(rows)
    elif path == "fast":                   # the control case
        check(rows, spec, enc)
    else:
        assert enc.reason
        np.testing.assert_array_equal(enc.encode(rows), expected(rows, spec))


def test_values_transform_rejects_are_rejected_too(spec, small_df):
    row = json_rows(small_df.head(1))[0]
    for bad in ({"country": "\ud800"}, {"event_time": "2300-01-01"}, {"event_time": dt.datetime(1500, 1, 1)}):
        r = dict(row, **bad)
        try:
            want = expected([r], spec)
        except Exception as e:
            with pytest.raises(type(e)):
                RowEncoder(spec).encode([r])
        else:
            np.testing.assert_array_equal(RowEncoder(spec).encode([r]), want)


# --------------------------------------------------------------------------- randomized
_M = object()      # "key absent"
_TZ2, _TZM = dt.timezone(dt.timedelta(hours=2)), dt.timezone(dt.timedelta(hours=-5, minutes=-30))
_NUM = [_M, None, 0, 1, -3, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, -(2 ** 63), 1.5, -0.0, 0.1, float("nan"),
        float("inf"), float("-inf"), True, False, "12.5", "abc", " 7 ", "", np.int64(4), 1e308]
_CAT = [_M, None, "US", "DE", "XX", "", "é", 3, 3.0, 2.5, 0, -0.0, 10 ** 20, 1e20, 2 ** 53, 2 ** 53 + 1, True,
        False, float("nan"), float("inf"), "3", "True", "nan", np.int64(3)]
_DT = [_M, None, dt.datetime(2026, 1, 3, 9, 15, 0, 123456), dt.datetime(2026, 1, 4, 23, 59),
       dt.datetime(2026, 1, 3, 1, 0, tzinfo=_TZ2), dt.datetime(2026, 3, 1, 0, 10, tzinfo=_TZM),
       dt.datetime(2026, 1, 3, 1, 0, tzinfo=dt.timezone.utc),
       dt.datetime(2026, 3, 29, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin")),
       pd.Timestamp("2026-01-03 09:15:00.123456789"), pd.Timestamp("2026-01-03 09:15:00.5", tz="UTC"),
       pd.Timestamp("2026-10-25 03:30", tz="Europe/Berlin"), pd.Timestamp("2026-01-03 09:15").as_unit("s"),
       "2026-01-03T09:15:00", "2026-01-03T09:15:00Z", "2026-01-03T01:15:00+02:00", "2026-01-03T01:15:00.123-05:30",
       "2026-01-03 09:15:00.123456789", "2026-01-03T09:15:00.123456789+01:00", "2026-01-03", "2026-01-03 23:59",
       "2026-01-03T00:30Z", "2024-02-29T12:00:00", "2026-12-31T23:59:59.999999999", "2026-01-03T09:15:00+23:59",
       "2026-02-29", "bad", "", "2026-1-3", "2026-01-03T09:15:00.", 1767258900, np.datetime64("2026-01-03T09:15")]
HAND_SPEC = FeatureSpec(
    label="y",
    numeric=[NumericFeature("n_int"), NumericFeature("n_float", fill=1.5), NumericFeature("n_bool")],
    categorical=[CategoricalFeature("c_str", ["US", "DE", "3", "2.5", "True", "False", "inf", "", "é",
                                              "100000000000000000000", "nan", "0", "1"]),
                 CategoricalFeature("c_int", ["1", "3", "0"])],
    datetime=[DatetimeFeature("t", ALL_PARTS)],
    derived=[DerivedFeature("d1", "log1p(n_float) + n_int", 0.0), DerivedFeature("d2", "t / 86400 + n_bool"),
             DerivedFeature("d3", "where(c_str == 'US', 1, isnull(c_str))"),
             DerivedFeature("d4", "d1 * 2 + (c_str != 'DE')", -1.0)],      # d4 reads d1, defined before it
    input_types={"n_int": "int", "n_float": "float", "n_bool": "bool", "c_str": "string", "c_int": "int",
                 "t": "datetime"})


@pytest.mark.parametrize("seed", [1, 2])
def test_random_mixed_batches_match_transform(seed):
    """Pandas infers each column's dtype from the whole batch, so results can depend on what else
    the batch holds: random batches mixing every kind of value, compared with transform."""
    pools = {"n_int": _NUM, "n_float": _NUM, "n_bool": _NUM, "c_str": _CAT, "c_int": _NUM, "t": _DT}
    enc = RowEncoder(HAND_SPEC)
    assert enc.fast, enc.reason
    rng = random.Random(seed)
    for _ in range(150):
        subset = {c: rng.sample(p, rng.randint(1, 4)) for c, p in pools.items()}   # homogeneous batches too
        rows = [{c: v for c, p in subset.items() if (v := rng.choice(p)) is not _M}
                for _ in range(rng.choice([1, 2, 3, 5, 9]))]
        want = expected(rows, HAND_SPEC)
        got = enc.encode(rows)
        np.testing.assert_array_equal(got, want, err_msg=repr(rows))
    assert enc.fallbacks == 0
