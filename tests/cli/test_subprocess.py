"""The real command line in a fresh process with its own embedded Ray, as a user runs it."""
import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow]
RAY_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING)", re.M)


def cli(*args, timeout=300):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "mlops_ray", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_quickstart_end_to_end_with_clean_output(tmp_path):
    data = tmp_path / "demo"
    r = cli("data", "synth", "--rows", "30000", "--out", str(data), "--seed", "7", "--num-cpus", "2")
    assert r.returncode == 0, r.stderr
    store = tmp_path / "store"
    r = cli("run", "configs/quickstart.yaml", "--set", f"data.source={data}", "--set", f"store={store}")
    assert r.returncode == 0, r.stderr
    assert "splits: train" in r.stdout and "validation:" in r.stdout
    # users see our progress and results, not Ray's log lines or tracebacks
    assert not RAY_LOG_LINE.search(r.stdout + r.stderr), r.stderr
    assert "Traceback" not in r.stderr
    # the same data with a corrupt file: exit 3, file named, nothing written
    (data / "part-00009.parquet").write_bytes(b"not parquet")
    r = cli("run", "configs/quickstart.yaml", "--set", f"data.source={data}", "--set", f"store={store}",
            "--json")
    assert r.returncode == 3
    err = json.loads(r.stdout)
    assert err["error"] == "DataSourceError" and "part-00009.parquet" in err["message"]
