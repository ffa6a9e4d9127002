"""The lifecycle on Google Cloud Storage: `store: gs://...` against a storage emulator
(gcp-storage-emulator on 127.0.0.1, reached through STORAGE_EMULATOR_HOST, the variable Google's
clients read) with a real `mlflow server`. run -> deploy -> answers -> serve stop -> every answer
is in the bucket's prediction log -> monitor writes its report there. Every byte goes through
pyarrow's GcsFileSystem over HTTP, in the driver, Ray Data's workers, Tune's trials and the Serve
replica (they inherit the variable from the head `deploy` starts). MLflow keeps its artifacts on
local disk here: its gs:// artifact store needs google-cloud-storage, which the project does not
ship. What a user gets wrong (no credentials, a missing bucket) is named before any work.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.ci import missing
from tests.support.configs import write_parquet
from tests.registry.test_mlflow_server import free_port, healthy
from tests.storage.test_s3 import _listening, _stop, _wait, cli, lifecycle_config, shifted_rows
from tests.support.http_load import request_rows

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "mlops"
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator (in memory, bucket created) and an MLflow server, both on free loopback ports."""
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        missing("gcp-storage-emulator (a dev dependency) is not installed")
    root = tmp_path_factory.mktemp("gcs")
    port = free_port()
    env = {**os.environ, "STORAGE_EMULATOR_HOST": f"127.0.0.1:{port}", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": str(ROOT)}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    procs = []
    try:
        log = root / "emulator.log"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
             "--in-memory", "--default-bucket", BUCKET], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
            env=env, start_new_session=True))
        _wait(lambda: _listening(port), "storage emulator", procs[-1], log)
        mport = free_port()
        mlog = root / "mlflow.log"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mport), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "mlart")],
            stdout=open(mlog, "wb"), stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True))
        _wait(lambda: healthy(f"http://127.0.0.1:{mport}"), "mlflow server", procs[-1], mlog)
        yield {"env": env, "port": port, "tracking": f"http://127.0.0.1:{mport}", "root": root}
    finally:
        for p in reversed(procs):
            _stop(p)


@pytest.fixture(scope="module")
def pipeline(gcs, small_df, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gcspipe")
    data = write_parquet(small_df, tmp / "data", parts=2)
    port = free_port()
    cfg = tmp / "gcs.yaml"
    cfg.write_text(yaml.safe_dump(lifecycle_config("gcspipe", f"gs://{BUCKET}/store", gcs["tracking"], data, port)))
    # amounts far above any the model was trained on: the monitor's verdict is known (drift in amount)
    return {"cfg": str(cfg), "port": port, "rows": shifted_rows(request_rows(small_df, 60), 60)}


def _fs(gcs):
    from pyarrow import fs as pafs
    return pafs.GcsFileSystem(anonymous=True, endpoint_override=f"127.0.0.1:{gcs['port']}", scheme="http")


def test_run_deploy_log_and_monitor_on_gcs(gcs, pipeline):
    import urllib.request
    cfg = pipeline["cfg"]
    r = cli(gcs, "run", cfg, check=0)
    assert f"written to gs://{BUCKET}/store/gcspipe/data/" in r.stdout, r.stdout[-2000:]
    fs = _fs(gcs)
    from pyarrow import fs as pafs
    keys = [i.path for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/store/gcspipe", recursive=True))]
    # the featurized splits (Ray Data's writers) and the search (Tune's storage) are in the bucket
    assert any("/features/split=train/" in k for k in keys) and any("/runs/" in k and "/tune/" in k for k in keys), \
        keys[:30]
    answered = []
    try:
        cli(gcs, "deploy", cfg, check=0)
        state = json.loads(fs.open_input_stream(f"{BUCKET}/store/gcspipe/serving/state.json").read())
        assert state["stable"] == "1"
        for row in pipeline["rows"]:
            req = urllib.request.Request(f"http://127.0.0.1:{pipeline['port']}/predict", data=json.dumps(row).encode(),
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                answered.append(json.loads(resp.read())["request_id"])
    finally:
        cli(gcs, "serve", "stop", cfg, timeout=180)
    import pyarrow.dataset as pads
    logged = pads.dataset(f"{BUCKET}/store/gcspipe/predlog", filesystem=fs, format="parquet",
                          partitioning="hive").to_table(columns=["request_id"])
    assert len(answered) == len(pipeline["rows"])
    assert set(answered) <= set(logged.column("request_id").to_pylist())     # every answer logged in the bucket
    # 60 rows: under monitor.min_rows (100) every column would be 'insufficient' and the exit 0
    m = cli(gcs, "monitor", cfg, "--since", "2h", "--json", "--set", "monitor.min_rows=50")
    assert m.returncode == 9, m.stderr[-2000:]
    assert "amount" in json.loads(m.stdout)["drifted"]
    report = json.loads(fs.open_input_stream(f"{BUCKET}/store/gcspipe/monitor/latest.json").read())
    assert report["window"]["rows"] == len(answered) and report["pipeline"] == "gcspipe"
    assert report["drift"] and "amount" in report["drifted"]


def test_no_credentials_are_named_at_once(gcs, pipeline, tmp_path):
    """Without the emulator variable and with no credentials anywhere, pyarrow would retry the
    token request for 15 minutes; the run stops at once, exit 2, naming the variables to set."""
    env = {k: v for k, v in gcs["env"].items() if k != "STORAGE_EMULATOR_HOST"}
    env.update(CLOUDSDK_CONFIG=str(tmp_path), GCE_METADATA_HOST="metadata.invalid")
    p = cli(gcs, "run", pipeline["cfg"], env=env, check=2, timeout=120)
    assert "no Google Cloud credentials are set" in p.stderr and "GOOGLE_APPLICATION_CREDENTIALS" in p.stderr
    assert "STORAGE_EMULATOR_HOST" in p.stderr


def test_a_missing_bucket_is_named(gcs, pipeline):
    p = cli(gcs, "run", pipeline["cfg"], "--set", "store=gs://no-such-bucket/store", check=2, timeout=120)
    assert "bucket 'no-such-bucket' does not exist" in p.stderr
    assert "gcloud storage buckets create gs://no-such-bucket" in p.stderr
