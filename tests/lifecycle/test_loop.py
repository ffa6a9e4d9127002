"""The closed loop end to end, as `make demo` runs it at a smaller size: train v1, serve it,
drifted month-2 traffic, labels, monitor, retrain v2, gate against v1, canary, promote, report —
then the loop's and the monitor's bad inputs against the store that story left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.http_load import free_base

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "tune.num_samples=2", "--set", "model.num_boost_round=40", "--set", "schema.min_rows=500",
         "--set", "gate.min.auc=0.6", "--set", "rollout.max_p99_latency_ratio=1000",   # see test_serving.py
         "--set", f"serve.port={free_base()}"]


def cli(*args, cwd, check=None, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "mlops_ray", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    work = tmp_path_factory.mktemp("loop")
    cfg = work / "pipeline.yaml"
    cfg.write_text((ROOT / "configs" / "quickstart.yaml").read_text().replace("store: .mlops", f"store: {work}/st"))
    p = cli("demo", str(cfg), "--rows", "8000", "--data-dir", str(work / "data"), "--html", str(work / "r.html"),
            *SMALL, cwd=work, check=0)
    store = work / "st-demo" / "fraud-quickstart"
    decisions = [json.loads(x) for x in (store / "monitor" / "decisions.jsonl").read_text().splitlines()]
    return {"work": work, "cfg": cfg, "out": p.stdout + p.stderr, "store": store, "decisions": decisions,
            "demo_cfg": _demo_config(work, cfg)}


def _demo_config(work: Path, cfg: Path) -> Path:
    """The config the demo ran (its own store, month 1 as data, month 2 as the retrain window)."""
    text = cfg.read_text().replace(f"store: {work}/st", f"store: {work}/st-demo") \
        .replace("source: data/demo/month1", f"source: {work}/data/month1")
    text += f"\nretrain:\n  data: [{work}/data/month2]\n  cooldown: 1s\n"
    out = work / "demo.yaml"
    out.write_text(text)
    return out


def test_the_story_retrains_on_drift_and_promotes_the_challenger(story):
    last = story["decisions"][-1]
    assert last["action"] == "retrain" and last["trigger"], last
    assert any("drift share" in r or "live auc" in r for r in last["reasons"]), last["reasons"]
    assert last["version"] == "2" and last["outcome"] == "rollout promoted", last
    state = json.loads((story["store"] / "serving" / "state.json").read_text())
    assert state["stable"] == "2" and state["phase"] == "PROMOTED"
    assert "serving head stopped" in story["out"]
    sys.path.insert(0, str(ROOT))
    from mlops_ray.storage.state import read_head
    assert read_head(str(story["work"] / "st-demo"), "fraud-quickstart") is None      # no head left running


def test_the_demo_ends_with_where_its_results_are_and_commands_that_show_them(story):
    """After `make demo`, `mlops-ray status configs/quickstart.yaml` showed nothing: the demo keeps a store
    of its own. Its last lines name that store, the config it ran, and commands that work."""
    out = story["out"]
    assert "in st-demo (its own store)" in out and "the config it ran is data/demo.yaml" in out, out[-3000:]
    commands = [ln.split("#")[0].split()[1:] for ln in out.splitlines() if ln.strip().startswith("mlops-ray ")]
    status = next(c for c in commands if c[0] == "status")
    p = cli(*status, cwd=story["work"], check=0)
    assert "promoted: version=2" in p.stdout and "monitor (" in p.stdout and "loop (" in p.stdout, p.stdout
    report = next(c for c in commands if c[0] == "report")
    cli(*report[:-1], str(story["work"] / "again.html"), cwd=story["work"], check=0)
    assert (story["work"] / "again.html").stat().st_size > 10_000
    served = next(ln for ln in out.splitlines() if "serving version 1 at" in ln)
    port = int(next(s for s in SMALL if s.startswith("serve.port=")).split("=")[1])
    assert f"http://127.0.0.1:{port + 1}/predict (direct to one replica, fastest)" in served, served


def test_the_drift_report_names_the_moved_columns_and_the_report_is_self_contained(story):
    latest = json.loads((story["store"] / "monitor" / "latest.json").read_text())
    assert latest["drift"] and "amount" in latest["drifted"]
    assert latest["window"]["source"] == "predlog" and latest["window"]["rows"] > 1000
    mv = latest["multivariate"]       # window rows sampled in the binning pass, reference from the split
    assert mv["auc"] is not None and mv["rows"][1] == min(latest["window"]["rows"], 20000), mv
    assert mv["rows"][0] > 1000 and mv["top_features"], mv
    html = (story["work"] / "r.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "https://" not in html.split("<body")[1][:200000]


def test_champion_moved_only_when_the_rollout_promoted(story):
    sys.path.insert(0, str(ROOT))
    from mlops_ray.config import load_config
    from mlops_ray.registry import Registry
    cfg = load_config(str(story["demo_cfg"]))
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    assert reg.get_alias("champion") == "2"
    assert "register version 2 passed the gate and is the challenger" in story["out"]


def test_retrain_that_fails_the_gate_keeps_the_champion_and_is_recorded(story):
    # v2 was trained on the traffic's month: nothing drifts now, so the schedule is what fires
    p = cli("loop", str(story["demo_cfg"]), "--once", "--since", "7d", "--set", "retrain.schedule=1s",
            "--set", "gate.min_delta=0.5", *SMALL,
            cwd=story["work"], check=0)
    decisions = [json.loads(x) for x in (story["store"] / "monitor" / "decisions.jsonl").read_text().splitlines()]
    assert decisions[-1]["outcome"] == "gate rejected; champion kept", decisions[-1]
    assert "min_delta" in decisions[-1]["error"] or "champion" in decisions[-1]["error"]
    assert "retrain:" in p.stderr


def test_retrain_whose_window_is_empty_is_recorded_and_the_loop_goes_on(story):
    empty = story["work"] / "empty"
    empty.mkdir(exist_ok=True)
    cli("loop", str(story["demo_cfg"]), "--once", "--since", "7d", "--set", f"retrain.data=[{empty}]",
        "--set", "retrain.schedule=1s", *SMALL,
        cwd=story["work"], check=0)
    last = [json.loads(x) for x in (story["store"] / "monitor" / "decisions.jsonl").read_text().splitlines()][-1]
    assert last["action"] == "failed" and str(empty) in last["error"], last


def test_monitor_bad_windows(story):
    p = cli("monitor", str(story["demo_cfg"]), "--window", "2020-01-01..2020-01-02", cwd=story["work"], check=10)
    assert "no predictions in the window" in p.stderr and "--since" in p.stderr
    hour = story["store"] / "predlog" / "date=2099-01-01" / "hour=00"
    hour.mkdir(parents=True)
    pq.write_table(pa.table({"request_id": ["x"], "inputs": pa.array([{"other": 1.0}])}), hour / "part-x.parquet")
    try:
        p = cli("monitor", str(story["demo_cfg"]), "--since", "7d", cwd=story["work"], check=10)
        assert "does not match the model: its inputs lack" in p.stderr and "amount" in p.stderr
    finally:
        (hour / "part-x.parquet").unlink()


def test_bundle_without_a_reference_profile_names_reference_data(story, small_df, tmp_path):
    sys.path.insert(0, str(ROOT))
    from mlops_ray.config import load_config
    from mlops_ray.registry import Registry
    from tests.support.configs import make_bundle
    cfg = load_config(str(story["demo_cfg"]))
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    bundle = make_bundle(small_df, tmp_path / "old")      # a bundle from before raw-input profiles
    with reg.start_run("old-bundle") as run:
        version = reg.register(run, bundle)
    p = cli("monitor", str(story["demo_cfg"]), "--since", "7d", "--version", version, cwd=story["work"], check=10)
    assert "has no reference profile of its raw inputs" in p.stderr and "--reference-data PATH" in p.stderr
    # the window is the demo's month-2 traffic, whose amounts moved (synth drift "mixed"), against a
    # reference built from month 1: drift in amount, exit 9, as the demo's own monitor found
    p = cli("monitor", str(story["demo_cfg"]), "--since", "7d", "--version", version, "--reference-data",
            str(story["work"] / "data" / "month1"), "--json", cwd=story["work"])
    assert p.returncode == 9, p.stderr
    rep = json.loads(p.stdout)
    assert rep["reference"]["version"] == version and rep["drift"] and "amount" in rep["drifted"]
