"""serve/control.py's probes of local ports, against listeners that are not our app; and
`rollout promote` by hand, which changes only the serving state and the registry (no Ray)."""
import time

import pytest
from typer.testing import CliRunner

from mlops_ray.cli import app
from mlops_ray.serve import rollout as ro
from mlops_ray.serve.endpoints import endpoints, ordered_addresses, port_holder
from mlops_ray.storage.state import ServingState, read_state, state_path, write_state
from tests.support.configs import config_file, make_config

pytestmark = pytest.mark.unit


def test_endpoints_skip_a_port_that_does_not_speak_http(not_http_port):
    # a Ray gRPC port can land among the replicas' direct-ingress ports: scanning must pass over it
    cfg = make_config("data.parquet", serve={"port": not_http_port - 1, "direct_ingress": True})
    out = endpoints(cfg)
    assert out["direct"] == []
    assert out["url"] == f"http://127.0.0.1:{not_http_port - 1}/predict"


def test_port_holder_names_a_listener_that_is_not_http(not_http_port):
    assert port_holder("127.0.0.1", not_http_port) == "another process"


@pytest.fixture
def replica_port():
    """A loopback HTTP server answering /healthz as a replica of pipeline 'x' does on its own port."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"replica": "r1", "pipeline": "x"}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_the_replicas_own_port_is_listed_before_the_proxy(replica_port):
    """Serve's proxy reaches a tenth of a replica's own port: the fastest address comes first."""
    cfg = make_config("data.parquet", name="x", serve={"port": replica_port - 1, "direct_ingress": True})
    out = endpoints(cfg)
    direct = f"http://127.0.0.1:{replica_port}/predict"
    assert out["direct"] == [direct]
    assert [a["url"] for a in out["addresses"]] == [direct, out["url"]]
    assert [a["kind"] for a in out["addresses"]] == ["direct", "proxy"]
    assert "a tenth" in out["addresses"][1]["note"]


def test_with_haproxy_the_serve_port_leads_and_without_replica_ports_the_proxy_is_all():
    both = ordered_addresses("http://h:8000/predict", ["http://h:8001/predict"], "haproxy")
    assert [a["kind"] for a in both] == ["haproxy", "direct"]
    alone = ordered_addresses("http://h:8000/predict", [], "proxy")
    assert [(a["url"], a["kind"]) for a in alone] == [("http://h:8000/predict", "proxy")]
    assert "tenth" not in alone[0]["note"]


def test_rollout_promote_ends_a_canary_by_hand(bundle_dir, tmp_path):
    path, cfg, reg = config_file(tmp_path / "p.yaml", tmp_path / "store")
    for _ in range(2):
        with reg.start_run("r") as run:
            reg.register(run, bundle_dir)
    reg.set_alias("champion", "1")
    runner = CliRunner()
    nothing = runner.invoke(app, ["rollout", "promote", str(path)])
    assert nothing.exit_code == 8 and "nothing is deployed for 't'; run `mlops-ray deploy CONFIG` first" in nothing.stderr
    spath = state_path(cfg.store, cfg.name)
    write_state(spath, ro.start(ServingState(name=reg.model_name, stable="1"), "2", cfg.rollout, now=time.time(),
                                baseline={}))
    r = runner.invoke(app, ["rollout", "promote", str(path)])
    assert r.exit_code == 0, r.output
    assert "version 2 promoted to champion" in r.stdout
    s = read_state(spath)
    assert (s.phase, s.stable, s.previous, s.canary, s.weight) == ("PROMOTED", "2", "1", None, 0.0)
    assert s.reason == "promoted by hand" and s.history[-1]["event"] == "promoted"
    assert reg.get_alias("champion") == "2" and reg.version_tags("2")["rollout"] == "promoted"
    again = runner.invoke(app, ["rollout", "promote", str(path)])
    assert again.exit_code == 8 and "no canary to promote (PROMOTED, stable version 2)" in again.stderr
    assert read_state(spath).revision == s.revision                   # the refusal wrote nothing
