"""The whole lifecycle on data this project did not write (``foreign_data.py``): per data set,
`config check`, `validate`, `run`, `deploy`, HTTP traffic carrying the id column, `feedback`
by id and by request id, `monitor` on the prediction log and with `--data`, `predict`,
`loop --once`, `report`, `serve stop` — each a fresh process, as a user runs them.

Every command's exit code is asserted, and no output of any command may call itself a bug.
The traffic and the monitored windows are rows of the training period the model never saw,
so `monitor` must find no drift (exit 0). The steps of one data set are tests that run in
order and share its store; a step whose prerequisite failed is skipped naming it.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.support import foreign_data
from tests.support.http_load import free_base

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
BUG = "a bug"


def cli(story, *args, check: int | None = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    t0, c0 = time.time(), _child_cpu()
    p = subprocess.run([sys.executable, "-m", "mlops_ray", *args], cwd=story["root"], env=ENV,
                       capture_output=True, text=True, timeout=timeout)
    story["times"].append((" ".join(args[:1] + args[2:3]), time.time() - t0, _child_cpu() - c0))
    out = p.stdout + p.stderr
    said = f"`mlops-ray {' '.join(args)}` exit {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}"
    assert BUG not in out, said
    if check is not None:
        assert p.returncode == check, said
    return p


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def post(url: str, body, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=foreign_data.dumps(body),
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module", params=list(foreign_data.CASES))
def story(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    case = foreign_data.CASES[request.param](root, free_base())
    st = {"root": root, "case": case, "cfg": str(case.config), "done": set(), "times": []}
    yield st
    if "deploy" in st["done"]:
        subprocess.run([sys.executable, "-m", "mlops_ray", "serve", "stop", st["cfg"]], cwd=root, env=ENV,
                       capture_output=True, text=True, timeout=180)
    wall, cpu = sum(t[1] for t in st["times"]), sum(t[2] for t in st["times"])
    print(f"\n{case.name}: commands took {wall:.0f} s wall, {cpu:.0f} CPU-s: "
          + ", ".join(f"{n} {w:.0f}/{c:.0f}" for n, w, c in st["times"]))


def needs(story, *steps):
    missing = [s for s in steps if s not in story["done"]]
    if missing:
        pytest.skip(f"{story['case'].name}: step {missing[0]!r} failed")


def test_config_check(story):
    p = cli(story, "config", "check", story["cfg"])
    assert "hash" in p.stdout.lower(), p.stdout
    story["done"].add("config")


def test_validate(story):
    needs(story, "config")
    cli(story, "validate", story["cfg"])
    story["done"].add("validate")


def test_run(story):
    needs(story, "validate")
    p = cli(story, "run", story["cfg"], "--json")
    res = json.loads(p.stdout)
    assert res["version"] == "1" and "champion" in res["aliases"], res
    story["done"].add("run")


def test_deploy(story):
    needs(story, "run")
    p = cli(story, "deploy", story["cfg"], "--json")
    story["serving"] = json.loads(p.stdout)
    story["done"].add("deploy")
    # the serving head is left running for the next steps; the fixture stops it
    story["url"] = (story["serving"]["direct"] or [story["serving"]["url"]])[0]


def test_traffic_with_the_id_column(story):
    needs(story, "deploy")
    case = story["case"]
    base = story["url"].rsplit("/predict", 1)[0]
    fields = list(get(base + "/schema")["request"]["$defs"]["PredictRow"]["properties"])
    rows = foreign_data.request_rows(case.traffic, fields + [case.id_column])
    assert all(case.id_column in r for r in rows)
    with_id, without_id = rows[:240], rows[240:]
    by_request = {}
    for i, row in enumerate(with_id[:200]):                    # one row a request, with the id
        status, body = post(story["url"], row)
        assert status == 200 and len(body["predictions"]) == 1, body
        if case.task == "multiclass":                            # answered by class name
            assert body["labels"][0] in set(case.truth.dropna()), body
        elif case.task == "binary":
            assert body["labels"][0] in (0, 1) and 0 <= body["predictions"][0] <= 1, body
    status, body = post(story["url"], with_id[200:])           # a batch, with ids
    assert status == 200 and len(body["predictions"]) == 40, body
    for i, row in enumerate(without_id):                       # requests without the id: keyed by request id
        row = {k: v for k, v in row.items() if k != case.id_column}
        rid = f"{case.name}-req-{i}"
        status, body = post(story["url"], row, headers={"x-request-id": rid})
        assert status == 200 and body["request_id"] == rid, body
        by_request[rid] = case.traffic.index[240 + i]
    story["by_request"] = by_request
    story["sent_rows"] = len(rows)
    time.sleep(5)                                              # monitor.predlog_flush_s is 2
    story["done"].add("traffic")


def _label_frame(story, key: str, index, keys) -> pd.DataFrame:
    case = story["case"]
    truth = case.truth.loc[index]
    frame = pd.DataFrame({key: list(keys), case.label: truth.to_numpy()})
    return frame[frame[case.label].notna()]


def test_feedback_by_id(story):
    needs(story, "traffic")
    case = story["case"]
    ids = case.traffic[case.id_column].iloc[:240]
    labels = _label_frame(story, case.id_column, ids.index, ids)
    path = story["root"] / "labels-by-id.parquet"
    labels.to_parquet(path, index=False)
    res = json.loads(cli(story, "feedback", story["cfg"], "--labels", str(path), "--json").stdout)
    assert res["labels"] == len(labels) and res["unknown_ids"] == 0, res
    assert res["versions"]["1"]["labelled"] == len(labels), res
    assert res["versions"]["1"]["value"] is not None, res
    story["done"].add("feedback")


def test_feedback_by_request_id(story):
    needs(story, "traffic")
    rids = story["by_request"]
    labels = _label_frame(story, "request_id", list(rids.values()), rids.keys())
    path = story["root"] / "labels-by-request.csv"
    labels.to_csv(path, index=False)
    res = json.loads(cli(story, "feedback", story["cfg"], "--labels", str(path), "--json").stdout)
    assert res["labels"] == len(labels) and res["unknown_ids"] == 0, res
    story["done"].add("feedback-request")


def test_monitor_the_prediction_log(story):
    needs(story, "traffic")
    p = cli(story, "monitor", story["cfg"], "--since", "1h", "--json", check=None)
    rep = json.loads(p.stdout)
    assert rep["window"]["rows"] == story["sent_rows"], rep["window"]
    assert p.returncode == 0 and not rep["drift"], _drift_said(rep)


# A known false alarm, open: a high-cardinality categorical (flights' tailnum, ~4k values over a few
# thousand rows) drifts on a same-period window. Its top categories are chosen by count on the very
# training rows that then give their reference shares, so those shares are biased upward (the
# winner's curse) and a fresh window's are lower. Any other outcome of this case fails as usual.
KNOWN_FALSE_ALARMS = {"flights": ["tailnum"]}


def test_monitor_a_same_period_window(story):
    needs(story, "run")
    p = cli(story, "monitor", story["cfg"], "--data", str(story["case"].window), "--json", check=None)
    rep = json.loads(p.stdout)
    known = KNOWN_FALSE_ALARMS.get(story["case"].name)
    if known and p.returncode == 9 and rep.get("drifted") == known and not (rep.get("multivariate") or {}).get(
            "drifted") and (rep.get("prediction") or {}).get("verdict") != "drift":
        pytest.xfail(f"known false alarm on {known}: top categories chosen and counted on the same rows")
    assert p.returncode == 0 and not rep["drift"], _drift_said(rep)


def _drift_said(rep: dict) -> str:
    moved = [f for f in rep.get("features") or [] if f.get("verdict") == "drift"]
    return json.dumps({"drifted": rep.get("drifted"), "multivariate": rep.get("multivariate"),
                       "prediction": rep.get("prediction"), "moved": moved}, default=str)[:4000]


def test_predict(story):
    needs(story, "run")
    case = story["case"]
    out = story["root"] / "scored"
    cli(story, "predict", story["cfg"], "--data", str(case.window), "--out", str(out))
    scored = pq.read_table(out).to_pandas()
    window = pd.read_parquet(case.window) if case.window.suffix in (".pq", ".parquet") else pd.read_csv(case.window)
    assert len(scored) == len(window)
    assert set(scored[case.id_column].astype(str)) == set(window[case.id_column].astype(str))


def test_loop_once(story):
    needs(story, "traffic")
    p = cli(story, "loop", story["cfg"], "--once", "--since", "1h", "--json")
    entries = json.loads(p.stdout)
    assert entries and not entries[-1].get("trigger"), entries        # nothing moved: no retrain


def test_report(story):
    needs(story, "run")
    html = story["root"] / "report.html"
    cli(story, "report", story["cfg"], "--html", str(html))
    text = html.read_text()
    assert text.count("data:image/png;base64,") >= 2
