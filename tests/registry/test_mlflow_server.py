"""registry.py against a real `mlflow server` (SQLite backend, proxied artifacts) in a subprocess.

The same flow as tests/registry/test_registry.py, over HTTP: register, move aliases, load a
bundle back through the server's artifact proxy, and the errors when things are missing.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from mlops_ray.registry.bundle import dmatrix
from mlops_ray.config import RegistryConfig
from mlops_ray.errors import RegistryError
from mlops_ray.registry import Registry
from tests.support.ci import missing
from tests.registry.test_registry import breast_cancer, train_bundle

pytestmark = [pytest.mark.slow]
START_TIMEOUT_S = 120          # a cold server runs its DB migrations first; ~10 s idle, more on a busy box


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """URL of a fresh `mlflow server` on a free loopback port; stopped (whole process group) at teardown."""
    cli = subprocess.run([sys.executable, "-m", "mlflow", "server", "--help"], capture_output=True, timeout=60)
    if cli.returncode != 0:
        missing(f"the mlflow server CLI is not usable in this environment: {cli.stderr.decode()[-300:]}")
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "art")],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(url):
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{(root / 'server.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {START_TIMEOUT_S} s:\n"
                            f"{(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, root / "art"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)         # uvicorn and its workers share our new session
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def test_register_alias_and_load_through_the_server(mlflow_server, tmp_path, capfd):
    url, artifacts = mlflow_server
    rows = breast_cancer()
    path, booster, spec = train_bundle(str(tmp_path / "bundle"), rows)
    reg = Registry(RegistryConfig(tracking_uri=url, model_name="fraud"), str(tmp_path / "store"), "e2e")
    reg.check_reachable(timeout_s=5)
    assert reg.get_alias("champion") is None and reg.champion() is None

    versions = []
    for i in range(2):
        with reg.start_run(f"pipeline-{i}", tags={"attempt": i}) as run:
            run.log_params({"model": {"eta": 0.1, "max_depth": 3}})
            run.log_metrics({"auc": 0.97, "nan": float("nan")})
            run.child_run("trial_0", {"eta": 0.1}, {"auc": 0.96})
            versions.append(reg.register(run, path, tags={"attempt": i}))
        assert run.artifact_uri.startswith("mlflow-artifacts:")            # proxied by the server
    assert versions == ["1", "2"] and reg.get_alias("challenger") == "2"
    assert any(f == "model.ubj" for _, _, files in os.walk(artifacts) for f in files)

    reg.set_alias("champion", "1")
    reg.tag_version("1", "gate", "passed")
    assert reg.version_tags("1") == {"attempt": "0", "gate": "passed"}
    expected = booster.predict(dmatrix(rows[spec.input_columns], spec))
    version, champ = reg.champion()
    assert version == "1"
    np.testing.assert_array_equal(champ.predict(rows.drop(columns="target")), expected)
    assert reg.load_bundle("models:/fraud@challenger").path != champ.path
    np.testing.assert_array_equal(reg.load_bundle("2").predict(rows.head(5)), expected[:5])

    with pytest.raises(RegistryError, match=r"model 'fraud' has no alias 'staging'"):
        reg.load_bundle("staging")
    with pytest.raises(RegistryError, match=rf"no registered model 'nobody' at {url}"):
        reg.load_bundle("models:/nobody/1")

    # a version whose artifacts were deleted on the server side
    with reg.start_run("pipeline-3") as run:
        version = reg.register(run, path)
    reg.set_alias("champion", version)
    shutil.rmtree(artifacts / run.artifact_uri.split("mlflow-artifacts:/", 1)[1].strip("/") / "bundle")
    with pytest.raises(RegistryError, match=rf"alias 'champion' of model 'fraud' points to version {version}, "
                                            r"which .*re-run the pipeline or move the alias"):
        reg.load_bundle("champion")

    out, err = capfd.readouterr()      # MLflow's console noise stays quiet in our process
    assert "INFO" not in err and "Downloading artifacts" not in err and "View run" not in out + err, err
