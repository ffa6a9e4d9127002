"""Typed pipeline configuration: YAML in, frozen pydantic v2 models out.

``load_config(path, overrides)`` is the only place a config file is read; everything downstream
receives a ``Config``. Errors name the key path (or the ``--set`` override the problem comes
from), the bad value and the fix.

- ``models.py``: the sections (``DataConfig``, ``TuneConfig``, ...) and ``Config`` holding them.
- ``load.py``: YAML, ``--set`` overrides, ``${ENV}`` references and literal secrets.
- ``messages.py``: pydantic's errors worded for a user, with "did you mean".
- ``dateformat.py``: what a date format reads (``check_format``) and the one parse with it.
"""
from mlops_ray.config.load import SECRET_NAME, config_from_dict, literal_secrets, load_config
from mlops_ray.config.models import (
    AutoscalingConfig, ColumnRule, Config, CsvOptions, DataConfig, DatetimePart, DomainClassifierConfig, DType,
    FeaturesConfig, FreshnessRule, GateConfig, ModelConfig, MonitorConfig, RayConfig, RegistryConfig,
    RetrainConfig, RolloutConfig, SchemaConfig, SearchParam, ServeConfig, SplitConfig, ThresholdSpec, TuneConfig,
    json_schema, parse_duration)

__all__ = [
    "AutoscalingConfig", "ColumnRule", "Config", "CsvOptions", "DataConfig", "DatetimePart",
    "DomainClassifierConfig", "DType", "FeaturesConfig", "FreshnessRule", "GateConfig", "ModelConfig",
    "MonitorConfig", "RayConfig", "RegistryConfig", "RetrainConfig", "RolloutConfig", "SECRET_NAME",
    "SchemaConfig", "SearchParam", "ServeConfig", "SplitConfig", "ThresholdSpec", "TuneConfig",
    "config_from_dict", "json_schema", "literal_secrets", "load_config", "parse_duration",
]
