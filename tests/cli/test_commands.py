"""The CLI in-process (sharing the session's Ray): exit codes, JSON output, messages."""
import json

import pytest
import yaml
from typer.testing import CliRunner

from mlops_ray.cli import app
from tests.support.configs import base_raw, write_parquet

pytestmark = pytest.mark.ray

runner = CliRunner()


def write_cfg(tmp_path, source, **sections):
    raw = base_raw(str(source), **sections)
    raw["store"] = str(tmp_path / "store")
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def test_config_check_ok_and_bad(tmp_path, parquet_dir):
    ok = runner.invoke(app, ["config", "check", write_cfg(tmp_path, parquet_dir), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"] is True
    bad = write_cfg(tmp_path, parquet_dir, tune={"num_sampels": 3})
    r = runner.invoke(app, ["config", "check", bad])
    assert r.exit_code == 2
    assert "tune.num_sampels: unknown key; did you mean 'num_samples'?" in r.stderr


def test_config_schema_is_json():
    r = runner.invoke(app, ["config", "schema"])
    assert r.exit_code == 0 and "properties" in json.loads(r.stdout)


def test_features_json(tmp_path, parquet_dir):
    r = runner.invoke(app, ["features", write_cfg(tmp_path, parquet_dir), "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["validation"]["passed"] and sum(out["split_rows"].values()) == 4000
    assert out["features"]["output_columns"]


def test_validate_failure_exit_3_and_message(tmp_path, small_df):
    src = write_parquet(small_df.assign(amount=-1.0), tmp_path / "neg")
    cfg = write_cfg(tmp_path, src, schema={"columns": {"amount": {"min": 0}}})
    r = runner.invoke(app, ["validate", cfg])
    assert r.exit_code == 3
    assert "column 'amount' has 4,000 value(s) outside [0, ]" in r.stderr
    assert "Traceback" not in r.stderr
    j = runner.invoke(app, ["validate", cfg, "--json"])
    assert j.exit_code == 3 and json.loads(j.stdout)["report"]["passed"] is False


def test_nonexistent_path_exit_3(tmp_path):
    r = runner.invoke(app, ["validate", write_cfg(tmp_path, tmp_path / "nowhere")])
    assert r.exit_code == 3 and "does not exist; check data.source" in r.stderr


def test_set_override(tmp_path, parquet_dir):
    r = runner.invoke(app, ["validate", write_cfg(tmp_path, parquet_dir), "--set", "data.label=nope"])
    assert r.exit_code == 3 and "column 'nope' (named in data.label) is missing" in r.stderr


def test_data_synth(tmp_path):
    out = tmp_path / "synth"
    r = runner.invoke(app, ["data", "synth", "--rows", "20000", "--out", str(out), "--rows-per-file", "5000",
                            "--drift", "label", "--json"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["rows"] == 20000 and rep["files"] == 4
    again = runner.invoke(app, ["data", "synth", "--rows", "10", "--out", str(out)])
    assert again.exit_code == 3 and "is not empty; pass --overwrite" in again.stderr
    bad = runner.invoke(app, ["data", "synth", "--rows", "10", "--out", str(out), "--drift", "sideways"])
    assert bad.exit_code == 2 and "--drift 'sideways'" in bad.stderr


def test_validate_reads_text_dates_and_names_an_unreadable_one(tmp_path):
    """`validate` on a weather export with 12/31/2012 dates: the inferred format is printed; a
    value written another way fails it (exit 3) naming the value, its row and the fix."""
    from tests.data.test_dates import weather
    df = weather(300)
    path = tmp_path / "weatherAUS.csv"
    df.to_csv(path, index=False)
    data = {"label": "RainTomorrow", "time_column": "Date", "id_column": None, "split": {"method": "time"}}
    r = runner.invoke(app, ["validate", write_cfg(tmp_path, path, data=data)])
    assert r.exit_code == 0, r.output
    assert "column 'Date' read as date-times with format '%m/%d/%Y', inferred from 300 values" in r.stdout
    df.loc[41, "Date"] = "Feb 11 2012"
    df.to_csv(path, index=False)
    r = runner.invoke(app, ["validate", write_cfg(tmp_path, path, data=data)])
    assert r.exit_code == 3 and "a bug" not in r.output
    assert ("column 'Date' has 1 value(s) that the format '%m/%d/%Y' inferred from the first 300 values does not "
            "read, e.g. 'Feb 11 2012' at weatherAUS.csv row 42 (line 43); set data.datetime_formats") in \
        " ".join(r.stderr.split())
