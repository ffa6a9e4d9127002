"""serve/control.py's probes of local ports, against listeners that are not our app."""
from mlops_ray.serve.control import endpoints, port_holder
from tests.conftest import make_config


def test_endpoints_skip_a_port_that_does_not_speak_http(not_http_port):
    # a Ray gRPC port can land among the replicas' direct-ingress ports: scanning must pass over it
    cfg = make_config("data.parquet", serve={"port": not_http_port - 1, "direct_ingress": True})
    out = endpoints(cfg)
    assert out["direct"] == []
    assert out["url"] == f"http://127.0.0.1:{not_http_port - 1}/predict"


def test_port_holder_names_a_listener_that_is_not_http(not_http_port):
    assert port_holder("127.0.0.1", not_http_port) == "another process"
