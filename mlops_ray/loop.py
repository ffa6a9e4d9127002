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
import signal
import time
from typing import Callable

from mlops_ray.config import Config, parse_duration
from mlops_ray.errors import GateRejected, MlopsError, MonitorError
from mlops_ray.monitor.retrain import LoopLock, read_decisions, record, should_retrain

Progress = Callable[[str, str], None]


# --------------------------------------------------------------------------- one iteration
def iterate(cfg: Config, *, since: str | None = None, progress: Progress = lambda s, m: None,
            verbose: bool = False, now: float | None = None) -> dict:
    """monitor → decide → (retrain → gate → rollout); returns the recorded decision entry."""
    from mlops_ray import pipeline
    from mlops_ray.monitor.drift import run_monitor
    from mlops_ray.monitor.labels import completeness
    from mlops_ray.registry import Registry
    from mlops_ray.train.evaluate import metric_direction

    now = now or time.time()
    entry: dict = {"t": now, "time": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
                   "action": "none", "outcome": None, "run_id": None, "version": None, "error": None}
    registry = Registry(cfg.registry, cfg.store, cfg.name)
    champion = registry.get_alias("champion")
    entry["champion"] = champion
    try:
        report = run_monitor(cfg, since=since, verbose=verbose, progress=progress)
        entry["report"] = report.get("path")
    except MonitorError as e:
        report = None
        entry["monitor_error"] = e.message
        progress("loop", f"monitor: {e.message}")
    live = None
    champ_metric = None
    if champion:
        comp = completeness(cfg).get("versions", {}).get(str(champion))
        live = comp
        meta = registry.load_bundle(champion).metadata
        name = (comp or {}).get("metric")
        champ_metric = (meta.get("evaluation") or {}).get("metrics", {}).get(name) if name else None
    decision = should_retrain(report, live, cfg.retrain, read_decisions(cfg), champ_metric, now,
                              higher_is_better=metric_direction(live["metric"]) == "max" if live and live.get(
                                  "metric") else True)
    entry.update({"trigger": decision.trigger, "reasons": decision.reasons, "blocked": decision.blocked,
                  "checked": decision.checked, "live": live})
    if not decision.trigger:
        progress("loop", "no retrain: " + (decision.blocked or "; ".join(decision.checked) or "nothing to check"))
        return entry
    progress("loop", "retrain: " + "; ".join(decision.reasons))
    entry["action"] = "retrain"
    rcfg = retrain_config(cfg)
    try:
        res = pipeline.run_pipeline(rcfg, pipeline.RunOptions(verbose=verbose), progress=progress)
        entry.update({"run_id": res.run_id, "version": res.version, "outcome": "gate passed"})
    except GateRejected as e:
        entry.update({"outcome": "gate rejected; champion kept", "error": e.message})
        _tag(registry, entry)
        return entry
    if res.version == champion:
        entry["outcome"] = "the window trained the champion again (cached); nothing to roll out"
        return entry
    entry.update(_roll_out(cfg, res.version, progress, verbose))
    _tag(registry, entry)
    return entry


def retrain_config(cfg: Config) -> Config:
    """The same pipeline on the training window: ``retrain.data`` (default ``data.source``)."""
    if not cfg.retrain.data:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": list(cfg.retrain.data)})})


def _roll_out(cfg: Config, version: str, progress: Progress, verbose: bool) -> dict:
    from mlops_ray.errors import RolloutAborted, ServingError
    from mlops_ray.serve import control
    try:
        res = control.rollout(cfg, version, verbose=verbose, on_progress=lambda m: progress("rollout", m))
        return {"outcome": f"rollout {res.get('outcome', 'done')}"}
    except RolloutAborted as e:
        return {"outcome": "rollout aborted; champion kept", "error": e.message}
    except ServingError as e:       # nothing serving, or another rollout runs: recorded, retried next time
        return {"outcome": "rollout not started (retried next iteration)", "error": e.message,
                "pending_rollout": version}


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
