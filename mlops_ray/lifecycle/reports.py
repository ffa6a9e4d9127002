"""What ``mlops-ray report`` shows: the context for ``monitor/report.render_report``, gathered
from the registry (the version's bundle metadata and its run's artifacts), the store (the
latest drift report, the decision log) and the serving state. Read-only."""
from __future__ import annotations

import datetime as dt

from pyarrow import fs as pafs

from mlops_ray.config import Config
from mlops_ray.monitor import thresholds
from mlops_ray.monitor.retrain import read_decisions
from mlops_ray.registry import Registry
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.state import read_state, state_path
from mlops_ray.storage.store import Store


def report_context(cfg: Config, *, version: str | None = None, run_id: str | None = None) -> dict:

    registry = Registry(cfg.registry, cfg.store, cfg.name)
    store = Store(cfg.store)
    if run_id and not version:
        version = next((v for v in _versions_of_run(registry, run_id)), None)
    v = registry.resolve(version or "champion")
    bundle = registry.load_bundle(v)
    meta = bundle.metadata
    run_id = run_id or registry.version_run_id(v)
    tuning = registry.run_json(run_id, "tuning.json") if run_id else None
    validation = registry.run_json(run_id, "validation.json") if run_id else None
    latest = Catalog(store, cfg.name).latest_report()
    state = read_state(state_path(cfg.store, cfg.name))
    return {
        "pipeline": cfg.name, "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": registry.model_name, "version": v, "aliases": registry.aliases_of(v), "run_id": run_id,
                  "task": bundle.task, "metrics": (meta.get("evaluation") or {}).get("metrics", {}),
                  "gate": meta.get("gate"), "threshold": meta.get("threshold"),
                  "confusion": (meta.get("evaluation") or {}).get("confusion"),
                  "threshold_history": thresholds.history(store, cfg.name, v, meta)},
        "validation": validation, "tuning": tuning or meta.get("tuning"),
        "importance": bundle.booster.get_score(importance_type="gain"),
        "curves": meta.get("curves"),
        "drift": store.read_json(latest) if store.exists(latest) else None,
        "drift_windows": drift_windows(cfg),
        "rollout": state.to_dict() if state else None,
        "decisions": read_decisions(cfg)[-50:],
    }


def drift_windows(cfg: Config, limit: int = 10) -> list[dict]:
    """The ``limit`` most recent drift checks, newest first, whatever they looked at (the prediction
    log, or data given to ``monitor --data``): the summary of each report under monitor/reports/."""

    store = Store(cfg.store)
    folder = Catalog(store, cfg.name).reports_dir()
    if not store.exists(folder):
        return []
    names = sorted((i.path for i in store.fs.get_file_info(pafs.FileSelector(folder))
                    if i.type == pafs.FileType.File and i.path.endswith(".json")), reverse=True)[:limit]
    out = []
    for path in names:                 # named by their UTC time stamp: newest first
        r = store.read_json(path)
        w = r.get("window") or {}
        out.append({"created": r.get("created"), "source": w.get("source"), "path": w.get("path"),
                    "since": w.get("since"), "until": w.get("until"), "rows": w.get("rows"),
                    "version": r.get("version"), "drift": r.get("drift"), "drift_share": r.get("drift_share"),
                    "drifted": r.get("drifted"), "auc": (r.get("multivariate") or {}).get("auc"), "report": path})
    return out


def monitor_summary(cfg: Config) -> dict:
    """The latest drift verdict and the loop's last decision, for ``mlops-ray status``."""
    store = Store(cfg.store)
    latest = Catalog(store, cfg.name).latest_report()
    out: dict = {"drift": None, "decision": None}
    if store.exists(latest):
        r = store.read_json(latest)
        out["drift"] = {"created": r.get("created"), "drift": r.get("drift"), "drifted": r.get("drifted"),
                        "drift_share": r.get("drift_share"), "rows": (r.get("window") or {}).get("rows"),
                        "version": r.get("version"), "quality_flags": r.get("quality_flags")}
    decisions = read_decisions(cfg)
    if decisions:
        d = decisions[-1]
        out["decision"] = {k: d.get(k) for k in ("time", "action", "trigger", "reasons", "blocked", "outcome",
                                                 "version", "error")}
    return out


def _versions_of_run(registry, run_id: str) -> list[str]:
    mvs = registry.client.search_model_versions(f"run_id='{run_id}'")
    return [str(m.version) for m in mvs]
