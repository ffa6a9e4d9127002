"""The Ray Serve application: one ingress deployment that answers ``/predict``.

Why one deployment and not a router in front of one deployment per version: measured on
this 2-core machine (Ray 2.60, throughput-optimized Serve with direct ingress, a trivial
model so that only the plumbing counts), a router that forwards each request to a model
deployment through a handle served 324 / 572 req/s at 1 / 8 clients with p50 2.5 / 13.4 ms,
against 1680 / 1819 req/s and p50 0.5 / 4.4 ms when the ingress answers itself. So each replica of the ``Predictor`` holds the versions the
serving state names (stable, canary, the previous stable until it retires) in process and
routes between them locally: the router costs a random draw. Each version keeps its own
``@serve.batch`` queue, thread, request parser, statistics and prediction log.

Routing follows the serving state file (``state.py``): replicas poll it (``poll_s``), load
new versions in the background and switch atomically once loaded, so weights change live
without restarting a replica or failing a request. Inputs: the pipeline config (as a dict),
an injectable bundle loader, optional fault injection (rollout drills and tests).
Outputs: HTTP answers, Prometheus metrics, stats snapshots, the prediction log.
"""
from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import random
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mlops_ray.config import Config, config_from_dict
from mlops_ray.data.rows import RowEncoder
from mlops_ray.monitor import histograms as hist
from mlops_ray.monitor import thresholds
from mlops_ray.monitor.predlog import PredictionLog, log_id_column, recover_orphans
from mlops_ray.registry import Registry
from mlops_ray.registry.bundle import Bundle, predict_features
from mlops_ray.serve import stats as st
from mlops_ray.serve.api import RequestError, RequestParser
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.state import ServingState, read_state, spool_dir, state_path, stats_dir
from mlops_ray.storage.store import Store
# Imported where used, for their import cost (python -X importtime): ray 0.7 s, starlette.

log = logging.getLogger("mlops_ray.serve")

DEFAULT_LOADER = "mlops_ray.serve.app:load_from_registry"
DEPLOYMENT = "predictor"
THRESHOLD_POLL_S = 5.0       # how often a replica reads the served versions' decision thresholds
INLINE_MAX_MS = 2.0          # a version whose batches cost more predicts in its own thread
MAX_SHADOW_IN_FLIGHT = 256   # mirrored requests beyond this are not mirrored (counted nowhere else)
_REQUEST_ID_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def load_from_registry(cfg: Config, version: str) -> Bundle:
    """Default loader: a version's bundle from the MLflow registry (cached on local disk)."""
    return Registry(cfg.registry, cfg.store, cfg.name).load_bundle(str(version))


def _import(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class ModelFault(RuntimeError):
    """An injected failure (fault injection for rollout drills)."""


class ServedModel:
    """One model version inside a replica: parser, encoder, booster, batch queue, thread."""

    def __init__(self, version: str, bundle: Bundle, cfg: Config, fault: dict | None = None,
                 log: PredictionLog | None = None):
        from ray import serve

        self.version = str(version)
        self.bundle = bundle
        self.binary, self.threshold = bundle.task == "binary", bundle.threshold
        self.classes = bundle.spec.classes if bundle.task == "multiclass" else None
        self.log = log
        # replicas are single-CPU: XGBoost's default (all cores, busy-waiting threads) measured
        # about 3x the CPU per single-row prediction on 2 cores
        bundle.booster.set_param({"nthread": cfg.serve.model_threads})
        self.parser = RequestParser.from_bundle(bundle, cfg.serve, passthrough=log_id_column(cfg, bundle))
        self.encoder = RowEncoder(bundle.spec)
        self.fault = fault or {}
        if self.fault.get("load_error"):
            raise ModelFault(f"injected load failure of version {self.version}: {self.fault['load_error']}")
        self._rng = random.Random(zlib.crc32(self.version.encode()))
        # Stable predicts inline on the event loop: a thread hop per batch cost about 15 % of the
        # throughput (35 % for a 50 % canary). Another version predicts inline while its batches are
        # cheap (< INLINE_MAX_MS, tracked from warm-up on) and in a thread of its own once they are
        # not (XGBoost releases the GIL), so a slow candidate cannot stall stable's event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-v{self.version}")
        self.inline = False
        self.cost_ms = float("inf")       # moving average of a batch's predict time

        @serve.batch(max_batch_size=cfg.serve.batch_max_size, batch_wait_timeout_s=cfg.serve.batch_wait_timeout_s)
        async def _batched(items: list[list[dict]]) -> list:
            flat = [r for rows in items for r in rows]
            try:
                if self.inline or self.cost_ms < INLINE_MAX_MS:
                    preds = self.predict(flat)
                else:
                    preds = await asyncio.get_running_loop().run_in_executor(self._executor, self.predict, flat)
            except Exception as e:                       # the whole batch failed
                return [e] * len(items)
            out, i = [], 0
            for rows in items:
                out.append(preds[i:i + len(rows)])
                i += len(rows)
            rate = self.fault.get("error_rate", 0.0)
            if rate:
                out = [ModelFault(f"injected fault in version {self.version}") if self._rng.random() < rate else o
                       for o in out]
            return out

        self._batched = _batched

    def predict(self, rows: list[dict]) -> list:
        """Rows -> predictions (floats, or class-probability lists). Runs in the version's thread."""
        t0 = time.perf_counter()
        if self.fault.get("latency_ms"):
            time.sleep(self.fault["latency_ms"] / 1e3)
        out = self._predict_plain(rows)
        dt = (time.perf_counter() - t0) * 1e3
        self.cost_ms = dt if self.cost_ms == float("inf") else 0.8 * self.cost_ms + 0.2 * dt
        return out

    async def warm_up(self, rounds: int = 5) -> None:
        """First predictions on a new booster and thread are slow (tens of ms): pay that before the
        version takes traffic, not on a user's request (and not in the canary's p99)."""
        rows = [{c: None for c in self.bundle.spec.input_types}] * 4
        loop = asyncio.get_running_loop()
        for _ in range(rounds):
            await loop.run_in_executor(self._executor, self._predict_plain, rows)
        for _ in range(3):                # measures cost_ms before the version takes traffic
            await loop.run_in_executor(self._executor, self.predict, rows)

    def _predict_plain(self, rows: list[dict]) -> list:
        X = self.encoder.encode(rows)
        return predict_features(self.bundle.booster, X, self.bundle.spec).tolist()

    async def infer(self, rows: list[dict]) -> list:
        res = await self._batched(rows)
        if isinstance(res, BaseException):
            raise res
        return res

    def close(self) -> None:
        """Called after the version stopped taking requests and those in flight had time to finish."""
        self._executor.shutdown(wait=False)
        if self.log is not None:
            self.log.close()


@dataclass(frozen=True)
class Route:
    stable: ServedModel
    canary: ServedModel | None = None
    weight: float = 0.0                  # percent to the canary
    shadow: ServedModel | None = None
    revision: int = 0

    def pick(self, key: str | None) -> ServedModel:
        """Stable or canary. With a key the choice is a pure function of (key, weight): the same key
        gets the same version on every replica, and stays on the canary as its weight grows."""
        if self.canary is None or self.weight <= 0:
            return self.stable
        u = (zlib.crc32(key.encode()) % 10000) / 100 if key is not None else random.random() * 100
        return self.canary if u < self.weight else self.stable


def _json(obj, status: int = 200, headers: dict | None = None):
    from starlette.responses import Response
    return Response(json.dumps(obj, separators=(",", ":")), status_code=status, media_type="application/json",
                    headers=headers)


class Predictor:
    """The ingress deployment (wrapped by ``serve.deployment`` in ``build_app``)."""

    async def __init__(self, config: dict, loader: str = DEFAULT_LOADER, faults: dict | None = None,
                       poll_s: float = 0.25, stats_s: float = 1.0, threshold_poll_s: float = THRESHOLD_POLL_S):
        from ray import serve

        self.cfg = config_from_dict(config)
        self.loader = _import(loader)
        self.faults = {str(k): v for k, v in (faults or {}).items()}
        self.poll_s, self.stats_s, self.threshold_poll_s = poll_s, stats_s, threshold_poll_s
        self.store = Store(self.cfg.store)
        ctx = serve.get_replica_context()
        self.replica = f"{ctx.deployment}-{ctx.replica_id.unique_id}"
        self.state_file = state_path(self.cfg.store, self.cfg.name)
        self.predlog_root = Catalog(self.cfg.store, self.cfg.name).predlog_dir()
        self.spool = spool_dir(self.cfg.store, self.cfg.name)
        self._remote = "://" in self.state_file        # object store: poll in a thread, at most once a second
        self.models: dict[str, ServedModel] = {}
        self._exported: dict[str, list[int]] = {}
        self._metrics()
        state = read_state(self.state_file)
        if state is None:
            raise RuntimeError(f"no serving state at {self.state_file}; deploy with `mlops-ray deploy`")
        await self._ensure(state.stable)        # a replica that cannot load stable must not start
        self.stats = st.ReplicaStats(self.replica, hist.prediction_edges(self.models[state.stable].bundle.task,
                                                                       self.models[state.stable].bundle.reference),
                                     where=_where())
        for v in state.versions():
            await self._try_ensure(v)
        self.route = self._route(state)
        self._mtime = None
        self._shadow_tasks: set = set()
        self._retiring: set = set()
        self._retire_tasks: set = set()
        recovered = await asyncio.to_thread(recover_orphans, self.spool, self.predlog_root)
        if recovered:
            log.info("recovered %d prediction-log records from stopped replicas", recovered)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow_state()), loop.create_task(self._write_stats()),
                       loop.create_task(self._follow_thresholds())]

    # ------------------------------------------------------------------ models and routing
    async def _ensure(self, version: str) -> ServedModel:
        m = self.models.get(version)
        if m is None:
            bundle = await asyncio.to_thread(self.loader, self.cfg, version)
            logged = {**bundle.spec.input_types, **{c: "string" for c in log_id_column(self.cfg, bundle)}}
            log_ = PredictionLog(
                self.predlog_root, logged, owner=f"{self.replica}-v{version}", spool_dir=self.spool,
                flush_rows=self.cfg.monitor.predlog_flush_rows, flush_s=self.cfg.monitor.predlog_flush_s,
                multiclass=bundle.task == "multiclass")
            m = ServedModel(version, bundle, self.cfg, self.faults.get(version), log_)
            if m.binary:                # the newest re-chosen threshold, else the registered one
                m.threshold = await asyncio.to_thread(thresholds.current, self.store, self.cfg.name, version,
                                                      bundle.metadata)
            await m.warm_up()
            self.models[version] = m
        return m

    async def _try_ensure(self, version: str) -> ServedModel | None:
        """Load a non-stable version best-effort: a canary that cannot load is reported in the stats
        (the controller rolls it back, naming the error) instead of blocking the state change."""
        try:
            m = await self._ensure(version)
        except Exception as e:
            self.stats.load_errors[version] = f"{type(e).__name__}: {e}"[:500]
            log.warning("cannot load version %s: %r", version, e)
            return None
        self.stats.load_errors.pop(version, None)
        return m

    def _route(self, s: ServingState) -> Route:
        stable = self.models[s.stable]
        for m in self.models.values():
            m.inline = m is stable
        if s.phase == "CANARY" and s.canary in self.models:
            return Route(stable, self.models[s.canary], s.weight, revision=s.revision)
        if s.phase == "SHADOW" and s.canary in self.models:
            return Route(stable, shadow=self.models[s.canary], revision=s.revision)
        return Route(stable, revision=s.revision)

    async def _follow_state(self) -> None:
        state = None
        while True:
            try:
                # the (small) document itself each poll, not its mtime: an object's mtime has
                # 1-second resolution on S3, and a local file's can repeat for two quick writes
                fresh = await asyncio.to_thread(read_state, self.state_file) if self._remote \
                    else read_state(self.state_file)
                mtime = (fresh.revision, fresh.updated) if fresh else None
                if mtime != self._mtime:
                    state = fresh or state
                    if state is not None:
                        await self._ensure(state.stable)       # load first, then switch
                        for v in state.versions():
                            if v not in self.models and v not in self.stats.load_errors:
                                await self._try_ensure(v)
                        self.route = self._route(state)
                        self._mtime = mtime
                if state is not None:                      # the previous version retires on time
                    keep = state.versions()
                    for v in [v for v in self.models if v not in keep]:
                        task = asyncio.get_running_loop().create_task(self._retire(self.models.pop(v)))
                        self._retire_tasks.add(task)           # the loop holds tasks weakly
                        task.add_done_callback(self._retire_tasks.discard)
                    for v in [v for v in self.stats.load_errors if v not in keep]:
                        self.stats.load_errors.pop(v)
                await asyncio.sleep(max(self.poll_s, 1.0) if self._remote else self.poll_s)
            except asyncio.CancelledError:
                raise
            except Exception:                               # keep serving the last good route
                log.exception("following the serving state failed; retrying")
                await asyncio.sleep(max(self.poll_s, 1.0))

    async def _follow_thresholds(self) -> None:
        """A binary version's decision threshold follows its history in the store (re-chosen by
        `mlops-ray feedback`): every ``threshold_poll_s`` a worker thread stats the history file and
        reads it only when it changed. A request only reads the attribute, so the refresh costs no
        latency on the request path."""
        seen: dict[str, tuple | None] = {}
        while True:
            await asyncio.sleep(self.threshold_poll_s)
            for m in [m for m in list(self.models.values()) if m.binary]:
                try:
                    now = await asyncio.to_thread(thresholds.stamp, self.store, self.cfg.name, m.version)
                    if m.version in seen and now == seen[m.version]:
                        continue
                    t = await asyncio.to_thread(thresholds.current, self.store, self.cfg.name, m.version,
                                                m.bundle.metadata)
                    seen[m.version] = now
                except asyncio.CancelledError:
                    raise
                except Exception:                          # keep the threshold it has
                    log.exception("reading the threshold of version %s failed", m.version)
                    continue
                if t != m.threshold:
                    log.info("version %s: decision threshold %.4f -> %.4f", m.version, m.threshold, t)
                    m.threshold = t

    async def _retire(self, model: ServedModel, grace_s: float = 30.0) -> None:
        """Requests already routed to a retired version still finish and are logged."""
        self._retiring.add(model)
        await asyncio.sleep(grace_s)
        self._retiring.discard(model)
        await asyncio.to_thread(model.close)

    async def _write_stats(self) -> None:
        d = stats_dir(self.cfg.store, self.cfg.name)
        while True:
            await asyncio.sleep(self.stats_s)
            try:
                self._export_counters()
                await asyncio.to_thread(st.write_snapshot, d, self.stats.snapshot())
            except Exception:
                log.exception("writing serving stats failed")

    def _metrics(self) -> None:
        from ray.serve import metrics
        self.m_requests = metrics.Counter("mlops_requests", description="Prediction requests by version and outcome",
                                          tag_keys=("version", "outcome"))
        self.m_rows = metrics.Counter("mlops_rows", description="Rows predicted", tag_keys=("version",))
        self.m_latency = metrics.Histogram("mlops_latency_ms", description="Prediction latency (ms)",
                                           boundaries=[0.5, 1, 2, 3, 5, 8, 13, 20, 30, 50, 80, 130, 200, 500, 1000],
                                           tag_keys=("version",))

    def _record(self, version: str, ok: bool, t0: float, preds=(), t1: float | None = None) -> None:
        dt = (time.perf_counter() if t1 is None else t1) - t0
        self.stats.record(version, ok, dt, preds)
        self.m_latency.observe(dt * 1e3, tags={"version": version})

    def _export_counters(self) -> None:
        """Request and row counters go to Prometheus once a second, from the stats (two metric
        calls per request measured a few percent of a replica's CPU)."""
        for v, s in self.stats.by_version.items():
            last = self._exported.setdefault(v, [0, 0, 0])
            ok, err, rows = s.requests - s.errors - last[0], s.errors - last[1], s.rows - last[2]
            if ok:
                self.m_requests.inc(ok, tags={"version": v, "outcome": "ok"})
            if err:
                self.m_requests.inc(err, tags={"version": v, "outcome": "error"})
            if rows:
                self.m_rows.inc(rows, tags={"version": v})
            self._exported[v] = [s.requests - s.errors, s.errors, s.rows]

    # ------------------------------------------------------------------ HTTP
    async def __call__(self, request):
        path, method = request.url.path.rstrip("/") or "/", request.method
        if path.endswith("/predict"):
            if method != "POST":
                return _json(_err("method_not_allowed", "use POST for /predict"), 405)
            return await self._predict(request)
        if method == "GET" and path.endswith("/healthz"):
            return _json({"status": "ok", "stable": self.route.stable.version, "replica": self.replica,
                          "pipeline": self.cfg.name})
        if method == "GET" and path.endswith("/schema"):
            return _json({**self.route.stable.parser.schema(), "version": self.route.stable.version})
        if method == "GET" and path.endswith("/version"):
            r = self.route
            return _json({"stable": r.stable.version, "canary": r.canary.version if r.canary else None,
                          "weights": {r.stable.version: 100 - r.weight, **({r.canary.version: r.weight} if r.canary else {})},
                          "shadow": r.shadow.version if r.shadow else None, "revision": r.revision,
                          "thresholds": {v: m.threshold for v, m in self.models.items() if m.binary}})
        return _json(_err("not_found", f"no route {method} {path}; use POST /predict, GET /healthz, /version or /schema"),
                     404)

    async def _predict(self, request):
        t0 = time.perf_counter()
        headers = request.headers
        rid = headers.get("x-request-id")
        if rid is None:
            rid = uuid.uuid4().hex
        elif not 0 < len(rid) <= 128 or not set(rid) <= _REQUEST_ID_OK:
            return _json(_err("invalid_request_id", "header x-request-id must be 1-128 characters of "
                                                    "letters, digits and -_.:", "x-request-id"), 400)
        route = self.route
        key = headers.get("x-routing-key")
        model = route.pick(key)
        ct = headers.get("content-type")
        try:
            model.parser.check_content_type(ct)
            length = headers.get("content-length")
            model.parser.check_length(int(length) if length and length.isdigit() else None)
            body = await request.body()
            rows = model.parser.parse(body, ct)
            sticky = self.cfg.rollout.sticky_key
            if key is None and sticky and route.canary is not None and rows[0].get(sticky) is not None:
                chosen = route.pick(str(rows[0][sticky]))
                if chosen is not model:
                    model = chosen
                    rows = model.parser.parse(body, ct)
        except RequestError as e:
            return _json(e.body(), e.status, {"x-request-id": rid})
        t_start, t_parsed = t0, time.perf_counter()
        try:
            preds = await model.infer(rows)
        except Exception as e:
            self._record(model.version, False, t0)
            if model is route.stable:
                log.warning("version %s failed on request %s: %r", model.version, rid, e)
                return _json(_err("prediction_failed", f"model version {model.version} failed to predict; "
                                                       f"the error is logged under request id {rid}"),
                             500, {"x-request-id": rid})
            model = route.stable                   # a failing canary falls back to stable
            t0 = time.perf_counter()               # stable's latency excludes the failed attempt
            try:
                preds = await model.infer(rows)
            except Exception:
                self._record(model.version, False, t0)
                return _json(_err("prediction_failed", f"model version {model.version} failed to predict; "
                                                       f"see request id {rid}"), 500, {"x-request-id": rid})
        t1 = time.perf_counter()                   # the latency recorded is the prediction's, not the log's
        try:
            model.log.append(rid, model.version, rows, preds)
        except Exception:
            log.exception("prediction log append failed")
            self._record(model.version, False, t0, t1=t1)       # answered 503: an error
            return _json(_err("log_failed", "the prediction could not be logged; retry"), 503, {"x-request-id": rid})
        self._record(model.version, True, t0, preds, t1=t1)
        if route.shadow is not None and len(self._shadow_tasks) < MAX_SHADOW_IN_FLIGHT:
            task = asyncio.get_running_loop().create_task(self._shadow(route.shadow, rows, t_parsed - t_start))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        body = {"predictions": preds, "model_version": model.version, "request_id": rid}
        if model.binary:               # the version's decision threshold: its newest (thresholds.py)
            body["labels"] = [int(p >= model.threshold) for p in preds]
        elif getattr(model, "classes", None):      # multiclass: the most probable class, by its name
            body["labels"] = [model.classes[max(range(len(p)), key=p.__getitem__)] for p in preds]
        return _json(body, 200, {"x-request-id": rid, "x-model-version": model.version})

    async def _shadow(self, model: ServedModel, rows: list[dict], parse_s: float) -> None:
        # timed like stable: the request's parsing plus this version's prediction
        t0 = time.perf_counter() - parse_s
        try:
            preds = await model.infer(rows)
        except Exception:
            self._record(model.version, False, t0)
            return
        self._record(model.version, True, t0, preds)

    async def flush(self) -> dict:
        """Write buffered prediction-log records and stats now (tests, `serve stop`)."""
        n = 0
        for m in list(self.models.values()):
            n += await asyncio.to_thread(m.log.flush)
        await asyncio.to_thread(st.write_snapshot, stats_dir(self.cfg.store, self.cfg.name), self.stats.snapshot())
        return {"replica": self.replica, "flushed": n}

    def __del__(self):
        """Graceful shutdown: flush the prediction log and the last stats."""
        for t in getattr(self, "_tasks", []):
            t.cancel()
        for m in list(getattr(self, "models", {}).values()) + list(getattr(self, "_retiring", ())):
            try:
                m.log.close()
            except Exception:
                pass
        try:
            st.write_snapshot(stats_dir(self.cfg.store, self.cfg.name), self.stats.snapshot())
        except Exception:
            pass


def _where() -> dict:
    """Where this replica runs (its stats snapshot carries it: `status` lists replicas by node)."""
    import ray
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}


def _err(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


# ---------------------------------------------------------------------- application
def deployment_options(cfg: Config) -> dict:
    opts: dict = {"name": DEPLOYMENT, "max_ongoing_requests": cfg.serve.max_ongoing_requests,
                  "ray_actor_options": {"num_cpus": cfg.serve.num_cpus}, "graceful_shutdown_timeout_s": 20,
                  "logging_config": {"enable_access_log": cfg.serve.access_log}}
    if cfg.serve.max_replicas_per_node:
        opts["max_replicas_per_node"] = cfg.serve.max_replicas_per_node
    if cfg.serve.autoscaling:
        a = cfg.serve.autoscaling
        opts["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                      "target_ongoing_requests": a.target_ongoing_requests}
    else:
        opts["num_replicas"] = cfg.serve.num_replicas
    return opts


def build_app(config: dict, loader: str = DEFAULT_LOADER, faults: dict | None = None):
    """The Serve application for one pipeline config."""
    from ray import serve
    cfg = config_from_dict(config)
    dep = serve.deployment(Predictor).options(**deployment_options(cfg))
    return dep.bind(config=config, loader=loader, faults=faults)


def app_builder(args: dict):
    """Entry point for Ray's ``serve deploy`` / ``serve run`` (``mlops-ray serve build`` writes the YAML)."""
    return build_app(args["config"], args.get("loader", DEFAULT_LOADER), args.get("faults"))
