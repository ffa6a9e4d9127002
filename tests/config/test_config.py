import json
import logging

import pytest
import yaml

from mlops_ray.config import config_from_dict, json_schema, load_config, parse_duration
from mlops_ray.errors import ConfigError, ExitCode
from tests.support.configs import base_raw

pytestmark = pytest.mark.unit


def check(raw) -> str:
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert e.value.exit_code == ExitCode.CONFIG
    return str(e.value)


def test_quickstart_is_valid():
    cfg = load_config("configs/quickstart.yaml")
    assert cfg.name == "fraud-quickstart"
    assert cfg.schema_.columns["amount"].min == 0
    assert cfg.serve.host == "127.0.0.1"


def test_config_is_frozen():
    cfg = config_from_dict(base_raw("x"))
    with pytest.raises(Exception):
        cfg.name = "other"


@pytest.mark.parametrize("raw, expected", [
    ({**base_raw("x"), "raay": {}}, "raay: unknown key; did you mean 'ray'?"),
    (base_raw("x", data={"sorce": "y"}), "data.sorce: unknown key; did you mean 'source'?"),
    (base_raw("x", schema={"columns": {"amount": {"mni": 1}}}),
     "schema.columns.amount.mni: unknown key; did you mean 'min'?"),
    (base_raw("x", data={"split": {"valid_fraction": "lots"}}),
     "data.split.valid_fraction: Input should be a valid number"),
    (base_raw("x", tune={"num_samples": "many"}), "tune.num_samples: Input should be a valid integer"),
    (base_raw("x", schema={"columns": {"amount": {"min": 10, "max": 1}}}),
     "schema.columns.amount: min (10) is greater than max (1); swap them"),
    (base_raw("x", data={"split": {"valid_fraction": 0.5, "test_fraction": 0.5}}),
     "leaves no training rows"),
    (base_raw("x", data={"split": {"method": "time"}, "time_column": None}),
     "split.method is 'time' but data.time_column is not set"),
    (base_raw("x", tune={"space": {"eta": {"type": "float", "low": 1, "high": 0.1}}}),
     "tune.space.eta: low (1) must be smaller than high (0.1)"),
    (base_raw("x", tune={"space": {"eta": {"type": "log_float", "low": 0, "high": 1}}}),
     "tune.space.eta: a log range must be positive"),
    (base_raw("x", tune={"space": {"booster": {"type": "choice", "values": []}}}),
     "tune.space.booster: a 'choice' parameter needs a non-empty 'values' list"),
    (base_raw("x", features={"derived": {"x": "__import__('os')"}}), "function '__import__' is not allowed"),
    (base_raw("x", rollout={"steps": [50, 10]}), "must be increasing percentages"),
    (base_raw("x", serve={"autoscaling": {"min_replicas": 3, "max_replicas": 1}}),
     "min_replicas (3) is greater than max_replicas (1)"),
    ({"data": {"source": "x", "label": "y"}}, "name: required key is missing; add it"),
    (base_raw("x", schema={"freshness": {"max_age": "soon"}}), "duration 'soon' is not understood"),
])
def test_bad_config_names_key_and_fix(raw, expected):
    assert expected in check(raw)


def test_every_problem_is_reported_at_once():
    msg = check({**base_raw("x"), "raay": {}, "tune": {"num_samples": 0}})
    assert "2 problems" in msg and "raay" in msg and "tune.num_samples" in msg


def test_missing_and_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(empty)


def test_overrides_are_validated_like_the_file():
    cfg = load_config("configs/quickstart.yaml", {"tune.num_samples": 3})
    assert cfg.tune.num_samples == 3
    with pytest.raises(ConfigError, match="tune.num_samples"):
        load_config("configs/quickstart.yaml", {"tune.num_samples": -1})


def test_json_schema_has_every_section():
    schema = json_schema()
    for key in ("name", "ray", "data", "schema", "features", "model", "tune", "gate", "registry",
                "serve", "rollout", "monitor", "retrain"):
        assert key in schema["properties"], key
    json.dumps(schema)


def test_durations():
    assert parse_duration("36h") == 36 * 3600
    assert parse_duration("1.5d") == 1.5 * 86400
    with pytest.raises(ValueError, match="unit"):
        parse_duration("10 parsecs")


def test_a_config_still_setting_a_removed_key_loads_and_says_to_delete_it(tmp_path, caplog):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(base_raw("x", monitor={"ks_pvalue": 0.05, "alpha": 0.02})))
    with caplog.at_level(logging.WARNING, logger="mlops_ray.config"):
        cfg = load_config(path)
    assert cfg.monitor.alpha == 0.02 and "ks_pvalue" not in cfg.model_dump()["monitor"]
    assert caplog.messages == [f"{path}: monitor.ks_pvalue is ignored since drift thresholds are calibrated per "
                               "field (monitor.method, monitor.alpha); delete the line"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlops_ray.config"):
        load_config("configs/quickstart.yaml", {"monitor.ks_pvalue": 0.05})
    assert caplog.messages == ["--set monitor.ks_pvalue=0.05: monitor.ks_pvalue is ignored since drift thresholds "
                               "are calibrated per field (monitor.method, monitor.alpha); drop the --set"]
