"""`mlops-ray run` against a 2-node Ray cluster (head + one worker on this host, 2 CPUs each).

What is asserted comes from the product's own output: the tuning summary of the run
(``search.nodes``, ``search.worker_nodes``, ``search.retried``; also in the store's
``runs/<key>/registered.json``), compared with the node ids the cluster's nodes have.

CPU budget (4 logical CPUs in all): ``single`` trials take 1 CPU each, so 4 run at once (2 per
node, the 2-CPU head fills first); a ``distributed`` trial takes 0.5 CPU plus one per Train worker
(2), which leaves 1.5 CPUs for Ray Data's reads of the shards (docs/architecture.md: Tune + Train + Data
deadlock when nothing is left for Data). The store is an absolute local path: both nodes are on
this host, so both see it. The node-loss test runs last (the worker node stays dead).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.support.configs import write_parquet

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
FINISHED = re.compile(r"trial \d+/\d+ done")      # the search's progress line for a finished trial (piped)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """30k synthetic rows (the product's generator, written without Ray) and a store, shared by the
    tests: the data steps run once, later runs reuse them from the store's cache."""
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    base = tmp_path_factory.mktemp("cluster")
    write_parquet(generate_chunk(SynthSpec(rows=30_000, seed=5), 0, 30_000), base / "data", parts=2)
    return base


def config(work: Path, cluster, model_name: str, model: dict, tune: dict) -> str:
    """configs/quickstart.yaml pointed at the cluster, the test data and the shared store."""
    raw = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    raw.update(name="cl", store=str(work / "store"))
    raw["ray"] = {"address": cluster.address, "include_dashboard": False}
    raw["data"]["source"] = str(work / "data")
    raw["model"].update({"strategy": "single", **model})
    raw["tune"].update(tune)
    raw["gate"] = {"min": {"auc": 0.5}}
    raw["registry"] = {"model_name": model_name}
    path = work / f"{model_name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def cli(cluster, *args, timeout=400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlops_ray", *args], capture_output=True, text=True,
                          timeout=timeout, env=cluster.env, cwd=ROOT)


def json_doc(stdout: str) -> dict:
    """The --json document. A driver on a cluster also gets the raylets' warnings ("(raylet) WARNING:
    8 PYTHON worker processes have been started ...") and Ray prints them on stdout, before it."""
    m = re.search(r"^\{$", stdout, re.M)
    assert m, stdout[-3000:]
    return json.loads(stdout[m.start():])


def alive(cluster) -> dict[str, str]:
    """name -> node id; both nodes must still be up (the node-loss test, last, kills w1)."""
    for name, node in cluster.nodes.items():
        assert not node.killed and node.alive(), f"ray node {name} is down; see {node.log}"
    return cluster.ids


def test_trials_run_on_both_nodes(two_nodes, work):
    ids = alive(two_nodes)
    # One wave of 4 trials (4 slots: 2 per node), each long (3000 rounds, no early stop; ~8 s with
    # 4 one-thread trials on 2 cores). Tune hands a pending trial to a finished trial's cached actor
    # (reuse_actors) and drops the actor it was starting: with short trials, or more trials than
    # slots, the head's warm workers take them all while the worker node's first actors still start
    # (CI once saw 6 of 6 short trials on the head).
    cfg = config(work, two_nodes, "cl-spread", {"num_boost_round": 3000, "early_stopping_rounds": 3000},
                 {"num_samples": 4, "max_concurrent": 4, "scheduler": "none", "report_every": 500,
                  "space": {"max_depth": {"type": "choice", "values": [8]}}})
    # --only tune: the search summary is what this test reads (evaluate and register: the last test);
    # it runs from the featurized data in the store, which `features` writes (or finds cached)
    f = cli(two_nodes, "features", cfg)
    assert f.returncode == 0, f.stderr[-3000:]
    r = cli(two_nodes, "run", cfg, "--only", "tune", "--json")
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    search = json_doc(r.stdout)["search"]
    assert search["n_trials"] == 4 and search["strategy"] == "single"
    assert sum(search["nodes"].values()) == 4, search["nodes"]
    assert set(search["nodes"]) == set(ids.values()), (search["nodes"], ids)
    assert search["retried"] == []


def test_distributed_workers_spread_over_both_nodes(two_nodes, work):
    ids = alive(two_nodes)
    cfg = config(work, two_nodes, "cl-dist", {"strategy": "distributed", "num_workers": 2, "num_boost_round": 20},
                 {"num_samples": 1, "scheduler": "none", "report_every": 10,
                  "space": {"max_depth": {"type": "choice", "values": [4]}}})
    f = cli(two_nodes, "features", cfg)
    assert f.returncode == 0, f.stderr[-3000:]
    r = cli(two_nodes, "run", cfg, "--only", "tune", "--json")
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    search = json_doc(r.stdout)["search"]
    assert search["strategy"] == "distributed"
    # SPREAD: the trial's 2 Train workers, one per node
    assert search["worker_nodes"] == {ids["head"]: 1, ids["w1"]: 1}, (search["worker_nodes"], ids)


def test_search_survives_losing_the_worker_node(two_nodes, work):
    """The worker node's process group is SIGKILLed while trials run on it: Tune retries them
    (tune.max_failures), the search finishes, a model is registered, the summary names the retried."""
    ids = alive(two_nodes)
    # trials of unequal length (100..600 rounds, no early stop): some still run on w1 when the
    # first one finishes
    cfg = config(work, two_nodes, "cl-kill", {"num_boost_round": 600, "early_stopping_rounds": 600},
                 {"num_samples": 5, "scheduler": "none", "report_every": 50, "max_failures": 2,
                  "space": {"num_boost_round": {"type": "int", "low": 100, "high": 600},
                            "max_depth": {"type": "int", "low": 4, "high": 8}}})
    p = subprocess.Popen([sys.executable, "-m", "mlops_ray", "run", cfg], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=two_nodes.env, cwd=ROOT)
    err: list[str] = []
    outs: list[str] = []
    readers = [threading.Thread(target=lambda: err.extend(p.stderr), daemon=True),
               threading.Thread(target=lambda: outs.extend(p.stdout), daemon=True)]
    for r in readers:
        r.start()
    killed_trial_pids: list[int] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None and not any(FINISHED.search(x) for x in err):
            time.sleep(0.2)
        assert any(FINISHED.search(x) for x in err), "no trial finished:\n" + "".join(err)[-3000:]
        while time.time() < deadline and p.poll() is None and not killed_trial_pids:
            killed_trial_pids = two_nodes.processes("w1", "ray::ImplicitFunc.train")
            time.sleep(0.1)
        assert killed_trial_pids, "no trial was running on w1 after the first one finished:\n" + "".join(err)[-3000:]
        two_nodes.kill_node("w1")
        p.wait(300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    for r in readers:
        r.join(5)
    stderr, out = "".join(err), "".join(outs)
    assert p.returncode == 0, stderr[-3000:] + out[-3000:]
    assert "registered version 1: champion" in out and "retried after a failure: trial(s) " in out, out
    assert "failed; retry 1 of at most 2 (tune.max_failures)" in stderr, stderr[-3000:]   # the progress line
    runs = [f.parent for f in (work / "store" / "cl" / "runs").glob("*/registered.json")
            if json.loads(f.read_text())["search"].get("retried")]
    assert len(runs) == 1, "one run (this one) should have retried trials"
    rec = json.loads((runs[0] / "registered.json").read_text())
    search = rec["search"]
    assert search["n_trials"] == 5 and rec["promoted"]
    retried = search["retried"]
    assert retried and all(t["failures"] >= 1 and t["error"] is None for t in retried), retried
    # a retried trial's last attempt ran on the head: the worker node was gone
    rows = {t["trial_id"]: t for t in json.loads((runs[0] / "search-a0.json").read_text())["trials"]}
    assert {rows[t["trial_id"]]["node_id"] for t in retried} == {ids["head"]}, (retried, ids)
