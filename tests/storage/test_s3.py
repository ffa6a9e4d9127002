"""The whole lifecycle on an object store: `store: s3://...` against a real S3-compatible server
(moto's standalone server on 127.0.0.1) with a real `mlflow server` whose artifacts also live in
that bucket. run -> second run -> deploy -> rollout under load -> serve stop -> the prediction
log in the bucket holds every answered request -> monitor reads it back. No mock of our code:
every byte goes through pyarrow's S3FileSystem (and MLflow's boto3) over HTTP.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.ci import missing
from tests.support.configs import write_parquet
from tests.registry.test_mlflow_server import free_port, healthy

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "mlops"
pytestmark = [pytest.mark.slow]


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not up after {timeout_s:g} s:\n{log.read_text()[-2000:]}")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """Environment for processes that use the bucket: moto's server on a free loopback port, the
    bucket created, and an MLflow server storing its artifacts in the same bucket."""
    if importlib.util.find_spec("moto") is None:
        missing("moto[server] (a dev dependency) is not installed")
    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint,
           "AWS_EC2_METADATA_DISABLED": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    procs = []
    try:
        log = root / "moto.log"
        procs.append(subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                      stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))
        _wait(lambda: _listening(port), "moto server", procs[-1], log)
        import boto3
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        mport = free_port()
        mlog = root / "mlflow.log"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mport), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination",
             f"s3://{BUCKET}/mlflow"], stdout=open(mlog, "wb"), stderr=subprocess.STDOUT, env=env, cwd=root,
            start_new_session=True))
        _wait(lambda: healthy(f"http://127.0.0.1:{mport}"), "mlflow server", procs[-1], mlog)
        yield {"env": env, "endpoint": endpoint, "tracking": f"http://127.0.0.1:{mport}", "root": root}
    finally:
        for p in reversed(procs):
            _stop(p)


def cli(s3, *args, timeout=420, check=None, env=None):
    p = subprocess.run([sys.executable, "-m", "mlops_ray.cli", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=env or s3["env"])
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    return p


def lifecycle_config(name: str, store: str, tracking: str, data, port: int, num_cpus: int = 2, **extra) -> dict:
    """A small pipeline on an object store: quick search, one replica, fast log flushes."""
    return {"name": name, "store": store, "registry": {"tracking_uri": tracking}, "ray": {"num_cpus": num_cpus},
            "data": {"source": str(data), "label": "is_fraud", "id_column": "transaction_id",
                     "time_column": "event_time"},
            "schema": {"min_rows": 100}, "tune": {"num_samples": 2}, "model": {"num_boost_round": 20},
            "gate": {"min": {"auc": 0.5}}, "serve": {"port": port, "num_replicas": 1, "num_cpus": 0.5},
            "monitor": {"predlog_flush_rows": 200, "predlog_flush_s": 1}, **extra}


@pytest.fixture(scope="module")
def pipeline(s3, small_df, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s3pipe")
    data = write_parquet(small_df, tmp / "data", parts=2)
    port = free_port()
    cfg = tmp / "s3.yaml"
    cfg.write_text(yaml.safe_dump(lifecycle_config(
        "s3pipe", f"s3://{BUCKET}/store", s3["tracking"], data, port, num_cpus=4,
        rollout={"steps": [50, 100], "min_requests": 40, "min_seconds": 1, "keep_previous_s": 60,
                 "max_p99_latency_ratio": 1000.0, "p99_floor_ms": 200})))     # latency: see test_serving.py
    rows = small_df.drop(columns=["is_fraud"]).head(100).copy()
    rows["event_time"] = rows["event_time"].astype(str)
    rows = rows.astype(object).where(rows.notna(), None).to_dict("records")
    return {"cfg": str(cfg), "port": port, "rows": rows}


def shifted_rows(rows: list[dict], n: int) -> list[dict]:
    """``n`` request bodies whose amount is 50x + 2000 (the synthetic amounts stay under ~1200)."""
    return [{**rows[i % len(rows)], "amount": (rows[i % len(rows)]["amount"] or 1.0) * 50 + 2000}
            for i in range(n)]


class Load(threading.Thread):
    def __init__(self, url: str, rows: list[dict]):
        super().__init__(daemon=True)
        self.url, self.rows, self.stop, self.answered, self.failed = url, rows, threading.Event(), [], []

    def run(self):
        i = 0
        while not self.stop.is_set():
            body = json.dumps(self.rows[i % len(self.rows)]).encode()
            req = urllib.request.Request(self.url, data=body, headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    self.answered.append(json.loads(r.read())["request_id"])
            except Exception as e:      # noqa: BLE001 - counted, asserted below
                self.failed.append(repr(e))
            i += 1


def _fs(s3):
    from pyarrow import fs as pafs
    return pafs.S3FileSystem(endpoint_override=s3["endpoint"], access_key="test", secret_key="test",
                             region="us-east-1", scheme="http")


def test_run_deploy_rollout_log_and_monitor_on_s3(s3, pipeline):
    cfg = pipeline["cfg"]
    cli(s3, "run", cfg, check=0)
    fs = _fs(s3)
    from pyarrow import fs as pafs
    keys = [i.path for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/store/s3pipe", recursive=True))]
    assert any("/data/" in k for k in keys) and any("/runs/" in k for k in keys), keys[:20]
    try:
        cli(s3, "deploy", cfg, check=0)
        state = json.loads(fs.open_input_stream(f"{BUCKET}/store/s3pipe/serving/state.json").read())
        assert state["stable"] == "1"
        p = cli(s3, "run", cfg, "--set", "tune.seed=7", "--set", "model.num_boost_round=25", "--json")
        assert p.returncode in (0, 4), p.stderr[-2000:]       # v2 registered (passed or rejected by the gate)
        load = Load(f"http://127.0.0.1:{pipeline['port']}/predict", pipeline["rows"])
        load.start()
        try:
            p = cli(s3, "rollout", cfg, "--version", "2", "--force", check=0)
        finally:
            load.stop.set()
            load.join(timeout=30)
        assert "promoted" in (p.stdout + p.stderr).lower()
        assert load.answered and not load.failed, load.failed[:3]
        st = cli(s3, "status", cfg, "--json", check=0)
        assert json.loads(st.stdout)["state"]["stable"] == "2"
        # then 150 requests whose amount is far above any the model was trained on: the monitor's
        # verdict on this window is known (drift, in amount) whatever the rollout's traffic was
        for row in shifted_rows(pipeline["rows"], 150):
            req = urllib.request.Request(f"http://127.0.0.1:{pipeline['port']}/predict",
                                         data=json.dumps(row).encode(), headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                load.answered.append(json.loads(r.read())["request_id"])
    finally:
        cli(s3, "serve", "stop", cfg, timeout=180)
    import pyarrow.dataset as pads
    logged = pads.dataset(f"{BUCKET}/store/s3pipe/predlog", filesystem=fs, format="parquet",
                          partitioning="hive").to_table(columns=["request_id"])
    assert set(load.answered) <= set(logged.column("request_id").to_pylist())   # every answered request logged
    m = cli(s3, "monitor", cfg, "--since", "2h", "--json")
    assert m.returncode == 9, m.stderr[-2000:]                      # drift, and the report written anyway
    assert "amount" in json.loads(m.stdout)["drifted"]
    report = json.loads(fs.open_input_stream(f"{BUCKET}/store/s3pipe/monitor/latest.json").read())
    assert report["window"]["rows"] >= len(load.answered) and report["pipeline"] == "s3pipe"
    assert report["drift"] and "amount" in report["drifted"]


def test_a_bucket_that_does_not_exist_is_named_before_any_work(s3, pipeline):
    p = cli(s3, "run", pipeline["cfg"], "--set", "store=s3://no-such-bucket/store", check=2)
    assert "bucket 'no-such-bucket' does not exist" in p.stderr and "aws s3 mb" in p.stderr


def test_missing_credentials_are_named(s3, pipeline):
    env = {k: v for k, v in s3["env"].items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    p = cli(s3, "deploy", pipeline["cfg"], env={**env, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}, check=2)
    assert "no credentials are set" in p.stderr and "AWS_ACCESS_KEY_ID" in p.stderr
