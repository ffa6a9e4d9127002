"""config/load.py: ${ENV} references, and credentials kept out of what serving is sent."""
from __future__ import annotations

import pytest
import yaml

from mlops_ray.config import config_from_dict, literal_secrets
from mlops_ray.errors import ConfigError
from mlops_ray.serve import control

pytestmark = pytest.mark.unit

BASE = {"name": "p", "data": {"source": "x", "label": "y"}}


def test_env_references_are_expanded_and_stay_references_for_serve(monkeypatch):
    monkeypatch.setenv("MLF_PASS", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    cfg = config_from_dict({**BASE, "registry": {"tracking_uri": "http://me:${MLF_PASS}@mlflow:5000"},
                            "ray": {"runtime_env": {"env_vars": {"AWS_SECRET_ACCESS_KEY": "${AWS_SECRET_ACCESS_KEY}",
                                                                 "REGION": "${REGION:-eu-west-1}"}}}})
    assert cfg.registry.tracking_uri == "http://me:hunter2@mlflow:5000"
    assert cfg.ray.runtime_env["env_vars"]["REGION"] == "eu-west-1"
    args = control._config_dict(cfg)                     # what Serve publishes and `serve build` writes
    text = yaml.safe_dump(args)
    assert "hunter2" not in text and "s3cr3t" not in text
    assert args["registry"]["tracking_uri"] == "http://me:${MLF_PASS}@mlflow:5000"
    assert config_from_dict(args).registry.tracking_uri == "http://me:hunter2@mlflow:5000"   # the replica's view


def test_a_missing_env_variable_names_the_key_and_the_fix(monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(ConfigError, match=r"registry.tracking_uri refers to \$\{NOPE\}, which is not set.*export NOPE="):
        config_from_dict({**BASE, "registry": {"tracking_uri": "${NOPE}"}})


def test_credentials_written_into_the_config_are_refused_for_serve():
    cfg = config_from_dict({**BASE, "registry": {"tracking_uri": "http://me:pw@mlflow:5000"},
                            "ray": {"runtime_env": {"env_vars": {"HF_TOKEN": "abc", "LOG_LEVEL": "info"}}}})
    assert literal_secrets(cfg) == ["ray.runtime_env.env_vars.HF_TOKEN", "registry.tracking_uri"]
    with pytest.raises(ConfigError, match=r"HF_TOKEN, registry.tracking_uri hold a credential.*\$\{AWS_SECRET"):
        control._config_dict(cfg)
