"""The closed loop: monitor → (trigger?) → retrain → gate → rollout, until stopped.

``run_loop`` runs one iteration (``--once``) or one every ``--interval``. Each iteration runs
the drift monitor over the recent prediction log, reads the live metric of the champion from
the labels that arrived, asks ``monitor.retrain.should_retrain``, and on a trigger runs the
same pipeline (``pipeline.run_pipeline``) on the training window, whose challenger must pass
the same gate against the champion, then the canary rollout. Every decision — what triggered,
which run, which version, the outcome — is appended to the decision log and tagged in MLflow.
A failed iteration is recorded and the next one still runs; a second loop on the same
pipeline is refused; SIGTERM stops the loop between steps.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import signal
import time
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from mlops_ray import pipeline
from mlops_ray.config import Config, parse_duration
from mlops_ray.data import dates, ingest
from mlops_ray.errors import GateRejected, Interrupted, MlopsError, MonitorError, RolloutAborted, ServingError
from mlops_ray.monitor.drift import run_monitor
from mlops_ray.monitor.labels import completeness
from mlops_ray.monitor.retrain import LoopLock, read_decisions, record, should_retrain
from mlops_ray.registry import Registry
from mlops_ray.runtime import ray_runtime, require_shared_store
from mlops_ray.serve import control
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.fs import for_ray
from mlops_ray.storage.store import Store
from mlops_ray.train.evaluate import metric_direction

Progress = Callable[[str, str], None]


# --------------------------------------------------------------------------- one iteration
def iterate(cfg: Config, *, since: str | None = None, progress: Progress = lambda s, m: None,
            verbose: bool = False, now: float | None = None) -> dict:
    """monitor → decide → (retrain → gate → rollout); returns the recorded decision entry."""

    now = now or time.time()
    entry: dict = {"t": now, "time": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
                   "action": "none", "outcome": None, "run_id": None, "version": None, "error": None}
    registry = Registry(cfg.registry, cfg.store, cfg.name)
    champion = registry.get_alias("champion")
    entry["champion"] = champion
    history = read_decisions(cfg)
    pending = _pending_rollout(history)
    if pending and pending != champion:          # a rollout that could not start last time
        progress("loop", f"retrying the rollout of version {pending}")
        entry.update({"action": "rollout", "version": pending, **_roll_out(cfg, pending, progress, verbose)})
        _tag(registry, entry)
        return entry
    with ray_runtime(cfg.ray, verbose=verbose):    # one Ray for monitor, window and pipeline
        require_shared_store(cfg)
        try:
            report = run_monitor(cfg, since=since, verbose=verbose, progress=progress)
            entry["report"] = report.get("path")
            entry["drifted"] = report.get("drifted")
        except MonitorError as e:
            report = None
            entry["monitor_error"] = e.message
            progress("loop", f"monitor: {e.message}")
        live, champ_metric = None, None
        if champion:
            live = completeness(cfg).get("versions", {}).get(str(champion))
            name = (live or {}).get("metric")
            meta = registry.load_bundle(champion).metadata
            champ_metric = (meta.get("evaluation") or {}).get("metrics", {}).get(name) if name else None
        higher = metric_direction(live["metric"]) == "max" if live and live.get("metric") else True
        decision = should_retrain(report, live, cfg.retrain, history, champ_metric, now, higher_is_better=higher)
        entry.update({"trigger": decision.trigger, "reasons": decision.reasons, "blocked": decision.blocked,
                      "checked": decision.checked, "live": live, "champion_metric": champ_metric})
        if not decision.trigger:
            progress("loop", "no retrain: " + (decision.blocked or "; ".join(decision.checked) or "nothing to check"))
            return entry
        progress("loop", "retrain: " + "; ".join(decision.reasons))
        entry["action"] = "retrain"
        try:
            rcfg = retrain_config(cfg, progress, verbose)
            res = pipeline.run_pipeline(rcfg, pipeline.RunOptions(verbose=verbose), progress=progress)
        except GateRejected as e:
            entry.update({"outcome": "gate rejected; champion kept", "error": e.message})
            _tag(registry, entry)
            return entry
    entry.update({"run_id": res.run_id, "version": res.version})
    if not res.promoted:                          # a cached run whose model the gate rejected
        entry["outcome"] = "gate rejected (this window was trained before); champion kept"
        return entry
    if res.version == champion:
        entry["outcome"] = "this window trained the champion again; nothing to roll out"
        return entry
    entry["outcome"] = "gate passed"
    entry.update(_roll_out(cfg, res.version, progress, verbose))
    _tag(registry, entry)
    return entry


def _pending_rollout(history: list[dict]) -> str | None:
    """The version whose rollout could not start in the last iteration that tried one."""
    for e in reversed(history):
        if e.get("action") in ("retrain", "rollout") and e.get("version"):
            return e.get("pending_rollout")
    return None


def retrain_config(cfg: Config, progress: Progress = lambda s, m: None, verbose: bool = False) -> Config:
    """The same pipeline on the training window: the rows of ``retrain.data`` (default
    ``data.source``) within ``retrain.window`` of the newest one (by ``data.time_column``), plus
    a ``retrain.previous_sample`` share of the older ``data.source`` rows. The window is written
    once per (input fingerprint, window) under ``{store}/{name}/retrain/`` and reused."""


    rc, store = cfg.retrain, Store(cfg.store)
    dcfg = cfg.data.model_copy(update={"source": list(rc.data)}) if rc.data else cfg.data
    tcol = cfg.data.time_column
    with ray_runtime(cfg.ray, verbose=verbose):
        src = ingest.inspect_source(dcfg)
        if not src.rows:
            raise MonitorError(f"the retrain window is empty: {', '.join(dcfg.sources)} holds no rows; point "
                               f"retrain.data at the fresh labelled data")
        key = hashlib.sha256(f"{src.fingerprint}|{rc.window}|{rc.previous_sample}|{tcol}".encode()).hexdigest()[:16]
        out = Catalog(store, cfg.name).retrain_dir(key)
        if not store.exists(f"{out}/_SUCCESS"):
            ds = ingest.read_dataset(src, dcfg)
            parts = [ds]
            start = None
            if tcol and tcol in src.schema.names:
                fmt = _time_format(ds, tcol, cfg)      # a time column stored as text: read as training reads it
                newest = (ds.map_batches(_parsed_time, fn_kwargs={"col": tcol, "fmt": fmt}, batch_format="pyarrow",
                                         batch_size=None) if fmt else ds).max(tcol)
                if newest is None:
                    raise MonitorError(f"the retrain window is empty: {tcol} has no values in "
                                       f"{', '.join(dcfg.sources)}")
                start = newest - dt.timedelta(seconds=parse_duration(rc.window))
                parts = [ds.map_batches(_time_filter, fn_kwargs={"col": tcol, "start": start, "keep": "after",
                                                                 "fmt": fmt}, batch_format="pyarrow", batch_size=None)]
                if rc.previous_sample > 0:
                    old_src = ingest.inspect_source(cfg.data)
                    old = ingest.read_dataset(old_src, cfg.data).map_batches(
                        _time_filter, fn_kwargs={"col": tcol, "start": start, "keep": "before", "fmt": fmt},
                        batch_format="pyarrow", batch_size=None)
                    parts.append(old.random_sample(rc.previous_sample, seed=cfg.tune.seed))
            window = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
            rows = window.count()
            if rows == 0:
                raise MonitorError(f"the retrain window is empty: no rows of {', '.join(dcfg.sources)} within "
                                   f"{rc.window} of the newest {tcol}; widen retrain.window")
            if cfg.data.label_expr is not None:       # raw columns only: the retrain run computes it again
                window = window.drop_columns([cfg.data.label])
            path, fs = for_ray(Catalog(store, cfg.name).retrain_data(key))
            window.write_parquet(path, filesystem=fs)
            store.write_json(f"{out}/_SUCCESS", {"rows": rows, "start": str(start), "sources": dcfg.sources})
        info = store.read_json(f"{out}/_SUCCESS")
    progress("retrain", f"training window: {info['rows']:,} rows from {info['start']} ({', '.join(dcfg.sources)})")
    data = cfg.data.model_copy(update={"source": Catalog(store, cfg.name).retrain_data(key), "format": "parquet"})
    return cfg.model_copy(update={"data": data})


def _time_format(ds, col: str, cfg: Config) -> str | None:
    """The format of a time column the data holds as text (data.datetime_formats, else inferred
    from its first rows, as the pipeline does); None when it holds timestamps."""
    if col in cfg.data.datetime_formats:
        return cfg.data.datetime_formats[col]
    values = [r[col] for r in ds.select_columns([col]).take(dates.SAMPLE_ROWS)]
    if not any(isinstance(v, str) for v in values):
        return None
    fmt, _ = dates.infer_format(values)
    if fmt is None:
        raise MonitorError(f"data.time_column '{col}' holds text that no known date format reads (e.g. "
                           f"{next(v for v in values if isinstance(v, str))!r}); give its format as "
                           f"data.datetime_formats: {{{col!r}: \"%m/%d/%Y\"}}")
    return fmt


def _parsed_time(table, col: str, fmt: str):
    return dates.parse_table(table.select([col]), {col: fmt})


def _time_filter(table, col: str, start, keep: str, fmt: str | None = None):
    """The rows of ``table`` at or after ``start`` (keep="after") or before it; the rows keep their
    columns as they are (a text date stays text: the retrained model reads it as this one did)."""

    t = dates.parse(table.column(col), fmt) if fmt else table.column(col)
    if not pa.types.is_timestamp(t.type):
        t = pc.cast(t, pa.timestamp("us"))
    s = pa.scalar(start.replace(tzinfo=None) if t.type.tz is None and getattr(start, "tzinfo", None) else start,
                  t.type)
    mask = pc.greater_equal(t, s) if keep == "after" else pc.less(t, s)
    return table.filter(pc.fill_null(mask, False))


def _roll_out(cfg: Config, version: str, progress: Progress, verbose: bool) -> dict:
    try:
        # a model retrained because the data moved predicts differently from the one it replaces: its
        # canary must behave online as it did on its own validation window (its bundle's reference)
        cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"prediction_baseline": "reference"})})
        res = control.rollout(cfg, version, verbose=verbose, on_progress=_rollout_progress(progress))
        return {"outcome": f"rollout {res.get('outcome', 'done')}"}
    except RolloutAborted as e:
        return {"outcome": "rollout aborted; champion kept", "error": e.message}
    except ServingError as e:       # nothing serving, or another rollout runs: recorded, retried next time
        return {"outcome": "rollout not started (retried next iteration)", "error": e.message,
                "pending_rollout": version}


def _rollout_progress(progress: Progress):
    """One line per rollout step (the controller calls back on every poll)."""
    seen: set = set()

    def show(state, verdict) -> None:
        key = (state.phase, state.weight)
        if key not in seen:
            seen.add(key)
            progress("rollout", f"{state.phase} version {state.canary or state.stable} at {state.weight:g}%")
    return show


def _tag(registry, entry: dict) -> None:
    if entry.get("version"):
        try:
            registry.tag_version(entry["version"], "loop_decision", f"{entry['time']}: {entry['outcome']}"[:5000])
        except MlopsError:
            pass


def run_loop(cfg: Config, *, once: bool = False, interval: str = "10m", since: str | None = None,
             progress: Progress = lambda s, m: None, verbose: bool = False) -> list[dict]:
    """Iterate until SIGTERM/SIGINT (or once). Every iteration's decision is recorded, failures too."""
    stop = {"now": False}

    def _stop(signum, frame):
        stop["now"] = True
        progress("loop", "stopping after this step")
    old = signal.signal(signal.SIGTERM, _stop)
    entries = []
    try:
        with LoopLock(cfg):
            while True:
                try:
                    entry = iterate(cfg, since=since, progress=progress, verbose=verbose)
                except Interrupted as e:        # Ctrl-C mid-step: recorded, and the loop ends
                    record(cfg, {"t": time.time(), "time": dt.datetime.now(dt.timezone.utc).isoformat(),
                                 "action": "interrupted", "outcome": type(e).__name__, "error": e.message})
                    raise
                except MlopsError as e:
                    entry = {"t": time.time(), "time": dt.datetime.now(dt.timezone.utc).isoformat(),
                             "action": "failed", "outcome": type(e).__name__, "error": e.message}
                    progress("loop", f"iteration failed ({e.headline}): {e.message}")
                record(cfg, entry)
                entries.append(entry)
                if once or stop["now"]:
                    return entries
                deadline = time.time() + parse_duration(interval)
                while time.time() < deadline and not stop["now"]:
                    time.sleep(0.5)
                if stop["now"]:
                    return entries
    finally:
        signal.signal(signal.SIGTERM, old)
