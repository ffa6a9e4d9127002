"""The whole story on embedded defaults (``make demo``): train, serve, drift, retrain, roll out.

    synthesize month 1 (and month 2, drifted) → run: validate → tune → gate → register v1
    → deploy → month-2 traffic (covariate + concept drift) → its labels arrive
    → loop once: monitor (drift, live metric) → retrain on the fresh window → gate v2 vs v1
      → canary rollout under traffic → promote → HTML report → stop the serving head

Each stage calls the same function its CLI command calls; only the traffic client and the
label file are the demo's own (they stand in for the users of the model).
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pandas as pd
import pyarrow.parquet as pq

from mlops_ray import pipeline
from mlops_ray.config import Config, config_from_dict
from mlops_ray.data.synth import SynthSpec, generate_chunk, to_arrow
from mlops_ray.lifecycle.loop import run_loop
from mlops_ray.lifecycle.reports import report_context
from mlops_ray.monitor.drift import predlog_files
from mlops_ray.monitor.labels import feedback
from mlops_ray.monitor.report import write_report
from mlops_ray.registry import Registry
from mlops_ray.serve import control
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.store import Store

Say = Callable[[str, str], None]
# a demo-sized rollout: three steps of a few seconds (the defaults hold 30 s and 200 requests)
DEMO_OVERRIDES = {"rollout.steps": [20, 60, 100], "rollout.min_requests": 80, "rollout.min_seconds": 3,
                  "rollout.keep_previous_s": 60, "monitor.window": "2h", "monitor.predlog_flush_s": 2,
                  "retrain.cooldown": "1m",
                  # the demo's clients share the 2 cores with the replicas and the retraining: latencies
                  # under 100 ms there are the client's noise, not the canary's
                  "rollout.p99_floor_ms": 100}


def demo_paths(data_dir: str) -> dict[str, str]:
    """What the demo writes under ``data_dir``, each apart: month 1 (the quickstart's ``data.source``,
    ``data/demo/month1``, holds nothing else), month 2, the labels that arrive for it, and the config
    the demo ran (its own store, its months) for the commands that look at its results afterwards."""
    return {"month1": os.path.join(data_dir, "month1"), "month2": os.path.join(data_dir, "month2"),
            "labels": os.path.join(data_dir, "labels-month2.parquet"), "config": os.path.join(data_dir, "demo.yaml")}


def synthesize(out_dir: str, rows: int, seed: int = 7) -> tuple[str, str]:
    """Month 1 (stationary) and month 2 (covariate + concept drift from its first day)."""
    spec = SynthSpec(rows=rows * 2, seed=seed, start="2026-01-01", days=60, drift="mixed",
                     drift_start="2026-01-31")
    paths = []
    for i, name in enumerate(("month1", "month2")):
        d = demo_paths(out_dir)[name]
        paths.append(d)
        if os.path.isdir(d) and os.listdir(d):
            continue
        os.makedirs(d, exist_ok=True)
        pq.write_table(to_arrow(generate_chunk(spec, i * rows, rows)), os.path.join(d, "part-00000.parquet"))
    return paths[0], paths[1]


def _rows_json(df: pd.DataFrame, columns: list[str]) -> list[dict]:
    out = []
    for rec in df[columns].to_dict("records"):
        row = {}
        for k, v in rec.items():
            if isinstance(v, pd.Timestamp):
                v = v.isoformat()
            elif isinstance(v, float) and math.isnan(v):
                v = None
            elif v is pd.NaT or (v is not None and not isinstance(v, (str, int, float, bool)) and pd.isna(v)):
                v = None
            elif hasattr(v, "item"):
                v = v.item()
            row[k] = v
        out.append(row)
    return out


class Traffic:
    """Clients posting batches of month-2 rows; remembers (request_id, row) → label for feedback."""

    def __init__(self, url: str, df: pd.DataFrame, columns: list[str], label: str, batch: int = 10,
                 clients: int = 4):
        self.url, self.batch, self.clients = url, batch, clients
        self.df, self.columns, self.label = df.reset_index(drop=True), columns, label
        self.answered: list[tuple[str, int, int]] = []      # (request_id, row, label)
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _post(self, start: int) -> None:
        part = self.df.iloc[start:start + self.batch]
        body = json.dumps(_rows_json(part, self.columns)).encode()
        req = urllib.request.Request(self.url, data=body, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                rid = json.loads(r.read())["request_id"]
        except Exception:
            with self._lock:
                self.errors += 1
            return
        labels = part[self.label].astype(int).tolist()
        with self._lock:
            self.answered.extend((rid, i, y) for i, y in enumerate(labels))

    def send(self, rows: int) -> None:
        """Send the first ``rows`` rows (blocking)."""
        with ThreadPoolExecutor(self.clients) as ex:
            list(ex.map(self._post, range(0, min(rows, len(self.df)), self.batch)))

    def start(self, offset: int) -> None:
        """Keep sending rows from ``offset`` on (wrapping around) until ``stop``."""
        def run():
            i = offset
            with ThreadPoolExecutor(self.clients) as ex:
                while not self._stop.is_set():
                    starts = [(i + k * self.batch) % max(len(self.df) - self.batch, 1) for k in range(self.clients)]
                    list(ex.map(self._post, starts))
                    i += self.clients * self.batch
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def labels_file(self, path: str, label: str) -> str:
        with self._lock:
            recs = list(self.answered)
        pd.DataFrame(recs, columns=["request_id", "row", label]).to_parquet(path, index=False)
        return path


def run_demo(cfg: Config, data_dir: str, rows: int, *, say: Say, verbose: bool = False,
             html: str | None = None) -> dict:
    """The story; returns a summary. The serving head is stopped at the end, whatever happens."""

    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t: float) -> None:
        timings[name] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    m1, m2 = synthesize(data_dir, rows)
    lap("synthesize", t)
    say("data", f"month 1 ({rows:,} rows) in {m1}; month 2 with covariate + concept drift in {m2}")
    raw = cfg.model_dump(mode="json", by_alias=True)
    # the demo's own store, new every run, so the story starts from nothing whatever was run before
    raw["store"] = cfg.store.rstrip("/") + "-demo"
    raw["data"]["source"], raw["retrain"]["data"] = os.path.abspath(m1), [os.path.abspath(m2)]
    raw["registry"]["tracking_uri"] = None
    Store(raw["store"]).clear(Store(raw["store"]).root)
    for key, value in DEMO_OVERRIDES.items():
        node = raw
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    cfg = config_from_dict(raw)
    with open(demo_paths(data_dir)["config"], "w") as f:
        f.write("# the config `mlops-ray demo` ran: look at its results with it (mlops-ray status THIS)\n"
                + cfg.to_yaml())

    t = time.perf_counter()
    res = pipeline.run_pipeline(cfg, pipeline.RunOptions(verbose=verbose), progress=say)
    lap("train v1", t)
    say("register", f"version {res.version} is {'champion' if 'champion' in res.aliases else 'registered'}")
    summary: dict = {"v1": res.version, "timings_s": timings, "store": cfg.store,
                     "config": demo_paths(data_dir)["config"]}
    try:
        t = time.perf_counter()
        dep = control.deploy(cfg, "champion", verbose=verbose, on_progress=lambda m: say("deploy", m))
        lap("deploy", t)
        url = dep["addresses"][0]["url"]          # the fastest
        say("deploy", f"serving version {dep['version']} at {url} ({dep['addresses'][0]['note']})")

        t = time.perf_counter()
        month2 = pq.read_table(m2).to_pandas()
        columns = list(pipeline_inputs(cfg, res.version))
        if cfg.data.id_column and cfg.data.id_column not in columns:
            columns.append(cfg.data.id_column)      # clients send their id; it is logged, never a feature
        traffic = Traffic(url, month2, columns, cfg.data.label)
        n_first = min(len(month2) // 2, 10_000)
        traffic.send(n_first)
        time.sleep(cfg.monitor.predlog_flush_s + 1)      # the replicas' last partial flush
        _flush_wait(cfg)
        lap("traffic", t)
        say("traffic", f"{len(traffic.answered):,} month-2 rows answered ({traffic.errors} errors)")

        t = time.perf_counter()
        fb = feedback(cfg, traffic.labels_file(demo_paths(data_dir)["labels"], cfg.data.label))
        lap("labels", t)
        v = fb["versions"].get(str(res.version), {})
        say("labels", f"{fb['labels']:,} labels arrived; live {v.get('metric')} of v{res.version} "
                      f"{v.get('value') if v.get('value') is None else round(v['value'], 4)} "
                      f"(test {(res.evaluation or {}).get('metrics', {}).get(v.get('metric') or 'auc', float('nan')):.4f})")

        t = time.perf_counter()
        traffic.start(n_first)          # clients keep calling while the loop retrains and rolls out
        try:
            entries = run_loop(cfg, once=True, verbose=verbose, progress=say)
        finally:
            traffic.stop()
        lap("loop", t)
        e = entries[-1]
        summary.update({"decision": e, "v2": e.get("version")})
        say("loop", f"{e.get('action')}: {e.get('outcome')}" + (f" (version {e['version']})" if e.get("version")
                                                                 else ""))
        if html:
            t = time.perf_counter()
            write_report(report_context(cfg), html)
            lap("report", t)
            say("report", html)
    finally:
        t = time.perf_counter()
        control.stop(cfg, verbose=verbose)
        lap("stop", t)
        say("serve", "serving head stopped")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def pipeline_inputs(cfg: Config, version: str) -> list[str]:
    return Registry(cfg.registry, cfg.store, cfg.name).load_bundle(version).spec.input_columns


def _flush_wait(cfg: Config, timeout_s: float = 60.0) -> None:
    """Wait until the replicas' prediction log reached Parquet (they flush every monitor.predlog_flush_s)."""
    deadline = time.time() + timeout_s
    root = Catalog(cfg.store, cfg.name).predlog_dir()
    while time.time() < deadline:
        if predlog_files(root, None, None)[1]:
            return
        time.sleep(0.5)
