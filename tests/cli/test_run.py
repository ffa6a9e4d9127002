"""`mlops-ray run` as a user runs it: register, rerun from cache, gate rejection, resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mlops_ray", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    r = cli("data", "synth", "--rows", "40000", "--out", str(base / "data"), "--seed", "3", "--num-cpus", "2")
    assert r.returncode == 0, r.stderr
    return base


def sets(base, store="store", *more):
    args = ["--set", f"data.source={base / 'data'}", "--set", f"store={base / store}",
            "--set", "tune.num_samples=4", "--set", "model.num_boost_round=40"]
    for m in more:
        args += ["--set", m]
    return args


def test_register_then_cached_then_rejected(demo):
    r = cli("run", "configs/quickstart.yaml", *sets(demo))
    assert r.returncode == 0, r.stderr
    assert "registered version 1: champion" in r.stdout
    r = cli("run", "configs/quickstart.yaml", *sets(demo), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cached_steps"][-1] == "register"
    r = cli("run", "configs/quickstart.yaml", *sets(demo, "store", "gate.min.auc=0.999"), "--json")
    assert r.returncode == 4, r.stderr
    err = json.loads(r.stdout)
    assert err["error"] == "GateRejected" and "gate.min.auc" in err["message"]


def test_resume_after_the_driver_is_killed(demo):
    args = ["run", "configs/quickstart.yaml", *sets(demo, "store-resume", "tune.num_samples=6",
                                                     "model.num_boost_round=300", "tune.scheduler=none")]
    p = subprocess.Popen([sys.executable, "-m", "mlops_ray", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV, start_new_session=True)
    seen = []
    deadline = time.time() + 300
    try:
        for line in p.stderr:
            seen.append(line)
            if "trial 2/6 done" in line or time.time() > deadline:
                break
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(30)
    assert any("trial 2/6 done" in line for line in seen), "".join(seen)
    time.sleep(2)
    r = cli("run", *args[1:], "--resume", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["search"]["n_trials"] == 6
    assert out["search"]["restored"] is True
