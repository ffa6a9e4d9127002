"""Weight-change latency: from a write to the moment EVERY replica answers with the new revision.

Issue 9 ("measure weight-change latency and choose"). Each case changes a routing weight ~20 times
(``--quick``: 5) and polls every replica every 10 ms until all of them report the new value; the
table gives the median, p95 and max over the changes, plus what the write call itself cost.

* **a. ours, local store** -- ``control.deploy`` (a local Ray head, 2 replicas of the one ingress
  deployment), state CANARY with version 2; a change is ``write_state`` with a new canary weight
  (compare-and-swap on the revision, atomic rename); replicas ``os.stat`` the file every
  ``poll_s`` = 0.25 s. Polled on each replica's direct-ingress port (``GET /version``, its
  ``revision``). Cost: no Ray call, no controller; one stat per replica per 0.25 s; latency about
  half the poll period plus the read. Works on any cluster whose nodes share the store path.
* **b. ours, s3:// store** -- the same against moto's standalone S3 server on 127.0.0.1 (the
  registry stays a local SQLite file: replicas run on this machine). A change is one PUT (plus a
  GET for the compare); replicas GET the (~400 B) document at most once a second (they used to HEAD
  it and compare (Last-Modified, size), which misses a second write within the same second: see the
  probe below). Cost: no Ray call; one GET per replica per second; latency about half a second
  plus a GET. Works on any cluster (KubeRay included) without touching Serve.
* **c. Ray Serve ``user_config``, in place** -- a minimal deployment (2 replicas, ``reconfigure``
  stores ``cfg["rev"]``) in the same Ray head (app ``knob``, route ``/knob``), changed the way
  ``serve deploy`` and a KubeRay RayService's ``serveConfigV2`` change it: a new declarative app
  config whose only difference is ``user_config`` (``controller.apply_config``; Serve's code version
  is a hash of import path, runtime_env and args, so the replicas are reconfigured, not restarted).
  Cost: a call to the Serve controller (which checkpoints the config in the GCS), then the
  controller's loop calls ``reconfigure`` on each replica (an actor call each). Needs a Ray
  connection with rights to the controller (or the dashboard's REST API / a RayService edit); no
  polling in the replicas. Polled through a handle (4 calls every 10 ms, replica ids recorded until
  both replicas are seen with the new value); ``applied_ms`` is when ``reconfigure`` ran, by the
  replicas' own clocks (same host).
* **c_run. ``serve.run(Knob.options(user_config=...).bind())``** -- the imperative Python API
  (app ``knob_py``). In Ray 2.60 ``serve.run`` gives every deployment a random code version
  (``client.deploy_applications``: ``version=deployment._version or get_random_string()``, and
  ``.options(version=...)`` was removed), so each call *replaces* the replicas: the figure is a
  rolling restart, not a reconfigure. ``call_ms`` is how long the ``serve.run`` call blocks.

With n replicas polling independently every P seconds, "every replica switched" takes the largest
of n uniform delays: about P * n / (n + 1) plus one read, i.e. ~0.17 s for a (P = 0.25 s) and ~0.67 s
plus a GET for b (P = 1 s); more replicas push it towards P. c does not depend on the replica count
that way (the controller reconfigures them in parallel) but on the controller's loop and actor calls.

Ratios a/c and b/c compare medians. A probe of b then writes the state twice within one second with
the same size, after a replica has read the first write: a (Last-Modified, size) token cannot tell
those apart (S3's Last-Modified has whole seconds), so a replica following that token keeps routing
by the first write until the next one (seen here before replicas on object stores read the document
itself). ``--repeats`` and ``--rows`` do not apply.

Run (from the repository root)::

    .venv/bin/python -m benchmarks weight_change           # ~5 minutes on 2 busy cores
    .venv/bin/python -m benchmarks weight_change --quick   # 5 changes per case (smoke run)
"""
from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import shutil
import time
from pathlib import Path

from benchmarks.common import ROOT, ForeignLoad, Options

NAME = "bench"
PORT_LOCAL, PORT_S3 = 8700, 18800    # serve.port; direct ingress on the next 64 ports
HEAD_PORT = 8790     # the heads' GCS port, then 4 agent ports and the Ray client port (the heads run one
                     # after the other; Ray's worker ports, 10002-19999, must not overlap these)
PORT_MOTO = 18899
POLL_S = 0.01
TIMEOUT_S = 15.0            # a change not seen by every replica by then counts as missed
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}
A, B, C, C_RUN = ("a. ours, local store", "b. ours, s3:// store (moto)", "c. Serve user_config, in place",
                  "c_run. Serve serve.run(options(user_config))")


# --------------------------------------------------------------------------- the Serve knob
class Knob:
    """A replica that only remembers its user_config (wrapped by ``serve.deployment`` below)."""

    def __init__(self):
        from ray import serve
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.rev, self.applied = None, None

    def reconfigure(self, cfg: dict) -> None:
        self.rev, self.applied = cfg.get("rev"), time.time()

    async def __call__(self, request=None) -> dict:
        return {"replica": self.replica, "rev": self.rev, "applied": self.applied}


def knob_deployment(num_cpus: float = 0.25):
    from ray import serve
    # replicas import this module: the repository root is not on a Ray worker's path otherwise
    env = {"env_vars": {"PYTHONPATH": str(ROOT)}}
    return serve.deployment(Knob, name="Knob", num_replicas=2,
                            ray_actor_options={"num_cpus": num_cpus, "runtime_env": env})


def knob_builder(args: dict):
    """Import path of the declarative app (``benchmarks.weight_change:knob_builder``)."""
    return knob_deployment().bind()


def knob_app_config(rev: int, port: int):
    """The declarative config of app ``knob`` with ``user_config = {"rev": rev}``: all that changes."""
    from ray.serve.schema import ServeDeploySchema
    return ServeDeploySchema.model_validate({
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "knob", "route_prefix": "/knob",
                          "import_path": "benchmarks.weight_change:knob_builder",
                          "runtime_env": {"env_vars": {"PYTHONPATH": str(ROOT)}},
                          "deployments": [{"name": "Knob", "num_replicas": 2, "user_config": {"rev": rev}}]}]})


def _sample(handle, n: int = 4) -> list[dict]:
    """``n`` concurrent calls (the handle's router spreads them over the replicas)."""
    return [r.result(timeout_s=10) for r in [handle.remote() for _ in range(n)]]


def knob_wait(handle, rev: int, t0: float, timeout_s: float = TIMEOUT_S) -> dict:
    """Poll the app through its handle until 2 distinct replicas answered ``rev`` (for c_run, whose
    replicas and so their direct ports change with every call)."""
    seen: dict[str, float] = {}
    deadline = t0 + timeout_s
    while time.perf_counter() < deadline:
        for r in _sample(handle):
            if r["rev"] == rev:
                seen.setdefault(r["replica"], r["applied"])
        if len(seen) >= 2:
            return {"seconds": time.perf_counter() - t0, "applied": max(seen.values())}
        time.sleep(POLL_S)
    return {"seconds": None, "applied": None}


def replica_ids(client, app: str) -> set[str]:
    """Serve's own list of the app's running replicas."""
    details = client.get_serve_details()["applications"][app]["deployments"]
    return {r["replica_id"] for d in details.values() for r in d["replicas"] if r.get("state") == "RUNNING"}


# --------------------------------------------------------------------------- polling replicas
class Replicas:
    """Keep-alive connections to each replica's direct-ingress port. ``get(path)`` asks all of them;
    ``wait`` polls every POLL_S until ``done(answers)``."""

    def __init__(self, ports: list[int], path: str):
        self.ports, self.path = ports, path
        self.conns: list = [None] * len(ports)

    @classmethod
    def ours(cls, cfg, want: int = 2, timeout_s: float = 90.0) -> "Replicas":
        from mlops_ray.serve import endpoints
        deadline = time.monotonic() + timeout_s
        while True:
            urls = endpoints.endpoints(cfg)["direct"]
            if len(urls) >= want:
                return cls([int(u.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]) for u in urls], "/version")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(urls)} of {want} replicas answer on direct ports after {timeout_s:g} s")
            time.sleep(0.5)

    @classmethod
    def knobs(cls, serve_port: int, want: int = 2, timeout_s: float = 60.0) -> "Replicas":
        """The Knob replicas' direct-ingress ports (same range as ours: serve.port + 1 ... + 64)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [p for p in range(serve_port + 1, serve_port + 65) if "rev" in (_probe(p, "/knob") or {})]
            if len(found) >= want:
                return cls(found, "/knob")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(found)} of {want} Knob replicas answer on direct ports")
            time.sleep(0.5)

    def _get(self, i: int) -> dict:
        for attempt in (0, 1):
            if self.conns[i] is None:
                self.conns[i] = http.client.HTTPConnection("127.0.0.1", self.ports[i], timeout=5)
            try:
                self.conns[i].request("GET", self.path)
                return json.loads(self.conns[i].getresponse().read())
            except (OSError, http.client.HTTPException):
                self.conns[i].close()
                self.conns[i] = None
                if attempt:
                    raise
        raise AssertionError

    def get(self) -> list[dict]:
        return [self._get(i) for i in range(len(self.ports))]

    def revisions(self) -> list[int]:
        return [a["revision"] for a in self.get()]

    def wait(self, done, t0: float, timeout_s: float = TIMEOUT_S) -> tuple[float | None, list[dict]]:
        """(seconds from ``t0`` until ``done(answers)``, or None on timeout; the last answers)."""
        while True:
            answers = self.get()
            if done(answers):
                return time.perf_counter() - t0, answers
            if time.perf_counter() - t0 > timeout_s:
                return None, answers
            time.sleep(POLL_S)

    def wait_revision(self, revision: int, t0: float, timeout_s: float = TIMEOUT_S) -> float | None:
        """Seconds until every replica reports ``revision`` or later (None on timeout)."""
        return self.wait(lambda ans: min(a["revision"] for a in ans) >= revision, t0, timeout_s)[0]

    def close(self) -> None:
        for c in self.conns:
            if c is not None:
                c.close()


def _probe(port: int, path: str) -> dict | None:
    """The JSON a port answers to GET ``path`` (direct ingress honours the app's route prefix)."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", path)
        out = json.loads(c.getresponse().read())
        c.close()
        return out if isinstance(out, dict) else None
    except (OSError, ValueError, http.client.HTTPException):
        return None


def change_weights(cfg, reps: Replicas, n: int) -> list[dict]:
    """``n`` weight changes through the serving state; one dict per change."""
    from mlops_ray.storage.state import read_state, state_path, write_state
    path = state_path(cfg.store, cfg.name)
    out = []
    for i in range(n):
        time.sleep(random.uniform(0.05, 0.3))           # do not write in step with the replicas' polls
        s = read_state(path)
        s.weight = 10.0 + (i % 8) * 10
        t0 = time.perf_counter()
        s = write_state(path, s, expect=s.revision)
        write_s = time.perf_counter() - t0
        took = reps.wait_revision(s.revision, t0)
        out.append({"seconds": took, "write_s": write_s})
        if took is None:                # report it and go on: the next write gives a new token
            print(f"   change {i}: revision {s.revision} NOT seen by every replica within {TIMEOUT_S:g} s "
                  f"(they report {reps.revisions()})", flush=True)
    return out


def same_second_probe(cfg, reps: Replicas, tries: int = 8) -> str:
    """Write, wait until some replica has read that write, write again within the same second with
    the same size (so the object's Last-Modified and size are unchanged), and report whether every
    replica picks up the second write."""
    from mlops_ray.storage.fs import filesystem_for
    from mlops_ray.storage.state import read_state, state_path, write_state
    path = state_path(cfg.store, cfg.name)
    fs, p = filesystem_for(path)
    for _ in range(tries):
        s = read_state(path)
        if reps.wait_revision(s.revision, time.perf_counter()) is None:
            return "replicas did not settle"
        while time.time() % 1 > 0.05:                 # start at the top of a second
            time.sleep(0.005)
        second_of = int(time.time())
        s.weight = 30.0
        s = write_state(path, s, expect=s.revision)
        first_rev, first = s.revision, fs.get_file_info(p)
        # until one replica has read the first write (its poll comes at a random point of the second)
        took, _ = reps.wait(lambda ans: max(a["revision"] for a in ans) >= first_rev, time.perf_counter(), 0.8)
        if took is None or int(time.time()) != second_of or time.time() % 1 > 0.85:
            continue
        s.weight = 70.0                                # same length as 30.0
        s = write_state(path, s, expect=s.revision)
        second = fs.get_file_info(p)
        if (first.mtime_ns, first.size) != (second.mtime_ns, second.size):
            continue                                   # the "updated" stamp changed the size, or a new second
        took = reps.wait_revision(s.revision, time.perf_counter(), timeout_s=5.0)
        msg = (f"wrote revisions {first_rev} and {s.revision} in one second with equal size ({second.size} B), "
               f"after a replica had read {first_rev}: "
               + (f"all replicas had {s.revision} after {took:.2f} s" if took is not None else
                  f"after 5 s replicas still report {reps.revisions()} (the stale one routes by the first write "
                  f"until the next write)"))
        s.weight = 10.0                                # a further write moves the token on again
        s = write_state(path, s, expect=s.revision)
        reps.wait_revision(s.revision, time.perf_counter())
        return msg
    return f"no same-second, same-size pair in {tries} tries"


def canary_on(cfg, reps: Replicas) -> float:
    """Put version 2 in as a canary at 1 % and wait until every replica holds it."""
    from mlops_ray.storage.state import read_state, state_path, write_state
    path = state_path(cfg.store, cfg.name)
    s = read_state(path)
    s.phase, s.canary, s.weight = "CANARY", "2", 1.0
    t0 = time.perf_counter()
    s = write_state(path, s, expect=s.revision)
    took = reps.wait_revision(s.revision, t0, timeout_s=90.0)
    if took is None:
        raise RuntimeError("the replicas did not load the canary within 90 s")
    return took


# --------------------------------------------------------------------------- setup
def setup_registry(tmp: Path) -> None:
    """Versions 1 (champion) and 2 in the SQLite registry of the local store ``tmp/store``."""
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    from mlops_ray.registry import Registry
    from tests.support.configs import make_bundle
    df = generate_chunk(SynthSpec(rows=2000, seed=3), 0, 2000)
    cfg = make_cfg(tmp, str(tmp / "store"), PORT_LOCAL)
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    for i, rounds in enumerate((10, 12)):
        with reg.start_run(f"r{i + 1}") as run:
            reg.register(run, make_bundle(df, tmp / f"bundle{i + 1}", rounds=rounds))
    reg.set_alias("champion", "1")


def make_cfg(tmp: Path, store: str, port: int):
    from mlops_ray.config import config_from_dict
    # the local store's SQLite registry (its default) also serves the s3 case: every replica runs on
    # this machine, and the experiment, created for the local store, keeps its artifacts there
    registry = {"tracking_uri": f"sqlite:///{tmp}/store/mlflow.db"} if "://" in store else {}
    return config_from_dict({
        "name": NAME, "store": store, "registry": registry,
        "data": {"source": "unused", "label": "is_fraud", "id_column": "transaction_id", "time_column": "event_time"},
        "ray": {"num_cpus": 4},
        "serve": {"port": port, "num_replicas": 2, "num_cpus": 0.5}})


def start_head(cfg, base: int) -> dict:
    """The local serving head ``control.deploy`` would start, on fixed ports from ``base``."""
    from mlops_ray.serve.head import start_head as start
    from mlops_ray.storage.state import read_head
    if read_head(cfg.store, cfg.name) is not None:
        raise RuntimeError(f"a serving head for {cfg.store} is already running")
    return start(cfg.store, cfg.name, cfg.ray.num_cpus, cfg.serve, ports=[base + i for i in range(6)])


def start_moto(port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, **S3_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_proc(proc)
                raise RuntimeError(f"moto server did not start on port {port}; see {log}")
            time.sleep(0.3)


def stop_proc(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# --------------------------------------------------------------------------- results
def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(case: str, changes: list[dict], extra: dict | None = None, note: str = "") -> dict:
    ok = [c["seconds"] for c in changes if c["seconds"] is not None]
    ms = lambda v: None if v is None else round(v * 1e3, 1)     # noqa: E731
    row = {"case": case, "changes": len(changes), "missed": len(changes) - len(ok),
           "median_ms": ms(statistics.median(ok)) if ok else None, "p95_ms": ms(pct(ok, 0.95)) if ok else None,
           "min_ms": ms(min(ok)) if ok else None, "max_ms": ms(max(ok)) if ok else None}
    for key in ("write_s", "call_s", "applied_s"):
        vals = [c[key] for c in changes if c.get(key) is not None]
        row[key.replace("_s", "_ms")] = ms(statistics.median(vals)) if vals else None
    row.update(extra or {})
    row["load1"] = round(os.getloadavg()[0], 1)
    row["note"] = note
    print(f"   {case:<44} median {row['median_ms']} ms  p95 {row['p95_ms']} ms  max {row['max_ms']} ms  "
          f"missed {row['missed']}/{row['changes']}", flush=True)
    return row


# --------------------------------------------------------------------------- the cases
def run_local_and_serve(tmp: Path, n: int, n_run: int) -> list[dict]:
    from mlops_ray.serve.head import serving_runtime
    from mlops_ray.serve import control
    cfg = make_cfg(tmp, str(tmp / "store"), PORT_LOCAL)
    rows: list[dict] = []
    t = time.monotonic()
    try:
        start_head(cfg, HEAD_PORT)
        info = control.deploy(cfg, "champion")
        reps = Replicas.ours(cfg)
        print(f"   a: deployed v{info['version']} with 2 replicas in {time.monotonic() - t:.0f} s; canary v2 "
              f"loaded on both in {canary_on(cfg, reps):.1f} s", flush=True)
        fl = ForeignLoad()
        changes = change_weights(cfg, reps, n)
        rows.append(summary(A, changes, {"other_cpu": fl.share}, "write_state (CAS + rename); replicas stat "
                            "the file every 0.25 s; polled on each replica's direct port"))
        reps.close()

        with serving_runtime(cfg):
            from ray import serve
            from ray.serve.context import _get_global_client
            client = _get_global_client()
            try:
                rows.append(measure_config(serve, client, n))
                rows.append(measure_run(serve, client, n_run))
            finally:                       # control.stop keeps a head that serves other apps
                for app in ("knob", "knob_py"):
                    if app in serve.status().applications:
                        serve.delete(app)
    finally:
        try:
            print(f"   stopping the local head: {control.stop(cfg)}", flush=True)
        except Exception as e:             # noqa: BLE001 - reported; the head's log stays in tmp
            print(f"   control.stop FAILED: {type(e).__name__}: {e}", flush=True)
    return rows


def app_handle(serve, name: str, timeout_s: float = 120.0):
    """The app's handle once Serve knows its ingress (a declarative app is built asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return serve.get_app_handle(name)
        except Exception:                  # noqa: BLE001 - not built yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def measure_config(serve, client, n: int) -> dict:
    t = time.monotonic()
    client.deploy_apps(knob_app_config(0, PORT_LOCAL))
    if knob_wait(app_handle(serve, "knob"), 0, time.perf_counter(), timeout_s=120)["seconds"] is None:
        raise RuntimeError("app knob did not come up with 2 replicas in 120 s")
    reps = Replicas.knobs(PORT_LOCAL)
    ids0 = {a["replica"] for a in reps.get()}
    print(f"   c: app knob up in {time.monotonic() - t:.0f} s (replicas {sorted(ids0)} on ports {reps.ports})",
          flush=True)
    fl = ForeignLoad()
    changes = []
    for i in range(1, n + 1):
        time.sleep(random.uniform(0.05, 0.3))
        w0 = time.time()
        t0 = time.perf_counter()
        client.deploy_apps(knob_app_config(i, PORT_LOCAL))
        call = time.perf_counter() - t0
        took, answers = reps.wait(lambda ans: all(a["rev"] == i for a in ans), t0)
        applied = [a["applied"] for a in answers if a["rev"] == i]
        changes.append({"seconds": took, "call_s": call,
                        "applied_s": max(applied) - w0 if took is not None else None})
        if took is None:
            print(f"   change {i}: NOT applied by every replica within {TIMEOUT_S:g} s ({answers})", flush=True)
    ids = {a["replica"] for a in reps.get()}        # the same processes answer on the same ports
    reps.close()
    same = "same 2 replicas throughout" if ids == ids0 else f"replicas CHANGED: {sorted(ids0)} -> {sorted(ids)}"
    return summary(C, changes, {"other_cpu": fl.share},
                   f"declarative config, only user_config changes (controller.apply_config, as serve deploy / "
                   f"RayService); reconfigure() in place, {same}; polled on each replica's direct port; "
                   f"applied_ms = when reconfigure ran (replica clock); call_ms = the apply_config call")


def measure_run(serve, client, n: int) -> dict:
    dep = knob_deployment()
    t = time.monotonic()
    handle = serve.run(dep.options(user_config={"rev": 0}).bind(), name="knob_py", route_prefix="/knob_py",
                       blocking=False)
    if knob_wait(handle, 0, time.perf_counter(), timeout_s=120)["seconds"] is None:
        raise RuntimeError("app knob_py did not come up with 2 replicas in 120 s")
    ids0 = replica_ids(client, "knob_py")
    print(f"   c_run: app knob_py up in {time.monotonic() - t:.0f} s", flush=True)
    fl = ForeignLoad()
    changes, new = [], 0
    for i in range(1, n + 1):
        time.sleep(random.uniform(0.05, 0.3))
        w0 = time.time()
        t0 = time.perf_counter()
        handle = serve.run(dep.options(user_config={"rev": i}).bind(), name="knob_py", route_prefix="/knob_py",
                           blocking=False)
        call = time.perf_counter() - t0
        r = knob_wait(handle, i, t0)
        ids = replica_ids(client, "knob_py")
        new += len(ids - ids0)
        ids0 = ids
        changes.append({"seconds": r["seconds"], "call_s": call,
                        "applied_s": None if r["applied"] is None else r["applied"] - w0})
    return summary(C_RUN, changes, {"other_cpu": fl.share},
                   f"imperative serve.run: a random code version per call -> {new} new replicas over {n} "
                   f"changes (a rolling restart, not reconfigure); call_ms = how long serve.run blocks; polled "
                   f"by 4 handle calls every 10 ms")


def run_s3(tmp: Path, n: int) -> list[dict]:
    from mlops_ray.serve import control
    endpoint = f"http://127.0.0.1:{PORT_MOTO}"
    saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL")}
    moto = start_moto(PORT_MOTO, tmp / "moto.log")
    cfg = None
    try:
        os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint})     # this process and the head it starts
        import boto3
        bucket = f"wc-{os.getpid()}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        cfg = make_cfg(tmp, f"s3://{bucket}/store", PORT_S3)
        t = time.monotonic()
        start_head(cfg, HEAD_PORT)
        info = control.deploy(cfg, "champion")
        reps = Replicas.ours(cfg)
        print(f"   b: deployed v{info['version']} on {cfg.store} in {time.monotonic() - t:.0f} s; canary v2 loaded "
              f"on both in {canary_on(cfg, reps):.1f} s", flush=True)
        fl = ForeignLoad()
        changes = change_weights(cfg, reps, n)
        row = summary(B, changes, {"other_cpu": fl.share}, "write_state (GET + PUT); replicas read the state at "
                      "most once a second")
        probe = same_second_probe(cfg, reps)
        print(f"   b probe: {probe}", flush=True)
        reps.close()
        return [row, {"case": "check: b, two writes in one second", "note": probe}]
    finally:
        if cfg is not None:
            try:
                print(f"   stopping the s3 head: {control.stop(cfg)}", flush=True)
                from mlops_ray.storage.state import head_file      # an s3 store's head record lives in ~/.cache
                shutil.rmtree(os.path.dirname(os.path.dirname(head_file(cfg.store, cfg.name))), ignore_errors=True)
            except Exception as e:         # noqa: BLE001
                print(f"   control.stop FAILED: {type(e).__name__}: {e}", flush=True)
        stop_proc(moto)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(opts: Options) -> list[dict]:
    n, n_run = (5, 3) if opts.quick else (20, 6)
    tmp = Path(tempfile.mkdtemp(prefix="mlops-bench-wc-"))
    keep = False
    try:
        setup_registry(tmp)
        rows = run_local_and_serve(tmp, n, n_run)
        try:
            rows += run_s3(tmp, n)
        except Exception as e:             # noqa: BLE001 - a and c stand without it
            keep = True
            print(f"   b FAILED: {type(e).__name__}: {e} (kept {tmp})", flush=True)
            rows.append({"case": B, "note": f"FAILED: {type(e).__name__}: {str(e)[:300]}"})
        by = {r["case"]: r for r in rows}
        c = by.get(C, {}).get("median_ms")
        for case in (A, B, C_RUN):
            v = by.get(case, {}).get("median_ms")
            if v is not None and c:
                by[case]["vs_c"] = round(v / c, 2)
                print(f"   {case.split('.')[0]}/c (medians): {v / c:.2f}", flush=True)
        return rows
    except Exception:
        keep = True
        print(f"   kept {tmp} for a look at the logs", flush=True)
        raise
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
